//! Start-up: loading the records, finishing what a crash cut short, deleting orphans -
//! and never deleting a file because its blob could not be opened. An I/O error while
//! loading a file (too many open files, permission denied, a failing disk) leaves it on
//! disk, reported and retried; only a blob no record claims is deleted.

use super::*;

/// What loading one record gave.
enum Load {
    Loaded(Box<Entry>),
    /// The record's blob does not exist (someone deleted it, or the disk lost it): the
    /// record is kept on disk, not served, and deleted when it expires.
    NoBlob,
    /// The record cannot be parsed: kept for an operator to look at.
    Corrupt,
    /// The record is gone (deleted while loading, or expired without a blob).
    Gone,
    /// An I/O error: kept, retried later.
    Retry(io::Error),
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

fn loaded(rec: &Record, state: State) -> Load {
    Load::Loaded(Box::new(Entry::new(rec, state)))
}

/// The state of a complete file of `hash`.
fn complete(hash: Option<[u8; 32]>) -> State {
    State {
        hash,
        complete: true,
        removed: false,
        have: Bitmap::new(0),
        dirty: false,
        sequential: None,
    }
}

impl Store {
    pub(super) fn reload(&self) -> io::Result<()> {
        let mut ids = Vec::new();
        let mut haves = Vec::new();
        for e in std::fs::read_dir(self.dir.join("files"))? {
            let e = e?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name.strip_suffix(".json") {
                ids.push(id.to_owned());
            } else if let Some(id) = name.strip_suffix(".have") {
                haves.push(id.to_owned());
            } else if name.ends_with(".tmp") {
                // An interrupted write: the file it was to replace is intact.
                let _ = std::fs::remove_file(e.path());
            }
        }
        let (partials, blobs) = self.backend.list()?;
        let (mut no_blob, mut corrupt, mut first_error) = (0usize, 0usize, None);
        let mut idx = self.index.lock();
        for id in &ids {
            match self.load(id) {
                Load::Loaded(e) => idx.insert(Arc::new(*e)),
                Load::NoBlob => no_blob += 1,
                Load::Corrupt => corrupt += 1,
                Load::Gone => {}
                Load::Retry(e) => {
                    self.pending.lock().insert(id.clone());
                    first_error.get_or_insert(e);
                }
            }
        }
        self.corrupt.store(corrupt, Ordering::Relaxed);
        // Orphans: blobs and progress files no record claims, left by a crash between
        // deleting a record and its blob, or by an upload cut off before its record.
        let claimed: HashSet<&str> = ids.iter().map(String::as_str).collect();
        for id in haves.iter().filter(|id| !claimed.contains(id.as_str())) {
            let _ = std::fs::remove_file(self.have_path(id));
        }
        for id in partials.iter().filter(|id| !claimed.contains(id.as_str())) {
            self.backend.delete_partial(id);
        }
        if self.blind() {
            warn!(
                "complete blobs no loaded record points at are kept while some records cannot be read"
            );
        } else {
            for h in blobs {
                if !crate::proto::parse_hash(&h).is_some_and(|h| idx.refs.contains_key(&h)) {
                    self.backend.delete_complete(&h);
                }
            }
        }
        self.metrics.files.set(idx.files.len() as i64);
        let pending = self.pending.lock().len();
        self.metrics.files_unavailable.set(pending as i64);
        info!(files = idx.files.len(), "relay store loaded");
        if let Some(e) = first_error {
            warn!(
                files = pending,
                error = %e,
                "stored files could not be opened; they are kept (nothing was deleted), answered as unavailable, and retried every few seconds - if the error is 'Too many open files', raise the open-files limit (ulimit -n)"
            );
        }
        if no_blob > 0 {
            warn!(
                files = no_blob,
                "file records whose blobs are missing; kept but not served, deleted when they expire"
            );
        }
        if corrupt > 0 {
            warn!(
                files = corrupt,
                "file records that cannot be parsed; kept in files/ for an operator to look at"
            );
        }
        Ok(())
    }

    /// Loads the files that could not be opened before; returns how many loaded now.
    pub fn retry_pending(&self) -> usize {
        let ids: Vec<String> = self.pending.lock().iter().cloned().collect();
        let mut loaded = 0;
        for id in ids {
            match self.load(&id) {
                Load::Retry(_) => continue,
                Load::Loaded(e) => {
                    let mut idx = self.index.lock();
                    idx.insert(Arc::new(*e));
                    self.metrics.files.set(idx.files.len() as i64);
                    loaded += 1;
                }
                Load::Corrupt => {
                    self.corrupt.fetch_add(1, Ordering::Relaxed);
                }
                Load::NoBlob | Load::Gone => {}
            }
            self.pending.lock().remove(&id);
        }
        let left = self.pending.lock().len();
        self.metrics.files_unavailable.set(left as i64);
        if loaded > 0 {
            info!(
                files = loaded,
                left, "stored files that could not be opened before are loaded"
            );
        }
        loaded
    }

    /// Stored files known but not loaded yet (I/O errors at start-up).
    pub fn pending(&self) -> usize {
        self.pending.lock().len()
    }

