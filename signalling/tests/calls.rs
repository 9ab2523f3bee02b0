//! Calls in chats through the real HTTP and WebSocket endpoints: ring on every device,
//! one answer wins, answered elsewhere, decline, busy, cancel, missed with pushes,
//! group calls, who may see a call, disconnects, a restart, rate limits, the move to the
//! SFU, SFU tokens and TURN credentials. Timeouts are configured short and waited for
//! as events; the exact timing is tested on a virtual clock in `calls/machine.rs`.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use support::*;

fn cfg() -> signalling::Config {
    signalling::Config {
        code_cooldown: Duration::ZERO,
        ring_timeout: Duration::from_secs(30),
        call_disconnect_grace: Duration::from_millis(500),
        turn_urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
        turn_secret: "0123456789abcdef-turn".into(),
        ..Default::default()
    }
}

/// A logged-in device with a synced socket.
struct Dev {
    u: User,
    ws: Ws,
}

async fn dev(s: &Server, phone: &str, name: &str) -> Dev {
    let u = login(s.addr, &s.data_dir, phone, name).await;
    let mut ws = Ws::connect(s.addr, &u.token).await;
    ws.sync(json!([])).await;
    Dev { u, ws }
}

async fn dialog(s: &Server, a: &User, b: &User) -> i64 {
    let (st, v) = http(
        s.addr,
        "POST",
        "/api/dialogs",
        Some(&a.token),
        Some(json!({"user_id": b.id})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v["id"].as_i64().unwrap()
}

async fn group(s: &Server, owner: &User, members: &[i64]) -> i64 {
    let (st, v) = http(
        s.addr,
        "POST",
        "/api/chats",
        Some(&owner.token),
        Some(json!({"kind": "group", "title": "Team", "members": members})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v["id"].as_i64().unwrap()
}

async fn post(s: &Server, u: &User, path: &str, body: Value) -> (u16, Value) {
    http(s.addr, "POST", path, Some(&u.token), Some(body)).await
}

/// Frames received up to the answer to a ping: what the server had sent by then.
async fn drain(ws: &mut Ws) -> Vec<Value> {
    ws.send(json!({"type": "ping", "req_id": "barrier"})).await;
    let mut seen = Vec::new();
    loop {
        let v = ws.next().await;
        if v["type"] == "pong" && v["req_id"] == "barrier" {
            return seen;
        }
        seen.push(v);
    }
}

fn types(v: &[Value]) -> Vec<&str> {
    v.iter().filter_map(|x| x["type"].as_str()).collect()
}

/// The call message at the top of a chat's history.
async fn last_call_in_history(s: &Server, u: &User, chat: i64) -> Value {
    let (st, v) = http(
        s.addr,
        "GET",
        &format!("/api/chats/{chat}/messages?limit=5"),
        Some(&u.token),
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m.get("call").is_some())
        .unwrap_or_else(|| panic!("no call in the history: {v}"))
        .clone()
}

/// Starts a call on `d`'s socket (the server is named for symmetry with the REST helpers).
async fn start(_s: &Server, d: &mut Dev, chat: i64, video: bool) -> Value {
    d.ws.send(json!({"type": "call_start", "chat_id": chat, "video": video, "req_id": "start"}))
        .await;
    let v = d.ws.next_of("call").await;
    assert_eq!(v["req_id"], "start", "{v}");
    v
}

async fn two_devices_one_answers(url: Option<&str>) {
    let s = support::start(signalling::Config {
        database_url: url.unwrap_or("").into(),
        ..cfg()
    })
    .await;
    let mut a = dev(&s, "+79160001001", "alice phone").await;
    let mut b1 = dev(&s, "+79160001002", "bob phone").await;
    let mut b2 = dev(&s, "+79160001002", "bob laptop").await;
    assert_eq!(b1.u.id, b2.u.id);
    let chat = dialog(&s, &a.u, &b1.u).await;

    let started = start(&s, &mut a, chat, true).await;
    let call = started["call"]["id"].as_i64().unwrap();
    assert_eq!(started["call"]["state"], "ringing", "{started}");
    assert_eq!(started["call"]["mode"], "p2p");
    assert_eq!(started["p2p"]["role"], "offerer");
    // TURN credentials by the TURN REST API scheme.
    let ice = &started["ice_servers"][0];
    let username = ice["username"].as_str().unwrap();
    let (exp, user) = username.split_once(':').unwrap();
    assert_eq!(user, a.u.id.to_string());
    assert!(exp.parse::<u64>().unwrap() > signalling_now_secs() + 3600);
    assert_eq!(
        ice["credential"],
        signalling::calls::turn::password("0123456789abcdef-turn", username)
    );

    // Both of Bob's devices ring; each acknowledges; Alice hears "ringing" once.
    for b in [&mut b1, &mut b2] {
        let inc = b.ws.next_of("call_incoming").await;
        assert_eq!(
            (
                inc["call_id"].as_i64(),
                inc["from"].as_i64(),
                inc["video"].as_bool()
            ),
            (Some(call), Some(a.u.id), Some(true)),
            "{inc}"
        );
        b.ws.send(json!({"type": "call_received", "call_id": call}))
            .await;
        b.ws.next_of("call").await;
    }
    let r = a.ws.next_of("call_ringing").await;
    assert_eq!(r["user_id"], b1.u.id);
    assert!(
        !types(&drain(&mut a.ws).await).contains(&"call_ringing"),
        "ringing is said once"
    );

    // Both devices accept at once: one wins, the other gets answered_elsewhere.
    let path = format!("/api/calls/{call}/accept");
    let (r1, r2) = tokio::join!(
        post(&s, &b1.u, &path, json!({})),
        post(&s, &b2.u, &path, json!({}))
    );
    let mut results = [(r1.0, r1.1["error"].clone()), (r2.0, r2.1["error"].clone())];
    results.sort_by_key(|r| r.0);
    assert_eq!(results[0], (200, Value::Null), "{r1:?} {r2:?}");
    assert_eq!(
        results[1],
        (409, json!("answered_elsewhere")),
        "{r1:?} {r2:?}"
    );
    let (mut winner, mut loser) = if r1.0 == 200 { (b1, b2) } else { (b2, b1) };
    let win = if r1.0 == 200 { r1.1 } else { r2.1 };
    assert_eq!(win["p2p"]["role"], "answerer", "{win}");
    assert_eq!(win["call"]["state"], "active");
    let stop = loser.ws.next_of("call_ring_stopped").await;
    assert_eq!(stop["reason"], "answered_elsewhere");
    assert!(!types(&drain(&mut winner.ws).await).contains(&"call_ring_stopped"));
    let acc = a.ws.next_of("call_accepted").await;
    assert_eq!(
        (acc["by"].as_i64(), acc["mode"].as_str()),
        (Some(winner.u.id), Some("p2p"))
    );

    // Offer and answer go between the two devices in the call only.
    a.ws.send(json!({"type": "call_signal", "call_id": call, "data": {"sdp": {"type": "offer", "sdp": "v=0 offer"}}})).await;
    let sig = winner.ws.next_of("call_signal").await;
    assert_eq!(
        (sig["from"].as_i64(), sig["data"]["sdp"]["type"].as_str()),
        (Some(a.u.id), Some("offer"))
    );
    winner.ws.send(json!({"type": "call_signal", "call_id": call, "data": {"sdp": {"type": "answer", "sdp": "v=0 answer"}}})).await;
    assert_eq!(
        a.ws.next_of("call_signal").await["data"]["sdp"]["type"],
        "answer"
    );
    loser
        .ws
        .send(json!({"type": "call_signal", "call_id": call, "data": {}, "req_id": 5}))
        .await;
    let e = loser.ws.next_of("error").await;
    assert_eq!(
        (e["code"].as_str(), e["req_id"].as_i64()),
        (Some("not_in_call"), Some(5))
    );
    assert!(!types(&drain(&mut loser.ws).await).contains(&"call_signal"));

    // Alice hangs up: everyone is told; the history has the call with its duration.
    let (st, v) = post(&s, &a.u, &format!("/api/calls/{call}/hangup"), json!({})).await;
    assert_eq!(
        (st, v["call"]["state"].as_str()),
        (200, Some("ended")),
        "{v}"
    );
    for ws in [&mut a.ws, &mut winner.ws, &mut loser.ws] {
        let e = ws.next_of("call_ended").await;
        assert_eq!(
            (e["reason"].as_str(), e["by"].as_i64()),
            (Some("hangup"), Some(a.u.id)),
            "{e}"
        );
        assert!(e["duration_ms"].as_u64().is_some(), "{e}");
    }
    let m = last_call_in_history(&s, &winner.u, chat).await;
    assert_eq!(m["sender_id"], a.u.id);
    assert_eq!(
        (
            m["call"]["call_id"].as_i64(),
            m["call"]["reason"].as_str(),
            m["call"]["video"].as_bool()
        ),
        (Some(call), Some("hangup"), Some(true))
    );
    assert!(m["call"]["duration_ms"].as_u64().is_some(), "{m}");
    let (_, ev) = http(
        s.addr,
        "GET",
        &format!("/api/chats/{chat}/events?after=0"),
        Some(&a.u.token),
        None,
    )
    .await;
    let evs = ev["events"].as_array().unwrap();
    let started_ev = evs
        .iter()
        .find(|e| e["type"] == "call_started")
        .expect("call_started in the events");
    assert_eq!(
        (started_ev["call_id"].as_i64(), started_ev["kind"].as_str()),
        (Some(call), Some("direct"))
    );
    let ended_ev = evs.last().unwrap();
    assert!(ended_ev["seq"].as_i64() > started_ev["seq"].as_i64());
    assert_eq!(ended_ev["message"]["call"]["reason"], "hangup");
    // Ended is ended.
    let (st, v) = post(&s, &a.u, &format!("/api/calls/{call}/hangup"), json!({})).await;
    assert_eq!((st, v["error"].as_str()), (409, Some("call_ended")));
    let (st, v) = http(
        s.addr,
        "GET",
        &format!("/api/calls/{call}"),
        Some(&loser.u.token),
        None,
    )
    .await;
    assert_eq!(
        (st, v["call"]["reason"].as_str()),
        (200, Some("hangup")),
        "{v}"
    );
    // A call message is neither edited nor forwarded.
    let seq = m["seq"].as_i64().unwrap();
    let (st, _) = http(
        s.addr,
        "PATCH",
        &format!("/api/chats/{chat}/messages/{seq}"),
        Some(&a.u.token),
        Some(json!({"text": "x"})),
    )
    .await;
    assert_eq!(st, 403);
}

fn signalling_now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bob_rings_on_two_devices_one_answers_the_other_is_told_and_history_has_the_duration() {
    two_devices_one_answers(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_call_on_postgres() {
    let pg = postgres().await;
    two_devices_one_answers(Some(&pg.url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_busy_and_cancelled() {
    let s = support::start(cfg()).await;
    let mut a = dev(&s, "+79160001011", "a").await;
    let mut b = dev(&s, "+79160001012", "b").await;
    let mut c = dev(&s, "+79160001013", "c").await;
    let ab = dialog(&s, &a.u, &b.u).await;
    let cb = dialog(&s, &c.u, &b.u).await;

    // Declined.
    let call = start(&s, &mut a, ab, false).await["call"]["id"]
        .as_i64()
        .unwrap();
    b.ws.next_of("call_incoming").await;
    b.ws.send(json!({"type": "call_decline", "call_id": call}))
        .await;
    assert_eq!(b.ws.next_of("call").await["call"]["reason"], "declined");
    let e = a.ws.next_of("call_ended").await;
    assert_eq!(
        (e["reason"].as_str(), e["by"].as_i64()),
        (Some("declined"), Some(b.u.id))
    );
    assert!(e.get("duration_ms").is_none(), "never answered: {e}");
    assert_eq!(
        last_call_in_history(&s, &a.u, ab).await["call"]["reason"],
        "declined"
    );

    // Busy: Bob is in a call with Carol; Alice's call ends at once, Bob is not rung.
    let cc = start(&s, &mut c, cb, false).await["call"]["id"]
        .as_i64()
        .unwrap();
    b.ws.next_of("call_incoming").await;
    b.ws.send(json!({"type": "call_accept", "call_id": cc}))
        .await;
    assert_eq!(b.ws.next_of("call").await["call"]["state"], "active");
    let v = start(&s, &mut a, ab, false).await;
    assert_eq!(
        (v["call"]["state"].as_str(), v["call"]["reason"].as_str()),
        (Some("ended"), Some("busy")),
        "{v}"
    );
    assert_eq!(a.ws.next_of("call_ended").await["reason"], "busy");
    assert!(!types(&drain(&mut b.ws).await).contains(&"call_incoming"));
    assert_eq!(
        last_call_in_history(&s, &a.u, ab).await["call"]["reason"],
        "busy"
    );
    // Bob cannot answer another call while in one; the device can also decline as busy.
    b.ws.send(json!({"type": "call_hangup", "call_id": cc}))
        .await;
    assert_eq!(c.ws.next_of("call_ended").await["reason"], "hangup");
    let v = start(&s, &mut a, ab, false).await;
    let call = v["call"]["id"].as_i64().unwrap();
    assert_eq!(v["call"]["state"], "ringing", "{v}");
    b.ws.next_of("call_incoming").await;
    let (st, v) = post(
        &s,
        &b.u,
        &format!("/api/calls/{call}/decline"),
        json!({"busy": true}),
    )
    .await;
    assert_eq!(
        (st, v["call"]["reason"].as_str()),
        (200, Some("busy")),
        "{v}"
    );
    assert_eq!(a.ws.next_of("call_ended").await["reason"], "busy");

    // Cancelled: Alice hangs up before Bob answers; Bob stops ringing.
    let call = start(&s, &mut a, ab, true).await["call"]["id"]
        .as_i64()
        .unwrap();
    b.ws.next_of("call_incoming").await;
    a.ws.send(json!({"type": "call_hangup", "call_id": call}))
        .await;
    assert_eq!(b.ws.next_of("call_ring_stopped").await["reason"], "ended");
    let e = b.ws.next_of("call_ended").await;
    assert_eq!(
        (e["reason"].as_str(), e["by"].as_i64()),
        (Some("cancelled"), Some(a.u.id))
    );
    let (st, v) = post(&s, &b.u, &format!("/api/calls/{call}/accept"), json!({})).await;
    assert_eq!((st, v["error"].as_str()), (409, Some("call_ended")));
    assert_eq!(
        last_call_in_history(&s, &b.u, ab).await["call"]["reason"],
        "cancelled"
    );
}

// ---- push ------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Gateway {
    /// (path, headers, body) of every request.
    got: Arc<Mutex<Vec<(String, axum::http::HeaderMap, bytes::Bytes)>>>,
    /// Answer pushes as dead (gateway: rejected; Web Push: 410).
    dead: Arc<std::sync::atomic::AtomicBool>,
    seen: Arc<tokio::sync::Notify>,
}

impl Gateway {
    async fn serve(&self) -> SocketAddr {
        let g = self.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, h: axum::http::HeaderMap, body: bytes::Bytes| {
                let g = g.clone();
                async move {
                    let path = uri.path().to_string();
                    let dead = g.dead.load(std::sync::atomic::Ordering::SeqCst);
                    let pushkey = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .map(|v| v["notification"]["devices"][0]["pushkey"].clone());
                    g.got.lock().unwrap().push((path.clone(), h, body));
                    g.seen.notify_waiters();
                    use axum::response::IntoResponse;
                    match (path.starts_with("/wp/"), dead) {
                        (true, true) => axum::http::StatusCode::GONE.into_response(),
                        (true, false) => axum::http::StatusCode::CREATED.into_response(),
                        (false, true) => axum::Json(json!({"rejected": [pushkey]})).into_response(),
                        (false, false) => axum::Json(json!({"rejected": []})).into_response(),
                    }
                }
            },
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        addr
    }

    /// Waits until `n` requests arrived; returns them all.
    async fn wait(&self, n: usize) -> Vec<(String, axum::http::HeaderMap, bytes::Bytes)> {
        tokio::time::timeout(WAIT, async {
            loop {
                let seen = self.seen.notified();
                {
                    let g = self.got.lock().unwrap();
                    if g.len() >= n {
                        return g.clone();
                    }
                }
                seen.await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "fewer than {n} push requests: {:?}",
                self.got
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|r| r.0.clone())
                    .collect::<Vec<_>>()
            )
        })
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_call_pushes_a_ring_then_a_stop_and_dead_push_targets_are_dropped() {
    use web_push_native::jwt_simple::prelude::{
        ECDSAP256PublicKeyLike, ES256KeyPair, NoCustomClaims,
    };
    let gw = Gateway::default();
    let gw_addr = gw.serve().await;
    let vapid = ES256KeyPair::generate();
    let s = support::start(signalling::Config {
        ring_timeout: Duration::from_millis(1500),
        push_gateway_url: format!("http://{gw_addr}/push"),
        push_vapid_private_key: B64.encode(vapid.to_bytes()),
        push_vapid_subject: "mailto:ops@max.example".into(),
        push_webpush_hosts: vec!["127.0.0.1".into()],
        ..cfg()
    })
    .await;
    let mut a = dev(&s, "+79160001021", "a").await;
    // Bob: a phone app with a gateway pushkey and a browser with a Web Push
    // subscription; neither has a socket open.
    let b_app = login(s.addr, &s.data_dir, "+79160001022", "bob app").await;
    let b_web = login(s.addr, &s.data_dir, "+79160001022", "bob browser").await;
    let (st, v) = post(
        &s,
        &b_app,
        "/api/push",
        json!({"kind": "gateway", "app_id": "ru.max.voip", "pushkey": "pk-app"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let ua_secret = web_push_native::p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
    let ua_public = {
        use web_push_native::p256::elliptic_curve::sec1::ToEncodedPoint;
        ua_secret
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec()
    };
    let auth = [3u8; 16];
    let endpoint = format!("http://{gw_addr}/wp/bob-browser");
    let (st, v) = post(
        &s,
        &b_web,
        "/api/push",
        json!({"kind": "webpush", "endpoint": endpoint,
        "keys": {"p256dh": B64.encode(&ua_public), "auth": B64.encode(auth)}}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    // Endpoints elsewhere than the push services are refused (no posting to an address
    // a client picks).
    let (st, v) = post(
        &s,
        &b_web,
        "/api/push",
        json!({"kind": "webpush", "endpoint": "http://10.0.0.1/x",
        "keys": {"p256dh": B64.encode(&ua_public), "auth": B64.encode(auth)}}),
    )
    .await;
    assert_eq!((st, v["error"].as_str()), (400, Some("bad_request")), "{v}");
    let (_, k) = http(s.addr, "GET", "/api/push/vapid", None, None).await;
    assert_eq!(
        k["public_key"],
        B64.encode(vapid.public_key().public_key().to_bytes_uncompressed())
    );

    let chat = dialog(&s, &a.u, &b_app).await;
    let call = start(&s, &mut a, chat, false).await["call"]["id"]
        .as_i64()
        .unwrap();
    let got = gw.wait(2).await;
    let gateway = got.iter().find(|r| r.0 == "/push").expect("a gateway push");
    let n: Value = serde_json::from_slice(&gateway.2).unwrap();
    let n = &n["notification"];
    assert_eq!(
        (
            n["type"].as_str(),
            n["call_id"].as_i64(),
            n["from"].as_i64()
        ),
        (Some("call_incoming"), Some(call), Some(a.u.id)),
        "{n}"
    );
    assert_eq!(
        (
            n["prio"].as_str(),
            n["devices"][0]["pushkey"].as_str(),
            n["devices"][0]["app_id"].as_str()
        ),
        (Some("high"), Some("pk-app"), Some("ru.max.voip"))
    );
    assert!(
        n["ttl"].as_u64().is_some_and(|t| t <= 2),
        "TTL is the ring timeout: {n}"
    );
    let web = got
        .iter()
        .find(|r| r.0 == "/wp/bob-browser")
        .expect("a Web Push");
    let h = &web.1;
    assert_eq!(h["content-encoding"], "aes128gcm");
    assert_eq!(h["urgency"], "high");
    assert_eq!(h["topic"].to_str().unwrap(), format!("call-{call}"));
    assert!(h["ttl"].to_str().unwrap().parse::<u64>().unwrap() <= 2);
    // VAPID: a JWT signed by the server's key, for the push service's origin.
    let authz = h["authorization"].to_str().unwrap();
    let (t, k) = authz
        .strip_prefix("vapid t=")
        .unwrap()
        .split_once(", k=")
        .unwrap();
    assert_eq!(k, k_of(&vapid));
    let claims = vapid
        .public_key()
        .verify_token::<NoCustomClaims>(t, None)
        .expect("VAPID JWT verifies");
    // The audience is the push service's origin (web-push-native leaves the port out,
    // which is what real push services on 443 expect).
    assert_eq!(
        claims.audiences.unwrap().into_string().unwrap(),
        "http://127.0.0.1"
    );
    assert_eq!(claims.subject.as_deref(), Some("mailto:ops@max.example"));
    // The payload decrypts with the subscription's keys (RFC 8291).
    let plain = web_push_native::decrypt(
        web.2.to_vec(),
        &ua_secret,
        web_push_native::Auth::from_slice(&auth),
    )
    .expect("decrypts");
    let p: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(
        (p["type"].as_str(), p["call_id"].as_i64()),
        (Some("call_incoming"), Some(call))
    );

    // Nobody answers: missed, and both devices get a stop.
    let e = a.ws.next_of("call_ended").await;
    assert_eq!(e["reason"], "missed", "{e}");
    let got = gw.wait(4).await;
    let stops: Vec<Value> = got[2..]
        .iter()
        .map(|r| {
            if r.0 == "/push" {
                serde_json::from_slice::<Value>(&r.2).unwrap()["notification"].clone()
            } else {
                assert_eq!(
                    r.1["topic"].to_str().unwrap(),
                    format!("call-{call}"),
                    "the stop replaces the ring"
                );
                serde_json::from_slice(
                    &web_push_native::decrypt(
                        r.2.to_vec(),
                        &ua_secret,
                        web_push_native::Auth::from_slice(&auth),
                    )
                    .unwrap(),
                )
                .unwrap()
            }
        })
        .collect();
    for st in &stops {
        assert_eq!(
            (st["type"].as_str(), st["call_id"].as_i64()),
            (Some("call_stop"), Some(call)),
            "{st}"
        );
    }
    let m = last_call_in_history(&s, &b_app, chat).await;
    assert_eq!(m["call"]["reason"], "missed");
    assert!(m["call"].get("duration_ms").is_none());

    // The push services now call both targets dead: after the next ring both are gone.
    gw.dead.store(true, std::sync::atomic::Ordering::SeqCst);
    a.ws.send(json!({"type": "call_start", "chat_id": chat}))
        .await;
    a.ws.next_of("call").await;
    gw.wait(6).await;
    let app = s.sig.app().clone();
    wait_until("both dead targets dropped", || {
        app.metrics.push_targets_dropped.get() == 2
    })
    .await;
    // Logs never carried an endpoint or pushkey (checked by tests/logs.rs in general).
}

fn k_of(vapid: &web_push_native::jwt_simple::algorithms::ES256KeyPair) -> String {
    use web_push_native::jwt_simple::algorithms::ECDSAP256PublicKeyLike;
    B64.encode(vapid.public_key().public_key().to_bytes_uncompressed())
}

/// Polls a condition that has no event to wait on (a background task's bookkeeping).
async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- group calls -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_call_is_announced_joined_late_left_and_ended_by_the_last() {
    let s = support::start(cfg()).await;
    let mut a = dev(&s, "+79160001031", "a").await;
    let mut b = dev(&s, "+79160001032", "b").await;
    let mut c = dev(&s, "+79160001033", "c").await;
    let g = group(&s, &a.u, &[b.u.id, c.u.id]).await;
    for d in [&mut a, &mut b, &mut c] {
        d.ws.next_of("chat_created").await;
    }

    let v = start(&s, &mut a, g, false).await;
    let call = v["call"]["id"].as_i64().unwrap();
    assert_eq!(
        (
            v["call"]["kind"].as_str(),
            v["call"]["state"].as_str(),
            v["call"]["mode"].as_str()
        ),
        (Some("group"), Some("active"), Some("sfu"))
    );
    // The SFU token opens this call's room only, with media grants, for Alice's device.
    let room = v["join"]["room"].as_str().unwrap();
    assert_eq!(room, format!("call-{call}"));
    let claims = s
        .keys
        .verify_room(v["join"]["token"].as_str().unwrap(), room)
        .expect("a token for the call's room");
    assert!(
        claims.grants.publish
            && claims.grants.subscribe
            && !claims.grants.chat
            && !claims.grants.files
    );
    // Its session is the device's, scoped to this call: revoked when the device leaves.
    assert_eq!(
        (claims.sub, claims.sid),
        (
            a.u.id.to_string(),
            Some(format!("{}:call:{call}", a.u.session))
        )
    );
    let alice_token = v["join"]["token"].as_str().unwrap().to_string();
    assert!(claims.exp - claims.iat <= 120);
    assert_eq!(
        s.keys
            .verify_room(v["join"]["token"].as_str().unwrap(), "call-1")
            .unwrap_err(),
        common::TokenError::WrongRoom
    );

    // Every member sees it started (a stored event); Bob and Carol ring.
    let (aid, cid) = (a.u.id, c.u.id);
    for d in [&mut a, &mut b, &mut c] {
        let ev = d.ws.next_of("call_started").await;
        assert_eq!(
            (ev["call_id"].as_i64(), ev["participants"].clone()),
            (Some(call), json!([aid]))
        );
    }
    b.ws.next_of("call_incoming").await;
    c.ws.next_of("call_incoming").await;
    b.ws.send(json!({"type": "call_join", "call_id": call}))
        .await;
    let j = b.ws.next_of("call").await;
    assert!(j["join"]["token"].is_string(), "{j}");
    c.ws.send(json!({"type": "call_decline", "call_id": call}))
        .await;
    c.ws.next_of("call").await;
    assert_eq!(
        c.ws.next_of("call_ring_stopped").await["reason"],
        "declined"
    );
    // Everyone sees who is in it.
    let u = a.ws.next_of("call_updated").await;
    assert_eq!(
        u["call"]["participants"],
        json!([a.u.id.min(b.u.id), a.u.id.max(b.u.id)])
    );
    // Starting again joins the call that is on.
    let (st, v) = post(&s, &c.u, "/api/calls", json!({"chat_id": g})).await;
    assert_eq!((st, v["call"]["id"].as_i64()), (200, Some(call)), "{v}");
    assert_eq!(v["call"]["participants"].as_array().unwrap().len(), 3);
    let (_, cur) = http(
        s.addr,
        "GET",
        &format!("/api/chats/{g}/call"),
        Some(&b.u.token),
        None,
    )
    .await;
    assert_eq!(cur["call"]["id"], call);

    // They leave one by one; the last one out ends it.
    for (d, left) in [(&mut a, 2), (&mut b, 1)] {
        d.ws.send(json!({"type": "call_hangup", "call_id": call}))
            .await;
        let v = d.ws.next_of("call").await;
        assert_eq!(
            v["call"]["participants"].as_array().unwrap().len(),
            left,
            "{v}"
        );
    }
    c.ws.send(json!({"type": "call_hangup", "call_id": call}))
        .await;
    for d in [&mut a, &mut b, &mut c] {
        let e = d.ws.next_of("call_ended").await;
        assert_eq!(
            (e["reason"].as_str(), e["by"].as_i64()),
            (Some("hangup"), Some(cid))
        );
        assert!(e["duration_ms"].as_u64().is_some());
    }
    let m = last_call_in_history(&s, &b.u, g).await;
    assert_eq!(
        (m["call"]["kind"].as_str(), m["call"]["reason"].as_str()),
        (Some("group"), Some("hangup"))
    );
    let (_, cur) = http(
        s.addr,
        "GET",
        &format!("/api/chats/{g}/call"),
        Some(&b.u.token),
        None,
    )
    .await;
    assert_eq!(cur["call"], Value::Null);
    // Tokens of a device that left are refused (the sfu also evicts it at once).
    assert_eq!(
        s.keys.verify(&alice_token).unwrap_err(),
        common::TokenError::Revoked
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_group_is_notified_not_rung() {
    let s = support::start(signalling::Config {
        group_ring_max_members: 2,
        ..cfg()
    })
    .await;
    let mut a = dev(&s, "+79160001041", "a").await;
    let mut b = dev(&s, "+79160001042", "b").await;
    let c = login(s.addr, &s.data_dir, "+79160001043", "c").await;
    let g = group(&s, &a.u, &[b.u.id, c.id]).await;
    start(&s, &mut a, g, true).await;
    let seen = {
        b.ws.next_of("call_started").await;
        drain(&mut b.ws).await
    };
    assert!(!types(&seen).contains(&"call_incoming"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_cannot_start_join_or_see_a_call() {
    let s = support::start(cfg()).await;
    let mut a = dev(&s, "+79160001051", "a").await;
    let mut b = dev(&s, "+79160001052", "b").await;
    let mut m = dev(&s, "+79160001053", "mallory").await;
    let g = group(&s, &a.u, &[b.u.id]).await;
    let call = start(&s, &mut a, g, false).await["call"]["id"]
        .as_i64()
        .unwrap();
    for (method, path, body) in [
        (
            "POST",
            "/api/calls".to_string(),
            Some(json!({"chat_id": g})),
        ),
        ("POST", format!("/api/calls/{call}/join"), Some(json!({}))),
        ("POST", format!("/api/calls/{call}/accept"), Some(json!({}))),
        ("GET", format!("/api/calls/{call}"), None),
        ("GET", format!("/api/chats/{g}/call"), None),
    ] {
        let (st, v) = http(s.addr, method, &path, Some(&m.u.token), body).await;
        assert_eq!(
            (st, v["error"].as_str()),
            (403, Some("not_member")),
            "{method} {path}: {v}"
        );
    }
    assert!(
        drain(&mut m.ws).await.is_empty(),
        "mallory hears nothing of it"
    );
    // A 1:1 call is invisible to others; inviting someone who is not your contact fails.
    let ab = dialog(&s, &a.u, &b.u).await;
    a.ws.send(json!({"type": "call_hangup", "call_id": call}))
        .await;
    a.ws.next_of("call_ended").await;
    let call = start(&s, &mut a, ab, false).await["call"]["id"]
        .as_i64()
        .unwrap();
    b.ws.next_of("call_incoming").await;
    let (st, v) = http(
        s.addr,
        "GET",
        &format!("/api/calls/{call}"),
        Some(&m.u.token),
        None,
    )
    .await;
    assert_eq!((st, v["error"].as_str()), (404, Some("not_found")), "{v}");
    let (st, v) = post(&s, &m.u, &format!("/api/calls/{call}/accept"), json!({})).await;
    assert_eq!((st, v["error"].as_str()), (404, Some("not_found")), "{v}");
    let (st, _) = post(&s, &b.u, &format!("/api/calls/{call}/accept"), json!({})).await;
    assert_eq!(st, 200);
    let (st, v) = post(
        &s,
        &a.u,
        &format!("/api/calls/{call}/invite"),
        json!({"user_id": m.u.id}),
    )
    .await;
    assert_eq!((st, v["error"].as_str()), (403, Some("forbidden")), "{v}");
    assert!(!types(&drain(&mut m.ws).await).contains(&"call_incoming"));
    // Phone numbers appear in no call event.
    for v in drain(&mut a.ws)
        .await
        .iter()
        .chain(drain(&mut b.ws).await.iter())
    {
        assert!(!v.to_string().contains("916000105"), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_person_or_a_p2p_failure_moves_the_call_to_the_sfu() {
    let s = support::start(cfg()).await;
    let mut a = dev(&s, "+79160001061", "a").await;
    let mut b = dev(&s, "+79160001062", "b").await;
    let mut c = dev(&s, "+79160001063", "c").await;
    let ab = dialog(&s, &a.u, &b.u).await;
    dialog(&s, &a.u, &c.u).await;
    let call = start(&s, &mut a, ab, true).await["call"]["id"]
        .as_i64()
        .unwrap();
    b.ws.next_of("call_incoming").await;
    b.ws.send(json!({"type": "call_accept", "call_id": call}))
        .await;
    assert_eq!(b.ws.next_of("call").await["call"]["mode"], "p2p");
    a.ws.send(json!({"type": "call_invite", "call_id": call, "user_id": c.u.id}))
        .await;
    a.ws.next_of("call").await;
    let inc = c.ws.next_of("call_incoming").await;
    assert_eq!(inc["call_id"], call);
    c.ws.send(json!({"type": "call_accept", "call_id": call}))
        .await;
    let v = c.ws.next_of("call").await;
    assert_eq!(v["call"]["mode"], "sfu", "{v}");
    assert!(v["join"]["token"].is_string());
    for d in [&mut a, &mut b, &mut c] {
        let m = d.ws.next_of("call_mode").await;
        assert_eq!(
            (m["mode"].as_str(), m["join"]["room"].as_str()),
            (Some("sfu"), Some(format!("call-{call}").as_str()))
        );
        let claims = s
            .keys
            .verify_room(
                m["join"]["token"].as_str().unwrap(),
                &format!("call-{call}"),
            )
            .unwrap();
        assert_eq!(claims.sub, d.u.id.to_string());
    }
    // P2P signals stop once the call is on the SFU.
    a.ws.send(json!({"type": "call_signal", "call_id": call, "data": {}}))
        .await;
    assert_eq!(a.ws.next_of("error").await["code"], "call_state");

    // P2P that fails moves a 1:1 call too.
    // Carol leaves: Alice and Bob go on; Bob leaves: it ends for everyone.
    c.ws.send(json!({"type": "call_hangup", "call_id": call}))
        .await;
    assert_eq!(
        c.ws.next_of("call").await["call"]["participants"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    b.ws.send(json!({"type": "call_hangup", "call_id": call}))
        .await;
    for d in [&mut a, &mut b, &mut c] {
        assert_eq!(d.ws.next_of("call_ended").await["reason"], "hangup");
    }
    let call = start(&s, &mut a, ab, false).await["call"]["id"]
        .as_i64()
        .unwrap();
    b.ws.next_of("call_incoming").await;
    b.ws.send(json!({"type": "call_accept", "call_id": call}))
        .await;
    b.ws.next_of("call").await;
    b.ws.send(json!({"type": "call_sfu", "call_id": call}))
        .await;
    assert_eq!(a.ws.next_of("call_mode").await["mode"], "sfu");
    assert_eq!(b.ws.next_of("call_mode").await["mode"], "sfu");
    // Video switches off, and everyone in it is told.
    a.ws.send(json!({"type": "call_video", "call_id": call, "video": false}))
        .await;
    assert_eq!(b.ws.next_of("call_updated").await["call"]["video"], false);
}

// ---- failures ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_callee_or_a_dropped_caller_ends_the_call_with_disconnect() {
    let s = support::start(cfg()).await;
    let mut a = dev(&s, "+79160001071", "a").await;
    let b = dev(&s, "+79160001072", "b").await;
    let ab = dialog(&s, &a.u, &b.u).await;
    // Bob's only device acknowledges the ring, then its socket drops: nothing can reach
    // him (no push target), so after the grace the call fails with `disconnect`.
    let call = start(&s, &mut a, ab, false).await["call"]["id"]
        .as_i64()
        .unwrap();
    let mut bws = b.ws;
    bws.next_of("call_incoming").await;
    bws.send(json!({"type": "call_received", "call_id": call}))
        .await;
    bws.next_of("call").await;
    a.ws.next_of("call_ringing").await;
    drop(bws);
    let e = a.ws.next_of("call_ended").await;
    assert_eq!(
        (e["reason"].as_str(), e["by"].as_i64()),
        (Some("disconnect"), Some(b.u.id)),
        "{e}"
    );

    // An active call whose caller's socket drops ends for the callee after the grace;
    // one whose socket comes back within the grace goes on.
    let mut bws = Ws::connect(s.addr, &b.u.token).await;
    bws.sync(json!([])).await;
    let call = start(&s, &mut a, ab, false).await["call"]["id"]
        .as_i64()
        .unwrap();
    bws.next_of("call_incoming").await;
    bws.send(json!({"type": "call_accept", "call_id": call}))
        .await;
    bws.next_of("call").await;
    // Back within the grace: still on.
    drop(a.ws);
    let mut aws = Ws::connect(s.addr, &a.u.token).await;
    aws.sync(json!([])).await;
    aws.send(json!({"type": "call_video", "call_id": call, "video": true, "req_id": 1}))
        .await;
    assert_eq!(aws.next_of("call").await["call"]["state"], "active");
    drop(aws);
    let e = bws.next_of("call_ended").await;
    assert_eq!(
        (e["reason"].as_str(), e["by"].as_i64()),
        (Some("disconnect"), Some(a.u.id)),
        "{e}"
    );
    assert_eq!(
        last_call_in_history(&s, &b.u, ab).await["call"]["reason"],
        "disconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_left_live_by_a_restart_end_as_failed() {
    let s = support::start(cfg()).await;
    let mut a = dev(&s, "+79160001081", "a").await;
    let mut b = dev(&s, "+79160001082", "b").await;
    let ab = dialog(&s, &a.u, &b.u).await;
    let call = start(&s, &mut a, ab, false).await["call"]["id"]
        .as_i64()
        .unwrap();
    b.ws.next_of("call_incoming").await;
    b.ws.send(json!({"type": "call_accept", "call_id": call}))
        .await;
    b.ws.next_of("call").await;
    let s = s.restart().await;
    let m = last_call_in_history(&s, &b.u, ab).await;
    assert_eq!(
        (m["call"]["call_id"].as_i64(), m["call"]["reason"].as_str()),
        (Some(call), Some("failed")),
        "{m}"
    );
    let (st, v) = http(
        s.addr,
        "GET",
        &format!("/api/calls/{call}"),
        Some(&a.u.token),
        None,
    )
    .await;
    assert_eq!(
        (
            st,
            v["call"]["state"].as_str(),
            v["call"]["reason"].as_str()
        ),
        (200, Some("ended"), Some("failed")),
        "{v}"
    );
    // And they can call again.
    let mut a2 = Dev {
        u: a.u,
        ws: Ws::connect(s.addr, &b.u.token).await,
    };
    a2.ws = Ws::connect(s.addr, &a2.u.token).await;
    a2.ws.sync(json!([])).await;
    let v = start(&s, &mut a2, ab, false).await;
    assert_eq!(v["call"]["state"], "ringing", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_invites_are_rate_limited_per_user() {
    let s = support::start(signalling::Config {
        call_invites_per_minute: 3,
        ..cfg()
    })
    .await;
    let mut a = dev(&s, "+79160001091", "a").await;
    let b = login(s.addr, &s.data_dir, "+79160001092", "b").await;
    let ab = dialog(&s, &a.u, &b).await;
    for _ in 0..3 {
        let call = start(&s, &mut a, ab, false).await["call"]["id"]
            .as_i64()
            .unwrap();
        a.ws.send(json!({"type": "call_hangup", "call_id": call}))
            .await;
        a.ws.next_of("call_ended").await;
    }
    let (st, v) = post(&s, &a.u, "/api/calls", json!({"chat_id": ab})).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (429, Some("rate_limited")),
        "{v}"
    );
    assert!(v["retry_after"].as_u64().is_some_and(|r| r >= 1));
    // Bad input gets a clear error.
    let (st, v) = post(&s, &a.u, "/api/calls", json!({"chat_id": "x"})).await;
    assert_eq!((st, v["error"].as_str()), (400, Some("bad_request")), "{v}");
    let (st, v) = post(&s, &a.u, "/api/calls/123/accept", json!({})).await;
    assert_eq!((st, v["error"].as_str()), (404, Some("not_found")), "{v}");
    a.ws.send(json!({"type": "call_accept"})).await;
    assert_eq!(a.ws.next_of("error").await["code"], "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callee_rung_by_too_many_calls_is_busy_and_a_logged_out_device_leaves() {
    let s = support::start(signalling::Config {
        max_ringing_per_user: 2,
        ..cfg()
    })
    .await;
    let mut b = dev(&s, "+79160001100", "bob").await;
    let mut callers = Vec::new();
    for i in 1..=3 {
        let d = dev(&s, &format!("+7916000110{i}"), "caller").await;
        let chat = dialog(&s, &d.u, &b.u).await;
        callers.push((d, chat));
    }
    let mut calls = Vec::new();
    for (d, chat) in callers.iter_mut() {
        let v = start(&s, d, *chat, false).await;
        calls.push((
            v["call"]["id"].as_i64().unwrap(),
            v["call"]["state"].as_str().unwrap().to_string(),
        ));
    }
    assert_eq!(calls[0].1, "ringing");
    assert_eq!(
        calls[1].1, "ringing",
        "call waiting: a second call rings too"
    );
    assert_eq!(calls[2].1, "ended", "a third is busy: {calls:?}");
    assert_eq!(
        callers[2].0.ws.next_of("call_ended").await["reason"],
        "busy"
    );
    // Bob answers the first; logging that device out closes its socket: after the grace
    // the call ends with `disconnect`.
    b.ws.send(json!({"type": "call_accept", "call_id": calls[0].0}))
        .await;
    b.ws.next_of("call").await;
    let (st, _) = http(s.addr, "POST", "/api/auth/logout", Some(&b.u.token), None).await;
    assert_eq!(st, 200);
    let e = callers[0].0.ws.next_of("call_ended").await;
    assert_eq!(
        (e["reason"].as_str(), e["by"].as_i64()),
        (Some("disconnect"), Some(b.u.id)),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rings_are_pushed_over_https_and_an_unknown_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (port, ca_file, mut got) = tls_gateway(dir.path()).await;
    let url = format!("https://localhost:{port}/_matrix/push/v1/notify");
    // Without the private CA the gateway's certificate is not trusted.
    let bare = signalling::outbound::Tls::new(None).unwrap();
    let r = signalling::outbound::post(
        &url.parse().unwrap(),
        &[],
        bytes::Bytes::from_static(b"{}"),
        WAIT,
        Some(&bare),
    )
    .await;
    assert!(
        matches!(r, Err(signalling::outbound::OutError::Tls(_))),
        "{r:?}"
    );
    let s = support::start(signalling::Config {
        push_gateway_url: url,
        push_ca_file: ca_file.display().to_string(),
        ..cfg()
    })
    .await;
    let mut a = dev(&s, "+79160001111", "a").await;
    let b = login(s.addr, &s.data_dir, "+79160001112", "bob app").await;
    let (st, v) = post(
        &s,
        &b,
        "/api/push",
        json!({"kind": "gateway", "app_id": "ru.max.voip", "pushkey": "pk-tls"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let chat = dialog(&s, &a.u, &b).await;
    let call = start(&s, &mut a, chat, true).await["call"]["id"]
        .as_i64()
        .unwrap();
    let n = tokio::time::timeout(WAIT, got.recv())
        .await
        .expect("a push over HTTPS")
        .unwrap();
    assert_eq!(
        (
            n["notification"]["type"].as_str(),
            n["notification"]["call_id"].as_i64()
        ),
        (Some("call_incoming"), Some(call)),
        "{n}"
    );
    assert_eq!(n["notification"]["devices"][0]["pushkey"], "pk-tls");
    // Cancelled: the stop follows on the same path.
    a.ws.send(json!({"type": "call_hangup", "call_id": call}))
        .await;
    let n = tokio::time::timeout(WAIT, got.recv())
        .await
        .expect("a stop over HTTPS")
        .unwrap();
    assert_eq!(
        (
            n["notification"]["type"].as_str(),
            n["notification"]["reason"].as_str()
        ),
        (Some("call_stop"), Some("ended")),
        "{n}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_and_answers_of_one_user_get_one_call() {
    let s = support::start(cfg()).await;
    let a = login(s.addr, &s.data_dir, "+79160001121", "a").await;
    let mut chats = Vec::new();
    for i in 0..8 {
        let b = login(s.addr, &s.data_dir, &format!("+7916000113{i}"), "b").await;
        chats.push(dialog(&s, &a, &b).await);
    }
    // Eight calls at once from one device: one starts, the others are refused.
    let results = futures_util::future::join_all(
        chats
            .iter()
            .map(|c| post(&s, &a, "/api/calls", json!({"chat_id": c}))),
    )
    .await;
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let refused = results
        .iter()
        .filter(|r| r.0 == 409 && r.1["error"] == "already_in_call")
        .count();
    assert_eq!((ok, refused), (1, 7), "{results:?}");
    // Two callers ring Carol; her two devices answer both calls at once: one gets in.
    let c1 = login(s.addr, &s.data_dir, "+79160001141", "carol phone").await;
    let c2 = login(s.addr, &s.data_dir, "+79160001141", "carol laptop").await;
    let mut calls = Vec::new();
    for i in 0..2 {
        let x = login(s.addr, &s.data_dir, &format!("+7916000115{i}"), "x").await;
        let chat = dialog(&s, &x, &c1).await;
        let (st, v) = post(&s, &x, "/api/calls", json!({"chat_id": chat})).await;
        assert_eq!(st, 200, "{v}");
        calls.push(v["call"]["id"].as_i64().unwrap());
    }
    let (p1, p2) = (
        format!("/api/calls/{}/accept", calls[0]),
        format!("/api/calls/{}/accept", calls[1]),
    );
    let (r1, r2) = tokio::join!(post(&s, &c1, &p1, json!({})), post(&s, &c2, &p2, json!({})));
    let mut st = [(r1.0, r1.1["error"].clone()), (r2.0, r2.1["error"].clone())];
    st.sort_by_key(|x| x.0);
    assert_eq!(
        st,
        [(200, Value::Null), (409, json!("already_in_call"))],
        "{r1:?} {r2:?}"
    );
}
