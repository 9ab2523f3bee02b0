//! End to end through the real `maxd` binary over loopback, with webrtc-rs clients
//! (an independent WebRTC stack) speaking `/rtc`: join, publish audio and video,
//! receive everyone else's, leave, resume, and bad input of every kind.

mod support;

use std::time::Duration;

use support::{Maxd, metric};
use testkit::{Client, ServerMsg, TrackKind};

const T: Duration = Duration::from_secs(20);

fn ids(cs: &[&Client]) -> Vec<String> {
    cs.iter().map(|c| c.participant_id()).collect()
}

async fn received(c: &Client, from: &str, kind: TrackKind) -> u64 {
    c.stats().iter().filter(|s| s.participant_id == from && s.kind == kind).map(|s| s.packets).sum()
}

/// Two participants of room "main" (A with token `ta`), each publishing audio and video
/// and receiving the other's.
async fn pair(m: &Maxd, ta: &str) -> (Client, Client) {
    let a = Client::connect(&m.base_url(), ta).await.unwrap();
    a.publish_av().await.unwrap();
    let b = Client::connect(&m.base_url(), &m.room_token("main", "b")).await.unwrap();
    b.publish_av().await.unwrap();
    let (ai, bi) = (a.participant_id(), b.participant_id());
    a.wait_av_from_all(std::slice::from_ref(&bi), 30, T).await.unwrap();
    b.wait_av_from_all(std::slice::from_ref(&ai), 30, T).await.unwrap();
    (a, b)
}

