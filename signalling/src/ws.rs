//! The real-time WebSocket `/ws`: one JSON object per text frame, tagged by `type`.
//! See `docs/chat.md` for the protocol.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::App;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::hub::Out;
use crate::model::NewMessage;

/// Backlog read from storage per query while resuming.
const SYNC_BATCH: i64 = 500;

#[derive(Debug, Deserialize)]
pub struct Since {
    pub chat_id: i64,
    pub seq: i64,
}

/// What a client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Start receiving: replays stored events after each given position, then goes live.
    Sync {
        #[serde(default)]
        since: Vec<Since>,
    },
    Send {
        chat_id: i64,
        #[serde(flatten)]
        message: NewMessage,
    },
    Edit {
        chat_id: i64,
        seq: i64,
        text: String,
    },
    Delete {
        chat_id: i64,
        seq: i64,
        #[serde(default)]
        for_everyone: bool,
    },
    React {
        chat_id: i64,
        seq: i64,
        emoji: String,
        #[serde(default)]
        remove: bool,
    },
    Typing {
        chat_id: i64,
    },
    Delivered {
        chat_id: i64,
        seq: i64,
    },
    Read {
        chat_id: i64,
        seq: i64,
    },
    Ping,
    /// Starts a call from a chat (see `docs/calls.md`).
    CallStart {
        chat_id: i64,
        #[serde(default)]
        video: bool,
    },
    /// This device rings (the caller is told `call_ringing`).
    CallReceived {
        call_id: i64,
    },
    CallAccept {
        call_id: i64,
    },
    CallDecline {
        call_id: i64,
        #[serde(default)]
        busy: bool,
    },
    CallHangup {
        call_id: i64,
    },
    CallJoin {
        call_id: i64,
    },
    CallInvite {
        call_id: i64,
        user_id: i64,
    },
    CallVideo {
        call_id: i64,
        video: bool,
    },
    /// Peer-to-peer failed: move the call to the SFU.
    CallSfu {
        call_id: i64,
    },
    /// A P2P signal for the other party (`{"sdp": ...}`, `{"candidate": ...}`).
    CallSignal {
        call_id: i64,
        data: Value,
    },
}

fn error_event(e: &ApiError, req_id: &Value) -> String {
    let mut v = e.body();
    v["type"] = json!("error");
    v["code"] = v["error"].take();
    if let Some(o) = v.as_object_mut() {
        o.remove("error");
    }
    if !req_id.is_null() {
        v["req_id"] = req_id.clone();
    }
    v.to_string()
}

/// Reads one text frame of an authenticated connection: the message and its `req_id`
/// (`Null` when absent), or the `error` event that answers it. Any text is refused with
/// an event, never a panic.
#[doc(hidden)]
pub fn parse_frame(text: &str, max_frame_bytes: usize) -> Result<(ClientMsg, Value), String> {
    if text.len() > max_frame_bytes {
        let e = ApiError::TooLarge(format!(
            "frame is {} bytes; at most {max_frame_bytes} are allowed",
            text.len()
        ));
        return Err(error_event(&e, &Value::Null));
    }
    let v: Value = serde_json::from_str(text).map_err(|e| {
        error_event(
            &ApiError::BadRequest(format!("invalid JSON: {e}")),
            &Value::Null,
        )
    })?;
    let req_id = v.get("req_id").cloned().unwrap_or(Value::Null);
    match serde_json::from_value(v) {
        Ok(m) => Ok((m, req_id)),
        Err(e) => Err(error_event(
            &ApiError::BadRequest(format!("invalid request: {e}")),
            &req_id,
        )),
    }
}

/// Reads the first frame of a connection opened without a token: the access token it
/// carries (`None` when it is no `auth` frame) and its `req_id` (`Null` when absent).
#[doc(hidden)]
pub fn parse_auth_frame(text: &str) -> (Option<String>, Value) {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let req_id = v.get("req_id").cloned().unwrap_or(Value::Null);
    match serde_json::from_value::<AuthMsg>(v) {
        Ok(AuthMsg::Auth { access_token }) => (Some(access_token), req_id),
        Err(_) => (None, req_id),
    }
}

/// The answer to a call request on the socket: `{"type": "call", ...}`.
fn call_answer(mut v: Value) -> Value {
    v["type"] = json!("call");
    v
}

struct Conn {
    app: Arc<App>,
    caller: Caller,
    synced: bool,
    /// Last sequence sent per chat, for chats the client resumed.
    last: HashMap<i64, i64>,
}

