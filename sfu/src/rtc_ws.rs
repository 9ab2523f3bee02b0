//! `GET /rtc?access_token=...`: the WebSocket that carries a participant's signalling
//! (see `docs/protocol.md`). The token is checked before the upgrade; afterwards each
//! text frame is one [`ClientMsg`], handed to the media worker.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::engine::{Command, ConnId};
use crate::proto::{ClientMsg, ErrorCode, ServerMsg};

/// Largest text frame accepted; a larger one closes the WebSocket with 1009.
pub const MAX_FRAME: usize = 64 * 1024;
/// Hard limit below which frames are read (so the 1009 close can be sent politely).
const HARD_FRAME_LIMIT: usize = 1024 * 1024;
/// Messages a client may send per second (burst), sustained rate below.
const RATE_BURST: f64 = 50.0;
const RATE_PER_SEC: f64 = 20.0;
/// Time allowed for the first message (`join` or `resume`).
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct RtcState {
    pub keys: common::Keys,
    pub workers: crate::placement::Workers,
    pub next_conn: Arc<AtomicU64>,
    /// Ping the client this often ...
    pub ping_interval: Duration,
    /// ... and close the socket when nothing came from it for this long.
    pub idle_timeout: Duration,
}

/// A refusal before the upgrade: status and a JSON body saying why.
pub fn refuse(status: StatusCode, message: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], serde_json::json!({ "error": message }).to_string())
        .into_response()
}

/// The bearer token from `Authorization: Bearer` or the `access_token` query parameter.
pub fn bearer<'a>(headers: &'a HeaderMap, query: &'a HashMap<String, String>) -> &'a str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| query.get("access_token").map(String::as_str))
        .unwrap_or("")
        .trim()
}

pub async fn rtc_handler(
    State(st): State<RtcState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let claims = match st.keys.verify(bearer(&headers, &query)) {
        Ok(c) => c,
        Err(e) => return refuse(StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNAUTHORIZED), &e.to_string()),
    };
    if claims.room.is_none() {
        return refuse(StatusCode::FORBIDDEN, "access token opens no room: mint one with --room");
    }
    // A client may name the room it expects; a token for another room is refused.
    if let Some(room) = query.get("room") {
        if claims.room.as_deref() != Some(room.as_str()) {
            return refuse(StatusCode::FORBIDDEN, &common::TokenError::WrongRoom.to_string());
        }
    }
    if !claims.grants.publish && !claims.grants.subscribe {
        return refuse(StatusCode::FORBIDDEN, "access token grants neither publish nor subscribe");
    }
    let Ok(ws) = ws else {
        return refuse(StatusCode::BAD_REQUEST, "this endpoint expects a WebSocket upgrade");
    };
    ws.max_message_size(HARD_FRAME_LIMIT)
        .max_frame_size(HARD_FRAME_LIMIT)
        .on_upgrade(move |socket| session(socket, st, claims))
}

