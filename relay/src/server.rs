//! The QUIC side: connections, their caps and timeouts, authentication (and
//! revocation), and the requests of `proto`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use common::pii::Pii;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::conns::{Caps, Full, Permit};
use crate::iobuf::{Pool, Pooled};
use crate::metrics::Metrics;
use crate::proto::{
    self, CLOSE_IDLE, CLOSE_REVOKED, CLOSE_UNAUTHENTICATED, ErrorCode, FrameError, Request,
    Response,
};
use crate::sessions::Sessions;
use crate::store::{Begin, Entry, Store, StoreError};
use crate::tree::{self, GROUP_SIZE};

/// Bytes moved per read/verify/write step: 32 groups (512 KiB).
pub(crate) const BATCH: usize = 32 * GROUP_SIZE as usize;
/// Batch buffers of uploads (two per `put` stream) and downloads (held by QUIC until
/// acknowledged), one pool so that idle upload buffers serve downloads.
static POOL: Pool = Pool::new(BATCH, (8 << 20) / BATCH);
/// Longest name and type accepted, in bytes.
const MAX_NAME: usize = 1024;

/// How long the relay waits, from `[relay]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// Handshake and `hello` of a new connection.
    pub auth: Duration,
    /// No request under way on a connection.
    pub idle: Duration,
    /// No byte moving on a transfer.
    pub stall: Duration,
}

pub(crate) struct Shared {
    pub store: Arc<Store>,
    pub keys: common::Keys,
    pub sessions: Arc<Sessions>,
    pub caps: Caps,
    pub timeouts: Timeouts,
    pub metrics: Metrics,
}

/// Who is on a connection.
struct Session {
    user: String,
    sid: Option<String>,
    exp: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks a token for the `files` grant; the error is the client-facing message.
pub(crate) fn authorize(
    keys: &common::Keys,
    token: &str,
) -> Result<common::Claims, (ErrorCode, String)> {
    match keys.verify(token) {
        Ok(c) if c.grants.files => Ok(c),
        Ok(_) => Err((
            ErrorCode::Forbidden,
            common::TokenError::NotGranted("files").to_string(),
        )),
        Err(e @ common::TokenError::NotGranted(_)) | Err(e @ common::TokenError::WrongRoom) => {
            Err((ErrorCode::Forbidden, e.to_string()))
        }
        Err(e) => Err((ErrorCode::Unauthorized, e.to_string())),
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error {
        code,
        message: message.into(),
    }
}

fn store_error(e: &StoreError) -> Response {
    if let StoreError::Io(io) = e {
        warn!(error = %io, "relay storage error");
    }
    error(e.code(), e.to_string())
}

/// Ends a transfer on which no byte moves for `limit`, at almost no cost per read or
/// write: they only count bytes, and when the timer fires the count is compared with
/// the one at the last firing. A stall is noticed between `limit` and twice that.
pub(crate) struct Stall {
    sleep: Pin<Box<Sleep>>,
    limit: Duration,
    moved: u64,
    seen: u64,
}

impl Stall {
    pub(crate) fn new(limit: Duration) -> Stall {
        Stall {
            sleep: Box::pin(tokio::time::sleep(limit)),
            limit,
            moved: 0,
            seen: 0,
        }
    }

    fn moved(&mut self, n: usize) {
        self.moved += n as u64;
    }

    /// Resolves once a whole period passed with no byte moved.
    async fn stalled(&mut self) {
        loop {
            self.sleep.as_mut().await;
            if self.moved == self.seen {
                return;
            }
            self.seen = self.moved;
            self.sleep.as_mut().reset(Instant::now() + self.limit);
        }
    }
}

/// Fills `buf` from `recv`, or fails if the stream ends or stalls.
async fn read_full(
    recv: &mut quinn::RecvStream,
    buf: &mut [u8],
    stall: &mut Stall,
) -> Result<(), StoreError> {
    let mut filled = 0;
    while filled < buf.len() {
        tokio::select! {
            biased;
            r = recv.read(&mut buf[filled..]) => match r {
                Ok(Some(n)) => {
                    filled += n;
                    stall.moved(n);
                }
                Ok(None) => return Err(StoreError::BadRequest("data cut short: the stream ended early".into())),
                Err(e) => return Err(StoreError::BadRequest(format!("data cut short: {e}"))),
            },
            () = stall.stalled() => return Err(StoreError::Stalled),
        }
    }
    Ok(())
}

/// Writes all of `buf` (without copying it), or fails if the stream breaks or stalls.
async fn write_full(
    send: &mut quinn::SendStream,
    buf: Bytes,
    stall: &mut Stall,
) -> Result<(), StoreError> {
    let mut bufs = [buf];
    while !bufs[0].is_empty() {
        tokio::select! {
            biased;
            r = send.write_chunks(&mut bufs) => match r {
                Ok(w) => stall.moved(w.bytes),
                Err(e) => return Err(StoreError::BadRequest(e.to_string())),
            },
            () = stall.stalled() => return Err(StoreError::Stalled),
        }
    }
    Ok(())
}

/// Accepts connections until the endpoint closes, within the connection caps.
pub(crate) async fn serve(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    // When each cap was last reported.
    let mut reported: [Option<std::time::Instant>; 2] = [None, None];
    while let Some(incoming) = endpoint.accept().await {
        while conns.try_join_next().is_some() {}
        // When more than half the places are taken, a client first proves it owns its
        // address (a stateless retry), so spoofed sources cannot take the rest.
        if shared.caps.busy() && !incoming.remote_address_validated() && incoming.may_retry() {
            let _ = incoming.retry();
            continue;
        }
        let remote = incoming.remote_address();
        let permit = match shared.caps.admit(remote.ip()) {
            Ok(p) => p,
            Err(full) => {
                shared.metrics.connections_refused.inc();
                let (cap, key, last) = match full {
                    Full::Global => ("all addresses", "relay.max_connections", &mut reported[0]),
                    Full::PerAddress => (
                        "one address",
                        "relay.max_connections_per_ip",
                        &mut reported[1],
                    ),
                };
                if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    *last = Some(std::time::Instant::now());
                    warn!(
                        cap,
                        open = shared.caps.open(),
                        "relay connection cap reached ({key}): refusing new connections from {cap} (logged at most every 10 s)"
                    );
                }
                incoming.refuse();
                continue;
            }
        };
        let sh = shared.clone();
        conns.spawn(
            connection(incoming, sh, permit)
                .instrument(info_span!("relay_conn", remote = %Pii(remote))),
        );
    }
    conns.shutdown().await;
}

/// What went wrong in a handshake, without the peer's own words (a close reason is
/// text the peer chose: it does not go to the logs).
fn handshake_error(e: &quinn::ConnectionError) -> &'static str {
    use quinn::ConnectionError as E;
    match e {
        E::VersionMismatch => "QUIC version mismatch",
        E::TransportError(_) => "transport error (TLS or protocol)",
        E::ConnectionClosed(_) | E::ApplicationClosed(_) => "closed by the peer",
        E::Reset => "reset by the peer",
        E::TimedOut => "timed out",
        E::LocallyClosed => "closed by the relay",
        E::CidsExhausted => "connection ids exhausted",
    }
}

