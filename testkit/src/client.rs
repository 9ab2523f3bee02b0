//! [`Client`]: one participant speaking the `/rtc` protocol with two webrtc-rs peer
//! connections (publisher and subscriber).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use rtc::peer_connection::configuration::RTCOfferOptions;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use webrtc::peer_connection::{PeerConnection, RTCIceCandidateInit, RTCSessionDescription};

use crate::media::identity_hash;
use crate::peer::{LocalAv, MidMap, Peer, spawn_receiver};
use crate::proto::{
    ClientMsg, MidTrack, ParticipantInfo, PcKind, PublishTrack, ServerMsg, TrackInfo, TrackKind,
};
use crate::stats::{Observed, RecvStats, RemoteTrackStats, SendStats};
use crate::ws::{self, WsSink, WsStream};

/// How long `connect`, `resume_ws` and `publish_av` wait for the server by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of [`Client::connect_with`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `auto_subscribe` of the `join` message.
    pub auto_subscribe: bool,
    /// Send locally gathered ICE candidates as `trickle` messages (the server does not need
    /// them: it is ICE-lite and learns the client's address from its checks).
    pub trickle: bool,
    /// How long to wait for `joined` and for the publisher `answer`.
    pub timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            auto_subscribe: true,
            trickle: false,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// One message from the server, as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    /// The parsed message ([`ServerMsg::Unknown`] if it did not parse, see `raw`).
    pub msg: ServerMsg,
    /// The JSON as sent.
    pub raw: Value,
}

/// How the WebSocket ended, if it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsClosed {
    /// Close frame code (e.g. 1000, 1009), or `None` if the connection ended without one.
    pub code: Option<u16>,
    pub reason: String,
}

/// Everything learnt from the server.
#[derive(Default)]
struct State {
    messages: Vec<Received>,
    me: Option<ParticipantInfo>,
    room: String,
    session_id: String,
    /// Everyone else, by participant id.
    participants: BTreeMap<String, ParticipantInfo>,
    /// Set when the current WebSocket ends.
    ws_closed: Option<WsClosed>,
    /// Failures answering subscriber offers or applying candidates.
    errors: Vec<String>,
}

impl State {
    fn describe(&self) -> String {
        let types: Vec<&str> = self.messages.iter().map(|r| r.msg.type_name()).collect();
        format!(
            "received {types:?}, ws_closed {:?}, errors {:?}",
            self.ws_closed, self.errors
        )
    }

    fn apply(&mut self, msg: &ServerMsg) {
        match msg {
            ServerMsg::Joined {
                room,
                participant,
                session_id,
                participants,
                ..
            } => {
                self.room = room.clone();
                self.session_id = session_id.clone();
                self.me = Some(participant.clone());
                self.participants = participants
                    .iter()
                    .map(|p| (p.id.clone(), p.clone()))
                    .collect();
            }
            ServerMsg::ParticipantJoined { participant } => {
                self.participants
                    .insert(participant.id.clone(), participant.clone());
            }
            ServerMsg::ParticipantLeft { participant_id, .. } => {
                self.participants.remove(participant_id);
            }
            ServerMsg::TrackPublished { track } => {
                if let Some(p) = self.participant_mut(&track.participant_id) {
                    p.tracks.retain(|t| t.id != track.id);
                    p.tracks.push(track.clone());
                }
            }
            ServerMsg::TrackUnpublished {
                track_id,
                participant_id,
            } => {
                if let Some(p) = self.participant_mut(participant_id) {
                    p.tracks.retain(|t| &t.id != track_id);
                }
            }
            ServerMsg::TrackMuted {
                track_id,
                participant_id,
                muted,
            } => {
                if let Some(p) = self.participant_mut(participant_id) {
                    p.tracks
                        .iter_mut()
                        .filter(|t| &t.id == track_id)
                        .for_each(|t| t.muted = *muted);
                }
            }
            _ => {}
        }
    }

    fn participant_mut(&mut self, id: &str) -> Option<&mut ParticipantInfo> {
        match &mut self.me {
            Some(me) if me.id == id => Some(me),
            _ => self.participants.get_mut(id),
        }
    }
}

