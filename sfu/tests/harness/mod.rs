//! A call on a virtual clock: str0m clients (not ice-lite, RTP mode) talk to the
//! engine over the seeded network model. Shared by tests and benches.

#![allow(dead_code)]


use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::netsim::{Link, Net};
use sfu::engine::{Command, ConnId, Engine, EngineConfig, Io};
use sfu::proto::{ClientMsg, PublishTrack, ServerMsg, Source};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::sync::mpsc;

pub const SERVER: &str = "10.0.0.1:7882";

pub fn server() -> SocketAddr {
    SERVER.parse().unwrap()
}

pub struct NetIo<'a> {
    pub net: &'a mut Net,
    pub now: Instant,
}

impl Io for NetIo<'_> {
    fn transmit(&mut self, _p: Protocol, _s: SocketAddr, d: SocketAddr, data: &[u8]) -> bool {
        self.net.send(self.now, server(), d, data);
        true
    }
}

/// What a publisher puts in a payload: who, which layer, which frame; the rest is a
/// pattern derived from those, so the receiver can check every byte.
pub fn payload(sender: u8, layer: u8, index: u32, key: bool, video: bool) -> Vec<u8> {
    let mut p = Vec::with_capacity(300);
    if video {
        p.push(0x10); // VP8 descriptor: S=1, PID=0
        p.push(if key { 0x00 } else { 0x01 }); // frame tag, P bit
    }
    p.push(sender);
    p.push(layer);
    p.extend_from_slice(&index.to_be_bytes());
    let len = if video { 200 + (index % 50) as usize } else { 60 };
    for i in 0..len {
        p.push((i as u32 ^ index ^ (sender as u32 * 31)) as u8);
    }
    p
}

/// Checks a payload against what its sender would have made; returns (sender, layer,
/// index, key).
pub fn check(p: &[u8], video: bool) -> Option<(u8, u8, u32, bool)> {
    let off = if video { 2 } else { 0 };
    let sender = *p.get(off)?;
    let layer = *p.get(off + 1)?;
    let index = u32::from_be_bytes(p.get(off + 2..off + 6)?.try_into().ok()?);
    if !video {
        return (payload(sender, layer, index, false, false) == p).then_some((sender, layer, index, false));
    }
    let codec = match p[1] {
        0x88 => Codec::H264,
        0x99 => Codec::Vp9,
        0xa1 => Codec::Av1,
        _ => Codec::Vp8,
    };
    [false, true]
        .into_iter()
        .find(|&key| payload_video(codec, sender, layer, index, key) == p)
        .map(|key| (sender, layer, index, key))
}

/// The same record as [`payload`] behind the codec's payload header, keyframes marked
/// the way the codec marks them (the SFU's keyframe detection must recognise them).
pub fn payload_video(codec: Codec, sender: u8, layer: u8, index: u32, key: bool) -> Vec<u8> {
    let mut p = payload(sender, layer, index, key, true);
    match codec {
        Codec::H264 => return payload_h264(sender, layer, index, key),
        // VP9 descriptor: B and E set, P (inter-picture predicted) unless a keyframe.
        Codec::Vp9 => (p[0], p[1]) = (if key { 0x0c } else { 0x4c }, 0x99),
        // AV1 aggregation header: W=1; N (new coded video sequence) on keyframes.
        Codec::Av1 => (p[0], p[1]) = (if key { 0x18 } else { 0x10 }, 0xa1),
        _ => {}
    }
    p
}

/// The same record as [`payload`] in an H.264 single NAL unit: IDR slice (type 5) for
/// keyframes, non-IDR slice (type 1) otherwise.
pub fn payload_h264(sender: u8, layer: u8, index: u32, key: bool) -> Vec<u8> {
    let mut p = payload(sender, layer, index, key, true);
    p[0] = if key { 0x65 } else { 0x41 };
    p[1] = 0x88;
    p
}

#[derive(Default, Debug, Clone)]
pub struct Received {
    /// When the first packet arrived.
    pub first_at: Option<Instant>,
    /// (out seq, sender, layer, index, key, rtp ts) in arrival order.
    pub packets: Vec<(u64, u8, u8, u32, bool, u32)>,
    pub bad: u64,
}

