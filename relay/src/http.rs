//! HTTP fallback for browsers, on the main HTTP port:
//!
//! - `GET /files/{id}` (and `HEAD`), with `Range` (one range), from the same storage;
//! - resumable upload by tus 1.0 (core + creation): `OPTIONS /files`, `POST /files`,
//!   `HEAD /files/{id}` with `Tus-Resumable`, `PATCH /files/{id}`.
//!
//! Authentication: `Authorization: Bearer TOKEN` or `?access_token=TOKEN`, a token
//! with the `files` grant. A revoked session's requests are refused, and those under
//! way end. Every error is JSON: `{"error": code, "message": text}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::options;
use base64::Engine as _;
use futures_util::StreamExt;
use serde::Deserialize;

use common::pii::Pii;
use tokio::sync::watch;

use crate::proto::ErrorCode;
use crate::server::{BATCH, Shared, authorize};
use crate::sessions::Registered;
use crate::store::{Entry, StoreError};
use crate::tree::GROUP_SIZE;

const TUS_VERSION: &str = "1.0.0";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/files", options(tus_options).post(tus_create))
        .route(
            "/files/{id}",
            axum::routing::get(download).head(head).patch(tus_patch),
        )
        .with_state(shared)
}

#[derive(Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

/// A client-facing error: a status and `{"error": code, "message": text}` (plus
/// `retry_after` seconds, and the `Retry-After` header, when waiting helps).
struct HttpError {
    status: StatusCode,
    code: String,
    message: String,
    retry_after: Option<u64>,
}

impl HttpError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            code: code.to_owned(),
            message: message.into(),
            retry_after: None,
        }
    }

    fn of(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> HttpError {
        HttpError::new(status, &code.to_string(), message)
    }

    fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError::of(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    fn revoked() -> HttpError {
        HttpError::of(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            common::TokenError::Revoked.to_string(),
        )
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.code, "message": self.message });
        if let Some(s) = self.retry_after {
            body["retry_after"] = s.into();
        }
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

impl From<StoreError> for HttpError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::TooLarge { .. } | StoreError::PartialQuotaExceeded { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            StoreError::QuotaExceeded { .. } | StoreError::DiskFull => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            StoreError::TooManyPartialUploads { .. } | StoreError::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            StoreError::NotFound => StatusCode::NOT_FOUND,
            StoreError::Stalled => StatusCode::REQUEST_TIMEOUT,
            StoreError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::BadRequest(_)
            | StoreError::HashMismatch { .. }
            | StoreError::OutboardMismatch
            | StoreError::ProofFailed => StatusCode::BAD_REQUEST,
            StoreError::Io(io) => {
                tracing::warn!(error = %io, "relay storage error (http)");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let mut h = HttpError::of(status, e.code(), e.to_string());
        if let StoreError::RateLimited { retry_after, .. } = e {
            h.retry_after = Some(retry_after);
        }
        h
    }
}

fn auth(sh: &Shared, headers: &HeaderMap, q: &TokenQuery) -> Result<common::Claims, HttpError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
        .or_else(|| q.access_token.clone())
        .ok_or_else(|| {
            HttpError::of(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                common::TokenError::Missing.to_string(),
            )
        })?;
    authorize(&sh.keys, &token).map_err(|(code, msg)| {
        sh.metrics.auth_failures.inc();
        let status = if code == ErrorCode::Forbidden {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        HttpError::of(status, code, msg)
    })
}

/// Ties a request to its session: a receiver that turns `true` when the session is
/// revoked (`None` for tokens of no session), and the registration that keeps it so.
fn watch_session(
    sh: &Shared,
    claims: &common::Claims,
) -> Result<Option<(Registered, watch::Receiver<bool>)>, HttpError> {
    let Some(sid) = claims.sid.as_deref() else {
        return Ok(None);
    };
    let reg = sh.sessions.add_http(sid);
    // Revoked between the token check and the registration.
    if sh.keys.revocations().is_revoked(sid) {
        return Err(HttpError::revoked());
    }
    Ok(Some(reg))
}

/// Resolves when the session behind `rx` is revoked (never for `None`).
async fn revoked(rx: &mut Option<(Registered, watch::Receiver<bool>)>) {
    if let Some((_, rx)) = rx {
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                break;
            }
        }
        if *rx.borrow() {
            return;
        }
    }
    std::future::pending::<()>().await
}

