//! Bulk I/O without the page cache: page-aligned reusable buffers, and files opened
//! twice, once with `O_DIRECT` for aligned bulk transfers and once buffered for the rest.
//!
//! Why: every byte the relay stores or sends otherwise goes through the page cache,
//! and copying into fresh page-cache pages costs more CPU than QUIC itself (measured
//! in `docs/benchmarks.md`: about 1.8 s of system CPU per GiB written or read through
//! the cache on the benchmark VM, against about 0.1 s with `O_DIRECT`). File data is
//! moved in large aligned batches (16 KiB groups at group-aligned offsets), so direct
//! I/O fits. Where the file system refuses `O_DIRECT` (some tmpfs, FUSE, ...) or a
//! transfer is not aligned (the last, short group of a file), the buffered handle is
//! used; Linux keeps both views of the file coherent.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::ptr::NonNull;

use parking_lot::Mutex;

/// Alignment of direct I/O: offsets, lengths and buffer addresses.
pub const ALIGN: usize = 4096;

/// A zero-initialised, page-aligned byte buffer of fixed capacity, with a length.
/// It is its own anonymous mapping, so dropping it gives the memory back to the system
/// at once (no allocator arena keeps it resident).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: the buffer is uniquely owned memory.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access is read only.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A buffer of `cap` bytes (rounded up to [`ALIGN`]), all zero, of length `cap`.
    pub fn new(cap: usize) -> AlignedBuf {
        let cap = cap.max(1).next_multiple_of(ALIGN);
        // SAFETY: a fresh private anonymous mapping; the result is checked.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), cap, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
        if ptr == libc::MAP_FAILED {
            std::alloc::handle_alloc_error(std::alloc::Layout::from_size_align(cap, ALIGN).unwrap());
        }
        AlignedBuf { ptr: NonNull::new(ptr.cast()).expect("mmap gave a null pointer"), cap, len: cap }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Sets the length (at most the capacity; the bytes keep whatever they held).
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "length {len} over capacity {}", self.cap);
        self.len = len;
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length, and no longer borrowed.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.cap) };
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len <= cap` bytes, initialised (zeroed at allocation).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`, and `self` is borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

/// A small free list of equal-sized buffers, so the hot path neither allocates nor
/// zero-fills (and the memory it touches stays the same few pages).
pub struct Pool {
    size: usize,
    keep: usize,
    free: Mutex<Vec<AlignedBuf>>,
}

impl Pool {
    /// Buffers of `size` bytes; at most `keep` idle ones are kept.
    pub const fn new(size: usize, keep: usize) -> Pool {
        Pool { size, keep, free: Mutex::new(Vec::new()) }
    }

    /// A buffer of the pool's size (its length set to the size).
    pub fn take(&'static self) -> Pooled {
        let mut b = self.free.lock().pop().unwrap_or_else(|| AlignedBuf::new(self.size));
        b.set_len(self.size);
        Pooled { buf: Some(b), pool: self }
    }
}

/// A buffer that goes back to its pool when dropped. `bytes::Bytes::from_owner` turns it
/// into a `Bytes` that QUIC can send without a copy.
pub struct Pooled {
    buf: Option<AlignedBuf>,
    pool: &'static Pool,
}

impl Pooled {
    pub fn set_len(&mut self, len: usize) {
        self.buf.as_mut().unwrap().set_len(len);
    }

    pub fn into_bytes(self) -> bytes::Bytes {
        bytes::Bytes::from_owner(self)
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            let mut free = self.pool.free.lock();
            if free.len() < self.pool.keep {
                free.push(b);
            }
        }
    }
}

impl std::ops::Deref for Pooled {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buf.as_ref().unwrap()
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.buf.as_mut().unwrap()
    }
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

fn aligned(ptr: *const u8, len: usize, offset: u64) -> bool {
    (ptr as usize).is_multiple_of(ALIGN) && len.is_multiple_of(ALIGN) && offset.is_multiple_of(ALIGN as u64)
}

/// A file with a buffered handle and, where the file system allows, a direct one.
pub struct DualFile {
    buffered: File,
    direct: Option<File>,
}

