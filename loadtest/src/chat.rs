//! `--mode chat`: users in groups sending messages over the chat WebSocket `/ws`;
//! measures the fan-out latency (send to receipt by every other member) and the ack
//! latency (send to the sender's `ack`, i.e. after commit).
//!
//! Accounts are made through the real phone-code flow, so the server must run in dev
//! mode with its SMS codes written to `<data_dir>/sms-codes.jsonl` (readable here:
//! same machine), and allow that many codes and code checks from one IP
//! (`MAXD_SIGNALLING__CODES_PER_IP_PER_HOUR`, `MAXD_SIGNALLING__VERIFIES_PER_IP_PER_HOUR`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::http;
use crate::media::now_us;
use crate::report::{Participants, Report, TimePoint};
use crate::scenario::Scenario;
use crate::stats::{Dist, round2};

#[derive(Debug, Clone, Serialize, Default)]
pub struct ChatFigures {
    pub users: usize,
    pub groups: usize,
    pub group_size: usize,
    pub senders_per_group: usize,
    pub rate_per_sender: f64,
    /// Time to make the accounts (code + verify) and groups.
    pub setup_s: f64,
    pub messages_sent: u64,
    pub messages_acked: u64,
    /// Acked messages times the other members of their group.
    pub deliveries_expected: u64,
    pub deliveries: u64,
    pub delivery_ratio: f64,
    /// Send to `ack` (committed), ms.
    pub ack_ms: Dist,
    /// Send to receipt by another member, ms.
    pub fanout_ms: Dist,
    pub deliveries_per_s: f64,
}

#[derive(Default)]
struct Acc {
    sent: u64,
    acked: u64,
    deliveries: u64,
    expected: u64,
    ack_ms: Vec<f64>,
    fanout_ms: Vec<f64>,
    interval_deliveries: u64,
    interval_fanout: Vec<f64>,
    connected: usize,
    errors: std::collections::BTreeMap<String, u64>,
}

impl Acc {
    fn error(&mut self, e: String) {
        *self.errors.entry(e).or_default() += 1;
    }
}

struct User {
    id: i64,
    token: String,
}

async fn post(url: &str, path: &str, token: Option<&str>, body: Value) -> Result<Value> {
    let (st, b) = http::request(url, "POST", path, token, Some(&body.to_string())).await?;
    let v: Value = serde_json::from_str(&b).unwrap_or(Value::Null);
    if !(200..300).contains(&st) {
        bail!(
            "POST {path}: HTTP {st} {}",
            v["error"].as_str().unwrap_or("")
        );
    }
    Ok(v)
}

/// Makes `n` accounts through `/api/auth/code` and `/api/auth/verify`.
async fn accounts(url: &str, data_dir: &str, n: usize) -> Result<Vec<User>> {
    // Numbers +7 916 NNN NN NN from a random base, so runs do not collide.
    let base = rand::random::<u32>() % 8_000_000 + 1_000_000;
    let phones: Vec<String> = (0..n)
        .map(|i| format!("+7916{:07}", base as usize + i))
        .collect();
    let mut normalised = Vec::with_capacity(n);
    for chunk in phones.chunks(16) {
        let futs = chunk
            .iter()
            .map(|p| post(url, "/api/auth/code", None, json!({"phone": p})));
        for r in futures_util::future::join_all(futs).await {
            let v = r.context("request a login code (is codes_per_ip_per_hour high enough?)")?;
            normalised.push(v["phone"].as_str().unwrap_or_default().to_string());
        }
    }
    let file = std::path::Path::new(data_dir).join("sms-codes.jsonl");
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("read {} (dev mode SMS codes)", file.display()))?;
    let mut codes = HashMap::new();
    for l in text.lines() {
        if let Ok(v) = serde_json::from_str::<Value>(l) {
            if let (Some(to), Some(code)) = (v["to"].as_str(), v["code"].as_str()) {
                codes.insert(to.to_string(), code.to_string());
            }
        }
    }
    let mut users = Vec::with_capacity(n);
    for chunk in normalised.chunks(16) {
        let futs = chunk.iter().map(|p| {
            let code = codes.get(p).cloned().unwrap_or_default();
            async move {
                post(
                    url,
                    "/api/auth/verify",
                    None,
                    json!({"phone": p, "code": code, "device_name": "loadtest"}),
                )
                .await
            }
        });
        for r in futures_util::future::join_all(futs).await {
            let v = r.context("verify a login code (is verifies_per_ip_per_hour high enough?)")?;
            users.push(User {
                id: v["user_id"].as_i64().context("no user_id")?,
                token: v["access_token"]
                    .as_str()
                    .context("no access_token")?
                    .to_string(),
            });
        }
    }
    Ok(users)
}