/// State shared with the background tasks.
struct Shared {
    state: Arc<Observed<State>>,
    recv: Arc<RecvStats>,
    sent: Arc<Observed<SendStats>>,
    mids: MidMap,
    ws_tx: tokio::sync::Mutex<Option<WsSink>>,
    /// Whether a publisher offer / subscriber answer has been sent (trickling waits for it).
    offer_sent: tokio::sync::watch::Sender<bool>,
    answer_sent: tokio::sync::watch::Sender<bool>,
    /// Set once the client closes its peer connections: failures after that are expected.
    stopped: std::sync::atomic::AtomicBool,
}

impl Shared {
    async fn send_text(&self, text: String) -> Result<()> {
        let mut guard = self.ws_tx.lock().await;
        let sink = guard.as_mut().context("WebSocket is closed")?;
        sink.send(Message::Text(text.into()))
            .await
            .context("send on WebSocket")
    }

    fn record_error(&self, e: String) {
        if self.stopped.load(std::sync::atomic::Ordering::Acquire) {
            tracing::debug!("after close: {e}");
            return;
        }
        tracing::warn!("{e}");
        self.state.update(|s| s.errors.push(e));
    }
}

/// A subscriber offer to answer.
struct SubscriberOffer {
    sdp: String,
    offer_id: u64,
    tracks: Vec<MidTrack>,
}

/// A test participant: a `/rtc` WebSocket, a publisher and a subscriber peer connection,
/// synthetic media out and verified media in. Background tasks stop when it is dropped.
pub struct Client {
    base_url: String,
    options: ClientOptions,
    shared: Arc<Shared>,
    publisher: Peer,
    subscriber: Peer,
    offers: mpsc::UnboundedSender<SubscriberOffer>,
    /// The published tracks and how they were announced.
    local: tokio::sync::Mutex<Option<(LocalAv, Vec<PublishTrack>)>>,
    ws_reader: Mutex<Option<JoinHandle<()>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Mids of the published tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub audio_mid: String,
    pub video_mid: String,
}

impl Client {
    /// Connects with default options: opens `/rtc` on `base_url` (`http://127.0.0.1:8080`),
    /// sends `join` and waits for `joined`.
    pub async fn connect(base_url: &str, token: &str) -> Result<Client> {
        Self::connect_with(base_url, token, ClientOptions::default()).await
    }

    /// [`connect`](Self::connect) with options.
    pub async fn connect_with(
        base_url: &str,
        token: &str,
        options: ClientOptions,
    ) -> Result<Client> {
        let (publisher, pub_events) = Peer::new("publisher").await?;
        let (subscriber, sub_events) = Peer::new("subscriber").await?;
        let shared = Arc::new(Shared {
            state: Observed::new(State::default()),
            recv: Observed::new(Default::default()),
            sent: Observed::new(SendStats::default()),
            mids: Default::default(),
            ws_tx: tokio::sync::Mutex::new(None),
            stopped: Default::default(),
            offer_sent: tokio::sync::watch::channel(false).0,
            answer_sent: tokio::sync::watch::channel(false).0,
        });
        let (offers, offers_rx) = mpsc::unbounded_channel();
        let mut tasks = vec![
            spawn_receiver(
                subscriber.pc.clone(),
                sub_events.tracks,
                shared.mids.clone(),
                shared.recv.clone(),
            ),
            tokio::spawn(answer_offers(
                subscriber.pc.clone(),
                offers_rx,
                shared.clone(),
            )),
        ];
        if options.trickle {
            tasks.push(tokio::spawn(trickle(
                PcKind::Publisher,
                pub_events.candidates,
                shared.clone(),
            )));
            tasks.push(tokio::spawn(trickle(
                PcKind::Subscriber,
                sub_events.candidates,
                shared.clone(),
            )));
        }
        let client = Client {
            base_url: base_url.to_owned(),
            options,
            shared,
            publisher,
            subscriber,
            offers,
            local: Default::default(),
            ws_reader: Mutex::new(None),
            tasks: Mutex::new(tasks),
        };
        let join = ClientMsg::Join {
            auto_subscribe: client.options.auto_subscribe,
        };
        client.open_ws(token, join, false).await?;
        Ok(client)
    }

