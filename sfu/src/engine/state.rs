//! The engine's objects: rooms, participants, peer connections, tracks, subscriptions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use common::Grants;
use str0m::change::SdpPendingOffer;
use str0m::media::{Mid, Pt, Rid};
use str0m::rtp::Ssrc;
use str0m::Rtc;
use tokio::sync::mpsc;

pub use super::ids::{ConnId, PartKey, PeerKey, SubKey, TrackKey};
use crate::forward::{Codec, LayerSelector, Rewriter, SpeakerDetector, Throttle};
use crate::proto::{PcKind, PublishTrack, Quality, ServerMsg, Source, TrackKind};

/// Where the engine sends a participant's signalling messages.
pub type SignalTx = mpsc::Sender<ServerMsg>;

pub struct Room {
    /// `room{room=..}`: the parent of its participants' spans.
    pub span: tracing::Span,
    pub participants: Vec<PartKey>,
    pub empty_since: Option<Instant>,
    pub speakers: SpeakerDetector<PartKey>,
}

pub struct PendingOffer {
    pub id: u64,
    pub pending: SdpPendingOffer,
    pub msg: ServerMsg,
}

pub struct Participant {
    /// `participant{participant=..}` under the room's span.
    pub span: tracing::Span,
    pub id: String,
    pub identity: String,
    pub name: String,
    pub room: String,
    pub grants: Grants,
    /// The device session of the access token, if any: revoking it removes us.
    pub sid: Option<String>,
    pub session_id: String,
    /// How the participant is reached, and whether its resume window runs.
    pub link: Link,
    pub publisher: Option<PeerKey>,
    pub subscriber: Option<PeerKey>,
    pub tracks: Vec<TrackKey>,
    pub subs: Vec<SubKey>,
    pub auto_subscribe: bool,
    /// Track descriptions from the client's offers, by mid.
    pub publish_meta: HashMap<String, PublishTrack>,
    pub next_offer_id: u64,
    pub pending_offer: Option<PendingOffer>,
    /// Changes were made while an offer was out: offer again after the answer.
    pub offer_again: bool,
    pub ice_restart: bool,
    pub has_channel: bool,
    /// Subscriber transceivers to stop at the next offer.
    pub stop_mids: Vec<Mid>,
    /// Subscriber bandwidth estimate (bps), from TWCC.
    pub bwe: Option<u64>,
    /// Fraction of packets lost on the publisher connection, last report.
    pub loss: f32,
    /// Set for a WHIP or WHEP session (no WebSocket; driven over HTTP).
    pub http: Option<HttpSession>,
}

/// A participant's signalling link. The resume window runs exactly while it is
/// [`Link::Detached`]: every way a WebSocket ends (client close, send failure, a slow
/// reader dropped, a refused message queue) detaches it, and only `resume` (or, for
/// WHIP/WHEP, media connecting again) attaches it again. A participant detached for the
/// resume window is removed.
pub enum Link {
    /// A `/rtc` WebSocket is attached: messages go to `tx`.
    Ws { conn: ConnId, tx: SignalTx },
    /// No signalling since `since`. `conn` is the last WebSocket, whose `leave` and close
    /// still count until it is gone.
    Detached { since: Instant, conn: Option<ConnId> },
    /// A WHIP/WHEP session with its media connected (it has no WebSocket).
    Http,
}

impl Link {
    pub fn detached_since(&self) -> Option<Instant> {
        match self {
            Link::Detached { since, .. } => Some(*since),
            _ => None,
        }
    }

    /// The WebSocket this link knows of, attached or last.
    pub fn conn(&self) -> Option<ConnId> {
        match self {
            Link::Ws { conn, .. } => Some(*conn),
            Link::Detached { conn, .. } => *conn,
            Link::Http => None,
        }
    }
}

/// A participant made by `POST /whip/{room}` or `POST /whep/{room}`.
pub struct HttpSession {
    /// The resource id in the session's `Location`.
    pub resource: String,
    /// The client's ICE ufrag: a PATCH with another one restarts ICE.
    pub remote_ufrag: String,
    /// WHEP: what the session plays. `None` for WHIP.
    pub whep: Option<Whep>,
}

pub struct Whep {
    /// Play only this participant (id or identity); else the whole room.
    pub target: Option<String>,
    /// The sending transceivers the client offered, in offer order.
    pub slots: Vec<Slot>,
}

/// One transceiver of a WHEP session: it carries one room track at a time, switching
/// to another when that one ends, under the same SSRC with continuous numbering.
pub struct Slot {
    pub mid: Mid,
    pub kind: TrackKind,
    pub sub: Option<SubKey>,
    /// The rewriter of the last subscription, so the next continues its numbering.
    pub carry: Option<Rewriter>,
}

