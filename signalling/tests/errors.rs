//! Every error of the signalling API is JSON with a stable code, including the ones the
//! HTTP framework makes: unparsable path and query parameters, unknown routes, wrong
//! methods, bad bodies and content types.

mod support;

use serde_json::{Value, json};
use support::*;

/// Method, path, token, content type, body; the status and code expected.
type Case<'a> = (
    &'a str,
    String,
    Option<&'a str>,
    Option<&'a str>,
    Vec<u8>,
    u16,
    &'a str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framework_errors_are_json_with_a_code() {
    let s = start(config(None)).await;
    let a = s.addr;
    let alice = login(a, &s.data_dir, "+79160000501", "a").await;
    let (st, chat) = http(
        a,
        "POST",
        "/api/chats",
        Some(&alice.token),
        Some(json!({"kind": "group", "title": "E"})),
    )
    .await;
    assert_eq!(st, 200, "{chat}");
    let chat = chat["id"].as_i64().unwrap();
    let t = Some(alice.token.as_str());
    let json_ct = Some("application/json");
    let big = vec![b' '; 70_000];
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/api/users/abc".into(),
            t,
            None,
            vec![],
            400,
            "bad_request",
        ),
        (
            "GET",
            "/api/users/99999999999999999999".into(),
            t,
            None,
            vec![],
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("/api/chats/{chat}/messages?limit=abc"),
            t,
            None,
            vec![],
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("/api/chats/{chat}/messages?before=1e3"),
            t,
            None,
            vec![],
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("/api/chats/{chat}/events"),
            t,
            None,
            vec![],
            400,
            "bad_request",
        ),
        (
            "DELETE",
            format!("/api/chats/{chat}/messages/x"),
            t,
            None,
            vec![],
            400,
            "bad_request",
        ),
        (
            "DELETE",
            format!("/api/chats/{chat}/messages/1?for_everyone=maybe"),
            t,
            None,
            vec![],
            400,
            "bad_request",
        ),
        (
            "DELETE",
            format!("/api/chats/{chat}/members/-"),
            t,
            None,
            vec![],
            400,
            "bad_request",
        ),
        (
            "GET",
            "/api/calls/18446744073709551616".into(),
            t,
            None,
            vec![],
            400,
            "bad_request",
        ),
        ("GET", "/api/nope".into(), t, None, vec![], 404, "not_found"),
        ("GET", "/api/".into(), None, None, vec![], 404, "not_found"),
        ("GET", "/api".into(), None, None, vec![], 404, "not_found"),
        (
            "POST",
            "/api/chats/1/messages/2/3/4".into(),
            t,
            None,
            vec![],
            404,
            "not_found",
        ),
        (
            "DELETE",
            "/api/me".into(),
            t,
            None,
            vec![],
            405,
            "method_not_allowed",
        ),
        (
            "PUT",
            "/api/chats".into(),
            t,
            None,
            vec![],
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/api/bots".into(),
            t,
            json_ct,
            b"{".to_vec(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/chats".into(),
            t,
            json_ct,
            b"[1]".to_vec(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/chats".into(),
            t,
            Some("text/plain"),
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/api/chats".into(),
            t,
            None,
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/api/chats".into(),
            t,
            json_ct,
            big,
            413,
            "too_large",
        ),
        (
            "GET",
            // The Bot API checks the token first, as Telegram does.
            "/api/bot/1:x/getUpdates?offset=abc".into(),
            None,
            None,
            vec![],
            401,
            "token_invalid",
        ),
        (
            "POST",
            "/ws".into(),
            None,
            None,
            vec![],
            405,
            "method_not_allowed",
        ),
    ];
    for (method, path, token, ct, body, status, code) in cases {
        let r = request(a, method, &path, token, ct, body).await;
        let what = format!(
            "{method} {path} -> {} {:?} {}",
            r.status, r.content_type, r.body
        );
        assert_eq!(r.status, status, "{what}");
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/json"),
            "{what}"
        );
        let v: Value = serde_json::from_str(&r.body).unwrap_or_else(|_| panic!("{what}"));
        assert_eq!(v["error"], code, "{what}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    // A GET of /ws that is not an upgrade is refused in JSON too.
    let r = request(a, "GET", "/ws", None, None, vec![]).await;
    assert!(r.status >= 400, "{}", r.body);
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert!(v["error"].as_str().is_some(), "{v}");
    // 405 keeps its Allow header's meaning in the message, and the routes still work.
    let (st, me) = http(a, "GET", "/api/me", t, None).await;
    assert_eq!(st, 200, "{me}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_last_seen_keeps_each_field_one_type() {
    let s = start(config(None)).await;
    let a = s.addr;
    let alice = login(a, &s.data_dir, "+79160000502", "a").await;
    let bob = login(a, &s.data_dir, "+79160000503", "b").await;
    let path = format!("/api/users/{}", alice.id);
    let (st, v) = http(a, "GET", &path, Some(&bob.token), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["last_seen_hidden"], false, "{v}");
    assert!(v["last_seen"].is_i64() && v["online"].is_boolean(), "{v}");
    let (st, _) = http(
        a,
        "PATCH",
        "/api/me",
        Some(&alice.token),
        Some(json!({"last_seen_privacy": "nobody"})),
    )
    .await;
    assert_eq!(st, 200);
    let (_, v) = http(a, "GET", &path, Some(&bob.token), None).await;
    assert_eq!(v["last_seen_hidden"], true, "{v}");
    assert!(
        v.get("last_seen").is_none() && v.get("online").is_none(),
        "{v}"
    );
}
