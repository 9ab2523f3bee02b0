//! The relay's Rust client: upload, download and stat, resumable and verified.

use std::collections::VecDeque;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::bitmap::Bitmap;
use crate::iobuf::{DualFile, Pool, Pooled};
use crate::proto::{self, ErrorCode, FileInfo, FrameError, Request, Response};
use crate::tls::Trust;
use crate::tree::{self, CV_LEN, GROUP_SIZE};

/// Groups per request: 8 MiB.
const PIECE_GROUPS: u64 = 512;
/// Bytes read, verified and written per step (512 KiB).
const BATCH: usize = 32 * GROUP_SIZE as usize;
/// Batch buffers of uploads (held by QUIC until acknowledged) and downloads (two per
/// stream).
static POOL: Pool = Pool::new(BATCH, (8 << 20) / BATCH);

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to the relay: {0}")]
    Connect(String),
    #[error("relay refused ({code}): {message}")]
    Server { code: ErrorCode, message: String },
    #[error("relay protocol: {0}")]
    Protocol(String),
    #[error(
        "data from the relay does not match the file's hash (group {0}); nothing of it was written"
    )]
    Corrupt(u64),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

impl From<quinn::ReadExactError> for ClientError {
    fn from(e: quinn::ReadExactError) -> Self {
        ClientError::Protocol(format!("read: {e}"))
    }
}

impl From<quinn::WriteError> for ClientError {
    fn from(e: quinn::WriteError) -> Self {
        ClientError::Protocol(format!("write: {e}"))
    }
}

impl ClientError {
    /// The relay's error code, if the relay refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

fn refused(r: Response) -> ClientError {
    match r {
        Response::Error { code, message } => ClientError::Server { code, message },
        other => ClientError::Protocol(format!("unexpected answer {other:?}")),
    }
}

/// Where and how to reach the relay.
#[derive(Debug, Clone)]
pub struct Options {
    pub server: SocketAddr,
    /// Name the certificate is checked for (with [`Trust::Roots`]).
    pub server_name: String,
    pub token: String,
    pub trust: Trust,
    /// Parallel QUIC streams per transfer.
    pub streams: usize,
}

/// Bytes done and total of a transfer, for progress display.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
    /// Bytes actually sent or received on the network (resumed bytes excluded).
    pub transferred: AtomicU64,
    /// The file id, once the relay has given it (uploads).
    pub id: std::sync::OnceLock<String>,
    /// Woken whenever the counters move or the id is set.
    pub changed: tokio::sync::Notify,
}

impl Progress {
    fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        self.transferred.fetch_add(n, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Waits until `cond` holds (checked whenever the progress moves).
    pub async fn wait_for(&self, cond: impl Fn(&Progress) -> bool) {
        loop {
            let n = self.changed.notified();
            if cond(self) {
                return;
            }
            n.await;
        }
    }
}

/// A connection to the relay.
pub struct Client {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    streams: usize,
    /// The identity the token names.
    pub user: String,
    pub max_file_size: u64,
}

impl Client {
    /// Connects and authenticates.
    pub async fn connect(opts: &Options) -> Result<Client, ClientError> {
        let bind: SocketAddr = if opts.server.is_ipv6() {
            "[::]:0".parse().unwrap()
        } else {
            "0.0.0.0:0".parse().unwrap()
        };
        Client::connect_from(opts, bind).await
    }

