//! Calls in the messenger end to end through the real `maxd`: accounts and chats over
//! REST and `/ws`, the call lifecycle in signalling, media between real WebRTC peers
//! (webrtc-rs, an independent stack) - through the SFU with the tokens signalling
//! mints, or peer-to-peer with offer/answer/candidates relayed over `/ws`.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{Maxd, metric};
use testkit::peer::{LocalAv, MidMap, Peer, spawn_receiver};
use testkit::proto::MidTrack;
use testkit::stats::Observed;
use testkit::{Client, RemoteTrackStats, SendStats, ServerMsg};
use tokio_tungstenite::tungstenite::Message;
use webrtc::peer_connection::{RTCIceCandidateInit, RTCSessionDescription};

const T: Duration = Duration::from_secs(20);

/// One HTTP/1.1 request with a JSON body: (status, JSON answer).
async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut buf)).await.expect("http answer in time").unwrap();
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

struct User {
    id: i64,
    token: String,
}

async fn login(m: &Maxd, phone: &str, device: &str) -> User {
    let (st, v) = http(m.http, "POST", "/api/auth/code", None, Some(json!({"phone": phone}))).await;
    assert_eq!(st, 200, "{v}");
    let codes = std::fs::read_to_string(m.dir.path().join("data/sms-codes.jsonl")).unwrap();
    let code = codes
        .lines()
        .rev()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["to"] == phone)
        .unwrap()["code"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, v) = http(m.http, "POST", "/api/auth/verify", None, Some(json!({"phone": phone, "code": code, "device_name": device}))).await;
    assert_eq!(st, 200, "{v}");
    User {
        id: v["user_id"].as_i64().unwrap(),
        token: v["access_token"].as_str().unwrap().into(),
    }
}

type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A device's chat socket.
struct Ws(WsStream);

impl Ws {
    async fn open(m: &Maxd, u: &User) -> Ws {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws?access_token={}", m.http, u.token)).await.expect("/ws");
        let mut ws = Ws(ws);
        ws.send(json!({"type": "sync", "since": []})).await;
        ws.next_of("synced").await;
        ws
    }

    async fn send(&mut self, v: Value) {
        self.0.send(Message::Text(v.to_string().into())).await.unwrap();
    }

    async fn next_of(&mut self, ty: &str) -> Value {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let m = tokio::time::timeout_at(deadline, self.0.next()).await.unwrap_or_else(|_| panic!("no {ty} in time"));
            if let Some(Ok(Message::Text(t))) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == ty {
                    return v;
                }
                assert_ne!(v["type"], "error", "{v}");
            } else if !matches!(m, Some(Ok(_))) {
                panic!("/ws ended waiting for {ty}: {m:?}");
            }
        }
    }
}

async fn dialog(m: &Maxd, a: &User, b: &User) -> i64 {
    let (st, v) = http(m.http, "POST", "/api/dialogs", Some(&a.token), Some(json!({"user_id": b.id}))).await;
    assert_eq!(st, 200, "{v}");
    v["id"].as_i64().unwrap()
}