struct ConnGauge(Metrics);
impl Drop for ConnGauge {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

async fn connection(incoming: quinn::Incoming, sh: Arc<Shared>, _permit: Permit) {
    sh.metrics.connections.inc();
    let _gauge = ConnGauge(sh.metrics.clone());
    // The handshake and hello, together within the auth timeout.
    let deadline = Instant::now() + sh.timeouts.auth;
    let conn = match tokio::time::timeout_at(deadline, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            debug!(error = handshake_error(&e), "handshake failed");
            return;
        }
        Err(_) => {
            debug!("handshake not finished within the auth timeout");
            return;
        }
    };
    let session = match tokio::time::timeout_at(deadline, hello(&conn, &sh)).await {
        Ok(Some(s)) => Arc::new(s),
        Ok(None) => {
            // Give the error frame time to reach the client before closing.
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            conn.close(CLOSE_UNAUTHENTICATED.into(), b"not authenticated");
            return;
        }
        Err(_) => {
            debug!("no hello within the auth timeout");
            conn.close(
                CLOSE_UNAUTHENTICATED.into(),
                b"no hello within the auth timeout",
            );
            return;
        }
    };
    // Revoking the session closes this connection; a revocation between the token
    // check and this registration is caught just after it.
    let _registered = session
        .sid
        .as_deref()
        .map(|sid| sh.sessions.add_quic(sid, conn.clone()));
    if session
        .sid
        .as_deref()
        .is_some_and(|sid| sh.keys.revocations().is_revoked(sid))
    {
        conn.close(CLOSE_REVOKED.into(), b"session revoked");
        return;
    }
    debug!(user = %Pii(&session.user), "relay client authenticated");
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            r = conn.accept_bi() => match r {
                Ok((send, recv)) => {
                    let (sh, session) = (sh.clone(), session.clone());
                    streams.spawn(async move { stream(send, recv, &sh, &session).await });
                }
                Err(_) => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            () = tokio::time::sleep(sh.timeouts.idle), if streams.is_empty() => {
                debug!("closing an idle relay connection");
                conn.close(CLOSE_IDLE.into(), b"idle");
                break;
            }
        }
    }
    streams.shutdown().await;
}

