//! The media engine: every room, participant and peer connection of one media worker,
//! driven from outside by three inputs - datagrams, signalling commands and time - and
//! writing datagrams through [`Io`]. No sockets, threads or async inside, so tests drive
//! it on a virtual clock.
//!
//! str0m's contract is kept strictly: every mutation of an `Rtc` is followed at once by
//! [`Engine::drain`] until `Timeout`; events drained are queued and handled after, so
//! handling one never nests inside another peer's drain.

mod bounds;
mod http;
mod ids;
mod liveness;
mod media;
mod negotiate;
mod session;
mod state;
mod stun;

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::cmp::Reverse;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use slab::Slab;
use str0m::config::DtlsCert;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, RtcError};

pub use http::{HttpCreated, HttpError, HttpKind, PatchOutcome, Reply, SdpFrag};
pub use ids::{ConnId, PartKey, PeerKey};
pub use state::SignalTx;
pub use stun::{is_stun, local_ufrag};

/// The engine's parsers of network input, for the fuzz targets (`fuzz/`) and property
/// tests; not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::bounds::{MAX_MLINES, MAX_SDP_CANDIDATES, check_sdp, client_text};
    pub use super::stun::local_ufrag;
}

use state::{Participant, Peer, Room, Sub, Track};

use crate::metrics::{Counters, LeaveReason, Metrics};
use crate::proto::{ClientMsg, ServerMsg};

/// Writes datagrams for the engine.
pub trait Io {
    /// Sends `data` from our `source` address to `destination` over `proto`.
    /// Returns false if the datagram was dropped (full buffer, closed connection).
    fn transmit(&mut self, proto: Protocol, source: SocketAddr, destination: SocketAddr, data: &[u8]) -> bool;

    /// A peer of this engine now answers STUN for `ufrag` (the receive path routes STUN
    /// naming it here). Called before the ufrag is sent to the client in any SDP.
    fn ufrag_added(&mut self, _ufrag: &str) {}

    /// `ufrag` is no longer this engine's (its peer left or restarted ICE).
    fn ufrag_removed(&mut self, _ufrag: &str) {}

    /// Datagrams from `addr` are no longer for this engine: the peer that used it left,
    /// forgot it, or its ICE timed out.
    fn addr_forgotten(&mut self, _addr: SocketAddr) {}

    /// The empty room `room` is past its grace period. Returns false to keep it a while
    /// longer (a join for it may be on its way); true closes it.
    fn may_close_room(&mut self, _room: &str) -> bool {
        true
    }
}

/// Engine settings, resolved from [`crate::Config`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// UDP host candidate advertised to clients.
    pub udp_candidate: SocketAddr,
    /// Passive ICE-TCP candidate advertised to clients.
    pub tcp_candidate: Option<SocketAddr>,
    pub empty_room_grace: Duration,
    pub resume_window: Duration,
    pub keyframe_interval: Duration,
    pub max_participants: usize,
    /// Seed of the engine's randomness (participant, track and session ids, WHIP/WHEP
    /// resources, sequence number and timestamp starts), so a virtual-clock run is
    /// repeatable. `None`: seeded from the operating system, as in production. (The
    /// WebRTC stack's own randomness - SSRCs, ICE credentials, DTLS - is not covered.)
    pub seed: Option<u64>,
}

/// Signalling input for the engine.
#[derive(Debug)]
pub enum Command {
    /// A new session: the token was verified by the HTTP layer.
    Join { conn: ConnId, claims: common::Claims, tx: SignalTx, auto_subscribe: bool },
    /// A reconnected WebSocket taking over `session_id`.
    Resume { conn: ConnId, claims: common::Claims, tx: SignalTx, session_id: String },
    /// A message on an established session.
    Client { conn: ConnId, msg: ClientMsg },
    /// The WebSocket closed (or failed) without `leave`.
    Closed { conn: ConnId },
    /// `POST /whip/{room}` or `/whep/{room}`: the token was verified for the room.
    HttpOffer { claims: common::Claims, kind: HttpKind, offer: String, reply: Reply<HttpCreated> },
    /// `PATCH` on a WHIP/WHEP session by `identity`.
    HttpPatch { resource: String, identity: String, if_match: Option<String>, frag: SdpFrag, reply: Reply<PatchOutcome> },
    /// `DELETE` on a WHIP/WHEP session by `identity`.
    HttpDelete { resource: String, identity: String, reply: Reply<()> },
    /// The device session `sid` was revoked: its participants leave.
    Revoke { sid: String },
    /// Fault injection: the next input to `participant_id`'s `pc` connection panics
    /// inside the WebRTC stack's call (see [`Engine::inject_panic`]).
    #[cfg(feature = "fault-injection")]
    InjectPanic { participant_id: String, pc: crate::proto::PcKind },
}

