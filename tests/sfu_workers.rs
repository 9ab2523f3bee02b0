//! Two media workers behind the one UDP port (`sfu.workers = 2`), through the real
//! `maxd` binary: rooms land on both workers, every participant of every room receives
//! every track intact, and ICE-TCP connections reach the worker of their room.
//! (The other end-to-end tests run with the default, one worker per core: two here.)

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use str0m::ice::{StunMessage, TransId};
use support::{Maxd, metric};
use testkit::{Client, ServerMsg, TrackKind};

const T: Duration = Duration::from_secs(30);

fn two_workers() -> Maxd {
    Maxd::start_with(r#"["sfu"]"#, &[("MAXD_SFU__WORKERS", "2")])
}

/// The value of one series of `/metrics` (`name` with its labels, as exposed).
fn series(text: &str, name: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.split(' ').next() == Some(name))?;
    line.rsplit(' ').next()?.parse().ok()
}

/// Waits until `/metrics` shows `want` for the series `name` (with labels, exactly as
/// exposed); the per-worker gauges move once a second.
fn wait_series(m: &Maxd, name: &str, want: f64) {
    let start = Instant::now();
    loop {
        let text = m.metrics();
        let got = series(&text, name);
        if got == Some(want) {
            return;
        }
        assert!(start.elapsed() < T, "{name} is {got:?}, not {want}\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_land_on_both_workers_and_everyone_receives_every_track() {
    let m = two_workers();
    let mut rooms = Vec::new();
    for room in ["north", "south"] {
        let mut cs = Vec::new();
        for name in ["a", "b"] {
            let c = Client::connect(&m.base_url(), &m.room_token(room, name))
                .await
                .expect("join");
            c.publish_av().await.expect("publish");
            cs.push(c);
        }
        rooms.push(cs);
    }
    for cs in &rooms {
        for c in cs {
            let others: Vec<String> = cs
                .iter()
                .map(|o| o.participant_id())
                .filter(|i| *i != c.participant_id())
                .collect();
            let got = c
                .wait_av_from_all(&others, 60, T)
                .await
                .unwrap_or_else(|e| panic!("{e:#}\n{}", m.log()));
            for s in &got {
                assert_eq!(
                    s.bad_payloads, 0,
                    "payload integrity from {}",
                    s.participant_id
                );
                assert_eq!(
                    s.foreign_payloads, 0,
                    "no payload of another sender on {}",
                    s.track_id
                );
                assert!(s.frames > 0, "frames counted");
            }
            assert_eq!(
                got.iter().filter(|s| s.kind == TrackKind::Video).count(),
                1,
                "the other's video"
            );
            assert_eq!(
                got.iter().filter(|s| s.kind == TrackKind::Audio).count(),
                1,
                "the other's audio"
            );
        }
    }
    // One room on each worker; the totals add up over both.
    wait_series(&m, "maxd_sfu_worker_rooms{worker=\"0\"}", 1.0);
    wait_series(&m, "maxd_sfu_worker_rooms{worker=\"1\"}", 1.0);
    wait_series(&m, "maxd_sfu_worker_participants{worker=\"0\"}", 2.0);
    wait_series(&m, "maxd_sfu_worker_participants{worker=\"1\"}", 2.0);
    wait_series(&m, "maxd_sfu_participants", 4.0);
    wait_series(&m, "maxd_sfu_tracks", 8.0);
    let text = m.metrics();
    for w in ["0", "1"] {
        let packets = format!("maxd_sfu_worker_packets_total{{worker=\"{w}\"}}");
        let busy = format!("maxd_sfu_worker_busy_seconds_total{{worker=\"{w}\"}}");
        for name in [packets, busy] {
            let v = series(&text, &name);
            assert!(v.is_some_and(|v| v > 0.0), "{name}: {v:?}\n{text}");
        }
    }
    assert!(metric(&text, "maxd_sfu_rtp_forwarded_total") > 100.0);
    for cs in rooms {
        for c in cs {
            c.close().await;
        }
    }
}

async fn received(c: &Client, from: &str, kind: TrackKind) -> u64 {
    c.stats()
        .iter()
        .filter(|s| s.participant_id == from && s.kind == kind)
        .map(|s| s.packets)
        .sum()
}

/// Waits until `c` has received `more` packets of `kind` from `from` beyond what it had.
async fn flows(c: &Client, from: &str, kind: TrackKind, more: u64) {
    let base = received(c, from, kind).await;
    c.wait_media_from(from, kind, base + more, T)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{} stopped receiving {kind:?} from {from}: {e:#}",
                c.participant_id()
            )
        });
}

