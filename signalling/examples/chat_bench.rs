//! Chat benchmark over real HTTP and WebSockets against a server in a child process.
//!
//! `cargo run --release -p maxd-signalling --example chat_bench -- [members] [messages] [interval_ms]`
//!
//! Measures: messages per second accepted (acknowledged after commit, SQLite WAL with
//! synchronous=FULL), fan-out latency p50/p99 from send to receipt at every online member
//! of a group, and the server's memory per idle WebSocket connection. Results and the
//! command are recorded in docs/benchmarks.md.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt, stream};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message as WsMsg;

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<bytes::Bytes>,
>;

async fn http(
    c: &Client,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> Value {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = c
        .request(
            req.body(Full::new(bytes::Bytes::from(body.to_string())))
                .unwrap(),
        )
        .await
        .unwrap();
    let st = r.status();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
    assert!(st.is_success(), "{method} {path}: {st} {v}");
    v
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

async fn server(dir: &str, port: u16) {
    let ctx = common::Context {
        data_dir: dir.into(),
        dev: true,
        keys: common::Keys::from_secret(&[3u8; 32]).unwrap(),
        registry: prometheus::Registry::new(),
    };
    let cfg = signalling::Config {
        codes_per_ip_per_hour: 1_000_000,
        verifies_per_ip_per_hour: 1_000_000,
        messages_per_second: 1_000_000,
        ..Default::default()
    };
    let s = signalling::Signalling::start(cfg, ctx).await.unwrap();
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    println!("ready");
    axum::serve(
        l,
        s.router()
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .unwrap();
}

fn pct(v: &mut [u64], p: f64) -> f64 {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("server") {
        return server(&args[2], args[3].parse().unwrap()).await;
    }
    let members: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let messages: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200);
    let interval_ms: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["server", dir.path().to_str().unwrap(), &port.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let c: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();

    // Accounts, through the real code flow.
    let t0 = Instant::now();
    let phones: Vec<String> = (0..members + 16)
        .map(|i| format!("+7916{:07}", i))
        .collect();
    stream::iter(phones.iter())
        .for_each_concurrent(16, |p| {
            let c = c.clone();
            async move {
                http(
                    &c,
                    addr,
                    "POST",
                    "/api/auth/code",
                    None,
                    json!({"phone": p}),
                )
                .await;
            }
        })
        .await;
    let codes: HashMap<String, String> =
        std::fs::read_to_string(dir.path().join(signalling::sms::DEV_SMS_FILE))
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["to"].as_str().unwrap().to_string(),
                    v["code"].as_str().unwrap().to_string(),
                )
            })
            .collect();
    let users: Vec<(i64, String)> = stream::iter(phones.iter())
        .map(|p| {
            let c = c.clone();
            let code = codes[p].clone();
            async move {
                let v = http(
                    &c,
                    addr,
                    "POST",
                    "/api/auth/verify",
                    None,
                    json!({"phone": p, "code": code, "device_name": "bench"}),
                )
                .await;
                (
                    v["user_id"].as_i64().unwrap(),
                    v["access_token"].as_str().unwrap().to_string(),
                )
            }
        })
        .buffered(16)
        .collect()
        .await;
    eprintln!(
        "{} accounts in {:.1} s",
        users.len(),
        t0.elapsed().as_secs_f64()
    );

    // Throughput: 16 senders, each in its own dialog, pipelining sends; acks counted.
    let per_sender = 500;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..16 {
        let (_, tok) = users[members + k].clone();
        let peer = users[(k + 1) % members].0;
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let d = http(&c, addr, "POST", "/api/dialogs", Some(&tok), json!({"user_id": peer})).await;
            let chat = d["id"].as_i64().unwrap();
            let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?access_token={tok}")).await.unwrap();
            let (mut tx, mut rx) = ws.split();
            let sender = tokio::spawn(async move {
                for i in 0..per_sender {
                    let m = json!({"type": "send", "chat_id": chat, "client_id": format!("t{i}"), "text": "throughput test message"});
                    tx.send(WsMsg::Text(m.to_string().into())).await.unwrap();
                }
                tx
            });
            let mut acks = 0;
            while acks < per_sender {
                if let Some(Ok(WsMsg::Text(t))) = rx.next().await {
                    if t.contains("\"type\":\"ack\"") {
                        acks += 1;
                    } else if t.contains("\"error\"") || t.contains("\"type\":\"error\"") {
                        panic!("{t}");
                    }
                }
            }
            let _ = sender.await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = (16 * per_sender) as f64 / t.elapsed().as_secs_f64();
    eprintln!("accepted: {accepted:.0} messages/s (16 senders, 1:1 dialogs, ack after commit)");

    // The group of `members`, all online.
    let owner = &users[0];
    let others: Vec<i64> = users[1..members].iter().map(|u| u.0).collect();
    let g = http(
        &c,
        addr,
        "POST",
        "/api/chats",
        Some(&owner.1),
        json!({"kind": "group", "title": "bench", "members": others}),
    )
    .await;
    let chat = g["id"].as_i64().unwrap();
    let rss_before = rss_kib(pid);
    let mut conns = Vec::new();
    for (_, tok) in users[..members].iter() {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws?access_token={tok}"))
                .await
                .unwrap();
        ws.send(WsMsg::Text(
            json!({"type": "sync", "since": []}).to_string().into(),
        ))
        .await
        .unwrap();
        conns.push(ws);
    }
    for ws in conns.iter_mut() {
        loop {
            if let Some(Ok(WsMsg::Text(t))) = ws.next().await {
                if t.contains("\"synced\"") {
                    break;
                }
            }
        }
    }
    // Let the allocator settle; idle means idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_kib(pid);
    let per_conn = (rss_after.saturating_sub(rss_before)) as f64 * 1024.0 / members as f64;
    eprintln!(
        "server RSS {rss_before} KiB -> {rss_after} KiB with {members} idle connections: {:.1} KiB each",
        per_conn / 1024.0
    );

    // Fan-out: the owner sends `messages` messages, one every `interval_ms`; every member's
    // socket records when each arrives.
    let start = Instant::now();
    let sent_at: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new((0..messages).map(|_| Default::default()).collect());
    let lat: Arc<parking_lot::Mutex<Vec<u64>>> = Arc::new(parking_lot::Mutex::new(
        Vec::with_capacity(members * messages),
    ));
    let mut sender_ws = conns.remove(0);
    let mut readers = Vec::new();
    for mut ws in conns {
        let sent_at = sent_at.clone();
        let lat = lat.clone();
        readers.push(tokio::spawn(async move {
            let mut got = 0;
            let mut local = Vec::with_capacity(messages);
            while got < messages {
                let Some(Ok(WsMsg::Text(t))) = ws.next().await else {
                    continue;
                };
                let now = start.elapsed().as_micros() as u64;
                if let Some(i) = t.find("\"text\":\"f") {
                    let rest = &t[i + 9..];
                    let n: usize = rest[..rest.find('"').unwrap()].parse().unwrap();
                    local.push(now - sent_at[n].load(std::sync::atomic::Ordering::Relaxed));
                    got += 1;
                }
            }
            lat.lock().extend(local);
            ws
        }));
    }
    let t = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    for i in 0..messages {
        tick.tick().await;
        sent_at[i].store(
            start.elapsed().as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let m = json!({"type": "send", "chat_id": chat, "client_id": format!("f{i}"), "text": format!("f{i}")});
        sender_ws
            .send(WsMsg::Text(m.to_string().into()))
            .await
            .unwrap();
    }
    for r in readers {
        r.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let mut l = std::mem::take(&mut *lat.lock());
    let n = l.len();
    eprintln!(
        "fan-out to {} online members: {} messages, one per {interval_ms} ms, {} deliveries in {secs:.1} s ({:.0}/s); latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        members - 1,
        messages,
        n,
        n as f64 / secs,
        pct(&mut l, 0.5),
        pct(&mut l, 0.99),
        pct(&mut l, 1.0)
    );
    let _ = child.kill().await;
}