    /// Connects from local address `bind` and authenticates.
    pub async fn connect_from(opts: &Options, bind: SocketAddr) -> Result<Client, ClientError> {
        let cfg = crate::tls::client_config(&opts.trust, crate::server::transport())
            .map_err(|e| ClientError::Connect(format!("{e:#}")))?;
        let mut endpoint =
            quinn::Endpoint::client(bind).map_err(|e| ClientError::Connect(e.to_string()))?;
        endpoint.set_default_client_config(cfg);
        let connecting = endpoint
            .connect(opts.server, &opts.server_name)
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let conn = match tokio::time::timeout(std::time::Duration::from_secs(10), connecting).await
        {
            Ok(Err(quinn::ConnectionError::ConnectionClosed(c)))
                if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                return Err(ClientError::Connect(format!(
                    "{}: the relay refused the connection (it is at its connection limit): retry later",
                    opts.server
                )));
            }
            Ok(c) => c.map_err(|e| ClientError::Connect(format!("{} ({e})", opts.server)))?,
            Err(_) => {
                return Err(ClientError::Connect(format!(
                    "no answer from {} within 10 s: is the relay running there, and is UDP let through?",
                    opts.server
                )));
            }
        };
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        proto::write_frame(
            &mut send,
            &Request::Hello {
                version: proto::VERSION,
                token: opts.token.clone(),
            },
        )
        .await?;
        let _ = send.finish();
        match proto::read_frame(&mut recv).await? {
            Response::Welcome {
                user,
                max_file_size,
            } => Ok(Client {
                endpoint,
                conn,
                streams: opts.streams.max(1),
                user,
                max_file_size,
            }),
            other => Err(refused(other)),
        }
    }

    /// Waits until the connection is closed, and says why (for a close by the relay:
    /// its code, one of `proto::CLOSE_*`, and reason).
    pub async fn closed(&self) -> quinn::ConnectionError {
        self.conn.closed().await
    }

