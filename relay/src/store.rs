//! File records, upload sessions, verification on write, quotas and expiry.
//!
//! A *file* is a record (`files/<id>.json`: owner, name, type, size, hash, times) that
//! points at a blob: its own partial blob while the upload is under way, then the
//! complete blob of its hash, shared with every other file of the same content.
//! Nothing unverified is ever written: each 16 KiB group is checked against the
//! outboard before it reaches the disk, and a file is published when every group is.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::backend::{Backend, Blob, Part};
use crate::bitmap::Bitmap;
use crate::metrics::Metrics;
use crate::proto::{ErrorCode, FileInfo};
use crate::tree::{self, CV_LEN, GROUP_SIZE};

/// Why a store operation failed. `Display` is safe to show the client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("file of {size} bytes is over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("upload of {size} bytes would exceed your quota: {used} of {quota} bytes used")]
    QuotaExceeded { size: u64, used: u64, quota: u64 },
    #[error("the server's disk is full: what was received is kept, retry later to resume")]
    DiskFull,
    #[error("no such file (it may have expired)")]
    NotFound,
    #[error("data of group {group} (bytes {start}..) does not match the file's hash")]
    HashMismatch { group: u64, start: u64 },
    #[error("the outboard does not match the declared hash")]
    OutboardMismatch,
    #[error("proof of possession failed")]
    ProofFailed,
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
            StoreError::DiskFull => ErrorCode::DiskFull,
            StoreError::NotFound => ErrorCode::NotFound,
            StoreError::HashMismatch { .. } | StoreError::OutboardMismatch => {
                ErrorCode::HashMismatch
            }
            StoreError::ProofFailed => ErrorCode::ProofFailed,
            StoreError::BadRequest(_) => ErrorCode::BadRequest,
            StoreError::Io(_) => ErrorCode::Internal,
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
}

struct State {
    hash: Option<[u8; 32]>,
    complete: bool,
    removed: bool,
    have: Bitmap,
    data: Arc<dyn Blob>,
    outboard: Arc<dyn Blob>,
    /// Groups added since the bitmap was last saved.
    dirty: bool,
    /// HTTP sequential uploads: root builder over the groups received so far.
    sequential: Option<tree::RootBuilder>,
}

impl Entry {
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