    /// Opens a WebSocket, sends `first` and waits for `joined` (with `resumed`).
    async fn open_ws(&self, token: &str, first: ClientMsg, resumed: bool) -> Result<()> {
        let (sink, stream) = ws::connect(&self.base_url, token).await?;
        let since = self.shared.state.update(|s| {
            s.ws_closed = None;
            s.messages.len()
        });
        *self.shared.ws_tx.lock().await = Some(sink);
        let reader = tokio::spawn(read_ws(
            stream,
            self.shared.clone(),
            self.offers.clone(),
            self.publisher.pc.clone(),
            self.subscriber.pc.clone(),
        ));
        if let Some(old) = self.ws_reader.lock().expect("lock").replace(reader) {
            old.abort();
        }
        self.send_msg(&first).await?;
        let what = if resumed {
            "joined (resumed)"
        } else {
            "joined"
        };
        let got = self
            .wait_reply(since, what, self.options.timeout, |m| {
                matches!(m, ServerMsg::Joined { .. })
            })
            .await?;
        if let ServerMsg::Joined { resumed: r, .. } = got.msg {
            if r != resumed {
                bail!("expected joined with resumed={resumed}, got resumed={r}");
            }
        }
        Ok(())
    }

    /// Waits for a message after index `since` matching `pred`; an `error` message or the
    /// WebSocket closing fails the wait.
    async fn wait_reply(
        &self,
        since: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&ServerMsg) -> bool,
    ) -> Result<Received> {
        let r =
            self.shared
                .state
                .wait(
                    timeout,
                    what,
                    |s| {
                        let new = s.messages.get(since..).unwrap_or_default();
                        if let Some(r) = new.iter().find(|r| pred(&r.msg)) {
                            return Some(Ok(r.clone()));
                        }
                        if let Some(r) = new.iter().find(|r| {
                            matches!(r.msg, ServerMsg::Error { .. } | ServerMsg::Left { .. })
                        }) {
                            return Some(Err(anyhow!(
                                "server replied {} while waiting for {what}",
                                r.raw
                            )));
                        }
                        s.ws_closed.as_ref().map(|c| {
                            Err(anyhow!("WebSocket closed ({c:?}) while waiting for {what}"))
                        })
                    },
                    State::describe,
                )
                .await?;
        r
    }

    /// Adds a microphone (Opus) and a camera (VP8) track to the publisher connection,
    /// negotiates them with the server and starts sending synthetic media.
    pub async fn publish_av(&self) -> Result<Published> {
        let mut local = self.local.lock().await;
        if local.is_some() {
            bail!("publish_av called twice");
        }
        let pc = &self.publisher.pc;
        let av = LocalAv::add_to(pc).await?;
        let offer = pc
            .create_offer(None)
            .await
            .context("create publisher offer")?;
        pc.set_local_description(offer.clone())
            .await
            .context("set publisher offer")?;
        let (audio_mid, video_mid) = av.mids().await?;
        let tracks = vec![
            PublishTrack {
                mid: audio_mid.clone(),
                source: "microphone".into(),
                name: None,
            },
            PublishTrack {
                mid: video_mid.clone(),
                source: "camera".into(),
                name: None,
            },
        ];
        self.exchange_publisher_offer(offer, tracks.clone()).await?;
        let hash = identity_hash(&self.participant_id());
        let tasks = av
            .start(&self.publisher, hash, self.shared.sent.clone())
            .await?;
        self.tasks.lock().expect("lock").extend(tasks);
        *local = Some((av, tracks));
        Ok(Published {
            audio_mid,
            video_mid,
        })
    }

    /// Renegotiates the publisher connection with a new offer (same tracks), restarting
    /// ICE if `ice_restart` (the protocol's publisher ICE restart).
    pub async fn renegotiate_publisher(&self, ice_restart: bool) -> Result<()> {
        let local = self.local.lock().await;
        let (_, tracks) = local.as_ref().context("nothing published yet")?;
        let pc = &self.publisher.pc;
        let offer = pc
            .create_offer(Some(RTCOfferOptions { ice_restart }))
            .await
            .context("create publisher offer")?;
        pc.set_local_description(offer.clone())
            .await
            .context("set publisher offer")?;
        self.exchange_publisher_offer(offer, tracks.clone()).await
    }

    /// Sends a publisher offer (already the local description), waits for the answer and
    /// applies it.
    async fn exchange_publisher_offer(
        &self,
        offer: RTCSessionDescription,
        tracks: Vec<PublishTrack>,
    ) -> Result<()> {
        let since = self.message_count();
        self.send_msg(&ClientMsg::Offer {
            sdp: offer.sdp,
            tracks,
        })
        .await?;
        self.shared.offer_sent.send_replace(true);
        let answer = self
            .wait_reply(since, "publisher answer", self.options.timeout, |m| {
                matches!(m, ServerMsg::Answer { .. })
            })
            .await?;
        let ServerMsg::Answer { sdp } = answer.msg else {
            unreachable!("waited for an answer")
        };
        let answer = RTCSessionDescription::answer(sdp).context("parse publisher answer")?;
        self.publisher
            .pc
            .set_remote_description(answer)
            .await
            .context("apply publisher answer")
    }

    /// Asks the server to restart ICE on the subscriber connection; its new offer is
    /// answered in the background like any other.
    pub async fn restart_subscriber_ice(&self) -> Result<()> {
        self.send_msg(&ClientMsg::IceRestart).await
    }

    /// Sends a protocol message.
    pub async fn send_msg(&self, msg: &ClientMsg) -> Result<()> {
        self.shared.send_text(serde_json::to_string(msg)?).await
    }

    /// Sends any JSON value as one text frame.
    pub async fn send(&self, msg: Value) -> Result<()> {
        self.shared.send_text(msg.to_string()).await
    }

    /// Sends a text frame as is (e.g. malformed JSON).
    pub async fn send_raw_text(&self, text: &str) -> Result<()> {
        self.shared.send_text(text.to_owned()).await
    }

    /// Our participant id (from `joined`).
    pub fn participant_id(&self) -> String {
        self.shared
            .state
            .read(|s| s.me.as_ref().map(|p| p.id.clone()).unwrap_or_default())
    }

    /// Our identity (from `joined`).
    pub fn identity(&self) -> String {
        self.shared.state.read(|s| {
            s.me.as_ref()
                .map(|p| p.identity.clone())
                .unwrap_or_default()
        })
    }

    /// The session id for `resume` (from the last `joined`).
    pub fn session_id(&self) -> String {
        self.shared.state.read(|s| s.session_id.clone())
    }

    /// The room name (from `joined`).
    pub fn room(&self) -> String {
        self.shared.state.read(|s| s.room.clone())
    }

    /// Everyone else in the room with their tracks, as the server's messages tell.
    pub fn participants(&self) -> Vec<ParticipantInfo> {
        self.shared
            .state
            .read(|s| s.participants.values().cloned().collect())
    }

    /// Our own tracks as the server announced them (`track_published` for us).
    pub fn my_tracks(&self) -> Vec<TrackInfo> {
        self.shared
            .state
            .read(|s| s.me.as_ref().map(|p| p.tracks.clone()).unwrap_or_default())
    }

    /// Waits until the server has announced our own audio and video tracks
    /// (`track_published`), e.g. after [`publish_av`](Self::publish_av).
    pub async fn wait_own_av_published(&self, timeout: Duration) -> Result<Vec<TrackInfo>> {
        self.shared
            .state
            .wait(
                timeout,
                "our audio and video track_published",
                |s| {
                    let tracks = &s.me.as_ref()?.tracks;
                    let has = |k| tracks.iter().any(|t: &TrackInfo| t.kind == k);
                    (has(TrackKind::Audio) && has(TrackKind::Video)).then(|| tracks.clone())
                },
                State::describe,
            )
            .await
    }

    /// Every message received so far, in order.
    pub fn messages(&self) -> Vec<Received> {
        self.shared.state.read(|s| s.messages.clone())
    }

    /// Number of messages received so far (a cursor for [`wait_for_after`](Self::wait_for_after)).
    pub fn message_count(&self) -> usize {
        self.shared.state.read(|s| s.messages.len())
    }

    /// How the current WebSocket ended, if it did.
    pub fn ws_closed(&self) -> Option<WsClosed> {
        self.shared.state.read(|s| s.ws_closed.clone())
    }

    /// Failures handling server offers/candidates (should be empty).
    pub fn errors(&self) -> Vec<String> {
        self.shared.state.read(|s| s.errors.clone())
    }

    /// Waits for any message so far or later that matches `pred`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&ServerMsg) -> bool,
    ) -> Result<Received> {
        self.wait_for_after(0, timeout, pred).await
    }

    /// Waits for a message with index >= `since` (see [`message_count`](Self::message_count))
    /// that matches `pred`.
    pub async fn wait_for_after(
        &self,
        since: usize,
        timeout: Duration,
        pred: impl Fn(&ServerMsg) -> bool,
    ) -> Result<Received> {
        self.shared
            .state
            .wait(
                timeout,
                "a matching server message",
                |s| {
                    s.messages
                        .get(since..)
                        .unwrap_or_default()
                        .iter()
                        .find(|r| pred(&r.msg))
                        .cloned()
                },
                State::describe,
            )
            .await
    }

    /// Waits for a message of type `type_name` (e.g. `"participant_left"`), so far or later.
    pub async fn wait_for_type(&self, type_name: &str, timeout: Duration) -> Result<Received> {
        self.shared
            .state
            .wait(
                timeout,
                &format!("a {type_name} message"),
                |s| {
                    s.messages
                        .iter()
                        .find(|r| r.msg.type_name() == type_name)
                        .cloned()
                },
                State::describe,
            )
            .await
    }

    /// Waits until the current WebSocket has ended.
    pub async fn wait_ws_closed(&self, timeout: Duration) -> Result<WsClosed> {
        self.shared
            .state
            .wait(
                timeout,
                "the WebSocket to close",
                |s| s.ws_closed.clone(),
                State::describe,
            )
            .await
    }

    /// Waits until the room state (from `joined`/`participant_*`/`track_*` messages)
    /// satisfies `pred`.
    pub async fn wait_participants(
        &self,
        timeout: Duration,
        pred: impl Fn(&[ParticipantInfo]) -> bool,
    ) -> Result<Vec<ParticipantInfo>> {
        self.shared
            .state
            .wait(
                timeout,
                "the participants to match",
                |s| {
                    let ps: Vec<ParticipantInfo> = s.participants.values().cloned().collect();
                    pred(&ps).then_some(ps)
                },
                |s| {
                    format!(
                        "participants {:?}",
                        s.participants.values().collect::<Vec<_>>()
                    )
                },
            )
            .await
    }

    /// Per remote track, what has been received (sorted by participant, then kind).
    pub fn stats(&self) -> Vec<RemoteTrackStats> {
        let mut v: Vec<RemoteTrackStats> = self.shared.recv.read(|m| m.values().cloned().collect());
        v.sort_by(|a, b| {
            (&a.participant_id, a.kind as u8, &a.track_id).cmp(&(
                &b.participant_id,
                b.kind as u8,
                &b.track_id,
            ))
        });
        v
    }

    /// What this client has sent.
    pub fn send_stats(&self) -> SendStats {
        self.shared.sent.read(|s| s.clone())
    }

    /// Waits until at least `min_packets` packets of `kind` from `participant_id` arrived.
    pub async fn wait_media_from(
        &self,
        participant_id: &str,
        kind: TrackKind,
        min_packets: u64,
        timeout: Duration,
    ) -> Result<RemoteTrackStats> {
        self.shared
            .recv
            .wait(
                timeout,
                &format!(
                    "{min_packets} {kind:?} packets from {participant_id} at {}",
                    self.participant_id()
                ),
                |m| {
                    m.values()
                        .find(|s| {
                            s.participant_id == participant_id
                                && s.kind == kind
                                && s.packets >= min_packets
                        })
                        .cloned()
                },
                |m| format!("{:?}", m.values().collect::<Vec<_>>()),
            )
            .await
    }

    /// Waits until at least `min_packets` audio and `min_packets` video packets arrived from
    /// each of `participant_ids`, all intact (no bad or misattributed payloads, checked
    /// once the counts are reached).
    pub async fn wait_av_from_all(
        &self,
        participant_ids: &[String],
        min_packets: u64,
        timeout: Duration,
    ) -> Result<Vec<RemoteTrackStats>> {
        let got = self
            .wait_stats(
                timeout,
                &format!("{min_packets} audio+video packets from each of {participant_ids:?}"),
                |v| {
                    participant_ids.iter().all(|p| {
                        [TrackKind::Audio, TrackKind::Video].iter().all(|k| {
                            v.iter().any(|s| {
                                &s.participant_id == p && s.kind == *k && s.packets >= min_packets
                            })
                        })
                    })
                },
            )
            .await?;
        if let Some(bad) = got
            .iter()
            .find(|s| s.bad_payloads > 0 || s.foreign_payloads > 0)
        {
            bail!(
                "{} received corrupt or misrouted media: {bad:?}",
                self.participant_id()
            );
        }
        Ok(got)
    }

    /// Waits until `pred` holds for the received-track stats; `what` names it in the error.
    pub async fn wait_stats(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[RemoteTrackStats]) -> bool,
    ) -> Result<Vec<RemoteTrackStats>> {
        self.shared
            .recv
            .wait(
                timeout,
                what,
                |m| {
                    let v: Vec<RemoteTrackStats> = m.values().cloned().collect();
                    pred(&v).then_some(v)
                },
                |m| format!("{:?}", m.values().collect::<Vec<_>>()),
            )
            .await
    }

    /// Drops the WebSocket abruptly (no close frame), keeping both peer connections and
    /// media running, e.g. to test [`resume_ws`](Self::resume_ws).
    pub async fn close_ws(&self) {
        if let Some(reader) = self.ws_reader.lock().expect("lock").take() {
            reader.abort();
        }
        self.shared.ws_tx.lock().await.take();
        self.shared.state.update(|s| {
            s.ws_closed.get_or_insert(WsClosed {
                code: None,
                reason: "closed by client".into(),
            });
        });
    }

    /// Opens a new WebSocket and takes the session over with `resume`; waits for `joined`
    /// with `resumed: true`. The peer connections (and media) are the same as before.
    pub async fn resume_ws(&self, token: &str) -> Result<()> {
        self.close_ws().await;
        let session_id = self.session_id();
        self.open_ws(token, ClientMsg::Resume { session_id }, true)
            .await
    }

    /// Sends `leave`, waits (up to the client timeout) for the server to close the
    /// WebSocket, then closes the peer connections.
    pub async fn leave(&self) -> Result<()> {
        self.send_msg(&ClientMsg::Leave).await?;
        let closed = self.wait_ws_closed(self.options.timeout).await;
        self.close_ws().await;
        self.stop().await;
        closed.map(|_| ())
    }

    /// Closes the peer connections and the WebSocket (with a close frame) and stops media.
    pub async fn close(&self) {
        if let Some(sink) = self.shared.ws_tx.lock().await.as_mut() {
            let _ = sink.send(Message::Close(None)).await;
        }
        self.close_ws().await;
        self.stop().await;
    }

    async fn stop(&self) {
        self.shared
            .stopped
            .store(true, std::sync::atomic::Ordering::Release);
        for task in self.tasks.lock().expect("lock").drain(..) {
            task.abort();
        }
        let _ = self.publisher.pc.close().await;
        let _ = self.subscriber.pc.close().await;
    }

    /// The publisher peer connection (for tests that poke at webrtc-rs directly).
    pub fn publisher_pc(&self) -> &Arc<dyn PeerConnection> {
        &self.publisher.pc
    }

    /// The subscriber peer connection.
    pub fn subscriber_pc(&self) -> &Arc<dyn PeerConnection> {
        &self.subscriber.pc
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(reader) = self
            .ws_reader
            .lock()
            .map(|mut r| r.take())
            .unwrap_or_default()
        {
            reader.abort();
        }
        for task in self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default()
        {
            task.abort();
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (a, b) = (self.publisher.pc.clone(), self.subscriber.pc.clone());
            rt.spawn(async move {
                let _ = a.close().await;
                let _ = b.close().await;
            });
        }
    }
}

