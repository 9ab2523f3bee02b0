//! `kill -9` of the real `maxd` right after acks loses no acknowledged message, on
//! SQLite and on PostgreSQL.

#[path = "../signalling/tests/support/pg.rs"]
mod pg;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMsg;

const WAIT: Duration = Duration::from_secs(15);

/// Plain HTTP/1.1 with `Connection: close`, enough for a test.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let payload = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // De-chunk.
        let mut r = rest;
        let mut b = String::new();
        loop {
            let (len, tail) = r.split_once("\r\n").unwrap();
            let n = usize::from_str_radix(len.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            b.push_str(&tail[..n]);
            r = &tail[n + 2..];
        }
        b
    } else {
        rest.to_string()
    };
    (
        status,
        serde_json::from_str(&payload).unwrap_or(Value::Null),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_maxd(cfg: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_maxd"))
        .arg("--config")
        .arg(cfg)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting maxd")
}

fn wait_ready(addr: SocketAddr, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("maxd exited early: {st}");
        }
        if TcpStream::connect(addr).is_ok() && http(addr, "GET", "/healthz", None, None).0 == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "maxd did not start");
        std::thread::sleep(Duration::from_millis(50)); // readiness probe, not event synchronisation
    }
}

fn login(addr: SocketAddr, data: &Path, phone: &str) -> (i64, String) {
    let (st, v) = http(
        addr,
        "POST",
        "/api/auth/code",
        None,
        Some(json!({"phone": phone})),
    );
    assert_eq!(st, 200, "{v}");
    let codes = std::fs::read_to_string(data.join("sms-codes.jsonl")).unwrap();
    let line: Value = codes
        .lines()
        .rev()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["to"] == phone)
        .unwrap();
    let (st, v) = http(
        addr,
        "POST",
        "/api/auth/verify",
        None,
        Some(json!({"phone": phone, "code": line["code"]})),
    );
    assert_eq!(st, 200, "{v}");
    (
        v["user_id"].as_i64().unwrap(),
        v["access_token"].as_str().unwrap().to_string(),
    )
}

async fn scenario(database_url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = dir.path().join("maxd.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\ndev = true\nroles = [\"signalling\"]\n[http]\nlisten = \"{addr}\"\n[log]\nlevel = \"warn\"\n[signalling]\ndatabase_url = {:?}\nmessages_per_second = 100000\n",
            data.display().to_string(),
            database_url
        ),
    )
    .unwrap();
    let mut child = spawn_maxd(&cfg);
    wait_ready(addr, &mut child);
    let (_, alice) = login(addr, &data, "+79170000001");
    let (bob, _) = login(addr, &data, "+79170000002");
    let (st, g) = http(
        addr,
        "POST",
        "/api/chats",
        Some(&alice),
        Some(json!({"kind": "group", "title": "K", "members": [bob]})),
    );
    assert_eq!(st, 200, "{g}");
    let chat = g["id"].as_i64().unwrap();

    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws?access_token={alice}"))
            .await
            .unwrap();
    // Pipeline many sends; kill -9 as soon as 150 acks are in, with more in flight.
    for i in 0..400 {
        let m = json!({"type": "send", "chat_id": chat, "client_id": format!("k{i}"), "text": format!("kill test {i}")});
        ws.send(WsMsg::Text(m.to_string().into())).await.unwrap();
    }
    let mut acked: HashMap<String, i64> = HashMap::new();
    while acked.len() < 150 {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("ack in time")
            .expect("socket open")
            .unwrap();
        if let WsMsg::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "ack" {
                acked.insert(
                    v["client_id"].as_str().unwrap().to_string(),
                    v["seq"].as_i64().unwrap(),
                );
            } else {
                assert_ne!(v["type"], "error", "{v}");
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    drop(ws);

    let mut child = spawn_maxd(&cfg);
    wait_ready(addr, &mut child);
    // The access token minted before the kill stays valid: the dev secret is in data_dir.
    let mut stored: HashMap<String, i64> = HashMap::new();
    let mut before: Option<i64> = None;
    loop {
        let path = match before {
            Some(b) => format!("/api/chats/{chat}/messages?limit=200&before={b}"),
            None => format!("/api/chats/{chat}/messages?limit=200"),
        };
        let (st, h) = http(addr, "GET", &path, Some(&alice), None);
        assert_eq!(st, 200, "{h}");
        for m in h["messages"].as_array().unwrap() {
            stored.insert(
                m["client_id"].as_str().unwrap().to_string(),
                m["seq"].as_i64().unwrap(),
            );
        }
        match h["next_before"].as_i64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    for (cid, seq) in &acked {
        assert_eq!(
            stored.get(cid),
            Some(seq),
            "acknowledged message {cid} (seq {seq}) lost after kill -9"
        );
    }
    // Sequence numbers have no holes.
    let mut seqs: Vec<i64> = stored.values().copied().collect();
    seqs.sort();
    assert_eq!(seqs, (2..2 + seqs.len() as i64).collect::<Vec<_>>());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_keeps_acknowledged_messages_sqlite() {
    scenario("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_keeps_acknowledged_messages_postgres() {
    let pg = pg::postgres().await;
    scenario(&pg.url).await;
}
