//! WHIP (RFC 9725) and WHEP over HTTP: `POST /whip/{room}`, `POST /whep/{room}`,
//! `POST /whep/{room}/{participant}`, and `PATCH`/`DELETE` on the session resource the
//! `Location` header names. See `docs/protocol.md`.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any};
use tokio::sync::oneshot;

use crate::engine::{Command, HttpError, HttpKind, PatchOutcome, SdpFrag};
use crate::rtc_ws::RtcState;

/// Largest SDP offer or fragment accepted.
pub const MAX_SDP: usize = 128 * 1024;
const ENGINE_TIMEOUT: Duration = Duration::from_secs(10);
const SDP: &str = "application/sdp";
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

pub fn router(state: RtcState) -> Router {
    Router::new()
        .route("/whip/{room}", endpoint(Kind::Whip))
        .route("/whep/{room}", endpoint(Kind::Whep))
        .route("/whep/{room}/{participant}", endpoint(Kind::Whep))
        .route("/whip/{room}/sessions/{id}", resource())
        .route("/whep/{room}/sessions/{id}", resource())
        .with_state(state)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Whip,
    Whep,
}

/// Headers every response carries so browser-based tools can read them.
fn cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, ETag, Accept-Patch, Accept-Post, Link, Allow"),
    );
    r
}

fn problem(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    cors((status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{message}\n")).into_response())
}

fn not_allowed(allow: &'static str) -> Response {
    let mut r = problem(405, &format!("method not allowed here; allowed: {allow}"));
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn preflight(methods: &'static str, accept_post: bool) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static(methods));
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(methods));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, If-Match"),
    );
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    if accept_post {
        h.insert("accept-post", HeaderValue::from_static(SDP));
    } else {
        h.insert("accept-patch", HeaderValue::from_static(SDPFRAG));
    }
    cors(r)
}

fn endpoint(kind: Kind) -> MethodRouter<RtcState> {
    any(move |method: Method, st: State<RtcState>, path: Path<HashMap<String, String>>, headers: HeaderMap, body: Bytes| async move {
        match method {
            Method::POST => post(kind, st, path, headers, body).await,
            Method::OPTIONS => preflight("POST, OPTIONS", true),
            _ => not_allowed("POST, OPTIONS"),
        }
    })
}

fn resource() -> MethodRouter<RtcState> {
    any(|method: Method, st: State<RtcState>, path: Path<HashMap<String, String>>, headers: HeaderMap, body: Bytes| async move {
        match method {
            Method::PATCH => patch(st, path, headers, body).await,
            Method::DELETE => delete(st, path, headers).await,
            Method::OPTIONS => preflight("PATCH, DELETE, OPTIONS", false),
            _ => not_allowed("PATCH, DELETE, OPTIONS"),
        }
    })
}

/// The verified claims of the request's bearer token, for `room`.
#[allow(clippy::result_large_err)] // the error is a finished response, on a cold path
fn authorize(st: &RtcState, headers: &HeaderMap, room: &str) -> Result<common::Claims, Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .unwrap_or("");
    if token.is_empty() {
        let mut r = problem(401, "missing access token: send `Authorization: Bearer TOKEN` (mint one with `maxd token`)");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Err(r);
    }
    let claims = st.keys.verify(token).map_err(|e| {
        let mut r = problem(e.http_status(), &e.to_string());
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
        r
    })?;
    if claims.room.as_deref() != Some(room) {
        return Err(problem(403, &common::TokenError::WrongRoom.to_string()));
    }
    Ok(claims)
}

