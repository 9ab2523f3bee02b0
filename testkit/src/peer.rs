//! webrtc-rs peer connection plumbing: building a loopback-only peer connection, publishing
//! a synthetic audio+video pair, and counting/verifying what arrives on remote tracks.
//!
//! Independent of the `/rtc` signalling, so it can be tested by connecting two peer
//! connections to each other in-process (see `tests/loopback.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::extension::HeaderExtension;
use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::sansio::Protocol;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceCandidateInit, RTCPeerConnectionIceEvent, RTCPeerConnectionState, Registry,
    SettingEngineBuilder, register_default_interceptors,
};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit, RtpTransceiver};

use crate::media::{self, AudioGenerator, VideoGenerator};
use crate::proto::{MidTrack, TrackKind};
use crate::stats::{Observed, RecvStats, RemoteTrackStats, SendStats};

/// The audio-level RTP header extension (RFC 6464), used by the SFU for active speakers.
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
const OPUS_PT: u8 = 111;
const VP8_PT: u8 = 96;

/// A webrtc-rs peer connection bound to 127.0.0.1 only, plus what its callbacks report.
pub struct Peer {
    pub pc: Arc<dyn PeerConnection>,
    state: watch::Receiver<RTCPeerConnectionState>,
}

/// Callback outputs of a [`Peer`], taken by whoever consumes them.
pub struct PeerEvents {
    /// Remote tracks, as `on_track` reports them.
    pub tracks: mpsc::UnboundedReceiver<Arc<dyn TrackRemote>>,
    /// Locally gathered ICE candidates (for trickling).
    pub candidates: mpsc::UnboundedReceiver<RTCIceCandidateInit>,
}

struct Handler {
    name: String,
    tracks: mpsc::UnboundedSender<Arc<dyn TrackRemote>>,
    candidates: mpsc::UnboundedSender<RTCIceCandidateInit>,
    state: watch::Sender<RTCPeerConnectionState>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => {
                let _ = self.candidates.send(init);
            }
            Err(e) => tracing::warn!(pc = %self.name, "unusable local candidate: {e}"),
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(pc = %self.name, "connection state {state}");
        let _ = self.state.send(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        // Runs on the driver: hand the track over, never block here.
        let _ = self.tracks.send(track);
    }
}

impl Peer {
    /// Builds a peer connection that knows Opus and VP8 (with NACK, PLI, FIR, TWCC and the
    /// audio-level extension), gathers a single host candidate on 127.0.0.1, has mDNS off,
    /// and passes PLI/FIR received for its own tracks to the application.
    pub async fn new(name: &str) -> Result<(Peer, PeerEvents)> {
        let mut media_engine = MediaEngine::default();
        media_engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: RTCRtpCodec {
                        mime_type: "audio/opus".to_owned(),
                        clock_rate: media::AUDIO_CLOCK_RATE,
                        channels: 2,
                        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                        rtcp_feedback: vec![],
                    },
                    payload_type: OPUS_PT,
                },
                RtpCodecKind::Audio,
            )
            .context("register Opus")?;
        let feedback = |typ: &str, parameter: &str| RTCPFeedback {
            typ: typ.to_owned(),
            parameter: parameter.to_owned(),
        };
        media_engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: RTCRtpCodec {
                        mime_type: "video/VP8".to_owned(),
                        clock_rate: media::VIDEO_CLOCK_RATE,
                        channels: 0,
                        sdp_fmtp_line: String::new(),
                        rtcp_feedback: vec![
                            feedback("ccm", "fir"),
                            feedback("nack", ""),
                            feedback("nack", "pli"),
                        ],
                    },
                    payload_type: VP8_PT,
                },
                RtpCodecKind::Video,
            )
            .context("register VP8")?;
        media_engine
            .register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: AUDIO_LEVEL_URI.to_owned(),
                },
                RtpCodecKind::Audio,
                None,
            )
            .context("register audio level extension")?;
        // The mid extension for audio too (default interceptors add it for video only), as
        // browsers do.
        media_engine
            .register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: "urn:ietf:params:rtp-hdrext:sdes:mid".to_owned(),
                },
                RtpCodecKind::Audio,
                None,
            )
            .context("register mid extension")?;
        let registry = register_default_interceptors(Registry::new(), &mut media_engine)
            .context("register default interceptors")?
            .with(Slot::from(14_000), KeyframeRequestForwarder::default());

        let setting_engine = SettingEngineBuilder::new()
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .with_include_loopback_candidate(true)
            .build();

        let (tracks_tx, tracks) = mpsc::unbounded_channel();
        let (candidates_tx, candidates) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let handler = Arc::new(Handler {
            name: name.to_owned(),
            tracks: tracks_tx,
            candidates: candidates_tx,
            state: state_tx,
        });
        let pc = PeerConnectionBuilder::new()
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_setting_engine(setting_engine)
            .with_handler(handler)
            .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
            .build()
            .await
            .with_context(|| format!("build {name} peer connection"))?;
        Ok((
            Peer {
                pc: Arc::new(pc),
                state,
            },
            PeerEvents { tracks, candidates },
        ))
    }

    /// A future that resolves once the connection is (or has been) `Connected`; never
    /// resolves if it fails first.
    pub fn connected(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.state.clone();
        async move {
            let _ = rx
                .wait_for(|s| *s == RTCPeerConnectionState::Connected)
                .await;
        }
    }

    /// The current connection state.
    pub fn state(&self) -> RTCPeerConnectionState {
        *self.state.borrow()
    }

    /// Waits until the connection is `Connected`; fails early if it fails or closes.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let mut rx = self.state.clone();
        let wait = async {
            loop {
                let state = *rx.borrow_and_update();
                match state {
                    RTCPeerConnectionState::Connected => return Ok(()),
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        bail!("peer connection is {state}")
                    }
                    _ => {}
                }
                rx.changed()
                    .await
                    .context("peer connection handler dropped")?;
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            anyhow!(
                "peer connection not connected after {timeout:?} (state {})",
                self.state()
            )
        })?
    }
}

