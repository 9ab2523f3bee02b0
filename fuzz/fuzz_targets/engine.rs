//! The media engine fed what clients send: `/rtc` messages (SDP offers and answers,
//! trickled candidates, any JSON), WHIP offers and `PATCH` fragments, and datagrams on
//! the media port, in any order on a virtual clock. What must hold: no panic escapes
//! the engine (str0m panics are contained per peer by design), and a bystander in the
//! same room is still served afterwards.
//!
//! Input: operations separated by NUL bytes; each is a kind byte and a payload.
#![no_main]
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use maxd_fuzz::{binding, split};
use sfu::engine::{Command, ConnId, Engine, EngineConfig, HttpKind, Io, SdpFrag};
use sfu::proto::{ClientMsg, PcKind, PublishTrack, ServerMsg, Source};
use str0m::net::Protocol;
use tokio::sync::{mpsc, oneshot};

struct NoIo;
impl Io for NoIo {
    fn transmit(&mut self, _: Protocol, _: SocketAddr, _: SocketAddr, _: &[u8]) -> bool {
        true
    }
}

fn server() -> SocketAddr {
    "10.0.0.1:7882".parse().unwrap()
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

/// The `a=ice-ufrag` of an SDP.
fn ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:").map(str::to_string))
}

/// Set while a panic unwinds: str0m panics the engine catches are not crashes.
static PANICKED: AtomicBool = AtomicBool::new(false);

fuzz_target!(
    init: {
        std::panic::set_hook(Box::new(|info| {
            PANICKED.store(true, Ordering::Relaxed);
            if std::env::var_os("FUZZ_SHOW_PANICS").is_some() {
                eprintln!("panic (caught or not): {info}");
            }
        }));
    },
    |data: &[u8]| {
        let escaped = catch_unwind(AssertUnwindSafe(|| run(data)));
        match escaped {
            Ok(contained) => {
                if contained > 0 && std::env::var_os("FUZZ_SHOW_PANICS").is_some() {
                    eprintln!("{contained} str0m panic(s) contained by the engine");
                }
            }
            Err(_) => {
                eprintln!("a panic escaped the engine");
                std::process::abort();
            }
        }
    }
);