fn content_type_is(headers: &HeaderMap, want: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

#[allow(clippy::result_large_err)]
async fn ask<T>(
    st: &RtcState,
    room: &str,
    placing: bool,
    make: impl FnOnce(oneshot::Sender<Result<T, HttpError>>) -> Command,
) -> Result<T, Response> {
    let (tx, rx) = oneshot::channel();
    let cmd = make(tx);
    // A POST may make the room (on the least-loaded worker); PATCH and DELETE go to the
    // worker that has it.
    let sent = if placing { st.workers.send_placing(room, cmd) } else { st.workers.send_to_room(room, cmd) };
    if sent.is_err() {
        return Err(problem(503, "the media worker is shutting down"));
    }
    match tokio::time::timeout(ENGINE_TIMEOUT, rx).await {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(problem(e.status, &e.message)),
        Ok(Err(_)) => Err(problem(500, "the media worker dropped the request")),
        Err(_) => Err(problem(503, "the media worker did not answer in time; retry")),
    }
}

async fn post(
    kind: Kind,
    State(st): State<RtcState>,
    Path(path): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let room = path.get("room").cloned().unwrap_or_default();
    let claims = match authorize(&st, &headers, &room) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (granted, what) = match kind {
        Kind::Whip => (claims.grants.publish, "publish"),
        Kind::Whep => (claims.grants.subscribe, "subscribe"),
    };
    if !granted {
        return problem(403, &format!("access token does not grant {what}"));
    }
    if !content_type_is(&headers, SDP) {
        return problem(415, "the offer must be sent as Content-Type: application/sdp");
    }
    if body.len() > MAX_SDP {
        return problem(413, &format!("the offer is larger than {MAX_SDP} bytes"));
    }
    let Ok(offer) = String::from_utf8(body.to_vec()) else {
        return problem(400, "the offer is not UTF-8 text");
    };
    let engine_kind = match kind {
        Kind::Whip => HttpKind::Whip,
        Kind::Whep => HttpKind::Whep { target: path.get("participant").cloned() },
    };
    let created = match ask(&st, &room, true, |reply| Command::HttpOffer { claims, kind: engine_kind, offer, reply }).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let base = if kind == Kind::Whip { "whip" } else { "whep" };
    let location = format!("/{base}/{}/sessions/{}", urlencode(&room), created.resource);
    let mut r = (StatusCode::CREATED, [(header::CONTENT_TYPE, SDP)], created.answer).into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&created.etag) {
        h.insert(header::ETAG, v);
    }
    h.insert("accept-patch", HeaderValue::from_static(SDPFRAG));
    if let Ok(v) = HeaderValue::from_str(&created.participant_id) {
        h.insert("x-maxd-participant", v);
    }
    cors(r)
}

async fn patch(State(st): State<RtcState>, Path(path): Path<HashMap<String, String>>, headers: HeaderMap, body: Bytes) -> Response {
    let room = path.get("room").cloned().unwrap_or_default();
    let resource = path.get("id").cloned().unwrap_or_default();
    let claims = match authorize(&st, &headers, &room) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if !content_type_is(&headers, SDPFRAG) {
        return problem(415, "PATCH takes Content-Type: application/trickle-ice-sdpfrag");
    }
    if body.len() > MAX_SDP {
        return problem(413, &format!("the fragment is larger than {MAX_SDP} bytes"));
    }
    let frag = match std::str::from_utf8(&body).map_err(|_| "not UTF-8 text".to_string()).and_then(SdpFrag::parse) {
        Ok(f) => f,
        Err(e) => return problem(400, &format!("the SDP fragment is malformed: {e}")),
    };
    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()).map(|s| s.trim().to_string());
    let outcome = ask(&st, &room, false, |reply| Command::HttpPatch { resource, identity: claims.sub.clone(), if_match, frag, reply }).await;
    match outcome {
        Ok(PatchOutcome::Trickled) => cors(StatusCode::NO_CONTENT.into_response()),
        Ok(PatchOutcome::Restarted { frag, etag }) => {
            let mut r = (StatusCode::OK, [(header::CONTENT_TYPE, SDPFRAG)], frag).into_response();
            if let Ok(v) = HeaderValue::from_str(&etag) {
                r.headers_mut().insert(header::ETAG, v);
            }
            cors(r)
        }
        Err(r) => r,
    }
}

async fn delete(State(st): State<RtcState>, Path(path): Path<HashMap<String, String>>, headers: HeaderMap) -> Response {
    let room = path.get("room").cloned().unwrap_or_default();
    let resource = path.get("id").cloned().unwrap_or_default();
    let claims = match authorize(&st, &headers, &room) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match ask(&st, &room, false, |reply| Command::HttpDelete { resource, identity: claims.sub.clone(), reply }).await {
        Ok(()) => cors(StatusCode::OK.into_response()),
        Err(r) => r,
    }
}

/// Percent-encodes a path segment.
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
