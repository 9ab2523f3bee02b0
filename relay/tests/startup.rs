//! Start-up of the store when opening stored blobs fails for a while (too many open
//! files, permission denied): the failure is reported, nothing is deleted, and the
//! files come back once the cause is gone.

mod common;

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use relay::backend::{Backend, Blob, LocalDir, Part};
use relay::store::{Limits, Store};

/// The local directory, but while `fail` is set every open of a partial blob fails
/// with "too many open files" (EMFILE) and every look at a complete one with
/// "permission denied" (EACCES).
struct Flaky {
    inner: LocalDir,
    fail: AtomicBool,
}

impl Flaky {
    fn check(&self, errno: i32) -> io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            Err(io::Error::from_raw_os_error(errno))
        } else {
            Ok(())
        }
    }
}

impl Backend for Flaky {
    fn create_partial(&self, id: &str, part: Part) -> io::Result<Arc<dyn Blob>> {
        self.inner.create_partial(id, part)
    }
    fn open_partial(&self, id: &str, part: Part) -> io::Result<Arc<dyn Blob>> {
        self.check(libc::EMFILE)?;
        self.inner.open_partial(id, part)
    }
    fn publish(&self, id: &str, hash: &str) -> io::Result<()> {
        self.inner.publish(id, hash)
    }
    fn open_complete(&self, hash: &str, part: Part) -> io::Result<Option<Arc<dyn Blob>>> {
        self.check(libc::EACCES)?;
        self.inner.open_complete(hash, part)
    }
    fn has_complete(&self, hash: &str) -> io::Result<bool> {
        self.check(libc::EACCES)?;
        self.inner.has_complete(hash)
    }
    fn has_partial(&self, id: &str) -> io::Result<bool> {
        self.check(libc::EACCES)?;
        self.inner.has_partial(id)
    }
    fn delete_partial(&self, id: &str) {
        self.inner.delete_partial(id)
    }
    fn delete_complete(&self, hash: &str) {
        self.inner.delete_complete(hash)
    }
    fn list(&self) -> io::Result<(Vec<String>, Vec<String>)> {
        self.inner.list()
    }
    fn free_space(&self) -> Option<u64> {
        self.inner.free_space()
    }
}

