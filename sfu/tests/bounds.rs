//! What one client may cost the media thread: STUN from thousands of source addresses,
//! thousands of candidates in a PATCH or by trickle, offers with hundreds of media
//! sections, are refused or dropped after a small bound - and the call of the others
//! goes on. Errors a client gets carry no internals of the WebRTC stack.

mod harness;
mod netsim;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use harness::{NetIo, World, server};
use netsim::Link;
use sfu::engine::{Command, HttpKind, SdpFrag};
use sfu::proto::{ClientMsg, ErrorCode, PcKind, ServerMsg};
use str0m::media::{Direction, MediaKind};
use str0m::net::Protocol;

fn link() -> Link {
    Link { latency: Duration::from_millis(5), jitter: Duration::ZERO, loss: 0.0 }
}

fn errors(w: &World, i: usize) -> Vec<(ErrorCode, String)> {
    w.clients[i]
        .msgs
        .iter()
        .filter_map(|m| match m {
            ServerMsg::Error { code, message } => Some((*code, message.clone())),
            _ => None,
        })
        .collect()
}

/// A STUN binding request naming `username` (no integrity: routing reads only the ufrag).
fn binding(username: &str, txid: u32) -> Vec<u8> {
    let mut attr = vec![0x00, 0x06];
    attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attr.extend_from_slice(username.as_bytes());
    while attr.len() % 4 != 0 {
        attr.push(0);
    }
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(&txid.to_be_bytes());
    m.extend_from_slice(&attr);
    m
}

fn server_ufrag(sdp: &str) -> String {
    sdp.lines().find_map(|l| l.trim().strip_prefix("a=ice-ufrag:")).unwrap().to_string()
}

#[test]
fn stun_from_thousands_of_addresses_is_bounded() {
    let mut w = World::new(11, link());
    let p = w.join("pub");
    w.publish(p, false);
    let s = w.join("sub");
    w.run(2_000, false, |_, _| {});
    let answer = w.clients[p]
        .msgs
        .iter()
        .find_map(|m| match m {
            ServerMsg::Answer { sdp } => Some(sdp.clone()),
            _ => None,
        })
        .unwrap();
    let username = format!("{}:x", server_ufrag(&answer));
    let before = w.engine.counters.drop_address_limit;
    let started = Instant::now();
    for i in 0..20_000u32 {
        let from: SocketAddr = format!("10.{}.{}.{}:{}", 100 + i / 65536, (i / 256) % 256, i % 256, 1000 + i % 60000)
            .parse()
            .unwrap();
        let now = w.now;
        let mut io = NetIo { net: &mut w.net, now };
        w.engine.handle_datagram(now, Protocol::Udp, from, server(), &binding(&username, i), &mut io);
    }
    let spent = started.elapsed();
    let dropped = w.engine.counters.drop_address_limit - before;
    assert!(dropped >= 20_000 - 16, "all but a few new addresses are dropped: {dropped}");
    eprintln!("20,000 STUN sources handled in {spent:?}");
    // The call goes on.
    let from = w.clients[p].next_audio;
    w.run(2_000, false, |_, _| {});
    let got: usize = w.clients[s].received.values().map(|r| r.packets.iter().filter(|x| x.3 >= from).count()).sum();
    assert!(got > 80, "the subscriber still receives the publisher: {got}");
}

#[test]
fn trickled_candidates_are_bounded() {
    let mut w = World::new(12, link());
    let p = w.join("pub");
    w.publish(p, false);
    for i in 0..100 {
        w.command(p, ClientMsg::Trickle {
            pc: PcKind::Publisher,
            candidate: format!("candidate:{i} 1 udp 2130706431 10.1.{}.{} 5000 typ host", i / 200, i % 200),
        });
    }
    w.pump();
    let limits = errors(&w, p).into_iter().filter(|(c, _)| *c == ErrorCode::Limit).count();
    assert_eq!(limits, 100 - 32, "candidates past 32 are refused one by one");
}

