//! Open blobs, opened on use and kept in a small least-recently-used cache.
//!
//! The relay holds no descriptor per stored file: how many files it stores is not
//! bounded by the process's descriptor limit (`ulimit -n`), and a start-up opens only
//! what it verifies. A transfer takes a handle from the cache for each batch (a hit: a
//! lock and a hash lookup), so opening on use costs nothing measurable on the hot path;
//! a file evicted while a transfer still uses it stays open until that transfer lets go.

use std::io;
use std::sync::Arc;

use hashlink::LruCache;
use parking_lot::Mutex;

use crate::backend::{Backend, Blob, Part};

/// Where a file's bytes are: its own partial blob while uploading, then the complete
/// blob of its hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Loc {
    Partial(String),
    Complete([u8; 32]),
}

pub(crate) struct Handles {
    backend: Arc<dyn Backend>,
    cache: Mutex<LruCache<(Loc, Part), Arc<dyn Blob>>>,
}

/// Blob parts kept open: a sixteenth of the soft descriptor limit (a data part takes
/// two descriptors, a direct and a buffered one), between 8 and 256.
pub(crate) fn default_capacity() -> usize {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` only writes the struct it is given.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        r.rlim_cur
    } else {
        1024
    };
    (soft / 16).clamp(8, 256) as usize
}

impl Handles {
    pub(crate) fn new(backend: Arc<dyn Backend>, capacity: usize) -> Handles {
        Handles {
            backend,
            cache: Mutex::new(LruCache::new(capacity.max(1))),
        }
    }

    /// An open handle on `part` of the blob at `loc`.
    pub(crate) fn get(&self, loc: &Loc, part: Part) -> io::Result<Arc<dyn Blob>> {
        let key = (loc.clone(), part);
        if let Some(b) = self.cache.lock().get(&key) {
            return Ok(b.clone());
        }
        let b = match loc {
            Loc::Partial(id) => self.backend.open_partial(id, part)?,
            Loc::Complete(h) => self
                .backend
                .open_complete(&hex::encode(h), part)?
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?,
        };
        self.cache.lock().insert(key, b.clone());
        Ok(b)
    }

    /// Keeps a handle just created (a new upload's parts).
    pub(crate) fn put(&self, loc: Loc, part: Part, blob: Arc<dyn Blob>) {
        self.cache.lock().insert((loc, part), blob);
    }

    /// Closes the handles of `loc` (its blob moved or was deleted).
    pub(crate) fn forget(&self, loc: &Loc) {
        let mut c = self.cache.lock();
        for part in [Part::Data, Part::Outboard] {
            c.remove(&(loc.clone(), part));
        }
    }
}
