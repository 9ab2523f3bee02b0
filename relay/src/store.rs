//! File records, upload sessions, verification on write, limits and expiry.
//!
//! A *file* is a record (`files/<id>.json`: owner, name, type, size, hash, times) that
//! points at a blob: its own partial blob while the upload is under way, then the
//! complete blob of its hash, shared with every other file of the same content.
//! Nothing unverified is ever written: each 16 KiB group is checked against the
//! outboard before it reaches the disk, and a file is published when every group is.
//!
//! No descriptor is held per file: blobs are opened on use through a small cache
//! ([`crate::handles`]). Files are deleted only by expiry or quota-driven removal, never
//! because a blob could not be opened, and always record first, blob after: a crash in
//! between leaves an orphan blob, which the next start-up deletes; never a record
//! without its blob. Completion is the other way round (the record says "complete",
//! then the blob moves), and a start-up finishes a move a crash cut short. Start-up
//! itself is in [`load`].

mod load;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::pii::Pii;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::backend::{Backend, Blob, Part};
use crate::bitmap::Bitmap;
use crate::clock::Clock;
use crate::handles::{Handles, Loc};
use crate::metrics::Metrics;
use crate::proto::{ErrorCode, FileInfo};
use crate::rate::PerMinute;
use crate::tree::{self, CV_LEN, GROUP_SIZE};

/// Why a store operation failed. `Display` is safe to show the client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("file of {size} bytes is over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("upload of {size} bytes would exceed your quota: {used} of {quota} bytes used")]
    QuotaExceeded { size: u64, used: u64, quota: u64 },
    #[error(
        "you have {limit} unfinished uploads, the most allowed: finish one (or wait for one to expire) before starting another"
    )]
    TooManyPartialUploads { limit: u32 },
    #[error(
        "upload of {size} bytes would exceed the bytes your unfinished uploads may declare: {used} of {limit} bytes declared; finish one first"
    )]
    PartialQuotaExceeded { size: u64, used: u64, limit: u64 },
    #[error("too many uploads started: at most {per_minute} a minute; retry in {retry_after} s")]
    RateLimited { retry_after: u64, per_minute: u32 },
    #[error("the server's disk is full: what was received is kept, retry later to resume")]
    DiskFull,
    #[error("no such file (it may have expired)")]
    NotFound,
    #[error("this file cannot be read on the relay right now; retry later")]
    Unavailable,
    #[error("data of group {group} (bytes {start}..) does not match the file's hash")]
    HashMismatch { group: u64, start: u64 },
    #[error("the outboard does not match the declared hash")]
    OutboardMismatch,
    #[error("proof of possession failed")]
    ProofFailed,
    #[error(
        "the transfer stalled (no data moved for too long) and was ended; what was stored is kept: resume it"
    )]
    Stalled,
    #[error("{0}")]
    BadRequest(String),
    #[error("storage error")]
    Io(#[from] io::Error),
}

impl StoreError {
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::TooLarge { .. } => ErrorCode::TooLarge,
            StoreError::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
            StoreError::TooManyPartialUploads { .. } => ErrorCode::TooManyPartialUploads,
            StoreError::PartialQuotaExceeded { .. } => ErrorCode::PartialQuotaExceeded,
            StoreError::RateLimited { .. } => ErrorCode::RateLimited,
            StoreError::DiskFull => ErrorCode::DiskFull,
            StoreError::NotFound => ErrorCode::NotFound,
            StoreError::HashMismatch { .. } | StoreError::OutboardMismatch => {
                ErrorCode::HashMismatch
            }
            StoreError::ProofFailed => ErrorCode::ProofFailed,
            StoreError::Stalled => ErrorCode::Timeout,
            StoreError::BadRequest(_) => ErrorCode::BadRequest,
            StoreError::Unavailable | StoreError::Io(_) => ErrorCode::Internal,
        }
    }
}

fn io_err(e: io::Error) -> StoreError {
    if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
        StoreError::DiskFull
    } else {
        StoreError::Io(e)
    }
}

/// Limits the store enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_file_size: u64,
    /// Bytes one user may keep stored (complete and partial); 0 = unlimited.
    pub user_quota: u64,
    pub ttl: Duration,
    /// Unfinished uploads one user may have; 0 = unlimited.
    pub max_partial_uploads: u32,
    /// Bytes (declared sizes) of one user's unfinished uploads; 0 = unlimited.
    pub max_partial_bytes: u64,
    /// New uploads one user may start a minute (bursts of as many); 0 = unlimited.
    pub upload_starts_per_minute: u32,
}

