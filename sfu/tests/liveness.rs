//! Who stays connected: a participant is not cut off while it is alive. A publisher
//! whose subscriber connection never starts (nothing to receive yet) stays; a client
//! that sends media but skips STUN consent checks (Pion 3.1 WHIP) stays forwarded,
//! because authenticated media on the selected pair is proof of life.

mod harness;
mod netsim;

use std::time::Duration;

use harness::World;
use netsim::Link;
use sfu::proto::ServerMsg;

fn link() -> Link {
    Link { latency: Duration::from_millis(5), jitter: Duration::ZERO, loss: 0.0 }
}

/// Packets of `track` that client `i` received at or after index `from`.
fn received_since(w: &World, i: usize, video: bool, from: u32) -> usize {
    let c = &w.clients[i];
    c.received
        .iter()
        .filter(|(t, _)| c.track_video.get(*t).copied() == Some(video))
        .map(|(_, r)| r.packets.iter().filter(|p| p.3 >= from).count())
        .sum()
}

#[test]
fn a_publisher_alone_stays() {
    let mut w = World::new(3, link());
    let p = w.join("alone");
    // Its subscriber connection carries only the data channel: nothing to receive.
    w.publish(p, false);
    w.run(60_000, false, |_, _| {});
    let stats = w.engine.stats();
    assert_eq!(stats.participants, 1, "the publisher is still in the room after 60 s");
    assert_eq!(stats.tracks, 2, "its tracks are still published");
    assert!(
        !w.clients[p].msgs.iter().any(|m| matches!(m, ServerMsg::Left { .. })),
        "it was not told to leave: {:?}",
        w.clients[p].msgs.iter().filter(|m| matches!(m, ServerMsg::Left { .. })).collect::<Vec<_>>()
    );
    // Someone joining now receives it.
    let s = w.join("late");
    let frame = w.clients[p].next_frame;
    w.run(3_000, false, |_, _| {});
    assert!(received_since(&w, s, true, frame) > 30, "the late joiner gets the publisher's video");
    assert!(received_since(&w, s, false, 0) > 50, "and its audio");
}

#[test]
fn media_without_consent_checks_keeps_a_publisher_forwarded() {
    let mut w = World::new(4, link());
    let p = w.join("pion");
    w.publish(p, false);
    let s = w.join("viewer");
    w.run(3_000, false, |_, _| {});
    assert!(received_since(&w, s, false, 0) > 50, "audio flows before the test starts");
    // From now on the publisher sends media but no STUN at all.
    let addr = w.clients[p].pub_addr;
    w.no_stun_from.push(addr);
    w.run(60_000, false, |_, _| {});
    let audio_index = w.clients[p].next_audio;
    let frame = w.clients[p].next_frame;
    w.run(2_000, false, |_, _| {});
    let audio = received_since(&w, s, false, audio_index);
    let video = received_since(&w, s, true, frame);
    assert!(audio > 80, "audio still forwarded 60 s after the last STUN: {audio} packets in 2 s");
    assert!(video > 40, "video still forwarded 60 s after the last STUN: {video} packets in 2 s");
    assert_eq!(w.engine.stats().participants, 2);
    // The server never took the path for dead (a WHIP session would have been ended
    // one resume window after that).
    assert_eq!(w.engine.counters.ice_timeouts, 0, "no ICE timeout while media flows");
    assert!(w.engine.counters.consent_by_media >= 10, "consent renewed by media: {}", w.engine.counters.consent_by_media);
}

#[test]
fn a_publisher_silent_on_every_path_is_cut_off_and_counted() {
    let mut w = World::new(5, link());
    let p = w.join("gone");
    w.publish(p, false);
    let s = w.join("viewer");
    w.run(3_000, false, |_, _| {});
    assert!(received_since(&w, s, false, 0) > 50);
    // The publisher's network dies: no STUN, no media.
    let addr = w.clients[p].pub_addr;
    w.blackhole.push(addr);
    w.run(15_000, false, |_, _| {});
    assert_eq!(w.engine.stats().participants, 2, "kept while an ICE restart may come");
    // ICE gives the path up 15 s after its last sign of life; the resume window (10 s)
    // follows.
    w.run(12_000, false, |_, _| {});
    assert!(w.engine.counters.ice_timeouts >= 1, "the lost connection is counted: {:?}", w.engine.counters.ice_timeouts);
    assert_eq!(w.engine.stats().participants, 1, "the publisher is removed; the viewer stays");
    let told = w.clients[p].msgs.iter().any(|m| matches!(m, ServerMsg::Left { reason } if reason == "media connection failed"));
    assert!(told, "the publisher is told why");
}



/// The first packets a new subscriber gets: audio at once after its DTLS completes,
/// video from a keyframe requested when it subscribed.
#[test]
fn a_new_subscriber_gets_audio_at_once_and_video_within_a_keyframe_request() {
    let mut w = World::new(6, link());
    let p = w.join("pub");
    w.publish(p, false);
    w.run(3_000, false, |_, _| {});
    let s = w.join("late");
    w.run(3_000, false, |_, _| {});
    let c = &w.clients[s];
    let connected = c.sub_connected_at.expect("the subscriber connected");
    for (t, r) in &c.received {
        let video = c.track_video[t];
        let after = r.first_at.unwrap().saturating_duration_since(connected);
        eprintln!("video={video}: first packet {after:?} after DTLS");
        // One hop of 5 ms; audio leaves every 20 ms; a keyframe asked for at subscribe
        // time is out by the time DTLS completes.
        let goal = if video { Duration::from_millis(50) } else { Duration::from_millis(30) };
        assert!(after <= goal, "video={video}: first packet {after:?} after DTLS (goal {goal:?})");
    }
    assert_eq!(c.received.len(), 2);
}
