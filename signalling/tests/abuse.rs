//! Holding against abuse, through the real endpoints: login-code guessing (concurrent
//! too), per-IP and per-number limits, refresh-token reuse, revocation reaching every
//! plane, and WebSocket reaping. On SQLite, and on PostgreSQL where storage decides.

mod support;

use serde_json::{Value, json};
use support::*;

async fn verify(a: std::net::SocketAddr, phone: &str, code: &str) -> (u16, Value) {
    http(
        a,
        "POST",
        "/api/auth/verify",
        None,
        Some(json!({"phone": phone, "code": code})),
    )
    .await
}

/// 100 wrong guesses sent at once: exactly 5 are compared, the code is burnt, and the
/// right code is refused afterwards.
async fn concurrent_guesses(url: Option<&str>) {
    // One client address sends them all: lift the per-IP limit out of the way.
    let s = start(signalling::Config {
        verifies_per_ip_per_hour: 1000,
        ..config(url)
    })
    .await;
    let a = s.addr;
    let phone = "+79160000071";
    let (st, v) = http(
        a,
        "POST",
        "/api/auth/code",
        None,
        Some(json!({"phone": phone})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (code, _) = dev_code(&s.data_dir, phone);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let answers = futures_util::future::join_all((0..100).map(|_| verify(a, phone, wrong))).await;
    let count = |c: &str| {
        answers
            .iter()
            .filter(|(_, v)| v["error"].as_str() == Some(c))
            .count()
    };
    assert_eq!(
        (count("code_wrong"), count("code_expired")),
        (4, 96),
        "statuses: {:?}",
        answers.iter().map(|(s, _)| s).collect::<Vec<_>>()
    );
    assert_eq!(s.sig.app().metrics.codes_wrong.get(), 5);
    let (st, v) = verify(a, phone, &code).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (401, Some("code_expired")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_burn_the_code_after_five_sqlite() {
    concurrent_guesses(None).await;
}

/// A rotated refresh token presented again revokes the whole session: the access token
/// minted by the rotation is refused (`session_revoked`) here and by every plane of the
/// process, and so is the refresh token the rotation gave.
async fn refresh_reuse(url: Option<&str>) {
    let s = start(config(url)).await;
    let a = s.addr;
    let u = login(a, &s.data_dir, "+79160000072", "phone").await;
    let refresh = |t: String| async move {
        http(
            a,
            "POST",
            "/api/auth/refresh",
            None,
            Some(json!({"refresh_token": t})),
        )
        .await
    };
    let (st, v) = refresh(u.refresh.clone()).await;
    assert_eq!(st, 200, "{v}");
    let (new_access, new_refresh) = (
        v["access_token"].as_str().unwrap().to_string(),
        v["refresh_token"].as_str().unwrap().to_string(),
    );
    let (st, _) = http(a, "GET", "/api/chats", Some(&new_access), None).await;
    assert_eq!(st, 200);
    // The old one again: someone else holds a copy.
    let (st, v) = refresh(u.refresh.clone()).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (401, Some("refresh_reused")),
        "{v}"
    );
    for t in [&new_access, &u.token] {
        let (st, v) = http(a, "GET", "/api/chats", Some(t), None).await;
        assert_eq!(
            (st, v["error"].as_str()),
            (401, Some("session_revoked")),
            "{v}"
        );
        assert_eq!(s.keys.verify(t), Err(common::TokenError::Revoked));
    }
    let (st, v) = refresh(new_refresh).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (401, Some("refresh_invalid")),
        "{v}"
    );
    let (st, v) = refresh(u.refresh.clone()).await;
    assert_eq!(st, 401, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_reuse_revokes_the_session_sqlite() {
    refresh_reuse(None).await;
}

/// Per client network: `verifies_per_ip_per_hour` code checks, then `rate_limited`;
/// two IPv6 addresses of one /64 share the allowance, another /64 has its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_is_limited_per_ip_and_per_ipv6_64() {
    let s = start(signalling::Config {
        verifies_per_ip_per_hour: 3,
        ..config(None)
    })
    .await;
    let a = s.addr;
    for _ in 0..3 {
        let (st, v) = verify(a, "+79160000073", "123456").await;
        assert_eq!(
            (st, v["error"].as_str()),
            (401, Some("code_expired")),
            "{v}"
        );
    }
    let (st, v) = verify(a, "+79160000073", "123456").await;
    assert_eq!(
        (st, v["error"].as_str()),
        (429, Some("rate_limited")),
        "{v}"
    );
    assert!(v["retry_after"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(s.sig.app().metrics.verifies_refused.get(), 1);

    // The same rule, by address (one machine cannot connect from many IPv6 addresses).
    let app = s.sig.app();
    let check = |ip: &str| {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        async move {
            match app.verify_code("+79160000073", "123456", "", ip).await {
                Err(e) => e.code(),
                Ok(_) => "ok",
            }
        }
    };
    assert_eq!(check("2001:db8:1:2::1").await, "code_expired");
    assert_eq!(check("2001:db8:1:2::1").await, "code_expired");
    assert_eq!(
        check("2001:db8:1:2:ffff:ffff:ffff:ffff").await,
        "code_expired"
    );
    assert_eq!(check("2001:db8:1:2:aaaa::7").await, "rate_limited");
    assert_eq!(check("2001:db8:1:3::1").await, "code_expired");
}

/// Burning `burnt_codes_before_lockout` codes locks the number: code requests and
/// checks answer `number_locked` with a `retry_after`, whatever the address; other
/// numbers are not affected. A code replaced after a wrong try counts as burnt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burnt_codes_lock_the_number() {
    let s = start(signalling::Config {
        code_cooldown: std::time::Duration::ZERO,
        verifies_per_ip_per_hour: 1000,
        ..config(None)
    })
    .await;
    let a = s.addr;
    let phone = "+79160000074";
    let code_req = |p: &'static str| async move {
        http(a, "POST", "/api/auth/code", None, Some(json!({"phone": p}))).await
    };
    let wrong_for = |code: &str| if code == "000000" { "111111" } else { "000000" };
    // Codes replaced without a try do not count.
    for _ in 0..3 {
        assert_eq!(code_req(phone).await.0, 200);
    }
    // Burn 1: five wrong tries.
    let wrong = wrong_for(&dev_code(&s.data_dir, phone).0);
    for _ in 0..4 {
        assert_eq!(verify(a, phone, wrong).await.1["error"], "code_wrong");
    }
    assert_eq!(verify(a, phone, wrong).await.1["error"], "code_expired");
    // Burn 2: one wrong try, then a new code (which is sent).
    assert_eq!(code_req(phone).await.0, 200);
    let wrong = wrong_for(&dev_code(&s.data_dir, phone).0);
    assert_eq!(verify(a, phone, wrong).await.1["error"], "code_wrong");
    assert_eq!(code_req(phone).await.0, 200);
    // Burn 3: four wrong tries, then asking for a new code: refused, the number is locked.
    let wrong = wrong_for(&dev_code(&s.data_dir, phone).0);
    for _ in 0..4 {
        assert_eq!(verify(a, phone, wrong).await.1["error"], "code_wrong");
    }
    let (st, v) = code_req(phone).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (429, Some("number_locked")),
        "{v}"
    );
    let retry = v["retry_after"].as_u64().unwrap();
    assert!(retry > 23 * 3600 && retry <= 24 * 3600 + 1, "{v}");
    let (st, v) = verify(a, phone, "123456").await;
    assert_eq!(
        (st, v["error"].as_str()),
        (429, Some("number_locked")),
        "{v}"
    );
    let app = s.sig.app();
    let other_net = "2001:db8:9::1".parse().unwrap();
    let e = app
        .verify_code(phone, "123456", "", other_net)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "number_locked");
    // Another number logs in as usual.
    login(a, &s.data_dir, "+79160000075", "phone").await;
}

/// Logging out puts the session on the process-wide list: `Keys::verify`, which the
/// relay and the sfu use, refuses its token at once, and still after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_reaches_every_plane_and_survives_restart() {
    let s = start(config(None)).await;
    let a = s.addr;
    let u = login(a, &s.data_dir, "+79160000076", "phone").await;
    let keep = login(a, &s.data_dir, "+79160000077", "phone").await;
    assert!(s.keys.verify(&u.token).is_ok());
    let (st, _) = http(a, "POST", "/api/auth/logout", Some(&u.token), None).await;
    assert_eq!(st, 200);
    assert_eq!(s.keys.verify(&u.token), Err(common::TokenError::Revoked));
    assert!(s.keys.verify(&keep.token).is_ok());
    let (st, v) = http(a, "GET", "/api/me", Some(&u.token), None).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (401, Some("session_revoked")),
        "{v}"
    );

    let s = s.restart().await;
    assert_eq!(s.keys.verify(&u.token), Err(common::TokenError::Revoked));
    assert!(s.keys.verify(&keep.token).is_ok());
    let (st, v) = http(s.addr, "GET", "/api/me", Some(&u.token), None).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (401, Some("session_revoked")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_on_postgres() {
    let pg = postgres().await;
    sqlx::any::install_default_drivers();
    for (i, name) in ["guesses", "refresh"].iter().enumerate() {
        let db = format!("a{i}_{name}");
        let mut c = <sqlx::AnyConnection as sqlx::Connection>::connect(&pg.url)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut c)
            .await
            .unwrap();
        let url = format!("{}/{db}", pg.url.rsplit_once('/').unwrap().0);
        match *name {
            "guesses" => concurrent_guesses(Some(&url)).await,
            _ => refresh_reuse(Some(&url)).await,
        }
    }
}