/// Passes inbound PLI/FIR on to the application (marked `DeliverToApplication`) so that a
/// sender can answer them with a keyframe; drops every other inbound RTCP packet at the end
/// of the chain (the interceptors before it have acted on them already).
#[derive(Default)]
struct KeyframeRequestForwarder {
    read_queue: std::collections::VecDeque<TaggedPacket>,
    write_queue: std::collections::VecDeque<TaggedPacket>,
}

fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestForwarder {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| is_keyframe_request(p.as_ref()))
                .cloned()
                .collect();
            if requests.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for KeyframeRequestForwarder {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// One synthetic Opus track and one synthetic VP8 track on send-only transceivers.
pub struct LocalAv {
    audio: Arc<TrackLocalStaticRTP>,
    video: Arc<TrackLocalStaticRTP>,
    audio_ssrc: u32,
    video_ssrc: u32,
    audio_transceiver: Arc<dyn RtpTransceiver>,
    video_transceiver: Arc<dyn RtpTransceiver>,
}

fn local_track(
    kind: RtpCodecKind,
    label: &str,
    ssrc: u32,
    codec: RTCRtpCodec,
) -> Arc<TrackLocalStaticRTP> {
    let id = format!("{label}-{ssrc:08x}");
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        format!("stream-{ssrc:08x}"),
        id,
        label.to_owned(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    )))
}

fn random_ssrc() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    (h.finish() as u32).max(1)
}

