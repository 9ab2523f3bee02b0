//! REST routes. Every body is JSON; every error is `{"error": code, "message": text}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, patch, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::App;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::model::{ChatKind, NewMessage, Role};
use crate::telegram::Params;
use crate::users::ProfilePatch;

type S = State<Arc<App>>;

/// JSON body whose rejection is an [`ApiError`] naming what is wrong.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, St: Send + Sync> FromRequest<St> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &St) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(JsonRejection::BytesRejection(e)) => Err(ApiError::TooLarge(format!(
                "request body: {}",
                e.body_text()
            ))),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::UnsupportedMediaType(
                "send the body as application/json".into(),
            )),
            Err(e) => Err(ApiError::BadRequest(format!(
                "invalid JSON body: {}",
                e.body_text()
            ))),
        }
    }
}

/// Path parameters whose rejection is a `bad_request` [`ApiError`] (axum's answers
/// `400 text/plain`).
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, St: Send + Sync> FromRequestParts<St> for Path<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(p) => Ok(Path(p.0)),
            Err(e) => Err(ApiError::BadRequest(format!(
                "invalid path parameter: {}",
                e.body_text()
            ))),
        }
    }
}

/// Query parameters whose rejection is a `bad_request` [`ApiError`].
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, St: Send + Sync> FromRequestParts<St> for Query<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(q) => Ok(Query(q.0)),
            Err(e) => Err(ApiError::BadRequest(format!(
                "invalid query parameter: {}",
                e.body_text()
            ))),
        }
    }
}

/// Makes every error of the signalling API the documented JSON: errors of the HTTP
/// framework itself (the router's 404 and 405, rejections of extractors we do not wrap,
/// the WebSocket upgrade's) come as plain text or empty and are rewritten here; errors
/// of the Bot API (`/api/bot/...`) get Telegram's envelope around ours.
async fn json_errors(req: Request, next: Next) -> Response {
    let bot = req.uri().path().starts_with("/api/bot/");
    let resp = next.run(req).await;
    let status = resp.status();
    if !status.is_client_error() && !status.is_server_error() {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json && !bot {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // Error bodies are short; a long one is not read.
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let body = if is_json {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({}))
    } else {
        let text = String::from_utf8_lossy(&bytes).trim().to_string();
        ApiError::from_framework(status, text).body()
    };
    let body = match bot {
        true => crate::telegram::error_envelope(status, body),
        false => body,
    };
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(body.to_string()))
}

/// Unknown paths under `/api/`: a JSON `not_found` rather than the router's empty 404.
async fn no_route() -> ApiError {
    ApiError::NoRoute
}

pub fn router(app: Arc<App>) -> axum::Router {
    let limit = app.cfg.max_frame_bytes;
    axum::Router::new()
        .route("/api/openapi.json", get(openapi))
        .route("/api/auth/code", post(request_code))
        .route("/api/auth/verify", post(verify))
        .route("/api/auth/refresh", post(refresh))
        .route("/api/auth/logout", post(logout))
        .route("/api/auth/logout_all", post(logout_all))
        .route("/api/sessions", get(sessions))
        .route("/api/sessions/{id}", delete(revoke_session))
        .route("/api/me", get(me).patch(update_me))
        .route("/api/users/{id}", get(user))
        .route("/api/users/lookup", post(lookup))
        .route("/api/dialogs", post(open_dialog))
        .route("/api/chats", get(list_chats).post(create_chat))
        .route("/api/chats/{id}", get(chat).patch(rename))
        .route("/api/chats/{id}/members", get(members).post(add_member))
        .route(
            "/api/chats/{id}/members/{user}",
            delete(remove_member).patch(set_role),
        )
        .route("/api/chats/{id}/leave", post(leave))
        .route("/api/chats/{id}/messages", get(history).post(send))
        .route(
            "/api/chats/{id}/messages/{seq}",
            patch(edit).delete(delete_msg),
        )
        .route(
            "/api/chats/{id}/messages/{seq}/reactions",
            post(react_add).delete(react_remove),
        )
        .route("/api/chats/{id}/events", get(events))
        .route("/api/chats/{id}/read", post(read))
        .route("/api/chats/{id}/delivered", post(delivered))
        .route("/api/chats/{id}/typing", post(typing))
        .route("/api/calls", post(start_call))
        .route("/api/calls/{id}", get(get_call))
        .route("/api/calls/{id}/received", post(call_received))
        .route("/api/calls/{id}/accept", post(accept_call))
        .route("/api/calls/{id}/decline", post(decline_call))
        .route("/api/calls/{id}/hangup", post(hangup_call))
        .route("/api/calls/{id}/join", post(join_call))
        .route("/api/calls/{id}/invite", post(invite_to_call))
        .route("/api/calls/{id}/video", post(call_video))
        .route("/api/calls/{id}/sfu", post(call_sfu))
        .route("/api/calls/{id}/signal", post(call_signal))
        .route("/api/chats/{id}/call", get(chat_call))
        .route("/api/push", post(register_push).delete(unregister_push))
        .route("/api/push/vapid", get(vapid))
        .route("/api/bots", post(create_bot))
        .route(
            "/api/bot/{token}/{method}",
            get(bot_method).post(bot_method),
        )
        .route("/ws", get(ws))
        .route("/api", any(no_route))
        .route("/api/", any(no_route))
        .route("/api/{*rest}", any(no_route))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(app)
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi.json"),
    )
        .into_response()
}