pub struct Client {
    pub id: u8,
    pub conn: ConnId,
    pub rx: mpsc::Receiver<ServerMsg>,
    pub pid: String,
    pub pub_addr: SocketAddr,
    pub sub_addr: SocketAddr,
    pub publisher: Option<Rtc>,
    pub pending: Option<SdpPendingOffer>,
    pub subscriber: Option<Rtc>,
    pub audio_mid: Option<Mid>,
    pub video_mid: Option<Mid>,
    pub simulcast: bool,
    /// Video codec this client publishes (VP8, H.264, VP9 or AV1).
    pub codec: Codec,
    /// Subscriber mid -> track id, from offers.
    pub mid_track: HashMap<String, String>,
    pub track_video: HashMap<String, bool>,
    pub received: HashMap<String, Received>,
    pub keyframe_requests: u64,
    pub force_key: bool,
    pub msgs: Vec<ServerMsg>,
    /// The server's ICE passwords from its SDP, publisher and subscriber connection.
    pub pub_server_pwd: Option<String>,
    pub sub_server_pwd: Option<String>,
    /// When the subscriber connection's DTLS completed.
    pub sub_connected_at: Option<Instant>,
    pub next_frame: u32,
    pub next_audio: u32,
}

impl Client {
    /// A client with nothing negotiated yet.
    pub fn new(id: u8, conn: ConnId, rx: mpsc::Receiver<ServerMsg>, pub_addr: SocketAddr, sub_addr: SocketAddr) -> Client {
        Client {
            id,
            conn,
            rx,
            pid: String::new(),
            pub_addr,
            sub_addr,
            publisher: None,
            pending: None,
            subscriber: None,
            audio_mid: None,
            video_mid: None,
            simulcast: false,
            codec: Codec::Vp8,
            mid_track: HashMap::new(),
            track_video: HashMap::new(),
            received: HashMap::new(),
            keyframe_requests: 0,
            force_key: false,
            msgs: Vec::new(),
            pub_server_pwd: None,
            sub_server_pwd: None,
            sub_connected_at: None,
            next_frame: 0,
            next_audio: 0,
        }
    }

    pub fn drain(rtc: &mut Rtc, now: Instant, net: &mut Net, events: &mut Vec<Event>) {
        loop {
            match rtc.poll_output().expect("client rtc works") {
                Output::Timeout(_) => break,
                Output::Transmit(t) => net.send(now, t.source, t.destination, &t.contents),
                Output::Event(e) => events.push(e),
            }
        }
    }
}

/// The `a=ice-pwd` of an SDP.
pub fn ice_pwd(sdp: &str) -> Option<String> {
    sdp.lines().find_map(|l| l.trim().strip_prefix("a=ice-pwd:")).map(str::to_string)
}

