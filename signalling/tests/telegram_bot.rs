//! The Bot API speaks Telegram's: a real bot library (python-telegram-bot from PyPI,
//! pinned in `scripts/test.sh`) runs an echo bot by long polling against a real server,
//! and the envelopes, objects and parameter encodings are checked one by one.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

/// python-telegram-bot's version, as `scripts/test.sh` installs it.
const PTB: &str = "python-telegram-bot==22.8";

/// The Python of the venv `scripts/test.sh` makes (`MAXD_TEST_PTB_PYTHON` overrides).
fn ptb_python() -> PathBuf {
    let p = match std::env::var_os("MAXD_TEST_PTB_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ptb-venv/bin/python3"),
    };
    assert!(
        p.exists(),
        "{} is missing: run scripts/test.sh, or python3 -m venv target/ptb-venv && \
         target/ptb-venv/bin/pip install {PTB}",
        p.display()
    );
    p
}

/// A user, a bot made by them and a group with both; the bot's token.
async fn user_bot_group(s: &Server, phone: &str) -> (User, String, i64, i64) {
    let alice = login(s.addr, &s.data_dir, phone, "a").await;
    let (st, b) = http(
        s.addr,
        "POST",
        "/api/bots",
        Some(&alice.token),
        Some(json!({"name": "Echo"})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let token = b["token"].as_str().unwrap().to_string();
    let bot_id = b["bot_id"].as_i64().unwrap();
    let (st, g) = http(
        s.addr,
        "POST",
        "/api/chats",
        Some(&alice.token),
        Some(json!({"kind": "group", "title": "Echoes", "members": [bot_id]})),
    )
    .await;
    assert_eq!(st, 200, "{g}");
    (alice, token, bot_id, g["id"].as_i64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_telegram_bot_echoes_by_long_polling() {
    let python = ptb_python();
    let s = start(config(None)).await;
    let a = s.addr;
    let (alice, token, bot_id, chat) = user_bot_group(&s, "+79160000601").await;
    let mut ws = Ws::connect(a, &alice.token).await;
    ws.sync(json!([])).await;

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/telegram/echo_bot.py");
    let mut bot = tokio::process::Command::new(python)
        .arg(script)
        .arg(format!("http://{a}/api/bot/"))
        .env("MAXD_BOT_TOKEN", &token)
        // The server is on loopback: no proxy from the environment.
        .env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    // The library's getMe answered with a User it accepts.
    let mut out = BufReader::new(bot.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), out.next_line())
        .await
        .expect("the bot started within 60 s")
        .unwrap()
        .expect("the bot printed its start line (see its stderr)");
    assert_eq!(line, format!("polling as bot {bot_id} is_bot=True"));

    // Alice writes; the bot answers with the same text, as a reply to her message.
    for text in ["hello, bot", "second — with ünïcode 👋"] {
        let (st, ack) = http(
            a,
            "POST",
            &format!("/api/chats/{chat}/messages"),
            Some(&alice.token),
            Some(json!({"client_id": text, "text": text})),
        )
        .await;
        assert_eq!(st, 200, "{ack}");
        let seq = ack["seq"].as_i64().unwrap();
        let echo = loop {
            let e = ws.next_of("message").await;
            if e["message"]["sender_id"] == bot_id {
                break e;
            }
        };
        assert_eq!(echo["message"]["text"], text, "{echo}");
        assert_eq!(echo["message"]["reply_to"], seq, "{echo}");
    }
    // And the history over HTTP has them too.
    let (st, h) = http(
        a,
        "GET",
        &format!("/api/chats/{chat}/messages?limit=10"),
        Some(&alice.token),
        None,
    )
    .await;
    assert_eq!(st, 200, "{h}");
    let from_bot = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["sender_id"] == bot_id)
        .count();
    assert_eq!(from_bot, 2, "{h}");
    assert!(
        bot.try_wait().unwrap().is_none(),
        "the bot is still running"
    );
    bot.kill().await.unwrap();
}

/// A form-urlencoded POST, as python-telegram-bot and aiogram send parameters.
async fn form(a: std::net::SocketAddr, path: &str, body: &str) -> (u16, Value) {
    let r = request(
        a,
        "POST",
        path,
        None,
        Some("application/x-www-form-urlencoded"),
        body.as_bytes().to_vec(),
    )
    .await;
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/json"),
        "{}",
        r.body
    );
    (r.status, serde_json::from_str(&r.body).unwrap())
}

async fn telegram_shapes_envelopes_and_encodings(url: Option<&str>) {
    let s = start(config(url)).await;
    let a = s.addr;
    let (alice, token, bot_id, chat) = user_bot_group(&s, "+79160000602").await;
    // Telegram's token layout: <bot id>:<secret> (aiogram checks it).
    let (id, secret) = token.split_once(':').unwrap();
    assert_eq!(id, bot_id.to_string());
    assert!(
        !secret.is_empty()
            && secret
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        "token secret is [A-Za-z0-9_-]+"
    );

    // getMe, by GET and by POST, method names in any case.
    for (method, path) in [("GET", "getMe"), ("POST", "getme"), ("POST", "GETME")] {
        let (st, v) = http(a, method, &format!("/api/bot/{token}/{path}"), None, None).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["ok"], true);
        let me = &v["result"];
        assert_eq!(
            (
                me["id"].as_i64(),
                me["is_bot"].as_bool(),
                me["first_name"].as_str()
            ),
            (Some(bot_id), Some(true), Some("Echo")),
            "{v}"
        );
    }

    // A message and its update: Telegram's Update, Message, User and Chat.
    let (_, first) = http(
        a,
        "POST",
        &format!("/api/chats/{chat}/messages"),
        Some(&alice.token),
        Some(json!({"client_id": "c1", "text": "ping"})),
    )
    .await;
    let seq = first["seq"].as_i64().unwrap();
    let (st, v) = form(
        a,
        &format!("/api/bot/{token}/getUpdates"),
        "offset=0&limit=100&timeout=0&allowed_updates=%5B%5D",
    )
    .await;
    assert_eq!((st, &v["ok"]), (200, &json!(true)), "{v}");
    let ups = v["result"].as_array().unwrap();
    // chat_created has no Telegram counterpart: only update_id and our event.
    assert_eq!(ups[0]["event"]["type"], "chat_created", "{v}");
    assert!(ups[0].get("message").is_none(), "{v}");
    let m = &ups[1]["message"];
    assert_eq!(m["message_id"], seq, "{v}");
    assert_eq!(m["text"], "ping");
    assert_eq!(
        (m["from"]["id"].as_i64(), m["from"]["is_bot"].as_bool()),
        (Some(alice.id), Some(false)),
        "{m}"
    );
    assert!(m["from"]["first_name"].is_string(), "{m}");
    assert_eq!(
        m["chat"],
        json!({"id": chat, "type": "group", "title": "Echoes"})
    );
    let date = m["date"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - date).abs() < 60, "date is Unix seconds: {date}");
    let next = ups[1]["update_id"].as_i64().unwrap() + 1;

    // sendMessage as a form with a JSON reply_parameters, as the libraries send it;
    // the result is the Message, replying to the one it answers.
    let (st, v) = form(
        a,
        &format!("/api/bot/{token}/sendMessage"),
        &format!("chat_id={chat}&text=pong&reply_parameters=%7B%22message_id%22%3A{seq}%7D"),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let sent = &v["result"];
    assert_eq!(sent["text"], "pong");
    assert_eq!(sent["from"]["id"], bot_id);
    assert_eq!(sent["from"]["is_bot"], true);
    assert_eq!(sent["chat"]["id"], chat);
    assert_eq!(sent["reply_to_message"]["message_id"], seq, "{v}");
    assert_eq!(sent["reply_to_message"]["text"], "ping");
    // GET with query parameters; reply_to_message_id; our JSON body still works.
    let (st, v) = http(
        a,
        "GET",
        &format!("/api/bot/{token}/sendMessage?chat_id={chat}&text=q&reply_to_message_id={seq}"),
        None,
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["result"]["reply_to_message"]["message_id"], seq, "{v}");
    let (st, v) = http(
        a,
        "POST",
        &format!("/api/bot/{token}/sendMessage"),
        None,
        Some(json!({"chat_id": chat, "client_id": "same", "text": "once"})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (_, again) = http(
        a,
        "POST",
        &format!("/api/bot/{token}/sendMessage"),
        None,
        Some(json!({"chat_id": chat, "client_id": "same", "text": "once"})),
    )
    .await;
    assert_eq!(
        again["result"]["message_id"], v["result"]["message_id"],
        "client_id keeps a retry from making a second message"
    );
    // The bot's own messages make no updates for it.
    let (_, v) = http(
        a,
        "GET",
        &format!("/api/bot/{token}/getUpdates?offset={next}&timeout=0"),
        None,
        None,
    )
    .await;
    assert_eq!(v["result"], json!([]), "{v}");

    // Errors: Telegram's envelope, with our code kept.
    let cases = [
        (
            "/api/bot/1:nope/getMe".to_string(),
            "",
            401,
            "token_invalid",
        ),
        (
            format!("/api/bot/{token}/noSuchMethod"),
            "",
            404,
            "not_found",
        ),
        (
            format!("/api/bot/{token}/sendMessage"),
            "text=x",
            400,
            "bad_request",
        ),
        (
            format!("/api/bot/{token}/sendMessage"),
            "chat_id=abc&text=x",
            400,
            "bad_request",
        ),
        (
            format!("/api/bot/{token}/sendMessage"),
            "chat_id=1&text=x",
            404,
            "not_found",
        ),
        (
            format!("/api/bot/{token}/getUpdates"),
            "offset=x",
            400,
            "bad_request",
        ),
    ];
    for (path, body, status, code) in cases {
        let (st, v) = form(a, &path, body).await;
        assert_eq!(st, status, "{path} {body}: {v}");
        assert_eq!(v["ok"], false, "{v}");
        assert_eq!(v["error_code"], status, "{v}");
        assert!(
            v["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{v}"
        );
        assert_eq!(v["error"], code, "{v}");
    }
    let r = request(
        a,
        "POST",
        &format!("/api/bot/{token}/getMe"),
        None,
        Some("text/plain"),
        b"x".to_vec(),
    )
    .await;
    assert_eq!(r.status, 415, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["error_code"].as_i64()),
        (Some(false), Some(415))
    );

    // Webhook info, set and delete with drop_pending_updates.
    let (_, v) = form(a, &format!("/api/bot/{token}/getWebhookInfo"), "").await;
    assert_eq!(v["result"]["url"], "", "{v}");
    let (st, v) = form(
        a,
        &format!("/api/bot/{token}/setWebhook"),
        "url=http%3A%2F%2F127.0.0.1%3A9%2Fhook&secret_token=s3cret",
    )
    .await;
    assert_eq!((st, &v["result"]), (200, &json!(true)), "{v}");
    let (_, v) = form(a, &format!("/api/bot/{token}/getWebhookInfo"), "").await;
    assert_eq!(v["result"]["url"], "http://127.0.0.1:9/hook", "{v}");
    // Nothing listens there: a new update stays pending.
    let (st, _) = http(
        a,
        "POST",
        &format!("/api/chats/{chat}/messages"),
        Some(&alice.token),
        Some(json!({"client_id": "c2", "text": "pending"})),
    )
    .await;
    assert_eq!(st, 200);
    let (_, v) = form(a, &format!("/api/bot/{token}/getWebhookInfo"), "").await;
    assert_eq!(v["result"]["pending_update_count"], 1, "{v}");
    // A refused setWebhook drops nothing.
    let (st, v) = form(
        a,
        &format!("/api/bot/{token}/setWebhook"),
        "url=ftp%3A%2F%2Fx%2F&drop_pending_updates=true",
    )
    .await;
    assert_eq!((st, v["error"].as_str()), (400, Some("bad_request")), "{v}");
    let (_, v) = form(a, &format!("/api/bot/{token}/getWebhookInfo"), "").await;
    assert_eq!(
        (
            v["result"]["pending_update_count"].as_i64(),
            v["result"]["url"].as_str()
        ),
        (Some(1), Some("http://127.0.0.1:9/hook")),
        "{v}"
    );
    let (st, v) = form(a, &format!("/api/bot/{token}/getUpdates"), "").await;
    assert_eq!((st, v["error_code"].as_i64()), (409, Some(409)), "{v}");
    let (st, v) = form(
        a,
        &format!("/api/bot/{token}/deleteWebhook"),
        "drop_pending_updates=true",
    )
    .await;
    assert_eq!((st, &v["result"]), (200, &json!(true)), "{v}");
    let (_, v) = form(a, &format!("/api/bot/{token}/getWebhookInfo"), "").await;
    assert_eq!(
        (
            v["result"]["url"].as_str(),
            v["result"]["pending_update_count"].as_i64()
        ),
        (Some(""), Some(0)),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_over_https_gets_telegram_updates() {
    let dir = tempfile::tempdir().unwrap();
    let (port, ca_file, mut got) = tls_gateway(dir.path()).await;
    let s = start(signalling::Config {
        push_ca_file: ca_file.display().to_string(),
        ..config(None)
    })
    .await;
    let a = s.addr;
    let (alice, token, _, chat) = user_bot_group(&s, "+79160000603").await;
    let (st, v) = http(
        a,
        "POST",
        &format!("/api/bot/{token}/setWebhook"),
        None,
        Some(json!({"url": format!("https://localhost:{port}/hook"), "secret_token": "s3cret"})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    http(
        a,
        "POST",
        &format!("/api/chats/{chat}/messages"),
        Some(&alice.token),
        Some(json!({"client_id": "h", "text": "over tls"})),
    )
    .await;
    // chat_created comes first, then the message, in order.
    loop {
        let u = tokio::time::timeout(WAIT, got.recv())
            .await
            .expect("a webhook call over HTTPS")
            .unwrap();
        assert!(u["update_id"].is_i64(), "{u}");
        if u["message"]["text"] == "over tls" {
            assert_eq!(u["message"]["chat"]["id"], chat);
            break;
        }
    }
}

async fn send_document_and_voice_by_file_id(url: Option<&str>) {
    let s = start(config(url)).await;
    let a = s.addr;
    let (alice, token, bot_id, chat) = user_bot_group(&s, "+79160000604").await;
    // Alice sends a file and a voice message (ids with LIKE's wildcards in them).
    let doc = json!({"file_id": "f_doc%1", "name": "report.pdf", "size": 1234, "mime": "application/pdf"});
    let voice = json!({"file_id": "f_voice_2", "name": "v.ogg", "size": 999, "mime": "audio/ogg",
        "duration_ms": 2500, "waveform": [1, 2, 3]});
    for (i, att) in [doc, voice].into_iter().enumerate() {
        let (st, v) = http(
            a,
            "POST",
            &format!("/api/chats/{chat}/messages"),
            Some(&alice.token),
            Some(json!({"client_id": format!("f{i}"), "text": "see", "attachments": [att]})),
        )
        .await;
        assert_eq!(st, 200, "{v}");
    }
    // The bot sees them as Telegram's document and voice, the text as caption.
    let (_, v) = http(
        a,
        "GET",
        &format!("/api/bot/{token}/getUpdates?timeout=0"),
        None,
        None,
    )
    .await;
    let msgs: Vec<&Value> = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u.get("message"))
        .collect();
    assert_eq!(msgs.len(), 2, "{v}");
    assert_eq!(msgs[0]["document"]["file_id"], "f_doc%1", "{v}");
    assert_eq!(msgs[0]["document"]["file_name"], "report.pdf");
    assert_eq!(msgs[0]["caption"], "see");
    assert_eq!(msgs[1]["voice"]["file_id"], "f_voice_2", "{v}");
    assert_eq!(msgs[1]["voice"]["duration"], 3);
    // And sends them back by file id, as a form.
    let (st, v) = form(
        a,
        &format!("/api/bot/{token}/sendDocument"),
        &format!("chat_id={chat}&document=f_doc%251&caption=back"),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let sent = &v["result"];
    assert_eq!(
        (
            sent["document"]["file_name"].as_str(),
            sent["document"]["file_size"].as_i64()
        ),
        (Some("report.pdf"), Some(1234)),
        "{v}"
    );
    assert_eq!(sent["caption"], "back");
    assert_eq!(sent["from"]["id"], bot_id);
    let (st, v) = http(
        a,
        "POST",
        &format!("/api/bot/{token}/sendVoice"),
        None,
        Some(json!({"chat_id": chat, "voice": "f_voice_2"})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["result"]["voice"]["duration"], 3, "{v}");
    // The stored message is our voice message: the same attachment, waveform included.
    let seq = v["result"]["message_id"].as_i64().unwrap();
    let (_, h) = http(
        a,
        "GET",
        &format!("/api/chats/{chat}/messages?limit=1"),
        Some(&alice.token),
        None,
    )
    .await;
    assert_eq!(h["messages"][0]["seq"], seq, "{h}");
    assert_eq!(
        h["messages"][0]["attachments"][0]["duration_ms"], 2500,
        "{h}"
    );
    assert_eq!(
        h["messages"][0]["attachments"][0]["waveform"],
        json!([1, 2, 3])
    );
    // A file id the bot never saw (or a near one: no wildcard matching) is refused.
    for id in ["nope", "f%", "f_doc_1"] {
        let (st, v) = http(
            a,
            "POST",
            &format!("/api/bot/{token}/sendDocument"),
            None,
            Some(json!({"chat_id": chat, "document": id})),
        )
        .await;
        assert_eq!(
            (st, v["error"].as_str()),
            (400, Some("bad_request")),
            "{id}: {v}"
        );
        assert_eq!(v["ok"], false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shapes_envelopes_and_encodings_sqlite() {
    telegram_shapes_envelopes_and_encodings(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_by_id_sqlite() {
    send_document_and_voice_by_file_id(None).await;
}

/// The same on PostgreSQL (its LIKE escaping and integer types differ from SQLite's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres() {
    let pg = postgres().await;
    sqlx::any::install_default_drivers();
    for (i, name) in ["shapes", "files"].iter().enumerate() {
        let db = format!("tg{i}_{name}");
        let mut c = <sqlx::AnyConnection as sqlx::Connection>::connect(&pg.url)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut c)
            .await
            .unwrap();
        let url = format!("{}/{db}", pg.url.rsplit_once('/').unwrap().0);
        match *name {
            "shapes" => telegram_shapes_envelopes_and_encodings(Some(&url)).await,
            _ => send_document_and_voice_by_file_id(Some(&url)).await,
        }
    }
}
