//! The Bot API in Telegram's shapes, so existing bot libraries (python-telegram-bot,
//! aiogram, telegraf) work with their base URL pointed at `/api/bot/`: parameters from
//! the query string and a JSON or form-urlencoded body (Telegram accepts both, and
//! libraries send numbers as strings in forms), the `{"ok", "result"}` and
//! `{"ok": false, "error_code", "description"}` envelopes, and the `User`, `Chat`,
//! `Message` and `Update` objects built from our own chat events.

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::model::{Attachment, Content, Message};

/// Telegram's error envelope around one of our error bodies (`{"error", "message",
/// "retry_after"?}`), which stay in it: `{"ok": false, "error_code", "description",
/// "parameters"?: {"retry_after"}, "error", "message"}`.
pub fn error_envelope(status: StatusCode, body: Value) -> Value {
    let description = body["message"]
        .as_str()
        .or(body["error"].as_str())
        .unwrap_or("error")
        .to_string();
    let mut v = json!({
        "ok": false,
        "error_code": status.as_u16(),
        "description": description,
        "error": body.get("error").cloned().unwrap_or(json!("internal")),
        "message": description,
    });
    if let Some(r) = body.get("retry_after") {
        v["parameters"] = json!({"retry_after": r});
        v["retry_after"] = r.clone();
    }
    v
}

/// The parameters of a Bot API call: the query string and the body merged (the body
/// wins), as Telegram takes them.
#[derive(Debug, Default)]
pub struct Params(Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let mut map = Map::new();
        if let Some(q) = req.uri().query() {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q)
                .map_err(|e| ApiError::BadRequest(format!("invalid query string: {e}")))?;
            for (k, v) in pairs {
                map.insert(k, Value::String(v));
            }
        }
        let ct = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::TooLarge(format!("request body: {}", e.body_text())))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Params(map));
        }
        match ct.as_str() {
            "application/json" => match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(o)) => map.extend(o),
                Ok(_) => {
                    return Err(ApiError::BadRequest(
                        "the JSON body must be an object".into(),
                    ));
                }
                Err(e) => return Err(ApiError::BadRequest(format!("invalid JSON body: {e}"))),
            },
            "application/x-www-form-urlencoded" => {
                let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
                    .map_err(|e| ApiError::BadRequest(format!("invalid form body: {e}")))?;
                for (k, v) in pairs {
                    map.insert(k, Value::String(v));
                }
            }
            _ => {
                return Err(ApiError::UnsupportedMediaType(
                    "send parameters in the query string, as application/json or as application/x-www-form-urlencoded".into(),
                ));
            }
        }
        Ok(Params(map))
    }
}

impl Params {
    fn bad(key: &str, what: &str) -> ApiError {
        ApiError::BadRequest(format!("parameter {key}: expected {what}"))
    }

    /// An integer, given as a JSON number or as a string of digits.
    pub fn int(&self, key: &str) -> ApiResult<Option<i64>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| Self::bad(key, "an integer")),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| Self::bad(key, "an integer")),
            Some(_) => Err(Self::bad(key, "an integer")),
        }
    }

    /// A string (a number is taken as its decimal text).
    pub fn string(&self, key: &str) -> ApiResult<Option<String>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(Self::bad(key, "a string")),
        }
    }

    /// A boolean: `true`/`false` as JSON or as text.
    pub fn bool(&self, key: &str) -> ApiResult<Option<bool>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) => match s.as_str() {
                "true" | "True" | "1" => Ok(Some(true)),
                "false" | "False" | "0" | "" => Ok(Some(false)),
                _ => Err(Self::bad(key, "true or false")),
            },
            Some(_) => Err(Self::bad(key, "true or false")),
        }
    }

    /// A JSON value: as it is in a JSON body, or parsed from its text in a form.
    pub fn json(&self, key: &str) -> ApiResult<Option<Value>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => serde_json::from_str(s)
                .map(Some)
                .map_err(|_| Self::bad(key, "JSON")),
            Some(v) => Ok(Some(v.clone())),
        }
    }
}

impl App {
    /// Telegram's `User` for one of our users.
    pub async fn tg_user(&self, user_id: i64) -> ApiResult<Value> {
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT display_name, is_bot FROM users WHERE id = $1")
                .bind(user_id)
                .fetch_optional(&self.db.pool)
                .await?;
        let (name, is_bot) = row.ok_or(ApiError::NotFound("user"))?;
        Ok(json!({"id": user_id, "is_bot": is_bot != 0, "first_name": name}))
    }

