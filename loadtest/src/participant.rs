//! One simulated participant: a `/rtc` WebSocket and two str0m peer connections
//! (publisher, subscriber), each on its own UDP socket, driven by one task.
//!
//! The task is sans-I/O glue: datagrams and WebSocket frames go into str0m, str0m's
//! transmits go out on the socket, its events are measured. Publishers write Opus and
//! VP8 packets on a 20 ms / frame-rate clock.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::config::DtlsCert;
use str0m::format::Codec;
use str0m::media::{
    Direction, KeyframeRequestKind, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer,
};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::time::sleep_until;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::availability::Availability;
use crate::depart::{self, Ws};
use crate::media::{OPUS_FRAME, OpusLoop, TRAILER_LEN, Trailer, Vp8Source, now_us, vp8_layers};
use crate::scenario::{Departure, Scenario, Speaking};
use crate::stats::{Collector, Delta, Final};
use crate::token::TokenSource;

/// What every participant of one run shares.
pub struct Shared {
    pub scenario: Scenario,
    pub collector: Arc<Collector>,
    pub tokens: TokenSource,
    pub opus: Arc<OpusLoop>,
    pub filler: Arc<[u8]>,
    pub local_ip: IpAddr,
    pub cert: DtlsCert,
    /// Start of the run: speaking turns are counted from it.
    pub epoch: Instant,
    /// Local UDP ports of every peer connection (kernel drop counts, `/proc/net/udp`).
    pub ports: parking_lot::Mutex<Vec<u16>>,
    /// The server's media address, learnt from its datagrams.
    pub server_media: std::sync::OnceLock<SocketAddr>,
    /// The server's resume window (seconds), from its `joined`.
    pub resume_window_secs: std::sync::OnceLock<u64>,
    /// Identity -> when that participant stopped sending (left, vanished, failed or
    /// stopped at the end): its tracks carry nothing after that.
    pub stopped: parking_lot::Mutex<HashMap<String, Instant>>,
    /// Identity -> when and how a churned participant was told to leave...
    pub departures: parking_lot::Mutex<HashMap<String, (Instant, Departure)>>,
    /// ...and identity -> when another participant first heard `participant_left`.
    pub left_seen: parking_lot::Mutex<HashMap<String, Instant>>,
    /// Turns true when participants that went `silent` may let go of their sockets
    /// (after the end check).
    pub release: tokio::sync::watch::Receiver<bool>,
}

/// Who this participant is.
#[derive(Debug, Clone)]
pub struct Spec {
    pub index: usize,
    pub room: String,
    /// The place in the plan (`pub-{room}-{slot}`, `sub-{room}-{n}`); churn puts a new
    /// participant with another identity in the seat of one that left.
    pub seat: String,
    pub identity: String,
    pub publish: bool,
    /// Position among the room's publishers (speaking turns).
    pub slot: usize,
    /// Tracks it should receive.
    pub expected_tracks: usize,
}

const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// A sender this late on its clock skips ahead instead of bursting.
const MAX_SEND_LAG: Duration = Duration::from_millis(200);

/// Runs one participant until `stop` turns true or `depart` says how to leave;
/// reports into the collector.
pub async fn run(
    spec: Spec,
    sh: Arc<Shared>,
    stop: tokio::sync::watch::Receiver<bool>,
    depart: tokio::sync::oneshot::Receiver<Departure>,
) {
    let collector = sh.collector.clone();
    collector.started();
    let role = if spec.publish {
        "publisher"
    } else {
        "subscriber"
    };
    let mut p = Participant::new(spec, sh.clone());
    let (r, held) = p.run(stop, depart).await;
    if let Err(e) = r {
        p.fin.failed = true;
        p.fin.dropped = p.fin.connected;
        let after = p.t0.elapsed().as_secs();
        collector.error(format!("{role}: {e:#} (after {after} s)"));
    }
    p.finish();
    if let Some(held) = held {
        // Silent: the sockets stay open, unread, until the end check is over.
        let mut release = sh.release.clone();
        let _ = release.wait_for(|r| *r).await;
        drop(held);
    }
}

/// What made the main loop return.
enum Exit {
    /// The run is over.
    Stop,
    /// Churn: leave this way.
    Depart(Departure),
}

/// The sockets of a participant that went silent.
struct Held {
    _ws: Ws,
    _pcs: Vec<Pc>,
}

/// A peer connection and its socket.
struct Pc {
    rtc: Rtc,
    sock: UdpSocket,
    local: SocketAddr,
    timeout: Instant,
    ice_at: Option<Instant>,
    dtls_at: Option<Instant>,
}

struct AudioTx {
    mid: Mid,
    pt: Pt,
    seq: u64,
    counter: u32,
    /// 20 ms frames elapsed (sent or skipped by DTX): the RTP clock.
    frames: u32,
    pos: usize,
    next: Instant,
    talking: bool,
    /// Random mode: when the current talk/silence spell ends.
    spell_end: Instant,
}

struct LayerTx {
    rid: Option<Rid>,
    seq: u64,
    counter: u32,
    src: Vp8Source,
    force_key: bool,
}

struct VideoTx {
    mid: Mid,
    pt: Pt,
    layers: Vec<LayerTx>,
    frame: u32,
    next: Instant,
    interval: Duration,
    gop: u32,
    /// Packets made but not yet written (pacing).
    queue: std::collections::VecDeque<Queued>,
    next_pace: Instant,
    /// Pacing rate, bits/s.
    pace_bps: f64,
}