/// Close codes of `/ws` (also in `docs/chat.md`).
pub mod close {
    /// The connection fell more than [`crate::hub::QUEUE`] events behind.
    pub const LAGGED: u16 = 4000;
    /// The session was revoked.
    pub const REVOKED: u16 = 4001;
    /// No `auth` frame within `ws_auth_timeout`.
    pub const AUTH_TIMEOUT: u16 = 4002;
    /// The `auth` frame was refused; the reason is the error code.
    pub const AUTH_REFUSED: u16 = 4003;
    /// Nothing (not even a pong) arrived for `ws_idle_timeout`.
    pub const IDLE: u16 = 4004;
    /// The account has `ws_connections_per_user` connections open already.
    pub const TOO_MANY: u16 = 4005;
}

type Sink = futures_util::stream::SplitSink<WebSocket, WsMessage>;
type Stream = futures_util::stream::SplitStream<WebSocket>;

const LAGGED: (u16, &str) = (
    close::LAGGED,
    "lagged: reconnect and resume from your last sequence numbers",
);

/// Feeds `next` and what else is queued (up to a batch of 64) to `sink`, without
/// flushing, skipping chat events already sent. `Ok(Some(close))` when the queue ended
/// (the connection lagged), `Err` when the socket failed.
async fn feed_events(
    sink: &mut Sink,
    rx: &mut tokio::sync::mpsc::Receiver<Out>,
    last: &mut HashMap<i64, i64>,
    mut next: Option<Out>,
) -> Result<Option<(u16, &'static str)>, ()> {
    for n in 1.. {
        let frame = match next {
            None => return Ok(Some(LAGGED)),
            Some(Out::Ephemeral(j)) => Some(j),
            Some(Out::Chat { chat_id, seq, json }) => match last.get_mut(&chat_id) {
                Some(l) if seq <= *l => None,
                Some(l) => {
                    *l = seq;
                    Some(json)
                }
                None => Some(json),
            },
        };
        if let Some(f) = frame {
            sink.feed(WsMessage::Text(f.as_ref().into()))
                .await
                .map_err(|_| ())?;
        }
        if n >= 64 {
            break;
        }
        next = match rx.try_recv() {
            Ok(o) => Some(o),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => return Ok(None),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => None,
        };
    }
    Ok(None)
}

/// The first frame of a connection opened without a token.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AuthMsg {
    Auth { access_token: String },
}