    fn load(&self, id: &str) -> Load {
        if !crate::proto::is_file_id(id) {
            return Load::Corrupt;
        }
        let bytes = match std::fs::read(self.record_path(id)) {
            Ok(b) => b,
            Err(e) if not_found(&e) => return Load::Gone,
            Err(e) => return Load::Retry(e),
        };
        let mut rec: Record = match serde_json::from_slice(&bytes) {
            Ok(r @ Record { .. }) if r.id == id => r,
            _ => return Load::Corrupt,
        };
        let hash = match rec.hash.as_deref().map(crate::proto::parse_hash) {
            None => None,
            Some(Some(h)) => Some(h),
            Some(None) => return Load::Corrupt,
        };
        if rec.complete {
            let Some(h) = hash else { return Load::Corrupt };
            return match self.ensure_published(id, &h) {
                Ok(true) => {
                    // A progress file saved while the upload completed.
                    let _ = std::fs::remove_file(self.have_path(id));
                    loaded(&rec, complete(hash))
                }
                Ok(false) => self.no_blob(&rec),
                Err(e) => Load::Retry(e),
            };
        }
        let groups = tree::group_count(rec.size);
        let data = match self.backend.open_partial(id, Part::Data) {
            Ok(d) => d,
            Err(e) if not_found(&e) => {
                // Published by an older relay, which moved the blob before rewriting
                // the record, then cut short: the content is there under its hash.
                if let Some(h) = hash {
                    match self.backend.has_complete(&hex::encode(h)) {
                        Ok(true) => {
                            rec.complete = true;
                            if let Err(e) = self.write_record(&rec) {
                                return Load::Retry(e);
                            }
                            let _ = std::fs::remove_file(self.have_path(id));
                            return loaded(&rec, complete(hash));
                        }
                        Ok(false) => {}
                        Err(e) => return Load::Retry(e),
                    }
                }
                return self.no_blob(&rec);
            }
            Err(e) => return Load::Retry(e),
        };
        let ob = match self.backend.open_partial(id, Part::Outboard) {
            Ok(o) => o,
            Err(e) if not_found(&e) => return self.no_blob(&rec),
            Err(e) => return Load::Retry(e),
        };
        let saved = match std::fs::read(self.have_path(id)) {
            Ok(b) => Some(b),
            Err(e) if not_found(&e) => None,
            Err(e) => return Load::Retry(e),
        };
        match verify_saved(&rec, hash, groups, saved, &*data, &*ob) {
            Ok((have, sequential)) => loaded(
                &rec,
                State {
                    hash,
                    complete: false,
                    removed: false,
                    have,
                    dirty: false,
                    sequential,
                },
            ),
            Err(e) => Load::Retry(e),
        }
    }

    /// Makes sure the complete blob of `h` exists, finishing the publication of partial
    /// blob `id` if a crash cut it short. `Ok(false)`: there is no such blob.
    fn ensure_published(&self, id: &str, h: &[u8; 32]) -> io::Result<bool> {
        let hx = hex::encode(h);
        if self.backend.has_partial(id)? {
            match self.backend.publish(id, &hx) {
                Err(e) if not_found(&e) => {}
                other => other?,
            }
        }
        self.backend.has_complete(&hx)
    }

    fn no_blob(&self, rec: &Record) -> Load {
        if rec.expires <= self.clock.now_secs() {
            let _ = std::fs::remove_file(self.record_path(&rec.id));
            let _ = std::fs::remove_file(self.have_path(&rec.id));
            return Load::Gone;
        }
        Load::NoBlob
    }
}

/// The groups of a partial upload its saved bitmap marks, each read and checked again
/// (a machine crash may lose written pages); for a sequential (HTTP) upload, only the
/// verified prefix, with its root builder rebuilt. An I/O error is returned, not taken
/// for missing groups.
fn verify_saved(
    rec: &Record,
    hash: Option<[u8; 32]>,
    groups: u64,
    saved: Option<Vec<u8>>,
    data: &dyn Blob,
    ob: &dyn Blob,
) -> io::Result<(Bitmap, Option<tree::RootBuilder>)> {
    let saved = saved
        .and_then(|b| Bitmap::from_bytes(groups, &b))
        .unwrap_or_else(|| Bitmap::new(groups));
    let mut buf = vec![0u8; GROUP_SIZE as usize];
    let mut cv = [0u8; CV_LEN];
    let mut check = |g: u64| -> io::Result<bool> {
        let len = tree::group_len(rec.size, g);
        Ok(data.read_at(&mut buf[..len], g * GROUP_SIZE)? == len
            && ob.read_at(&mut cv, g * CV_LEN as u64)? == CV_LEN
            && tree::group_cv(&buf[..len], g, groups) == cv)
    };
    let mut have = Bitmap::new(groups);
    let mut bad = 0;
    let sequential = if hash.is_none() {
        // Sequential: the prefix up to the first group that does not verify.
        let mut b = tree::RootBuilder::new(groups);
        let mut cv = [0u8; CV_LEN];
        for g in 0..saved.run_from(0, groups) {
            if !check(g)? || ob.read_at(&mut cv, g * CV_LEN as u64)? != CV_LEN {
                bad += 1;
                break;
            }
            b.push(&cv);
            have.set(g);
        }
        Some(b)
    } else {
        for g in (0..groups).filter(|&g| saved.get(g)) {
            if check(g)? {
                have.set(g);
            } else {
                bad += 1;
            }
        }
        None
    };
    if bad > 0 {
        warn!(file = %Pii(&rec.id), "partial upload had groups that no longer verify; they will be sent again");
    }
    Ok((have, sequential))
}