/// Ends the WebSocket from our side: sends `frame`, then reads until the client's close
/// (or 2 s) before dropping the socket, so the client reads the close frame instead of a
/// connection reset.
async fn close_gracefully(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    code: u16,
    reason: &'static str,
) {
    if !send(sink, Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Longest a frame may wait for the client's TCP window: a client that stopped reading
/// must not hold its session task (and socket) forever.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one frame; false when the socket failed or the client did not take it in time.
async fn send(sink: &mut futures_util::stream::SplitSink<WebSocket, Message>, m: Message) -> bool {
    matches!(tokio::time::timeout(SEND_TIMEOUT, sink.send(m)).await, Ok(Ok(())))
}

fn text(msg: &ServerMsg) -> Message {
    Message::Text(serde_json::to_string(msg).expect("server messages serialize").into())
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * RATE_PER_SEC).min(RATE_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

async fn session(socket: WebSocket, st: RtcState, claims: common::Claims) {
    let conn = ConnId(st.next_conn.fetch_add(1, Ordering::Relaxed));
    // Checked before the upgrade.
    let room = claims.room.clone().unwrap_or_default();
    // The worker of the room, from `join` or `resume` on: every later message of this
    // socket goes there, in order.
    let mut worker = None;
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<ServerMsg>(256);
    let mut tx = Some(tx);
    let mut joined = false;
    let mut bucket = Bucket { tokens: RATE_BURST, at: Instant::now() };
    let first_deadline = tokio::time::sleep(FIRST_MESSAGE_TIMEOUT);
    tokio::pin!(first_deadline);
    // A client that vanished without closing (a killed app, a dead NAT mapping) answers
    // no ping: its socket is closed and its session waits for a resume.
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + st.ping_interval, st.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = &mut first_deadline, if !joined => {
                send(&mut sink, text(&ServerMsg::Error { code: ErrorCode::BadState, message: "send `join` or `resume` first".into() })).await;
                break;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= st.idle_timeout {
                    break;
                }
                if !send(&mut sink, Message::Ping(Default::default())).await {
                    break;
                }
            }
            incoming = stream.next() => {
                let frame = match incoming {
                    Some(Ok(f)) => f,
                    _ => break,
                };
                last_heard = tokio::time::Instant::now();
                let raw = match frame {
                    Message::Text(t) if t.len() > MAX_FRAME => {
                        let e = ServerMsg::Error { code: ErrorCode::Limit, message: format!("message of {} bytes is over the {MAX_FRAME}-byte limit", t.len()) };
                        send(&mut sink, text(&e)).await;
                        close_gracefully(&mut sink, &mut stream, 1009, "message too big").await;
                        break;
                    }
                    Message::Text(t) => t,
                    Message::Close(_) => break,
                    Message::Binary(_) => {
                        let e = ServerMsg::Error { code: ErrorCode::BadMessage, message: "binary frames are not used: send JSON text".into() };
                        if !send(&mut sink, text(&e)).await { break; }
                        continue;
                    }
                    _ => continue,
                };
                if !bucket.take() {
                    let e = ServerMsg::Error { code: ErrorCode::Limit, message: format!("more than {RATE_PER_SEC} messages a second; slow down") };
                    if !send(&mut sink, text(&e)).await { break; }
                    continue;
                }
                let msg: ClientMsg = match serde_json::from_str(raw.as_str()) {
                    Ok(m) => m,
                    Err(e) => {
                        let e = ServerMsg::Error { code: ErrorCode::BadMessage, message: format!("not a valid message: {e}") };
                        if !send(&mut sink, text(&e)).await { break; }
                        continue;
                    }
                };
                let cmd = if joined {
                    match msg {
                        ClientMsg::Leave => {
                            if let Some(w) = worker {
                                let _ = st.workers.send_to(w, Command::Client { conn, msg: ClientMsg::Leave });
                            }
                            // The engine answers `left`; drain until it does.
                            continue;
                        }
                        m => Command::Client { conn, msg: m },
                    }
                } else {
                    match msg {
                        ClientMsg::Join { auto_subscribe } => {
                            joined = true;
                            Command::Join { conn, claims: claims.clone(), tx: tx.take().expect("one join"), auto_subscribe }
                        }
                        ClientMsg::Resume { session_id } => {
                            joined = true;
                            Command::Resume { conn, claims: claims.clone(), tx: tx.take().expect("one join"), session_id }
                        }
                        _ => {
                            let e = ServerMsg::Error { code: ErrorCode::BadState, message: "send `join` or `resume` first".into() };
                            if !send(&mut sink, text(&e)).await { break; }
                            continue;
                        }
                    }
                };
                let sent = match (&cmd, worker) {
                    (Command::Join { .. }, _) => st.workers.send_placing(&room, cmd).map(|w| worker = Some(w)),
                    (Command::Resume { .. }, _) => st.workers.send_to_room(&room, cmd).map(|w| worker = Some(w)),
                    (_, Some(w)) => st.workers.send_to(w, cmd),
                    (_, None) => Ok(()),
                };
                if sent.is_err() {
                    send(&mut sink, text(&ServerMsg::Left { reason: "server shutting down".into() })).await;
                    break;
                }
            }
            out = rx.recv(), if joined => {
                match out {
                    Some(m) => {
                        let end = matches!(m, ServerMsg::Left { .. });
                        if !send(&mut sink, text(&m)).await { break; }
                        if end {
                            close_gracefully(&mut sink, &mut stream, 1000, "left").await;
                            break;
                        }
                    }
                    // The engine dropped this connection (slow reader, resume elsewhere).
                    None => {
                        close_gracefully(&mut sink, &mut stream, 4000, "session moved or too slow").await;
                        break;
                    }
                }
            }
        }
    }
    if let Some(w) = worker {
        let _ = st.workers.send_to(w, Command::Closed { conn });
    }
}
