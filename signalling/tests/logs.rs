//! Logs carry no personal data or secrets at any level: a whole chat session (code
//! request, a wrong and a right code, messages over REST and the WebSocket, a bot with
//! a webhook, refresh, logout) is run with every target at TRACE - the `log` records of
//! dependencies bridged in, as `maxd` does, under `signalling::LOG_CAPS` - and the
//! capture must contain no phone number, IP address, code, token, message text,
//! webhook host or secret. Its own process: the subscriber is global.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use support::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn install() -> Capture {
    let cap = Capture::default();
    let mut filter = tracing_subscriber::EnvFilter::new("trace");
    for d in signalling::LOG_CAPS {
        filter = filter.add_directive(d.parse().unwrap());
    }
    let w = cap.clone();
    // `init` also routes `log` records (tungstenite's) into tracing, as in `maxd`.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(move || w.clone())
        .init();
    cap
}

/// Waits for the message event carrying `text`.
async fn message_with(ws: &mut Ws, text: &str) {
    while ws.next_of("message").await["message"]["text"] != text {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_session_logged_at_trace_shows_no_personal_data() {
    let cap = install();
    let s = start(signalling::Config {
        turn_urls: vec!["turn:turn.example.com:3478".into()],
        turn_secret: "turn-secret-for-the-log-test".into(),
        ..config(None)
    })
    .await;
    let a = s.addr;
    let (alice_phone, bob_phone) = ("+79160000081", "+79160000082");

    // Code request, a wrong code, the right one.
    let (st, _) = http(
        a,
        "POST",
        "/api/auth/code",
        None,
        Some(json!({"phone": alice_phone})),
    )
    .await;
    assert_eq!(st, 200);
    let (code, _) = dev_code(&s.data_dir, alice_phone);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (st, _) = http(
        a,
        "POST",
        "/api/auth/verify",
        None,
        Some(json!({"phone": alice_phone, "code": wrong})),
    )
    .await;
    assert_eq!(st, 401);
    let (st, v) = http(
        a,
        "POST",
        "/api/auth/verify",
        None,
        Some(json!({"phone": alice_phone, "code": code, "device_name": "Pixel"})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let alice_token = v["access_token"].as_str().unwrap().to_string();
    let alice_refresh = v["refresh_token"].as_str().unwrap().to_string();
    let bob = login(a, &s.data_dir, bob_phone, "laptop").await;

    // A bot with a webhook on a named host, in a group with both.
    let (_, b) = http(
        a,
        "POST",
        "/api/bots",
        Some(&alice_token),
        Some(json!({"name": "hooky"})),
    )
    .await;
    let bot_token = b["token"].as_str().unwrap().to_string();
    let bot_id = b["bot_id"].as_i64().unwrap();
    let (hook_tx, mut hook_rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let hook = axum::Router::new().route(
        "/secret-hook-path",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let tx = hook_tx.clone();
            async move {
                tx.send(v).unwrap();
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, hook).await.unwrap() });
    let (st, v) = http(
        a,
        "POST",
        &format!("/api/bot/{bot_token}/setWebhook"),
        None,
        Some(json!({"url": format!("http://localhost:{hook_port}/secret-hook-path"), "secret_token": "hook-secret-4711"})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (_, g) = http(
        a,
        "POST",
        "/api/chats",
        Some(&alice_token),
        Some(json!({"kind": "group", "title": "G", "members": [bob.id, bot_id]})),
    )
    .await;
    let chat = g["id"].as_i64().unwrap();

    // Messages over the WebSocket (token in the query, and in an auth frame) and REST.
    let mut wa = Ws::connect(a, &alice_token).await;
    wa.sync(json!([])).await;
    let (inner, _) = tokio_tungstenite::connect_async(format!("ws://{a}/ws"))
        .await
        .unwrap();
    let mut wb = Ws { inner };
    wb.send(json!({"type": "auth", "access_token": bob.token}))
        .await;
    assert_eq!(wb.next().await["type"], "authenticated");
    wb.sync(json!([])).await;
    wa.send(
        json!({"type": "send", "chat_id": chat, "client_id": "w1", "text": "whisper-over-socket"}),
    )
    .await;
    message_with(&mut wb, "whisper-over-socket").await;
    let (st, _) = http(
        a,
        "POST",
        &format!("/api/chats/{chat}/messages"),
        Some(&bob.token),
        Some(json!({"client_id": "r1", "text": "whisper-over-rest"})),
    )
    .await;
    assert_eq!(st, 200);
    message_with(&mut wa, "whisper-over-rest").await;
    // The webhook got both messages.
    let mut texts = Vec::new();
    while texts.len() < 2 {
        let v = tokio::time::timeout(WAIT, hook_rx.recv())
            .await
            .expect("webhook call")
            .unwrap();
        if let Some(t) = v["event"]["message"]["text"].as_str() {
            texts.push(t.to_string());
        }
    }
    let (st, v) = http(
        a,
        "POST",
        &format!("/api/bot/{bot_token}/sendMessage"),
        None,
        Some(json!({"chat_id": chat, "client_id": "b1", "text": "bot-says-private"})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    message_with(&mut wa, "bot-says-private").await;

    // A call: TURN credentials, an SFU token, P2P signals with an address and SDP.
    let (_, d) = http(
        a,
        "POST",
        "/api/dialogs",
        Some(&alice_token),
        Some(json!({"user_id": bob.id})),
    )
    .await;
    wa.send(json!({"type": "call_start", "chat_id": d["id"], "video": true}))
        .await;
    let started = wa.next_of("call").await;
    let call = started["call"]["id"].as_i64().unwrap();
    let turn_password = started["ice_servers"][0]["credential"]
        .as_str()
        .unwrap()
        .to_string();
    wb.next_of("call_incoming").await;
    wb.send(json!({"type": "call_accept", "call_id": call}))
        .await;
    wb.next_of("call").await;
    wa.send(
        json!({"type": "call_signal", "call_id": call, "data": {"sdp": "v=0 sdp-body-private",
        "candidate": "candidate:1 1 udp 2122260223 198.51.100.23 50000 typ host"}}),
    )
    .await;
    wb.next_of("call_signal").await;
    wb.send(json!({"type": "call_sfu", "call_id": call})).await;
    let sfu_token = wb.next_of("call_mode").await["join"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    wa.send(json!({"type": "call_hangup", "call_id": call}))
        .await;
    wb.next_of("call_ended").await;

    // Refresh, reuse (revokes), log out.
    let (_, v) = http(
        a,
        "POST",
        "/api/auth/refresh",
        None,
        Some(json!({"refresh_token": alice_refresh})),
    )
    .await;
    let alice_refresh2 = v["refresh_token"].as_str().unwrap().to_string();
    let (st, _) = http(
        a,
        "POST",
        "/api/auth/refresh",
        None,
        Some(json!({"refresh_token": alice_refresh})),
    )
    .await;
    assert_eq!(st, 401);
    let (st, _) = http(a, "POST", "/api/auth/logout", Some(&bob.token), None).await;
    assert_eq!(st, 200);
    drop((wa, wb));
    drop(s);

    let logs = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
    // The capture is live and reaches dependencies at debug and below.
    assert!(logs.contains("login code sent"), "{logs}");
    assert!(logs.contains("sqlx::query"), "no sqlx debug lines captured");
    let hex = |t: &str| t.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let secrets = [
        alice_phone.to_string(),
        alice_phone[1..].to_string(),
        bob_phone[1..].to_string(),
        code.clone(),
        "127.0.0.1".into(),
        "localhost".into(),
        "secret-hook-path".into(),
        "hook-secret-4711".into(),
        alice_token.clone(),
        bob.token.clone(),
        alice_refresh.clone(),
        alice_refresh2.clone(),
        bob.refresh.clone(),
        bot_token.clone(),
        "whisper-over-socket".into(),
        "whisper-over-rest".into(),
        "bot-says-private".into(),
        hex("whisper-over-socket"),
        turn_password,
        sfu_token,
        "198.51.100.23".into(),
        "sdp-body-private".into(),
    ];
    for secret in &secrets {
        if let Some(at) = logs.find(secret.as_str()) {
            let line = logs[..at].rfind('\n').map(|i| i + 1).unwrap_or(0);
            let end = logs[at..].find('\n').map(|i| at + i).unwrap_or(logs.len());
            panic!("logs contain {secret:?}: {}", &logs[line..end]);
        }
    }
}