/// Parses a single `bytes=` range against `size`: `Ok(None)` for no range header.
fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, HttpError> {
    let Some(v) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let unsatisfiable = |m: String| {
        HttpError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
            m,
        )
    };
    let bad = || {
        unsatisfiable(format!(
            "Range must be one `bytes=START-END` within the file's {size} bytes"
        ))
    };
    let v = v.to_str().map_err(|_| bad())?.trim();
    let spec = v.strip_prefix("bytes=").ok_or_else(bad)?;
    if spec.contains(',') {
        return Err(unsatisfiable(
            "only one range per request is supported".into(),
        ));
    }
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (start, end) = if a.is_empty() {
        let n = digits(b).ok_or_else(bad)?;
        if n == 0 {
            return Err(bad());
        }
        (size.saturating_sub(n), size)
    } else {
        let s = digits(a).ok_or_else(bad)?;
        let e = if b.is_empty() {
            size
        } else {
            digits(b).ok_or_else(bad)?.saturating_add(1).min(size)
        };
        (s, e)
    };
    if start >= end {
        return Err(bad());
    }
    Ok(Some((start, end)))
}

fn content_disposition(name: &str) -> HeaderValue {
    let mut enc = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&format!("attachment; filename*=UTF-8''{enc}"))
        .unwrap_or(HeaderValue::from_static("attachment"))
}

async fn download(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let claims = auth(&sh, &headers, &q)?;
    let entry = sh.store.get(&id)?;
    let size = entry.size;
    let range = parse_range(&headers, size)?;
    let (start, end) = range.unwrap_or((0, size));
    let session = watch_session(&sh, &claims)?;
    let mut resp = Response::builder()
        .status(if range.is_some() {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        })
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(
            header::CONTENT_DISPOSITION,
            content_disposition(&entry.name),
        )
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&entry.mime)
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
        );
    if let Some(h) = entry.hash() {
        resp = resp.header(header::ETAG, format!("\"{}\"", hex::encode(h)));
    }
    if range.is_some() {
        resp = resp.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", end - 1),
        );
    }
    let body = Body::from_stream(range_stream(sh.clone(), entry, session, start, end));
    resp.body(body).map_err(|e| {
        HttpError::of(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        )
    })
}

/// What a download's body stream carries from one batch to the next.
struct Download {
    sh: Arc<Shared>,
    entry: Arc<Entry>,
    rx: watch::Receiver<u64>,
    session: Option<(Registered, watch::Receiver<bool>)>,
    pos: u64,
}

/// The bytes `start..end`, waiting for groups still being uploaded; cut if the
/// session is revoked.
fn range_stream(
    sh: Arc<Shared>,
    entry: Arc<Entry>,
    session: Option<(Registered, watch::Receiver<bool>)>,
    start: u64,
    end: u64,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    let rx = entry.subscribe();
    let d = Download {
        sh,
        entry,
        rx,
        session,
        pos: start,
    };
    futures_util::stream::unfold(Some(d), move |d| async move {
        let mut d = d?;
        if d.pos >= end {
            return None;
        }
        let fail = |m: &str| Some((Err(std::io::Error::other(m.to_owned())), None));
        let g = d.pos / GROUP_SIZE;
        let run = loop {
            if d.session.as_ref().is_some_and(|(_, r)| *r.borrow()) {
                return fail("session revoked");
            }
            match d.entry.readable_from(g, BATCH as u64 / GROUP_SIZE) {
                Ok(0) => {
                    tokio::select! {
                        r = d.rx.changed() => if r.is_err() { return fail("file removed") },
                        () = revoked(&mut d.session) => return fail("session revoked"),
                    }
                }
                Ok(n) => break n,
                Err(_) => return fail("file removed"),
            }
        };
        let stop = ((g + run) * GROUP_SIZE).min(end);
        let n = (stop - d.pos) as usize;
        match crate::server::batch_read(crate::server::read_batch(&d.sh.store, &d.entry, d.pos, n))
            .await
        {
            Ok(buf) => {
                d.sh.metrics.bytes_sent.inc_by(n as u64);
                d.pos = stop;
                Some((Ok(buf.into_bytes()), Some(d)))
            }
            Err(_) => fail("read failed"),
        }
    })
}

async fn head(
    state: State<Arc<Shared>>,
    path: Path<String>,
    q: Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    if headers.contains_key("tus-resumable") {
        return tus_head(state, path, q, headers).await;
    }
    let resp = download(state, path, q, headers).await?;
    let (parts, _) = resp.into_parts();
    Ok(Response::from_parts(parts, Body::empty()))
}

