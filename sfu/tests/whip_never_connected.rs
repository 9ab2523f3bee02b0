//! A WHIP or WHEP session whose client never connects (it posted an offer and went away,
//! or its network never let ICE through) is let go like a `/rtc` participant whose
//! socket closed: gone within the resume window + 1 s, and its room closes after the
//! grace; one whose network dies after connecting gets the same window once ICE gives
//! its path up. On the virtual clock, repeatable from the seed.

mod harness;
mod netsim;

use std::time::Duration;

use harness::{NetIo, World};
use netsim::Link;
use sfu::engine::{Command, HttpKind};
use str0m::media::{Direction, MediaKind};

fn link() -> Link {
    Link { latency: Duration::from_millis(5), jitter: Duration::ZERO, loss: 0.0 }
}

/// Posts an offer for `kind` as `identity`; the client then never answers a STUN check.
fn offer(w: &mut World, kind: HttpKind, identity: &str, grants: &str, dir: Direction) {
    let mut rtc = harness::client_rtc(w.now, "10.0.9.9:5000".parse().unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, dir, None, None, None);
    let (offer, _) = api.apply().unwrap();
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let now = w.now;
    let mut io = NetIo { net: &mut w.net, now };
    w.engine.handle_command(
        now,
        Command::HttpOffer { claims: harness::claims(identity, grants), kind, offer: offer.to_sdp_string(), reply: tx },
        &mut io,
    );
    rx.try_recv().unwrap().expect("the offer is answered");
}

#[test]
fn whip_and_whep_sessions_that_never_connect_are_gone_after_the_window() {
    let mut w = World::new(21, link());
    offer(&mut w, HttpKind::Whip, "obs", "publish", Direction::SendOnly);
    offer(&mut w, HttpKind::Whep { target: None }, "player", "subscribe", Direction::RecvOnly);
    let s = w.engine.stats();
    assert_eq!((s.participants, s.rooms), (2, 1), "both admitted: {s:?}");
    // Within the resume window (10 s) they are kept: ICE may still come.
    w.run(9_000, false, |_, _| {});
    assert_eq!(w.engine.stats().participants, 2, "kept inside the window");
    // Gone by the window + 1 s.
    w.run(2_000, false, |_, _| {});
    let s = w.engine.stats();
    assert_eq!((s.participants, s.peers, s.tracks, s.subscriptions), (0, 0, 0, 0), "nothing of them is left: {s:?}");
    // The empty room closes after its grace (5 s here).
    w.run(5_500, false, |_, _| {});
    assert_eq!(w.engine.stats().rooms, 0, "the room closed after its grace");
}

/// A connected WHIP publisher whose network dies (no STUN, no media, no DELETE) is let
/// go like a `/rtc` participant that vanished: ICE gives the path up, its resume window
/// starts, and when it ends the room is told it left.
#[test]
fn a_whip_publisher_whose_network_dies_leaves_after_ice_and_the_window() {
    let mut w = World::new(22, link());
    let viewer = w.join("viewer");
    let obs = w.whip("obs");
    w.run(3_000, false, |_, _| {});
    let got: usize = w.clients[viewer].received.values().map(|r| r.packets.len()).sum();
    assert!(got > 50, "the viewer hears the WHIP publisher: {got} packets");
    let pid = w.clients[obs].pid.clone();
    let addr = w.clients[obs].pub_addr;
    w.blackhole.push(addr);
    // Kept while ICE may recover (str0m gives the path up ~15 s after its last sign of
    // life) and then for the resume window (10 s): an ICE restart by PATCH may come.
    w.run(20_000, false, |_, _| {});
    assert_eq!(w.engine.stats().participants, 2, "kept while ICE may come back");
    w.run(7_000, false, |_, _| {});
    assert!(w.engine.counters.ice_timeouts >= 1, "the lost path is counted");
    assert_eq!(w.engine.stats().participants, 1, "the WHIP publisher is gone; the viewer stays");
    let told = w.clients[viewer]
        .msgs
        .iter()
        .any(|m| matches!(m, sfu::proto::ServerMsg::ParticipantLeft { participant_id, .. } if *participant_id == pid));
    assert!(told, "the room is told the WHIP publisher left");
}