impl Limits {
    pub fn of(c: &crate::Config) -> Limits {
        Limits {
            max_file_size: c.max_file_size,
            user_quota: c.user_quota,
            ttl: c.ttl,
            max_partial_uploads: c.max_partial_uploads,
            max_partial_bytes: c.max_partial_bytes,
            upload_starts_per_minute: c.upload_starts_per_minute,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::of(&crate::Config::default())
    }
}

/// What is persisted of a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: String,
    owner: String,
    name: String,
    mime: String,
    size: u64,
    hash: Option<String>,
    created: u64,
    expires: u64,
    complete: bool,
}

/// A file known to the store.
pub struct Entry {
    pub id: String,
    pub owner: String,
    pub name: String,
    pub mime: String,
    pub size: u64,
    pub created: u64,
    pub expires: u64,
    pub groups: u64,
    state: Mutex<State>,
    /// Bumped whenever groups are added or the file completes or is removed.
    changed: tokio::sync::watch::Sender<u64>,
    /// An HTTP request is appending to this (sequential) upload.
    appending: AtomicBool,
}

struct State {
    hash: Option<[u8; 32]>,
    complete: bool,
    removed: bool,
    have: Bitmap,
    /// Groups added since the bitmap was last saved.
    dirty: bool,
    /// HTTP sequential uploads: root builder over the groups received so far.
    sequential: Option<tree::RootBuilder>,
}

/// The right to append to a sequential upload, held by one request at a time.
pub struct Appending<'a>(&'a Entry);

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        self.0.appending.store(false, Ordering::Release);
    }
}

impl Entry {
    fn new(rec: &Record, state: State) -> Entry {
        Entry {
            id: rec.id.clone(),
            owner: rec.owner.clone(),
            name: rec.name.clone(),
            mime: rec.mime.clone(),
            size: rec.size,
            created: rec.created,
            expires: rec.expires,
            groups: tree::group_count(rec.size),
            state: Mutex::new(state),
            changed: tokio::sync::watch::Sender::new(0),
            appending: AtomicBool::new(false),
        }
    }

    pub fn info(&self) -> FileInfo {
        let st = self.state.lock();
        let stored = if st.complete {
            self.size
        } else {
            stored_bytes(&st.have, self.size)
        };
        FileInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            mime: self.mime.clone(),
            size: self.size,
            hash: st.hash.map(hex::encode),
            complete: st.complete,
            stored,
            created: self.created,
            expires: self.expires,
        }
    }

    pub fn is_complete(&self) -> bool {
        self.state.lock().complete
    }

    pub fn hash(&self) -> Option<[u8; 32]> {
        self.state.lock().hash
    }

    /// Missing group ranges (empty when complete).
    pub fn missing(&self) -> Vec<(u64, u64)> {
        let st = self.state.lock();
        if st.complete {
            Vec::new()
        } else {
            st.have.missing()
        }
    }

    /// Watches changes (new groups, completion, removal).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The right to append (HTTP upload), unless another request holds it.
    pub fn try_append(&self) -> Option<Appending<'_>> {
        self.appending
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Appending(self))
    }

    /// Number of consecutive groups readable from `group`, at most `max`; `Err` if the
    /// file was removed.
    pub fn readable_from(&self, group: u64, max: u64) -> Result<u64, StoreError> {
        let st = self.state.lock();
        if st.removed {
            return Err(StoreError::NotFound);
        }
        if st.complete {
            return Ok(max.min(self.groups.saturating_sub(group)));
        }
        Ok(st.have.run_from(group, max))
    }

    fn loc(&self, st: &State) -> Loc {
        match (st.complete, st.hash) {
            (true, Some(h)) => Loc::Complete(h),
            _ => Loc::Partial(self.id.clone()),
        }
    }

    fn record(&self, st: &State) -> Record {
        Record {
            id: self.id.clone(),
            owner: self.owner.clone(),
            name: self.name.clone(),
            mime: self.mime.clone(),
            size: self.size,
            hash: st.hash.map(hex::encode),
            created: self.created,
            expires: self.expires,
            complete: st.complete,
        }
    }
}

fn stored_bytes(have: &Bitmap, size: u64) -> u64 {
    let n = have.count();
    if n == 0 {
        return 0;
    }
    let last = have.len() - 1;
    if have.get(last) {
        (n - 1) * GROUP_SIZE + tree::group_len(size, last) as u64
    } else {
        n * GROUP_SIZE
    }
}

/// Outcome of [`Store::begin`].
pub enum Begin {
    /// An upload of this content by this user exists: resume it.
    Resume(Arc<Entry>),
    /// The content is stored complete: the uploader must prove possession.
    Dedup { nonce: [u8; 32] },
    /// New content: send the outboard.
    New,
}

/// What one user has stored.
#[derive(Default, Debug, Clone, Copy)]
struct Usage {
    /// Declared sizes of all their files.
    bytes: u64,
    /// Unfinished uploads.
    partials: u32,
    /// Declared sizes of their unfinished uploads.
    partial_bytes: u64,
}

