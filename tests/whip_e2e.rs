//! WHIP (RFC 9725) and WHEP through the real `maxd` binary, with webrtc-rs peers that
//! use nothing but the standard HTTP exchanges: publishing into a room that `/rtc`
//! participants receive, playing a room, ICE restart by PATCH, and the status codes.

mod support;

use std::time::Duration;

use support::Maxd;
use testkit::media::identity_hash;
use testkit::whip::{WhepPlayer, WhipPublisher, http};
use testkit::{Client, ServerMsg, TrackKind};

const T: Duration = Duration::from_secs(20);

/// Packets received by a WHEP player on its `kind` transceiver, and from whom last.
fn whep_kind(p: &WhepPlayer, kind: TrackKind) -> (u64, Option<u32>, u64, u64) {
    p.recv.read(|m| {
        m.values()
            .filter(|s| s.kind == kind)
            .map(|s| (s.packets, s.last_sender, s.bad_payloads, s.sender_switches))
            .next()
            .unwrap_or((0, None, 0, 0))
    })
}

/// Waits until the player's `kind` transceiver got `min` packets more than `base`, the
/// last from `sender`.
async fn whep_gets(p: &WhepPlayer, kind: TrackKind, sender: u32, base: u64, min: u64) {
    p.recv
        .wait(
            T,
            &format!("{min} more {kind:?} packets from {sender:08x}"),
            |m| {
                m.values()
                    .find(|s| s.kind == kind && s.packets >= base + min && s.last_sender == Some(sender))
                    .map(|_| ())
            },
            |m| format!("{m:?}"),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_publishes_into_the_room_restarts_ice_and_ends_with_delete() {
    let m = Maxd::start(r#"["sfu"]"#);
    let base = m.base_url();
    let bob = Client::connect(&base, &m.room_token("main", "bob")).await.unwrap();
    let obs = WhipPublisher::publish(&base, "main", &m.room_token("main", "obs")).await.unwrap_or_else(|e| panic!("{e:#}\n{}", m.log()));
    let pid = obs.session.participant_id.clone();
    assert!(pid.starts_with("PA_"), "participant id header: {pid:?}");
    assert!(obs.session.location.starts_with("/whip/main/sessions/"), "{}", obs.session.location);
    assert!(obs.session.etag.starts_with('"') && obs.session.etag.ends_with('"'));

    // An ordinary room participant: told of it, and receives its audio and video intact.
    bob.wait_for(T, |msg| matches!(msg, ServerMsg::ParticipantJoined { participant } if participant.id == pid))
        .await
        .unwrap();
    for kind in [TrackKind::Audio, TrackKind::Video] {
        let s = bob.wait_media_from(&pid, kind, 30, T).await.unwrap_or_else(|e| panic!("{e:#}\n{}", m.log()));
        assert_eq!(s.bad_payloads, 0);
        assert_eq!(s.foreign_payloads, 0);
    }

    // Logs nest room > participant > track.
    let log = m.log();
    let published = log
        .lines()
        .find(|l| l.contains("track published") && l.contains(&format!("participant{{participant={pid}}}")))
        .unwrap_or_else(|| panic!("no track published line for {pid}:\n{log}"));
    assert!(published.contains(&format!("room{{room=main}}:participant{{participant={pid}}}:track{{track=TR_")), "{published}");

    // ICE restart by PATCH: media goes on.
    let before = bob.stats().iter().filter(|s| s.participant_id == pid).map(|s| s.packets).sum::<u64>();
    obs.session.ice_restart().await.unwrap_or_else(|e| panic!("{e:#}\n{}", m.log()));
    let video_before = bob.stats().iter().find(|s| s.participant_id == pid && s.kind == TrackKind::Video).unwrap().packets;
    bob.wait_media_from(&pid, TrackKind::Video, video_before + 60, T).await.unwrap_or_else(|e| panic!("after ICE restart: {e:#}"));
    assert!(bob.stats().iter().filter(|s| s.participant_id == pid).map(|s| s.packets).sum::<u64>() > before);

    // DELETE ends it: the room is told; the resource is gone.
    assert_eq!(obs.session.delete().await.unwrap(), 200);
    bob.wait_for(T, |msg| matches!(msg, ServerMsg::ParticipantLeft { participant_id, .. } if *participant_id == pid))
        .await
        .unwrap();
    assert_eq!(obs.session.delete().await.unwrap(), 404);
    obs.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_plays_the_room_and_moves_to_the_next_publisher() {
    let m = Maxd::start(r#"["sfu"]"#);
    let base = m.base_url();
    let alice = Client::connect(&base, &m.room_token("main", "alice")).await.unwrap();
    alice.publish_av().await.unwrap();
    let alice_hash = identity_hash(&alice.participant_id());

    let viewer = WhepPlayer::play(&base, "/whep/main", &m.room_token("main", "viewer")).await.unwrap_or_else(|e| panic!("{e:#}\n{}", m.log()));
    assert!(viewer.session.location.starts_with("/whep/main/sessions/"));
    for kind in [TrackKind::Audio, TrackKind::Video] {
        whep_gets(&viewer, kind, alice_hash, 0, 30).await;
    }

    // The viewer is not a participant others see.
    let carol = Client::connect(&base, &m.room_token("main", "carol")).await.unwrap();
    let joined = carol.wait_for_type("joined", T).await.unwrap();
    let ServerMsg::Joined { participants, .. } = joined.msg else { panic!("not joined") };
    let seen: Vec<&str> = participants.iter().map(|p| p.identity.as_str()).collect();
    assert_eq!(seen, ["alice"], "the WHEP viewer is hidden");

    // Alice leaves and Bob publishes: the same transceivers now carry Bob.
    alice.leave().await.unwrap();
    let bob = Client::connect(&base, &m.room_token("main", "bob")).await.unwrap();
    bob.publish_av().await.unwrap();
    let bob_hash = identity_hash(&bob.participant_id());
    for kind in [TrackKind::Audio, TrackKind::Video] {
        let (n, _, _, _) = whep_kind(&viewer, kind);
        whep_gets(&viewer, kind, bob_hash, n, 30).await;
        let (_, last, bad, switches) = whep_kind(&viewer, kind);
        assert_eq!(last, Some(bob_hash));
        assert_eq!(bad, 0, "{kind:?} payloads intact across the switch");
        assert_eq!(switches, 1, "{kind:?} moved from alice to bob once");
    }
    assert_eq!(viewer.recv.read(|m| m.len()), 2, "still one audio and one video stream");

    // One participant only, by identity.
    let only_bob = WhepPlayer::play(&base, "/whep/main/bob", &m.room_token("main", "viewer2")).await.unwrap();
    whep_gets(&only_bob, TrackKind::Video, bob_hash, 0, 30).await;
    assert_eq!(only_bob.session.delete().await.unwrap(), 200);
    assert_eq!(viewer.session.delete().await.unwrap(), 200);
    viewer.stop().await;
    only_bob.stop().await;
}

/// An offer whose only media is G.722 audio, which the server does not forward.
fn g722_offer() -> String {
    [
        "v=0",
        "o=- 1 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 9",
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF",
        "a=setup:actpass",
        "a=mid:0",
        "a=sendonly",
        "a=rtcp-mux",
        "a=rtpmap:9 G722/8000",
        "",
    ]
    .join("\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_and_whep_status_codes_and_cors() {
    let m = Maxd::start(r#"["sfu"]"#);
    let base = m.base_url();
    let tok = m.room_token("main", "pub");
    let auth = format!("Bearer {tok}");
    let sdp = ("Content-Type", "application/sdp");
    let post = |path: &'static str, headers: Vec<(&'static str, String)>, body: String| {
        let base = base.clone();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http(&base, "POST", path, &h, &body).await.unwrap()
        }
    };
    let offer = g722_offer();

    let r = post("/whip/main", vec![("Content-Type", "application/sdp".into())], offer.clone()).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = post("/whip/main", vec![("Authorization", "Bearer garbage".into()), (sdp.0, sdp.1.into())], offer.clone()).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let other = format!("Bearer {}", m.room_token("other", "pub"));
    let r = post("/whip/main", vec![("Authorization", other), (sdp.0, sdp.1.into())], offer.clone()).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let sub_only = format!("Bearer {}", m.token(&["--room", "main", "--identity", "s", "--grants", "subscribe"]));
    let r = post("/whip/main", vec![("Authorization", sub_only), (sdp.0, sdp.1.into())], offer.clone()).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("publish"), "{}", r.body);
    let r = post("/whip/main", vec![("Authorization", auth.clone()), ("Content-Type", "text/plain".into())], offer.clone()).await;
    assert_eq!(r.status, 415, "{}", r.body);
    let r = post("/whip/main", vec![("Authorization", auth.clone()), (sdp.0, sdp.1.into())], "hello".into()).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = post("/whip/main", vec![("Authorization", auth.clone()), (sdp.0, sdp.1.into())], offer.clone()).await;
    assert_eq!(r.status, 406, "{}", r.body);
    let r = post("/whep/nowhere", vec![("Authorization", format!("Bearer {}", m.room_token("nowhere", "v"))), (sdp.0, sdp.1.into())], offer.clone()).await;
    assert_eq!(r.status, 404, "{}", r.body);

    let r = http(&base, "GET", "/whip/main", &[], "").await.unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));
    let r = http(&base, "OPTIONS", "/whep/main", &[("Origin", "https://tool.example"), ("Access-Control-Request-Method", "POST")], "")
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r.header("access-control-allow-methods").is_some_and(|v| v.contains("POST")));
    assert!(r.header("access-control-allow-headers").is_some_and(|v| v.contains("Authorization")));
    assert_eq!(r.header("accept-post"), Some("application/sdp"));

    // A real session, then PATCH and DELETE rules on its resource.
    let obs = WhipPublisher::publish(&base, "main", &tok).await.unwrap();
    let loc = obs.session.location.clone();
    let frag = "a=ice-ufrag:zzzz\r\n"; // no pwd: an incomplete restart
    let patch = |headers: Vec<(&'static str, String)>, body: &'static str| {
        let (base, loc) = (base.clone(), loc.clone());
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http(&base, "PATCH", &loc, &h, body).await.unwrap()
        }
    };
    let ct = ("Content-Type", "application/trickle-ice-sdpfrag".to_string());
    let r = patch(vec![("Authorization", auth.clone()), ct.clone(), ("If-Match", "\"nope\"".into())], "a=end-of-candidates\r\n").await;
    assert_eq!(r.status, 412, "{}", r.body);
    let r = patch(vec![("Authorization", auth.clone()), ("Content-Type", "application/sdp".into())], "a=end-of-candidates\r\n").await;
    assert_eq!(r.status, 415, "{}", r.body);
    let r = patch(
        vec![("Authorization", auth.clone()), ct.clone()],
        "a=candidate:1 1 udp 2122260223 127.0.0.1 61764 typ host\r\na=end-of-candidates\r\n",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = patch(vec![("Authorization", auth.clone()), ct.clone()], "a=candidate:garbage\r\n").await;
    assert_eq!(r.status, 422, "{}", r.body);
    let r = patch(vec![("Authorization", auth.clone()), ct.clone(), ("If-Match", "*".into())], frag).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let stranger = format!("Bearer {}", m.room_token("main", "stranger"));
    let r = patch(vec![("Authorization", stranger.clone()), ct.clone()], "a=end-of-candidates\r\n").await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = http(&base, "POST", &loc, &[("Authorization", &auth)], "").await.unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("PATCH, DELETE, OPTIONS"));
    let r = http(&base, "DELETE", &loc, &[("Authorization", &stranger)], "").await.unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(obs.session.delete().await.unwrap(), 200);
    let r = patch(vec![("Authorization", auth.clone()), ct.clone()], "a=end-of-candidates\r\n").await;
    assert_eq!(r.status, 404, "{}", r.body);
    obs.stop().await;
    // Every refusal left nothing behind (the gauge is refreshed every second).
    let deadline = std::time::Instant::now() + T;
    loop {
        let text = m.metrics();
        let n = support::metric(&text, "maxd_sfu_participants");
        if n == 0.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "participants left behind: {n}");
        tokio::time::sleep(Duration::from_millis(200)).await; // polling a gauge, not synchronising
    }
}
