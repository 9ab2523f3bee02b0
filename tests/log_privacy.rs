//! Issue 11: a `debug` or `trace` log of the real `maxd` (all planes) over a whole
//! session - a call through `/rtc` with two webrtc-rs peers exchanging media, a WHIP
//! publish with an ICE restart and a DELETE; a chat session (phone registration with the
//! dev SMS code, a wrong code, messages over REST and `/ws`, a bot webhook, refresh,
//! logout); file uploads and downloads through the relay over QUIC (`maxd files`) and
//! HTTP (tus, a `?access_token=` download) - holds no client address, ICE credential,
//! token, file id or name, phone number, SMS code or message text.
//!
//! `maxd` listens on 127.0.0.3 while every client comes from 127.0.0.1, so the server's
//! own addresses (logged at start on purpose) are told apart from the clients'. Each
//! secret is taken from what the clients really exchanged: the ICE credentials from
//! every SDP (the `/rtc` messages and the peers' descriptions, before and after the
//! restart), the tokens whole and by their signature alone.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{Maxd, api, bin};
use testkit::whip::{WhipPublisher, http};
use testkit::{Client, ClientOptions, TrackKind};
use tokio_tungstenite::tungstenite::Message as WsMsg;
use webrtc::peer_connection::PeerConnection;

const T: Duration = Duration::from_secs(20);
/// Where `maxd` listens; the clients' address is 127.0.0.1.
const SERVER_IP: &str = "127.0.0.3";
/// Where the bot's webhook listens (its host must not be logged either).
const HOOK_IP: &str = "127.0.0.4";

/// A token that looks like a JWT but was never signed by the server: refused
/// everywhere, and as secret as a good one.
const FORGED: &str =
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.Zm9yZ2VkLXNpZ25hdHVyZS1vZi1tYWxsb3J5LTQ0";
/// The call's room.
const ROOM: &str = "consult-4f2e";
/// A file id nobody uploaded.
const UNKNOWN_FILE: &str = "5ca1ab1e0ddba11c0ffee0000feedbee";

/// What must not be in the log: (what it is, the value).
#[derive(Default)]
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn add(&mut self, what: &str, value: impl Into<String>) {
        let value = value.into();
        assert!(
            value.len() >= 4,
            "{what}: {value:?} is too short to search for"
        );
        if !self.0.iter().any(|(_, v)| *v == value) {
            self.0.push((what.to_string(), value));
        }
    }

    /// A JWT, whole and its signature alone (a token cut short or re-encoded still
    /// shows it).
    fn token(&mut self, what: &str, jwt: &str) {
        let sig = jwt.rsplit('.').next().unwrap();
        assert!(
            jwt.split('.').count() == 3 && sig.len() >= 20,
            "{what} is not a JWT: {jwt}"
        );
        self.add(what, jwt);
        self.add(&format!("{what} (signature)"), sig);
    }

    /// Every ICE ufrag and pwd in `sdp`.
    fn ice_from_sdp(&mut self, whose: &str, sdp: &str) {
        for l in sdp.lines() {
            if let Some(v) = l.trim().strip_prefix("a=ice-ufrag:") {
                self.add(&format!("ICE ufrag ({whose})"), v);
            }
            if let Some(v) = l.trim().strip_prefix("a=ice-pwd:") {
                self.add(&format!("ICE pwd ({whose})"), v);
            }
        }
    }

    async fn ice_from_pc(&mut self, whose: &str, pc: &Arc<dyn PeerConnection>) {
        for d in [pc.local_description().await, pc.remote_description().await]
            .into_iter()
            .flatten()
        {
            self.ice_from_sdp(whose, &d.sdp);
        }
    }

    /// The SDPs the server sent and the client answered over `/rtc`.
    async fn ice_from_client(&mut self, whose: &str, c: &Client) {
        for m in c.messages() {
            for s in strings(&m.raw) {
                self.ice_from_sdp(whose, s);
            }
        }
        self.ice_from_pc(whose, c.publisher_pc()).await;
        self.ice_from_pc(whose, c.subscriber_pc()).await;
    }
}

fn strings(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().flat_map(strings).collect(),
        Value::Object(o) => o.values().flat_map(strings).collect(),
        _ => vec![],
    }
}

struct Account {
    id: i64,
    access: String,
    refresh: String,
}

