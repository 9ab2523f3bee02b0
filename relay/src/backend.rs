//! Where file bytes live. [`Backend`] is the seam for an object store; [`LocalDir`] is
//! the default, a local directory.
//!
//! A blob is either *partial* (an upload under way, named by its file id, written at
//! any offset) or *complete* (named by its BLAKE3 hash, read only, shared by every file
//! record with that content). Each has two parts: the data and its outboard.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::iobuf::DualFile;

/// Which part of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Data,
    Outboard,
}

impl Part {
    fn ext(self) -> &'static str {
        match self {
            Part::Data => "data",
            Part::Outboard => "obao",
        }
    }
}

/// Random access to one part of a blob.
pub trait Blob: Send + Sync + 'static {
    /// Fills `buf` from `offset`; fewer bytes only at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset` (partial blobs only).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes what was written durable.
    fn sync(&self) -> io::Result<()>;
}

/// Storage of partial and complete blobs.
pub trait Backend: Send + Sync + 'static {
    /// Creates (or truncates) a partial blob part.
    fn create_partial(&self, id: &str, part: Part) -> io::Result<Arc<dyn Blob>>;
    /// Opens an existing partial blob part.
    fn open_partial(&self, id: &str, part: Part) -> io::Result<Arc<dyn Blob>>;
    /// Makes a partial blob the complete blob of `hash` (the caller verified it). If that
    /// complete blob exists already, the partial one is dropped. Idempotent, so that a
    /// publication cut short by a crash can be finished at the next start.
    fn publish(&self, id: &str, hash: &str) -> io::Result<()>;
    /// Opens a complete blob part, `None` if there is none.
    fn open_complete(&self, hash: &str, part: Part) -> io::Result<Option<Arc<dyn Blob>>>;
    /// Whether both parts of the complete blob of `hash` exist (without opening them).
    fn has_complete(&self, hash: &str) -> io::Result<bool>;
    /// Whether the data part of partial blob `id` exists (without opening it).
    fn has_partial(&self, id: &str) -> io::Result<bool>;
    fn delete_partial(&self, id: &str);
    fn delete_complete(&self, hash: &str);
    /// Ids of all partial blobs and hashes of all complete blobs stored.
    fn list(&self) -> io::Result<(Vec<String>, Vec<String>)>;
    /// Bytes that can still be stored, if known.
    fn free_space(&self) -> Option<u64>;
}

/// Blobs as files under a directory: `partial/<id>.{data,obao}`, `blobs/<hash>.{data,obao}`.
pub struct LocalDir {
    root: PathBuf,
}

/// A blob part on disk. Data parts move in large aligned batches and bypass the page
/// cache where the file system allows (see [`crate::iobuf`]); outboards are small and
/// stay buffered.
struct LocalBlob(DualFile);

impl LocalBlob {
    fn open(f: File, part: Part, write: bool) -> Arc<dyn Blob> {
        Arc::new(LocalBlob(match part {
            Part::Data => DualFile::new(f, write),
            Part::Outboard => DualFile::buffered(f),
        }))
    }
}

impl Blob for LocalBlob {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_at(buf, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl LocalDir {
    pub fn new(root: &Path) -> io::Result<LocalDir> {
        std::fs::create_dir_all(root.join("partial"))?;
        std::fs::create_dir_all(root.join("blobs"))?;
        Ok(LocalDir {
            root: root.to_owned(),
        })
    }

    fn partial_path(&self, id: &str, part: Part) -> PathBuf {
        self.root
            .join("partial")
            .join(format!("{id}.{}", part.ext()))
    }

    fn complete_path(&self, hash: &str, part: Part) -> PathBuf {
        self.root
            .join("blobs")
            .join(format!("{hash}.{}", part.ext()))
    }
}

/// Whether `path` exists; errors other than "not found" (permissions, I/O) are errors,
/// never taken for "no".
fn exists(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Names of the blobs in `dir` that have a data or an outboard part (or both).
fn list_stems(dir: &Path) -> io::Result<Vec<String>> {
    let mut out = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name
            .strip_suffix(".data")
            .or_else(|| name.strip_suffix(".obao"))
        {
            out.insert(stem.to_owned());
        }
    }
    Ok(out.into_iter().collect())
}

impl Backend for LocalDir {
    fn create_partial(&self, id: &str, part: Part) -> io::Result<Arc<dyn Blob>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.partial_path(id, part))?;
        Ok(LocalBlob::open(f, part, true))
    }

    fn open_partial(&self, id: &str, part: Part) -> io::Result<Arc<dyn Blob>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.partial_path(id, part))?;
        Ok(LocalBlob::open(f, part, true))
    }

    fn publish(&self, id: &str, hash: &str) -> io::Result<()> {
        // Outboard first: a data file under blobs/ always has its outboard. A part
        // already there (same hash, so same bytes) is kept and the partial one dropped.
        for part in [Part::Outboard, Part::Data] {
            let (from, to) = (self.partial_path(id, part), self.complete_path(hash, part));
            if exists(&to)? {
                match std::fs::remove_file(&from) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            } else {
                std::fs::rename(&from, &to)?;
            }
        }
        File::open(self.root.join("blobs"))?.sync_all()?;
        Ok(())
    }

    fn has_complete(&self, hash: &str) -> io::Result<bool> {
        Ok(exists(&self.complete_path(hash, Part::Data))?
            && exists(&self.complete_path(hash, Part::Outboard))?)
    }

    fn has_partial(&self, id: &str) -> io::Result<bool> {
        exists(&self.partial_path(id, Part::Data))
    }

    fn open_complete(&self, hash: &str, part: Part) -> io::Result<Option<Arc<dyn Blob>>> {
        match File::open(self.complete_path(hash, part)) {
            Ok(f) => Ok(Some(LocalBlob::open(f, part, false))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn delete_partial(&self, id: &str) {
        let _ = std::fs::remove_file(self.partial_path(id, Part::Data));
        let _ = std::fs::remove_file(self.partial_path(id, Part::Outboard));
    }

    fn delete_complete(&self, hash: &str) {
        let _ = std::fs::remove_file(self.complete_path(hash, Part::Data));
        let _ = std::fs::remove_file(self.complete_path(hash, Part::Outboard));
    }

    fn list(&self) -> io::Result<(Vec<String>, Vec<String>)> {
        Ok((
            list_stems(&self.root.join("partial"))?,
            list_stems(&self.root.join("blobs"))?,
        ))
    }

    fn free_space(&self) -> Option<u64> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.root.as_os_str().as_bytes()).ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a valid C string and `st` a valid out-pointer.
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
        (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
    }
}
