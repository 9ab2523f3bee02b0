//! Property tests of the sfu's parsers that face the network - the same parsers the
//! `fuzz/` targets fuzz (docs/fuzzing.md), on stable Rust in the normal test run: STUN
//! demultiplexing, `/rtc` messages, WHIP `PATCH` fragments, SDP bounds and the error
//! text a client gets.

use proptest::prelude::*;
use sfu::engine::SdpFrag;
use sfu::engine::fuzzing::{MAX_MLINES, MAX_SDP_CANDIDATES, check_sdp, client_text, local_ufrag};
use sfu::engine::is_stun;
use sfu::proto::{ClientMsg, PcKind, PublishTrack, Quality, Source};

/// A binding request naming `username`, then `tail` as further attribute bytes.
fn binding(username: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut attr = vec![0x00, 0x06];
    attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attr.extend_from_slice(username);
    while attr.len() % 4 != 0 {
        attr.push(0);
    }
    attr.extend_from_slice(tail);
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    m.extend_from_slice(&[7; 12]);
    m.extend_from_slice(&attr);
    m
}

/// Text as clients send it: mostly printable, some of anything.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[ -~]{0,24}", 1 => any::<String>()]
}

fn source() -> impl Strategy<Value = Source> {
    prop_oneof![
        Just(Source::Camera),
        Just(Source::Microphone),
        Just(Source::ScreenShare),
        Just(Source::ScreenShareAudio)
    ]
}

fn client_msg() -> impl Strategy<Value = ClientMsg> {
    let track = (text(), source(), proptest::option::of(text()))
        .prop_map(|(mid, source, name)| PublishTrack { mid, source, name });
    let pc = prop_oneof![Just(PcKind::Publisher), Just(PcKind::Subscriber)];
    let quality = prop_oneof![
        Just(Quality::Low),
        Just(Quality::Medium),
        Just(Quality::High)
    ];
    prop_oneof![
        any::<bool>().prop_map(|auto_subscribe| ClientMsg::Join { auto_subscribe }),
        text().prop_map(|session_id| ClientMsg::Resume { session_id }),
        (text(), proptest::collection::vec(track, 0..4))
            .prop_map(|(sdp, tracks)| ClientMsg::Offer { sdp, tracks }),
        (text(), any::<u64>()).prop_map(|(sdp, offer_id)| ClientMsg::Answer { sdp, offer_id }),
        (pc, text()).prop_map(|(pc, candidate)| ClientMsg::Trickle { pc, candidate }),
        proptest::collection::vec(text(), 0..4)
            .prop_map(|track_ids| ClientMsg::Subscribe { track_ids }),
        proptest::collection::vec(text(), 0..4)
            .prop_map(|track_ids| ClientMsg::Unsubscribe { track_ids }),
        (text(), quality, any::<bool>()).prop_map(|(track_id, max_quality, paused)| {
            ClientMsg::SetQuality {
                track_id,
                max_quality,
                paused,
            }
        }),
        (text(), any::<bool>()).prop_map(|(track_id, muted)| ClientMsg::Mute { track_id, muted }),
        text().prop_map(|track_id| ClientMsg::Unpublish { track_id }),
        Just(ClientMsg::IceRestart),
        Just(ClientMsg::Ping),
        Just(ClientMsg::Leave),
    ]
}

/// A line of an SDP fragment, as WHIP clients write them or not.
fn frag_line() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,12}".prop_map(|v| format!("a=ice-ufrag:{v}")),
        "[ -~]{0,24}".prop_map(|v| format!("a=ice-pwd:{v}")),
        "[ -~]{0,40}".prop_map(|v| format!("a=candidate:{v}")),
        Just("a=end-of-candidates".to_string()),
        Just("m=audio 9 UDP/TLS/RTP/SAVPF 111".to_string()),
        "[a-z]=[ -~]{0,10}",
        "[ -~]{0,10}",
        any::<String>(),
    ]
}