/// Registers `phone` (typed as `typed`) with a wrong code first, then the right one.
async fn register(m: &Maxd, s: &mut Secrets, typed: &str, phone: &str) -> Account {
    let (st, v) = api(
        m,
        "POST",
        "/api/auth/code",
        None,
        Some(json!({"phone": typed})),
    )
    .await;
    assert_eq!((st, v["phone"].as_str()), (200, Some(phone)), "{v}");
    let code = m.sms_code(phone);
    s.add("SMS code", &code);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (st, _) = api(
        m,
        "POST",
        "/api/auth/verify",
        None,
        Some(json!({"phone": phone, "code": wrong})),
    )
    .await;
    assert_eq!(st, 401);
    let (st, v) = api(
        m,
        "POST",
        "/api/auth/verify",
        None,
        Some(json!({"phone": phone, "code": code, "device_name": "Pixel"})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let a = Account {
        id: v["user_id"].as_i64().unwrap(),
        access: v["access_token"].as_str().unwrap().to_string(),
        refresh: v["refresh_token"].as_str().unwrap().to_string(),
    };
    s.token("access token", &a.access);
    s.add("refresh token", &a.refresh);
    a
}

/// A `/ws` connection.
struct Ws(
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
);

impl Ws {
    async fn connect(m: &Maxd, query: &str) -> Ws {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws{query}", m.http))
            .await
            .unwrap();
        Ws(ws)
    }

    async fn send(&mut self, v: Value) {
        self.0
            .send(WsMsg::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// The next frame whose `type` is `ty`.
    async fn next_of(&mut self, ty: &str) -> Value {
        loop {
            let msg = tokio::time::timeout(T, self.0.next())
                .await
                .expect("ws frame in time")
                .unwrap()
                .unwrap();
            if let WsMsg::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == ty {
                    return v;
                }
            }
        }
    }

    async fn message_with(&mut self, text: &str) {
        while self.next_of("message").await["message"]["text"] != text {}
    }
}

/// The relay's certificate fingerprint, from maxd's own log line.
fn relay_pin(m: &Maxd) -> String {
    let log = m.log();
    let line = log
        .lines()
        .find(|l| l.contains("relay listening"))
        .expect("relay listening line");
    // `fingerprint=HEX` in text, `"fingerprint":"HEX"` in JSON.
    let (at, key) = ["fingerprint=", "\"fingerprint\":\""]
        .iter()
        .find_map(|k| Some((line.find(k)?, k.len())))
        .unwrap();
    let hex: String = line[at + key..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    assert_eq!(hex.len(), 64, "{line}");
    hex
}

fn files_cli(m: &Maxd, token: &str, args: &[&str]) -> String {
    let out = Command::new(bin())
        .arg("files")
        .args(args)
        .args([
            "--server",
            &m.relay.to_string(),
            "--token",
            token,
            "--pin",
            &relay_pin(m),
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "maxd files {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Files through the relay: QUIC by the CLI, HTTP by tus; returns the file ids.
async fn files(m: &Maxd, s: &mut Secrets, token: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let quic_name = "holiday-quic-5e1f0c.txt";
    s.add("file name", quic_name);
    let data = "what travels over QUIC ".repeat(2000);
    let path = dir.path().join(quic_name);
    std::fs::write(&path, &data).unwrap();
    let id = files_cli(m, token, &["upload", path.to_str().unwrap()])
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string();
    assert!(id.len() == 32, "not a file id: {id}");
    s.add("file id", &id);
    let out = dir.path().join("back.txt");
    files_cli(m, token, &["download", &id, out.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), data);

    // tus: create, patch, offset; download with the token in the query.
    let tus_name = "holiday-tus-9b7d21.txt";
    s.add("file name", tus_name);
    let body = "what travels over tus ".repeat(1000);
    let auth = format!("Bearer {token}");
    let len = body.len().to_string();
    // tus metadata values are base64: this is `tus_name`'s.
    let meta = "filename aG9saWRheS10dXMtOWI3ZDIxLnR4dA==";
    let r = http(
        &m.base_url(),
        "POST",
        "/files",
        &[
            ("Authorization", &auth),
            ("Tus-Resumable", "1.0.0"),
            ("Upload-Length", &len),
            ("Upload-Metadata", meta),
        ],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let location = r.header("location").unwrap().to_string();
    let tus_id = location.rsplit('/').next().unwrap().to_string();
    s.add("file id", &tus_id);
    let r = http(
        &m.base_url(),
        "PATCH",
        &location,
        &[
            ("Authorization", &auth),
            ("Tus-Resumable", "1.0.0"),
            ("Upload-Offset", "0"),
            ("Content-Type", "application/offset+octet-stream"),
        ],
        &body,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(r.header("upload-offset"), Some(len.as_str()));
    let r = http(
        &m.base_url(),
        "HEAD",
        &location,
        &[("Authorization", &auth), ("Tus-Resumable", "1.0.0")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.header("upload-offset"), Some(len.as_str()));
    let r = http(
        &m.base_url(),
        "GET",
        &format!("{location}?access_token={token}"),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.body == body), (200, true), "tus download");
    // And the QUIC upload over HTTP, by range.
    let r = http(
        &m.base_url(),
        "GET",
        &format!("/files/{id}"),
        &[("Authorization", &auth), ("Range", "bytes=0-9")],
        "",
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.body.as_str()), (206, &data[..10]));
    // Refusals: an unknown id over HTTP and QUIC, a forged token.
    let r = http(
        &m.base_url(),
        "GET",
        &format!("/files/{UNKNOWN_FILE}?access_token={token}"),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    let r = http(
        &m.base_url(),
        "GET",
        &format!("/files/{id}?access_token={FORGED}"),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    let out = Command::new(bin())
        .args([
            "files",
            "download",
            UNKNOWN_FILE,
            dir.path().join("none").to_str().unwrap(),
        ])
        .args([
            "--server",
            &m.relay.to_string(),
            "--token",
            token,
            "--pin",
            &relay_pin(m),
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success(), "an unknown file was downloaded");
    vec![id, tus_id]
}

/// The chat: two accounts, a group with a bot on a webhook, messages every way.
async fn chat(m: &Maxd, s: &mut Secrets, file_id: &str) {
    let alice_phone = "+79160001011";
    let bob_phone = "+79160001012";
    for p in [alice_phone, bob_phone] {
        s.add("phone number", p);
        s.add("phone number (digits)", &p[1..]);
        s.add("phone number (national)", &p[2..]);
    }
    // Numbers refused: a country not allowed, and garbage.
    for (typed, digits) in [
        ("+1 415 555 0132", "4155550132"),
        ("+7 000 777 12 34 56 78", "000777123456"),
    ] {
        s.add("refused phone number", digits);
        let (st, v) = api(
            m,
            "POST",
            "/api/auth/code",
            None,
            Some(json!({"phone": typed})),
        )
        .await;
        assert_eq!(st, 400, "{v}");
    }
    let alice = register(m, s, "+7 916 000-10-11", alice_phone).await;
    let bob = register(m, s, "+7 (916) 000-10-12", bob_phone).await;

    // A bot whose webhook listens on another address.
    let (st, b) = api(
        m,
        "POST",
        "/api/bots",
        Some(&alice.access),
        Some(json!({"name": "hooky"})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let bot_token = b["token"].as_str().unwrap().to_string();
    s.add("bot token", &bot_token);
    let bot_id = b["bot_id"].as_i64().unwrap();
    let (hook_tx, mut hook_rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let hook = axum::Router::new().route(
        "/hook-path-c0ffee",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let tx = hook_tx.clone();
            async move {
                let _ = tx.send(v);
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind((HOOK_IP, 0)).await.unwrap();
    let hook_addr = l.local_addr().unwrap();
    let hook_task = tokio::spawn(async move { axum::serve(l, hook).await.unwrap() });
    s.add("webhook path", "hook-path-c0ffee");
    s.add("webhook secret", "hook-secret-8086");
    let (st, v) = api(
        m,
        "POST",
        &format!("/api/bot/{bot_token}/setWebhook"),
        None,
        Some(json!({"url": format!("http://{hook_addr}/hook-path-c0ffee"), "secret_token": "hook-secret-8086"})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (st, g) = api(
        m,
        "POST",
        "/api/chats",
        Some(&alice.access),
        Some(json!({"kind": "group", "title": "Trip", "members": [bob.id, bot_id]})),
    )
    .await;
    assert_eq!(st, 200, "{g}");
    let chat = g["id"].as_i64().unwrap();

    // Alice's socket takes the token in the query, Bob's in an auth frame.
    let mut wa = Ws::connect(m, &format!("?access_token={}", alice.access)).await;
    wa.send(json!({"type": "sync", "since": []})).await;
    wa.next_of("synced").await;
    let mut forged = Ws::connect(m, "").await;
    forged
        .send(json!({"type": "auth", "access_token": FORGED}))
        .await;
    forged.next_of("error").await;
    let mut wb = Ws::connect(m, "").await;
    wb.send(json!({"type": "auth", "access_token": bob.access}))
        .await;
    wb.next_of("authenticated").await;
    wb.send(json!({"type": "sync", "since": []})).await;
    wb.next_of("synced").await;

    let texts = [
        "whisper-over-socket-71c3",
        "whisper-over-rest-52ad",
        "bot-says-private-0e9f",
        "edited-secret-3b1a",
    ];
    for t in texts {
        s.add("message text", t);
    }
    wa.send(json!({"type": "send", "chat_id": chat, "client_id": "w1", "text": texts[0]}))
        .await;
    wb.message_with(texts[0]).await;
    let (st, v) = api(
        m,
        "POST",
        &format!("/api/chats/{chat}/messages"),
        Some(&bob.access),
        Some(json!({"client_id": "r1", "text": texts[1],
                    "attachments": [{"file_id": file_id, "name": "holiday-quic-5e1f0c.txt", "size": 46000, "mime": "text/plain"}]})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    wa.message_with(texts[1]).await;
    let seq = v["seq"].as_i64().unwrap();
    wb.send(json!({"type": "edit", "chat_id": chat, "seq": seq, "text": texts[3]}))
        .await;
    wb.next_of("ok").await;
    wa.send(json!({"type": "read", "chat_id": chat, "seq": seq}))
        .await;
    wa.send(json!({"type": "typing", "chat_id": chat})).await;
    wb.next_of("typing").await;

    // The webhook gets the messages; the bot answers.
    let mut seen = 0;
    while seen < 2 {
        let v = tokio::time::timeout(T, hook_rx.recv())
            .await
            .expect("webhook call")
            .unwrap();
        seen += usize::from(v["event"]["message"]["text"].is_string());
    }
    let (st, v) = api(
        m,
        "POST",
        &format!("/api/bot/{bot_token}/sendMessage"),
        None,
        Some(json!({"chat_id": chat, "client_id": "b1", "text": texts[2]})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    wa.message_with(texts[2]).await;
    let (st, v) = api(
        m,
        "GET",
        &format!("/api/chats/{chat}/messages?limit=10"),
        Some(&alice.access),
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");

    // Refresh, a reused refresh token (revokes the session), logout.
    let (st, v) = api(
        m,
        "POST",
        "/api/auth/refresh",
        None,
        Some(json!({"refresh_token": bob.refresh})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    s.token(
        "access token (refreshed)",
        v["access_token"].as_str().unwrap(),
    );
    s.add(
        "refresh token (rotated)",
        v["refresh_token"].as_str().unwrap(),
    );
    let (st, _) = api(
        m,
        "POST",
        "/api/auth/refresh",
        None,
        Some(json!({"refresh_token": bob.refresh})),
    )
    .await;
    assert_eq!(st, 401);
    let (st, _) = api(m, "POST", "/api/auth/logout", Some(&alice.access), None).await;
    assert_eq!(st, 200);
    let (st, _) = api(m, "GET", "/api/me", Some(&alice.access), None).await;
    assert_eq!(st, 401);
    hook_task.abort();
}

/// The call: two `/rtc` peers exchanging audio and video, and a WHIP publisher that
/// restarts ICE and ends with DELETE.
async fn call(m: &Maxd, s: &mut Secrets) {
    let base = m.base_url();
    let room = ROOM;
    let tokens: Vec<String> = ["alice", "bob", "obs"]
        .iter()
        .map(|who| m.room_token(room, who))
        .collect();
    for t in &tokens {
        s.token("room token", t);
    }
    // Alice trickles her candidates (127.0.0.1 and her ports) over `/rtc`.
    let trickle = ClientOptions {
        trickle: true,
        ..ClientOptions::default()
    };
    let alice = Client::connect_with(&base, &tokens[0], trickle)
        .await
        .unwrap();
    alice.publish_av().await.unwrap();
    let bob = Client::connect(&base, &tokens[1]).await.unwrap();
    bob.publish_av().await.unwrap();
    for (rx, tx) in [(&bob, &alice), (&alice, &bob)] {
        for kind in [TrackKind::Audio, TrackKind::Video] {
            rx.wait_media_from(&tx.participant_id(), kind, 30, T)
                .await
                .unwrap_or_else(|e| panic!("{e:#}\n{}", m.log()));
        }
    }

    let obs = WhipPublisher::publish(&base, room, &tokens[2])
        .await
        .unwrap();
    let pid = obs.session.participant_id.clone();
    bob.wait_media_from(&pid, TrackKind::Video, 30, T)
        .await
        .unwrap();
    s.ice_from_pc("whip", &obs.session.peer.pc).await;
    obs.session.ice_restart().await.unwrap();
    let before = bob
        .stats()
        .iter()
        .find(|x| x.participant_id == pid && x.kind == TrackKind::Video)
        .unwrap()
        .packets;
    bob.wait_media_from(&pid, TrackKind::Video, before + 30, T)
        .await
        .unwrap();
    s.ice_from_pc("whip after restart", &obs.session.peer.pc)
        .await;
    // Candidates signalled by the client, one of them refused, name addresses too.
    let auth = format!("Bearer {}", tokens[2]);
    let frag = ("Content-Type", "application/trickle-ice-sdpfrag");
    let headers = [("Authorization", auth.as_str()), frag];
    let patch = |body: &'static str| http(&base, "PATCH", &obs.session.location, &headers, body);
    let r = patch(
        "a=candidate:1 1 udp 2122260223 192.0.2.77 61764 typ host\r\na=end-of-candidates\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    let r = patch("a=candidate:2 1 udp 2122260223 198.51.100.23 typ host\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(obs.session.delete().await.unwrap(), 200);
    obs.stop().await;

    // Forged tokens at WHIP and `/rtc`.
    let forged = format!("Bearer {FORGED}");
    let r = http(
        &base,
        "POST",
        &format!("/whip/{room}"),
        &[
            ("Authorization", forged.as_str()),
            ("Content-Type", "application/sdp"),
        ],
        "v=0\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        testkit::ws::upgrade_status(&base, FORGED).await.unwrap(),
        401
    );

    s.ice_from_client("alice", &alice).await;
    s.ice_from_client("bob", &bob).await;
    alice.leave().await.unwrap();
    bob.close().await;
    alice.close().await;
}

/// An IP address written in `text` at byte `at`, if one starts there: (address, port).
fn address_at(text: &str, at: usize) -> Option<(IpAddr, Option<u16>, usize)> {
    let b = text.as_bytes();
    if at > 0 && (b[at - 1].is_ascii_alphanumeric() || matches!(b[at - 1], b'.' | b':' | b'_')) {
        return None;
    }
    let word_end = text[at..]
        .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']' | '%')))
        .map_or(text.len(), |i| at + i);
    let word = text[at..word_end].trim_end_matches([':', '.']);
    if let Ok(sa) = word.parse::<SocketAddr>() {
        return Some((sa.ip(), Some(sa.port()), word.len()));
    }
    let bare = word.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        // `::` alone is Rust path syntax far more often than an address.
        Ok(IpAddr::V6(v6)) if v6.is_unspecified() => None,
        Ok(ip) => Some((ip, None, word.len())),
        Err(_) => None,
    }
}

/// Every problem in `log`: (what leaked, the line).
fn scan(log: &str, secrets: &Secrets, listen: &[SocketAddr]) -> Vec<(String, String)> {
    let server: IpAddr = SERVER_IP.parse().unwrap();
    let mut found = Vec::new();
    for line in log.lines() {
        // The timestamp column (its microseconds are six digits, as a code is).
        let body = match line.split_once(' ') {
            Some((ts, rest)) if ts.contains('T') && ts.ends_with('Z') => rest,
            _ => line,
        };
        let mut i = 0;
        while i < body.len() {
            if !body.is_char_boundary(i) {
                i += 1;
                continue;
            }
            match address_at(body, i) {
                Some((ip, port, len)) => {
                    let ok = match (ip, port) {
                        // The server's own listening addresses, as it reports them.
                        (ip, Some(p)) => ip == server && listen.iter().any(|l| l.port() == p),
                        (ip, None) => ip == server || ip == IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    };
                    if !ok {
                        found.push((format!("address {}", &body[i..i + len]), line.to_string()));
                    }
                    i += len.max(1);
                }
                None => i += 1,
            }
        }
        for (what, value) in &secrets.0 {
            let numeric = value
                .trim_start_matches('+')
                .bytes()
                .all(|c| c.is_ascii_digit());
            if if numeric {
                contains_bounded(body, value)
            } else {
                body.contains(value.as_str())
            } {
                found.push((format!("{what} {value:?}"), line.to_string()));
            }
        }
    }
    found
}

/// Whether `needle` occurs in `hay` not as part of a longer word or number (six digits
/// inside a longer number, or after a decimal point, are no code).
fn contains_bounded(hay: &str, needle: &str) -> bool {
    let b = hay.as_bytes();
    let part = |i: usize, dir: isize| -> bool {
        let Some(&c) = b.get(i) else { return false };
        let Some(&next) = i.checked_add_signed(dir).and_then(|j| b.get(j)) else {
            return c.is_ascii_alphanumeric();
        };
        c.is_ascii_alphanumeric() || (c == b'.' && next.is_ascii_digit())
    };
    hay.match_indices(needle).any(|(at, _)| {
        let before = at.checked_sub(1).is_some_and(|i| part(i, -1));
        let after = part(at + needle.len(), 1);
        !before && !after
    })
}

async fn whole_session_leaves_nothing_personal_at(level: &str, format: &str) {
    let env = [("RUST_LOG", level), ("MAXD_LOG__FORMAT", format)];
    let m = Maxd::start_on(SERVER_IP, r#"["sfu", "signalling", "relay"]"#, &env);
    let mut s = Secrets::default();
    s.add("SMS text", "login code:");
    s.token("forged token", FORGED);
    s.add("unknown file id", UNKNOWN_FILE);
    call(&m, &mut s).await;
    // A files token the CLI and tus use: a chat access token holds the files grant.
    let files_token = m.token(&["--identity", "carol", "--grants", "files", "--ttl", "1h"]);
    s.token("files token", &files_token);
    let ids = files(&m, &mut s, &files_token).await;
    chat(&m, &mut s, &ids[0]).await;

    let log = m.log();
    // Kept for reading after a failure (under the target dir, never committed).
    let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("log_privacy-{level}.log"));
    std::fs::write(&kept, &log).unwrap();
    let listen = [m.http, m.media, m.relay];
    // The capture is live and verbose: the planes wrote their own debug lines.
    assert!(
        log.lines().count() > 200,
        "only {} lines:\n{log}",
        log.lines().count()
    );
    for target in ["sfu::", "signalling::", "relay::", "sqlx::", "dimpl::"] {
        assert!(
            log.contains(target),
            "no {target} lines at {level} (see {})",
            kept.display()
        );
    }
    // The scanner reads this log: the room's name (no secret: every span of the call
    // carries it) is found.
    let mut control = Secrets::default();
    control.add("room name", ROOM);
    assert!(
        !scan(&log, &control, &listen).is_empty(),
        "the scanner finds nothing in {}",
        kept.display()
    );
    let found = scan(&log, &s, &listen);
    let report: Vec<String> = found
        .iter()
        .take(60)
        .map(|(w, l)| format!("{w}\n    {l}"))
        .collect();
    assert!(
        found.is_empty(),
        "RUST_LOG={level}: {} leaking lines ({} lines of log, {} secrets checked); first ones:\n{}",
        found.len(),
        log.lines().count(),
        s.0.len(),
        report.join("\n")
    );
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for (what, _) in &s.0 {
        *kinds.entry(what.split(" (").next().unwrap()).or_default() += 1;
    }
    eprintln!(
        "RUST_LOG={level} ({format}): {} lines clean of {kinds:?}",
        log.lines().count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_log_of_a_whole_session_holds_nothing_personal() {
    whole_session_leaves_nothing_personal_at("trace", "text").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debug_json_log_of_a_whole_session_holds_nothing_personal() {
    whole_session_leaves_nothing_personal_at("debug", "json").await;
}

#[test]
fn the_scanner_finds_what_it_must() {
    let mut s = Secrets::default();
    s.add("code", "123456");
    let listen: [SocketAddr; 1] = ["127.0.0.3:8080".parse().unwrap()];
    let hits = |l: &str| scan(l, &s, &listen).len();
    assert_eq!(
        hits("2026-12-01T03:10:18.123456Z  INFO maxd: http listening addr=127.0.0.3:8080"),
        0
    );
    assert_eq!(
        hits("2026-12-01T03:10:18.965538Z DEBUG x: peer=127.0.0.1:54321"),
        1
    );
    assert_eq!(
        hits("DEBUG x: from 127.0.0.3:40000"),
        1,
        "a server port that is not a listener"
    );
    assert_eq!(hits("DEBUG x: addr=[::1]:5000 or ::ffff:10.0.0.1"), 2);
    assert_eq!(
        hits("DEBUG maxd_sfu::engine::media: std::net 1.2.3 ab:cd:ef"),
        0
    );
    assert_eq!(hits("DEBUG x: code=123456"), 1);
    assert_eq!(
        hits("DEBUG x: n=91234567 t=0.123456 v=123456.5 s=123456ms"),
        0
    );
    assert_eq!(hits("DEBUG x: body={\"code\":\"123456\"}"), 1);
}