#[derive(Deserialize)]
struct CodeReq {
    phone: String,
}

async fn request_code(
    State(app): S,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Body(r): Body<CodeReq>,
) -> ApiResult<Json<Value>> {
    Ok(Json(app.request_code(&r.phone, addr.ip()).await?))
}

#[derive(Deserialize)]
struct VerifyReq {
    phone: String,
    code: String,
    #[serde(default)]
    device_name: String,
}

async fn verify(
    State(app): S,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Body(r): Body<VerifyReq>,
) -> ApiResult<Json<Value>> {
    let t = app
        .verify_code(&r.phone, &r.code, &r.device_name, addr.ip())
        .await
        .inspect_err(|e| {
            if matches!(e, ApiError::RateLimited { .. }) {
                app.metrics.verifies_refused.inc();
            }
        })?;
    Ok(Json(
        serde_json::to_value(t).map_err(|e| ApiError::Internal(e.into()))?,
    ))
}

#[derive(Deserialize)]
struct RefreshReq {
    refresh_token: String,
}

async fn refresh(State(app): S, Body(r): Body<RefreshReq>) -> ApiResult<Json<Value>> {
    let t = app.refresh(&r.refresh_token).await?;
    Ok(Json(
        serde_json::to_value(t).map_err(|e| ApiError::Internal(e.into()))?,
    ))
}

async fn logout(State(app): S, c: Caller) -> ApiResult<Json<Value>> {
    app.revoke(&c, Some(&c.session_id.clone())).await?;
    Ok(Json(json!({"revoked": 1})))
}

async fn logout_all(State(app): S, c: Caller) -> ApiResult<Json<Value>> {
    let n = app.revoke(&c, None).await?;
    Ok(Json(json!({"revoked": n})))
}

async fn sessions(State(app): S, c: Caller) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"sessions": app.list_sessions(&c).await?})))
}

async fn revoke_session(
    State(app): S,
    c: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    app.revoke(&c, Some(&id)).await?;
    Ok(Json(json!({"revoked": 1})))
}

async fn me(State(app): S, c: Caller) -> ApiResult<Json<Value>> {
    Ok(Json(app.me(&c).await?))
}

async fn update_me(
    State(app): S,
    c: Caller,
    Body(p): Body<ProfilePatch>,
) -> ApiResult<Json<Value>> {
    Ok(Json(app.update_me(&c, p).await?))
}

async fn user(State(app): S, c: Caller, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    Ok(Json(app.user_profile(&c, id).await?))
}

async fn lookup(State(app): S, c: Caller, Body(r): Body<CodeReq>) -> ApiResult<Json<Value>> {
    Ok(Json(app.lookup_phone(&c, &r.phone).await?))
}

#[derive(Deserialize)]
struct DialogReq {
    user_id: i64,
}

async fn open_dialog(State(app): S, c: Caller, Body(r): Body<DialogReq>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(app.open_dialog(&c, r.user_id).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateChat {
    kind: ChatKind,
    title: String,
    #[serde(default)]
    members: Vec<i64>,
}

async fn create_chat(
    State(app): S,
    c: Caller,
    Body(r): Body<CreateChat>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        app.create_chat(&c, r.kind, &r.title, &r.members).await?
    )))
}

async fn list_chats(State(app): S, c: Caller) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"chats": app.list_chats(&c).await?})))
}

async fn chat(State(app): S, c: Caller, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(app.chat_info(c.user_id, id).await?)))
}

#[derive(Deserialize)]
struct RenameReq {
    title: String,
}