struct Queued {
    layer: usize,
    payload: Vec<u8>,
    ts: u32,
    marker: bool,
}

/// Reception of one track.
struct RxTrack {
    ssrc: Ssrc,
    video: bool,
    available: Instant,
    first: Option<Instant>,
    base: u64,
    max: u64,
    unique: u64,
    window: [u64; 16],
    counted_expected: u64,
    counted_unique: u64,
    last_transit: Option<i64>,
    jitter_us: f64,
    valid: bool,
    /// Lost packets last time a keyframe was asked for.
    lost_at_pli: u64,
    last_pli: Option<Instant>,
}

impl RxTrack {
    fn expected(&self) -> u64 {
        if self.first.is_none() {
            0
        } else {
            self.max - self.base + 1
        }
    }

    /// Registers a sequence number; false for a duplicate or one too old to tell.
    fn register(&mut self, seq: u64) -> bool {
        const W: u64 = 1024;
        if self.unique == 0 {
            self.base = seq;
            self.max = seq;
        } else if seq > self.max {
            let gap = seq - self.max;
            if gap >= W {
                self.window = [0; 16];
            } else {
                for s in self.max + 1..seq {
                    self.clear(s);
                }
            }
            self.max = seq;
        } else if seq < self.base || self.max - seq >= W || self.is_set(seq) {
            return false;
        }
        self.set(seq);
        self.unique += 1;
        true
    }

    fn is_set(&self, s: u64) -> bool {
        let b = s % 1024;
        self.window[(b / 64) as usize] & (1 << (b % 64)) != 0
    }
    fn set(&mut self, s: u64) {
        let b = s % 1024;
        self.window[(b / 64) as usize] |= 1 << (b % 64);
    }
    fn clear(&mut self, s: u64) {
        let b = s % 1024;
        self.window[(b / 64) as usize] &= !(1 << (b % 64));
    }
}

struct Participant {
    spec: Spec,
    sh: Arc<Shared>,
    t0: Instant,
    publisher: Option<Pc>,
    pending: Option<SdpPendingOffer>,
    subscriber: Option<Pc>,
    audio: Option<AudioTx>,
    video: Option<VideoTx>,
    /// Subscriber mid -> track id, from the server's offers.
    mid_track: HashMap<Mid, String>,
    /// The room's tracks and when they were available to us.
    avail: Availability,
    rx: HashMap<String, RxTrack>,
    ssrc_track: HashMap<Ssrc, String>,
    delta: Delta,
    /// Last cumulative (nacks, plis, firs) per stream, from str0m's stats events.
    egress: HashMap<(Mid, Option<Rid>), u64>,
    ingress: HashMap<(Mid, Option<Rid>), (u64, u64, u64)>,
    fin: Final,
    connected: bool,
    /// When it stopped sending (left, failed, or the run ended).
    ended: Option<Instant>,
    events: Vec<Event>,
    stalls: u64,
}

fn ms(from: Instant, to: Instant) -> f64 {
    (to.saturating_duration_since(from).as_secs_f64() * 1e5).round() / 100.0
}

impl Participant {
    fn new(spec: Spec, sh: Arc<Shared>) -> Participant {
        Participant {
            spec,
            sh,
            t0: Instant::now(),
            publisher: None,
            pending: None,
            subscriber: None,
            audio: None,
            video: None,
            mid_track: HashMap::new(),
            avail: Availability::default(),
            rx: HashMap::new(),
            ssrc_track: HashMap::new(),
            delta: Delta::default(),
            egress: HashMap::new(),
            ingress: HashMap::new(),
            fin: Final::default(),
            connected: false,
            ended: None,
            events: Vec::new(),
            stalls: 0,
        }
    }

    fn rtc_config(&self) -> str0m::RtcConfig {
        Rtc::builder()
            .set_rtp_mode(true)
            .set_dtls_cert(self.sh.cert.clone())
            .set_stats_interval(Some(Duration::from_secs(1)))
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
    }

    async fn new_pc(&self, rtc: Rtc) -> Result<Pc> {
        let sock = bind_udp(SocketAddr::new(self.sh.local_ip, 0)).context("bind UDP")?;
        let local = sock.local_addr()?;
        self.sh.ports.lock().push(local.port());
        let mut rtc = rtc;
        rtc.add_local_candidate(
            Candidate::host(local, "udp").map_err(|e| anyhow!("candidate: {e}"))?,
        );
        Ok(Pc {
            rtc,
            sock,
            local,
            timeout: Instant::now(),
            ice_at: None,
            dtls_at: None,
        })
    }