/// Reads server messages until the WebSocket ends: records them, updates the room state,
/// queues subscriber offers and applies server candidates.
async fn read_ws(
    mut stream: WsStream,
    shared: Arc<Shared>,
    offers: mpsc::UnboundedSender<SubscriberOffer>,
    publisher: Arc<dyn PeerConnection>,
    subscriber: Arc<dyn PeerConnection>,
) {
    let closed = loop {
        let text = match stream.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                break WsClosed {
                    code: frame.as_ref().map(|f| u16::from(f.code)),
                    reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                };
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                break WsClosed {
                    code: None,
                    reason: e.to_string(),
                };
            }
            None => {
                break WsClosed {
                    code: None,
                    reason: "connection ended".into(),
                };
            }
        };
        let raw: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                shared.record_error(format!("server sent invalid JSON ({e}): {text}"));
                continue;
            }
        };
        let msg = match serde_json::from_value::<ServerMsg>(raw.clone()) {
            Ok(m) => m,
            Err(e) => {
                shared.record_error(format!("unparsable server message ({e}): {text}"));
                ServerMsg::Unknown
            }
        };
        match &msg {
            ServerMsg::Offer {
                sdp,
                offer_id,
                tracks,
            } => {
                let _ = offers.send(SubscriberOffer {
                    sdp: sdp.clone(),
                    offer_id: *offer_id,
                    tracks: tracks.clone(),
                });
            }
            ServerMsg::Trickle { pc, candidate } => {
                let target = if *pc == PcKind::Publisher {
                    &publisher
                } else {
                    &subscriber
                };
                let line = candidate.strip_prefix("a=").unwrap_or(candidate).to_owned();
                let init = RTCIceCandidateInit {
                    candidate: line,
                    ..Default::default()
                };
                if let Err(e) = target.add_ice_candidate(init).await {
                    shared.record_error(format!("add {pc:?} candidate {candidate}: {e}"));
                }
            }
            _ => {}
        }
        shared.state.update(|s| {
            s.apply(&msg);
            s.messages.push(Received {
                at: Instant::now(),
                msg,
                raw,
            });
        });
    };
    tracing::debug!("WebSocket ended: {closed:?}");
    shared.state.update(|s| {
        s.ws_closed.get_or_insert(closed);
    });
}

