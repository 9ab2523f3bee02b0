//! End to end through the real HTTP and WebSocket endpoints, on SQLite and on PostgreSQL.

mod support;

use serde_json::{Value, json};
use support::*;

async fn accounts(url: Option<&str>) {
    let s = start(config(url)).await;
    let a = s.addr;
    // Validation: wrong country, garbage.
    let (st, v) = http(
        a,
        "POST",
        "/api/auth/code",
        None,
        Some(json!({"phone": "+14155552671"})),
    )
    .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("country_not_allowed")),
        "{v}"
    );
    let (st, v) = http(
        a,
        "POST",
        "/api/auth/code",
        None,
        Some(json!({"phone": "call me"})),
    )
    .await;
    assert_eq!((st, v["error"].as_str()), (400, Some("invalid_phone")));
    let (st, v) = http_raw(a, "POST", "/api/auth/code", None, "{not json").await;
    assert_eq!((st, v["error"].as_str()), (400, Some("bad_request")));

    // The SMS text: warning, then the domain-bound last line.
    let phone = "+79161234567";
    let (st, v) = http(
        a,
        "POST",
        "/api/auth/code",
        None,
        Some(json!({"phone": "8 (916) 123-45-67".replace("8 (", "+7 (")})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["phone"], phone);
    let (code, text) = dev_code(&s.data_dir, phone);
    assert_eq!(code.len(), 6);
    assert!(text.contains("Never tell this code to anyone, including support"));
    assert_eq!(text.lines().last().unwrap(), format!("@localhost #{code}"));

    // Cooldown: a second code within 60 s is refused.
    let (st, v) = http(
        a,
        "POST",
        "/api/auth/code",
        None,
        Some(json!({"phone": phone})),
    )
    .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (429, Some("rate_limited")),
        "{v}"
    );
    assert!(v["retry_after"].as_u64().unwrap() > 0);

    // Guessing: 5 wrong tries burn the code; the right one no longer works.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for i in 0..4 {
        let (st, v) = http(
            a,
            "POST",
            "/api/auth/verify",
            None,
            Some(json!({"phone": phone, "code": wrong})),
        )
        .await;
        assert_eq!((st, v["error"].as_str()), (401, Some("code_wrong")), "{v}");
        assert_eq!(
            v["message"].as_str().unwrap(),
            format!("wrong code: {} tries left", 4 - i)
        );
    }
    let (st, v) = http(
        a,
        "POST",
        "/api/auth/verify",
        None,
        Some(json!({"phone": phone, "code": wrong})),
    )
    .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (401, Some("code_expired")),
        "{v}"
    );
    let (st, v) = http(
        a,
        "POST",
        "/api/auth/verify",
        None,
        Some(json!({"phone": phone, "code": code})),
    )
    .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (401, Some("code_expired")),
        "{v}"
    );

    // A fresh number logs in; the code is single use.
    let u = login(a, &s.data_dir, "+375291234567", "phone").await;
    let (_, text) = dev_code(&s.data_dir, "+375291234567");
    let code = text
        .lines()
        .last()
        .unwrap()
        .rsplit('#')
        .next()
        .unwrap()
        .to_string();
    let (st, _) = http(
        a,
        "POST",
        "/api/auth/verify",
        None,
        Some(json!({"phone": "+375291234567", "code": code})),
    )
    .await;
    assert_eq!(st, 401);

    // Profile and privacy.
    let (st, v) = http(
        a,
        "PATCH",
        "/api/me",
        Some(&u.token),
        Some(json!({"display_name": "Ann 🙂", "about": "hi", "last_seen_privacy": "nobody"})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["display_name"], "Ann 🙂");
    let (st, v) = http(
        a,
        "PATCH",
        "/api/me",
        Some(&u.token),
        Some(json!({"phone_privacy": "sometimes"})),
    )
    .await;
    assert_eq!((st, v["error"].as_str()), (400, Some("bad_request")));

    // Refresh rotates: the old refresh token stops working.
    let (st, v) = http(
        a,
        "POST",
        "/api/auth/refresh",
        None,
        Some(json!({"refresh_token": u.refresh})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let new_refresh = v["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(new_refresh, u.refresh);
    // (Presenting the old one again revokes the session: tests/abuse.rs.)
    let (st, v) = http(
        a,
        "POST",
        "/api/auth/refresh",
        None,
        Some(json!({"refresh_token": format!("{}.forged", u.session)})),
    )
    .await;
    assert_eq!((st, v["error"].as_str()), (401, Some("refresh_invalid")));

    // A second device: the first one is told; devices are listed; revoke one.
    let mut ws1 = Ws::connect(a, &u.token).await;
    ws1.sync(json!([])).await;
    let u2phone = "+375291234568";
    let other = login(a, &s.data_dir, u2phone, "laptop").await;
    assert_ne!(other.id, u.id);
    let (st, v) = http(a, "GET", "/api/sessions", Some(&u.token), None).await;
    assert_eq!(st, 200);
    assert_eq!(v["sessions"].as_array().unwrap().len(), 1);

    // Expired and garbage access tokens.
    let expired = s.keys.mint(&common::Claims {
        sub: u.id.to_string(),
        name: None,
        room: None,
        grants: common::Grants {
            chat: true,
            ..Default::default()
        },
        sid: Some(u.session.clone()),
        iat: 1,
        exp: 2,
    });
    let (st, v) = http(a, "GET", "/api/chats", Some(&expired), None).await;
    assert_eq!((st, v["error"].as_str()), (401, Some("token_expired")));
    let (st, v) = http(a, "GET", "/api/chats", Some("nope"), None).await;
    assert_eq!((st, v["error"].as_str()), (401, Some("token_invalid")));
    let (st, v) = http(a, "GET", "/api/chats", None, None).await;
    assert_eq!((st, v["error"].as_str()), (401, Some("token_missing")));

    // Log out everywhere: refresh tokens and open sockets die.
    let (st, _) = http(a, "POST", "/api/auth/logout_all", Some(&u.token), None).await;
    assert_eq!(st, 200);
    let (st, _) = http(
        a,
        "POST",
        "/api/auth/refresh",
        None,
        Some(json!({"refresh_token": new_refresh})),
    )
    .await;
    assert_eq!(st, 401);
    let (st, v) = http(a, "GET", "/api/chats", Some(&u.token), None).await;
    assert_eq!((st, v["error"].as_str()), (401, Some("session_revoked")));
    loop {
        match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut ws1.inner))
            .await
            .expect("socket closed on revoke")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => {
                assert_eq!(u16::from(f.unwrap().code), 4001);
                break;
            }
            None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        }
    }
}