fn tus_headers(b: axum::http::response::Builder) -> axum::http::response::Builder {
    b.header("Tus-Resumable", TUS_VERSION)
        .header(header::CACHE_CONTROL, "no-store")
}

async fn tus_options(State(sh): State<Arc<Shared>>) -> Response {
    tus_headers(Response::builder().status(StatusCode::NO_CONTENT))
        .header("Tus-Version", TUS_VERSION)
        .header("Tus-Extension", "creation")
        .header("Tus-Max-Size", sh.store.limits().max_file_size)
        .body(Body::empty())
        .unwrap()
}

fn check_tus_version(headers: &HeaderMap) -> Result<(), HttpError> {
    match headers.get("tus-resumable").and_then(|v| v.to_str().ok()) {
        Some(TUS_VERSION) => Ok(()),
        _ => Err(HttpError::new(
            StatusCode::PRECONDITION_FAILED,
            "tus_version",
            format!("Tus-Resumable: {TUS_VERSION} is required"),
        )),
    }
}

/// A number of bytes as HTTP writes it (`1*DIGIT`): no sign, no space. (`u64`'s
/// `FromStr` also takes a leading `+`.)
fn digits(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// A header holding a number of bytes.
fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(digits)
}

/// `Upload-Length` of a tus creation.
fn upload_length(headers: &HeaderMap) -> Result<u64, HttpError> {
    header_u64(headers, "upload-length").ok_or_else(|| {
        HttpError::bad_request(
            "Upload-Length (bytes) is required; deferred length is not supported",
        )
    })
}

/// `Upload-Offset` of a tus `PATCH`.
fn upload_offset(headers: &HeaderMap) -> Result<u64, HttpError> {
    header_u64(headers, "upload-offset")
        .ok_or_else(|| HttpError::bad_request("Upload-Offset is required"))
}

/// The `Content-Type` a tus `PATCH` must have.
fn check_patch_type(headers: &HeaderMap) -> Result<(), HttpError> {
    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        != Some("application/offset+octet-stream")
    {
        return Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/offset+octet-stream",
        ));
    }
    Ok(())
}

/// `Upload-Metadata: key base64,key base64`.
fn metadata(headers: &HeaderMap) -> Result<(String, String), HttpError> {
    let mut name = String::new();
    let mut mime = String::from("application/octet-stream");
    if let Some(v) = headers.get("upload-metadata").and_then(|v| v.to_str().ok()) {
        for pair in v.split(',') {
            let mut it = pair.trim().splitn(2, ' ');
            let key = it.next().unwrap_or_default();
            let val = it.next().unwrap_or_default();
            let val = base64::engine::general_purpose::STANDARD
                .decode(val)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    HttpError::bad_request(format!(
                        "Upload-Metadata value of {key:?} is not base64 UTF-8"
                    ))
                })?;
            match key {
                "filename" | "name" => name = val,
                "filetype" | "type" => mime = val,
                _ => {}
            }
        }
    }
    if name.len() > 1024
        || mime.len() > 1024
        || name.chars().any(char::is_control)
        || mime.chars().any(char::is_control)
    {
        return Err(HttpError::bad_request(
            "filename and filetype must be at most 1024 bytes without control characters",
        ));
    }
    Ok((name, mime))
}

async fn tus_create(
    State(sh): State<Arc<Shared>>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    check_tus_version(&headers)?;
    let claims = auth(&sh, &headers, &q)?;
    let size = upload_length(&headers)?;
    let (name, mime) = metadata(&headers)?;
    sh.store.check_new_upload(&claims.sub, size)?;
    let store = sh.store.clone();
    let entry = tokio::task::spawn_blocking(move || {
        let up = store.new_upload(&claims.sub, &name, &mime, size, None)?;
        store.create(up)
    })
    .await
    .map_err(|e| {
        HttpError::of(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        )
    })??;
    tracing::info!(file = %Pii(&entry.id), size, "http upload started");
    Ok(tus_headers(Response::builder().status(StatusCode::CREATED))
        .header(header::LOCATION, format!("/files/{}", entry.id))
        .header("Upload-Offset", 0)
        .body(Body::empty())
        .unwrap())
}

async fn tus_head(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let claims = auth(&sh, &headers, &q)?;
    let entry = sh.store.get(&id)?;
    if entry.owner != claims.sub {
        return Err(StoreError::NotFound.into());
    }
    Ok(tus_headers(Response::builder().status(StatusCode::OK))
        .header("Upload-Offset", sh.store.sequential_offset(&entry))
        .header("Upload-Length", entry.size)
        .body(Body::empty())
        .unwrap())
}