async fn hello(conn: &quinn::Connection, sh: &Shared) -> Option<Session> {
    let (mut send, mut recv) = conn.accept_bi().await.ok()?;
    let req: Request = match proto::read_frame(&mut recv).await {
        Ok(r) => r,
        Err(e) => {
            let _ = proto::write_frame(
                &mut send,
                &error(ErrorCode::BadRequest, format!("expected hello: {e}")),
            )
            .await;
            let _ = send.finish();
            return None;
        }
    };
    let reply = match req {
        Request::Hello { version, .. } if version != proto::VERSION => Err(error(
            ErrorCode::Version,
            format!(
                "protocol version {version} is not supported; this relay speaks {}",
                proto::VERSION
            ),
        )),
        Request::Hello { token, .. } => match authorize(&sh.keys, &token) {
            Ok(c) => Ok(Session {
                user: c.sub,
                sid: c.sid,
                exp: c.exp,
            }),
            Err((code, msg)) => {
                sh.metrics.auth_failures.inc();
                Err(error(code, msg))
            }
        },
        _ => Err(error(
            ErrorCode::BadRequest,
            "the first request of a connection must be hello",
        )),
    };
    match reply {
        Ok(s) => {
            let w = Response::Welcome {
                user: s.user.clone(),
                max_file_size: sh.store.limits().max_file_size,
            };
            proto::write_frame(&mut send, &w).await.ok()?;
            let _ = send.finish();
            Some(s)
        }
        Err(e) => {
            let _ = proto::write_frame(&mut send, &e).await;
            let _ = send.finish();
            None
        }
    }
}

