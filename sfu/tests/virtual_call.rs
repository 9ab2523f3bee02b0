//! Calls through the engine on a virtual clock: str0m clients (not ice-lite, RTP mode)
//! talk to the engine over a seeded network model with loss, jitter and reordering. No
//! sockets, no sleeps, repeatable. Checks forwarding and payload integrity, NACK repair
//! on both hops, sequence/timestamp rewriting across simulcast switches, switching only
//! at keyframes, and that garbage from one address harms no one.

mod netsim;
mod harness;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use harness::{World, tracks_of};
use netsim::Link;
use sfu::proto::{ClientMsg, Quality, ServerMsg};
use str0m::format::Codec;

#[test]
fn three_publishers_with_loss_jitter_and_garbage() {
    let link = Link { latency: Duration::from_millis(20), jitter: Duration::from_millis(25), loss: 0.03 };
    let mut w = World::new(7, link);
    for name in ["alice", "bob", "carol"] {
        let i = w.join(name);
        w.publish(i, false);
    }
    w.run(8_000, true, |_, _| {});
    assert!(w.net.lost > 100, "the network model lost packets: {}", w.net.lost);
    let mut video_frames = (0.0, 0.0); // (received, sent) over all video streams

    for i in 0..3 {
        let c = &w.clients[i];
        let own: HashSet<String> = c
            .msgs
            .iter()
            .filter_map(|m| match m {
                ServerMsg::TrackPublished { track } if track.participant_id == c.pid => Some(track.id.clone()),
                _ => None,
            })
            .collect();
        let others: Vec<(String, bool)> = tracks_of(&w, i).into_iter().filter(|(t, _)| !own.contains(t)).collect();
        assert_eq!(others.len(), 4, "client {i} knows the other two's audio and video");
        for (t, video) in others {
            let r = c.received.get(&t).unwrap_or_else(|| panic!("client {i} received nothing of {t}"));
            assert_eq!(r.bad, 0, "payloads arrive intact");
            let uniq: HashSet<u32> = r.packets.iter().map(|p| p.3).collect();
            let first = *uniq.iter().min().unwrap();
            let last = *uniq.iter().max().unwrap();
            let span = (last - first + 1) as f64;
            // Losses in the last half second cannot be repaired before the run ends.
            let settled = last.saturating_sub(if video { 15 } else { 25 });
            let got = uniq.iter().filter(|&&x| x <= settled).count() as f64 / (settled - first + 1) as f64;
            eprintln!("client {i} track {t} video={video}: {} packets, {} unique of span {span}, lost sent {}", r.packets.len(), uniq.len(), w.net.lost);
            if video {
                // Two lossy hops (~6 % lost) repaired by NACK on both.
                // Without repair two 3 % hops leave about 94 %; a packet lost again on
                // retransmission is rare but possible.
                assert!(got > 0.95, "client {i} video {t}: {:.3} of frames after repair", got);
                video_frames.0 += uniq.iter().filter(|&&x| x <= settled).count() as f64;
                video_frames.1 += (settled - first + 1) as f64;
                // A lost DTLS or keyframe packet can delay a start by a few seconds.
                assert!(span > 90.0, "video flowed for at least 3 s of the 8 s run: {span}");
            } else {
                // Audio is not retransmitted: about 6 % lost.
                assert!(got > 0.85, "client {i} audio {t}: {got:.3}");
            }
            // Rewriting: the same frame always gets the same sequence number, and
            // sequence numbers follow frame order exactly (one packet per frame).
            let mut by_idx: HashMap<u32, u64> = HashMap::new();
            for p in &r.packets {
                let prev = by_idx.insert(p.3, p.0);
                assert!(prev.is_none_or(|s| s == p.0), "retransmission keeps its sequence number");
            }
            let base = by_idx[&first] as i64 - first as i64;
            assert!(by_idx.iter().all(|(&idx, &seq)| seq as i64 - idx as i64 == base), "no gaps or shifts in rewriting");
        }
    }
    // Over all six video streams (~1,000 frames) the repaired share is steady; a single
    // stream of ~200 frames can dip by chance.
    let repaired = video_frames.0 / video_frames.1;
    assert!(repaired > 0.975, "video after NACK repair, all streams: {repaired:.4}");
    let st = w.engine.stats();
    assert_eq!((st.participants, st.tracks, st.subscriptions), (3, 6, 12));
}