/// A binding success response to `request` from `from`, signed with `pwd`.
pub fn stun_reply(request: &[u8], from: SocketAddr, pwd: &str) -> Option<Vec<u8>> {
    use hmac::{Hmac, Mac};
    use str0m::ice::StunMessage;
    let req = StunMessage::parse(request).ok()?;
    if !req.is_binding_request() {
        return None;
    }
    let reply = StunMessage::binding_reply(req.trans_id(), from);
    let mut buf = vec![0u8; 1500];
    let hmac = |key: &[u8], parts: &[&[u8]]| -> [u8; 20] {
        let mut m = Hmac::<sha1::Sha1>::new_from_slice(key).expect("any key length");
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    };
    let n = reply.to_bytes(Some(pwd.as_bytes()), &mut buf, hmac).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// An access token's claims for room `r`.
pub fn claims(identity: &str, grants: &str) -> common::Claims {
    common::Claims {
        sub: identity.into(),
        name: None,
        room: Some("r".into()),
        grants: common::Grants::parse_list(grants).unwrap(),
        sid: None,
        iat: 0,
        exp: u64::MAX,
    }
}

pub fn client_rtc(now: Instant, addr: SocketAddr) -> Rtc {
    let mut rtc = Rtc::builder().set_rtp_mode(true).build(now);
    rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    rtc
}

pub struct World {
    pub now: Instant,
    pub net: Net,
    pub engine: Engine,
    pub clients: Vec<Client>,
    /// Datagrams from or to these addresses are lost (a connection that never starts).
    pub blackhole: Vec<SocketAddr>,
    /// Binding requests from these addresses never reach the server; the harness answers
    /// them itself with the server's password, so the client stays happy while the
    /// server sees media and no STUN at all - a client that skips consent checks.
    pub no_stun_from: Vec<SocketAddr>,
}

impl World {
    pub fn new(seed: u64, link: Link) -> World {
        let now = Instant::now();
        let cfg = EngineConfig {
            udp_candidate: server(),
            tcp_candidate: None,
            empty_room_grace: Duration::from_secs(5),
            resume_window: Duration::from_secs(10),
            keyframe_interval: Duration::from_millis(500),
            max_participants: 500,
            seed: Some(seed),
        };
        World {
            now,
            net: Net::new(seed, link),
            engine: Engine::new(cfg, None, now).unwrap(),
            clients: Vec::new(),
            blackhole: Vec::new(),
            no_stun_from: Vec::new(),
        }
    }

    pub fn join(&mut self, identity: &str) -> usize {
        let i = self.clients.len();
        let (tx, rx) = mpsc::channel(1024);
        let conn = ConnId(i as u64 + 1);
        let claims = claims(identity, "publish,subscribe");
        let mut io = NetIo { net: &mut self.net, now: self.now };
        self.engine.handle_command(self.now, Command::Join { conn, claims, tx, auto_subscribe: true }, &mut io);
        let (pub_addr, sub_addr) = (format!("10.0.1.{}:5000", i + 1).parse().unwrap(), format!("10.0.1.{}:6000", i + 1).parse().unwrap());
        self.clients.push(Client::new(i as u8, conn, rx, pub_addr, sub_addr));
        self.pump();
        i
    }

    /// A WHIP publisher of a microphone (`POST /whip/r`): its offer goes in as the HTTP
    /// layer would send it, the answer comes back in the reply; no WebSocket. Returns its
    /// client index (its `rx` never receives: WHIP has no signalling channel).
    pub fn whip(&mut self, identity: &str) -> usize {
        let i = self.clients.len();
        let now = self.now;
        let addr: SocketAddr = format!("10.0.2.{}:5000", i + 1).parse().unwrap();
        let mut rtc = client_rtc(now, addr);
        let mut api = rtc.sdp_api();
        let a = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let (offer, pending) = api.apply().unwrap();
        let claims = claims(identity, "publish");
        let (reply, mut created) = tokio::sync::oneshot::channel();
        let mut io = NetIo { net: &mut self.net, now };
        let kind = sfu::engine::HttpKind::Whip;
        self.engine.handle_command(now, Command::HttpOffer { claims, kind, offer: offer.to_sdp_string(), reply }, &mut io);
        let created = created.try_recv().unwrap().expect("the WHIP offer is answered");
        rtc.sdp_api().accept_answer(pending, SdpAnswer::from_sdp_string(&created.answer).unwrap()).unwrap();
        let (_tx, rx) = mpsc::channel(1);
        let mut c = Client::new(i as u8, ConnId(u64::MAX - i as u64), rx, addr, format!("10.0.2.{}:6000", i + 1).parse().unwrap());
        c.pid = created.participant_id;
        c.pub_server_pwd = ice_pwd(&created.answer);
        c.publisher = Some(rtc);
        c.audio_mid = Some(a);
        self.clients.push(c);
        i
    }

    pub fn command(&mut self, i: usize, msg: ClientMsg) {
        let conn = self.clients[i].conn;
        let mut io = NetIo { net: &mut self.net, now: self.now };
        self.engine.handle_command(self.now, Command::Client { conn, msg }, &mut io);
    }

    pub fn publish(&mut self, i: usize, simulcast: bool) {
        self.publish_codec(i, simulcast, Codec::Vp8)
    }

    /// Publishes a microphone track only.
    pub fn publish_audio(&mut self, i: usize) {
        let now = self.now;
        let c = &mut self.clients[i];
        let mut rtc = client_rtc(now, c.pub_addr);
        let mut api = rtc.sdp_api();
        let a = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let (offer, pending) = api.apply().unwrap();
        c.audio_mid = Some(a);
        c.pending = Some(pending);
        c.publisher = Some(rtc);
        let tracks = vec![PublishTrack { mid: a.to_string(), source: Source::Microphone, name: None }];
        self.command(i, ClientMsg::Offer { sdp: offer.to_sdp_string(), tracks });
        self.pump();
    }

    /// Publishes audio and video, offering only `codec` (plus Opus) for video.
    pub fn publish_codec(&mut self, i: usize, simulcast: bool, codec: Codec) {
        let now = self.now;
        let c = &mut self.clients[i];
        let mut rtc = if codec != Codec::Vp8 {
            let b = Rtc::builder().set_rtp_mode(true).clear_codecs().enable_opus(true, false);
            let b = match codec {
                Codec::H264 => b.enable_h264(true),
                Codec::Vp9 => b.enable_vp9(true),
                Codec::Av1 => b.enable_av1(true),
                other => panic!("no publisher for {other:?}"),
            };
            let mut rtc = b.build(now);
            rtc.add_local_candidate(Candidate::host(c.pub_addr, "udp").unwrap());
            rtc
        } else {
            client_rtc(now, c.pub_addr)
        };
        c.codec = codec;
        let mut api = rtc.sdp_api();
        let a = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let sim = simulcast.then(|| {
            let mut s = Simulcast::new();
            for rid in ["q", "h", "f"] {
                s.add_send_layer(SimulcastLayer::new(rid));
            }
            s
        });
        let v = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, sim);
        let (offer, pending) = api.apply().unwrap();
        c.audio_mid = Some(a);
        c.video_mid = Some(v);
        c.simulcast = simulcast;
        c.pending = Some(pending);
        c.publisher = Some(rtc);
        let tracks = vec![
            PublishTrack { mid: a.to_string(), source: Source::Microphone, name: None },
            PublishTrack { mid: v.to_string(), source: Source::Camera, name: None },
        ];
        self.command(i, ClientMsg::Offer { sdp: offer.to_sdp_string(), tracks });
        self.pump();
    }

    /// Handles signalling both ways until nothing is left to do.
    pub fn pump(&mut self) {
        loop {
            let mut any = false;
            for i in 0..self.clients.len() {
                while let Ok(m) = self.clients[i].rx.try_recv() {
                    any = true;
                    self.on_msg(i, m);
                }
            }
            if !any {
                break;
            }
        }
    }

    pub fn on_msg(&mut self, i: usize, m: ServerMsg) {
        let now = self.now;
        let c = &mut self.clients[i];
        c.msgs.push(m.clone());
        match m {
            ServerMsg::Joined { participant, participants, .. } => {
                c.pid = participant.id;
                // Tracks published before this client joined.
                for t in participants.iter().flat_map(|p| &p.tracks) {
                    c.track_video.insert(t.id.clone(), t.kind == sfu::proto::TrackKind::Video);
                }
            }
            ServerMsg::Answer { sdp } => {
                c.pub_server_pwd = ice_pwd(&sdp);
                let rtc = c.publisher.as_mut().unwrap();
                rtc.sdp_api().accept_answer(c.pending.take().unwrap(), SdpAnswer::from_sdp_string(&sdp).unwrap()).unwrap();
                let mut ev = Vec::new();
                Client::drain(rtc, now, &mut self.net, &mut ev);
            }
            ServerMsg::Offer { sdp, offer_id, tracks } => {
                c.sub_server_pwd = ice_pwd(&sdp);
                let addr = c.sub_addr;
                let rtc = c.subscriber.get_or_insert_with(|| client_rtc(now, addr));
                let answer = rtc.sdp_api().accept_offer(SdpOffer::from_sdp_string(&sdp).unwrap()).unwrap();
                let mut ev = Vec::new();
                Client::drain(rtc, now, &mut self.net, &mut ev);
                for t in tracks {
                    c.mid_track.insert(t.mid, t.track_id);
                }
                self.command(i, ClientMsg::Answer { sdp: answer.to_sdp_string(), offer_id });
            }
            ServerMsg::TrackPublished { track } => {
                for c in self.clients.iter_mut() {
                    c.track_video.insert(track.id.clone(), track.kind == sfu::proto::TrackKind::Video);
                }
            }
            _ => {}
        }
    }

    pub fn pt(rtc: &Rtc, codec: Codec) -> Pt {
        rtc.codec_config().find(|p| p.spec().codec == codec).unwrap().pt()
    }

    /// Publishers send: audio every 20 ms, video (one packet per frame, every layer)
    /// every 33 ms, keyframe every 60 frames or when asked.
    pub fn send_media(&mut self, step: u64) {
        let now = self.now;
        for c in self.clients.iter_mut() {
            let Some(rtc) = c.publisher.as_mut() else { continue };
            if !rtc.is_connected() {
                continue;
            }
            let mut wrote = false;
            if step.is_multiple_of(20) {
                let pt = World::pt(rtc, Codec::Opus);
                let n = c.next_audio;
                c.next_audio += 1;
                let mid = c.audio_mid.unwrap();
                if let Some(tx) = rtc.direct_api().stream_tx_by_mid(mid, None) {
                    let p = payload(c.id, 0, n, false, false);
                    tx.write_rtp(RtpWrite::new(pt, (n as u64 + 1).into(), n * 960, now, p).marker(n == 0));
                    wrote = true;
                }
            }
            if let (true, Some(mid)) = (step.is_multiple_of(33), c.video_mid) {
                let pt = World::pt(rtc, c.codec);
                let n = c.next_frame;
                c.next_frame += 1;
                let key = n % 60 == 0 || std::mem::take(&mut c.force_key);
                let layers: Vec<Option<Rid>> =
                    if c.simulcast { vec![Some("q".into()), Some("h".into()), Some("f".into())] } else { vec![None] };
                for (l, rid) in layers.into_iter().enumerate() {
                    if let Some(tx) = rtc.direct_api().stream_tx_by_mid(mid, rid) {
                        let p = payload_video(c.codec, c.id, l as u8, n, key);
                        tx.write_rtp(
                            RtpWrite::new(pt, (n as u64 + 1).into(), n * 3000, now, p).marker(true).nackable(true),
                        );
                        wrote = true;
                    }
                    let mut ev = Vec::new();
                    Client::drain(rtc, now, &mut self.net, &mut ev);
                }
            }
            if wrote {
                let mut ev = Vec::new();
                Client::drain(rtc, now, &mut self.net, &mut ev);
            }
        }
    }

    /// Advances one millisecond: deliveries, timers, signalling, media.
    pub fn step(&mut self, step: u64, garbage: bool) {
        self.now += Duration::from_millis(1);
        let now = self.now;
        while let Some(d) = self.net.pop_due(now) {
            if self.blackhole.contains(&d.from) || self.blackhole.contains(&d.to) {
                continue;
            }
            // STUN starts with two zero bits and carries the magic cookie.
            let stun = d.data.len() >= 20 && d.data[0] < 2 && d.data[4..8] == [0x21, 0x12, 0xa4, 0x42];
            if stun && d.to == server() && self.no_stun_from.contains(&d.from) {
                if let Some(c) = self.clients.iter().find(|c| c.pub_addr == d.from || c.sub_addr == d.from) {
                    let pwd = if c.pub_addr == d.from { &c.pub_server_pwd } else { &c.sub_server_pwd };
                    if let Some(reply) = pwd.as_deref().and_then(|p| stun_reply(&d.data, d.from, p)) {
                        self.net.send(now, server(), d.from, &reply);
                    }
                }
                continue;
            }
            if d.to == server() {
                let mut io = NetIo { net: &mut self.net, now };
                self.engine.handle_datagram(now, Protocol::Udp, d.from, d.to, &d.data, &mut io);
                continue;
            }
            for c in self.clients.iter_mut() {
                let rtc = if d.to == c.pub_addr {
                    c.publisher.as_mut()
                } else if d.to == c.sub_addr {
                    c.subscriber.as_mut()
                } else {
                    None
                };
                if let Some(rtc) = rtc {
                    let r = Receive::new(Protocol::Udp, d.from, d.to, &d.data).unwrap();
                    rtc.handle_input(Input::Receive(now, r)).unwrap();
                    let mut ev = Vec::new();
                    Client::drain(rtc, now, &mut self.net, &mut ev);
                    let sub = d.to == c.sub_addr;
                    World::client_events(c, ev, now, sub);
                }
            }
        }
        if garbage && step.is_multiple_of(50) {
            // Garbage from a participant's own address and from strangers.
            let from = self.clients[0].pub_addr;
            let junk: Vec<u8> = (0..100u8).map(|x| x.wrapping_mul(step as u8)).collect();
            let mut io = NetIo { net: &mut self.net, now };
            self.engine.handle_datagram(now, Protocol::Udp, from, server(), &junk, &mut io);
            let mut rtp_like = vec![0x80, 0x60];
            rtp_like.extend_from_slice(&junk);
            self.engine.handle_datagram(now, Protocol::Udp, from, server(), &rtp_like, &mut io);
            self.engine.handle_datagram(now, Protocol::Udp, "10.9.9.9:1".parse().unwrap(), server(), &rtp_like, &mut io);
        }
        let mut io = NetIo { net: &mut self.net, now };
        if self.engine.poll_timeout() <= now {
            self.engine.handle_timeout(now, &mut io);
        }
        for c in self.clients.iter_mut() {
            for sub in [false, true] {
                let rtc = if sub { c.subscriber.as_mut() } else { c.publisher.as_mut() };
                let Some(rtc) = rtc else { continue };
                let mut ev = Vec::new();
                rtc.handle_input(Input::Timeout(now)).unwrap();
                Client::drain(rtc, now, &mut self.net, &mut ev);
                World::client_events(c, ev, now, sub);
            }
        }
        self.pump();
        self.send_media(step);
    }

    /// Handles a client's events; `sub`: they came from its subscriber connection.
    pub fn client_events(c: &mut Client, ev: Vec<Event>, now: Instant, sub: bool) {
        for e in ev {
            match e {
                Event::Connected if sub && c.sub_connected_at.is_none() => c.sub_connected_at = Some(now),
                Event::KeyframeRequest(_) => {
                    c.keyframe_requests += 1;
                    c.force_key = true;
                }
                Event::RtpPacket(p) => {
                    let Some(rtc) = c.subscriber.as_mut() else { continue };
                    let Some(mid) = rtc.direct_api().stream_rx(&p.header.ssrc).map(|s| s.mid()) else { continue };
                    let Some(track) = c.mid_track.get(&mid.to_string()).cloned() else { continue };
                    let video = c.track_video.get(&track).copied().unwrap_or(false);
                    let r = c.received.entry(track).or_default();
                    r.first_at.get_or_insert(now);
                    match check(&p.payload, video) {
                        Some((s, l, idx, key)) => r.packets.push((*p.seq_no, s, l, idx, key, p.header.timestamp)),
                        None => r.bad += 1,
                    }
                }
                _ => {}
            }
        }
    }

    pub fn run(&mut self, ms: u64, garbage: bool, mut at: impl FnMut(&mut World, u64)) {
        for s in 0..ms {
            at(self, s);
            self.step(s, garbage);
        }
    }
}