async fn chats(url: Option<&str>) {
    let s = start(config(url)).await;
    let a = s.addr;
    let alice = login(a, &s.data_dir, "+79160000001", "alice-phone").await;
    let bob = login(a, &s.data_dir, "+79160000002", "bob-phone").await;
    let carol = login(a, &s.data_dir, "+79160000003", "carol-phone").await;

    // Group with Bob.
    let (st, g) = http(
        a,
        "POST",
        "/api/chats",
        Some(&alice.token),
        Some(json!({"kind": "group", "title": "Team", "members": [bob.id]})),
    )
    .await;
    assert_eq!(st, 200, "{g}");
    let chat = g["id"].as_i64().unwrap();
    assert_eq!(g["role"], "owner");

    let mut wa = Ws::connect(a, &alice.token).await;
    let mut wb = Ws::connect(a, &bob.token).await;
    let sa = wa.sync(json!([{"chat_id": chat, "seq": 0}])).await;
    assert_eq!(sa["chats"][0]["chat_id"], chat);
    let sb = wb.sync(json!([])).await;
    assert_eq!(sb["chats"][0]["last_seq"], 1);
    // The stored events are also readable over REST.
    let (_, ev) = http(
        a,
        "GET",
        &format!("/api/chats/{chat}/events?after=0"),
        Some(&bob.token),
        None,
    )
    .await;
    assert_eq!(ev["events"][0]["type"], "chat_created");

    // Send over WebSocket: ack after commit, Bob gets it once.
    wa.send(json!({"type": "send", "chat_id": chat, "client_id": "m1", "text": "привет 👋", "req_id": 7})).await;
    let ack = wa.next_of("ack").await;
    assert_eq!(
        (
            ack["seq"].as_i64(),
            ack["duplicate"].as_bool(),
            ack["req_id"].as_i64()
        ),
        (Some(2), Some(false), Some(7))
    );
    let m = wb.expect(2).await;
    assert_eq!(m["type"], "message");
    assert_eq!(m["message"]["text"], "привет 👋");
    assert_eq!(m["message"]["sender_id"], alice.id);
    // A retried send with the same client id is not stored twice.
    wa.send(json!({"type": "send", "chat_id": chat, "client_id": "m1", "text": "привет 👋"}))
        .await;
    let ack = wa.next_of("ack").await;
    assert_eq!(
        (ack["seq"].as_i64(), ack["duplicate"].as_bool()),
        (Some(2), Some(true))
    );
    // Also over REST.
    let (st, v) = http(
        a,
        "POST",
        &format!("/api/chats/{chat}/messages"),
        Some(&alice.token),
        Some(json!({"client_id": "m1", "text": "x"})),
    )
    .await;
    assert_eq!(
        (st, v["duplicate"].as_bool(), v["seq"].as_i64()),
        (200, Some(true), Some(2))
    );

    // Bob replies over REST with a voice message.
    let voice = json!({"client_id": "b1", "reply_to": 2, "attachments": [{"file_id": "f123", "name": "voice.ogg", "size": 4000, "mime": "audio/ogg", "duration_ms": 2300, "waveform": [0, 10, 200, 30]}]});
    let (st, v) = http(
        a,
        "POST",
        &format!("/api/chats/{chat}/messages"),
        Some(&bob.token),
        Some(voice),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["seq"], 3);
    // Bob's own socket gets the event too (every device of every member).
    wb.expect(3).await;
    let m = wa.expect(3).await;
    assert_eq!(
        (m["seq"].as_i64(), m["message"]["reply_to"].as_i64()),
        (Some(3), Some(2))
    );
    assert_eq!(m["message"]["attachments"][0]["duration_ms"], 2300);

    // Typing and receipts reach the other member.
    wb.send(json!({"type": "typing", "chat_id": chat})).await;
    let t = wa.next_of("typing").await;
    assert_eq!(t["user_id"], bob.id);
    wb.send(json!({"type": "delivered", "chat_id": chat, "seq": 2}))
        .await;
    let r = wa.next_of("receipt").await;
    assert_eq!(
        (
            r["kind"].as_str(),
            r["seq"].as_i64(),
            r["session_id"].as_str()
        ),
        (Some("delivered"), Some(2), Some(bob.session.as_str()))
    );
    // Unread counts follow reads.
    let (_, v) = http(a, "GET", "/api/chats", Some(&bob.token), None).await;
    assert_eq!(v["chats"][0]["unread"], 1);
    wb.send(json!({"type": "read", "chat_id": chat, "seq": 2}))
        .await;
    let r = wa.next_of("receipt").await;
    assert_eq!(r["kind"], "read");
    let (_, v) = http(a, "GET", "/api/chats", Some(&bob.token), None).await;
    assert_eq!(v["chats"][0]["unread"], 0);
    // The members list keeps how far each member has received and read.
    let (_, v) = http(
        a,
        "GET",
        &format!("/api/chats/{chat}/members"),
        Some(&alice.token),
        None,
    )
    .await;
    let b = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == bob.id)
        .cloned()
        .unwrap();
    assert_eq!(
        (b["read_seq"].as_i64(), b["delivered_seq"].as_i64()),
        (Some(2), Some(2)),
        "{v}"
    );

    // Edit, react, delete for everyone.
    wa.send(json!({"type": "edit", "chat_id": chat, "seq": 2, "text": "привет всем"}))
        .await;
    assert_eq!(wa.next_of("ok").await["seq"], 4);
    let e = wb.expect(4).await;
    assert_eq!(
        (e["type"].as_str(), e["message"]["text"].as_str()),
        (Some("message_edited"), Some("привет всем"))
    );
    wb.send(json!({"type": "edit", "chat_id": chat, "seq": 2, "text": "hijack"}))
        .await;
    assert_eq!(wb.next_of("error").await["code"], "forbidden");
    wb.send(json!({"type": "react", "chat_id": chat, "seq": 2, "emoji": "👍"}))
        .await;
    let e = wa.expect(5).await;
    assert_eq!(
        (e["type"].as_str(), e["emoji"].as_str()),
        (Some("reaction"), Some("👍"))
    );
    let (_, h) = http(
        a,
        "GET",
        &format!("/api/chats/{chat}/messages"),
        Some(&alice.token),
        None,
    )
    .await;
    assert_eq!(h["messages"][1]["reactions"]["👍"], 1, "{h}");
    assert!(h["messages"][1]["edited_at"].is_i64());
    wb.send(json!({"type": "delete", "chat_id": chat, "seq": 3, "for_everyone": true}))
        .await;
    let e = wa.expect(6).await;
    assert_eq!(
        (e["type"].as_str(), e["message_seq"].as_i64()),
        (Some("message_deleted"), Some(3))
    );
    let (_, h) = http(
        a,
        "GET",
        &format!("/api/chats/{chat}/messages"),
        Some(&alice.token),
        None,
    )
    .await;
    assert_eq!(h["messages"][0]["deleted"], true);
    assert!(h["messages"][0].get("attachments").is_none());
    // Delete for me hides it for Alice only.
    let (st, _) = http(
        a,
        "DELETE",
        &format!("/api/chats/{chat}/messages/2"),
        Some(&alice.token),
        None,
    )
    .await;
    assert_eq!(st, 200);
    let (_, h) = http(
        a,
        "GET",
        &format!("/api/chats/{chat}/messages"),
        Some(&alice.token),
        None,
    )
    .await;
    assert!(
        h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["seq"] != 2)
    );
    let (_, h) = http(
        a,
        "GET",
        &format!("/api/chats/{chat}/messages"),
        Some(&bob.token),
        None,
    )
    .await;
    assert!(
        h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["seq"] == 2)
    );

    // A non-member is refused, over REST and over the socket (which stays usable).
    let (st, v) = http(
        a,
        "POST",
        &format!("/api/chats/{chat}/messages"),
        Some(&carol.token),
        Some(json!({"client_id": "c", "text": "hi"})),
    )
    .await;
    assert_eq!((st, v["error"].as_str()), (403, Some("not_member")));
    let (st, v) = http(
        a,
        "GET",
        &format!("/api/chats/{chat}/messages"),
        Some(&carol.token),
        None,
    )
    .await;
    assert_eq!((st, v["error"].as_str()), (403, Some("not_member")));
    let (st, v) = http(
        a,
        "GET",
        "/api/chats/12345/messages",
        Some(&carol.token),
        None,
    )
    .await;
    assert_eq!((st, v["error"].as_str()), (404, Some("not_found")));
    let mut wc = Ws::connect(a, &carol.token).await;
    wc.sync(json!([])).await;
    wc.send(json!({"type": "send", "chat_id": chat, "client_id": "c1", "text": "let me in", "req_id": "x"})).await;
    let e = wc.next().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["req_id"].as_str()),
        (Some("error"), Some("not_member"), Some("x"))
    );
    // Bad input on the socket: specific errors, connection stays open.
    wc.send_text("{oops").await;
    let e = wc.next().await;
    assert_eq!(e["code"], "bad_request");
    assert!(e["message"].as_str().unwrap().starts_with("invalid JSON"));
    wc.send(json!({"type": "fly"})).await;
    assert_eq!(wc.next().await["code"], "bad_request");
    wc.send_text(&format!(
        "{{\"type\":\"ping\",\"pad\":\"{}\"}}",
        "x".repeat(70_000)
    ))
    .await;
    assert_eq!(wc.next().await["code"], "too_large");
    wc.send(
        json!({"type": "send", "chat_id": chat, "client_id": "long", "text": "я".repeat(4097)}),
    )
    .await;
    assert_eq!(wc.next().await["code"], "too_large");
    wc.send(json!({"type": "ping"})).await;
    assert_eq!(wc.next().await["type"], "pong");
    // Oversized text is refused by the member too, and nothing is stored.
    let (st, v) = http(
        a,
        "POST",
        &format!("/api/chats/{chat}/messages"),
        Some(&alice.token),
        Some(json!({"client_id": "big", "text": "a".repeat(4097)})),
    )
    .await;
    assert_eq!((st, v["error"].as_str()), (413, Some("too_large")));
    let (_, info) = http(
        a,
        "GET",
        &format!("/api/chats/{chat}"),
        Some(&alice.token),
        None,
    )
    .await;
    assert_eq!(info["last_seq"], 6);

    // Membership: add Carol (she gets the event live), roles, leave.
    let (st, v) = http(
        a,
        "POST",
        &format!("/api/chats/{chat}/members"),
        Some(&bob.token),
        Some(json!({"user_id": carol.id})),
    )
    .await;
    assert_eq!((st, v["error"].as_str()), (403, Some("forbidden")));
    let (st, _) = http(
        a,
        "POST",
        &format!("/api/chats/{chat}/members"),
        Some(&alice.token),
        Some(json!({"user_id": carol.id})),
    )
    .await;
    assert_eq!(st, 200);
    let e = wc.expect(7).await;
    assert_eq!(
        (e["type"].as_str(), e["user_id"].as_i64()),
        (Some("member_added"), Some(carol.id))
    );
    let (st, _) = http(
        a,
        "PATCH",
        &format!("/api/chats/{chat}/members/{}", bob.id),
        Some(&alice.token),
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_eq!(st, 200);
    let (st, _) = http(
        a,
        "PATCH",
        &format!("/api/chats/{chat}"),
        Some(&bob.token),
        Some(json!({"title": "Team 2"})),
    )
    .await;
    assert_eq!(st, 200);
    let (st, _) = http(
        a,
        "POST",
        &format!("/api/chats/{chat}/leave"),
        Some(&carol.token),
        None,
    )
    .await;
    assert_eq!(st, 200);
    for (seq, ty) in [
        (8, "role_changed"),
        (9, "chat_renamed"),
        (10, "member_left"),
    ] {
        assert_eq!(wc.expect(seq).await["type"], ty);
    }
    let (_, v) = http(
        a,
        "GET",
        &format!("/api/chats/{chat}/members"),
        Some(&alice.token),
        None,
    )
    .await;
    assert_eq!(v["members"].as_array().unwrap().len(), 2);

    // A dialog, and a channel where only admins post.
    let (st, d) = http(
        a,
        "POST",
        "/api/dialogs",
        Some(&alice.token),
        Some(json!({"user_id": carol.id})),
    )
    .await;
    assert_eq!(st, 200, "{d}");
    let (_, d2) = http(
        a,
        "POST",
        "/api/dialogs",
        Some(&carol.token),
        Some(json!({"user_id": alice.id})),
    )
    .await;
    assert_eq!(d["id"], d2["id"]);
    let (_, ch) = http(
        a,
        "POST",
        "/api/chats",
        Some(&alice.token),
        Some(json!({"kind": "channel", "title": "News"})),
    )
    .await;
    let ch = ch["id"].as_i64().unwrap();
    let (st, _) = http(
        a,
        "POST",
        &format!("/api/chats/{ch}/members"),
        Some(&bob.token),
        Some(json!({"user_id": bob.id})),
    )
    .await;
    assert_eq!(st, 200);
    let (st, v) = http(
        a,
        "POST",
        &format!("/api/chats/{ch}/messages"),
        Some(&bob.token),
        Some(json!({"client_id": "n", "text": "hi"})),
    )
    .await;
    assert_eq!((st, v["error"].as_str()), (403, Some("forbidden")));
    let (st, _) = http(
        a,
        "POST",
        &format!("/api/chats/{ch}/messages"),
        Some(&alice.token),
        Some(json!({"client_id": "n", "text": "news"})),
    )
    .await;
    assert_eq!(st, 200);

    // Bob forwards Alice's channel post into the group.
    let (st, v) = http(
        a,
        "POST",
        &format!("/api/chats/{chat}/messages"),
        Some(&bob.token),
        Some(json!({"client_id": "fw", "forward_from": {"chat_id": ch, "seq": 3}})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (_, h) = http(
        a,
        "GET",
        &format!("/api/chats/{chat}/messages?limit=1"),
        Some(&bob.token),
        None,
    )
    .await;
    assert_eq!(h["messages"][0]["text"], "news");
    assert_eq!(h["messages"][0]["forwarded"]["chat_id"], ch);
    assert!(h["next_before"].is_i64());
}

async fn resume(url: Option<&str>) {
    let s = start(config(url)).await;
    let a = s.addr;
    let alice = login(a, &s.data_dir, "+79160000011", "a").await;
    let bob = login(a, &s.data_dir, "+79160000012", "b").await;
    let (_, g) = http(
        a,
        "POST",
        "/api/chats",
        Some(&alice.token),
        Some(json!({"kind": "group", "title": "R", "members": [bob.id]})),
    )
    .await;
    let chat = g["id"].as_i64().unwrap();
    let mut wa = Ws::connect(a, &alice.token).await;
    wa.sync(json!([])).await;
    let mut wb = Ws::connect(a, &bob.token).await;
    wb.sync(json!([{"chat_id": chat, "seq": 1}])).await;
    let mut last = 1;
    for i in 0..5 {
        wa.send(json!({"type": "send", "chat_id": chat, "client_id": format!("a{i}"), "text": format!("m{i}")})).await;
        wa.next_of("ack").await;
        wb.expect(last + 1).await;
        last += 1;
    }
    drop(wb);
    // While Bob is away, messages keep coming; one arrives from a concurrent writer
    // while he reconnects.
    for i in 5..30 {
        wa.send(json!({"type": "send", "chat_id": chat, "client_id": format!("a{i}"), "text": format!("m{i}")})).await;
        wa.next_of("ack").await;
    }
    let mut wb = Ws::connect(a, &bob.token).await;
    let writer = {
        let tok = alice.token.clone();
        tokio::spawn(async move {
            for i in 30..60 {
                let (st, _) = http(
                    a,
                    "POST",
                    &format!("/api/chats/{chat}/messages"),
                    Some(&tok),
                    Some(json!({"client_id": format!("a{i}"), "text": format!("m{i}")})),
                )
                .await;
                assert_eq!(st, 200);
            }
        })
    };
    wb.send(json!({"type": "sync", "since": [{"chat_id": chat, "seq": last}]}))
        .await;
    // Exactly what was missed, then live, no gap and no duplicate.
    let mut seen = Vec::new();
    while seen.len() < 55 {
        let e = wb.next().await;
        if e["type"] == "message" {
            seen.push(e["seq"].as_i64().unwrap());
        }
    }
    writer.await.unwrap();
    let want: Vec<i64> = (last + 1..=last + 55).collect();
    assert_eq!(seen, want);
    let texts: Vec<String> = {
        let (_, h) = http(
            a,
            "GET",
            &format!("/api/chats/{chat}/messages?limit=10"),
            Some(&bob.token),
            None,
        )
        .await;
        let mut out: Vec<String> = h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_string())
            .collect();
        // Page on with the cursor.
        let (_, h2) = http(
            a,
            "GET",
            &format!(
                "/api/chats/{chat}/messages?limit=10&before={}",
                h["next_before"]
            ),
            Some(&bob.token),
            None,
        )
        .await;
        out.extend(
            h2["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["text"].as_str().unwrap().to_string()),
        );
        out
    };
    let want_texts: Vec<String> = (40..60).rev().map(|i| format!("m{i}")).collect();
    assert_eq!(texts, want_texts);
}

async fn bots(url: Option<&str>) {
    let s = start(config(url)).await;
    let a = s.addr;
    let alice = login(a, &s.data_dir, "+79160000021", "a").await;
    let (st, b) = http(
        a,
        "POST",
        "/api/bots",
        Some(&alice.token),
        Some(json!({"name": "echo"})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let token = b["token"].as_str().unwrap().to_string();
    let bot_id = b["bot_id"].as_i64().unwrap();
    let (_, g) = http(
        a,
        "POST",
        "/api/chats",
        Some(&alice.token),
        Some(json!({"kind": "group", "title": "B", "members": [bot_id]})),
    )
    .await;
    let chat = g["id"].as_i64().unwrap();
    // The chat_created update is there already; acknowledge it through the offset.
    let (st, v) = http(
        a,
        "GET",
        &format!("/api/bot/{token}/getUpdates?offset=0&timeout=0"),
        None,
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["result"][0]["event"]["type"], "chat_created");
    let offset = v["result"][0]["update_id"].as_i64().unwrap() + 1;
    // Long poll: waits for the next message.
    let poll = tokio::spawn(async move {
        http(
            a,
            "GET",
            &format!("/api/bot/{token}/getUpdates?offset={offset}&timeout=10"),
            None,
            None,
        )
        .await
    });
    let (st, _) = http(
        a,
        "POST",
        &format!("/api/chats/{chat}/messages"),
        Some(&alice.token),
        Some(json!({"client_id": "1", "text": "/start"})),
    )
    .await;
    assert_eq!(st, 200);
    let (st, v) = poll.await.unwrap();
    assert_eq!(st, 200, "{v}");
    let ups = v["result"].as_array().unwrap();
    assert_eq!(ups.len(), 1, "{v}");
    let msg = &ups[0];
    assert_eq!(msg["event"]["message"]["text"], "/start");
    let next = ups.last().unwrap()["update_id"].as_i64().unwrap() + 1;
    let token = b["token"].as_str().unwrap();
    let (_, v) = http(
        a,
        "GET",
        &format!("/api/bot/{token}/getUpdates?offset={next}&timeout=0"),
        None,
        None,
    )
    .await;
    assert_eq!(v["result"].as_array().unwrap().len(), 0);
    // The bot answers.
    let mut wa = Ws::connect(a, &alice.token).await;
    wa.sync(json!([])).await;
    let (st, v) = http(
        a,
        "POST",
        &format!("/api/bot/{token}/sendMessage"),
        None,
        Some(json!({"chat_id": chat, "client_id": "r1", "text": "hello"})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let e = wa.expect(3).await;
    assert_eq!(
        (
            e["message"]["sender_id"].as_i64(),
            e["message"]["text"].as_str()
        ),
        (Some(bot_id), Some("hello"))
    );
    // Not a member elsewhere; a bad token is refused.
    let (st, _) = http(
        a,
        "POST",
        "/api/bot/1:nope/sendMessage",
        None,
        Some(json!({"chat_id": chat, "client_id": "x", "text": "x"})),
    )
    .await;
    assert_eq!(st, 401);

    // Webhook with a secret header, against a local receiver.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Option<String>, Value)>();
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |h: axum::http::HeaderMap, axum::Json(v): axum::Json<Value>| {
                let tx = tx.clone();
                async move {
                    let secret = h
                        .get(signalling::bots::WEBHOOK_SECRET_HEADER)
                        .map(|v| v.to_str().unwrap().to_string());
                    // Telegram's header carries the same secret.
                    assert_eq!(
                        h.get(signalling::bots::TELEGRAM_SECRET_HEADER)
                            .map(|v| v.to_str().unwrap().to_string()),
                        secret
                    );
                    tx.send((secret, v)).unwrap();
                    "ok"
                }
            },
        ),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, hook).await.unwrap() });
    let (st, v) = http(
        a,
        "POST",
        &format!("/api/bot/{token}/setWebhook"),
        None,
        Some(json!({"url": format!("http://{hook_addr}/hook"), "secret_token": "s3cret"})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (st, _) = http(
        a,
        "GET",
        &format!("/api/bot/{token}/getUpdates"),
        None,
        None,
    )
    .await;
    assert_eq!(st, 409);
    http(
        a,
        "POST",
        &format!("/api/chats/{chat}/messages"),
        Some(&alice.token),
        Some(json!({"client_id": "2", "text": "via hook"})),
    )
    .await;
    loop {
        let (secret, v) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("webhook call")
            .unwrap();
        assert_eq!(secret.as_deref(), Some("s3cret"));
        if v["event"]["type"] == "message" && v["event"]["message"]["text"] == "via hook" {
            assert_eq!(v["message"]["text"], "via hook", "{v}");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_sqlite() {
    accounts(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_sqlite() {
    chats(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_sqlite() {
    resume(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_sqlite() {
    bots(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_on_postgres() {
    let pg = postgres().await;
    sqlx::any::install_default_drivers();
    // Each scenario in its own database of the same server.
    for (i, name) in ["accounts", "chats", "resume", "bots"].iter().enumerate() {
        let db = format!("t{i}_{name}");
        let mut c = <sqlx::AnyConnection as sqlx::Connection>::connect(&pg.url)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut c)
            .await
            .unwrap();
        let url = format!("{}/{db}", pg.url.rsplit_once('/').unwrap().0);
        match *name {
            "accounts" => accounts(Some(&url)).await,
            "chats" => chats(Some(&url)).await,
            "resume" => resume(Some(&url)).await,
            _ => bots(Some(&url)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_new_device_presence() {
    let cfg = signalling::Config {
        code_cooldown: std::time::Duration::ZERO,
        codes_per_ip_per_hour: 14,
        ..config(None)
    };
    let s = start(cfg).await;
    let a = s.addr;
    // Per number: 10 a day.
    let mut codes = Vec::new();
    for i in 0..10 {
        let (st, v) = http(
            a,
            "POST",
            "/api/auth/code",
            None,
            Some(json!({"phone": "+79160000031"})),
        )
        .await;
        assert_eq!(st, 200, "code {i}: {v}");
        codes.push(dev_code(&s.data_dir, "+79160000031").0);
    }
    let (st, v) = http(
        a,
        "POST",
        "/api/auth/code",
        None,
        Some(json!({"phone": "+79160000031"})),
    )
    .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (429, Some("rate_limited")),
        "{v}"
    );
    // Only the latest code is valid.
    let latest = codes.last().unwrap().clone();
    if let Some(old) = codes.iter().rev().find(|c| **c != latest) {
        let (st, v) = http(
            a,
            "POST",
            "/api/auth/verify",
            None,
            Some(json!({"phone": "+79160000031", "code": old})),
        )
        .await;
        assert_eq!((st, v["error"].as_str()), (401, Some("code_wrong")), "{v}");
    }
    let (st, v) = http(
        a,
        "POST",
        "/api/auth/verify",
        None,
        Some(json!({"phone": "+79160000031", "code": latest})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let first = login(a, &s.data_dir, "+79160000032", "phone").await; // request 12
    // A new device of the same user: the first device is told.
    let mut w1 = Ws::connect(a, &first.token).await;
    w1.sync(json!([])).await;
    let second = login(a, &s.data_dir, "+79160000032", "laptop").await; // request 13
    assert_eq!(second.id, first.id);
    let e = w1.next_of("new_login").await;
    assert_eq!(
        (e["session_id"].as_str(), e["device_name"].as_str()),
        (Some(second.session.as_str()), Some("laptop"))
    );
    let (_, v) = http(a, "GET", "/api/sessions", Some(&second.token), None).await;
    assert_eq!(v["sessions"].as_array().unwrap().len(), 2);
    // Per IP: request 14 passes, 15 is refused.
    let (st, _) = http(
        a,
        "POST",
        "/api/auth/code",
        None,
        Some(json!({"phone": "+79160000033"})),
    )
    .await;
    assert_eq!(st, 200);
    let (st, v) = http(
        a,
        "POST",
        "/api/auth/code",
        None,
        Some(json!({"phone": "+79160000034"})),
    )
    .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (429, Some("rate_limited")),
        "{v}"
    );
    let (code, _) = dev_code(&s.data_dir, "+79160000033");
    let (_, v) = http(
        a,
        "POST",
        "/api/auth/verify",
        None,
        Some(json!({"phone": "+79160000033", "code": code})),
    )
    .await;
    let peer_token = v["access_token"].as_str().unwrap().to_string();

    // Presence: a dialog peer sees the user go online and offline.
    http(
        a,
        "POST",
        "/api/dialogs",
        Some(&peer_token),
        Some(json!({"user_id": first.id})),
    )
    .await;
    let mut wp = Ws::connect(a, &peer_token).await;
    wp.sync(json!([])).await;
    let (_, prof) = http(
        a,
        "GET",
        &format!("/api/users/{}", first.id),
        Some(&peer_token),
        None,
    )
    .await;
    assert_eq!(prof["online"], true);
    // Revoke the first device from the second: its socket closes, the user is offline.
    let (st, _) = http(
        a,
        "DELETE",
        &format!("/api/sessions/{}", first.session),
        Some(&second.token),
        None,
    )
    .await;
    assert_eq!(st, 200);
    let e = wp.next_of("presence").await;
    assert_eq!(
        (e["user_id"].as_i64(), e["online"].as_bool()),
        (Some(first.id), Some(false))
    );
    let (st, v) = http(a, "GET", "/api/chats", Some(&first.token), None).await;
    assert_eq!((st, v["error"].as_str()), (401, Some("session_revoked")));
    // Honouring privacy: with last_seen hidden, the peer sees neither.
    http(
        a,
        "PATCH",
        "/api/me",
        Some(&second.token),
        Some(json!({"last_seen_privacy": "nobody", "phone_privacy": "nobody"})),
    )
    .await;
    let (_, prof) = http(
        a,
        "GET",
        &format!("/api/users/{}", first.id),
        Some(&peer_token),
        None,
    )
    .await;
    assert_eq!(prof["last_seen_hidden"], true);
    assert!(
        prof.get("online").is_none()
            && prof.get("last_seen").is_none()
            && prof.get("phone").is_none(),
        "{prof}"
    );
    let (st, _) = http(
        a,
        "POST",
        "/api/users/lookup",
        Some(&peer_token),
        Some(json!({"phone": "+79160000032"})),
    )
    .await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_rate_limit_and_limits_leave_nothing_half() {
    let cfg = signalling::Config {
        messages_per_second: 1,
        ..config(None)
    };
    let s = start(cfg).await;
    let a = s.addr;
    let u = login(a, &s.data_dir, "+79160000051", "a").await;
    let v = login(a, &s.data_dir, "+79160000052", "b").await;
    let (_, d) = http(
        a,
        "POST",
        "/api/dialogs",
        Some(&u.token),
        Some(json!({"user_id": v.id})),
    )
    .await;
    let chat = d["id"].as_i64().unwrap();
    let mut ws = Ws::connect(a, &u.token).await;
    ws.sync(json!([])).await;
    // Burst of two passes, the third is refused with a specific error; the socket stays.
    for i in 0..3 {
        ws.send(json!({"type": "send", "chat_id": chat, "client_id": format!("r{i}"), "text": "x", "req_id": i})).await;
    }
    let mut acks = 0;
    let mut limited = 0;
    while acks + limited < 3 {
        let e = ws.next().await;
        match e["type"].as_str() {
            Some("ack") => acks += 1,
            Some("error") => {
                assert_eq!(e["code"], "rate_limited");
                assert_eq!(e["retry_after"], 1);
                limited += 1;
            }
            _ => {}
        }
    }
    assert_eq!((acks, limited), (2, 1));
    // A retry of an already stored message is answered even while limited.
    ws.send(json!({"type": "send", "chat_id": chat, "client_id": "r0", "text": "x"}))
        .await;
    assert_eq!(ws.next_of("ack").await["duplicate"], true);
    let (_, info) = http(
        a,
        "GET",
        &format!("/api/chats/{chat}"),
        Some(&u.token),
        None,
    )
    .await;
    assert_eq!(info["last_seq"], 3);
    // Bad attachment: refused whole.
    let (st, v2) = http(
        a,
        "POST",
        &format!("/api/chats/{chat}/messages"),
        Some(&v.token),
        Some(json!({"client_id": "bad", "attachments": [{"file_id": "f", "name": "v.ogg", "size": 1, "mime": "audio/ogg", "waveform": [1, 2]}]})),
    )
    .await;
    assert_eq!(
        (st, v2["error"].as_str()),
        (400, Some("bad_request")),
        "{v2}"
    );
    let (st, v2) = http_raw(
        a,
        "POST",
        &format!("/api/chats/{chat}/messages"),
        Some(&v.token),
        &format!(
            "{{\"client_id\":\"big\",\"text\":\"{}\"}}",
            "a".repeat(70_000)
        ),
    )
    .await;
    assert_eq!((st, v2["error"].as_str()), (413, Some("too_large")), "{v2}");
    let (_, info) = http(
        a,
        "GET",
        &format!("/api/chats/{chat}"),
        Some(&u.token),
        None,
    )
    .await;
    assert_eq!(info["last_seq"], 3);
}