/// Reads close frames, skipping anything else, until the socket ends; the close code.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(WAIT, ws.inner.next())
            .await
            .expect("socket not closed in time")
        {
            Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => return None,
        }
    }
}

/// `/ws` without a token: the first frame must authenticate within `ws_auth_timeout`;
/// a connection that never does is closed (4002), a refused token closes it (4003), a
/// good one is answered `authenticated` and the connection works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_ws_is_closed_after_the_auth_timeout() {
    let timeout = std::time::Duration::from_millis(300);
    let s = start(signalling::Config {
        ws_auth_timeout: timeout,
        ..config(None)
    })
    .await;
    let a = s.addr;
    let u = login(a, &s.data_dir, "+79160000078", "phone").await;
    let open = || async move {
        let (inner, _) = tokio_tungstenite::connect_async(format!("ws://{a}/ws"))
            .await
            .expect("an upgrade without a token is accepted");
        Ws { inner }
    };
    let mut idle = open().await;
    let t0 = std::time::Instant::now();
    assert_eq!(close_code(&mut idle).await, Some(4002));
    let took = t0.elapsed();
    assert!(
        took >= timeout - std::time::Duration::from_millis(50)
            && took < timeout + std::time::Duration::from_secs(2),
        "closed after {took:?}"
    );

    let mut bad = open().await;
    bad.send(json!({"type": "auth", "access_token": "garbage", "req_id": 1}))
        .await;
    let e = bad.next().await;
    assert_eq!(
        (e["code"].as_str(), e["req_id"].as_i64()),
        (Some("token_invalid"), Some(1)),
        "{e}"
    );
    assert_eq!(close_code(&mut bad).await, Some(4003));

    let mut good = open().await;
    good.send(json!({"type": "auth", "access_token": u.token}))
        .await;
    let ok = good.next().await;
    assert_eq!(
        (ok["type"].as_str(), ok["user_id"].as_i64()),
        (Some("authenticated"), Some(u.id)),
        "{ok}"
    );
    good.sync(json!([])).await;
    good.send(json!({"type": "ping"})).await;
    good.next_of("pong").await;
}

