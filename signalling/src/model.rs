//! Wire types of the chat API, shared by REST, WebSocket and bots.

use serde::{Deserialize, Serialize};

/// Kind of a chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatKind {
    /// 1:1 dialog.
    Dialog,
    /// Group: every member writes; up to `max_group_members`.
    Group,
    /// Channel: admins post, subscribers read; up to `max_channel_members`.
    Channel,
}

impl ChatKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatKind::Dialog => "dialog",
            ChatKind::Group => "group",
            ChatKind::Channel => "channel",
        }
    }
    pub fn parse(s: &str) -> ChatKind {
        match s {
            "group" => ChatKind::Group,
            "channel" => ChatKind::Channel,
            _ => ChatKind::Dialog,
        }
    }
}

/// Role of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }
    pub fn parse(s: &str) -> Role {
        match s {
            "owner" => Role::Owner,
            "admin" => Role::Admin,
            _ => Role::Member,
        }
    }
}

/// A file from the relay attached to a message. A voice message is an audio attachment
/// with `duration_ms` and `waveform` (up to 128 samples, 0-255).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub file_id: String,
    pub name: String,
    pub size: u64,
    pub mime: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waveform: Option<Vec<u8>>,
}

/// Where a forwarded message came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forwarded {
    pub chat_id: i64,
    pub seq: i64,
    pub sender_id: i64,
}

/// What a message says.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Content {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Sticker: a file id from the relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticker: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// Sequence number of the message this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded: Option<Forwarded>,
    /// A call in the history (set by the server only): `{"call_id", "kind", "video",
    /// "reason", "duration_ms", "by"}`; see `docs/calls.md`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<serde_json::Value>,
}

/// Source of a forward: a message the sender can read.
#[derive(Debug, Clone, Deserialize)]
pub struct ForwardFrom {
    pub chat_id: i64,
    pub seq: i64,
}

/// A message to send. `client_id` is the sender's own id: a retry with the same one
/// never makes a second message.
#[derive(Debug, Clone, Deserialize)]
pub struct NewMessage {
    pub client_id: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub sticker: Option<String>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    #[serde(default)]
    pub reply_to: Option<i64>,
    #[serde(default)]
    pub forward_from: Option<ForwardFrom>,
}

/// A stored message as clients see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub chat_id: i64,
    pub seq: i64,
    pub sender_id: i64,
    pub client_id: String,
    /// Milliseconds since the Unix epoch.
    pub date: i64,
    #[serde(flatten)]
    pub content: Content,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// Emoji to count.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub reactions: std::collections::BTreeMap<String, i64>,
}

/// The answer to a send: the message is committed.
#[derive(Debug, Clone, Serialize)]
pub struct Ack {
    pub chat_id: i64,
    pub seq: i64,
    pub client_id: String,
    pub date: i64,
    /// True when this `client_id` had already been sent: nothing new was stored.
    pub duplicate: bool,
}

/// A chat as listed for a member.
#[derive(Debug, Clone, Serialize)]
pub struct ChatInfo {
    pub id: i64,
    pub kind: ChatKind,
    pub title: String,
    pub last_seq: i64,
    pub member_count: i64,
    pub role: Role,
    pub read_seq: i64,
    pub unread: i64,
}