impl DualFile {
    /// Adds a direct handle to `file` (by reopening it through `/proc/self/fd`) with the
    /// same access mode; without one if the file system refuses.
    pub fn new(file: File, write: bool) -> DualFile {
        use std::os::fd::AsRawFd;
        let direct = if std::env::var_os("MAXD_RELAY_NO_DIRECT_IO").is_some() {
            None
        } else {
            OpenOptions::new().read(true).write(write).custom_flags(libc::O_DIRECT).open(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
        };
        DualFile { buffered: file, direct }
    }

    /// Only the buffered handle.
    pub fn buffered(file: File) -> DualFile {
        DualFile { buffered: file, direct: None }
    }

    /// Opens `path` (created if `create`) for reading and, with `write`, writing.
    pub fn open(path: &Path, write: bool, create: bool, truncate: bool) -> io::Result<DualFile> {
        let f = OpenOptions::new().read(true).write(write).create(create).truncate(truncate).open(path)?;
        Ok(DualFile::new(f, write))
    }

    /// The buffered handle.
    pub fn file(&self) -> &File {
        &self.buffered
    }

    /// Whether bulk transfers bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Fills `buf` from `offset`; fewer bytes only at the end of the file.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        // Direct reads of whole pages; at the end of the file a direct read of a page
        // is short, and the rest (if any) is read buffered.
        if let Some(d) = &self.direct {
            let whole = buf.len() / ALIGN * ALIGN;
            while done < whole && aligned(buf[done..].as_ptr(), whole - done, offset + done as u64) {
                match d.read_at(&mut buf[done..whole], offset + done as u64) {
                    Ok(0) => return Ok(done),
                    Ok(n) => {
                        done += n;
                        if n % ALIGN != 0 {
                            return Ok(done);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                    Err(e) => return Err(e),
                }
            }
        }
        while done < buf.len() {
            match self.buffered.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Writes all of `buf` at `offset`: directly the aligned part, buffered the tail.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        if let Some(d) = &self.direct {
            let whole = buf.len() / ALIGN * ALIGN;
            while done < whole && aligned(buf[done..].as_ptr(), whole - done, offset + done as u64) {
                match d.write_at(&buf[done..whole], offset + done as u64) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                    Err(e) => return Err(e),
                }
            }
        }
        self.buffered.write_all_at(&buf[done..], offset + done as u64)
    }

    /// Makes what was written durable (direct writes skip the page cache, not the
    /// device's cache).
    pub fn sync_data(&self) -> io::Result<()> {
        self.buffered.sync_data()
    }

    pub fn set_len(&self, len: u64) -> io::Result<()> {
        self.buffered.set_len(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_and_buffered_views_agree() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = DualFile::open(&p, true, true, true).unwrap();
        let mut a = AlignedBuf::new(3 * ALIGN);
        for (i, b) in a.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        f.write_at(&a, 2 * ALIGN as u64).unwrap();
        // An unaligned tail and an unaligned buffer go buffered.
        f.write_at(&a[..100], 5 * ALIGN as u64).unwrap();
        f.write_at(&a[1..50], 10).unwrap();
        let all = std::fs::read(&p).unwrap();
        assert_eq!(all.len(), 5 * ALIGN + 100);
        assert_eq!(&all[2 * ALIGN..5 * ALIGN], &a[..]);
        assert_eq!(&all[5 * ALIGN..], &a[..100]);
        assert_eq!(&all[10..59], &a[1..50]);
        // Reads: aligned, past the end (short), unaligned.
        let mut b = AlignedBuf::new(4 * ALIGN);
        assert_eq!(f.read_at(&mut b, 2 * ALIGN as u64).unwrap(), 3 * ALIGN + 100);
        assert_eq!(&b[..3 * ALIGN + 100], &all[2 * ALIGN..]);
        let mut c = vec![0u8; 77];
        assert_eq!(f.read_at(&mut c, 5).unwrap(), 77);
        assert_eq!(&c[..], &all[5..82]);
    }

    #[test]
    fn pooled_buffers_are_reused_and_aligned() {
        static POOL: Pool = Pool::new(2 * ALIGN, 2);
        let a = POOL.take();
        let pa = a.as_ptr();
        assert_eq!(pa as usize % ALIGN, 0);
        let bytes = a.into_bytes();
        assert_eq!(bytes.len(), 2 * ALIGN);
        drop(bytes);
        let b = POOL.take();
        assert_eq!(b.as_ptr(), pa);
    }
}
