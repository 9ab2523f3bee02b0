//! The `/rtc` negotiation protocol: JSON messages over a WebSocket, one object per text
//! frame, tagged by `"type"`. Documented with a complete exchange in `docs/protocol.md`.
//!
//! Each participant has two peer connections so that offers never collide (no glare):
//! - the **publisher** connection carries what the client sends; the client makes every
//!   offer on it (`offer` -> `answer`);
//! - the **subscriber** connection carries what the client receives; the server makes
//!   every offer on it (`offer` -> `answer`, told apart by `pc`), whenever tracks come and go.

use serde::{Deserialize, Serialize};

/// Which of the participant's two peer connections a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PcKind {
    Publisher,
    Subscriber,
}

impl std::fmt::Display for PcKind {
    /// As on the wire (and in logs): `publisher`, `subscriber`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PcKind::Publisher => "publisher",
            PcKind::Subscriber => "subscriber",
        })
    }
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    Audio,
    Video,
}

impl std::fmt::Display for TrackKind {
    /// As on the wire (and in logs): `audio`, `video`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrackKind::Audio => "audio",
            TrackKind::Video => "video",
        })
    }
}

/// Where a track comes from; limited by the token's `sources` grant.
pub use common::token::Source;

/// A simulcast layer, lowest quality first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    Low,
    Medium,
    High,
}

impl Quality {
    pub const ALL: [Quality; 3] = [Quality::Low, Quality::Medium, Quality::High];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: usize) -> Quality {
        Quality::ALL[i.min(2)]
    }
}

/// Describes a track the client is publishing, by the `mid` of its transceiver on the
/// publisher connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishTrack {
    pub mid: String,
    pub source: Source,
    /// Free-form label shown to others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A published track as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    pub id: String,
    pub participant_id: String,
    pub kind: TrackKind,
    pub source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Number of simulcast layers (1 when not simulcast).
    pub layers: u8,
    pub muted: bool,
    /// Codec MIME type, e.g. `video/VP8`, `audio/opus`.
    pub codec: String,
}

/// A participant as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub id: String,
    pub identity: String,
    pub name: String,
    pub tracks: Vec<TrackInfo>,
}

/// One entry of the active-speaker list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeakerInfo {
    pub participant_id: String,
    /// Loudness 0.0 (silence) ..= 1.0 (loudest).
    pub level: f32,
}

/// Messages from the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    /// First message of a new session.
    Join {
        /// Subscribe to every track in the room, now and later (default true).
        #[serde(default = "yes")]
        auto_subscribe: bool,
    },
    /// First message of a reconnected WebSocket: take over the session `session_id`
    /// (from `joined`) within the resume window. The token must carry the same identity.
    Resume { session_id: String },
    /// SDP offer on the publisher connection, with the tracks it carries.
    Offer {
        sdp: String,
        #[serde(default)]
        tracks: Vec<PublishTrack>,
    },
    /// SDP answer to the server's subscriber offer `offer_id`.
    Answer { sdp: String, offer_id: u64 },
    /// A trickled ICE candidate (`candidate:...` line, with or without `a=`).
    Trickle { pc: PcKind, candidate: String },
    /// Receive these tracks.
    Subscribe { track_ids: Vec<String> },
    /// Stop receiving these tracks.
    Unsubscribe { track_ids: Vec<String> },
    /// Highest simulcast layer wanted for a track, or pause it (`paused: true`).
    SetQuality {
        track_id: String,
        #[serde(default = "high")]
        max_quality: Quality,
        #[serde(default)]
        paused: bool,
    },
    /// Mute or unmute a published track. A muted track is not forwarded.
    Mute { track_id: String, muted: bool },
    /// Stop publishing a track.
    Unpublish { track_id: String },
    /// Restart ICE on the subscriber connection (the server sends a new offer). Restart
    /// the publisher connection by sending an `offer` made with `iceRestart`.
    IceRestart,
    /// Keep-alive; answered with `pong`.
    Ping,
    /// Leave the room.
    Leave,
}

fn yes() -> bool {
    true
}
fn high() -> Quality {
    Quality::High
}

/// Messages from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// Answer to `join` or `resume`: who you are and who is here.
    Joined {
        room: String,
        participant: ParticipantInfo,
        /// Secret handle for `resume` after a dropped WebSocket.
        session_id: String,
        /// Seconds within which a dropped WebSocket may resume.
        resume_window_secs: u64,
        /// Everyone else in the room, with their tracks.
        participants: Vec<ParticipantInfo>,
        /// True when this answers `resume`.
        resumed: bool,
    },
    /// SDP answer on the publisher connection.
    Answer { sdp: String },
    /// SDP offer on the subscriber connection; reply with `answer` and the same `offer_id`.
    Offer {
        sdp: String,
        offer_id: u64,
        /// Which track each transceiver (by mid) carries.
        tracks: Vec<MidTrack>,
    },
    /// A server ICE candidate.
    Trickle { pc: PcKind, candidate: String },
    ParticipantJoined { participant: ParticipantInfo },
    ParticipantLeft { participant_id: String, identity: String },
    TrackPublished { track: TrackInfo },
    TrackUnpublished { track_id: String, participant_id: String },
    TrackMuted { track_id: String, participant_id: String, muted: bool },
    /// The subscribed layers of one of your published tracks changed: layers nobody
    /// receives may be paused by the client (`quality` lists the ones in use).
    SubscribedQuality { track_id: String, qualities: Vec<Quality> },
    /// Active speakers, loudest first; sent when the set changes.
    Speakers { speakers: Vec<SpeakerInfo> },
    /// Connection quality of each participant (sent every few seconds).
    ConnectionQuality { updates: Vec<QualityUpdate> },
    Pong,
    /// Something the client sent could not be done. The session goes on.
    Error { code: ErrorCode, message: String },
    /// The server ended the session (`reason` says why); the WebSocket closes next.
    Left { reason: String },
}

/// Mapping of a subscriber transceiver to the track it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MidTrack {
    pub mid: String,
    pub track_id: String,
    pub participant_id: String,
}

/// Connection quality of one participant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityUpdate {
    pub participant_id: String,
    pub quality: ConnQuality,
    /// Fraction of packets lost (0..=1) over the last interval.
    pub loss: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnQuality {
    Excellent,
    Good,
    Poor,
    Lost,
}

/// Machine-readable error kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The text frame is not JSON or not a known message.
    BadMessage,
    /// The SDP could not be parsed or accepted.
    BadSdp,
    /// A message arrived in a state where it makes no sense (e.g. `offer` before `join`).
    BadState,
    /// The token does not allow it.
    NotAllowed,
    /// No such track (or session, for `resume`).
    NotFound,
    /// The room is full.
    RoomFull,
    /// Too many messages or too large.
    Limit,
    /// The server failed; the session may go on.
    Internal,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logs name kinds as the protocol does.
    #[test]
    fn kinds_display_as_on_the_wire() {
        for k in [PcKind::Publisher, PcKind::Subscriber] {
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        for k in [TrackKind::Audio, TrackKind::Video] {
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
    }
}