/// Returns the number of str0m panics the engine contained.
fn run(data: &[u8]) -> u64 {
    PANICKED.store(false, Ordering::Relaxed);
    let t0 = Instant::now();
    let mut now = t0;
    let cfg = EngineConfig {
        udp_candidate: server(),
        tcp_candidate: None,
        empty_room_grace: Duration::from_secs(5),
        resume_window: Duration::from_secs(10),
        keyframe_interval: Duration::from_millis(500),
        max_participants: 8,
    };
    let mut e = Engine::new(cfg, None, now).unwrap();
    let io = &mut NoIo;
    let (a, b) = (ConnId(1), ConnId(2));
    let (tx_a, mut rx_a) = mpsc::channel(4096);
    let (tx_b, mut rx_b) = mpsc::channel(4096);
    e.handle_command(
        now,
        Command::Join {
            conn: a,
            claims: claims("a"),
            tx: tx_a,
            auto_subscribe: true,
        },
        io,
    );
    e.handle_command(
        now,
        Command::Join {
            conn: b,
            claims: claims("b"),
            tx: tx_b,
            auto_subscribe: true,
        },
        io,
    );
    let mut ufrags: Vec<String> = Vec::new();
    let mut resources: Vec<String> = Vec::new();
    let mut offer_id = 0u64;
    for op in split(data, 0).take(64) {
        let Some((&kind, payload)) = op.split_first() else {
            continue;
        };
        let text = String::from_utf8_lossy(payload).into_owned();
        let from: SocketAddr = format!("10.0.0.{}:5000", 2 + kind % 4).parse().unwrap();
        match kind % 10 {
            0 => match serde_json::from_str::<ClientMsg>(&text) {
                Ok(msg) => e.handle_command(now, Command::Client { conn: a, msg }, io),
                Err(_) => continue,
            },
            1 => {
                let tracks = vec![
                    PublishTrack {
                        mid: "0".into(),
                        source: Source::Microphone,
                        name: None,
                    },
                    PublishTrack {
                        mid: "1".into(),
                        source: Source::Camera,
                        name: None,
                    },
                ];
                e.handle_command(
                    now,
                    Command::Client {
                        conn: a,
                        msg: ClientMsg::Offer { sdp: text, tracks },
                    },
                    io,
                );
            }
            2 => {
                let msg = ClientMsg::Answer {
                    sdp: text,
                    offer_id,
                };
                e.handle_command(now, Command::Client { conn: a, msg }, io);
            }
            3 => {
                let pc = if kind & 0x80 != 0 {
                    PcKind::Subscriber
                } else {
                    PcKind::Publisher
                };
                e.handle_command(
                    now,
                    Command::Client {
                        conn: a,
                        msg: ClientMsg::Trickle {
                            pc,
                            candidate: text,
                        },
                    },
                    io,
                );
            }
            4 => {
                let (reply, mut rx) = oneshot::channel();
                let kind = if kind & 0x80 != 0 {
                    HttpKind::Whep { target: None }
                } else {
                    HttpKind::Whip
                };
                e.handle_command(
                    now,
                    Command::HttpOffer {
                        claims: claims("w"),
                        kind,
                        offer: text,
                        reply,
                    },
                    io,
                );
                if let Ok(Ok(created)) = rx.try_recv() {
                    ufrags.extend(ufrag(&created.answer));
                    resources.push(created.resource);
                }
            }
            5 => {
                let Ok(frag) = SdpFrag::parse(&text) else {
                    continue;
                };
                let resource = resources.last().cloned().unwrap_or_default();
                let if_match = (kind & 0x80 != 0).then(|| "*".to_string());
                let (reply, mut rx) = oneshot::channel();
                e.handle_command(
                    now,
                    Command::HttpPatch {
                        resource,
                        identity: "w".into(),
                        if_match,
                        frag,
                        reply,
                    },
                    io,
                );
                if let Ok(Ok(sfu::engine::PatchOutcome::Restarted { frag, .. })) = rx.try_recv() {
                    ufrags.extend(ufrag(&frag));
                }
            }
            6 => {
                e.handle_datagram(now, Protocol::Udp, from, server(), payload, io);
            }
            7 => {
                // A binding request to one of the server's ICE sessions, then whatever.
                let Some(u) = ufrags.get(kind as usize % ufrags.len().max(1)) else {
                    continue;
                };
                let d = binding(format!("{u}:c").as_bytes(), payload);
                e.handle_datagram(now, Protocol::Udp, from, server(), &d, io);
            }
            8 => {
                now += Duration::from_millis(payload.first().copied().unwrap_or(1) as u64 * 20);
                e.handle_timeout(now, io);
            }
            _ => {
                let msg = ClientMsg::IceRestart;
                e.handle_command(now, Command::Client { conn: a, msg }, io);
            }
        }
        while let Ok(m) = rx_a.try_recv() {
            match m {
                ServerMsg::Answer { sdp } => ufrags.extend(ufrag(&sdp)),
                ServerMsg::Offer {
                    sdp, offer_id: id, ..
                } => {
                    ufrags.extend(ufrag(&sdp));
                    offer_id = id;
                }
                _ => {}
            }
        }
        while rx_b.try_recv().is_ok() {}
        if e.poll_timeout() <= now {
            e.handle_timeout(now, io);
        }
    }
    // The bystander is still served.
    e.handle_command(
        now,
        Command::Client {
            conn: b,
            msg: ClientMsg::Ping,
        },
        io,
    );
    let mut pong = false;
    while let Ok(m) = rx_b.try_recv() {
        pong |= matches!(m, ServerMsg::Pong);
    }
    assert!(pong, "the bystander got no pong");
    e.counters.peer_panics
}