    /// Joins, runs until told to stop or depart, and leaves. A participant that went
    /// silent answers its sockets, to be held open.
    async fn run(
        &mut self,
        mut stop: tokio::sync::watch::Receiver<bool>,
        mut depart: tokio::sync::oneshot::Receiver<Departure>,
    ) -> (Result<()>, Option<Held>) {
        let mut ws = match self.join().await {
            Ok(ws) => ws,
            Err(e) => {
                self.stopped_now();
                return (Err(e), None);
            }
        };
        let exit = match self.publish(&mut ws).await {
            Ok(()) => self.main_loop(&mut ws, &mut stop, &mut depart).await,
            Err(e) => Err(e),
        };
        let now = self.stopped_now();
        match exit {
            Ok(exit) => {
                if !self.connected {
                    // Told to go before it had connected (within its connect timeout).
                    self.fin.still_joining = true;
                }
                match exit {
                    // Everyone still in quits at once, as pages unload: the harshest end
                    // for the server (its `left` and broadcasts race the closes).
                    Exit::Stop => depart::quit(&mut ws).await,
                    Exit::Depart(d) => {
                        self.fin.departure = Some(d);
                        self.sh
                            .departures
                            .lock()
                            .insert(self.spec.identity.clone(), (now, d));
                        match d {
                            Departure::Leave => {
                                depart::leave(&mut ws).await;
                                self.close_pcs();
                                depart::close(&mut ws, CloseCode::Normal).await;
                            }
                            Departure::Quit => depart::quit(&mut ws).await,
                            // The media just stops: the sockets close unannounced.
                            Departure::Close => depart::close(&mut ws, CloseCode::Away).await,
                            Departure::Vanish => depart::vanish(ws),
                            Departure::Silent => {
                                self.flush(now);
                                let pcs = [self.publisher.take(), self.subscriber.take()]
                                    .into_iter()
                                    .flatten()
                                    .collect();
                                return (Ok(()), Some(Held { _ws: ws, _pcs: pcs }));
                            }
                        }
                    }
                }
                (Ok(()), None)
            }
            Err(e) => {
                // A polite end where the socket still allows it.
                depart::leave(&mut ws).await;
                depart::close(&mut ws, CloseCode::Normal).await;
                (Err(e), None)
            }
        }
    }

    /// This participant stops sending now (for the others' track expectations).
    fn stopped_now(&mut self) -> Instant {
        let now = Instant::now();
        self.ended = Some(now);
        self.sh
            .stopped
            .lock()
            .insert(self.spec.identity.clone(), now);
        now
    }

    /// Closes both peer connections politely (RTCP BYE, SCTP shutdown, DTLS
    /// close_notify), as a browser's `RTCPeerConnection.close()` does.
    fn close_pcs(&mut self) {
        let now = Instant::now();
        for is_pub in [true, false] {
            let pc = if is_pub {
                self.publisher.as_mut()
            } else {
                self.subscriber.as_mut()
            };
            if let Some(pc) = pc {
                if pc.rtc.close().is_ok() {
                    let _ = self.drain(is_pub, now);
                }
            }
        }
    }

    /// Token, WebSocket, `join`, until `joined`.
    async fn join(&mut self) -> Result<Ws> {
        let sc = &self.sh.scenario;
        let grants = if self.spec.publish {
            "publish,subscribe"
        } else {
            "subscribe"
        };
        let token = self
            .sh
            .tokens
            .token(
                Some(&self.spec.room),
                &self.spec.identity,
                grants,
                Duration::from_secs(24 * 3600),
            )
            .await?;
        self.t0 = Instant::now();
        let host = crate::http::host_of(&sc.url)?;
        let url = format!(
            "ws://{host}/rtc?access_token={token}&room={}",
            self.spec.room
        );
        let timeout = sc.connect_timeout;
        let (mut ws, _) =
            tokio::time::timeout(timeout, tokio_tungstenite::connect_async(url.as_str()))
                .await
                .map_err(|_| anyhow!("websocket connect timed out"))?
                .map_err(|e| anyhow!("websocket connect: {e}"))?;
        self.fin.join.ws_open = Some(ms(self.t0, Instant::now()));
        send(&mut ws, json!({"type": "join", "auto_subscribe": true})).await?;
        let deadline = self.t0 + timeout;
        loop {
            let m = tokio::time::timeout_at(deadline.into(), ws.next())
                .await
                .map_err(|_| anyhow!("no joined within the connect timeout"))?;
            let v = parse(m)?;
            match v["type"].as_str() {
                Some("joined") => {
                    self.fin.join.joined = Some(ms(self.t0, Instant::now()));
                    if let Some(me) = v["participant"]["id"].as_str() {
                        self.avail.me(me);
                    }
                    if let Some(w) = v["resume_window_secs"].as_u64() {
                        let _ = self.sh.resume_window_secs.set(w);
                    }
                    for p in v["participants"].as_array().into_iter().flatten() {
                        self.on_participant(p, self.t0);
                    }
                    break;
                }
                Some("error") => bail!("join refused: {}", v["code"].as_str().unwrap_or("?")),
                _ => self.on_message(&mut ws, v).await?,
            }
        }
        Ok(ws)
    }

    /// Another participant and its tracks, available to us from `at`.
    fn on_participant(&mut self, p: &Value, at: Instant) {
        let (Some(id), Some(identity)) = (p["id"].as_str(), p["identity"].as_str()) else {
            return;
        };
        self.avail.participant(id, identity);
        for t in p["tracks"].as_array().into_iter().flatten() {
            if let Some(tid) = t["id"].as_str() {
                self.avail.track(tid, id, at);
            }
        }
    }