proptest! {
    #[test]
    fn stun_demux_never_panics_and_reads_inside_the_datagram(d in proptest::collection::vec(any::<u8>(), 0..128)) {
        let stun = is_stun(&d);
        prop_assert_eq!(stun, d.len() >= 20 && d[0] <= 3 && d[4..8] == [0x21, 0x12, 0xa4, 0x42]);
        if let Some(u) = local_ufrag(&d) {
            prop_assert!(stun && !u.contains(':'));
            let off = u.as_ptr() as usize - d.as_ptr() as usize;
            prop_assert!(off >= 24 && off + u.len() <= d.len());
        }
    }

    #[test]
    fn stun_routes_by_the_ufrag_whatever_follows(
        ufrag in "[A-Za-z0-9+/]{1,32}",
        remote in "[ -~]{0,32}",
        tail in proptest::collection::vec(any::<u8>(), 0..64),
        cut in any::<prop::sample::Index>(),
    ) {
        let m = binding(format!("{ufrag}:{remote}").as_bytes(), &tail);
        prop_assert_eq!(local_ufrag(&m), Some(ufrag.as_str()));
        // Cut anywhere: a ufrag or nothing, never a panic.
        let n = cut.index(m.len());
        if let Some(u) = local_ufrag(&m[..n]) {
            prop_assert!(ufrag.starts_with(u));
        }
    }

    #[test]
    fn rtc_messages_round_trip(msg in client_msg()) {
        let json = serde_json::to_string(&msg).unwrap();
        prop_assert_eq!(serde_json::from_str::<ClientMsg>(&json).unwrap(), msg);
    }

    #[test]
    fn rtc_frames_parse_or_are_refused(
        msg in client_msg(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<char>()), 0..4),
    ) {
        // A valid frame with a few characters replaced: parses to a message that
        // round-trips, or is refused; never a panic.
        let mut chars: Vec<char> = serde_json::to_string(&msg).unwrap().chars().collect();
        for (i, c) in edits {
            let i = i.index(chars.len());
            chars[i] = c;
        }
        let text: String = chars.into_iter().collect();
        if let Ok(m) = serde_json::from_str::<ClientMsg>(&text) {
            let again = serde_json::to_string(&m).unwrap();
            prop_assert_eq!(serde_json::from_str::<ClientMsg>(&again).unwrap(), m);
        }
    }

    #[test]
    fn patch_fragments_parse_and_write_back(lines in proptest::collection::vec(frag_line(), 0..8), crlf in any::<bool>()) {
        let body = lines.join(if crlf { "\r\n" } else { "\n" });
        match SdpFrag::parse(&body) {
            Ok(f) => {
                prop_assert!(f.candidates.iter().all(|c| c.starts_with("candidate:")));
                let mut again = String::new();
                if let Some(u) = &f.ufrag { again.push_str(&format!("a=ice-ufrag:{u}\r\n")); }
                if let Some(p) = &f.pwd { again.push_str(&format!("a=ice-pwd:{p}\r\n")); }
                for c in &f.candidates { again.push_str(&format!("a={c}\r\n")); }
                prop_assert_eq!(SdpFrag::parse(&again), Ok(f));
            }
            Err(e) => prop_assert!(e.starts_with("line ") && e.ends_with(" is not an SDP line"), "{}", e),
        }
    }

    #[test]
    fn sdp_bounds_count_what_they_say(mlines in 0..40usize, cands in 0..40usize, noise in proptest::collection::vec("[ -~]{0,20}", 0..10)) {
        let mut sdp = String::from("v=0\r\n");
        for i in 0..mlines.max(cands).max(noise.len()) {
            if i < mlines { sdp.push_str("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"); }
            if i < cands { sdp.push_str("a=candidate:1 1 udp 1 192.0.2.1 5000 typ host\r\n"); }
            if let Some(n) = noise.get(i) {
                if !n.starts_with("m=") && !n.starts_with("a=candidate:") { sdp.push_str(n); sdp.push_str("\r\n"); }
            }
        }
        let ok = mlines <= MAX_MLINES && cands <= MAX_SDP_CANDIDATES;
        prop_assert_eq!(check_sdp(&sdp).is_ok(), ok);
    }

    #[test]
    fn client_text_shows_no_internals(words in proptest::collection::vec(prop_oneof![
        "[ -~]{0,12}",
        "0x[0-9a-f]{1,16}",
        "PointerOffset\\(0x[0-9a-f]{4,12}\\)",
        any::<String>(),
    ], 0..12)) {
        let t = client_text(words.join(" "));
        prop_assert!(!t.is_empty());
        prop_assert!(!t.contains('\n') && !t.contains('\r') && !t.contains("PointerOffset"), "{:?}", t);
        prop_assert!(!t.split(' ').any(|w| w.trim_start_matches(|c: char| !c.is_ascii_alphanumeric()).starts_with("0x")), "{:?}", t);
        prop_assert!(t.chars().count() <= 202);
    }
}

mod regressions {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use sfu::engine::{Command, ConnId, Engine, EngineConfig, HttpKind, Io, SdpFrag};
    use sfu::proto::{ClientMsg, ErrorCode, PcKind, PublishTrack, ServerMsg, Source};
    use str0m::media::{Direction, MediaKind};
    use str0m::net::Protocol;
    use tokio::sync::{mpsc, oneshot};

    struct NoIo;
    impl Io for NoIo {
        fn transmit(&mut self, _: Protocol, _: SocketAddr, _: SocketAddr, _: &[u8]) -> bool {
            true
        }
    }

    fn claims(identity: &str) -> common::Claims {
        common::Claims {
            sub: identity.into(),
            name: None,
            room: Some("r".into()),
            grants: common::Grants::parse_list("publish,subscribe").unwrap(),
            sid: None,
            iat: 0,
            exp: u64::MAX,
        }
    }