#[test]
fn simulcast_switches_only_at_keyframes_and_stays_continuous() {
    let mut w = World::new(11, Link::clean());
    let p = w.join("pub");
    w.publish(p, true);
    let s = w.join("sub");
    let mut video_track = String::new();
    w.run(9_000, false, |w, ms| {
        if video_track.is_empty() {
            if let Some((t, _)) = tracks_of(w, s).into_iter().find(|(_, v)| *v) {
                video_track = t;
            }
        }
        if ms == 3_000 {
            w.command(s, ClientMsg::SetQuality { track_id: video_track.clone(), max_quality: Quality::Low, paused: false });
        }
        if ms == 6_000 {
            w.command(s, ClientMsg::SetQuality { track_id: video_track.clone(), max_quality: Quality::High, paused: false });
        }
    });
    let r = w.clients[s].received.get(&video_track).expect("video received");
    assert_eq!(r.bad, 0);
    let layers: Vec<u8> = r.packets.iter().map(|p| p.2).collect();
    assert!(layers.contains(&2) && layers.contains(&0), "both high and low were forwarded: {:?}", {
        let mut l = layers.clone();
        l.dedup();
        l
    });
    let mut switches = 0;
    for w2 in r.packets.windows(2) {
        let (a, b) = (&w2[0], &w2[1]);
        assert_eq!(b.0, a.0 + 1, "sequence numbers are continuous (clean network)");
        assert!(b.5.wrapping_sub(a.5) < 90_000 / 2, "timestamps move forward");
        assert!(b.5 != a.5, "one frame per packet: distinct timestamps");
        if b.2 != a.2 {
            switches += 1;
            assert!(b.4, "a layer switch starts on a keyframe");
        }
    }
    assert!(switches >= 2, "switched down and up: {switches}");
    // The publisher was asked for keyframes, but throttled.
    let kr = w.clients[p].keyframe_requests;
    assert!((1..=40).contains(&kr), "keyframe requests reached the publisher, throttled: {kr}");
    // The publisher heard which layers are in use.
    assert!(w.clients[p].msgs.iter().any(|m| matches!(m, ServerMsg::SubscribedQuality { qualities, .. } if qualities == &vec![Quality::Low])));
}

/// The publisher's video track is `mime` and every subscriber received it intact, more
/// than 60 frames, starting on a keyframe (forwarding waits for one).
fn assert_video_forwarded_from_a_keyframe(w: &World, publisher: usize, subscribers: &[usize], mime: &str) {
    let video = w.clients[publisher]
        .msgs
        .iter()
        .find_map(|m| match m {
            ServerMsg::TrackPublished { track } if track.kind == sfu::proto::TrackKind::Video => Some(track.clone()),
            _ => None,
        })
        .expect("video track published");
    assert_eq!(video.codec, mime);
    for &s in subscribers {
        let r = w.clients[s].received.get(&video.id).unwrap_or_else(|| panic!("{mime} received by {s}"));
        assert_eq!(r.bad, 0, "{mime} payloads intact");
        assert!(r.packets.len() > 60, "{mime} frames flowed: {}", r.packets.len());
        let first = r.packets.iter().min_by_key(|p| p.0).unwrap();
        assert!(first.4, "the first forwarded {mime} frame is a keyframe");
    }
}

#[test]
fn h264_is_forwarded_and_its_keyframes_recognised() {
    let mut w = World::new(5, Link { latency: Duration::from_millis(10), jitter: Duration::from_millis(10), loss: 0.02 });
    let p = w.join("pub");
    w.publish_codec(p, false, Codec::H264);
    let s1 = w.join("s1");
    let s2 = w.join("s2");
    w.run(5_000, false, |_, _| {});
    // H.264 keyframes are IDR slices (or SPS/PPS ahead of them).
    assert_video_forwarded_from_a_keyframe(&w, p, &[s1, s2], "video/H264");
}

#[test]
fn vp9_and_av1_are_forwarded_starting_on_keyframes() {
    for (codec, mime) in [(Codec::Vp9, "video/VP9"), (Codec::Av1, "video/AV1")] {
        let mut w = World::new(9, Link { latency: Duration::from_millis(10), jitter: Duration::from_millis(5), loss: 0.01 });
        let p = w.join("pub");
        w.publish_codec(p, false, codec);
        let s = w.join("sub");
        w.run(5_000, false, |_, _| {});
        assert_video_forwarded_from_a_keyframe(&w, p, &[s], mime);
    }
}

/// A panic inside one participant's WebRTC stack (str0m) ends that participant only:
/// the room is told it left, and everyone else's media keeps flowing.
#[test]
fn a_panicking_peer_fails_alone() {
    let mut w = World::new(3, Link { latency: Duration::from_millis(10), jitter: Duration::from_millis(5), loss: 0.0 });
    for name in ["alice", "bob", "carol"] {
        let i = w.join(name);
        w.publish(i, false);
    }
    w.run(3_000, false, |_, _| {});
    let bob = w.clients[1].pid.clone();
    let before: HashMap<String, usize> =
        [0, 2].iter().flat_map(|&i| w.clients[i].received.iter().map(|(t, r)| (t.clone(), r.packets.len()))).collect();
    assert_eq!(before.len(), 4 + 2, "alice and carol each receive two others' audio and video");
    assert!(w.engine.inject_panic(&bob, sfu::proto::PcKind::Publisher));
    w.run(3_000, false, |_, _| {});

    assert_eq!(w.engine.counters.peer_panics, 1, "the panic was caught once");
    let st = w.engine.stats();
    assert_eq!((st.participants, st.tracks), (2, 4), "bob and his tracks are gone; the others stay");
    for i in [0, 2] {
        let c = &w.clients[i];
        assert!(
            c.msgs.iter().any(|m| matches!(m, ServerMsg::ParticipantLeft { participant_id, .. } if *participant_id == bob)),
            "client {i} was told bob left"
        );
        let other = &w.clients[2 - i].pid;
        let theirs: Vec<String> = c
            .msgs
            .iter()
            .filter_map(|m| match m {
                ServerMsg::TrackPublished { track } if track.participant_id == *other => Some(track.id.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(theirs.len(), 2);
        for t in theirs {
            let r = &c.received[&t];
            let grew = r.packets.len() - before[&t];
            // 3 s more: ~150 audio packets or ~90 video frames.
            assert!(grew > 80, "client {i} kept receiving {t} after the panic: {grew} more packets");
            assert_eq!(r.bad, 0);
        }
    }
}
