//! A real Telegram bot library against the real `maxd` binary: the python-telegram-bot
//! echo bot of `signalling/tests/telegram/echo_bot.py` (installed by `scripts/test.sh`
//! into `target/ptb-venv`) long-polls maxd's Bot API at `/api/bot/`, and a user's
//! message comes back to the user's `/ws` as the bot's reply.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{Maxd, api};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message as WsMsg;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_telegram_bot_echoes_through_maxd() {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ptb-venv/bin/python3");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test.sh (it installs python-telegram-bot)",
        python.display()
    );
    let m = Maxd::start(r#"["sfu", "signalling", "relay"]"#);
    let phone = "+79160000901";
    let (st, v) = api(
        &m,
        "POST",
        "/api/auth/code",
        None,
        Some(json!({"phone": phone})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let code = m.sms_code(phone);
    let (st, v) = api(
        &m,
        "POST",
        "/api/auth/verify",
        None,
        Some(json!({"phone": phone, "code": code})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let access = v["access_token"].as_str().unwrap().to_string();
    let (st, b) = api(
        &m,
        "POST",
        "/api/bots",
        Some(&access),
        Some(json!({"name": "Echo"})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (token, bot_id) = (
        b["token"].as_str().unwrap().to_string(),
        b["bot_id"].as_i64().unwrap(),
    );
    let (st, g) = api(
        &m,
        "POST",
        "/api/chats",
        Some(&access),
        Some(json!({"kind": "group", "title": "E", "members": [bot_id]})),
    )
    .await;
    assert_eq!(st, 200, "{g}");
    let chat = g["id"].as_i64().unwrap();
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?access_token={access}", m.http))
            .await
            .unwrap();
    // Events flow once the connection has synced.
    ws.send(WsMsg::Text(
        json!({"type": "sync", "since": []}).to_string().into(),
    ))
    .await
    .unwrap();
    loop {
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .expect("synced in time")
            .unwrap()
            .unwrap();
        if let WsMsg::Text(t) = msg {
            if serde_json::from_str::<Value>(&t).unwrap()["type"] == "synced" {
                break;
            }
        }
    }

    let mut bot = tokio::process::Command::new(python)
        .arg(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("signalling/tests/telegram/echo_bot.py"),
        )
        .arg(format!("{}/api/bot/", m.base_url()))
        .env("MAXD_BOT_TOKEN", &token)
        .env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let mut out = BufReader::new(bot.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), out.next_line())
        .await
        .expect("the bot started within 60 s")
        .unwrap()
        .expect("the bot printed its start line (see its stderr)");
    assert_eq!(line, format!("polling as bot {bot_id} is_bot=True"));

    ws.send(WsMsg::Text(
        json!({"type": "send", "chat_id": chat, "client_id": "w1", "text": "hi through maxd"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    // The ack of our message, then the bot's echo replying to it.
    let mut seq = None;
    loop {
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .expect("a frame in time")
            .unwrap()
            .unwrap();
        let WsMsg::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "ack" {
            seq = v["seq"].as_i64();
        }
        if v["type"] == "message" && v["message"]["sender_id"] == bot_id {
            assert_eq!(v["message"]["text"], "hi through maxd", "{v}");
            assert_eq!(v["message"]["reply_to"].as_i64(), seq, "{v}");
            break;
        }
    }
    bot.kill().await.unwrap();
}