impl LocalAv {
    /// Adds the two send-only transceivers to `pc` (audio first, so its mid comes first).
    pub async fn add_to(pc: &Arc<dyn PeerConnection>) -> Result<LocalAv> {
        let (audio_ssrc, video_ssrc) = (random_ssrc(), random_ssrc());
        let opus = RTCRtpCodec {
            mime_type: "audio/opus".to_owned(),
            clock_rate: media::AUDIO_CLOCK_RATE,
            channels: 2,
            ..Default::default()
        };
        let vp8 = RTCRtpCodec {
            mime_type: "video/VP8".to_owned(),
            clock_rate: media::VIDEO_CLOCK_RATE,
            ..Default::default()
        };
        let audio = local_track(RtpCodecKind::Audio, "microphone", audio_ssrc, opus);
        let video = local_track(RtpCodecKind::Video, "camera", video_ssrc, vp8);
        let init = || {
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                ..Default::default()
            })
        };
        let audio_transceiver = pc
            .add_transceiver_from_track(audio.clone() as Arc<dyn TrackLocal>, init())
            .await
            .context("add audio transceiver")?;
        let video_transceiver = pc
            .add_transceiver_from_track(video.clone() as Arc<dyn TrackLocal>, init())
            .await
            .context("add video transceiver")?;
        Ok(LocalAv {
            audio,
            video,
            audio_ssrc,
            video_ssrc,
            audio_transceiver,
            video_transceiver,
        })
    }

    /// The (audio, video) mids; known once the offer is the local description.
    pub async fn mids(&self) -> Result<(String, String)> {
        let audio = self
            .audio_transceiver
            .mid()
            .await?
            .context("audio transceiver has no mid yet")?;
        let video = self
            .video_transceiver
            .mid()
            .await?
            .context("video transceiver has no mid yet")?;
        Ok((audio, video))
    }

    /// Starts sending (call once the answer is applied): 20 ms audio packets with the audio
    /// level extension, 30 fps VP8 frames with a keyframe every second and after every PLI/FIR.
    /// `sender_hash` goes into every payload's integrity record.
    ///
    /// Sending begins once `peer` is connected (packets written before DTLS completes
    /// would be dropped by webrtc-rs anyway).
    pub async fn start(
        &self,
        peer: &Peer,
        sender_hash: u32,
        stats: Arc<Observed<SendStats>>,
    ) -> Result<Vec<JoinHandle<()>>> {
        let audio_pt = negotiated_pt(&self.audio_transceiver, "audio/opus").await?;
        let video_pt = negotiated_pt(&self.video_transceiver, "video/VP8").await?;
        let mut tasks = Vec::new();

        let (track, stats_a) = (self.audio.clone(), stats.clone());
        let mut gen = AudioGenerator::new(self.audio_ssrc, audio_pt, sender_hash);
        let connected = peer.connected();
        tasks.push(tokio::spawn(async move {
            connected.await;
            let mut tick =
                tokio::time::interval(Duration::from_millis(media::AUDIO_PACKET_INTERVAL_MS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (pkt, level) = gen.next_packet();
                let ext = HeaderExtension::AudioLevel(AudioLevelExtension {
                    level,
                    voice: level < 127,
                });
                let res = track.write_rtp_with_extensions(pkt, &[ext]).await;
                stats_a.update(|s| match res {
                    Ok(()) => s.audio_packets += 1,
                    Err(_) => s.write_errors += 1,
                });
            }
        }));

        let keyframe_wanted = Arc::new(AtomicBool::new(false));
        let (track, stats_v, wanted) = (self.video.clone(), stats.clone(), keyframe_wanted.clone());
        let mut gen = VideoGenerator::new(self.video_ssrc, video_pt, sender_hash);
        let connected = peer.connected();
        tasks.push(tokio::spawn(async move {
            connected.await;
            let mut tick =
                tokio::time::interval(Duration::from_millis(media::VIDEO_FRAME_INTERVAL_MS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let before = gen.keyframes();
                let pkt = gen.next_packet(wanted.swap(false, Ordering::AcqRel));
                let keyframe = gen.keyframes() != before;
                let res = track.write_rtp(pkt).await;
                stats_v.update(|s| match res {
                    Ok(()) => {
                        s.video_frames += 1;
                        s.keyframes += u64::from(keyframe);
                    }
                    Err(_) => s.write_errors += 1,
                });
            }
        }));

        let track = self.video.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                if let TrackLocalEvent::OnRtcpPacket(packets) = event {
                    if packets.iter().any(|p| is_keyframe_request(p.as_ref())) {
                        keyframe_wanted.store(true, Ordering::Release);
                        stats.update(|s| s.keyframe_requests += 1);
                    }
                }
            }
        }));
        Ok(tasks)
    }
}

/// The payload type negotiated for `mime` on a transceiver's sender.
async fn negotiated_pt(transceiver: &Arc<dyn RtpTransceiver>, mime: &str) -> Result<u8> {
    let sender = transceiver
        .sender()
        .await?
        .context("transceiver has no sender")?;
    let params = sender.get_parameters().await.context("sender parameters")?;
    params
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
        .map(|c| c.payload_type)
        .with_context(|| format!("{mime} was not negotiated"))
}