#[test]
fn offers_too_large_are_refused_and_nothing_is_remembered() {
    let mut w = World::new(13, link());
    let p = w.join("pub");
    w.publish(p, false);
    let mut rtc = harness::client_rtc(w.now, "10.0.9.9:5000".parse().unwrap());
    let mut api = rtc.sdp_api();
    for _ in 0..40 {
        api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    }
    let (offer, _) = api.apply().unwrap();
    // Hundreds of track descriptions as well.
    let tracks: Vec<_> = (0..300)
        .map(|i| sfu::proto::PublishTrack { mid: format!("x{i}"), source: sfu::proto::Source::Microphone, name: None })
        .collect();
    for _ in 0..20 {
        w.command(p, ClientMsg::Offer { sdp: offer.to_sdp_string(), tracks: tracks.clone() });
    }
    w.pump();
    let errs = errors(&w, p);
    assert_eq!(errs.len(), 20, "{errs:?}");
    assert!(errs.iter().all(|(c, m)| *c == ErrorCode::Limit && m.contains("at most")), "{errs:?}");
    w.run(1_000, false, |_, _| {});
    assert_eq!(w.engine.stats().tracks, 2, "the first offer's tracks only");
}

#[test]
fn malformed_sdp_errors_carry_no_internals() {
    let mut w = World::new(14, link());
    let p = w.join("pub");
    w.publish(p, false);
    w.join("sub"); // gives `pub` a subscriber offer to answer
    w.run(500, false, |_, _| {});
    let offer_id = w.clients[p]
        .msgs
        .iter()
        .filter_map(|m| match m {
            ServerMsg::Offer { offer_id, .. } => Some(*offer_id),
            _ => None,
        })
        .next_back();
    let bad = [
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF x\r\n",
        "garbage\u{0}\u{7f}",
        "v=0\r\nm=",
    ];
    for sdp in bad {
        w.command(p, ClientMsg::Answer { sdp: sdp.into(), offer_id: offer_id.unwrap_or(1) });
        w.command(p, ClientMsg::Offer { sdp: sdp.into(), tracks: vec![] });
        w.command(p, ClientMsg::Trickle { pc: PcKind::Publisher, candidate: sdp.into() });
    }
    w.pump();
    let errs = errors(&w, p);
    assert!(errs.len() >= 6, "{errs:?}");
    for (_, m) in errs {
        assert!(!m.contains("0x") && !m.contains("PointerOffset"), "an internal detail reached the client: {m}");
    }
}

#[test]
fn a_patch_with_thousands_of_candidates_is_refused_at_once() {
    let mut w = World::new(15, link());
    let mut rtc = harness::client_rtc(w.now, "10.0.8.8:5000".parse().unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, _) = api.apply().unwrap();
    let claims = common::Claims {
        sub: "whip".into(),
        name: None,
        room: Some("r".into()),
        grants: common::Grants::parse_list("publish").unwrap(),
        sid: None,
        iat: 0,
        exp: u64::MAX,
    };
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let now = w.now;
    let mut io = NetIo { net: &mut w.net, now };
    w.engine.handle_command(
        now,
        Command::HttpOffer { claims, kind: HttpKind::Whip, offer: offer.to_sdp_string(), reply: tx },
        &mut io,
    );
    let created = rx.try_recv().unwrap().unwrap();
    let frag = SdpFrag {
        ufrag: None,
        pwd: None,
        candidates: (0..2000).map(|i| format!("candidate:{i} 1 udp 1 10.2.{}.{} 9 typ host", i / 250, i % 250)).collect(),
    };
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let started = Instant::now();
    w.engine.handle_command(
        now,
        Command::HttpPatch { resource: created.resource, identity: "whip".into(), if_match: None, frag, reply: tx },
        &mut io,
    );
    let err = rx.try_recv().unwrap().unwrap_err();
    assert_eq!(err.status, 422);
    assert!(err.message.contains("too many candidates"), "{}", err.message);
    eprintln!("a 2,000-candidate PATCH refused in {:?}", started.elapsed());
}