async fn stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    sh: &Shared,
    session: &Session,
) {
    let stall = sh.timeouts.stall;
    let req: Request = match tokio::time::timeout(stall, proto::read_frame(&mut recv)).await {
        Ok(Ok(r)) => r,
        Ok(Err(FrameError::Closed)) => return,
        Ok(Err(e)) => {
            let _ = tokio::time::timeout(
                stall,
                proto::write_frame(&mut send, &error(ErrorCode::BadRequest, e.to_string())),
            )
            .await;
            let _ = send.finish();
            return;
        }
        Err(_) => {
            let _ = send.reset(1u32.into());
            return;
        }
    };
    let refused = if session.exp <= now() {
        Some(common::TokenError::Expired)
    } else if session
        .sid
        .as_deref()
        .is_some_and(|sid| sh.keys.revocations().is_revoked(sid))
    {
        Some(common::TokenError::Revoked)
    } else {
        None
    };
    if let Some(e) = refused {
        sh.metrics.auth_failures.inc();
        let _ = tokio::time::timeout(
            stall,
            proto::write_frame(&mut send, &error(ErrorCode::Unauthorized, e.to_string())),
        )
        .await;
        let _ = send.finish();
        return;
    }
    let result = match req {
        Request::Hello { .. } => Err(error(ErrorCode::BadRequest, "hello was already sent")),
        Request::Prove { .. } => Err(error(
            ErrorCode::BadRequest,
            "prove only answers a challenge",
        )),
        Request::Begin {
            name,
            mime,
            size,
            hash,
        } => begin(&mut send, &mut recv, sh, session, name, mime, size, hash).await,
        Request::Put { file, offset, len } => put(&mut recv, sh, session, &file, offset, len).await,
        Request::Get { file, offset, len } => get(&mut send, sh, &file, offset, len).await,
        Request::Stat { file } => sh
            .store
            .get(&file)
            .map(|e| Response::Stat(e.info()))
            .map_err(|e| store_error(&e)),
        Request::Outboard { file } => outboard(&mut send, sh, &file).await,
    };
    let reply = match result {
        Ok(r) => r,
        Err(r) => {
            // Whatever the client still sends is not wanted.
            let _ = recv.stop(0u32.into());
            r
        }
    };
    if !matches!(reply, Response::Data { .. } | Response::OutboardData { .. }) {
        let _ = tokio::time::timeout(stall, proto::write_frame(&mut send, &reply)).await;
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(stall, send.stopped()).await;
}

#[allow(clippy::too_many_arguments)]
async fn begin(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    sh: &Shared,
    session: &Session,
    name: String,
    mime: String,
    size: u64,
    hash: String,
) -> Result<Response, Response> {
    if name.len() > MAX_NAME
        || mime.len() > MAX_NAME
        || name.chars().any(char::is_control)
        || mime.chars().any(char::is_control)
    {
        return Err(error(
            ErrorCode::BadRequest,
            format!("name and type must be at most {MAX_NAME} bytes without control characters"),
        ));
    }
    let hash = proto::parse_hash(&hash)
        .ok_or_else(|| error(ErrorCode::BadRequest, "hash must be 64 hex digits (BLAKE3)"))?;
    let store = &sh.store;
    let stall = sh.timeouts.stall;
    let upload = |e: &Entry| Response::Upload {
        file: e.id.clone(),
        complete: e.is_complete(),
        missing: e.missing(),
    };
    match store
        .begin(&session.user, &name, size, &hash)
        .map_err(|e| store_error(&e))?
    {
        Begin::Resume(e) => {
            info!(file = %Pii(&e.id), size, "upload resumed");
            Ok(upload(&e))
        }
        Begin::Dedup { nonce } => {
            let frame = Response::Challenge {
                nonce: hex::encode(nonce),
            };
            match tokio::time::timeout(stall, proto::write_frame(send, &frame)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(error(ErrorCode::BadRequest, e.to_string())),
                Err(_) => return Err(store_error(&StoreError::Stalled)),
            }
            let mac = match tokio::time::timeout(stall, proto::read_frame::<Request>(recv)).await {
                Ok(Ok(Request::Prove { mac })) => proto::parse_hash(&mac)
                    .ok_or_else(|| error(ErrorCode::BadRequest, "mac must be 64 hex digits"))?,
                Ok(Ok(_)) => return Err(error(ErrorCode::BadRequest, "expected prove")),
                Ok(Err(e)) => return Err(error(ErrorCode::BadRequest, e.to_string())),
                Err(_) => return Err(store_error(&StoreError::Stalled)),
            };
            let st = store.clone();
            let user = session.user.clone();
            let e = tokio::task::spawn_blocking(move || {
                st.prove(&user, &name, &mime, size, &hash, &mac)
            })
            .await
            .map_err(|_| error(ErrorCode::Internal, "proof check failed"))?
            .map_err(|e| store_error(&e))?;
            info!(file = %Pii(&e.id), size, "upload deduplicated");
            Ok(upload(&e))
        }
        Begin::New => {
            let len = tree::outboard_len(size);
            match tokio::time::timeout(
                stall,
                proto::write_frame(send, &Response::SendOutboard { len }),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(error(ErrorCode::BadRequest, e.to_string())),
                Err(_) => return Err(store_error(&StoreError::Stalled)),
            }
            let mut up = store
                .new_upload(&session.user, &name, &mime, size, Some(hash))
                .map_err(|e| store_error(&e))?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut left = len;
            let mut watch = Stall::new(stall);
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                read_full(recv, &mut buf[..n], &mut watch)
                    .await
                    .map_err(|e| store_error(&e))?;
                up.write(&buf[..n]).map_err(|e| store_error(&e))?;
                left -= n as u64;
            }
            let e = store.create(up).map_err(|e| store_error(&e))?;
            info!(file = %Pii(&e.id), size, "upload started");
            Ok(upload(&e))
        }
    }
}