pub struct Engine {
    cfg: EngineConfig,
    cert: DtlsCert,
    udp_candidate: Candidate,
    tcp_candidate: Option<Candidate>,
    rooms: HashMap<String, Room>,
    participants: Slab<Participant>,
    peers: Slab<Peer>,
    tracks: Slab<Track>,
    subs: Slab<Sub>,
    track_by_id: HashMap<String, state::TrackKey>,
    sessions: HashMap<String, PartKey>,
    conns: HashMap<ConnId, PartKey>,
    /// WHIP/WHEP sessions by resource id.
    resources: HashMap<String, PartKey>,
    by_ufrag: HashMap<String, PeerKey>,
    by_addr: HashMap<SocketAddr, PeerKey>,
    timers: BinaryHeap<Reverse<(Instant, PeerKey, u64)>>,
    queue: VecDeque<(PeerKey, u64, Event)>,
    scratch_subs: Vec<state::SubKey>,
    next_uid: u64,
    next_tick: Instant,
    next_second: Instant,
    pub counters: Counters,
    metrics: Option<Metrics>,
    latency: Option<prometheus::local::LocalHistogram>,
    forwarded_in_input: u64,
    /// Participants whose subscriber connection needs an offer.
    pending_reneg: Vec<PartKey>,
    /// Tracks whose layers started or stopped.
    layers_changed: Vec<state::TrackKey>,
    /// WHEP sessions with a slot that may now get a track.
    whep_refill: Vec<PartKey>,
    /// Some peer failed since the last sweep.
    any_failed: bool,
    started: Instant,
    /// The time of the input being handled.
    now: Instant,
    /// The peer and source address of the datagram being handled: events it produces
    /// are authenticated traffic from that address.
    input_from: Option<(PeerKey, SocketAddr)>,
    /// The object counts last added to the shared gauges.
    reported: EngineStats,
    /// Every random choice of the engine (see [`EngineConfig::seed`]).
    rng: rand::rngs::StdRng,
}

const TICK: Duration = Duration::from_millis(200);
/// Packets kept for retransmission per forwarded video stream.
const SEND_BUFFER_VIDEO: usize = 512;

impl Engine {
    pub fn new(cfg: EngineConfig, metrics: Option<Metrics>, now: Instant) -> Result<Engine, String> {
        let provider = str0m::crypto::from_feature_flags();
        let cert = provider
            .dtls_provider
            .generate_certificate()
            .ok_or("the crypto provider could not make a DTLS certificate")?;
        let _ = std::panic::catch_unwind(|| provider.install_process_default());
        let udp_candidate = Candidate::host(cfg.udp_candidate, "udp").map_err(|e| format!("udp candidate: {e}"))?;
        let tcp_candidate = match cfg.tcp_candidate {
            Some(a) => Some(
                Candidate::builder()
                    .tcp()
                    .host(a)
                    .tcptype(str0m::net::TcpType::Passive)
                    .build()
                    .map_err(|e| format!("tcp candidate: {e}"))?,
            ),
            None => None,
        };
        let latency = metrics.as_ref().map(|m| m.local_latency());
        let rng = match cfg.seed {
            Some(s) => rand::rngs::StdRng::seed_from_u64(s),
            None => rand::rngs::StdRng::from_os_rng(),
        };
        Ok(Engine {
            rng,
            cfg,
            cert,
            udp_candidate,
            tcp_candidate,
            rooms: HashMap::new(),
            participants: Slab::new(),
            peers: Slab::new(),
            tracks: Slab::new(),
            subs: Slab::new(),
            track_by_id: HashMap::new(),
            sessions: HashMap::new(),
            conns: HashMap::new(),
            resources: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            timers: BinaryHeap::new(),
            queue: VecDeque::new(),
            scratch_subs: Vec::new(),
            next_uid: 1,
            next_tick: now + TICK,
            next_second: now + Duration::from_secs(1),
            counters: Counters::default(),
            metrics,
            latency,
            forwarded_in_input: 0,
            pending_reneg: Vec::new(),
            layers_changed: Vec::new(),
            whep_refill: Vec::new(),
            any_failed: false,
            started: now,
            now,
            input_from: None,
            reported: EngineStats::default(),
        })
    }