    async fn publish(&mut self, ws: &mut Ws) -> Result<()> {
        if !self.spec.publish {
            return Ok(());
        }
        let sc = self.sh.scenario.clone();
        let rtc = self.rtc_config().build(Instant::now());
        let mut pc = self.new_pc(rtc).await?;
        let mut api = pc.rtc.sdp_api();
        let a = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let layers = vp8_layers(sc.video_bitrate, sc.simulcast);
        let v = sc.video.then(|| {
            let sim = sc.simulcast.then(|| {
                let mut s = Simulcast::new();
                for l in &layers {
                    s.add_send_layer(SimulcastLayer::new(l.rid.unwrap_or("f")));
                }
                s
            });
            api.add_media(MediaKind::Video, Direction::SendOnly, None, None, sim)
        });
        let (offer, pending) = api.apply().context("str0m made no offer")?;
        let pt = |rtc: &Rtc, c: Codec| {
            rtc.codec_config()
                .find(|p| p.spec().codec == c)
                .map(|p| p.pt())
        };
        let now = Instant::now();
        let opus_pt = pt(&pc.rtc, Codec::Opus).context("no opus")?;
        let n_voice = self.sh.opus.voice.len().max(1);
        self.audio = Some(AudioTx {
            mid: a,
            pt: opus_pt,
            seq: rand::random::<u16>() as u64 / 2 + 1,
            counter: 0,
            frames: 0,
            pos: self.spec.index * 37 % n_voice,
            next: now,
            talking: true,
            spell_end: now,
        });
        if let Some(v) = v {
            let vp8 = pt(&pc.rtc, Codec::Vp8).context("no vp8")?;
            let gop = (sc.keyframe_interval.as_secs_f64() * sc.fps as f64)
                .round()
                .max(1.0) as u32;
            self.video = Some(VideoTx {
                mid: v,
                pt: vp8,
                layers: layers
                    .iter()
                    .enumerate()
                    .map(|(i, l)| LayerTx {
                        rid: l.rid.map(Rid::from),
                        seq: rand::random::<u16>() as u64 / 2 + 1,
                        counter: 0,
                        src: Vp8Source::new(
                            l.clone(),
                            sc.fps,
                            gop,
                            (self.spec.index * 3 + i) as u64,
                            self.sh.filler.clone(),
                        ),
                        force_key: true,
                    })
                    .collect(),
                frame: 0,
                next: now,
                interval: Duration::from_secs_f64(1.0 / sc.fps.max(1) as f64),
                gop,
                queue: std::collections::VecDeque::new(),
                next_pace: now,
                pace_bps: 2.5
                    * layers
                        .iter()
                        .map(|l| l.bitrate as f64)
                        .sum::<f64>()
                        .max(100_000.0),
            });
        }
        self.pending = Some(pending);
        self.publisher = Some(pc);
        let mut tracks = vec![json!({"mid": a.to_string(), "source": "microphone"})];
        if let Some(v) = v {
            tracks.push(json!({"mid": v.to_string(), "source": "camera"}));
        }
        send(
            ws,
            json!({"type": "offer", "sdp": offer.to_sdp_string(), "tracks": tracks}),
        )
        .await
    }

    async fn on_message(&mut self, ws: &mut Ws, v: Value) -> Result<()> {
        let now = Instant::now();
        match v["type"].as_str().unwrap_or("") {
            "answer" => {
                let sdp = v["sdp"].as_str().context("answer without sdp")?;
                let pending = self.pending.take().context("answer without an offer")?;
                let pc = self
                    .publisher
                    .as_mut()
                    .context("answer without publisher")?;
                let answer =
                    SdpAnswer::from_sdp_string(sdp).map_err(|e| anyhow!("bad answer sdp: {e}"))?;
                pc.rtc
                    .sdp_api()
                    .accept_answer(pending, answer)
                    .map_err(|e| anyhow!("accept answer: {e}"))?;
                start_clock(pc, now)?;
                self.drain(true, now)?;
            }
            "offer" => {
                let sdp = v["sdp"].as_str().context("offer without sdp")?;
                let offer_id = v["offer_id"].as_u64().context("offer without offer_id")?;
                if self.subscriber.is_none() {
                    let rtc = self.rtc_config().build(now);
                    self.subscriber = Some(self.new_pc(rtc).await?);
                    self.fin.join.subscriber_offer = Some(ms(self.t0, now));
                }
                let pc = self.subscriber.as_mut().unwrap();
                let offer =
                    SdpOffer::from_sdp_string(sdp).map_err(|e| anyhow!("bad offer sdp: {e}"))?;
                let answer = pc
                    .rtc
                    .sdp_api()
                    .accept_offer(offer)
                    .map_err(|e| anyhow!("accept offer: {e}"))?;
                for t in v["tracks"].as_array().into_iter().flatten() {
                    if let (Some(mid), Some(id)) = (t["mid"].as_str(), t["track_id"].as_str()) {
                        self.mid_track.insert(Mid::from(mid), id.to_string());
                    }
                }
                start_clock(pc, now)?;
                self.drain(false, now)?;
                send(
                    ws,
                    json!({"type": "answer", "sdp": answer.to_sdp_string(), "offer_id": offer_id}),
                )
                .await?;
            }
            "track_published" => {
                let t = &v["track"];
                if let (Some(id), Some(owner)) = (t["id"].as_str(), t["participant_id"].as_str()) {
                    self.avail.track(id, owner, now);
                }
            }
            "track_unpublished" => {
                if let Some(id) = v["track_id"].as_str() {
                    self.avail.track_gone(id, now);
                }
            }
            "participant_joined" => self.on_participant(&v["participant"], now),
            "participant_left" => {
                if let Some(id) = v["participant_id"].as_str() {
                    self.avail.participant_gone(id, now);
                }
                if let Some(identity) = v["identity"].as_str() {
                    self.sh
                        .left_seen
                        .lock()
                        .entry(identity.to_string())
                        .or_insert(now);
                }
            }
            "error" => {
                self.sh.collector.error(format!(
                    "server error: {}",
                    v["code"].as_str().unwrap_or("?")
                ));
            }
            "left" => bail!(
                "server ended the session: {}",
                v["reason"].as_str().unwrap_or("?")
            ),
            _ => {}
        }
        Ok(())
    }