    /// Reads bytes (the caller checked they are present).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, StoreError> {
        let data = self.state.lock().data.clone();
        data.read_at(buf, offset).map_err(io_err)
    }

    /// Reads outboard bytes; `None` while the hash is unknown (HTTP upload under way).
    pub fn read_outboard(&self, buf: &mut [u8], offset: u64) -> Result<Option<usize>, StoreError> {
        let (ob, known) = {
            let st = self.state.lock();
            (st.outboard.clone(), st.hash.is_some())
        };
        if !known {
            return Ok(None);
        }
        ob.read_at(buf, offset).map(Some).map_err(io_err)
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

#[derive(Default)]
struct Index {
    files: HashMap<String, Arc<Entry>>,
    /// (owner, hash) -> id of that owner's partial upload of that content.
    partial: HashMap<(String, [u8; 32]), String>,
    /// Complete blob hash -> number of complete files pointing at it.
    refs: HashMap<[u8; 32], u32>,
    /// Owner -> bytes of their files.
    usage: HashMap<String, u64>,
    /// Outstanding dedup challenges: (owner, hash) -> nonce.
    challenges: HashMap<(String, [u8; 32]), [u8; 32]>,
}

/// The relay's storage.
pub struct Store {
    dir: PathBuf,
    backend: Arc<dyn Backend>,
    limits: Limits,
    index: Mutex<Index>,
    metrics: Metrics,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl Store {
    /// Opens the store in `dir` (records in `dir/files`), reloading every file: complete
    /// ones as they are, partial ones with the groups saved as present re-verified.
    pub fn open(
        dir: &Path,
        backend: Arc<dyn Backend>,
        limits: Limits,
        metrics: Metrics,
    ) -> io::Result<Store> {
        std::fs::create_dir_all(dir.join("files"))?;
        let store = Store {
            dir: dir.to_owned(),
            backend,
            limits,
            index: Mutex::new(Index::default()),
            metrics,
        };
        store.reload()?;
        Ok(store)
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join("files").join(format!("{id}.json"))
    }

    fn have_path(&self, id: &str) -> PathBuf {
        self.dir.join("files").join(format!("{id}.have"))
    }

    fn reload(&self) -> io::Result<()> {
        let (partials, blobs) = self.backend.list()?;
        let mut idx = self.index.lock();
        for e in std::fs::read_dir(self.dir.join("files"))? {
            let path = e?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let rec: Record = match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => r,
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "skipping unreadable file record");
                    continue;
                }
            };
            match self.load_entry(&rec) {
                Ok(entry) => {
                    let st = entry.state.lock();
                    if st.complete {
                        *idx.refs.entry(st.hash.unwrap()).or_default() += 1;
                    } else if let Some(h) = st.hash {
                        idx.partial
                            .insert((entry.owner.clone(), h), entry.id.clone());
                    }
                    drop(st);
                    *idx.usage.entry(entry.owner.clone()).or_default() += entry.size;
                    idx.files.insert(entry.id.clone(), Arc::new(entry));
                }
                Err(e) => {
                    warn!(file = %rec.id, error = %e, "dropping file whose blob is gone");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        // Blobs no record points at are leftovers of a crash between steps.
        for id in partials {
            if idx.files.get(&id).is_none_or(|e| e.is_complete()) {
                self.backend.delete_partial(&id);
            }
        }
        for h in blobs {
            let known = tree_hash(&h).is_some_and(|h| idx.refs.contains_key(&h));
            if !known {
                self.backend.delete_complete(&h);
            }
        }
        self.metrics.files.set(idx.files.len() as i64);
        info!(files = idx.files.len(), "relay store loaded");
        Ok(())
    }

    fn load_entry(&self, rec: &Record) -> Result<Entry, StoreError> {
        if !crate::proto::is_file_id(&rec.id) {
            return Err(StoreError::BadRequest("bad id".into()));
        }
        let groups = tree::group_count(rec.size);
        let hash = match &rec.hash {
            Some(h) => Some(tree_hash(h).ok_or_else(|| StoreError::BadRequest("bad hash".into()))?),
            None => None,
        };
        let (data, outboard, have, sequential) = if rec.complete {
            let h = rec.hash.as_deref().ok_or(StoreError::NotFound)?;
            let data = self
                .backend
                .open_complete(h, Part::Data)?
                .ok_or(StoreError::NotFound)?;
            let ob = self
                .backend
                .open_complete(h, Part::Outboard)?
                .ok_or(StoreError::NotFound)?;
            (data, ob, Bitmap::new(0), None)
        } else {
            let data = self.backend.open_partial(&rec.id, Part::Data)?;
            let ob = self.backend.open_partial(&rec.id, Part::Outboard)?;
            let saved = std::fs::read(self.have_path(&rec.id)).ok();
            let mut have = saved
                .and_then(|b| Bitmap::from_bytes(groups, &b))
                .unwrap_or_else(|| Bitmap::new(groups));
            let sequential = if hash.is_none() {
                // Sequential (HTTP) upload: keep only the verified prefix; the builder
                // is rebuilt from the outboard written so far.
                let n = have.run_from(0, groups);
                let mut b = tree::RootBuilder::new(groups);
                let mut cv = [0u8; CV_LEN];
                for g in 0..n {
                    ob.read_at(&mut cv, g * CV_LEN as u64)?;
                    b.push(&cv);
                }
                have = Bitmap::new(groups);
                for g in 0..n {
                    have.set(g);
                }
                Some(b)
            } else {
                None
            };
            // Re-verify what the bitmap claims, in case the machine lost written pages.
            let mut buf = vec![0u8; GROUP_SIZE as usize];
            let mut cv = [0u8; CV_LEN];
            let mut bad = 0;
            for g in 0..groups {
                if !have.get(g) {
                    continue;
                }
                let len = tree::group_len(rec.size, g);
                let ok = data.read_at(&mut buf[..len], g * GROUP_SIZE)? == len
                    && ob.read_at(&mut cv, g * CV_LEN as u64)? == CV_LEN
                    && tree::group_cv(&buf[..len], g, groups) == cv;
                if !ok {
                    have.clear(g);
                    bad += 1;
                }
            }
            if bad > 0 {
                warn!(file = %rec.id, groups = bad, "partial upload had groups that no longer verify; they will be sent again");
            }
            (data, ob, have, sequential)
        };
        Ok(Entry {
            id: rec.id.clone(),
            owner: rec.owner.clone(),
            name: rec.name.clone(),
            mime: rec.mime.clone(),
            size: rec.size,
            created: rec.created,
            expires: rec.expires,
            groups,
            state: Mutex::new(State {
                hash,
                complete: rec.complete,
                removed: false,
                have,
                data,
                outboard,
                dirty: false,
                sequential,
            }),
            changed: tokio::sync::watch::Sender::new(0),
        })
    }

    /// A file by id.
    pub fn get(&self, id: &str) -> Result<Arc<Entry>, StoreError> {
        let e = self
            .index
            .lock()
            .files
            .get(id)
            .cloned()
            .ok_or(StoreError::NotFound)?;
        if e.expires <= now() {
            return Err(StoreError::NotFound);
        }
        Ok(e)
    }

    fn check_new(&self, idx: &Index, owner: &str, size: u64) -> Result<(), StoreError> {
        if size > self.limits.max_file_size {
            return Err(StoreError::TooLarge {
                size,
                limit: self.limits.max_file_size,
            });
        }
        let used = idx.usage.get(owner).copied().unwrap_or(0);
        if self.limits.user_quota > 0 && used + size > self.limits.user_quota {
            return Err(StoreError::QuotaExceeded {
                size,
                used,
                quota: self.limits.user_quota,
            });
        }
        Ok(())
    }

    /// Declares an upload of `size` bytes with BLAKE3 `hash` by `owner`.
    /// Uploading again a file this user already has complete (same content and name)
    /// gives that file back.
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
        let mut idx = self.index.lock();
        if let Some(id) = idx.partial.get(&(owner.to_owned(), *hash)) {
            let e = idx.files[id].clone();
            if e.size == size && e.expires > now() {
                return Ok(Begin::Resume(e));
            }
        }
        if idx.refs.contains_key(hash) {
            let t = now();
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
        self.check_new(&idx, owner, size)?;
        if idx.refs.contains_key(hash) {
            let nonce: [u8; 32] = rand::random();
            idx.challenges.insert((owner.to_owned(), *hash), nonce);
            return Ok(Begin::Dedup { nonce });
        }
        drop(idx);
        if let Some(free) = self.backend.free_space() {
            let need = size + tree::outboard_len(size);
            if free < need {
                return Err(StoreError::DiskFull);
            }
        }
        Ok(Begin::New)
    }

    /// Checks a new upload of `size` bytes by `owner` against the limits, the quota and
    /// the free space.
    pub fn check_new_upload(&self, owner: &str, size: u64) -> Result<(), StoreError> {
        self.check_new(&self.index.lock(), owner, size)?;
        if let Some(free) = self.backend.free_space() {
            if free < size + tree::outboard_len(size) {
                return Err(StoreError::DiskFull);
            }
        }
        Ok(())
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
        let nonce = self
            .index
            .lock()
            .challenges
            .remove(&(owner.to_owned(), *hash))
            .ok_or_else(|| {
                StoreError::BadRequest("no challenge is outstanding for this content".into())
            })?;
        let h = hex::encode(hash);
        let data = self
            .backend
            .open_complete(&h, Part::Data)?
            .ok_or(StoreError::NotFound)?;
        let outboard = self
            .backend
            .open_complete(&h, Part::Outboard)?
            .ok_or(StoreError::NotFound)?;
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
        if off != size {
            return Err(StoreError::ProofFailed);
        }
        if hasher.finalize().as_bytes() != mac {
            self.metrics.proof_failures.inc();
            return Err(StoreError::ProofFailed);
        }
        let mut idx = self.index.lock();
        self.check_new(&idx, owner, size)?;
        let created = now();
        let entry = Arc::new(Entry {
            id: crate::proto::new_file_id(),
            owner: owner.to_owned(),
            name: name.to_owned(),
            mime: mime.to_owned(),
            size,
            created,
            expires: created + self.limits.ttl.as_secs(),
            groups: tree::group_count(size),
            state: Mutex::new(State {
                hash: Some(*hash),
                complete: true,
                removed: false,
                have: Bitmap::new(0),
                data,
                outboard,
                dirty: false,
                sequential: None,
            }),
            changed: tokio::sync::watch::Sender::new(0),
        });
        let rec = entry.record(&entry.state.lock());
        write_atomic(
            &self.record_path(&entry.id),
            &serde_json::to_vec(&rec).unwrap(),
        )
        .map_err(io_err)?;
        *idx.refs.entry(*hash).or_default() += 1;
        *idx.usage.entry(owner.to_owned()).or_default() += size;
        idx.files.insert(entry.id.clone(), entry.clone());
        self.metrics.files.set(idx.files.len() as i64);
        self.metrics.dedup_hits.inc();
        Ok(entry)
    }

    /// Starts an outboard for a new upload: returns a writer to feed it to.
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
            outboard,
            written: 0,
            root: tree::RootBuilder::new(tree::group_count(size)),
            carry: Vec::new(),
        })
    }

    /// Drops an upload whose outboard was not fully received.
    pub fn discard_upload(&self, up: NewUpload) {
        self.backend.delete_partial(&up.id);
    }

    /// Creates the file of a fully received outboard (checked against the hash).
    pub fn create(&self, up: NewUpload) -> Result<Arc<Entry>, StoreError> {
        let groups = tree::group_count(up.size);
        let fail = |e: StoreError| {
            self.backend.delete_partial(&up.id);
            e
        };
        let sequential = match up.hash {
            Some(h) => {
                if up.written != tree::outboard_len(up.size)
                    || !up.carry.is_empty()
                    || up.root.finish() != Some(h)
                {
                    return Err(fail(StoreError::OutboardMismatch));
                }
                None
            }
            None => Some(tree::RootBuilder::new(groups)),
        };
        let data = self
            .backend
            .create_partial(&up.id, Part::Data)
            .map_err(|e| fail(io_err(e)))?;
        let mut idx = self.index.lock();
        if let Err(e) = self.check_new(&idx, &up.owner, up.size) {
            drop(idx);
            return Err(fail(e));
        }
        let created = now();
        let entry = Arc::new(Entry {
            id: up.id.clone(),
            owner: up.owner.clone(),
            name: up.name,
            mime: up.mime,
            size: up.size,
            created,
            expires: created + self.limits.ttl.as_secs(),
            groups,
            state: Mutex::new(State {
                hash: up.hash,
                complete: false,
                removed: false,
                have: Bitmap::new(groups),
                data,
                outboard: up.outboard,
                dirty: true,
                sequential,
            }),
            changed: tokio::sync::watch::Sender::new(0),
        });
        let rec = entry.record(&entry.state.lock());
        if let Err(e) = write_atomic(
            &self.record_path(&entry.id),
            &serde_json::to_vec(&rec).unwrap(),
        ) {
            drop(idx);
            return Err(fail(io_err(e)));
        }
        if let Some(h) = up.hash {
            idx.partial.insert((up.owner.clone(), h), entry.id.clone());
        }
        *idx.usage.entry(up.owner).or_default() += up.size;
        idx.files.insert(entry.id.clone(), entry.clone());
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
        let (ob, data_blob, complete) = {
            let st = entry.state.lock();
            if st.removed {
                return Err(StoreError::NotFound);
            }
            if st.hash.is_none() {
                return Err(StoreError::BadRequest(
                    "this upload is sequential (HTTP); continue it there".into(),
                ));
            }
            (st.outboard.clone(), st.data.clone(), st.complete)
        };
        if complete {
            return Ok(true);
        }
        cvs.resize(ngroups as usize * CV_LEN, 0);
        if ob.read_at(cvs, first * CV_LEN as u64).map_err(io_err)? != cvs.len() {
            return Err(StoreError::Io(io::Error::other("short outboard")));
        }
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
        data_blob.write_at(data, offset).map_err(io_err)?;
        self.metrics.bytes_received.inc_by(data.len() as u64);
        let full = {
            let mut st = entry.state.lock();
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
    /// number of bytes stored so far. The hash is computed as data arrives.
    pub fn append(&self, entry: &Entry, offset: u64, data: &[u8]) -> Result<bool, StoreError> {
        let (data_blob, ob, have_bytes) = {
            let st = entry.state.lock();
            if st.removed {
                return Err(StoreError::NotFound);
            }
            if st.sequential.is_none() {
                return Err(StoreError::BadRequest("not a sequential upload".into()));
            }
            (
                st.data.clone(),
                st.outboard.clone(),
                stored_bytes(&st.have, entry.size),
            )
        };
        // The upload's offset is always a group boundary: bytes of a group not yet
        // complete when a request ends are sent again by the next one.
        if offset != have_bytes || data.len() as u64 > entry.size - offset {
            return Err(StoreError::BadRequest(format!(
                "offset {offset} does not match the upload's offset {have_bytes}, or the data runs past its end"
            )));
        }
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
            st.sequential.as_mut().unwrap().push(&cv);
            st.have.set(g);
            st.dirty = true;
            added = true;
            g += 1;
        }
        let full = {
            let mut st = entry.state.lock();
            if st.have.is_full() {
                let root = st
                    .sequential
                    .take()
                    .unwrap()
                    .finish()
                    .expect("all groups pushed");
                st.hash = Some(root);
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

    /// Bytes of a sequential upload received so far (including a partial last group
    /// on disk is not tracked: resumption restarts at the last whole group).
    pub fn sequential_offset(&self, entry: &Entry) -> u64 {
        let st = entry.state.lock();
        if st.complete {
            entry.size
        } else {
            stored_bytes(&st.have, entry.size)
        }
    }

    /// Publishes a fully received file.
    fn complete(&self, entry: &Entry) -> Result<(), StoreError> {
        let hash = {
            let st = entry.state.lock();
            if st.complete {
                return Ok(());
            }
            st.data.sync().map_err(io_err)?;
            st.outboard.sync().map_err(io_err)?;
            st.hash.expect("hash known when complete")
        };
        let h = hex::encode(hash);
        let mut idx = self.index.lock();
        let mut st = entry.state.lock();
        if st.complete {
            return Ok(());
        }
        self.backend.publish(&entry.id, &h).map_err(io_err)?;
        st.data = self
            .backend
            .open_complete(&h, Part::Data)
            .map_err(io_err)?
            .ok_or(StoreError::NotFound)?;
        st.outboard = self
            .backend
            .open_complete(&h, Part::Outboard)
            .map_err(io_err)?
            .ok_or(StoreError::NotFound)?;
        st.complete = true;
        st.dirty = false;
        st.have = Bitmap::new(0);
        let rec = entry.record(&st);
        drop(st);
        write_atomic(
            &self.record_path(&entry.id),
            &serde_json::to_vec(&rec).unwrap(),
        )
        .map_err(io_err)?;
        let _ = std::fs::remove_file(self.have_path(&entry.id));
        idx.partial.remove(&(entry.owner.clone(), hash));
        *idx.refs.entry(hash).or_default() += 1;
        drop(idx);
        self.metrics.uploads_completed.inc();
        entry.changed.send_modify(|v| *v += 1);
        info!(file = %entry.id, size = entry.size, "file complete and verified");
        Ok(())
    }

    /// Saves which groups of a partial upload are present (to survive a restart).
    pub fn save_progress(&self, entry: &Entry) -> Result<(), StoreError> {
        let bytes = {
            let mut st = entry.state.lock();
            if st.complete || !st.dirty {
                return Ok(());
            }
            st.dirty = false;
            st.have.to_bytes()
        };
        write_atomic(&self.have_path(&entry.id), &bytes).map_err(io_err)
    }

    /// Saves the progress of every partial upload.
    pub fn save_all(&self) {
        let entries: Vec<_> = self.index.lock().files.values().cloned().collect();
        for e in entries {
            if let Err(err) = self.save_progress(&e) {
                warn!(file = %e.id, error = %err, "saving upload progress failed");
            }
        }
    }

    /// Deletes expired files; returns how many.
    pub fn sweep(&self) -> usize {
        let t = now();
        let expired: Vec<_> = self
            .index
            .lock()
            .files
            .values()
            .filter(|e| e.expires <= t)
            .cloned()
            .collect();
        for e in &expired {
            self.remove(e);
        }
        expired.len()
    }

    fn remove(&self, entry: &Entry) {
        let mut idx = self.index.lock();
        if idx.files.remove(&entry.id).is_none() {
            return;
        }
        let mut st = entry.state.lock();
        st.removed = true;
        if let Some(u) = idx.usage.get_mut(&entry.owner) {
            *u = u.saturating_sub(entry.size);
        }
        let _ = std::fs::remove_file(self.record_path(&entry.id));
        let _ = std::fs::remove_file(self.have_path(&entry.id));
        if st.complete {
            let h = st.hash.unwrap();
            let left = {
                let r = idx.refs.entry(h).or_default();
                *r = r.saturating_sub(1);
                *r
            };
            if left == 0 {
                idx.refs.remove(&h);
                self.backend.delete_complete(&hex::encode(h));
            }
        } else {
            if let Some(h) = st.hash {
                idx.partial.remove(&(entry.owner.clone(), h));
            }
            self.backend.delete_partial(&entry.id);
        }
        drop(st);
        self.metrics.files.set(idx.files.len() as i64);
        entry.changed.send_modify(|v| *v += 1);
    }

    /// Bytes `owner` has stored.
    pub fn usage(&self, owner: &str) -> u64 {
        self.index.lock().usage.get(owner).copied().unwrap_or(0)
    }
}

fn tree_hash(s: &str) -> Option<[u8; 32]> {
    crate::proto::parse_hash(s)
}

/// An outboard being received for a new upload.
pub struct NewUpload {
    pub id: String,
    owner: String,
    name: String,
    mime: String,
    size: u64,
    hash: Option<[u8; 32]>,
    outboard: Arc<dyn Blob>,
    written: u64,
    root: tree::RootBuilder,
    carry: Vec<u8>,
}

impl NewUpload {
    /// Feeds outboard bytes in order.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<(), StoreError> {
        if self.written + bytes.len() as u64 > tree::outboard_len(self.size) {
            return Err(StoreError::OutboardMismatch);
        }
        self.outboard
            .write_at(bytes, self.written)
            .map_err(io_err)?;
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