async fn put(
    recv: &mut quinn::RecvStream,
    sh: &Shared,
    session: &Session,
    file: &str,
    offset: u64,
    len: u64,
) -> Result<Response, Response> {
    let entry = sh.store.get(file).map_err(|e| store_error(&e))?;
    if entry.owner != session.user {
        return Err(error(ErrorCode::NotFound, StoreError::NotFound.to_string()));
    }
    if !offset.is_multiple_of(GROUP_SIZE) || offset > entry.size || len > entry.size - offset {
        return Err(error(
            ErrorCode::BadRequest,
            format!(
                "range {offset}+{len} is not group-aligned or past the end of the file ({} bytes)",
                entry.size
            ),
        ));
    }
    let mut pos = offset;
    let end = offset + len;
    let mut complete = entry.is_complete();
    let mut watch = Stall::new(sh.timeouts.stall);
    // Two buffers: while one batch is verified and written on a blocking thread, the
    // next one is read from the stream, so the QUIC driver never waits on hashing or
    // the disk. They are page-aligned pool buffers, so the write bypasses the page cache.
    let mut spare = Some(POOL.take());
    let mut spare_cvs = Vec::with_capacity(BATCH / GROUP_SIZE as usize * tree::CV_LEN);
    type Done = (Pooled, Vec<u8>, Result<bool, StoreError>);
    type Job = tokio::task::JoinHandle<Done>;
    let mut pending: Option<Job> = None;
    let finish = |r: Result<Done, tokio::task::JoinError>| match r {
        Ok((b, c, r)) => (Some(b), c, r),
        Err(_) => (
            None,
            Vec::new(),
            Err(StoreError::Io(std::io::Error::other(
                "verification task failed",
            ))),
        ),
    };
    let result = async {
        if len == 0 {
            // An empty file has one empty group.
            complete = sh.store.put(&entry, offset, &[], &mut spare_cvs)?;
        }
        while pos < end {
            let n = (end - pos).min(BATCH as u64) as usize;
            let mut buf = spare.take().unwrap_or_else(|| POOL.take());
            buf.set_len(n);
            read_full(recv, &mut buf, &mut watch).await?;
            let mut cvs = std::mem::take(&mut spare_cvs);
            if let Some(job) = pending.take() {
                let (b, c, r) = finish(job.await);
                spare = b;
                spare_cvs = c;
                complete = r?;
            }
            let (store, e, at) = (sh.store.clone(), entry.clone(), pos);
            pending = Some(tokio::task::spawn_blocking(move || {
                let r = store.put(&e, at, &buf, &mut cvs);
                (buf, cvs, r)
            }));
            pos += n as u64;
        }
        if let Some(job) = pending.take() {
            complete = finish(job.await).2?;
        }
        Ok::<_, StoreError>(())
    }
    .await;
    if let Some(job) = pending.take() {
        // An error cut the stream: let the batch in flight land before saving progress.
        let _ = job.await;
    }
    if let Err(e) = sh.store.save_progress(&entry) {
        warn!(file = %Pii(&entry.id), error = %e, "saving upload progress failed");
    }
    result.map_err(|e| store_error(&e))?;
    Ok(Response::Stored { complete })
}

async fn get(
    send: &mut quinn::SendStream,
    sh: &Shared,
    file: &str,
    offset: u64,
    len: Option<u64>,
) -> Result<Response, Response> {
    let entry = sh.store.get(file).map_err(|e| store_error(&e))?;
    if offset > entry.size {
        return Err(error(
            ErrorCode::BadRequest,
            format!(
                "offset {offset} is past the end of the file ({} bytes)",
                entry.size
            ),
        ));
    }
    let len = len.unwrap_or(entry.size - offset).min(entry.size - offset);
    match tokio::time::timeout(
        sh.timeouts.stall,
        proto::write_frame(send, &Response::Data { offset, len }),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(error(ErrorCode::BadRequest, e.to_string())),
        Err(_) => return Err(store_error(&StoreError::Stalled)),
    }
    if let Err(e) = send_range(send, sh, &entry, offset, len).await {
        // The header is out: the only way to report now is to reset the stream.
        debug!(file = %Pii(&entry.id), error = %e, "download stopped");
        let _ = send.reset(1u32.into());
    }
    Ok(Response::Data { offset, len })
}

/// Reads `n` bytes at `pos` of a stored file into a pool buffer, on a blocking thread.
pub(crate) fn read_batch(
    store: &Arc<Store>,
    entry: &Arc<Entry>,
    pos: u64,
    n: usize,
) -> tokio::task::JoinHandle<Result<Pooled, StoreError>> {
    let (store, entry) = (store.clone(), entry.clone());
    tokio::task::spawn_blocking(move || {
        let mut buf = POOL.take();
        buf.set_len(n);
        let got = store.read_at(&entry, &mut buf, pos)?;
        if got != n {
            return Err(StoreError::Io(std::io::Error::other(
                "stored file is shorter than recorded",
            )));
        }
        Ok(buf)
    })
}

/// Waits for a batch read by [`read_batch`].
pub(crate) async fn batch_read(
    job: tokio::task::JoinHandle<Result<Pooled, StoreError>>,
) -> Result<Pooled, StoreError> {
    job.await
        .map_err(|_| StoreError::Io(std::io::Error::other("read task failed")))?
}