pub struct Peer {
    /// Unique for the engine's lifetime (slab keys are reused).
    pub uid: u64,
    /// Boxed: an `Rtc` is ~10 KiB inline, and the peer slab keeps its peak capacity;
    /// boxed, a free slot costs a few hundred bytes and the stack's memory goes back.
    pub rtc: Box<Rtc>,
    pub part: PartKey,
    pub kind: PcKind,
    pub ufrag: String,
    pub addrs: Vec<SocketAddr>,
    /// Consent by media, and the bounds on addresses and candidates.
    pub live: super::liveness::Liveness,
    /// Since when ICE has been disconnected (no STUN and no media on any path).
    pub ice_down_since: Option<Instant>,
    pub next_timeout: Option<Instant>,
    pub failed: bool,
    /// Fault injection: the next input panics inside the WebRTC stack's call.
    #[cfg(feature = "fault-injection")]
    pub inject_panic: bool,
    /// Publisher: incoming SSRC -> (track, layer).
    pub ssrc_map: HashMap<Ssrc, (TrackKey, u8)>,
    /// Publisher: mid -> track.
    pub mid_track: HashMap<Mid, TrackKey>,
    /// Subscriber: mid -> subscription.
    pub mid_sub: HashMap<Mid, SubKey>,
    /// Subscriber: NACK totals last reported per mid.
    pub egress_nacks: HashMap<Mid, u64>,
}

pub struct Layer {
    pub rid: Option<Rid>,
    pub bytes: u64,
    pub bitrate: u64,
    pub last_packet: Option<Instant>,
    pub active: bool,
}

pub struct Track {
    /// `track{track=..}` under its owner's span.
    pub span: tracing::Span,
    pub id: String,
    pub owner: PartKey,
    pub peer: PeerKey,
    pub mid: Mid,
    pub kind: TrackKind,
    pub source: Source,
    pub name: Option<String>,
    pub codec: Codec,
    pub clock_rate: u32,
    pub layers: Vec<Layer>,
    pub muted: bool,
    pub subs: Vec<SubKey>,
    pub throttles: Vec<Throttle>,
    pub used_qualities: Vec<Quality>,
}

pub struct Sub {
    pub track: TrackKey,
    pub part: PartKey,
    pub peer: PeerKey,
    pub mid: Option<Mid>,
    pub ssrc: Option<Ssrc>,
    pub pt: Option<Pt>,
    pub rewriter: Rewriter,
    pub selector: LayerSelector,
    pub max_quality: Quality,
    pub paused: bool,
}

impl Track {
    pub fn info(&self, participant_id: &str) -> crate::proto::TrackInfo {
        crate::proto::TrackInfo {
            id: self.id.clone(),
            participant_id: participant_id.to_string(),
            kind: self.kind,
            source: self.source,
            name: self.name.clone(),
            layers: self.layers.len() as u8,
            muted: self.muted,
            codec: self.codec.mime().to_string(),
        }
    }

    pub fn active_layers(&self) -> [bool; 3] {
        let mut a = [false; 3];
        for (i, l) in self.layers.iter().enumerate().take(3) {
            a[i] = l.active;
        }
        a
    }

    pub fn bitrates(&self) -> [u64; 3] {
        let mut b = [0; 3];
        for (i, l) in self.layers.iter().enumerate().take(3) {
            b[i] = l.bitrate;
        }
        b
    }
}

/// Orders simulcast rids lowest quality first: by well-known names, else as given.
pub fn order_rids(rids: &[String]) -> Vec<String> {
    fn rank(r: &str) -> Option<u8> {
        match r.to_ascii_lowercase().as_str() {
            "q" | "l" | "low" | "0" | "quarter" => Some(0),
            "h" | "m" | "mid" | "medium" | "1" | "half" => Some(1),
            "f" | "hi" | "high" | "2" | "full" => Some(2),
            _ => None,
        }
    }
    if rids.iter().all(|r| rank(r).is_some()) {
        let mut v = rids.to_vec();
        v.sort_by_key(|r| rank(r));
        v
    } else {
        rids.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rid_ordering() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(order_rids(&s(&["f", "h", "q"])), s(&["q", "h", "f"]));
        assert_eq!(order_rids(&s(&["high", "low", "mid"])), s(&["low", "mid", "high"]));
        assert_eq!(order_rids(&s(&["a", "b", "c"])), s(&["a", "b", "c"]));
    }
}