    /// Telegram's `Chat`: a dialog is `private`, a group `group`, a channel `channel`.
    pub async fn tg_chat(&self, chat_id: i64) -> ApiResult<Value> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT kind, title FROM chats WHERE id = $1")
                .bind(chat_id)
                .fetch_optional(&self.db.pool)
                .await?;
        let (kind, title) = row.ok_or(ApiError::NotFound("chat"))?;
        Ok(match kind.as_str() {
            "group" => json!({"id": chat_id, "type": "group", "title": title}),
            "channel" => json!({"id": chat_id, "type": "channel", "title": title}),
            _ => json!({"id": chat_id, "type": "private"}),
        })
    }

    /// Telegram's `Message` for one of ours: `message_id` is its `seq` in the chat,
    /// `date` Unix seconds; a reply carries the message it answers (one level deep).
    pub async fn tg_message(&self, m: &Message) -> ApiResult<Value> {
        let mut v = self.tg_message_alone(m).await?;
        if let Some(r) = m.content.reply_to {
            match self.get_message(m.chat_id, r).await {
                Ok(orig) if !orig.deleted => {
                    v["reply_to_message"] = self.tg_message_alone(&orig).await?;
                }
                _ => {}
            }
        }
        Ok(v)
    }

    /// [`App::tg_message`] without the message replied to.
    async fn tg_message_alone(&self, m: &Message) -> ApiResult<Value> {
        let mut v = json!({
            "message_id": m.seq,
            "from": self.tg_user(m.sender_id).await?,
            "chat": self.tg_chat(m.chat_id).await?,
            "date": m.date.div_euclid(1000),
        });
        // With a file, Telegram calls the text its caption.
        if let Some(t) = &m.content.text {
            let key = match m.content.attachments.is_empty() {
                true => "text",
                false => "caption",
            };
            v[key] = json!(t);
        }
        if let Some(e) = m.edited_at {
            v["edit_date"] = json!(e.div_euclid(1000));
        }
        // Attachments: a voice message is `voice`, any other file a `document`
        // (Telegram's messages carry one file each; the first is shown).
        if let Some(a) = m.content.attachments.first() {
            let mut f = json!({
                "file_id": a.file_id,
                "file_unique_id": a.file_id,
                "file_size": a.size,
                "mime_type": a.mime,
            });
            match a.duration_ms {
                Some(ms) => {
                    f["duration"] = json!(ms.div_ceil(1000));
                    v["voice"] = f;
                }
                None => {
                    f["file_name"] = json!(a.name);
                    v["document"] = f;
                }
            }
        }
        Ok(v)
    }

    /// The attachment `file_id` was sent with in a message of a chat `user_id` is in:
    /// how `sendDocument` and `sendVoice` by file id learn its name, size and type
    /// (the relay holds the bytes; at Telegram too, a file id is one the bot has seen).
    pub async fn known_attachment(&self, user_id: i64, file_id: &str) -> ApiResult<Attachment> {
        // The id as it is stored in the message JSON, with LIKE's wildcards escaped.
        let quoted = json!(file_id).to_string();
        let pattern = format!(
            "%\"file_id\":{}%",
            quoted
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT m.content FROM messages m JOIN members b ON b.chat_id = m.chat_id AND b.user_id = $1 WHERE m.deleted = 0 AND m.content LIKE $2 ESCAPE '\\' LIMIT 20",
        )
        .bind(user_id)
        .bind(pattern)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .filter_map(|c| serde_json::from_str::<Content>(c).ok())
            .flat_map(|c| c.attachments)
            .find(|a| a.file_id == file_id)
            .ok_or_else(|| {
                ApiError::BadRequest(
                    "wrong file identifier: send a file id from a message of a chat the bot is in"
                        .into(),
                )
            })
    }

    /// Telegram's `Update` for a stored bot update: `message` for a new message,
    /// `edited_message` for an edit; every update also keeps our chat event as `event`
    /// (membership changes and others have no Telegram counterpart here).
    pub async fn tg_update(&self, update_id: i64, event: Value) -> Value {
        let mut u = json!({"update_id": update_id});
        let key = match event["type"].as_str() {
            Some("message") => Some("message"),
            Some("message_edited") => Some("edited_message"),
            _ => None,
        };
        let msg = key.and_then(|k| {
            serde_json::from_value::<Message>(event["message"].clone())
                .ok()
                .filter(|m| !m.deleted)
                .map(|m| (k, m))
        });
        if let Some((key, m)) = msg {
            match self.tg_message(&m).await {
                Ok(tm) => u[key] = tm,
                Err(e) => tracing::warn!(error = %e, "bot update without its message"),
            }
        }
        u["event"] = event;
        u
    }
}