async fn flush_batch(
    send: &mut quinn::SendStream,
    sh: &Shared,
    watch: &mut Stall,
    (job, n): (tokio::task::JoinHandle<Result<Pooled, StoreError>>, usize),
) -> Result<(), StoreError> {
    let buf = batch_read(job).await?;
    write_full(send, buf.into_bytes(), watch).await?;
    sh.metrics.bytes_sent.inc_by(n as u64);
    Ok(())
}

/// Sends `len` bytes from `offset`, waiting for groups still being uploaded. The next
/// batch is read from disk while the current one is sent.
pub(crate) async fn send_range(
    send: &mut quinn::SendStream,
    sh: &Shared,
    entry: &Arc<Entry>,
    offset: u64,
    len: u64,
) -> Result<(), StoreError> {
    let mut rx = entry.subscribe();
    let mut pos = offset;
    let end = offset + len;
    let mut watch = Stall::new(sh.timeouts.stall);
    let mut pending: Option<(tokio::task::JoinHandle<Result<Pooled, StoreError>>, usize)> = None;
    while pos < end {
        let g = pos / GROUP_SIZE;
        let mut run = entry.readable_from(g, (BATCH as u64) / GROUP_SIZE)?;
        if run == 0 {
            // Send what is read before waiting for the upload to bring more.
            if let Some(job) = pending.take() {
                flush_batch(send, sh, &mut watch, job).await?;
            }
            run = loop {
                if rx.changed().await.is_err() {
                    return Err(StoreError::NotFound);
                }
                let n = entry.readable_from(g, (BATCH as u64) / GROUP_SIZE)?;
                if n > 0 {
                    break n;
                }
            };
            // Waiting for the uploader is not a stall of this download.
            watch = Stall::new(sh.timeouts.stall);
        }
        let stop = ((g + run) * GROUP_SIZE).min(end);
        let n = (stop - pos) as usize;
        let job = (read_batch(&sh.store, entry, pos, n), n);
        pos = stop;
        if let Some(prev) = pending.replace(job) {
            flush_batch(send, sh, &mut watch, prev).await?;
        }
    }
    if let Some(job) = pending.take() {
        flush_batch(send, sh, &mut watch, job).await?;
    }
    Ok(())
}

async fn outboard(
    send: &mut quinn::SendStream,
    sh: &Shared,
    file: &str,
) -> Result<Response, Response> {
    let entry = sh.store.get(file).map_err(|e| store_error(&e))?;
    let len = tree::outboard_len(entry.size);
    if entry.hash().is_none() {
        return Err(error(
            ErrorCode::BadRequest,
            "this file's hash is not known until its HTTP upload completes",
        ));
    }
    match tokio::time::timeout(
        sh.timeouts.stall,
        proto::write_frame(send, &Response::OutboardData { len }),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(error(ErrorCode::BadRequest, e.to_string())),
        Err(_) => return Err(store_error(&StoreError::Stalled)),
    }
    let mut pos = 0;
    let mut watch = Stall::new(sh.timeouts.stall);
    while pos < len {
        let n = (len - pos).min(64 * 1024) as usize;
        let mut buf = BytesMut::zeroed(n);
        match sh.store.read_outboard(&entry, &mut buf, pos) {
            Ok(Some(got)) if got == n => {}
            _ => {
                let _ = send.reset(1u32.into());
                return Ok(Response::OutboardData { len });
            }
        }
        if write_full(send, buf.freeze(), &mut watch).await.is_err() {
            let _ = send.reset(1u32.into());
            break;
        }
        pos += n as u64;
    }
    Ok(Response::OutboardData { len })
}

/// The transport settings of clients (and of the benchmark's raw-quinn baseline): they
/// send keep-alives every 5 s, so a relay's `stall_timeout` of more than that keeps a
/// quiet but live connection open.
pub fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(64u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window((4u32 << 20).into());
    t.receive_window((12u32 << 20).into());
    t.send_window(12 << 20);
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t.max_idle_timeout(Some(Duration::from_secs(30).try_into().unwrap()));
    t
}

/// The relay's transport settings: the clients' windows and limits, no keep-alives of
/// its own (the clients keep their connections alive), and `stall` as the QUIC idle
/// timeout (a peer silent that long is dropped).
pub(crate) fn server_transport(stall: Duration) -> quinn::TransportConfig {
    let mut t = transport();
    t.keep_alive_interval(None);
    t.max_idle_timeout(stall.try_into().ok());
    t
}

/// Binds the endpoint (inside the relay's runtime).
pub(crate) fn bind(addr: SocketAddr, cfg: quinn::ServerConfig) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::server(cfg, addr)
}