    /// Closes the connection cleanly.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"bye");
        self.endpoint.wait_idle().await;
    }

    async fn request(
        &self,
        req: &Request,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), ClientError> {
        let (mut send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        proto::write_frame(&mut send, req).await?;
        Ok((send, recv))
    }

    /// Describes a file.
    pub async fn stat(&self, id: &str) -> Result<FileInfo, ClientError> {
        let (mut send, mut recv) = self
            .request(&Request::Stat {
                file: id.to_owned(),
            })
            .await?;
        let _ = send.finish();
        match proto::read_frame(&mut recv).await? {
            Response::Stat(i) => Ok(i),
            other => Err(refused(other)),
        }
    }

    /// The file's outboard, checked against its hash.
    pub async fn outboard(&self, info: &FileInfo) -> Result<Vec<u8>, ClientError> {
        let hash = info
            .hash
            .as_deref()
            .and_then(proto::parse_hash)
            .ok_or_else(|| {
                ClientError::Protocol(
                    "the file's hash is not known yet (HTTP upload under way)".into(),
                )
            })?;
        let (mut send, mut recv) = self
            .request(&Request::Outboard {
                file: info.id.clone(),
            })
            .await?;
        let _ = send.finish();
        let len = match proto::read_frame(&mut recv).await? {
            Response::OutboardData { len } if len == tree::outboard_len(info.size) => len,
            Response::OutboardData { len } => {
                return Err(ClientError::Protocol(format!(
                    "outboard of {len} bytes for a file of {} bytes",
                    info.size
                )));
            }
            other => return Err(refused(other)),
        };
        let mut ob = vec![0u8; len as usize];
        recv.read_exact(&mut ob).await?;
        if !tree::outboard_matches(&ob, info.size, &hash) {
            return Err(ClientError::Corrupt(0));
        }
        Ok(ob)
    }

    /// Uploads a file (resuming an earlier upload of the same content) and returns its id.
    pub async fn upload(
        &self,
        path: &Path,
        name: &str,
        mime: &str,
        progress: Arc<Progress>,
    ) -> Result<String, ClientError> {
        let file = Arc::new(File::open(path)?);
        let size = file.metadata()?.len();
        if size > self.max_file_size {
            return Err(ClientError::Server {
                code: ErrorCode::TooLarge,
                message: format!(
                    "file of {size} bytes is over the relay's limit of {} bytes",
                    self.max_file_size
                ),
            });
        }
        progress.total.store(size, Ordering::Relaxed);
        let f = file.clone();
        let (outboard, root) = tokio::task::spawn_blocking(move || {
            tree::outboard_of(
                std::io::BufReader::with_capacity(1 << 20, ReadAt::new(&f)),
                size,
            )
        })
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))??;
        self.upload_with(file, size, &outboard, &root, name, mime, progress)
            .await
    }

    /// Uploads bytes described by `outboard` and `root` (the file may lie about them:
    /// tests use this to send corrupt data).
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_with(
        &self,
        file: Arc<File>,
        size: u64,
        outboard: &[u8],
        root: &[u8; 32],
        name: &str,
        mime: &str,
        progress: Arc<Progress>,
    ) -> Result<String, ClientError> {
        let begin = Request::Begin {
            name: name.to_owned(),
            mime: mime.to_owned(),
            size,
            hash: hex::encode(root),
        };
        let (mut send, mut recv) = self.request(&begin).await?;
        let mut answer: Response = proto::read_frame(&mut recv).await?;
        if let Response::SendOutboard { len } = answer {
            if len != outboard.len() as u64 {
                return Err(ClientError::Protocol(
                    "relay asked for an outboard of another size".into(),
                ));
            }
            send.write_all(outboard).await?;
            answer = proto::read_frame(&mut recv).await?;
        } else if let Response::Challenge { nonce } = &answer {
            let key = proto::parse_hash(nonce)
                .ok_or_else(|| ClientError::Protocol("bad challenge".into()))?;
            let f = file.clone();
            let mac = tokio::task::spawn_blocking(move || -> std::io::Result<[u8; 32]> {
                let mut h = blake3::Hasher::new_keyed(&key);
                std::io::copy(
                    &mut std::io::BufReader::with_capacity(1 << 20, ReadAt::new(&f)),
                    &mut h,
                )?;
                Ok(*h.finalize().as_bytes())
            })
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))??;
            proto::write_frame(
                &mut send,
                &Request::Prove {
                    mac: hex::encode(mac),
                },
            )
            .await?;
            answer = proto::read_frame(&mut recv).await?;
        }
        let _ = send.finish();
        let (id, complete, missing) = match answer {
            Response::Upload {
                file,
                complete,
                missing,
            } => (file, complete, missing),
            other => return Err(refused(other)),
        };
        let _ = progress.id.set(id.clone());
        progress.changed.notify_waiters();
        let groups = tree::group_count(size);
        let missing_groups: u64 = missing.iter().map(|(s, e)| e - s).sum();
        let missing_bytes: u64 = missing
            .iter()
            .map(|&(s, e)| (e * GROUP_SIZE).min(size) - (s * GROUP_SIZE).min(size))
            .sum();
        progress.done.store(size - missing_bytes, Ordering::Relaxed);
        if complete || missing_groups == 0 {
            return Ok(id);
        }
        if missing.iter().any(|&(s, e)| s >= e || e > groups) {
            return Err(ClientError::Protocol(
                "relay asked for groups past the end of the file".into(),
            ));
        }
        let queue = Arc::new(Mutex::new(pieces(&missing)));
        // Bulk reads bypass the page cache where the file system allows.
        let file = Arc::new(DualFile::new(file.try_clone()?, false));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..self.streams {
            let (conn, queue, file, id, progress) = (
                self.conn.clone(),
                queue.clone(),
                file.clone(),
                id.clone(),
                progress.clone(),
            );
            workers.spawn(async move {
                let mut last = false;
                loop {
                    let Some((s, e)) = queue.lock().pop_front() else {
                        return Ok::<_, ClientError>(last);
                    };
                    last = put_piece(&conn, &file, &id, size, s, e, &progress).await?;
                }
            });
        }
        let mut complete = false;
        while let Some(r) = workers.join_next().await {
            match r {
                Ok(Ok(c)) => complete |= c,
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
        }
        if !complete && !self.stat(&id).await?.complete {
            return Err(ClientError::Protocol(
                "every range was sent but the relay does not have the whole file".into(),
            ));
        }
        Ok(id)
    }

    /// Downloads a whole file to `out`, resuming from `out.part` if present. Every
    /// byte is verified before it is written.
    pub async fn download(
        &self,
        id: &str,
        out: &Path,
        progress: Arc<Progress>,
    ) -> Result<FileInfo, ClientError> {
        let info = self.stat(id).await?;
        let outboard = Arc::new(self.outboard(&info).await?);
        let hash = proto::parse_hash(info.hash.as_deref().unwrap_or_default()).unwrap_or_default();
        let groups = tree::group_count(info.size);
        let part = part_path(out, ".part");
        let state = part_path(out, ".part.state");
        let have = match std::fs::read(&state) {
            Ok(b) if b.len() > 32 && b[..32] == hash && part.exists() => {
                Bitmap::from_bytes(groups, &b[32..]).unwrap_or_else(|| Bitmap::new(groups))
            }
            _ => Bitmap::new(groups),
        };
        let file = Arc::new(DualFile::open(&part, true, true, have.count() == 0)?);
        // What an earlier run wrote is checked again: a crash may have lost pages.
        let mut have = have;
        if have.count() > 0 {
            let mut buf = crate::iobuf::AlignedBuf::new(GROUP_SIZE as usize);
            for g in 0..groups {
                if have.get(g) {
                    let l = tree::group_len(info.size, g);
                    let ok = file.read_at(&mut buf[..l], g * GROUP_SIZE)? == l
                        && tree::group_cv(&buf[..l], g, groups)[..]
                            == outboard[g as usize * CV_LEN..][..CV_LEN];
                    if !ok {
                        have.clear(g);
                    }
                }
            }
        }
        let have = Arc::new(Mutex::new(have));
        progress.total.store(info.size, Ordering::Relaxed);
        progress
            .done
            .store(done_bytes(&have.lock(), info.size), Ordering::Relaxed);
        let missing = have.lock().missing();
        let queue = Arc::new(Mutex::new(pieces(&missing)));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..self.streams {
            let (conn, queue, file, outboard, have, progress, id, state) = (
                self.conn.clone(),
                queue.clone(),
                file.clone(),
                outboard.clone(),
                have.clone(),
                progress.clone(),
                id.to_owned(),
                state.clone(),
            );
            let size = info.size;
            workers.spawn(async move {
                loop {
                    let Some((s, e)) = queue.lock().pop_front() else {
                        return Ok::<_, ClientError>(());
                    };
                    let save = || save_state(&state, &hash, &have);
                    let r = get_piece(
                        &conn, &file, &id, size, &outboard, s, e, &have, &progress, &save,
                    )
                    .await;
                    save_state(&state, &hash, &have);
                    r?;
                }
            });
        }
        while let Some(r) = workers.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
        }
        if !have.lock().is_full() {
            return Err(ClientError::Protocol(
                "download ended with groups missing".into(),
            ));
        }
        file.set_len(info.size)?;
        file.sync_data()?;
        std::fs::rename(&part, out)?;
        let _ = std::fs::remove_file(&state);
        Ok(info)
    }

    /// Reads a byte range, verified (the covering groups are fetched and checked).
    pub async fn read_range(
        &self,
        info: &FileInfo,
        outboard: &[u8],
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, ClientError> {
        if offset + len > info.size {
            return Err(ClientError::Protocol(
                "range past the end of the file".into(),
            ));
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        let groups = tree::group_count(info.size);
        let g0 = offset / GROUP_SIZE;
        let g1 = (offset + len).div_ceil(GROUP_SIZE);
        let start = g0 * GROUP_SIZE;
        let end = (g1 * GROUP_SIZE).min(info.size);
        let (mut send, mut recv) = self
            .request(&Request::Get {
                file: info.id.clone(),
                offset: start,
                len: Some(end - start),
            })
            .await?;
        let _ = send.finish();
        match proto::read_frame(&mut recv).await? {
            Response::Data { len: l, .. } if l == end - start => {}
            other => return Err(refused(other)),
        }
        let mut buf = vec![0u8; (end - start) as usize];
        recv.read_exact(&mut buf).await?;
        for g in g0..g1 {
            let s = ((g - g0) * GROUP_SIZE) as usize;
            let l = tree::group_len(info.size, g);
            if tree::group_cv(&buf[s..s + l], g, groups)[..]
                != outboard[g as usize * CV_LEN..][..CV_LEN]
            {
                return Err(ClientError::Corrupt(g));
            }
        }
        let s = (offset - start) as usize;
        Ok(buf[s..s + len as usize].to_vec())
    }
}

fn part_path(out: &Path, suffix: &str) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn done_bytes(have: &Bitmap, size: u64) -> u64 {
    (0..have.len())
        .filter(|&g| have.get(g))
        .map(|g| tree::group_len(size, g) as u64)
        .sum()
}

fn save_state(path: &Path, hash: &[u8; 32], have: &Mutex<Bitmap>) {
    let mut bytes = hash.to_vec();
    bytes.extend_from_slice(&have.lock().to_bytes());
    let tmp = part_path(path, ".tmp");
    if std::fs::write(&tmp, &bytes).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Splits group ranges into pieces of at most [`PIECE_GROUPS`].
fn pieces(ranges: &[(u64, u64)]) -> VecDeque<(u64, u64)> {
    let mut out = VecDeque::new();
    for &(mut s, e) in ranges {
        while s < e {
            let n = (e - s).min(PIECE_GROUPS);
            out.push_back((s, s + n));
            s += n;
        }
    }
    out
}

/// Reads `n` bytes at `pos` of the file being uploaded, on a blocking thread.
fn read_batch(
    file: &Arc<DualFile>,
    pos: u64,
    n: usize,
) -> tokio::task::JoinHandle<std::io::Result<Pooled>> {
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = POOL.take();
        buf.set_len(n);
        if file.read_at(&mut buf, pos)? != n {
            return Err(std::io::Error::other(
                "the file got shorter while being uploaded",
            ));
        }
        Ok(buf)
    })
}