#[derive(Default)]
struct Index {
    files: HashMap<String, Arc<Entry>>,
    /// (owner, hash) -> id of that owner's partial upload of that content.
    partial: HashMap<(String, [u8; 32]), String>,
    /// Complete blob hash -> number of complete files pointing at it.
    refs: HashMap<[u8; 32], u32>,
    usage: HashMap<String, Usage>,
    /// Outstanding dedup challenges: (owner, hash) -> (nonce, issued at ms).
    challenges: HashMap<(String, [u8; 32]), ([u8; 32], u64)>,
}

impl Index {
    fn usage(&self, owner: &str) -> Usage {
        self.usage.get(owner).copied().unwrap_or_default()
    }

    /// Adjusts `owner`'s usage for a file of `size` bytes: added (`+1`) or removed
    /// (`-1`), partial or complete.
    fn account(&mut self, owner: &str, size: u64, partial: bool, add: bool) {
        let u = self.usage.entry(owner.to_owned()).or_default();
        if add {
            u.bytes += size;
            if partial {
                u.partials += 1;
                u.partial_bytes += size;
            }
        } else {
            u.bytes = u.bytes.saturating_sub(size);
            if partial {
                u.partials = u.partials.saturating_sub(1);
                u.partial_bytes = u.partial_bytes.saturating_sub(size);
            }
        }
        if u.bytes == 0 && u.partials == 0 {
            self.usage.remove(owner);
        }
    }

    /// Adds a loaded or new entry and its accounting.
    fn insert(&mut self, entry: Arc<Entry>) {
        {
            let st = entry.state.lock();
            if st.complete {
                *self
                    .refs
                    .entry(st.hash.expect("complete files have a hash"))
                    .or_default() += 1;
            } else if let Some(h) = st.hash {
                self.partial
                    .insert((entry.owner.clone(), h), entry.id.clone());
            }
            let partial = !st.complete;
            drop(st);
            self.account(&entry.owner, entry.size, partial, true);
        }
        self.files.insert(entry.id.clone(), entry);
    }
}

/// How long a dedup challenge stays open.
const CHALLENGE_TTL_MS: u64 = 10 * 60 * 1000;

/// The relay's storage.
pub struct Store {
    dir: PathBuf,
    backend: Arc<dyn Backend>,
    handles: Handles,
    limits: Limits,
    clock: Clock,
    starts: PerMinute,
    index: Mutex<Index>,
    /// Records on disk that could not be read or their blobs opened yet (an I/O error
    /// such as too many open files): kept, reported, and retried by [`Store::retry_pending`].
    pending: Mutex<HashSet<String>>,
    /// Records on disk that cannot be parsed: kept for an operator to look at.
    corrupt: AtomicUsize,
    metrics: Metrics,
}