/// The server pings every `ws_ping_interval`; a peer that answers nothing is closed
/// (4004) within `ws_idle_timeout`, while a client that answers pings stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_closed_after_the_idle_timeout_and_a_live_one_stays() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let idle = std::time::Duration::from_millis(500);
    let s = start(signalling::Config {
        ws_ping_interval: std::time::Duration::from_millis(100),
        ws_idle_timeout: idle,
        ..config(None)
    })
    .await;
    let a = s.addr;
    let u = login(a, &s.data_dir, "+79160000079", "phone").await;

    // A peer that upgrades, then never sends a byte (so never a pong).
    let mut tcp = tokio::net::TcpStream::connect(a).await.unwrap();
    let req = format!(
        "GET /ws?access_token={} HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        u.token
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut upgraded_at = None;
    loop {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("silent peer not closed in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if upgraded_at.is_none() && got.windows(4).any(|w| w == b"\r\n\r\n") {
            assert!(
                got.starts_with(b"HTTP/1.1 101"),
                "{}",
                String::from_utf8_lossy(&got)
            );
            upgraded_at = Some(std::time::Instant::now());
        }
    }
    let took = upgraded_at.expect("upgraded").elapsed();
    assert!(
        took >= idle - std::time::Duration::from_millis(50)
            && took < idle + std::time::Duration::from_secs(2),
        "closed after {took:?}"
    );
    let has = |pat: &[u8]| got.windows(pat.len()).any(|w| w == pat);
    assert!(has(&[0x89, 0x00]), "no ping was sent");
    // Close frame, unmasked, code 4004 (0x0fa4).
    assert!(
        got.windows(4)
            .any(|w| w[0] == 0x88 && w[2..] == [0x0f, 0xa4]),
        "no close 4004"
    );

    // A client that answers pings (tungstenite does as it reads) outlives 3 idle timeouts.
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut live = Ws::connect(a, &u.token).await;
    live.sync(json!([])).await;
    let until = tokio::time::Instant::now() + idle * 3;
    let mut pings = 0;
    while let Ok(m) = tokio::time::timeout_at(until, live.inner.next()).await {
        match m {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Close(f))) => panic!("live client closed: {f:?}"),
            Some(Ok(_)) => {}
            other => panic!("live client ended: {other:?}"),
        }
    }
    assert!(pings >= 5, "{pings} pings in {:?}", idle * 3);
    live.send(json!({"type": "ping"})).await;
    live.next_of("pong").await;
}