async fn put_piece(
    conn: &quinn::Connection,
    file: &Arc<DualFile>,
    id: &str,
    size: u64,
    g0: u64,
    g1: u64,
    progress: &Progress,
) -> Result<bool, ClientError> {
    let start = g0 * GROUP_SIZE;
    let end = (g1 * GROUP_SIZE).min(size);
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    proto::write_frame(
        &mut send,
        &Request::Put {
            file: id.to_owned(),
            offset: start,
            len: end - start,
        },
    )
    .await?;
    // The next batch is read from disk while the current one is sent.
    let batch = |pos: u64| read_batch(file, pos, (end - pos).min(BATCH as u64) as usize);
    let mut next = (start < end).then(|| batch(start));
    let mut pos = start;
    while let Some(job) = next.take() {
        let buf = job
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))??;
        let n = buf.len();
        if pos + (n as u64) < end {
            next = Some(batch(pos + n as u64));
        }
        if let Err(e) = send.write_chunk(buf.into_bytes()).await {
            // The relay stopped reading: its answer says why.
            return match proto::read_frame::<Response>(&mut recv).await {
                Ok(r) => Err(refused(r)),
                Err(_) => Err(e.into()),
            };
        }
        pos += n as u64;
        progress.add(n as u64);
    }
    let _ = send.finish();
    match proto::read_frame(&mut recv).await? {
        Response::Stored { complete } => Ok(complete),
        other => Err(refused(other)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn get_piece(
    conn: &quinn::Connection,
    file: &Arc<DualFile>,
    id: &str,
    size: u64,
    outboard: &Arc<Vec<u8>>,
    g0: u64,
    g1: u64,
    have: &Arc<Mutex<Bitmap>>,
    progress: &Arc<Progress>,
    save: &(dyn Fn() + Sync),
) -> Result<(), ClientError> {
    let start = g0 * GROUP_SIZE;
    let end = (g1 * GROUP_SIZE).min(size);
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    proto::write_frame(
        &mut send,
        &Request::Get {
            file: id.to_owned(),
            offset: start,
            len: Some(end - start),
        },
    )
    .await?;
    let _ = send.finish();
    match proto::read_frame(&mut recv).await? {
        Response::Data { offset, len } if offset == start && len == end - start => {}
        Response::Data { .. } => {
            return Err(ClientError::Protocol(
                "relay sent another range than asked".into(),
            ));
        }
        other => return Err(refused(other)),
    }
    // Two buffers: one is verified and written on a blocking thread while the next is
    // received, so the QUIC driver never waits on hashing or the disk.
    // The buffers are page-aligned, so the writes bypass the page cache.
    type Job = tokio::task::JoinHandle<(Pooled, Result<(), ClientError>)>;
    let finish = |r: Result<(Pooled, Result<(), ClientError>), tokio::task::JoinError>| match r {
        Ok((b, r)) => (Some(b), r),
        Err(e) => (None, Err(ClientError::Protocol(e.to_string()))),
    };
    let mut spare = Some(POOL.take());
    let mut pending: Option<Job> = None;
    let mut pos = start;
    let mut since_save = 0u64;
    while pos < end {
        let n = (end - pos).min(BATCH as u64) as usize;
        let mut buf = spare.take().unwrap_or_else(|| POOL.take());
        buf.set_len(n);
        recv.read_exact(&mut buf).await?;
        if let Some(job) = pending.take() {
            let (b, r) = finish(job.await);
            r?;
            spare = b;
        }
        let (file, outboard, have, progress, at) = (
            file.clone(),
            outboard.clone(),
            have.clone(),
            progress.clone(),
            pos,
        );
        pending = Some(tokio::task::spawn_blocking(move || {
            let r = verify_and_write(&file, size, &outboard, &buf, at, &have, &progress);
            (buf, r)
        }));
        pos += n as u64;
        since_save += n as u64;
        // Record progress every 2 MiB, so a killed download resumes near where it was.
        if since_save >= 8 * BATCH as u64 {
            since_save = 0;
            save();
        }
    }
    if let Some(job) = pending.take() {
        finish(job.await).1?;
    }
    if size == 0 {
        have.lock().set(0);
    }
    Ok(())
}

/// Checks the groups of `buf` (bytes from `pos`) against the outboard, then writes them.
fn verify_and_write(
    file: &DualFile,
    size: u64,
    outboard: &[u8],
    buf: &[u8],
    pos: u64,
    have: &Mutex<Bitmap>,
    progress: &Progress,
) -> Result<(), ClientError> {
    let groups = tree::group_count(size);
    let first = pos / GROUP_SIZE;
    let count = (buf.len() as u64).div_ceil(GROUP_SIZE);
    for i in 0..count {
        let g = first + i;
        let s = (i * GROUP_SIZE) as usize;
        let l = tree::group_len(size, g);
        if tree::group_cv(&buf[s..s + l], g, groups)[..]
            != outboard[g as usize * CV_LEN..][..CV_LEN]
        {
            return Err(ClientError::Corrupt(g));
        }
    }
    file.write_at(buf, pos)?;
    {
        let mut h = have.lock();
        for i in 0..count {
            h.set(first + i);
        }
    }
    progress.add(buf.len() as u64);
    Ok(())
}

/// Sequential reads over a shared file handle (positional reads, no seeking).
struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
}

impl<'a> ReadAt<'a> {
    fn new(file: &'a File) -> Self {
        ReadAt { file, pos: 0 }
    }
}

impl std::io::Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}
