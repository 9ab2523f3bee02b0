//! A full disk: a clear error, the partial upload kept, nothing corrupted, and the
//! upload resumes once there is room. Uses a small tmpfs (needs root to mount; the
//! test says so and passes without checking anything when it cannot mount).

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::*;
use relay::proto::ErrorCode;
use relay::tree;

struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(at.to_owned()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_and_the_partial_upload_survives() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let Some(_mount) = Mount::tmpfs(&store_dir, "4m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
        return;
    };
    let mut cfg = config();
    cfg.dir = Some(store_dir.clone());
    let srv = start(dir.path(), cfg).await;
    let c = srv.client("alice").await;

    // Half of a 2 MiB upload lands (the second half is refused as corrupt).
    let (path, data) = random_file(dir.path(), "in.bin", 2 * 1024 * 1024);
    let mut bad = data.clone();
    bad[1024 * 1024 + 1] ^= 1;
    let badp = dir.path().join("bad");
    std::fs::write(&badp, &bad).unwrap();
    let (ob, root) = tree::outboard_of(&data[..], data.len() as u64).unwrap();
    let p = progress();
    let err = c.upload_with(Arc::new(std::fs::File::open(&badp).unwrap()), data.len() as u64, &ob, &root, "in.bin", "", p.clone()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::HashMismatch));
    let id = p.id.get().unwrap().clone();
    assert_eq!(c.stat(&id).await.unwrap().stored, 1024 * 1024);

    // Fill the disk.
    let filler = store_dir.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
    }
    let err = c.upload(&path, "in.bin", "", progress()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::DiskFull), "{err}");
    assert!(err.to_string().contains("disk is full"), "{err}");
    let info = c.stat(&id).await.unwrap();
    assert!(!info.complete);
    assert_eq!(info.stored, 1024 * 1024, "what was stored is kept");
    // A new upload is refused up front.
    let (other, _) = random_file(dir.path(), "other.bin", 512 * 1024);
    let err = c.upload(&other, "other.bin", "", progress()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::DiskFull), "{err}");

    // Room again: the upload resumes and the file is intact.
    std::fs::remove_file(&filler).unwrap();
    let p = progress();
    assert_eq!(c.upload(&path, "in.bin", "", p.clone()).await.unwrap(), id);
    assert_eq!(p.transferred.load(Ordering::Relaxed), 1024 * 1024);
    let out = dir.path().join("out");
    c.download(&id, &out, progress()).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == data);
}