/// Runs the chat scenario: `rooms` groups of `chat_group_size` members, `chat_senders`
/// of whom send `chat_rate` messages per second each for `duration`.
pub async fn run_chat(sc: &Scenario) -> Result<Report> {
    let data_dir = sc
        .data_dir
        .as_deref()
        .context("chat mode needs --data-dir (the server's, dev mode)")?;
    let groups = sc.rooms.max(1);
    let size = sc.chat_group_size.max(2);
    let senders = sc.chat_senders.clamp(1, size);
    let t_setup = Instant::now();
    let users = accounts(&sc.url, data_dir, groups * size).await?;
    let mut chats = Vec::new();
    for g in 0..groups {
        let members: Vec<i64> = users[g * size + 1..(g + 1) * size]
            .iter()
            .map(|u| u.id)
            .collect();
        let owner = &users[g * size];
        let v = post(
            &sc.url,
            "/api/chats",
            Some(&owner.token),
            json!({"kind": "group", "title": format!("loadtest {g}"), "members": members}),
        )
        .await?;
        chats.push(v["id"].as_i64().context("no chat id")?);
    }
    let setup_s = t_setup.elapsed().as_secs_f64();

    let acc = Arc::new(Mutex::new(Acc::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let host = http::host_of(&sc.url)?;
    let local = tokio::task::LocalSet::new();
    let start = Instant::now();
    let mut timeline = Vec::new();
    local
        .run_until(async {
            for (i, u) in users.iter().enumerate() {
                let g = i / size;
                let sender = i % size < senders;
                let url = format!("ws://{host}/ws?access_token={}", u.token);
                let acc = acc.clone();
                let mut stop = stop_rx.clone();
                let mut go = go_rx.clone();
                let ready = ready_tx.clone();
                let chat = chats[g];
                let me = u.id;
                let rate = sc.chat_rate;
                tokio::task::spawn_local(async move {
                    let r: Result<()> = async {
                        let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.context("connect /ws")?;
                        let (mut tx, mut rx) = ws.split();
                        tx.send(Message::Text(json!({"type": "sync", "since": []}).to_string().into())).await?;
                        loop {
                            match rx.next().await {
                                Some(Ok(Message::Text(t))) if t.contains("\"synced\"") => break,
                                Some(Ok(_)) => {}
                                _ => bail!("/ws closed before synced"),
                            }
                        }
                        acc.lock().connected += 1;
                        let _ = ready.send(());
                        let _ = go.wait_for(|g| *g).await;
                        let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
                        // Spread the senders' clocks.
                        let mut next = tokio::time::Instant::now()
                            + period.mul_f64(rand::random::<f64>());
                        let mut n = 0u64;
                        let mut pending: HashMap<u64, u64> = HashMap::new();
                        loop {
                            tokio::select! {
                                _ = stop.changed() => break,
                                _ = tokio::time::sleep_until(next), if sender => {
                                    next += period;
                                    n += 1;
                                    let sent = now_us();
                                    pending.insert(n, sent);
                                    let msg = json!({"type": "send", "chat_id": chat, "client_id": format!("lt-{me}-{n}"),
                                        "text": format!("loadtest {sent}"), "req_id": n});
                                    tx.send(Message::Text(msg.to_string().into())).await?;
                                    acc.lock().sent += 1;
                                }
                                m = rx.next() => {
                                    let t = match m {
                                        Some(Ok(Message::Text(t))) => t,
                                        Some(Ok(_)) => continue,
                                        _ => bail!("/ws closed"),
                                    };
                                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                                    match v["type"].as_str() {
                                        Some("ack") => {
                                            if let Some(sent) = v["req_id"].as_u64().and_then(|r| pending.remove(&r)) {
                                                let mut a = acc.lock();
                                                a.acked += 1;
                                                a.expected += (size - 1) as u64;
                                                a.ack_ms.push((now_us().saturating_sub(sent)) as f64 / 1000.0);
                                            }
                                        }
                                        Some("message") => {
                                            let m = &v["message"];
                                            if m["sender_id"].as_i64() == Some(me) {
                                                continue;
                                            }
                                            let sent = m["text"].as_str().and_then(|t| t.strip_prefix("loadtest "))
                                                .and_then(|t| t.parse::<u64>().ok());
                                            if let Some(sent) = sent {
                                                let d = now_us().saturating_sub(sent) as f64 / 1000.0;
                                                let mut a = acc.lock();
                                                a.deliveries += 1;
                                                a.fanout_ms.push(d);
                                                a.interval_deliveries += 1;
                                                a.interval_fanout.push(d);
                                            }
                                        }
                                        Some("error") => {
                                            acc.lock().error(format!("chat error: {}", v["code"].as_str().unwrap_or("?")));
                                        }
                                        _ => {}
                                    }
                                }
                            }
                        }
                        let _ = tx.close().await;
                        Ok(())
                    }
                    .await;
                    if let Err(e) = r {
                        acc.lock().error(format!("{e:#}"));
                        let _ = ready.send(());
                    }
                });
            }
            drop(ready_tx);
            for _ in 0..users.len() {
                if tokio::time::timeout(sc.connect_timeout, ready_rx.recv()).await.is_err() {
                    acc.lock().error("a /ws did not sync within the connect timeout".into());
                    break;
                }
            }
            let _ = go_tx.send(true);
            let t_run = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            while t_run.elapsed() < sc.duration {
                tick.tick().await;
                let mut a = acc.lock();
                let d = Dist::of(a.interval_fanout.drain(..));
                timeline.push(TimePoint {
                    t: round2(start.elapsed().as_secs_f64()),
                    connected: a.connected,
                    bitrate_out_kbps: 0.0,
                    bitrate_in_kbps: 0.0,
                    packets_in: std::mem::take(&mut a.interval_deliveries),
                    delay_p50_ms: d.p50,
                    delay_p99_ms: d.p99,
                    ..TimePoint::default()
                });
            }
            // Let what is in flight arrive, then stop.
            let drain_until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < drain_until {
                let done = {
                    let a = acc.lock();
                    a.deliveries >= a.expected && a.acked >= a.sent
                };
                if done {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = stop_tx.send(true);
            tokio::time::sleep(Duration::from_millis(200)).await;
        })
        .await;
    let run_s = start.elapsed().as_secs_f64();
    let a = acc.lock();
    let figures = ChatFigures {
        users: users.len(),
        groups,
        group_size: size,
        senders_per_group: senders,
        rate_per_sender: sc.chat_rate,
        setup_s: round2(setup_s),
        messages_sent: a.sent,
        messages_acked: a.acked,
        deliveries_expected: a.expected,
        deliveries: a.deliveries,
        delivery_ratio: if a.expected > 0 {
            round2(a.deliveries as f64 / a.expected as f64 * 1e4) / 1e4
        } else {
            0.0
        },
        ack_ms: Dist::of(a.ack_ms.iter().copied()),
        fanout_ms: Dist::of(a.fanout_ms.iter().copied()),
        deliveries_per_s: round2(a.deliveries as f64 / sc.duration.as_secs_f64().max(1e-3)),
    };
    let loss = 1.0
        - if a.expected > 0 {
            a.deliveries as f64 / a.expected as f64
        } else {
            1.0
        };
    Ok(Report {
        mode: "chat".into(),
        scenario: sc.clone(),
        rooms: chats.iter().map(|c| c.to_string()).collect(),
        duration_s: round2(run_s),
        participants: Participants {
            planned: users.len(),
            started: users.len(),
            connected: a.connected,
            failed: users.len() - a.connected.min(users.len()),
            failed_joins: users.len() - a.connected.min(users.len()),
            ..Participants::default()
        },
        packets_sent: a.sent,
        packets_received: a.deliveries,
        packets_expected: a.expected,
        packets_lost: a.expected.saturating_sub(a.deliveries),
        loss_ratio: round2(loss.max(0.0) * 1e6) / 1e6,
        delay_ms: figures.fanout_ms.clone(),
        errors: a.errors.values().sum(),
        errors_by_kind: a.errors.clone(),
        timeline,
        chat: Some(serde_json::to_value(&figures)?),
        ..Default::default()
    })
}