/// The session of the room on the second worker survives its WebSocket dropping (resume
/// goes to the room's worker) and ICE restarts on both its connections (the new ufrags
/// reach the receive path's table before the client uses them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_and_ice_restart_on_the_second_worker() {
    let m = two_workers();
    // The first room goes to worker 0, so "main" goes to worker 1.
    let filler = Client::connect(&m.base_url(), &m.room_token("filler", "f"))
        .await
        .expect("join");
    let ta = m.room_token("main", "a");
    let a = Client::connect(&m.base_url(), &ta).await.unwrap();
    a.publish_av().await.unwrap();
    let b = Client::connect(&m.base_url(), &m.room_token("main", "b"))
        .await
        .unwrap();
    b.publish_av().await.unwrap();
    let (ai, bi) = (a.participant_id(), b.participant_id());
    a.wait_av_from_all(std::slice::from_ref(&bi), 30, T)
        .await
        .unwrap();
    b.wait_av_from_all(std::slice::from_ref(&ai), 30, T)
        .await
        .unwrap();
    wait_series(&m, "maxd_sfu_worker_participants{worker=\"0\"}", 1.0);
    wait_series(&m, "maxd_sfu_worker_participants{worker=\"1\"}", 2.0);

    a.close_ws().await;
    flows(&b, &ai, TrackKind::Video, 30).await;
    let before = a.message_count();
    a.resume_ws(&ta).await.expect("resume");
    let joined = a
        .wait_for_after(before, T, |m| matches!(m, ServerMsg::Joined { .. }))
        .await
        .expect("joined again");
    assert_eq!(joined.raw["resumed"], true);
    assert_eq!(a.participant_id(), ai, "same participant");

    a.renegotiate_publisher(true)
        .await
        .expect("publisher ICE restart");
    flows(&b, &ai, TrackKind::Video, 30).await;
    let before = a.message_count();
    a.restart_subscriber_ice()
        .await
        .expect("subscriber ICE restart");
    a.wait_for_after(before, T, |m| matches!(m, ServerMsg::Offer { .. }))
        .await
        .expect("a new offer");
    flows(&a, &bi, TrackKind::Video, 30).await;
    flows(&a, &bi, TrackKind::Audio, 30).await;
    assert!(a.errors().is_empty(), "{:?}", a.errors());
    for c in [a, b, filler] {
        c.close().await;
    }
}

/// A WHIP offer of Opus audio, with our ICE credentials.
fn whip_offer(ufrag: &str, pwd: &str) -> String {
    [
        "v=0",
        "o=- 1 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        &format!("a=ice-ufrag:{ufrag}"),
        &format!("a=ice-pwd:{pwd}"),
        "a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF",
        "a=setup:actpass",
        "a=mid:0",
        "a=sendonly",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "",
    ]
    .join("\r\n")
}

fn sha1_hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha1::Sha1>::new_from_slice(key).expect("any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// An ICE connectivity check from the client (controlling, nominating) as the server's
/// ICE-lite agent expects it: `server_ufrag:client_ufrag`, signed with the server's
/// password.
fn binding_request(server_ufrag: &str, server_pwd: &str, client_ufrag: &str) -> Vec<u8> {
    let username = format!("{server_ufrag}:{client_ufrag}");
    let req = StunMessage::binding_request(&username, TransId::new(), true, 7, 1_845_501_695, true);
    let mut buf = vec![0u8; 1500];
    let n = req
        .to_bytes(Some(server_pwd.as_bytes()), &mut buf, sha1_hmac)
        .expect("serialize");
    buf.truncate(n);
    buf
}

fn sdp_attr(sdp: &str, name: &str) -> String {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix(name))
        .map(str::to_string)
        .expect(name)
}

/// Sends one RFC 4571 frame and reads one back (`None`: the server closed).
fn tcp_exchange(s: &mut TcpStream, frame: &[u8]) -> Option<Vec<u8>> {
    s.write_all(&(frame.len() as u16).to_be_bytes()).unwrap();
    s.write_all(frame).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let mut d = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut d).ok()?;
    Some(d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_tcp_connections_reach_the_worker_of_their_room() {
    let m = two_workers();
    let tcp = m.media;
    let mut sessions = Vec::new();
    for (i, room) in ["east", "west"].into_iter().enumerate() {
        let token = m.token(&["--room", room, "--identity", "tcp", "--grants", "publish"]);
        let client_ufrag = format!("cli{i}");
        let offer = whip_offer(&client_ufrag, "abcdefghijklmnopqrstuvwx");
        let auth = format!("Bearer {token}");
        let r = testkit::whip::http(
            &m.base_url(),
            "POST",
            &format!("/whip/{room}"),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/sdp"),
            ],
            &offer,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
        assert!(
            r.body.contains("tcptype passive"),
            "an ICE-TCP candidate is offered: {}",
            r.body
        );
        sessions.push((
            sdp_attr(&r.body, "a=ice-ufrag:"),
            sdp_attr(&r.body, "a=ice-pwd:"),
            client_ufrag,
        ));
    }
    // The two rooms are on different workers: each check is answered, over TCP, by the
    // worker that knows its ufrag and password.
    wait_series(&m, "maxd_sfu_worker_rooms{worker=\"0\"}", 1.0);
    wait_series(&m, "maxd_sfu_worker_rooms{worker=\"1\"}", 1.0);
    let mut conns = Vec::new();
    for (ufrag, pwd, client) in &sessions {
        let mut s = TcpStream::connect(tcp).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let reply = tcp_exchange(&mut s, &binding_request(ufrag, pwd, client))
            .expect("an answer over ICE-TCP");
        let msg = StunMessage::parse(&reply).expect("STUN");
        assert!(msg.is_successful_binding_response(), "binding success");
        assert!(
            msg.verify(pwd.as_bytes(), sha1_hmac),
            "signed with the session's password"
        );
        // Later frames on the same connection go to the same worker.
        let again =
            tcp_exchange(&mut s, &binding_request(ufrag, pwd, client)).expect("a second answer");
        assert!(
            StunMessage::parse(&again)
                .unwrap()
                .is_successful_binding_response()
        );
        conns.push(s);
    }
    // A connection whose first check names no session is closed unanswered.
    let mut s = TcpStream::connect(tcp).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    assert_eq!(
        tcp_exchange(&mut s, &binding_request("nobody", "x", "cli")),
        None
    );
    wait_series(&m, "maxd_sfu_tcp_connections", 2.0);
    drop(conns);
}