    fn engine(now: Instant) -> Engine {
        let cfg = EngineConfig {
            udp_candidate: "10.0.0.1:7882".parse().unwrap(),
            tcp_candidate: None,
            empty_room_grace: Duration::from_secs(5),
            resume_window: Duration::from_secs(10),
            keyframe_interval: Duration::from_millis(500),
            max_participants: 8,
            seed: Some(1),
        };
        Engine::new(cfg, None, now).unwrap()
    }

    /// A send-only audio offer from an independent str0m client, and its mid.
    fn offer(now: Instant) -> (String, String) {
        let mut client = str0m::Rtc::builder().build(now);
        client.add_local_candidate(
            str0m::Candidate::host("10.0.0.2:5000".parse().unwrap(), "udp").unwrap(),
        );
        let mut api = client.sdp_api();
        let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let (offer, _) = api.apply().unwrap();
        (offer.to_sdp_string(), mid.to_string())
    }

    /// Candidates whose parse error quotes non-ASCII text past the 200 bytes a client
    /// is shown: one of them puts a character across the cut.
    fn candidates() -> Vec<String> {
        (0..4)
            .map(|pad| format!("candidate:{} {}", "x".repeat(pad), "é".repeat(150)))
            .collect()
    }

    /// Found by the `whip_patch` and `engine` fuzz targets: `client_text` cut an error
    /// text at byte 200 whatever was there, and str0m's candidate errors quote the
    /// client's candidate, so a trickled candidate of non-ASCII text panicked the media
    /// thread (outside the per-peer panic isolation): every call of the worker ended.
    #[test]
    fn a_trickled_candidate_of_non_ascii_text_is_refused() {
        let now = Instant::now();
        let mut e = engine(now);
        let (tx, mut rx) = mpsc::channel(1024);
        let (tx_b, mut rx_b) = mpsc::channel(1024);
        let (a, b) = (ConnId(1), ConnId(2));
        e.handle_command(
            now,
            Command::Join {
                conn: a,
                claims: claims("a"),
                tx,
                auto_subscribe: true,
            },
            &mut NoIo,
        );
        e.handle_command(
            now,
            Command::Join {
                conn: b,
                claims: claims("b"),
                tx: tx_b,
                auto_subscribe: true,
            },
            &mut NoIo,
        );
        let (sdp, mid) = offer(now);
        let tracks = vec![PublishTrack {
            mid,
            source: Source::Microphone,
            name: None,
        }];
        e.handle_command(
            now,
            Command::Client {
                conn: a,
                msg: ClientMsg::Offer { sdp, tracks },
            },
            &mut NoIo,
        );
        for candidate in candidates() {
            let msg = ClientMsg::Trickle {
                pc: PcKind::Publisher,
                candidate,
            };
            e.handle_command(now, Command::Client { conn: a, msg }, &mut NoIo);
        }
        let mut refused = 0;
        while let Ok(m) = rx.try_recv() {
            if let ServerMsg::Error {
                code: ErrorCode::BadMessage,
                message,
            } = m
            {
                assert!(
                    message.starts_with("candidate does not parse") && message.len() <= 240,
                    "{message}"
                );
                refused += 1;
            }
        }
        assert_eq!(refused, 4);
        // The other participant is still served.
        e.handle_command(
            now,
            Command::Client {
                conn: b,
                msg: ClientMsg::Ping,
            },
            &mut NoIo,
        );
        assert!(std::iter::from_fn(|| rx_b.try_recv().ok()).any(|m| m == ServerMsg::Pong));
    }

    /// The same through a WHIP `PATCH`: a 422 that says why, not a panic.
    #[test]
    fn a_patched_candidate_of_non_ascii_text_is_refused() {
        let now = Instant::now();
        let mut e = engine(now);
        let (sdp, _) = offer(now);
        let (reply, mut rx) = oneshot::channel();
        e.handle_command(
            now,
            Command::HttpOffer {
                claims: claims("w"),
                kind: HttpKind::Whip,
                offer: sdp,
                reply,
            },
            &mut NoIo,
        );
        let created = rx.try_recv().unwrap().unwrap();
        for c in candidates() {
            let frag = SdpFrag::parse(&format!("a={c}\r\n")).unwrap();
            let (reply, mut rx) = oneshot::channel();
            let cmd = Command::HttpPatch {
                resource: created.resource.clone(),
                identity: "w".into(),
                if_match: None,
                frag,
                reply,
            };
            e.handle_command(now, cmd, &mut NoIo);
            let err = rx.try_recv().unwrap().unwrap_err();
            assert_eq!(err.status, 422, "{}", err.message);
            assert!(
                err.message.starts_with("candidate does not parse"),
                "{}",
                err.message
            );
        }
    }
}