/// Writes `path` through a temporary file and a rename, so it is either the old or the
/// new content. With `durable`, the content and the rename reach the disk first.
fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_data()?;
        }
    }
    std::fs::rename(&tmp, path)?;
    if durable {
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

impl Store {
    /// Opens the store in `dir` (records in `dir/files`), reloading every file: complete
    /// ones as they are, partial ones with the groups saved as present re-verified.
    /// Files whose blobs cannot be opened now are kept and retried (see
    /// [`Store::retry_pending`]); nothing is deleted for it.
    pub fn open(
        dir: &Path,
        backend: Arc<dyn Backend>,
        limits: Limits,
        clock: Clock,
        metrics: Metrics,
    ) -> io::Result<Store> {
        std::fs::create_dir_all(dir.join("files"))?;
        let store = Store {
            dir: dir.to_owned(),
            handles: Handles::new(backend.clone(), crate::handles::default_capacity()),
            backend,
            starts: PerMinute::new(limits.upload_starts_per_minute),
            limits,
            clock,
            index: Mutex::new(Index::default()),
            pending: Mutex::new(HashSet::new()),
            corrupt: AtomicUsize::new(0),
            metrics,
        };
        store.reload()?;
        Ok(store)
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join("files").join(format!("{id}.json"))
    }

    fn have_path(&self, id: &str) -> PathBuf {
        self.dir.join("files").join(format!("{id}.have"))
    }

    /// Writes a file's record; a complete file's record reaches the disk before this
    /// returns (a crash must not lose a file the user was told is stored, nor undo the
    /// record of a completion whose blob is then moved).
    fn write_record(&self, rec: &Record) -> io::Result<()> {
        write_atomic(
            &self.record_path(&rec.id),
            &serde_json::to_vec(rec).expect("a record serializes"),
            rec.complete,
        )
    }

    /// Whether some record on disk is not loaded (unreadable for now, or corrupt): then
    /// no complete blob is deleted, since such a record may point at it. Blobs left
    /// behind are orphans the next start-up deletes.
    fn blind(&self) -> bool {
        self.corrupt.load(Ordering::Relaxed) > 0 || !self.pending.lock().is_empty()
    }

    /// A file by id.
    pub fn get(&self, id: &str) -> Result<Arc<Entry>, StoreError> {
        let found = self.index.lock().files.get(id).cloned();
        match found {
            Some(e) if e.expires > self.clock.now_secs() => Ok(e),
            Some(_) => Err(StoreError::NotFound),
            None if self.pending.lock().contains(id) => Err(StoreError::Unavailable),
            None => Err(StoreError::NotFound),
        }
    }

    /// An open handle on a part of `entry`'s blob.
    fn blob(&self, entry: &Entry, part: Part) -> Result<Arc<dyn Blob>, StoreError> {
        // Twice: the upload may complete (its partial blob moves) between reading where
        // the bytes are and opening them.
        for _ in 0..2 {
            let loc = {
                let st = entry.state.lock();
                if st.removed {
                    return Err(StoreError::NotFound);
                }
                entry.loc(&st)
            };
            match self.handles.get(&loc, part) {
                Ok(b) => return Ok(b),
                Err(e) if e.kind() == io::ErrorKind::NotFound && matches!(loc, Loc::Partial(_)) => {
                    continue;
                }
                Err(e) => return Err(io_err(e)),
            }
        }
        Err(StoreError::Io(io::Error::other("a stored blob is missing")))
    }

    /// Reads bytes of `entry` (the caller checked they are present).
    pub fn read_at(&self, entry: &Entry, buf: &mut [u8], offset: u64) -> Result<usize, StoreError> {
        self.blob(entry, Part::Data)?
            .read_at(buf, offset)
            .map_err(io_err)
    }

    /// Reads outboard bytes; `None` while the hash is unknown (HTTP upload under way).
    pub fn read_outboard(
        &self,
        entry: &Entry,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<Option<usize>, StoreError> {
        if entry.hash().is_none() {
            return Ok(None);
        }
        self.blob(entry, Part::Outboard)?
            .read_at(buf, offset)
            .map(Some)
            .map_err(io_err)
    }

    /// Checks a new file of `size` bytes by `owner` against the size limit, the quota
    /// and, for an upload that will be partial for a while, the limits on partial uploads.
    fn check_new(
        &self,
        idx: &Index,
        owner: &str,
        size: u64,
        partial: bool,
    ) -> Result<(), StoreError> {
        let l = &self.limits;
        if size > l.max_file_size {
            return Err(StoreError::TooLarge {
                size,
                limit: l.max_file_size,
            });
        }
        let u = idx.usage(owner);
        if l.user_quota > 0 && u.bytes + size > l.user_quota {
            return Err(StoreError::QuotaExceeded {
                size,
                used: u.bytes,
                quota: l.user_quota,
            });
        }
        if partial {
            if l.max_partial_uploads > 0 && u.partials >= l.max_partial_uploads {
                return Err(StoreError::TooManyPartialUploads {
                    limit: l.max_partial_uploads,
                });
            }
            if l.max_partial_bytes > 0 && u.partial_bytes + size > l.max_partial_bytes {
                return Err(StoreError::PartialQuotaExceeded {
                    size,
                    used: u.partial_bytes,
                    limit: l.max_partial_bytes,
                });
            }
        }
        Ok(())
    }

    /// Counts one upload start of `owner` against the rate limit.
    fn take_start(&self, owner: &str) -> Result<(), StoreError> {
        self.starts.take(owner, self.clock.now_ms()).map_err(|ms| {
            self.metrics.uploads_refused.inc();
            StoreError::RateLimited {
                retry_after: ms.div_ceil(1000),
                per_minute: self.limits.upload_starts_per_minute,
            }
        })
    }

    fn check_disk(&self, size: u64) -> Result<(), StoreError> {
        match self.backend.free_space() {
            Some(free) if free < size + tree::outboard_len(size) => Err(StoreError::DiskFull),
            _ => Ok(()),
        }
    }

    fn refused<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(
            StoreError::TooManyPartialUploads { .. }
            | StoreError::PartialQuotaExceeded { .. }
            | StoreError::QuotaExceeded { .. },
        ) = &r
        {
            self.metrics.uploads_refused.inc();
        }
        r
    }

    /// Declares an upload of `size` bytes with BLAKE3 `hash` by `owner`.
    /// Uploading again a file this user already has complete (same content and name)
    /// gives that file back. Resuming is not an upload start; anything else is.
    pub fn begin(
        &self,
        owner: &str,
        name: &str,
        size: u64,
        hash: &[u8; 32],
    ) -> Result<Begin, StoreError> {
        if size > self.limits.max_file_size {
            return Err(StoreError::TooLarge {
                size,
                limit: self.limits.max_file_size,
            });
        }
        let t = self.clock.now_secs();
        let mut idx = self.index.lock();
        if let Some(id) = idx.partial.get(&(owner.to_owned(), *hash)) {
            let e = idx.files[id].clone();
            if e.size == size && e.expires > t {
                return Ok(Begin::Resume(e));
            }
        }
        let stored = idx.refs.contains_key(hash);
        if stored {
            let mine = idx.files.values().find(|e| {
                e.owner == owner && e.name == name && e.size == size && e.expires > t && {
                    let st = e.state.lock();
                    st.complete && st.hash == Some(*hash)
                }
            });
            if let Some(e) = mine {
                return Ok(Begin::Resume(e.clone()));
            }
        }
        self.refused(self.check_new(&idx, owner, size, !stored))?;
        if stored {
            self.take_start(owner)?;
            let nonce: [u8; 32] = rand::random();
            idx.challenges
                .insert((owner.to_owned(), *hash), (nonce, self.clock.now_ms()));
            return Ok(Begin::Dedup { nonce });
        }
        drop(idx);
        self.check_disk(size)?;
        self.take_start(owner)?;
        Ok(Begin::New)
    }

    /// Checks a new upload of `size` bytes by `owner` (HTTP) against the limits, the
    /// quotas, the free space and the rate of upload starts (it counts as one).
    pub fn check_new_upload(&self, owner: &str, size: u64) -> Result<(), StoreError> {
        self.refused(self.check_new(&self.index.lock(), owner, size, true))?;
        self.check_disk(size)?;
        self.take_start(owner)
    }

    /// Answers a dedup challenge: checks `mac` = keyed BLAKE3 (key = nonce) of the
    /// stored content, and if right gives `owner` a new file of that content.
    pub fn prove(
        &self,
        owner: &str,
        name: &str,
        mime: &str,
        size: u64,
        hash: &[u8; 32],
        mac: &[u8; 32],
    ) -> Result<Arc<Entry>, StoreError> {
        let (nonce, _) = self
            .index
            .lock()
            .challenges
            .remove(&(owner.to_owned(), *hash))
            .ok_or_else(|| {
                StoreError::BadRequest("no challenge is outstanding for this content".into())
            })?;
        let data = self
            .handles
            .get(&Loc::Complete(*hash), Part::Data)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    StoreError::NotFound
                } else {
                    io_err(e)
                }
            })?;
        let mut hasher = blake3::Hasher::new_keyed(&nonce);
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0u64;
        loop {
            let n = data.read_at(&mut buf, off).map_err(io_err)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            off += n as u64;
        }
        drop(data);
        if off != size || hasher.finalize().as_bytes() != mac {
            self.metrics.proof_failures.inc();
            return Err(StoreError::ProofFailed);
        }
        let mut idx = self.index.lock();
        if !idx.refs.contains_key(hash) {
            // Its last file expired meanwhile.
            return Err(StoreError::NotFound);
        }
        self.refused(self.check_new(&idx, owner, size, false))?;
        let created = self.clock.now_secs();
        let rec = Record {
            id: crate::proto::new_file_id(),
            owner: owner.to_owned(),
            name: name.to_owned(),
            mime: mime.to_owned(),
            size,
            hash: Some(hex::encode(hash)),
            created,
            expires: created + self.limits.ttl.as_secs(),
            complete: true,
        };
        self.write_record(&rec).map_err(io_err)?;
        let entry = Arc::new(Entry::new(
            &rec,
            State {
                hash: Some(*hash),
                complete: true,
                removed: false,
                have: Bitmap::new(0),
                dirty: false,
                sequential: None,
            },
        ));
        idx.insert(entry.clone());
        self.metrics.files.set(idx.files.len() as i64);
        self.metrics.dedup_hits.inc();
        Ok(entry)
    }

    /// Starts an outboard for a new upload: returns a writer to feed it to. Dropped
    /// before [`Store::create`], it deletes what it wrote.
    pub fn new_upload(
        &self,
        owner: &str,
        name: &str,
        mime: &str,
        size: u64,
        hash: Option<[u8; 32]>,
    ) -> Result<NewUpload, StoreError> {
        let id = crate::proto::new_file_id();
        let outboard = self
            .backend
            .create_partial(&id, Part::Outboard)
            .map_err(io_err)?;
        Ok(NewUpload {
            id,
            owner: owner.to_owned(),
            name: name.to_owned(),
            mime: mime.to_owned(),
            size,
            hash,
            outboard: Some(outboard),
            backend: self.backend.clone(),
            written: 0,
            root: tree::RootBuilder::new(tree::group_count(size)),
            carry: Vec::new(),
        })
    }

    /// Drops an upload whose outboard was not fully received.
    pub fn discard_upload(&self, up: NewUpload) {
        drop(up);
    }

    /// Creates the file of a fully received outboard (checked against the hash).
    pub fn create(&self, mut up: NewUpload) -> Result<Arc<Entry>, StoreError> {
        let groups = tree::group_count(up.size);
        let sequential = match up.hash {
            Some(h) => {
                if up.written != tree::outboard_len(up.size)
                    || !up.carry.is_empty()
                    || up.root.root() != Some(h)
                {
                    return Err(StoreError::OutboardMismatch);
                }
                None
            }
            None => Some(tree::RootBuilder::new(groups)),
        };
        let data = self
            .backend
            .create_partial(&up.id, Part::Data)
            .map_err(io_err)?;
        let mut idx = self.index.lock();
        self.refused(self.check_new(&idx, &up.owner, up.size, true))?;
        let created = self.clock.now_secs();
        let rec = Record {
            id: up.id.clone(),
            owner: up.owner.clone(),
            name: std::mem::take(&mut up.name),
            mime: std::mem::take(&mut up.mime),
            size: up.size,
            hash: up.hash.map(hex::encode),
            created,
            expires: created + self.limits.ttl.as_secs(),
            complete: false,
        };
        self.write_record(&rec).map_err(io_err)?;
        let outboard = up.outboard.take().expect("outboard until created");
        let loc = Loc::Partial(up.id.clone());
        self.handles.put(loc.clone(), Part::Outboard, outboard);
        self.handles.put(loc, Part::Data, data);
        let entry = Arc::new(Entry::new(
            &rec,
            State {
                hash: up.hash,
                complete: false,
                removed: false,
                have: Bitmap::new(groups),
                dirty: true,
                sequential,
            },
        ));
        idx.insert(entry.clone());
        self.metrics.files.set(idx.files.len() as i64);
        Ok(entry)
    }

    /// Verifies and stores whole groups starting at group-aligned `offset`. `data` may
    /// hold several groups; only the file's last group may be short. Nothing is written
    /// unless every group in `data` verifies. Returns whether the file is now complete.
    pub fn put(
        &self,
        entry: &Entry,
        offset: u64,
        data: &[u8],
        cvs: &mut Vec<u8>,
    ) -> Result<bool, StoreError> {
        if !offset.is_multiple_of(GROUP_SIZE)
            || offset > entry.size
            || data.len() as u64 > entry.size - offset
        {
            return Err(StoreError::BadRequest(format!(
                "range {offset}+{} is not group-aligned or past the end of the file",
                data.len()
            )));
        }
        let first = offset / GROUP_SIZE;
        let end = offset + data.len() as u64;
        if end != entry.size && !end.is_multiple_of(GROUP_SIZE) {
            return Err(StoreError::BadRequest(
                "a put must end on a group boundary or at the end of the file".into(),
            ));
        }
        let ngroups = if data.is_empty() {
            u64::from(entry.size == 0)
        } else {
            (data.len() as u64).div_ceil(GROUP_SIZE)
        };
        {
            let st = entry.state.lock();
            if st.removed {
                return Err(StoreError::NotFound);
            }
            if st.hash.is_none() {
                return Err(StoreError::BadRequest(
                    "this upload is sequential (HTTP); continue it there".into(),
                ));
            }
            if st.complete {
                return Ok(true);
            }
        }
        let ob = self.blob(entry, Part::Outboard)?;
        cvs.resize(ngroups as usize * CV_LEN, 0);
        if ob.read_at(cvs, first * CV_LEN as u64).map_err(io_err)? != cvs.len() {
            return Err(StoreError::Io(io::Error::other("short outboard")));
        }
        drop(ob);
        for i in 0..ngroups {
            let g = first + i;
            let s = (i * GROUP_SIZE) as usize;
            let e = (s + GROUP_SIZE as usize).min(data.len());
            let cv = tree::group_cv(&data[s..e], g, entry.groups);
            if cv[..] != cvs[i as usize * CV_LEN..][..CV_LEN] {
                self.metrics.hash_mismatches.inc();
                return Err(StoreError::HashMismatch {
                    group: g,
                    start: g * GROUP_SIZE,
                });
            }
        }
        self.blob(entry, Part::Data)?
            .write_at(data, offset)
            .map_err(io_err)?;
        self.metrics.bytes_received.inc_by(data.len() as u64);
        let full = {
            let mut st = entry.state.lock();
            if st.complete {
                return Ok(true);
            }
            for i in 0..ngroups {
                st.have.set(first + i);
            }
            st.dirty = true;
            st.have.is_full()
        };
        entry.changed.send_modify(|v| *v += 1);
        if full {
            self.complete(entry).map(|_| true)
        } else {
            Ok(false)
        }
    }

    /// Appends bytes to a sequential (HTTP) upload at `offset`, which must be the
    /// number of bytes stored so far. The hash is computed as data arrives. The caller
    /// holds the entry's [`Entry::try_append`].
    pub fn append(
        &self,
        entry: &Entry,
        _appending: &Appending<'_>,
        offset: u64,
        data: &[u8],
    ) -> Result<bool, StoreError> {
        let have_bytes = {
            let st = entry.state.lock();
            if st.removed {
                return Err(StoreError::NotFound);
            }
            if st.sequential.is_none() {
                return Err(StoreError::BadRequest("not a sequential upload".into()));
            }
            stored_bytes(&st.have, entry.size)
        };
        // The upload's offset is always a group boundary: bytes of a group not yet
        // complete when a request ends are sent again by the next one.
        if offset != have_bytes || data.len() as u64 > entry.size - offset {
            return Err(StoreError::BadRequest(format!(
                "offset {offset} does not match the upload's offset {have_bytes}, or the data runs past its end"
            )));
        }
        let data_blob = self.blob(entry, Part::Data)?;
        let ob = self.blob(entry, Part::Outboard)?;
        data_blob.write_at(data, offset).map_err(io_err)?;
        self.metrics.bytes_received.inc_by(data.len() as u64);
        let end = offset + data.len() as u64;
        // Hash every group now fully on disk.
        let mut g = have_bytes / GROUP_SIZE;
        let mut buf = vec![0u8; GROUP_SIZE as usize];
        let mut added = false;
        while g < entry.groups {
            let len = tree::group_len(entry.size, g);
            let gend = g * GROUP_SIZE + len as u64;
            if gend > end || (len == 0 && entry.size != 0) {
                break;
            }
            data_blob
                .read_at(&mut buf[..len], g * GROUP_SIZE)
                .map_err(io_err)?;
            let cv = tree::group_cv(&buf[..len], g, entry.groups);
            ob.write_at(&cv, g * CV_LEN as u64).map_err(io_err)?;
            let mut st = entry.state.lock();
            if st.have.get(g) {
                return Err(StoreError::BadRequest(
                    "this upload was appended to by another request".into(),
                ));
            }
            let Some(b) = st.sequential.as_mut() else {
                return Err(StoreError::BadRequest("not a sequential upload".into()));
            };
            b.push(&cv);
            st.have.set(g);
            st.dirty = true;
            added = true;
            g += 1;
        }
        drop((data_blob, ob));
        let full = {
            let mut st = entry.state.lock();
            if st.have.is_full() {
                if st.hash.is_none() {
                    let root = st
                        .sequential
                        .as_ref()
                        .and_then(|b| b.root())
                        .ok_or_else(|| {
                            StoreError::Io(io::Error::other("upload hash incomplete"))
                        })?;
                    st.hash = Some(root);
                }
                true
            } else {
                false
            }
        };
        if added {
            entry.changed.send_modify(|v| *v += 1);
        }
        if full {
            self.complete(entry).map(|_| true)
        } else {
            Ok(false)
        }
    }

    /// Bytes of a sequential upload received so far (a partial last group on disk is
    /// not counted: resumption restarts at the last whole group).
    pub fn sequential_offset(&self, entry: &Entry) -> u64 {
        let st = entry.state.lock();
        if st.complete {
            entry.size
        } else {
            stored_bytes(&st.have, entry.size)
        }
    }

    /// Publishes a fully received file: its data made durable, its record marked
    /// complete, then its blob moved under its hash (a start-up finishes that move if a
    /// crash cut it short).
    fn complete(&self, entry: &Entry) -> Result<(), StoreError> {
        {
            let st = entry.state.lock();
            if st.complete {
                return Ok(());
            }
        }
        self.blob(entry, Part::Data)?.sync().map_err(io_err)?;
        self.blob(entry, Part::Outboard)?.sync().map_err(io_err)?;
        let mut idx = self.index.lock();
        let mut st = entry.state.lock();
        if st.complete || st.removed {
            return Ok(());
        }
        let hash = st.hash.expect("hash known when complete");
        let mut rec = entry.record(&st);
        rec.complete = true;
        self.write_record(&rec).map_err(io_err)?;
        // Readers wait on the entry's lock while the blob moves.
        self.backend
            .publish(&entry.id, &hex::encode(hash))
            .map_err(io_err)?;
        st.complete = true;
        st.dirty = false;
        st.have = Bitmap::new(0);
        st.sequential = None;
        drop(st);
        self.handles.forget(&Loc::Partial(entry.id.clone()));
        let _ = std::fs::remove_file(self.have_path(&entry.id));
        idx.partial.remove(&(entry.owner.clone(), hash));
        *idx.refs.entry(hash).or_default() += 1;
        // No longer partial: it still counts against the quota.
        idx.account(&entry.owner, entry.size, true, false);
        idx.account(&entry.owner, entry.size, false, true);
        drop(idx);
        self.metrics.uploads_completed.inc();
        entry.changed.send_modify(|v| *v += 1);
        info!(file = %Pii(&entry.id), size = entry.size, "file complete and verified");
        Ok(())
    }

    /// Saves which groups of a partial upload are present (to survive a restart).
    pub fn save_progress(&self, entry: &Entry) -> Result<(), StoreError> {
        let bytes = {
            let mut st = entry.state.lock();
            if st.complete || st.removed || !st.dirty {
                return Ok(());
            }
            st.dirty = false;
            st.have.to_bytes()
        };
        write_atomic(&self.have_path(&entry.id), &bytes, false).map_err(io_err)
    }

    /// Saves the progress of every partial upload.
    pub fn save_all(&self) {
        let entries: Vec<_> = self.index.lock().files.values().cloned().collect();
        for e in entries {
            if let Err(err) = self.save_progress(&e) {
                warn!(file = %Pii(&e.id), error = %err, "saving upload progress failed");
            }
        }
    }

    /// Deletes expired files; returns how many. Also forgets stale rate-limit and
    /// challenge state.
    pub fn sweep(&self) -> usize {
        let t = self.clock.now_secs();
        let now_ms = self.clock.now_ms();
        self.starts.prune(now_ms);
        let expired: Vec<_> = {
            let mut idx = self.index.lock();
            idx.challenges
                .retain(|_, (_, at)| *at + CHALLENGE_TTL_MS > now_ms);
            idx.files
                .values()
                .filter(|e| e.expires <= t)
                .cloned()
                .collect()
        };
        let mut gone = 0;
        for e in &expired {
            gone += usize::from(self.remove(e));
        }
        gone
    }

    /// Deletes a file: its record first, then its blob if no other file uses it.
    /// Returns whether it was removed.
    fn remove(&self, entry: &Entry) -> bool {
        let mut idx = self.index.lock();
        if !idx.files.contains_key(&entry.id) {
            return false;
        }
        // Once the record is gone the file is gone; a crash before the blob is deleted
        // leaves an orphan blob, which the next start-up deletes.
        match std::fs::remove_file(self.record_path(&entry.id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                warn!(file = %Pii(&entry.id), error = %e, "deleting a file record failed; the file is kept");
                return false;
            }
            _ => {}
        }
        idx.files.remove(&entry.id);
        let mut st = entry.state.lock();
        st.removed = true;
        let complete = st.complete;
        let hash = st.hash;
        drop(st);
        idx.account(&entry.owner, entry.size, !complete, false);
        let _ = std::fs::remove_file(self.have_path(&entry.id));
        if complete {
            let h = hash.expect("complete files have a hash");
            let left = {
                let r = idx.refs.entry(h).or_default();
                *r = r.saturating_sub(1);
                *r
            };
            if left == 0 {
                idx.refs.remove(&h);
                self.handles.forget(&Loc::Complete(h));
                if !self.blind() {
                    self.backend.delete_complete(&hex::encode(h));
                }
            }
        } else {
            if let Some(h) = hash {
                idx.partial.remove(&(entry.owner.clone(), h));
            }
            self.handles.forget(&Loc::Partial(entry.id.clone()));
            self.backend.delete_partial(&entry.id);
        }
        self.metrics.files.set(idx.files.len() as i64);
        drop(idx);
        entry.changed.send_modify(|v| *v += 1);
        true
    }

    /// Bytes `owner` has stored.
    pub fn usage(&self, owner: &str) -> u64 {
        self.index.lock().usage(owner).bytes
    }

    /// Files loaded.
    pub fn len(&self) -> usize {
        self.index.lock().files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An outboard being received for a new upload.
pub struct NewUpload {
    pub id: String,
    owner: String,
    name: String,
    mime: String,
    size: u64,
    hash: Option<[u8; 32]>,
    /// Until [`Store::create`] takes it.
    outboard: Option<Arc<dyn Blob>>,
    backend: Arc<dyn Backend>,
    written: u64,
    root: tree::RootBuilder,
    carry: Vec<u8>,
}

impl Drop for NewUpload {
    fn drop(&mut self) {
        // Not created: what was written is of no use. (Created: the store owns it.)
        if self.outboard.take().is_some() {
            self.backend.delete_partial(&self.id);
        }
    }
}

impl NewUpload {
    /// Feeds outboard bytes in order.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<(), StoreError> {
        if self.written + bytes.len() as u64 > tree::outboard_len(self.size) {
            return Err(StoreError::OutboardMismatch);
        }
        let ob = self.outboard.as_ref().expect("outboard until created");
        ob.write_at(bytes, self.written).map_err(io_err)?;
        self.written += bytes.len() as u64;
        if !self.carry.is_empty() {
            let take = (CV_LEN - self.carry.len()).min(bytes.len());
            self.carry.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.carry.len() == CV_LEN {
                let cv: [u8; 32] = self.carry[..].try_into().unwrap();
                self.root.push(&cv);
                self.carry.clear();
            }
        }
        let mut it = bytes.chunks_exact(CV_LEN);
        for cv in &mut it {
            self.root.push(cv.try_into().unwrap());
        }
        self.carry.extend_from_slice(it.remainder());
        Ok(())
    }
}