/// Answers subscriber offers one at a time, in order.
async fn answer_offers(
    pc: Arc<dyn PeerConnection>,
    mut offers: mpsc::UnboundedReceiver<SubscriberOffer>,
    shared: Arc<Shared>,
) {
    while let Some(offer) = offers.recv().await {
        {
            let mut mids = shared.mids.lock().expect("mid map poisoned");
            for t in &offer.tracks {
                mids.insert(t.mid.clone(), t.clone());
            }
        }
        let offer_id = offer.offer_id;
        let answer = async {
            let desc = RTCSessionDescription::offer(offer.sdp).context("parse offer")?;
            pc.set_remote_description(desc)
                .await
                .context("set remote offer")?;
            let answer = pc.create_answer(None).await.context("create answer")?;
            pc.set_local_description(answer.clone())
                .await
                .context("set local answer")?;
            anyhow::Ok(answer.sdp)
        }
        .await;
        match answer {
            Ok(sdp) => {
                let msg = ClientMsg::Answer { sdp, offer_id };
                // Not an error if the WebSocket is down: the server sends an unanswered
                // offer again after `resume`.
                if let Err(e) = shared
                    .send_text(serde_json::to_string(&msg).unwrap_or_default())
                    .await
                {
                    tracing::debug!("answer to offer {offer_id} not sent: {e:#}");
                } else {
                    shared.answer_sent.send_replace(true);
                }
            }
            Err(e) => shared.record_error(format!("subscriber offer {offer_id}: {e:#}")),
        }
    }
}