/// Waits until `c` has received `more` packets of `kind` from `from` beyond `base`.
async fn flows(c: &Client, from: &str, kind: TrackKind, base: u64, more: u64) {
    c.wait_media_from(from, kind, base + more, T)
        .await
        .unwrap_or_else(|e| panic!("{} stopped receiving {kind:?} from {from}: {e:#}", c.participant_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_participants_exchange_audio_and_video_and_see_a_leave() {
    let m = Maxd::start(r#"["sfu"]"#);
    let mut cs = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let c = Client::connect(&m.base_url(), &m.room_token("main", name)).await.expect("join");
        c.publish_av().await.expect("publish");
        cs.push(c);
    }
    let all = ids(&cs.iter().collect::<Vec<_>>());
    for c in &cs {
        let others: Vec<String> = all.iter().filter(|i| **i != c.participant_id()).cloned().collect();
        let got = c.wait_av_from_all(&others, 60, T).await.unwrap_or_else(|e| panic!("{e:#}\n{}", m.log()));
        for s in &got {
            assert_eq!(s.bad_payloads, 0, "payload integrity from {}", s.participant_id);
            assert_eq!(s.foreign_payloads, 0, "no payload of the wrong sender on {}", s.track_id);
            assert!(s.frames > 0, "frames counted");
        }
        let videos = got.iter().filter(|s| s.kind == TrackKind::Video).count();
        assert_eq!(videos, 2, "video of both others");
    }
    let metrics = m.metrics();
    assert_eq!(metric(&metrics, "maxd_sfu_participants"), 3.0);
    assert_eq!(metric(&metrics, "maxd_sfu_tracks"), 6.0);
    assert!(metric(&metrics, "maxd_sfu_rtp_forwarded_total") > 100.0, "{metrics}");
    assert!(metric(&metrics, "maxd_sfu_forward_latency_seconds_count") > 0.0);

    // Carol leaves; Alice and Bob are told, and lose her tracks.
    let carol = cs.pop().unwrap();
    let carol_id = carol.participant_id();
    carol.leave().await.expect("leave");
    for c in &cs {
        let id = carol_id.clone();
        c.wait_for(T, move |msg| matches!(msg, ServerMsg::ParticipantLeft { participant_id, .. } if *participant_id == id))
            .await
            .expect("participant_left");
        c.wait_participants(T, |ps| ps.iter().all(|p| p.id != carol_id)).await.expect("carol gone");
    }
    // The other two still hear each other.
    let (a, b) = (&cs[0], &cs[1]);
    let base = received(a, &b.participant_id(), TrackKind::Audio).await;
    flows(a, &b.participant_id(), TrackKind::Audio, base, 20).await;
    for c in cs {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_before_anything_is_made() {
    let m = Maxd::start(r#"["sfu"]"#);
    let url = |tok: &str, room: Option<&str>| {
        let mut u = format!("ws://{}/rtc?access_token={tok}", m.http);
        if let Some(r) = room {
            u.push_str(&format!("&room={r}"));
        }
        u
    };
    let status = |u: String| async move {
        match tokio_tungstenite::connect_async(u).await {
            Ok(_) => 101,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
            Err(e) => panic!("unexpected: {e}"),
        }
    };
    let other_room = m.room_token("other", "mallory");
    assert_eq!(status(url(&other_room, Some("main"))).await, 403, "token for another room");
    assert_eq!(status(url("", None)).await, 401, "missing token");
    assert_eq!(status(url("abc.def.ghi", None)).await, 401, "garbage token");
    let no_room = m.token(&["--identity", "x"]);
    assert_eq!(status(url(&no_room, None)).await, 403, "token without a room");
    let files_only = m.token(&["--room", "main", "--identity", "x", "--grants", "files"]);
    assert_eq!(status(url(&files_only, None)).await, 403, "token without media grants");
    let keys = common::Keys::resolve(None, &m.dir.path().join("data"), true).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let expired = keys.mint(&common::Claims {
        sub: "late".into(),
        name: None,
        room: Some("main".into()),
        grants: common::Grants::parse_list("publish,subscribe").unwrap(),
        sid: None,
        iat: now - 3600,
        exp: now - 600,
    });
    assert_eq!(status(url(&expired, None)).await, 401, "expired token");
    assert_eq!(status(url(&m.room_token("main", "ok"), Some("main"))).await, 101, "a good token is let in");
    let metrics = m.metrics();
    assert_eq!(metric(&metrics, "maxd_sfu_participants"), 0.0, "nothing was made for refused requests");
    assert_eq!(metric(&metrics, "maxd_sfu_rooms"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_sdp_and_rtp_hurt_only_the_sender() {
    let m = Maxd::start(r#"["sfu"]"#);
    let (a, b) = pair(&m, &m.room_token("main", "a")).await;
    let (ai, bi) = (a.participant_id(), b.participant_id());

    a.send_raw_text("{not json").await.unwrap();
    a.wait_for(T, |m| matches!(m, ServerMsg::Error { code, .. } if code == "bad_message")).await.expect("bad_message");
    a.send_raw_text(r#"{"type":"fly"}"#).await.unwrap();
    a.send_raw_text(r#"{"type":"offer","sdp":"v=0 garbage","tracks":[]}"#).await.unwrap();
    a.wait_for(T, |m| matches!(m, ServerMsg::Error { code, .. } if code == "bad_sdp")).await.expect("bad_sdp");
    a.send_raw_text(r#"{"type":"answer","sdp":"x","offer_id":999}"#).await.unwrap();
    a.wait_for(T, |m| matches!(m, ServerMsg::Error { code, .. } if code == "bad_state")).await.expect("bad_state");
    a.send_raw_text(r#"{"type":"subscribe","track_ids":["TR_nope"]}"#).await.unwrap();
    a.wait_for(T, |m| matches!(m, ServerMsg::Error { code, .. } if code == "not_found")).await.expect("not_found");

    // Malformed datagrams at the media port: random bytes, RTP-looking, STUN-looking.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..300u32 {
        let mut junk: Vec<u8> = (0..(40 + i % 900)).map(|x| (x * 7 + i) as u8).collect();
        match i % 3 {
            0 => junk[0] = 0x80,
            1 => {
                junk[0] = 0x00;
                junk[1] = 0x01;
                junk[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
            }
            _ => {}
        }
        sock.send_to(&junk, m.media).unwrap();
    }

    // Both still send and receive, and the session still answers.
    for (x, from) in [(&a, &bi), (&b, &ai)] {
        for kind in [TrackKind::Audio, TrackKind::Video] {
            let base = received(x, from, kind).await;
            flows(x, from, kind, base, 15).await;
        }
    }
    a.send_raw_text(r#"{"type":"ping"}"#).await.unwrap();
    a.wait_for_type("pong", T).await.expect("pong");
    assert!(metric(&m.metrics(), "maxd_sfu_dropped_packets_total") > 0.0);
    for s in a.stats().iter().chain(b.stats().iter()) {
        assert_eq!(s.bad_payloads, 0);
    }
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_drop_then_resume_keeps_media_flowing() {
    let m = Maxd::start(r#"["sfu"]"#);
    let ta = m.room_token("main", "a");
    let (a, b) = pair(&m, &ta).await;
    let (ai, bi) = (a.participant_id(), b.participant_id());

    a.close_ws().await;
    // While A's WebSocket is down, its media keeps flowing both ways.
    let base = received(&b, &ai, TrackKind::Video).await;
    flows(&b, &ai, TrackKind::Video, base, 30).await;
    let base = received(&a, &bi, TrackKind::Audio).await;
    flows(&a, &bi, TrackKind::Audio, base, 30).await;

    let before = a.message_count();
    a.resume_ws(&ta).await.expect("resume");
    let joined = a
        .wait_for_after(before, T, |m| matches!(m, ServerMsg::Joined { .. }))
        .await
        .expect("joined again");
    assert_eq!(joined.raw["resumed"], true);
    assert_eq!(a.participant_id(), ai, "same participant");
    assert!(
        !b.messages().iter().any(|r| matches!(&r.msg, ServerMsg::ParticipantLeft { .. })),
        "B never saw A leave"
    );
    let base = received(&a, &bi, TrackKind::Video).await;
    flows(&a, &bi, TrackKind::Video, base, 30).await;
    a.send_raw_text(r#"{"type":"ping"}"#).await.unwrap();
    a.wait_for_after(before, T, |m| m.type_name() == "pong").await.expect("signalling works after resume");
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_with_1009_and_others_stay() {
    let m = Maxd::start(r#"["sfu"]"#);
    let a = Client::connect(&m.base_url(), &m.room_token("main", "a")).await.unwrap();
    let b = Client::connect(&m.base_url(), &m.room_token("main", "b")).await.unwrap();
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(70 * 1024));
    a.send_raw_text(&big).await.unwrap();
    let closed = a.wait_ws_closed(T).await.expect("closed");
    assert_eq!(closed.code, Some(1009), "{closed:?}");
    b.send_raw_text(r#"{"type":"ping"}"#).await.unwrap();
    b.wait_for_type("pong", T).await.expect("others unaffected");
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_restart_on_both_connections_keeps_media_flowing() {
    let m = Maxd::start(r#"["sfu"]"#);
    let (a, b) = pair(&m, &m.room_token("main", "a")).await;
    let (ai, bi) = (a.participant_id(), b.participant_id());

    a.renegotiate_publisher(true).await.expect("publisher ICE restart");
    let base = received(&b, &ai, TrackKind::Video).await;
    flows(&b, &ai, TrackKind::Video, base, 30).await;

    let ufrag = |sdp: &str| sdp.lines().find_map(|l| l.strip_prefix("a=ice-ufrag:")).map(str::to_string);
    let last_offer = a
        .messages()
        .iter()
        .rev()
        .find_map(|r| match &r.msg {
            ServerMsg::Offer { sdp, .. } => ufrag(sdp),
            _ => None,
        })
        .expect("an earlier subscriber offer");
    let before = a.message_count();
    a.restart_subscriber_ice().await.expect("subscriber ICE restart");
    let offer = a.wait_for_after(before, T, |m| matches!(m, ServerMsg::Offer { .. })).await.expect("a new offer");
    let new_ufrag = ufrag(offer.raw["sdp"].as_str().unwrap()).expect("ufrag");
    assert_ne!(new_ufrag, last_offer, "the new offer restarts ICE with new credentials");
    let base = received(&a, &bi, TrackKind::Video).await;
    flows(&a, &bi, TrackKind::Video, base, 30).await;
    assert!(a.errors().is_empty(), "{:?}", a.errors());
    a.close().await;
    b.close().await;
}