    /// When the engine next needs [`Engine::handle_timeout`].
    pub fn poll_timeout(&mut self) -> Instant {
        while let Some(Reverse((t, pk, uid))) = self.timers.peek().copied() {
            let valid = self.peers.get(pk).is_some_and(|p| p.uid == uid && p.next_timeout == Some(t));
            if valid {
                return t.min(self.next_tick);
            }
            self.timers.pop();
        }
        self.next_tick
    }

    /// Drives time forward.
    pub fn handle_timeout(&mut self, now: Instant, io: &mut dyn Io) {
        self.now = now;
        while let Some(Reverse((t, pk, uid))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let valid = self.peers.get(pk).is_some_and(|p| p.uid == uid && p.next_timeout == Some(t));
            if valid {
                self.peer_input(pk, Input::Timeout(now));
                self.drain(pk, io);
            }
        }
        self.process(now, io);
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            self.tick(now, io);
            if now >= self.next_second {
                self.next_second = now + Duration::from_secs(1);
                self.second(now, io);
            }
            self.process(now, io);
        }
    }

    /// A datagram arrived on one of the media sockets. Returns true if it was forwarded
    /// to someone (the caller times the forwarding with [`Engine::record_latency`] once
    /// its copies are handed to the socket).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
        io: &mut dyn Io,
    ) -> bool {
        self.now = now;
        self.counters.packets_in += 1;
        self.counters.bytes_in += data.len() as u64;
        let pk = if stun::is_stun(data) {
            // STUN is routed by the ufrag it names, and teaches us the client's address.
            let Some(pk) = stun::local_ufrag(data).and_then(|u| self.by_ufrag.get(u).copied()) else {
                self.counters.drop_unknown_source += 1;
                return false;
            };
            if !self.note_stun(now, pk, proto, source, destination, data, io) {
                return false;
            }
            pk
        } else {
            let Some(&pk) = self.by_addr.get(&source) else {
                self.counters.drop_unknown_source += 1;
                return false;
            };
            pk
        };
        let Ok(recv) = Receive::new(proto, source, destination, data) else {
            self.counters.drop_malformed += 1;
            return false;
        };
        self.forwarded_in_input = 0;
        self.input_from = Some((pk, source));
        self.peer_input(pk, Input::Receive(now, recv));
        self.drain(pk, io);
        self.process(now, io);
        self.input_from = None;
        self.forwarded_in_input > 0
    }

    /// Observes the receive-to-send time of a forwarded datagram received at `received`.
    pub fn record_latency(&self, received: Instant) {
        if let Some(h) = &self.latency {
            h.observe(received.elapsed().as_secs_f64());
        }
    }

    /// A signalling command.
    pub fn handle_command(&mut self, now: Instant, cmd: Command, io: &mut dyn Io) {
        self.now = now;
        match cmd {
            Command::Join { conn, claims, tx, auto_subscribe } => self.join(now, conn, claims, tx, auto_subscribe, io),
            Command::Resume { conn, claims, tx, session_id } => self.resume(conn, claims, tx, &session_id),
            Command::Client { conn, msg } => {
                if let Some(&pk) = self.conns.get(&conn) {
                    match (&self.participants[pk].link, msg) {
                        (state::Link::Ws { .. }, msg) => self.client_msg(now, pk, msg, io),
                        // A detached WebSocket's `leave` still counts; nothing else does.
                        (_, ClientMsg::Leave) => self.remove_participant(now, pk, LeaveReason::Left, false, io),
                        _ => {}
                    }
                }
            }
            Command::Closed { conn } => self.conn_closed(now, conn),
            Command::HttpOffer { claims, kind, offer, reply } => {
                let res = self.http_offer(now, claims, kind, &offer, io);
                let _ = reply.send(res);
            }
            Command::HttpPatch { resource, identity, if_match, frag, reply } => {
                let res = self.http_patch(&resource, &identity, if_match.as_deref(), &frag, io);
                let _ = reply.send(res);
            }
            Command::HttpDelete { resource, identity, reply } => {
                let res = self.http_delete(now, &resource, &identity, io);
                let _ = reply.send(res);
            }
            #[cfg(feature = "fault-injection")]
            Command::InjectPanic { participant_id, pc } => {
                self.inject_panic(&participant_id, pc);
            }
            Command::Revoke { sid } => {
                let gone: Vec<PartKey> = self
                    .participants
                    .iter()
                    .filter(|(_, p)| p.sid.as_deref() == Some(sid.as_str()))
                    .map(|(k, _)| k)
                    .collect();
                for pk in gone {
                    self.remove_participant(now, pk, LeaveReason::Revoked, true, io);
                }
            }
        }
        self.process(now, io);
    }

    /// Feeds one input to a peer; a panic inside str0m fails only that peer.
    fn peer_input(&mut self, pk: PeerKey, input: Input) {
        let Some(peer) = self.peers.get_mut(pk) else { return };
        if peer.failed {
            return;
        }
        match catch_unwind(AssertUnwindSafe(|| {
            #[cfg(feature = "fault-injection")]
            if std::mem::take(&mut peer.inject_panic) {
                panic!("injected fault: WebRTC stack panic");
            }
            peer.rtc.handle_input(input)
        })) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _s = self.participants.get(peer.part).map(|p| p.span.enter());
                tracing::debug!(peer = pk, error = %common::pii::scrub(&e.to_string()), "input refused");
                self.counters.drop_malformed += 1;
            }
            Err(_) => {
                let _s = self.participants.get(peer.part).map(|p| p.span.enter());
                tracing::error!(peer = pk, "WebRTC stack panicked on input; closing this peer");
                self.counters.peer_panics += 1;
                peer.failed = true;
                self.any_failed = true;
            }
        }
    }

    /// Drains a peer's output until `Timeout`: datagrams go out now, events are queued.
    fn drain(&mut self, pk: PeerKey, io: &mut dyn Io) {
        let Some(peer) = self.peers.get_mut(pk) else { return };
        if peer.failed {
            return;
        }
        let uid = peer.uid;
        let queue = &mut self.queue;
        let counters = &mut self.counters;
        let res = catch_unwind(AssertUnwindSafe(|| {
            loop {
                match peer.rtc.poll_output() {
                    Ok(Output::Timeout(t)) => return Ok(t),
                    Ok(Output::Transmit(t)) => {
                        counters.packets_out += 1;
                        counters.bytes_out += t.contents.len() as u64;
                        if !io.transmit(t.proto, t.source, t.destination, &t.contents) {
                            counters.drop_send_failed += 1;
                        }
                    }
                    Ok(Output::Event(e)) => queue.push_back((pk, uid, e)),
                    Err(e) => return Err(e),
                }
            }
        }));
        match res {
            Ok(Ok(t)) => {
                if peer.next_timeout != Some(t) {
                    peer.next_timeout = Some(t);
                    self.timers.push(Reverse((t, pk, uid)));
                }
            }
            Ok(Err(e)) => {
                let e: RtcError = e;
                let _s = self.participants.get(peer.part).map(|p| p.span.enter());
                tracing::info!(peer = pk, error = %common::pii::scrub(&e.to_string()), "peer connection failed");
                peer.failed = true;
                self.any_failed = true;
            }
            Err(_) => {
                let _s = self.participants.get(peer.part).map(|p| p.span.enter());
                tracing::error!(peer = pk, "WebRTC stack panicked; closing this peer");
                self.counters.peer_panics += 1;
                peer.failed = true;
                self.any_failed = true;
            }
        }
    }

    /// Handles queued events until none are left.
    fn process(&mut self, now: Instant, io: &mut dyn Io) {
        loop {
            while let Some((pk, uid, ev)) = self.queue.pop_front() {
                if self.peers.get(pk).is_none_or(|p| p.uid != uid) {
                    continue;
                }
                self.on_event(now, pk, ev, io);
            }
            if self.pending_reneg.is_empty() && self.layers_changed.is_empty() && self.whep_refill.is_empty() {
                break;
            }
            self.flush_pending(now, io);
        }
        if std::mem::take(&mut self.any_failed) {
            // The participant of a failed peer leaves; the others are not affected.
            let failed: Vec<PeerKey> = self.peers.iter().filter(|(_, p)| p.failed).map(|(k, _)| k).collect();
            for pk in failed {
                if let Some(peer) = self.peers.get(pk) {
                    let part = peer.part;
                    self.remove_participant(now, part, LeaveReason::MediaFailed, true, io);
                }
            }
            // Events the removal produced for the remaining peers.
            self.process(now, io);
        }
    }

    /// Marks a peer failed, saying why under its participant's span; its participant
    /// is removed at the end of the current turn. `panicked`: str0m panicked.
    pub(super) fn fail_peer(&mut self, pk: PeerKey, why: &str, panicked: bool) {
        let Some(peer) = self.peers.get_mut(pk) else { return };
        peer.failed = true;
        self.any_failed = true;
        let _s = self.participants.get(peer.part).map(|p| p.span.enter());
        if panicked {
            self.counters.peer_panics += 1;
            tracing::error!(peer = pk, pc = %peer.kind, "WebRTC stack panicked {why}; closing this peer");
        } else {
            tracing::info!(peer = pk, pc = %peer.kind, "peer connection ended: {why}");
        }
    }

    fn new_peer(&mut self, now: Instant, part: PartKey, kind: crate::proto::PcKind, io: &mut dyn Io) -> PeerKey {
        let mut b = str0m::Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_dtls_cert(self.cert.clone())
            .set_stats_interval(Some(Duration::from_secs(2)));
        if kind == crate::proto::PcKind::Subscriber {
            b = b
                .enable_bwe(Some(str0m::bwe::Bitrate::kbps(1_500)))
                // NACK history per forwarded video stream: 512 packets is about 2 s at
                // 2.5 Mbit/s, ten round trips of repair. str0m's default of 1,000 kept
                // ~1.2 MB per video subscription once full.
                .set_send_buffer_video(SEND_BUFFER_VIDEO);
        }
        let mut rtc = b.build(now);
        rtc.add_local_candidate(self.udp_candidate.clone());
        if let Some(c) = &self.tcp_candidate {
            rtc.add_local_candidate(c.clone());
        }
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        io.ufrag_added(&ufrag);
        let uid = self.next_uid;
        self.next_uid += 1;
        let pk = self.peers.insert(Peer {
            uid,
            rtc: Box::new(rtc),
            part,
            kind,
            ufrag: ufrag.clone(),
            addrs: Vec::new(),
            live: liveness::Liveness::new(),
            ice_down_since: None,
            next_timeout: None,
            failed: false,
            #[cfg(feature = "fault-injection")]
            inject_panic: false,
            ssrc_map: HashMap::new(),
            mid_track: HashMap::new(),
            mid_sub: HashMap::new(),
            egress_nacks: HashMap::new(),
        });
        self.by_ufrag.insert(ufrag, pk);
        pk
    }

    /// Re-reads a peer's local ICE ufrag after negotiation (ICE restart changes it).
    fn refresh_ufrag(&mut self, pk: PeerKey, io: &mut dyn Io) {
        let Some(peer) = self.peers.get_mut(pk) else { return };
        let ufrag = peer.rtc.direct_api().local_ice_credentials().ufrag;
        if ufrag != peer.ufrag {
            io.ufrag_added(&ufrag);
            io.ufrag_removed(&peer.ufrag);
            self.by_ufrag.remove(&peer.ufrag);
            self.by_ufrag.insert(ufrag.clone(), pk);
            peer.ufrag = ufrag;
            peer.live.restarted();
        }
    }

    fn remove_peer(&mut self, pk: PeerKey, io: &mut dyn Io) {
        if let Some(peer) = self.peers.get_mut(pk) {
            if !peer.failed {
                let _ = catch_unwind(AssertUnwindSafe(|| peer.rtc.disconnect()));
                self.drain(pk, io);
            }
        }
        if let Some(peer) = self.peers.try_remove(pk) {
            if self.by_ufrag.get(&peer.ufrag) == Some(&pk) {
                self.by_ufrag.remove(&peer.ufrag);
                io.ufrag_removed(&peer.ufrag);
            }
            for a in &peer.addrs {
                if self.by_addr.get(a) == Some(&pk) {
                    self.by_addr.remove(a);
                    io.addr_forgotten(*a);
                }
            }
        }
    }

    /// Sends a signalling message to one participant. A client that does not read its
    /// messages loses its WebSocket (it may resume); media is not affected.
    fn send(&mut self, pk: PartKey, msg: ServerMsg) {
        let Some(p) = self.participants.get_mut(pk) else { return };
        let state::Link::Ws { tx, .. } = &p.link else { return };
        match tx.try_send(msg) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                self.counters.signal_drops += 1;
                self.detach(pk, "signalling client too slow; dropping its WebSocket");
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                self.detach(pk, "signalling connection gone");
            }
        }
    }

    /// Sends to everyone in `room` but `except`.
    fn broadcast(&mut self, room: &str, except: Option<PartKey>, msg: &ServerMsg) {
        let Some(r) = self.rooms.get(room) else { return };
        let members: Vec<PartKey> = r.participants.iter().copied().filter(|&k| Some(k) != except).collect();
        for k in members {
            self.send(k, msg.clone());
        }
    }

    fn error(&mut self, pk: PartKey, code: crate::proto::ErrorCode, message: impl Into<String>) {
        self.send(pk, ServerMsg::Error { code, message: message.into() });
    }

    /// Fault injection: the next input to `participant_id`'s `pc` connection panics
    /// inside the WebRTC stack's call, as a str0m bug would. Returns false if there is
    /// no such connection.
    #[cfg(feature = "fault-injection")]
    pub fn inject_panic(&mut self, participant_id: &str, pc: crate::proto::PcKind) -> bool {
        let Some((_, p)) = self.participants.iter().find(|(_, p)| p.id == participant_id) else { return false };
        let peer = match pc {
            crate::proto::PcKind::Publisher => p.publisher,
            crate::proto::PcKind::Subscriber => p.subscriber,
        };
        match peer.and_then(|k| self.peers.get_mut(k)) {
            Some(peer) => {
                peer.inject_panic = true;
                true
            }
            None => false,
        }
    }

    /// Whether the engine has the room `name` (open, or empty within its grace).
    pub fn has_room(&self, name: &str) -> bool {
        self.rooms.contains_key(name)
    }

    /// Numbers for tests and the worker's gauges.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            rooms: self.rooms.len(),
            participants: self.participants.len(),
            peers: self.peers.len(),
            tracks: self.tracks.len(),
            subscriptions: self.subs.len(),
        }
    }

    fn second(&mut self, now: Instant, io: &mut dyn Io) {
        self.media_second(now, io);
        self.sessions_second(now, io);
        if let Some(m) = &self.metrics {
            // Several engines (one per media worker) add to the same gauges: each moves
            // them by its own change since it last reported.
            let now_stats = self.stats();
            let was = std::mem::replace(&mut self.reported, now_stats);
            m.rooms.add(now_stats.rooms as i64 - was.rooms as i64);
            m.participants.add(now_stats.participants as i64 - was.participants as i64);
            m.peers.add(now_stats.peers as i64 - was.peers as i64);
            m.tracks.add(now_stats.tracks as i64 - was.tracks as i64);
            m.subscriptions.add(now_stats.subscriptions as i64 - was.subscriptions as i64);
            m.flush(&mut self.counters);
            if let Some(h) = &self.latency {
                h.flush();
            }
        }
    }
}

/// Object counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub rooms: usize,
    pub participants: usize,
    pub peers: usize,
    pub tracks: usize,
    pub subscriptions: usize,
}