/// Frames are written as soon as they exist and nothing holds one back for a later one:
/// the answer to a `send` and the message event it causes leave together, and so do
/// the replayed events of a `sync`. (Written apart, the second small write waited for
/// the client's delayed ACK: 40+ ms.) Measured on a listener without TCP_NODELAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_and_the_events_they_cause_leave_together() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let s = start(config(None)).await;
    let a = s.addr;
    let u = login(a, &s.data_dir, "+79160000091", "a").await;
    let v = login(a, &s.data_dir, "+79160000092", "b").await;
    let (_, d) = http(
        a,
        "POST",
        "/api/dialogs",
        Some(&u.token),
        Some(json!({"user_id": v.id})),
    )
    .await;
    let chat = d["id"].as_i64().unwrap();
    for i in 0..5 {
        let body = json!({"client_id": format!("c{i}"), "text": "x"});
        let path = format!("/api/chats/{chat}/messages");
        assert_eq!(
            http(a, "POST", &path, Some(&u.token), Some(body)).await.0,
            200
        );
    }
    let mut worst = std::time::Duration::ZERO;
    for round in 0..20 {
        let mut ws = Ws::connect(a, &v.token).await;
        ws.send(json!({"type": "sync", "since": [{"chat_id": chat, "seq": 0}]}))
            .await;
        let mut first = None;
        loop {
            let Some(Ok(Message::Text(t))) = ws.inner.next().await else {
                continue;
            };
            let now = std::time::Instant::now();
            worst = worst.max(now - *first.get_or_insert(now));
            if t.contains("\"synced\"") {
                break;
            }
        }
        let id = format!("r{round}");
        ws.send(json!({"type": "send", "chat_id": chat, "client_id": id, "text": "y"}))
            .await;
        let (mut ack, mut event) = (None, None);
        while ack.is_none() || event.is_none() {
            let Some(Ok(Message::Text(t))) = ws.inner.next().await else {
                continue;
            };
            let v: Value = serde_json::from_str(&t).unwrap();
            let now = Some(std::time::Instant::now());
            match v["type"].as_str() {
                Some("ack") if v["client_id"] == id => ack = now,
                Some("message") if v["message"]["client_id"] == id => event = now,
                _ => {}
            }
        }
        let (x, y) = (ack.unwrap(), event.unwrap());
        worst = worst.max(x.max(y) - x.min(y));
    }
    assert!(
        worst < std::time::Duration::from_millis(20),
        "frames of one batch arrived {worst:?} apart"
    );
}

/// One account holds at most `ws_connections_per_user` sockets: one more gets
/// `too_many_connections` and is closed (4005); once one closes, a new one is let in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_account_are_capped() {
    let s = start(signalling::Config {
        ws_connections_per_user: 2,
        ..config(None)
    })
    .await;
    let a = s.addr;
    let u = login(a, &s.data_dir, "+79160000093", "phone").await;
    let mut first = Ws::connect(a, &u.token).await;
    first.sync(json!([])).await;
    let mut second = Ws::connect(a, &u.token).await;
    second.sync(json!([])).await;
    let mut third = Ws::connect(a, &u.token).await;
    let e = third.next().await;
    assert_eq!(e["code"], "too_many_connections", "{e}");
    assert_eq!(close_code(&mut third).await, Some(4005));
    first.inner.close(None).await.unwrap();
    assert_eq!(close_code(&mut first).await, None);
    // The server forgets the closed one right after answering its close.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut again = Ws::connect(a, &u.token).await;
        again.send(json!({"type": "ping"})).await;
        if again.next().await["type"] == "pong" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never let in again");
    }
    second.send(json!({"type": "ping"})).await;
    second.next_of("pong").await;
}