/// Every file under `dir` with its size.
fn listing(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for sub in ["files", "partial", "blobs"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let e = e.unwrap();
            out.insert(
                format!("{sub}/{}", e.file_name().to_string_lossy()),
                e.metadata().unwrap().len(),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_up_that_cannot_open_blobs_reports_it_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = start(dir.path(), config()).await;
    let c = srv.client("alice").await;
    let mut complete = Vec::new();
    for i in 0..3 {
        let (p, d) = random_file(dir.path(), &format!("c{i}"), 20_000 + i);
        complete.push((c.upload(&p, "c", "", progress()).await.unwrap(), d));
    }
    let mut partial = Vec::new();
    for i in 0..3 {
        // The first batch (512 KiB) lands, the second has a corrupt group.
        let (_, d) = random_file(dir.path(), &format!("p{i}"), 600_000 + i);
        let (ob, root) = relay::tree::outboard_of(&d[..], d.len() as u64).unwrap();
        let mut bad = d.clone();
        bad[560_000] ^= 1;
        let badp = dir.path().join(format!("p{i}.bad"));
        std::fs::write(&badp, &bad).unwrap();
        let p = progress();
        c.upload_with(
            Arc::new(std::fs::File::open(&badp).unwrap()),
            d.len() as u64,
            &ob,
            &root,
            "p",
            "",
            p.clone(),
        )
        .await
        .unwrap_err();
        partial.push((p.id.get().unwrap().clone(), d));
    }
    // An HTTP (tus) upload, half done.
    let (_, t) = random_file(dir.path(), "t", 100_000);
    let tus = ("tus-resumable", "1.0.0".to_string());
    let auth = ("authorization", format!("Bearer {}", srv.token("alice")));
    let (st, h, _) = http(
        srv.http,
        "POST",
        "/files",
        &[
            auth.clone(),
            tus.clone(),
            ("upload-length", "100000".into()),
        ],
        b"",
    )
    .await;
    assert_eq!(st, 201);
    let loc = header(&h, "location").unwrap().to_owned();
    let octet = (
        "content-type",
        "application/offset+octet-stream".to_string(),
    );
    let (st, _, _) = http(
        srv.http,
        "PATCH",
        &loc,
        &[
            auth.clone(),
            tus.clone(),
            octet,
            ("upload-offset", "0".into()),
        ],
        &t[..50_000],
    )
    .await;
    assert_eq!(st, 204);
    c.close().await;
    srv.stop().await;
    let store_dir = dir.path().join("relay");
    let before = listing(&store_dir);

    // Opening fails at start-up: the store opens, says so, and keeps every byte.
    let backend = Arc::new(Flaky {
        inner: LocalDir::new(&store_dir).unwrap(),
        fail: AtomicBool::new(true),
    });
    let metrics = relay::metrics::Metrics::new(&prometheus::Registry::new());
    let store = Store::open(
        &store_dir,
        backend.clone(),
        Limits::default(),
        relay::Clock::system(),
        metrics,
    )
    .expect("the store opens despite the failures");
    assert_eq!(
        listing(&store_dir),
        before,
        "a start-up that could not open blobs deleted files"
    );
    assert_eq!(store.pending(), 7, "every file is reported as not loaded");
    let err = store
        .get(&complete[0].0)
        .err()
        .expect("a file that could not be opened is served");
    assert_eq!(err.code(), relay::proto::ErrorCode::Internal, "{err}");
    assert!(err.to_string().contains("retry later"), "{err}");
    // Still failing: retried, kept.
    assert_eq!(store.retry_pending(), 0);
    assert_eq!(listing(&store_dir), before);
    // The cause goes away: the next retry loads them all, bit-exact.
    backend.fail.store(false, Ordering::SeqCst);
    assert_eq!(store.retry_pending(), 7);
    assert_eq!(store.pending(), 0);
    for (id, d) in &complete {
        let e = store.get(id).unwrap();
        let mut buf = vec![0u8; d.len() + 1];
        assert_eq!(store.read_at(&e, &mut buf, 0).unwrap(), d.len());
        assert!(buf[..d.len()] == d[..]);
    }
    assert_eq!(listing(&store_dir), before);
    drop(store);

    // Once the cause is gone, a start finds everything, bit-exact.
    let srv = start(dir.path(), config()).await;
    let c = srv.client("bob").await;
    for (i, (id, d)) in complete.iter().enumerate() {
        let out = dir.path().join(format!("out{i}"));
        c.download(id, &out, progress())
            .await
            .unwrap_or_else(|e| panic!("complete file {i}: {e}"));
        assert!(std::fs::read(&out).unwrap() == *d);
    }
    for (i, (id, d)) in partial.iter().enumerate() {
        let info = c
            .stat(id)
            .await
            .unwrap_or_else(|e| panic!("partial upload {i}: {e}"));
        assert_eq!(info.stored, 512 * 1024);
        let ob = c.outboard(&info).await.unwrap();
        assert!(c.read_range(&info, &ob, 0, 512 * 1024).await.unwrap() == d[..512 * 1024]);
    }
    let (st, h, _) = http(srv.http, "HEAD", &loc, &[auth.clone(), tus], b"").await;
    assert_eq!(st, 200);
    assert_eq!(header(&h, "upload-offset"), Some("49152"));
    let (st, _, body) = http(
        srv.http,
        "GET",
        &loc,
        &[auth, ("range", "bytes=0-49151".into())],
        b"",
    )
    .await;
    assert_eq!(st, 206);
    assert!(body == t[..49152]);
}