async fn rename(
    State(app): S,
    c: Caller,
    Path(id): Path<i64>,
    Body(r): Body<RenameReq>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"seq": app.rename(&c, id, &r.title).await?})))
}

async fn members(State(app): S, c: Caller, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"members": app.list_members(&c, id).await?})))
}

async fn add_member(
    State(app): S,
    c: Caller,
    Path(id): Path<i64>,
    Body(r): Body<DialogReq>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({"seq": app.add_member(&c, id, r.user_id).await?}),
    ))
}

async fn remove_member(
    State(app): S,
    c: Caller,
    Path((id, user)): Path<(i64, i64)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"seq": app.remove_member(&c, id, user).await?})))
}

#[derive(Deserialize)]
struct RoleReq {
    role: Role,
}

async fn set_role(
    State(app): S,
    c: Caller,
    Path((id, user)): Path<(i64, i64)>,
    Body(r): Body<RoleReq>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({"seq": app.set_role(&c, id, user, r.role).await?}),
    ))
}

async fn leave(State(app): S, c: Caller, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({"seq": app.remove_member(&c, id, c.user_id).await?}),
    ))
}

#[derive(Deserialize)]
struct Page {
    before: Option<i64>,
    limit: Option<i64>,
}

async fn history(
    State(app): S,
    c: Caller,
    Path(id): Path<i64>,
    Query(p): Query<Page>,
) -> ApiResult<Json<Value>> {
    let (msgs, next) = app.history(&c, id, p.before, p.limit.unwrap_or(50)).await?;
    Ok(Json(json!({"messages": msgs, "next_before": next})))
}

async fn send(
    State(app): S,
    c: Caller,
    Path(id): Path<i64>,
    Body(m): Body<NewMessage>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(app.send_message(&c, id, m).await?)))
}

#[derive(Deserialize)]
struct EditReq {
    text: String,
}

async fn edit(
    State(app): S,
    c: Caller,
    Path((id, seq)): Path<(i64, i64)>,
    Body(r): Body<EditReq>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({"seq": app.edit_message(&c, id, seq, r.text).await?}),
    ))
}

#[derive(Deserialize)]
struct DeleteQ {
    #[serde(default)]
    for_everyone: bool,
}

async fn delete_msg(
    State(app): S,
    c: Caller,
    Path((id, seq)): Path<(i64, i64)>,
    Query(q): Query<DeleteQ>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({"seq": app.delete_message(&c, id, seq, q.for_everyone).await?}),
    ))
}

#[derive(Deserialize)]
struct EmojiReq {
    emoji: String,
}

async fn react_add(
    State(app): S,
    c: Caller,
    Path((id, seq)): Path<(i64, i64)>,
    Body(r): Body<EmojiReq>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({"seq": app.react(&c, id, seq, &r.emoji, true).await?}),
    ))
}

async fn react_remove(
    State(app): S,
    c: Caller,
    Path((id, seq)): Path<(i64, i64)>,
    Body(r): Body<EmojiReq>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({"seq": app.react(&c, id, seq, &r.emoji, false).await?}),
    ))
}

#[derive(Deserialize)]
struct AfterQ {
    after: i64,
    limit: Option<i64>,
}

async fn events(
    State(app): S,
    c: Caller,
    Path(id): Path<i64>,
    Query(q): Query<AfterQ>,
) -> ApiResult<Json<Value>> {
    let (_, _, joined) = app.membership(id, c.user_id).await?;
    let rows = app
        .events_after(id, q.after, joined, q.limit.unwrap_or(100).clamp(1, 500))
        .await?;
    let evs: Vec<Value> = rows
        .into_iter()
        .map(|(_, b)| serde_json::from_str(&b).unwrap_or(Value::Null))
        .collect();
    Ok(Json(json!({"events": evs})))
}

#[derive(Deserialize)]
struct SeqReq {
    seq: i64,
}

async fn read(
    State(app): S,
    c: Caller,
    Path(id): Path<i64>,
    Body(r): Body<SeqReq>,
) -> ApiResult<Json<Value>> {
    app.receipt(&c, id, r.seq, true).await?;
    Ok(Json(json!({})))
}

async fn delivered(
    State(app): S,
    c: Caller,
    Path(id): Path<i64>,
    Body(r): Body<SeqReq>,
) -> ApiResult<Json<Value>> {
    app.receipt(&c, id, r.seq, false).await?;
    Ok(Json(json!({})))
}