pub fn tracks_of(w: &World, i: usize) -> Vec<(String, bool)> {
    w.clients[i].track_video.iter().map(|(k, v)| (k.clone(), *v)).collect()
}


impl World {
    /// Makes `count` audio packets of publisher `i` (real SRTP, next in its sequence) and
    /// returns the datagrams it sends toward the server, without delivering them.
    pub fn capture_audio(&mut self, i: usize, count: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut side = Net::new(0, Link::clean());
        let c = &mut self.clients[i];
        let rtc = c.publisher.as_mut().expect("publisher");
        let pt = World::pt(rtc, Codec::Opus);
        let mid = c.audio_mid.expect("audio");
        for _ in 0..count {
            let n = c.next_audio;
            c.next_audio += 1;
            let p = payload(c.id, 0, n, false, false);
            if let Some(tx) = rtc.direct_api().stream_tx_by_mid(mid, None) {
                tx.write_rtp(RtpWrite::new(pt, (n as u64 + 1).into(), n * 960, self.now, p));
            }
            rtc.handle_input(Input::Timeout(self.now)).expect("client rtc works");
            let mut ev = Vec::new();
            Client::drain(rtc, self.now, &mut side, &mut ev);
        }
        let far = self.now + Duration::from_secs(3600);
        let mut out = Vec::with_capacity(count);
        while let Some(d) = side.pop_due(far) {
            if d.to == server() {
                out.push((d.from, d.data));
            }
        }
        out
    }
}