/// Which remote track each subscriber mid carries (from the server's offers).
pub type MidMap = Arc<Mutex<HashMap<String, MidTrack>>>;

/// Reads every remote track `pc` reports (from `tracks`), counting and verifying its
/// packets into `stats`, attributed with `mids`.
pub fn spawn_receiver(
    pc: Arc<dyn PeerConnection>,
    mut tracks: mpsc::UnboundedReceiver<Arc<dyn TrackRemote>>,
    mids: MidMap,
    stats: Arc<RecvStats>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut readers = tokio::task::JoinSet::new();
        while let Some(track) = tracks.recv().await {
            readers.spawn(read_track(pc.clone(), track, mids.clone(), stats.clone()));
        }
        // Connection gone: let the readers drain, then end with them (aborted if we are).
        while readers.join_next().await.is_some() {}
    })
}

async fn mid_of(
    pc: &Arc<dyn PeerConnection>,
    receiver_id: webrtc::rtp_transceiver::RTCRtpReceiverId,
) -> Option<String> {
    for transceiver in pc.get_transceivers().await {
        if let Ok(Some(receiver)) = transceiver.receiver().await {
            if receiver.id() == receiver_id {
                return transceiver.mid().await.ok().flatten();
            }
        }
    }
    None
}

async fn read_track(
    pc: Arc<dyn PeerConnection>,
    track: Arc<dyn TrackRemote>,
    mids: MidMap,
    stats: Arc<RecvStats>,
) {
    let kind = match track.kind().await {
        RtpCodecKind::Video => TrackKind::Video,
        _ => TrackKind::Audio,
    };
    let mut mid = String::new();
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnOpen(init) => {
                mid = mid_of(&pc, init.receiver_id).await.unwrap_or_default();
                tracing::debug!(%mid, ?kind, "remote track open");
            }
            TrackRemoteEvent::OnRtpPacket(pkt) => {
                let now = Instant::now();
                let mapped = mids.lock().expect("mid map poisoned").get(&mid).cloned();
                let (track_id, participant_id) = match mapped {
                    Some(m) => (m.track_id, m.participant_id),
                    None => (format!("mid:{mid}"), String::new()),
                };
                let parsed = match kind {
                    TrackKind::Audio => {
                        media::parse_audio_payload(&pkt.payload).map(|r| (r, false))
                    }
                    TrackKind::Video => {
                        media::parse_vp8_payload(&pkt.payload).map(|f| (f.record, f.keyframe))
                    }
                };
                stats.update(|all| {
                    let s = all
                        .entry(track_id.clone())
                        .or_insert_with(|| RemoteTrackStats {
                            track_id,
                            participant_id: participant_id.clone(),
                            mid: mid.clone(),
                            kind,
                            packets: 0,
                            bytes: 0,
                            frames: 0,
                            keyframes: 0,
                            bad_payloads: 0,
                            foreign_payloads: 0,
                            packets_with_extensions: 0,
                            last_counter: None,
                            last_sender: None,
                            sender_switches: 0,
                            first_packet_at: None,
                            last_packet_at: None,
                        });
                    s.packets += 1;
                    s.bytes += pkt.payload.len() as u64;
                    s.packets_with_extensions += u64::from(!pkt.header.extensions.is_empty());
                    if kind == TrackKind::Audio || pkt.header.marker {
                        s.frames += 1;
                    }
                    match parsed {
                        Ok((record, keyframe)) => {
                            s.keyframes += u64::from(keyframe);
                            if s.last_sender.is_some_and(|h| h != record.sender_hash) {
                                s.sender_switches += 1;
                            }
                            s.last_sender = Some(record.sender_hash);
                            if !participant_id.is_empty()
                                && record.sender_hash != media::identity_hash(&participant_id)
                            {
                                s.foreign_payloads += 1;
                            }
                            s.last_counter = Some(
                                s.last_counter
                                    .map_or(record.counter, |c| c.max(record.counter)),
                            );
                        }
                        Err(e) => {
                            tracing::warn!(track = %s.track_id, "bad payload: {e}");
                            s.bad_payloads += 1;
                        }
                    }
                    s.first_packet_at.get_or_insert(now);
                    s.last_packet_at = Some(now);
                });
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}
