//! The `/rtc` WebSocket messages (see `docs/protocol.md`), defined here rather than taken
//! from the `sfu` crate so that the test client does not depend on the server's code.
//!
//! Server messages are parsed leniently: unknown fields are ignored and an unknown `type`
//! becomes [`ServerMsg::Unknown`], so that the client keeps working while the protocol grows.
//! The raw JSON of every message is kept as well (see [`crate::Received`]).

use serde::{Deserialize, Serialize};

/// Which of the participant's two peer connections a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PcKind {
    Publisher,
    Subscriber,
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    Audio,
    Video,
}

/// One published track of the client's `offer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishTrack {
    pub mid: String,
    /// `camera`, `microphone`, `screen_share` or `screen_share_audio`.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Messages from the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    Join {
        auto_subscribe: bool,
    },
    Resume {
        session_id: String,
    },
    Offer {
        sdp: String,
        tracks: Vec<PublishTrack>,
    },
    Answer {
        sdp: String,
        offer_id: u64,
    },
    Trickle {
        pc: PcKind,
        candidate: String,
    },
    Subscribe {
        track_ids: Vec<String>,
    },
    Unsubscribe {
        track_ids: Vec<String>,
    },
    SetQuality {
        track_id: String,
        max_quality: String,
        paused: bool,
    },
    Mute {
        track_id: String,
        muted: bool,
    },
    Unpublish {
        track_id: String,
    },
    IceRestart,
    Ping,
    Leave,
}

/// A published track as others see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackInfo {
    pub id: String,
    pub participant_id: String,
    pub kind: TrackKind,
    pub source: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub layers: u8,
    #[serde(default)]
    pub muted: bool,
    #[serde(default)]
    pub codec: String,
}

/// A participant as others see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub id: String,
    pub identity: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub tracks: Vec<TrackInfo>,
}

/// Which track a subscriber transceiver (by mid) carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MidTrack {
    pub mid: String,
    pub track_id: String,
    pub participant_id: String,
}

/// One entry of the active-speaker list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeakerInfo {
    pub participant_id: String,
    pub level: f32,
}

/// Connection quality of one participant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityUpdate {
    pub participant_id: String,
    pub quality: String,
    #[serde(default)]
    pub loss: f32,
}

/// Messages from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Joined {
        room: String,
        participant: ParticipantInfo,
        session_id: String,
        #[serde(default)]
        resume_window_secs: u64,
        #[serde(default)]
        participants: Vec<ParticipantInfo>,
        #[serde(default)]
        resumed: bool,
    },
    Answer {
        sdp: String,
    },
    Offer {
        sdp: String,
        offer_id: u64,
        #[serde(default)]
        tracks: Vec<MidTrack>,
    },
    Trickle {
        pc: PcKind,
        candidate: String,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        participant_id: String,
        #[serde(default)]
        identity: String,
    },
    TrackPublished {
        track: TrackInfo,
    },
    TrackUnpublished {
        track_id: String,
        participant_id: String,
    },
    TrackMuted {
        track_id: String,
        participant_id: String,
        muted: bool,
    },
    SubscribedQuality {
        track_id: String,
        qualities: Vec<String>,
    },
    Speakers {
        speakers: Vec<SpeakerInfo>,
    },
    ConnectionQuality {
        updates: Vec<QualityUpdate>,
    },
    Pong,
    Error {
        code: String,
        #[serde(default)]
        message: String,
    },
    Left {
        #[serde(default)]
        reason: String,
    },
    /// A message type this client does not know (its JSON is in [`crate::Received::raw`]).
    #[serde(other)]
    Unknown,
}

impl ServerMsg {
    /// The message's `type` tag, e.g. `"participant_left"`.
    pub fn type_name(&self) -> &'static str {
        match self {
            ServerMsg::Joined { .. } => "joined",
            ServerMsg::Answer { .. } => "answer",
            ServerMsg::Offer { .. } => "offer",
            ServerMsg::Trickle { .. } => "trickle",
            ServerMsg::ParticipantJoined { .. } => "participant_joined",
            ServerMsg::ParticipantLeft { .. } => "participant_left",
            ServerMsg::TrackPublished { .. } => "track_published",
            ServerMsg::TrackUnpublished { .. } => "track_unpublished",
            ServerMsg::TrackMuted { .. } => "track_muted",
            ServerMsg::SubscribedQuality { .. } => "subscribed_quality",
            ServerMsg::Speakers { .. } => "speakers",
            ServerMsg::ConnectionQuality { .. } => "connection_quality",
            ServerMsg::Pong => "pong",
            ServerMsg::Error { .. } => "error",
            ServerMsg::Left { .. } => "left",
            ServerMsg::Unknown => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_match_the_doc() {
        let join = serde_json::to_value(ClientMsg::Join {
            auto_subscribe: true,
        })
        .unwrap();
        assert_eq!(
            join,
            serde_json::json!({"type":"join","auto_subscribe":true})
        );
        let offer = ClientMsg::Offer {
            sdp: "v=0".into(),
            tracks: vec![PublishTrack {
                mid: "0".into(),
                source: "microphone".into(),
                name: None,
            }],
        };
        assert_eq!(
            serde_json::to_value(offer).unwrap(),
            serde_json::json!({"type":"offer","sdp":"v=0","tracks":[{"mid":"0","source":"microphone"}]})
        );
        assert_eq!(
            serde_json::to_value(ClientMsg::Leave).unwrap(),
            serde_json::json!({"type":"leave"})
        );
    }

    #[test]
    fn server_messages_parse_leniently() {
        let offer: ServerMsg = serde_json::from_str(
            r#"{"type":"offer","sdp":"v=0","offer_id":1,"tracks":[{"mid":"0","track_id":"TR_1","participant_id":"PA_1"}],"extra":1}"#,
        )
        .unwrap();
        assert!(
            matches!(offer, ServerMsg::Offer { offer_id: 1, ref tracks, .. } if tracks[0].track_id == "TR_1")
        );
        let unknown: ServerMsg = serde_json::from_str(r#"{"type":"brand_new","x":1}"#).unwrap();
        assert_eq!(unknown, ServerMsg::Unknown);
        let left: ServerMsg = serde_json::from_str(
            r#"{"type":"participant_left","participant_id":"PA_2","identity":"bob"}"#,
        )
        .unwrap();
        assert_eq!(left.type_name(), "participant_left");
    }
}