async fn close_with(sink: &mut Sink, code: u16, reason: &str) {
    let _ = sink
        .send(WsMessage::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

/// Waits up to `ws_auth_timeout` for `{"type": "auth", "access_token": ...}`; answers
/// `{"type": "authenticated", ...}` or an error, then closes. Control frames do not
/// extend the deadline.
async fn authenticate_first(app: &App, sink: &mut Sink, stream: &mut Stream) -> Option<Caller> {
    let deadline = tokio::time::Instant::now() + app.cfg.ws_auth_timeout;
    loop {
        let msg = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => {
                close_with(sink, close::AUTH_TIMEOUT, "authentication timeout").await;
                return None;
            }
            Ok(None | Some(Err(_)) | Some(Ok(WsMessage::Close(_)))) => return None,
            Ok(Some(Ok(WsMessage::Text(t)))) => t,
            Ok(Some(Ok(WsMessage::Binary(_)))) => Utf8Bytes::from_static(""),
            Ok(Some(Ok(_))) => continue,
        };
        let (token, req_id) = parse_auth_frame(msg.as_str());
        let r = match token {
            Some(access_token) => app.authenticate(&access_token),
            None => Err(ApiError::Token(common::TokenError::Missing)),
        };
        return match r {
            Ok(c) => {
                let mut ok = json!({"type": "authenticated", "user_id": c.user_id, "session_id": c.session_id});
                if !req_id.is_null() {
                    ok["req_id"] = req_id;
                }
                if sink
                    .send(WsMessage::Text(ok.to_string().into()))
                    .await
                    .is_err()
                {
                    return None;
                }
                Some(c)
            }
            Err(e) => {
                let _ = sink
                    .send(WsMessage::Text(error_event(&e, &req_id).into()))
                    .await;
                close_with(sink, close::AUTH_REFUSED, e.code()).await;
                None
            }
        };
    }
}

/// Serves one `/ws` connection: `caller` when the upgrade carried a token, else the
/// first frame must authenticate. The peer is pinged every `ws_ping_interval` and closed
/// when nothing arrives from it for `ws_idle_timeout`.
pub async fn run(app: Arc<App>, socket: WebSocket, caller: Option<Caller>) {
    let (mut sink, mut stream) = socket.split();
    let caller = match caller {
        Some(c) => c,
        None => match authenticate_first(&app, &mut sink, &mut stream).await {
            Some(c) => c,
            None => return,
        },
    };
    let max = app.cfg.ws_connections_per_user.max(1) as usize;
    let Some(reg) = app.hub.connect(caller.user_id, &caller.session_id, max) else {
        let e = ApiError::TooManyConnections { max };
        let _ = sink
            .send(WsMessage::Text(error_event(&e, &Value::Null).into()))
            .await;
        close_with(&mut sink, close::TOO_MANY, e.code()).await;
        return;
    };
    let conn_id = reg.id;
    let mut rx = reg.rx;
    app.metrics.connections.inc();
    if reg.first {
        let _ = app.presence_changed(caller.user_id, true).await;
    }
    app.calls_device_back(caller.user_id, &caller.session_id)
        .await;
    let mut c = Conn {
        app: app.clone(),
        caller,
        synced: false,
        last: HashMap::new(),
    };
    let frames = crate::limits::Direct::new(crate::limits::per_second_burst_2x(
        app.cfg.ws_frames_per_second,
    ));
    let idle_timeout = app.cfg.ws_idle_timeout;
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let period = app
        .cfg
        .ws_ping_interval
        .max(std::time::Duration::from_millis(10));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Revoked between authentication and registration: the listener found nothing to close.
    let mut close: Option<(u16, &'static str)> =
        if app.ctx.keys.revocations().is_revoked(&c.caller.session_id) {
            Some((close::REVOKED, "session_revoked"))
        } else {
            None
        };
    while close.is_none() {
        tokio::select! {
            msg = stream.next() => {
                idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                let text = match msg {
                    None | Some(Err(_)) => break,
                    Some(Ok(WsMessage::Text(t))) => t,
                    Some(Ok(WsMessage::Binary(_))) => {
                        let e = ApiError::BadRequest("send JSON in text frames".into());
                        if sink.send(WsMessage::Text(error_event(&e, &Value::Null).into())).await.is_err() { break }
                        continue;
                    }
                    Some(Ok(WsMessage::Close(_))) => break,
                    // Pings are answered by the protocol layer; pongs only prove liveness.
                    Some(Ok(_)) => continue,
                };
                let mut out = Vec::new();
                match frames.check() {
                    Ok(()) => c.handle(text.as_str(), &mut out).await,
                    Err(retry_after) => {
                        app.metrics.rate_limited.inc();
                        out.push(error_event(&ApiError::RateLimited { retry_after }, &Value::Null));
                    }
                }
                // The answers to one frame, and the events it caused (already queued:
                // they are published before the answer is made), leave in one write,
                // flushed at once: no frame waits for a later one or for an ACK.
                let mut failed = false;
                for o in out {
                    if sink.feed(WsMessage::Text(o.into())).await.is_err() { failed = true; break }
                }
                if !failed && c.synced {
                    match rx.try_recv() {
                        Ok(o) => match feed_events(&mut sink, &mut rx, &mut c.last, Some(o)).await {
                            Ok(end) => close = end,
                            Err(()) => failed = true,
                        },
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {}
                        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => close = Some(LAGGED),
                    }
                }
                if failed || sink.flush().await.is_err() { break }
            }
            ev = rx.recv(), if c.synced => {
                // Write what is queued (up to a batch) with one flush.
                match feed_events(&mut sink, &mut rx, &mut c.last, ev).await {
                    Ok(end) => close = end,
                    Err(()) => break,
                }
                if sink.flush().await.is_err() { break }
            }
            _ = reg.revoked.notified() => close = Some((close::REVOKED, "session_revoked")),
            _ = ping.tick() => {
                if sink.send(WsMessage::Ping(Default::default())).await.is_err() { break }
            }
            _ = &mut idle => close = Some((close::IDLE, "idle: nothing received within the idle timeout")),
        }
    }
    if let Some((code, reason)) = close {
        close_with(&mut sink, code, reason).await;
    }
    app.metrics.connections.dec();
    if app.hub.disconnect(c.caller.user_id, conn_id) {
        let _ = app.presence_changed(c.caller.user_id, false).await;
    }
    if !app
        .hub
        .session_online(c.caller.user_id, &c.caller.session_id)
    {
        app.calls_device_gone(c.caller.user_id, &c.caller.session_id)
            .await;
    }
}

impl Conn {
    async fn handle(&mut self, text: &str, out: &mut Vec<String>) {
        let (msg, req_id) = match parse_frame(text, self.app.cfg.max_frame_bytes) {
            Ok(m) => m,
            Err(event) => {
                out.push(event);
                return;
            }
        };
        match self.dispatch(msg, out).await {
            Ok(Some(mut v)) => {
                if !req_id.is_null() {
                    v["req_id"] = req_id;
                }
                out.push(v.to_string());
            }
            Ok(None) => {}
            Err(e) => out.push(error_event(&e, &req_id)),
        }
    }

    async fn dispatch(
        &mut self,
        msg: ClientMsg,
        out: &mut Vec<String>,
    ) -> ApiResult<Option<Value>> {
        let app = self.app.clone();
        let c = &self.caller;
        Ok(match msg {
            ClientMsg::Sync { since } => {
                if self.synced {
                    return Err(ApiError::Conflict(
                        "already synced on this connection".into(),
                    ));
                }
                let chats = app.user_chats(c.user_id).await?;
                let want: HashMap<i64, i64> = since.iter().map(|s| (s.chat_id, s.seq)).collect();
                let mut list = Vec::new();
                for (chat_id, joined, last_seq) in &chats {
                    list.push(json!({"chat_id": chat_id, "last_seq": last_seq}));
                    let Some(&from) = want.get(chat_id) else {
                        continue;
                    };
                    let mut pos = from;
                    loop {
                        let batch = app.events_after(*chat_id, pos, *joined, SYNC_BATCH).await?;
                        let n = batch.len() as i64;
                        for (seq, body) in batch {
                            pos = seq;
                            out.push(body);
                        }
                        if n < SYNC_BATCH {
                            break;
                        }
                    }
                    self.last.insert(*chat_id, pos);
                }
                for s in &since {
                    if !chats.iter().any(|c| c.0 == s.chat_id) {
                        out.push(json!({"type": "not_member", "chat_id": s.chat_id}).to_string());
                    }
                }
                self.synced = true;
                // Calls ringing this user now: a device woken by a push rings.
                out.extend(app.pending_rings(c.user_id).await);
                Some(json!({"type": "synced", "chats": list}))
            }
            ClientMsg::Send { chat_id, message } => {
                let ack = app.send_message(c, chat_id, message).await?;
                let mut v = serde_json::to_value(ack).map_err(|e| ApiError::Internal(e.into()))?;
                v["type"] = json!("ack");
                Some(v)
            }
            ClientMsg::Edit { chat_id, seq, text } => {
                let s = app.edit_message(c, chat_id, seq, text).await?;
                Some(json!({"type": "ok", "chat_id": chat_id, "seq": s}))
            }
            ClientMsg::Delete {
                chat_id,
                seq,
                for_everyone,
            } => {
                let s = app.delete_message(c, chat_id, seq, for_everyone).await?;
                Some(json!({"type": "ok", "chat_id": chat_id, "seq": s}))
            }
            ClientMsg::React {
                chat_id,
                seq,
                emoji,
                remove,
            } => {
                let s = app.react(c, chat_id, seq, &emoji, !remove).await?;
                Some(json!({"type": "ok", "chat_id": chat_id, "seq": s}))
            }
            ClientMsg::Typing { chat_id } => {
                app.typing(c, chat_id).await?;
                None
            }
            ClientMsg::Delivered { chat_id, seq } => {
                app.receipt(c, chat_id, seq, false).await?;
                None
            }
            ClientMsg::Read { chat_id, seq } => {
                app.receipt(c, chat_id, seq, true).await?;
                None
            }
            ClientMsg::Ping => Some(json!({"type": "pong"})),
            ClientMsg::CallStart { chat_id, video } => {
                Some(call_answer(app.start_call(c, chat_id, video).await?))
            }
            ClientMsg::CallReceived { call_id } => {
                Some(call_answer(app.call_received(c, call_id).await?))
            }
            ClientMsg::CallAccept { call_id } => {
                Some(call_answer(app.accept_call(c, call_id).await?))
            }
            ClientMsg::CallDecline { call_id, busy } => {
                Some(call_answer(app.decline_call(c, call_id, busy).await?))
            }
            ClientMsg::CallHangup { call_id } => {
                Some(call_answer(app.hangup_call(c, call_id).await?))
            }
            ClientMsg::CallJoin { call_id } => Some(call_answer(app.join_call(c, call_id).await?)),
            ClientMsg::CallInvite { call_id, user_id } => {
                Some(call_answer(app.invite_to_call(c, call_id, user_id).await?))
            }
            ClientMsg::CallVideo { call_id, video } => {
                Some(call_answer(app.set_call_video(c, call_id, video).await?))
            }
            ClientMsg::CallSfu { call_id } => Some(call_answer(app.call_to_sfu(c, call_id).await?)),
            ClientMsg::CallSignal { call_id, data } => {
                app.call_signal(c, call_id, data).await?;
                None
            }
        })
    }
}