    async fn main_loop(
        &mut self,
        ws: &mut Ws,
        stop: &mut tokio::sync::watch::Receiver<bool>,
        depart: &mut tokio::sync::oneshot::Receiver<Departure>,
    ) -> Result<Exit> {
        let mut buf_p = vec![0u8; 2048];
        let mut buf_s = vec![0u8; 2048];
        let mut next_flush = Instant::now() + FLUSH_EVERY;
        let connect_deadline = self.t0 + self.sh.scenario.connect_timeout;
        if *stop.borrow() {
            return Ok(Exit::Stop);
        }
        // The runner keeps the sender until the end; once it is dropped, never again.
        let mut may_depart = true;
        loop {
            let now = Instant::now();
            if !self.connected && now >= connect_deadline {
                bail!("{}", self.not_connected_reason());
            }
            let mut wake = next_flush;
            for pc in [self.publisher.as_ref(), self.subscriber.as_ref()]
                .into_iter()
                .flatten()
            {
                wake = wake.min(pc.timeout);
            }
            if let Some(a) = &self.audio {
                wake = wake.min(a.next);
            }
            if let Some(v) = &self.video {
                wake = wake.min(v.next);
                if !v.queue.is_empty() {
                    wake = wake.min(v.next_pace);
                }
            }
            if !self.connected {
                wake = wake.min(connect_deadline);
            }
            enum Ev {
                Stop,
                Depart(std::result::Result<Departure, tokio::sync::oneshot::error::RecvError>),
                Ws(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
                Udp(bool, std::io::Result<(usize, SocketAddr)>),
                Timer,
            }
            let ev = tokio::select! {
                biased;
                _ = stop.changed() => Ev::Stop,
                d = &mut *depart, if may_depart => Ev::Depart(d),
                r = recv(self.publisher.as_ref(), &mut buf_p) => Ev::Udp(true, r),
                r = recv(self.subscriber.as_ref(), &mut buf_s) => Ev::Udp(false, r),
                m = ws.next() => Ev::Ws(m),
                _ = sleep_until(wake.into()) => Ev::Timer,
            };
            let now = Instant::now();
            match ev {
                Ev::Stop => return Ok(Exit::Stop),
                Ev::Depart(Ok(d)) => return Ok(Exit::Depart(d)),
                Ev::Depart(Err(_)) => may_depart = false,
                Ev::Ws(m) => {
                    let v = parse(m)?;
                    self.on_message(ws, v).await?;
                }
                Ev::Udp(is_pub, r) => {
                    let (n, from) = r.context("UDP receive")?;
                    let buf = if is_pub { &mut buf_p } else { &mut buf_s };
                    self.on_datagram(is_pub, now, from, &buf[..n])?;
                    // Take whatever else is queued without going back through select.
                    for _ in 0..64 {
                        let pc = if is_pub {
                            self.publisher.as_ref()
                        } else {
                            self.subscriber.as_ref()
                        };
                        let Some(pc) = pc else { break };
                        match pc.sock.try_recv_from(buf) {
                            Ok((n, from)) => self.on_datagram(is_pub, now, from, &buf[..n])?,
                            Err(_) => break,
                        }
                    }
                }
                Ev::Timer => {}
            }
            for is_pub in [true, false] {
                let pc = if is_pub {
                    self.publisher.as_mut()
                } else {
                    self.subscriber.as_mut()
                };
                if let Some(pc) = pc {
                    if pc.timeout <= now {
                        pc.rtc
                            .handle_input(Input::Timeout(now))
                            .map_err(|e| anyhow!("str0m: {e}"))?;
                        self.drain(is_pub, now)?;
                    }
                }
            }
            self.send_media(now)?;
            if now >= next_flush {
                next_flush = now + FLUSH_EVERY;
                self.flush(now);
            }
        }
    }

    fn not_connected_reason(&self) -> String {
        let step = |pc: Option<&Pc>, name: &str| match pc {
            None => format!("{name}: no connection"),
            Some(pc) if pc.ice_at.is_none() => format!("{name}: ICE did not connect"),
            Some(pc) if pc.dtls_at.is_none() => format!("{name}: DTLS did not complete"),
            Some(_) => format!("{name}: connected"),
        };
        let mut parts = Vec::new();
        if self.spec.publish {
            parts.push(step(self.publisher.as_ref(), "publisher"));
        }
        parts.push(step(self.subscriber.as_ref(), "subscriber"));
        format!(
            "not connected within the connect timeout ({})",
            parts.join(", ")
        )
    }

    fn on_datagram(
        &mut self,
        is_pub: bool,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) -> Result<()> {
        let pc = if is_pub {
            self.publisher.as_mut()
        } else {
            self.subscriber.as_mut()
        };
        let Some(pc) = pc else { return Ok(()) };
        self.delta.bytes_recv += data.len() as u64;
        if self.sh.server_media.get().is_none() {
            let _ = self.sh.server_media.set(from);
        }
        let Ok(r) = Receive::new(Protocol::Udp, from, pc.local, data) else {
            return Ok(());
        };
        pc.rtc
            .handle_input(Input::Receive(now, r))
            .map_err(|e| anyhow!("str0m: {e}"))?;
        self.drain(is_pub, now)
    }

    /// Runs str0m's outputs: transmits to the socket, events to [`Self::on_event`].
    fn drain(&mut self, is_pub: bool, now: Instant) -> Result<()> {
        let mut events = std::mem::take(&mut self.events);
        {
            let pc = if is_pub {
                self.publisher.as_mut()
            } else {
                self.subscriber.as_mut()
            };
            let Some(pc) = pc else { return Ok(()) };
            loop {
                match pc.rtc.poll_output().map_err(|e| anyhow!("str0m: {e}"))? {
                    Output::Timeout(t) => {
                        pc.timeout = t;
                        break;
                    }
                    Output::Transmit(t) => {
                        self.delta.bytes_sent += t.contents.len() as u64;
                        if pc.sock.try_send_to(&t.contents, t.destination).is_err() {
                            self.delta.send_errors += 1;
                        }
                    }
                    Output::Event(e) => events.push(e),
                }
            }
        }
        for e in events.drain(..) {
            self.on_event(is_pub, now, e);
        }
        self.events = events;
        Ok(())
    }

    fn on_event(&mut self, is_pub: bool, now: Instant, e: Event) {
        match e {
            Event::IceConnectionStateChange(s) => {
                let pc = if is_pub {
                    self.publisher.as_mut()
                } else {
                    self.subscriber.as_mut()
                };
                if let Some(pc) = pc {
                    match s {
                        IceConnectionState::Connected | IceConnectionState::Completed
                            if pc.ice_at.is_none() =>
                        {
                            pc.ice_at = Some(now);
                            let t = Some(ms(self.t0, now));
                            if is_pub {
                                self.fin.join.publisher_ice = t;
                            } else {
                                self.fin.join.subscriber_ice = t;
                            }
                        }
                        IceConnectionState::Disconnected if pc.dtls_at.is_some() => {
                            self.sh.collector.error(if is_pub {
                                "publisher ICE disconnected"
                            } else {
                                "subscriber ICE disconnected"
                            });
                        }
                        _ => {}
                    }
                }
            }
            Event::Connected => {
                let pc = if is_pub {
                    self.publisher.as_mut()
                } else {
                    self.subscriber.as_mut()
                };
                if let Some(pc) = pc {
                    pc.dtls_at.get_or_insert(now);
                }
                let t = Some(ms(self.t0, now));
                if is_pub {
                    self.fin.join.publisher_dtls = t;
                } else {
                    self.fin.join.subscriber_dtls = t;
                }
                self.check_connected();
            }
            Event::RtpPacket(p) if !is_pub => self.on_rtp(now, p),
            Event::KeyframeRequest(k) if is_pub => {
                self.delta.keyframe_requests_recv += 1;
                if let Some(v) = self.video.as_mut() {
                    for l in v
                        .layers
                        .iter_mut()
                        .filter(|l| k.rid.is_none() || l.rid == k.rid)
                    {
                        l.force_key = true;
                    }
                }
            }
            Event::MediaEgressStats(s) => {
                let last = self.egress.entry((s.mid, s.rid)).or_default();
                self.delta.nacks_recv += s.nacks.saturating_sub(*last);
                *last = s.nacks;
            }
            Event::MediaIngressStats(s) => {
                let last = self.ingress.entry((s.mid, s.rid)).or_default();
                self.delta.nacks_sent += s.nacks.saturating_sub(last.0);
                self.delta.plis_sent += s.plis.saturating_sub(last.1);
                self.delta.firs_sent += s.firs.saturating_sub(last.2);
                *last = (s.nacks, s.plis, s.firs);
            }
            _ => {}
        }
    }

    fn check_connected(&mut self) {
        let pub_ok =
            !self.spec.publish || self.publisher.as_ref().is_some_and(|p| p.dtls_at.is_some());
        // Every participant may subscribe, so the server gives each a subscriber
        // connection (a data channel while there is nothing to receive) and drops a
        // participant that never connects it, as it should: a browser connects it.
        let sub_ok = self
            .subscriber
            .as_ref()
            .is_some_and(|p| p.dtls_at.is_some());
        if pub_ok && sub_ok && !self.connected {
            self.connected = true;
            self.fin.connected = true;
            self.sh.collector.connected(true);
        }
    }

    fn on_rtp(&mut self, now: Instant, p: RtpPacket) {
        self.delta.packets_recv += 1;
        if self.fin.join.first_packet.is_none() {
            self.fin.join.first_packet = Some(ms(self.t0, now));
        }
        let ssrc = p.header.ssrc;
        let track = match self.ssrc_track.get(&ssrc) {
            Some(t) => t.clone(),
            None => {
                let Some(pc) = self.subscriber.as_mut() else {
                    return;
                };
                let Some(mid) = pc.rtc.direct_api().stream_rx(&ssrc).map(|s| s.mid()) else {
                    return;
                };
                let video = pc
                    .rtc
                    .media(mid)
                    .is_some_and(|m| m.kind() == MediaKind::Video);
                let Some(id) = self.mid_track.get(&mid).cloned() else {
                    return;
                };
                let available = self.avail.since(&id).unwrap_or(self.t0).max(self.t0);
                self.rx.entry(id.clone()).or_insert_with(|| RxTrack {
                    ssrc,
                    video,
                    available,
                    first: None,
                    base: 0,
                    max: 0,
                    unique: 0,
                    window: [0; 16],
                    counted_expected: 0,
                    counted_unique: 0,
                    last_transit: None,
                    jitter_us: 0.0,
                    valid: false,
                    lost_at_pli: 0,
                    last_pli: None,
                });
                self.ssrc_track.insert(ssrc, id.clone());
                id
            }
        };
        let Some(t) = self.rx.get_mut(&track) else {
            return;
        };
        t.ssrc = ssrc;
        let seq: SeqNo = p.seq_no;
        if !t.register(*seq) {
            self.delta.duplicates += 1;
            return;
        }
        t.first.get_or_insert(now);
        if p.payload.is_empty() {
            return;
        }
        let Some(tr) = crate::media::Trailer::read(&p.payload) else {
            self.delta.foreign += 1;
            return;
        };
        let arrival = now_us() as i64;
        let transit = arrival - tr.sent_us as i64;
        self.delta
            .delays_us
            .push(transit.clamp(0, u32::MAX as i64) as u32);
        if let Some(last) = t.last_transit {
            let d = (transit - last).abs() as f64;
            t.jitter_us += (d - t.jitter_us) / 16.0;
        }
        t.last_transit = Some(transit);
        if !t.valid {
            t.valid = true;
            let took = ms(t.available, now);
            if t.video {
                self.fin.first_video_ms.push(took);
            } else {
                self.fin.first_audio_ms.push(took);
            }
        }
    }

    /// Writes the audio packets and video frames that are due.
    fn send_media(&mut self, now: Instant) -> Result<()> {
        let Some(pc) = self.publisher.as_mut() else {
            return Ok(());
        };
        if pc.dtls_at.is_none() {
            return Ok(());
        }
        let sc = &self.sh.scenario;
        let mut wrote = false;
        if let Some(a) = self.audio.as_mut() {
            if now.saturating_duration_since(a.next) > MAX_SEND_LAG {
                self.stalls += 1;
                a.next = now;
            }
            while a.next <= now {
                a.talking = match sc.speaking {
                    Speaking::All => true,
                    Speaking::Rotate => {
                        let turn = sc.turn.as_millis().max(1);
                        let k = now.saturating_duration_since(self.sh.epoch).as_millis() / turn;
                        (k as usize) % sc.publishers.max(1) == self.spec.slot
                    }
                    Speaking::Random => {
                        if now >= a.spell_end {
                            let talk = rand::random::<f64>() < 0.33;
                            let secs = if talk {
                                1.0 + rand::random::<f64>() * 3.0
                            } else {
                                2.0 + rand::random::<f64>() * 6.0
                            };
                            a.talking = talk;
                            a.spell_end = now + Duration::from_secs_f64(secs);
                        }
                        a.talking
                    }
                };
                // With DTX a silent sender sends every 20th frame (400 ms).
                let skip = !a.talking && sc.dtx && a.frames % 20 != 0;
                a.frames += 1;
                if skip {
                    a.next += Duration::from_millis(20);
                    continue;
                }
                let src = if a.talking {
                    &self.sh.opus.voice
                } else {
                    &self.sh.opus.silence
                };
                let mut payload = src[a.pos % src.len()].clone();
                a.pos += 1;
                Trailer {
                    sent_us: now_us(),
                    counter: a.counter,
                }
                .write(&mut payload);
                let ext = ExtensionValues {
                    audio_level: Some(if a.talking { -30 } else { -127 }),
                    voice_activity: Some(a.talking),
                    ..Default::default()
                };
                let ts = ((a.frames - 1) as u64 * OPUS_FRAME as u64) as u32;
                if let Some(tx) = pc.rtc.direct_api().stream_tx_by_mid(a.mid, None) {
                    tx.write_rtp(
                        RtpWrite::new(a.pt, a.seq.into(), ts, now, payload)
                            .marker(a.counter == 0)
                            .ext_vals(ext),
                    );
                    self.delta.packets_sent += 1;
                    wrote = true;
                }
                a.seq += 1;
                a.counter += 1;
                a.next += Duration::from_millis(20);
            }
        }
        if let Some(v) = self.video.as_mut() {
            if now.saturating_duration_since(v.next) > MAX_SEND_LAG {
                self.stalls += 1;
                v.next = now;
            }
            while v.next <= now {
                let periodic = v.frame % v.gop == 0;
                let ts = (v.frame as u64 * 90_000 / sc.fps.max(1) as u64) as u32;
                for (li, l) in v.layers.iter_mut().enumerate() {
                    let key = periodic || std::mem::take(&mut l.force_key);
                    let packets = l.src.next_frame(key);
                    let last = packets.len() - 1;
                    for (i, p) in packets.into_iter().enumerate() {
                        v.queue.push_back(Queued {
                            layer: li,
                            payload: p,
                            ts,
                            marker: i == last,
                        });
                    }
                }
                v.frame += 1;
                v.next += v.interval;
            }
            // Paced like a browser (libwebrtc: 2.5 x the target rate), or all at once.
            if v.queue.is_empty() || !sc.pacing {
                v.next_pace = now;
            }
            while v.next_pace <= now {
                let Some(q) = v.queue.pop_front() else { break };
                let l = &mut v.layers[q.layer];
                let mut p = q.payload;
                Trailer {
                    sent_us: now_us(),
                    counter: l.counter,
                }
                .write(&mut p);
                debug_assert!(p.len() > TRAILER_LEN);
                let bits = (p.len() as f64 + 40.0) * 8.0;
                let mut api = pc.rtc.direct_api();
                if let Some(tx) = api.stream_tx_by_mid(v.mid, l.rid) {
                    tx.write_rtp(
                        RtpWrite::new(v.pt, l.seq.into(), q.ts, now, p)
                            .marker(q.marker)
                            .nackable(true),
                    );
                    self.delta.packets_sent += 1;
                    wrote = true;
                }
                l.seq += 1;
                l.counter += 1;
                if sc.pacing {
                    v.next_pace += Duration::from_secs_f64(bits / v.pace_bps);
                }
            }
        }
        if wrote {
            pc.rtc
                .handle_input(Input::Timeout(now))
                .map_err(|e| anyhow!("str0m: {e}"))?;
            self.drain(true, now)?;
        }
        Ok(())
    }

    /// Moves counts into the collector; asks for a keyframe on video tracks that lost
    /// packets NACK did not bring back (as a browser's decoder would).
    fn flush(&mut self, now: Instant) {
        for t in self.rx.values_mut() {
            let e = t.expected();
            self.delta.expected += e - t.counted_expected;
            self.delta.received += t.unique - t.counted_unique;
            t.counted_expected = e;
            t.counted_unique = t.unique;
            let lost = e.saturating_sub(t.unique);
            if t.video
                && lost > t.lost_at_pli
                && t.last_pli.is_none_or(|l| now - l > Duration::from_secs(1))
            {
                t.lost_at_pli = lost;
                t.last_pli = Some(now);
                if let Some(pc) = self.subscriber.as_mut() {
                    if let Some(rx) = pc.rtc.direct_api().stream_rx(&t.ssrc) {
                        rx.request_keyframe(KeyframeRequestKind::Pli);
                    }
                }
            }
        }
        self.sh.collector.merge(&mut self.delta);
    }

    fn finish(mut self) {
        let now = Instant::now();
        if self.publisher.is_some() || self.subscriber.is_some() {
            self.flush(now);
        } else {
            self.sh.collector.merge(&mut self.delta);
        }
        if self.stalls > 0 {
            self.sh.collector.warning(format!(
                "simulator fell behind its send clock ({} times)",
                self.stalls
            ));
        }
        self.fin.tracks_received = self.rx.values().filter(|t| t.valid).count();
        if self.fin.connected {
            let end = self.ended.unwrap_or(now);
            let stopped = self.sh.stopped.lock();
            let expected: std::collections::HashSet<&str> = self
                .avail
                .expected(self.t0, end, self.sh.scenario.track_timeout, |identity| {
                    stopped.get(identity).copied()
                })
                .collect();
            self.fin.tracks_expected = expected.len();
            self.fin.tracks_received_expected = self
                .rx
                .iter()
                .filter(|(id, t)| t.valid && expected.contains(id.as_str()))
                .count();
            for id in &expected {
                if !self.rx.get(*id).is_some_and(|t| t.valid) {
                    tracing::debug!(
                        participant = %self.spec.identity,
                        track = id,
                        "expected track never arrived: {}",
                        self.avail.describe(id, self.t0)
                    );
                }
            }
        }
        self.fin.jitter_ms = self
            .rx
            .values()
            .filter(|t| t.valid)
            .map(|t| t.jitter_us / 1000.0)
            .collect();
        if self.connected {
            self.sh.collector.connected(false);
        }
        self.sh.collector.finish(std::mem::take(&mut self.fin));
    }
}

/// Hands str0m the time once after a negotiation. Its ICE agent starts only on its
/// first `Input::Timeout`, and an `Rtc` with nothing but a data channel (the server's
/// subscriber offer when there is nothing to receive yet) asks for no timeout before
/// that, so without this its ICE never started and the server dropped the participant
/// after its DTLS handshake timeout (~30 s).
fn start_clock(pc: &mut Pc, now: Instant) -> Result<()> {
    pc.rtc
        .handle_input(Input::Timeout(now))
        .map_err(|e| anyhow!("str0m: {e}"))
}

/// A non-blocking UDP socket with a 1 MiB receive buffer, so that a busy event loop
/// does not lose packets in the kernel (losses are then the server's or the network's).
fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol as SockProto, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(SockProto::UDP))?;
    let _ = s.set_recv_buffer_size(1 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

async fn recv(pc: Option<&Pc>, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match pc {
        Some(pc) => pc.sock.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

async fn send(ws: &mut Ws, v: Value) -> Result<()> {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .context("websocket send")
}

fn parse(m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Result<Value> {
    match m {
        None => bail!("websocket closed by the server"),
        Some(Err(e)) => bail!("websocket: {e}"),
        Some(Ok(Message::Text(t))) => serde_json::from_str(&t).context("bad JSON from server"),
        Some(Ok(Message::Close(c))) => {
            bail!(
                "websocket closed by the server ({})",
                c.map(|c| u16::from(c.code)).unwrap_or(0)
            )
        }
        Some(Ok(_)) => Ok(Value::Null),
    }
}