async fn tus_patch(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    debug_assert_eq!(method, Method::PATCH);
    check_tus_version(&headers)?;
    let claims = auth(&sh, &headers, &q)?;
    check_patch_type(&headers)?;
    let entry = sh.store.get(&id)?;
    if entry.owner != claims.sub {
        return Err(StoreError::NotFound.into());
    }
    let offset = upload_offset(&headers)?;
    let Some(appending) = entry.try_append() else {
        return Err(HttpError::new(
            StatusCode::LOCKED,
            "upload_busy",
            "another request is uploading to this file: retry when it has ended",
        ));
    };
    let current = sh.store.sequential_offset(&entry);
    if offset != current {
        return Err(HttpError::new(
            StatusCode::CONFLICT,
            "offset_mismatch",
            format!("Upload-Offset {offset} does not match the upload's offset {current}"),
        ));
    }
    let mut session = watch_session(&sh, &claims)?;
    let mut pos = offset;
    let mut buf: Vec<u8> = Vec::with_capacity(BATCH);
    let mut stream = body.into_data_stream();
    let mut result = Ok(());
    loop {
        // A body that stalls, or whose session is revoked, ends the request; what was
        // stored is kept.
        let chunk = tokio::select! {
            c = tokio::time::timeout(sh.timeouts.stall, stream.next()) => c,
            () = revoked(&mut session) => {
                result = Err(HttpError::revoked());
                break;
            }
        };
        let chunk = match chunk {
            Err(_) => {
                result = Err(StoreError::Stalled.into());
                break;
            }
            Ok(None) => break,
            Ok(Some(Ok(c))) => c,
            Ok(Some(Err(_))) => break, // Connection dropped: keep what was complete.
        };
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let take = (BATCH - buf.len()).min(rest.len());
            buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if buf.len() == BATCH {
                if pos + BATCH as u64 > entry.size {
                    result = Err(HttpError::bad_request("more data than Upload-Length"));
                    break;
                }
                if let Err(e) = sh.store.append(&entry, &appending, pos, &buf) {
                    result = Err(e.into());
                    break;
                }
                pos += BATCH as u64;
                buf.clear();
            }
        }
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() && (!buf.is_empty() || entry.size == 0) {
        if pos + buf.len() as u64 > entry.size {
            result = Err(HttpError::bad_request("more data than Upload-Length"));
        } else if let Err(e) = sh.store.append(&entry, &appending, pos, &buf) {
            result = Err(e.into());
        }
    }
    drop(appending);
    let _ = sh.store.save_progress(&entry);
    result?;
    Ok(
        tus_headers(Response::builder().status(StatusCode::NO_CONTENT))
            .header("Upload-Offset", sh.store.sequential_offset(&entry))
            .body(Body::empty())
            .unwrap(),
    )
}

/// This module's parsers of request headers, for the fuzz targets (`fuzz/`) and property
/// tests; not an API. A refusal is `(status, error code, message)` as the client gets it.
#[doc(hidden)]
pub mod fuzzing {
    use axum::http::HeaderMap;

    pub type Refusal = (u16, String, String);

    fn refusal(e: super::HttpError) -> Refusal {
        (e.status.as_u16(), e.code, e.message)
    }

    /// `Range` of a download of a `size`-byte file: `[start, end)`, `None` without one.
    pub fn range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, Refusal> {
        super::parse_range(headers, size).map_err(refusal)
    }

    /// `Tus-Resumable` must name the version we speak.
    pub fn tus_version(headers: &HeaderMap) -> Result<(), Refusal> {
        super::check_tus_version(headers).map_err(refusal)
    }

    /// `Upload-Metadata`: the file's name and type.
    pub fn tus_metadata(headers: &HeaderMap) -> Result<(String, String), Refusal> {
        super::metadata(headers).map_err(refusal)
    }

    pub fn upload_length(headers: &HeaderMap) -> Result<u64, Refusal> {
        super::upload_length(headers).map_err(refusal)
    }

    pub fn upload_offset(headers: &HeaderMap) -> Result<u64, Refusal> {
        super::upload_offset(headers).map_err(refusal)
    }

    pub fn patch_type(headers: &HeaderMap) -> Result<(), Refusal> {
        super::check_patch_type(headers).map_err(refusal)
    }
}