/// Forwards locally gathered candidates as `trickle` messages.
async fn trickle(
    pc: PcKind,
    mut candidates: mpsc::UnboundedReceiver<RTCIceCandidateInit>,
    shared: Arc<Shared>,
) {
    // Candidates are gathered from set_local_description on, but the server only knows the
    // connection once our description (publisher offer / subscriber answer) reached it.
    let mut described = match pc {
        PcKind::Publisher => shared.offer_sent.subscribe(),
        PcKind::Subscriber => shared.answer_sent.subscribe(),
    };
    if described.wait_for(|sent| *sent).await.is_err() {
        return;
    }
    while let Some(c) = candidates.recv().await {
        let msg = ClientMsg::Trickle {
            pc,
            candidate: c.candidate,
        };
        if let Err(e) = shared
            .send_text(serde_json::to_string(&msg).unwrap_or_default())
            .await
        {
            tracing::debug!("trickle not sent: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::TrackInfo;

    fn participant(id: &str) -> ParticipantInfo {
        ParticipantInfo {
            id: id.into(),
            identity: format!("i-{id}"),
            name: String::new(),
            tracks: vec![],
        }
    }

    fn track(id: &str, participant_id: &str, kind: TrackKind) -> TrackInfo {
        TrackInfo {
            id: id.into(),
            participant_id: participant_id.into(),
            kind,
            source: "camera".into(),
            name: None,
            layers: 1,
            muted: false,
            codec: String::new(),
        }
    }

    #[test]
    fn room_state_follows_the_messages() {
        let mut s = State::default();
        s.apply(&ServerMsg::Joined {
            room: "r".into(),
            participant: participant("PA_2"),
            session_id: "sess".into(),
            resume_window_secs: 10,
            participants: vec![participant("PA_1")],
            resumed: false,
        });
        assert_eq!((s.room.as_str(), s.session_id.as_str()), ("r", "sess"));
        s.apply(&ServerMsg::ParticipantJoined {
            participant: participant("PA_3"),
        });
        s.apply(&ServerMsg::TrackPublished {
            track: track("TR_1", "PA_1", TrackKind::Audio),
        });
        s.apply(&ServerMsg::TrackPublished {
            track: track("TR_2", "PA_2", TrackKind::Video),
        });
        s.apply(&ServerMsg::TrackMuted {
            track_id: "TR_1".into(),
            participant_id: "PA_1".into(),
            muted: true,
        });
        assert!(s.participants["PA_1"].tracks[0].muted);
        assert_eq!(s.me.as_ref().unwrap().tracks[0].id, "TR_2");
        s.apply(&ServerMsg::TrackUnpublished {
            track_id: "TR_1".into(),
            participant_id: "PA_1".into(),
        });
        assert!(s.participants["PA_1"].tracks.is_empty());
        s.apply(&ServerMsg::ParticipantLeft {
            participant_id: "PA_1".into(),
            identity: "i-PA_1".into(),
        });
        assert_eq!(s.participants.keys().collect::<Vec<_>>(), vec!["PA_3"]);
    }

    /// Tests may run clients in spawned tasks.
    #[allow(dead_code)]
    fn client_futures_are_send(c: &'static Client) {
        fn send<T: Send>(_: T) {}
        send(Client::connect("", ""));
        send(c.publish_av());
        send(c.resume_ws(""));
        send(c.leave());
        send(c.wait_media_from("", TrackKind::Audio, 1, DEFAULT_TIMEOUT));
        send(c.wait_for(DEFAULT_TIMEOUT, |_| true));
    }
}