async fn typing(State(app): S, c: Caller, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    app.typing(&c, id).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartCall {
    chat_id: i64,
    #[serde(default)]
    video: bool,
}

async fn start_call(State(app): S, c: Caller, Body(r): Body<StartCall>) -> ApiResult<Json<Value>> {
    Ok(Json(app.start_call(&c, r.chat_id, r.video).await?))
}

async fn get_call(State(app): S, c: Caller, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    Ok(Json(app.get_call(&c, id).await?))
}

async fn chat_call(State(app): S, c: Caller, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    Ok(Json(app.chat_call(&c, id).await?))
}

async fn call_received(State(app): S, c: Caller, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    Ok(Json(app.call_received(&c, id).await?))
}

async fn accept_call(State(app): S, c: Caller, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    Ok(Json(app.accept_call(&c, id).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeclineReq {
    #[serde(default)]
    busy: bool,
}

async fn decline_call(
    State(app): S,
    c: Caller,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    // The body is optional: none (or `{}`) declines, `{"busy": true}` says busy.
    let busy = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        serde_json::from_slice::<DeclineReq>(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?
            .busy
    };
    Ok(Json(app.decline_call(&c, id, busy).await?))
}

async fn hangup_call(State(app): S, c: Caller, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    Ok(Json(app.hangup_call(&c, id).await?))
}

async fn join_call(State(app): S, c: Caller, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    Ok(Json(app.join_call(&c, id).await?))
}

async fn invite_to_call(
    State(app): S,
    c: Caller,
    Path(id): Path<i64>,
    Body(r): Body<DialogReq>,
) -> ApiResult<Json<Value>> {
    Ok(Json(app.invite_to_call(&c, id, r.user_id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VideoReq {
    video: bool,
}

async fn call_video(
    State(app): S,
    c: Caller,
    Path(id): Path<i64>,
    Body(r): Body<VideoReq>,
) -> ApiResult<Json<Value>> {
    Ok(Json(app.set_call_video(&c, id, r.video).await?))
}

async fn call_sfu(State(app): S, c: Caller, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    Ok(Json(app.call_to_sfu(&c, id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalReq {
    data: Value,
}

async fn call_signal(
    State(app): S,
    c: Caller,
    Path(id): Path<i64>,
    Body(r): Body<SignalReq>,
) -> ApiResult<Json<Value>> {
    app.call_signal(&c, id, r.data).await?;
    Ok(Json(json!({})))
}

async fn register_push(
    State(app): S,
    c: Caller,
    Body(r): Body<crate::push::TargetReq>,
) -> ApiResult<Json<Value>> {
    Ok(Json(app.register_push(&c, r).await?))
}

async fn unregister_push(State(app): S, c: Caller) -> ApiResult<Json<Value>> {
    app.unregister_push(&c).await?;
    Ok(Json(json!({})))
}

async fn vapid(State(app): S) -> ApiResult<Json<Value>> {
    match app.vapid_public_key() {
        Some(k) => Ok(Json(json!({"public_key": k}))),
        None => Err(ApiError::NotFound(
            "Web Push key (Web Push is not configured)",
        )),
    }
}

#[derive(Deserialize)]
struct BotReq {
    name: String,
}

async fn create_bot(State(app): S, c: Caller, Body(r): Body<BotReq>) -> ApiResult<Json<Value>> {
    Ok(Json(app.create_bot(&c, &r.name).await?))
}

/// `/api/bot/{token}/{method}`: the Bot API. Methods by Telegram's names (case does
/// not matter, as at Telegram), by GET or POST, parameters as [`Params`] takes them;
/// the answer is `{"ok": true, "result": ...}` (errors get Telegram's envelope from
/// [`json_errors`]).
async fn bot_method(
    State(app): S,
    Path((token, method)): Path<(String, String)>,
    p: Params,
) -> ApiResult<Json<Value>> {
    let b = app.bot_caller(&token).await?;
    let result = match method.to_ascii_lowercase().as_str() {
        "getme" => {
            let mut u = app.tg_user(b.user_id).await?;
            u["can_join_groups"] = json!(true);
            u["can_read_all_group_messages"] = json!(true);
            u["supports_inline_queries"] = json!(false);
            u
        }
        "getupdates" => {
            let ups = app
                .get_updates(
                    &b,
                    p.int("offset")?.unwrap_or(0),
                    p.int("limit")?.unwrap_or(100),
                    Duration::from_secs(p.int("timeout")?.unwrap_or(0).max(0) as u64),
                )
                .await?;
            let mut out = Vec::with_capacity(ups.len());
            for (id, event) in ups {
                out.push(app.tg_update(id, event).await);
            }
            json!(out)
        }
        "sendmessage" => bot_send(&app, &b, &p, p.string("text")?, vec![]).await?,
        // By file id only (no uploads): a file from a message of a chat the bot is in.
        "senddocument" | "sendvoice" => {
            let voice = method.eq_ignore_ascii_case("sendvoice");
            let field = if voice { "voice" } else { "document" };
            let id = p
                .string(field)?
                .ok_or_else(|| ApiError::BadRequest(format!("{field} (a file id) is required")))?;
            let mut a = app.known_attachment(b.user_id, &id).await?;
            if voice && a.duration_ms.is_none() {
                a.duration_ms = Some(p.int("duration")?.unwrap_or(0).max(0) as u64 * 1000);
            }
            if !voice {
                a.duration_ms = None;
                a.waveform = None;
            }
            bot_send(&app, &b, &p, p.string("caption")?, vec![a]).await?
        }
        "setwebhook" => {
            let url = p.string("url")?.unwrap_or_default();
            // As at Telegram, an empty url removes the webhook.
            let url = (!url.is_empty()).then_some(url);
            let drop = p.bool("drop_pending_updates")?.unwrap_or(false);
            app.set_webhook(
                &b,
                url.as_deref(),
                p.string("secret_token")?.as_deref(),
                drop,
            )
            .await?;
            json!(true)
        }
        "deletewebhook" => {
            let drop = p.bool("drop_pending_updates")?.unwrap_or(false);
            app.set_webhook(&b, None, None, drop).await?;
            json!(true)
        }
        "getwebhookinfo" => app.webhook_info(&b).await?,
        _ => return Err(ApiError::NoRoute),
    };
    Ok(Json(json!({"ok": true, "result": result})))
}

/// Sends a bot's message from Telegram's parameters (and our own: `client_id`,
/// `sticker`, `attachments`, `forward_from`, `reply_to`) and answers Telegram's
/// `Message`. `text` and `files` are what the method names them (`text`, or a
/// `caption` with the file of `sendDocument`/`sendVoice`).
async fn bot_send(
    app: &App,
    b: &Caller,
    p: &Params,
    text: Option<String>,
    files: Vec<crate::model::Attachment>,
) -> ApiResult<Value> {
    let chat_id = p
        .int("chat_id")?
        .ok_or_else(|| ApiError::BadRequest("chat_id is required".into()))?;
    // Telegram's reply_parameters or reply_to_message_id, or our reply_to.
    let reply_to = match p.json("reply_parameters")? {
        Some(r) => r["message_id"].as_i64(),
        None => p.int("reply_to_message_id")?.or(p.int("reply_to")?),
    };
    let client_id = match p.string("client_id")? {
        Some(c) => c,
        // Telegram has no idempotency key: each call is a new message.
        None => format!("bot-{}", crate::auth::new_id()),
    };
    let mut m = serde_json::from_value::<NewMessage>(json!({
        "client_id": client_id,
        "text": text,
        "sticker": p.string("sticker")?,
        "attachments": p.json("attachments")?.unwrap_or(json!([])),
        "reply_to": reply_to,
        "forward_from": p.json("forward_from")?,
    }))
    .map_err(|e| ApiError::BadRequest(format!("invalid message: {e}")))?;
    m.attachments.extend(files);
    let ack = app.send_message(b, chat_id, m).await?;
    let msg = app.get_message(chat_id, ack.seq).await?;
    app.tg_message(&msg).await
}

/// `/ws`: with a token (`?access_token=` or `Authorization`) the upgrade is refused
/// unless it verifies; without one the first frame must be `auth` (see [`crate::ws`]).
async fn ws(State(app): S, up: WebSocketUpgrade, c: Result<Caller, ApiError>) -> Response {
    let c = match c {
        Ok(c) => Some(c),
        Err(ApiError::Token(common::TokenError::Missing)) => None,
        Err(e) => return e.into_response(),
    };
    let max = app.cfg.max_frame_bytes;
    // Frames are buffered only until the flush that ends each batch of answers or
    // events, so several frames leave in one write and none waits for a later one.
    up.max_message_size(max * 16)
        .max_frame_size(max * 16)
        .read_buffer_size(4096)
        .write_buffer_size(64 * 1024)
        .on_upgrade(move |socket| crate::ws::run(app, socket, c))
}
