//! The protocol examples in docs/chat.md parse as the server parses them; the HTTP SMS
//! provider posts to a real local gateway; the OpenAPI description is served.

mod support;

use serde_json::{Value, json};
use support::*;

fn blocks(tag: &str) -> Vec<String> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/chat.md")).unwrap();
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in doc.lines() {
        match &mut cur {
            None if line.trim() == format!("```json {tag}") => cur = Some(String::new()),
            Some(b) if line.trim() == "```" => {
                out.push(std::mem::take(b));
                cur = None;
            }
            Some(b) => b.push_str(line),
            None => {}
        }
    }
    out
}

#[test]
fn documented_client_frames_parse() {
    let client = blocks("client");
    assert!(client.len() >= 9, "examples found: {}", client.len());
    for b in &client {
        let r: Result<signalling::ws::ClientMsg, _> = serde_json::from_str(b);
        assert!(r.is_ok(), "docs example does not parse: {b}: {r:?}");
    }
    for b in blocks("server") {
        let v: Value = serde_json::from_str(&b).unwrap_or_else(|e| panic!("{b}: {e}"));
        assert!(v["type"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_examples_run_against_the_server() {
    // The documented client frames, with the chat ids of a real chat, get the documented answers.
    let s = start(config(None)).await;
    let a = s.addr;
    let u = login(a, &s.data_dir, "+79160000041", "d").await;
    let v = login(a, &s.data_dir, "+79160000042", "d").await;
    let (_, g) = http(
        a,
        "POST",
        "/api/chats",
        Some(&u.token),
        Some(json!({"kind": "group", "title": "Docs", "members": [v.id]})),
    )
    .await;
    let chat = g["id"].as_i64().unwrap();
    let mut ws = Ws::connect(a, &u.token).await;
    for b in blocks("client") {
        let mut f: Value = serde_json::from_str(&b).unwrap();
        if f.get("chat_id").is_some() {
            f["chat_id"] = json!(chat);
        }
        if f["type"] == "sync" {
            f["since"] = json!([{"chat_id": chat, "seq": 0}]);
        }
        if matches!(
            f["type"].as_str(),
            Some("edit" | "delete" | "react" | "delivered" | "read")
        ) {
            f["seq"] = json!(2);
        }
        let ty = f["type"].as_str().unwrap().to_string();
        if ty == "react" || ty == "delete" {
            // React before the delete removes the message; docs order is edit, delete, react.
            continue;
        }
        ws.send(f).await;
        let want = match ty.as_str() {
            "sync" => Some("synced"),
            "send" => Some("ack"),
            "edit" => Some("ok"),
            "ping" => Some("pong"),
            _ => None,
        };
        if let Some(w) = want {
            let e = ws.next_of(w).await;
            assert_eq!(e["type"], w);
        }
    }
    ws.send(json!({"type": "ping"})).await;
    ws.next_of("pong").await;

    // The documented auth frame, with a real token, on a socket opened without one.
    let auth = blocks("auth");
    assert_eq!(auth.len(), 1);
    let mut f: Value = serde_json::from_str(&auth[0]).unwrap();
    f["access_token"] = json!(v.token);
    let (inner, _) = tokio_tungstenite::connect_async(format!("ws://{a}/ws"))
        .await
        .unwrap();
    let mut ws = Ws { inner };
    ws.send(f).await;
    let e = ws.next().await;
    assert_eq!(
        (
            e["type"].as_str(),
            e["user_id"].as_i64(),
            e["req_id"].as_i64()
        ),
        (Some("authenticated"), Some(v.id), Some(1)),
        "{e}"
    );
    ws.sync(json!([])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sms_provider_posts_to_the_gateway() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Option<String>, Value)>();
    let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fail2 = fail.clone();
    let gw = axum::Router::new().route(
        "/sms",
        axum::routing::post(
            move |h: axum::http::HeaderMap, axum::Json(v): axum::Json<Value>| {
                let tx = tx.clone();
                let fail = fail2.clone();
                async move {
                    if fail.load(std::sync::atomic::Ordering::SeqCst) {
                        return axum::http::StatusCode::BAD_GATEWAY;
                    }
                    tx.send((
                        h.get("authorization")
                            .map(|v| v.to_str().unwrap().to_string()),
                        v,
                    ))
                    .unwrap();
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw_addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, gw).await.unwrap() });
    let cfg = signalling::Config {
        sms_provider: "http".into(),
        sms_gateway_url: format!("http://{gw_addr}/sms"),
        sms_gateway_auth: "Bearer gw-key".into(),
        sms_domain: "max.example".into(),
        ..Default::default()
    };
    let s = start(cfg).await;
    let (st, v) = http(
        s.addr,
        "POST",
        "/api/auth/code",
        None,
        Some(json!({"phone": "+375 29 765-43-21"})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (auth, body) = rx.recv().await.unwrap();
    assert_eq!(auth.as_deref(), Some("Bearer gw-key"));
    assert_eq!(body["to"], "+375297654321");
    let text = body["text"].as_str().unwrap();
    let code = text
        .lines()
        .last()
        .unwrap()
        .strip_prefix("@max.example #")
        .expect("domain-bound last line");
    assert_eq!(code.len(), 6);
    // The code from the SMS logs in; no dev file was written.
    assert!(!s.data_dir.join(signalling::sms::DEV_SMS_FILE).exists());
    let (st, v) = http(
        s.addr,
        "POST",
        "/api/auth/verify",
        None,
        Some(json!({"phone": "+375297654321", "code": code})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    // A failing gateway gives a specific error and leaves no usable code behind.
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let (st, v) = http(
        s.addr,
        "POST",
        "/api/auth/code",
        None,
        Some(json!({"phone": "+375297654322"})),
    )
    .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (503, Some("sms_unavailable")),
        "{v}"
    );
    // OpenAPI is served and names the main paths.
    let (st, v) = http(s.addr, "GET", "/api/openapi.json", None, None).await;
    assert_eq!(st, 200);
    assert_eq!(v["openapi"].as_str().map(|s| &s[..2]), Some("3."));
    for p in [
        "/api/auth/code",
        "/api/auth/verify",
        "/api/chats/{id}/messages",
        "/ws",
        "/api/bot/{token}/getUpdates",
    ] {
        assert!(v["paths"].get(p).is_some(), "openapi lacks {p}");
    }
}