fn start_maxd(extra: &[(&str, &str)]) -> Maxd {
    let mut env = vec![("MAXD_SIGNALLING__CODE_COOLDOWN", "0s")];
    env.extend_from_slice(extra);
    Maxd::start_with(r#"["sfu","signalling"]"#, &env)
}

async fn rtc_status(m: &Maxd, token: &str, room: Option<&str>) -> u16 {
    let mut u = format!("ws://{}/rtc?access_token={token}", m.http);
    if let Some(r) = room {
        u.push_str(&format!("&room={r}"));
    }
    match tokio_tungstenite::connect_async(u).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("unexpected: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_calls_bob_on_two_devices_one_answers_and_they_talk_through_the_sfu() {
    let m = start_maxd(&[("MAXD_SIGNALLING__P2P_DIRECT_CALLS", "false")]);
    let alice = login(&m, "+79160003001", "alice").await;
    let bob1 = login(&m, "+79160003002", "bob phone").await;
    let bob2 = login(&m, "+79160003002", "bob laptop").await;
    let (mut wa, mut wb1, mut wb2) = (Ws::open(&m, &alice).await, Ws::open(&m, &bob1).await, Ws::open(&m, &bob2).await);
    let chat = dialog(&m, &alice, &bob1).await;
    // A chat token opens no call: /rtc refuses it.
    assert_eq!(rtc_status(&m, &alice.token, None).await, 403);

    let dialled = Instant::now();
    wa.send(json!({"type": "call_start", "chat_id": chat, "video": true})).await;
    let started = wa.next_of("call").await;
    let call = started["call"]["id"].as_i64().unwrap();
    let room = format!("call-{call}");
    assert_eq!(started["join"]["room"], room.as_str(), "{started}");
    let alice_token = started["join"]["token"].as_str().unwrap().to_string();
    let mut rang = Vec::new();
    for ws in [&mut wb1, &mut wb2] {
        assert_eq!(ws.next_of("call_incoming").await["call_id"], call);
        rang.push(dialled.elapsed());
        ws.send(json!({"type": "call_received", "call_id": call})).await;
        ws.next_of("call").await;
    }
    wa.next_of("call_ringing").await;
    let ringing = dialled.elapsed();
    let answered = Instant::now();
    wb2.send(json!({"type": "call_accept", "call_id": call})).await;
    let accepted = wb2.next_of("call").await;
    let bob_token = accepted["join"]["token"].as_str().unwrap().to_string();
    assert_eq!(wb1.next_of("call_ring_stopped").await["reason"], "answered_elsewhere");
    wa.next_of("call_accepted").await;
    println!(
        "call set-up on loopback: dial to ring on Bob's 2 devices {:?} / {:?}, to 'ringing' at Alice {ringing:?}, answer to 'accepted' at Alice {:?}",
        rang[0],
        rang[1],
        answered.elapsed()
    );

    // The minted tokens open the call's room, and only it.
    assert_eq!(rtc_status(&m, &bob_token, Some("call-1")).await, 403);
    let a = Client::connect(&m.base_url(), &alice_token).await.expect("alice joins the call's room");
    a.publish_av().await.unwrap();
    let b = Client::connect(&m.base_url(), &bob_token).await.expect("bob joins");
    b.publish_av().await.unwrap();
    let (ai, bi) = (a.participant_id(), b.participant_id());
    let talk = Instant::now();
    let got = a.wait_av_from_all(std::slice::from_ref(&bi), 30, T).await.unwrap_or_else(|e| panic!("{e:#}\n{}", m.log()));
    assert!(got.iter().all(|s| s.bad_payloads == 0 && s.foreign_payloads == 0));
    b.wait_av_from_all(std::slice::from_ref(&ai), 30, T).await.unwrap();
    let talked = talk.elapsed();

    wb2.send(json!({"type": "call_hangup", "call_id": call})).await;
    let e = wa.next_of("call_ended").await;
    assert_eq!(e["reason"], "hangup");
    let d = e["duration_ms"].as_u64().unwrap();
    assert!(d >= talked.as_millis() as u64, "duration {d} ms covers the {talked:?} of media");
    // The end takes both out of the call's room.
    for c in [&a, &b] {
        c.wait_for(T, |msg| matches!(msg, ServerMsg::Left { .. })).await.expect("left the room at the call's end");
    }
    // The gauge is refreshed each second: poll it (there is no event to wait on).
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&m.metrics(), "maxd_sfu_participants") != 0.0 {
        assert!(Instant::now() < deadline, "participants left in the room:\n{}", m.metrics());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(wb1.next_of("call_ended").await["call_id"], call);
    // The history shows it, with its duration.
    let (_, h) = http(m.http, "GET", &format!("/api/chats/{chat}/messages?limit=1"), Some(&bob1.token), None).await;
    let c = &h["messages"][0]["call"];
    assert_eq!((c["call_id"].as_i64(), c["reason"].as_str(), c["duration_ms"].as_u64()), (Some(call), Some("hangup"), Some(d)), "{h}");
    a.close().await;
    b.close().await;
}

/// The ICE candidate a `call_signal` frame carries.
fn candidate_of(v: &Value) -> Option<RTCIceCandidateInit> {
    serde_json::from_value(v["data"]["candidate"].clone()).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p2p_call_sends_media_directly_and_moves_to_the_sfu_for_a_third_person() {
    let m = start_maxd(&[]);
    let alice = login(&m, "+79160003011", "alice").await;
    let bob = login(&m, "+79160003012", "bob").await;
    let carol = login(&m, "+79160003013", "carol").await;
    let (mut wa, mut wb, mut wc) = (Ws::open(&m, &alice).await, Ws::open(&m, &bob).await, Ws::open(&m, &carol).await);
    let chat = dialog(&m, &alice, &bob).await;
    dialog(&m, &alice, &carol).await;

    wa.send(json!({"type": "call_start", "chat_id": chat, "video": true})).await;
    let call = wa.next_of("call").await["call"]["id"].as_i64().unwrap();
    wb.next_of("call_incoming").await;
    wb.send(json!({"type": "call_accept", "call_id": call})).await;
    assert_eq!(wb.next_of("call").await["p2p"]["role"], "answerer");
    assert_eq!(wa.next_of("call_accepted").await["mode"], "p2p");

    // Alice offers; the SDP and the candidates go over /ws, the media directly.
    let (pa, mut ea) = Peer::new("alice-p2p").await.unwrap();
    let (pb, eb) = Peer::new("bob-p2p").await.unwrap();
    let av = LocalAv::add_to(&pa.pc).await.unwrap();
    let offer = pa.pc.create_offer(None).await.unwrap();
    pa.pc.set_local_description(offer.clone()).await.unwrap();
    wa.send(json!({"type": "call_signal", "call_id": call, "data": {"sdp": {"type": "offer", "sdp": offer.sdp}}})).await;
    let sig = wb.next_of("call_signal").await;
    assert_eq!(sig["from"], alice.id);
    let sdp = sig["data"]["sdp"]["sdp"].as_str().unwrap().to_string();
    pb.pc.set_remote_description(RTCSessionDescription::offer(sdp).unwrap()).await.unwrap();
    let answer = pb.pc.create_answer(None).await.unwrap();
    pb.pc.set_local_description(answer.clone()).await.unwrap();
    wb.send(json!({"type": "call_signal", "call_id": call, "data": {"sdp": {"type": "answer", "sdp": answer.sdp}}})).await;
    let sig = wa.next_of("call_signal").await;
    let sdp = sig["data"]["sdp"]["sdp"].as_str().unwrap().to_string();
    pa.pc.set_remote_description(RTCSessionDescription::answer(sdp).unwrap()).await.unwrap();
    // Trickle: Alice's candidates to Bob, Bob's to Alice, each through the server.
    let mut eb_cands = eb.candidates;
    let (mids, recv) = (MidMap::default(), Observed::new(HashMap::<String, RemoteTrackStats>::new()));
    let (audio_mid, _) = av.mids().await.unwrap();
    mids.lock().unwrap().insert(audio_mid.clone(), MidTrack { mid: audio_mid, track_id: "A".into(), participant_id: "alice".into() });
    let _rx = spawn_receiver(pb.pc.clone(), eb.tracks, mids, recv.clone());
    let sent = Observed::new(SendStats::default());
    let _senders = av.start(&pa, testkit::media::identity_hash("alice"), sent).await.unwrap();
    let packets_before = metric(&m.metrics(), "maxd_sfu_packets_received_total");
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (mut from_a, mut from_b) = (None, None);
        tokio::select! {
            Some(c) = ea.candidates.recv() => from_a = Some(c),
            Some(c) = eb_cands.recv() => from_b = Some(c),
            v = wb.next_of("call_signal") => pb.pc.add_ice_candidate(candidate_of(&v).expect("a candidate")).await.unwrap(),
            v = wa.next_of("call_signal") => pa.pc.add_ice_candidate(candidate_of(&v).expect("a candidate")).await.unwrap(),
            r = pb.wait_connected(T) => { r.expect("P2P connects"); break }
            _ = tokio::time::sleep_until(deadline) => panic!("P2P did not connect"),
        }
        if let Some(c) = from_a {
            wa.send(json!({"type": "call_signal", "call_id": call, "data": {"candidate": c}})).await;
        }
        if let Some(c) = from_b {
            wb.send(json!({"type": "call_signal", "call_id": call, "data": {"candidate": c}})).await;
        }
    }
    let audio = recv
        .wait(T, "audio over P2P", |s| s.get("A").filter(|a| a.packets >= 50).cloned(), |s| format!("{s:?}"))
        .await
        .unwrap();
    assert_eq!(audio.bad_payloads, 0);
    // None of it crossed the server's media port.
    let through_sfu = metric(&m.metrics(), "maxd_sfu_packets_received_total") - packets_before;
    assert!(through_sfu < 5.0, "{through_sfu} packets reached the SFU during a P2P call");

    // Carol is invited and answers: the call moves to the SFU; everyone gets a token.
    wa.send(json!({"type": "call_invite", "call_id": call, "user_id": carol.id})).await;
    wa.next_of("call").await;
    wc.next_of("call_incoming").await;
    wc.send(json!({"type": "call_accept", "call_id": call})).await;
    let mut tokens = Vec::new();
    for ws in [&mut wa, &mut wb, &mut wc] {
        let mode = ws.next_of("call_mode").await;
        assert_eq!(mode["join"]["room"], format!("call-{call}"));
        tokens.push(mode["join"]["token"].as_str().unwrap().to_string());
    }
    // Each joins the room and publishes while P2P still carries Alice and Bob; once
    // media flows through the SFU, P2P closes.
    let mut clients = Vec::new();
    for t in &tokens {
        let c = Client::connect(&m.base_url(), t).await.expect("join the call's room");
        c.publish_av().await.unwrap();
        clients.push(c);
    }
    let ids: Vec<String> = clients.iter().map(|c| c.participant_id()).collect();
    for c in &clients {
        let others: Vec<String> = ids.iter().filter(|i| **i != c.participant_id()).cloned().collect();
        c.wait_av_from_all(&others, 30, T).await.unwrap_or_else(|e| panic!("{e:#}\n{}", m.log()));
    }
    let p2p_packets = recv.read(|s| s.get("A").map(|a| a.packets).unwrap_or(0));
    assert!(p2p_packets >= 50, "P2P carried the call until the SFU did");
    pa.pc.close().await.unwrap();
    pb.pc.close().await.unwrap();
    // The media workers move their counts to /metrics once a second: wait for it.
    let start = Instant::now();
    while metric(&m.metrics(), "maxd_sfu_packets_received_total") <= through_sfu + 100.0 {
        assert!(start.elapsed() < T, "the call's media through the SFU never showed in /metrics");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in clients {
        c.close().await;
    }
}
