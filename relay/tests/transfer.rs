//! Uploads, downloads, resumption, verification, tokens, limits, dedup and restarts,
//! over real QUIC to a real relay storing real files.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::*;
use relay::client::{Client, ClientError};
use relay::proto::ErrorCode;
use relay::tree;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

async fn round_trip(size: usize) {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), config()).await;
    let (path, data) = random_file(dir.path(), "in.bin", size);
    let c = srv.client("alice").await;
    let p = progress();
    let id = within(120, c.upload(&path, "in.bin", "application/octet-stream", p.clone())).await.unwrap();
    assert_eq!(p.transferred.load(Ordering::Relaxed), size as u64);
    // Uploading it again gives the same file, sending nothing.
    let again = progress();
    assert_eq!(c.upload(&path, "in.bin", "application/octet-stream", again.clone()).await.unwrap(), id);
    assert_eq!(again.transferred.load(Ordering::Relaxed), 0);
    let info = c.stat(&id).await.unwrap();
    assert!(info.complete);
    assert_eq!(info.size, size as u64);
    assert_eq!(info.hash.as_deref(), Some(blake3::hash(&data).to_hex().as_str()));
    // Another user downloads it.
    let d = srv.client("bob").await;
    let out = dir.path().join("out.bin");
    within(120, d.download(&id, &out, progress())).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == data, "bit-exact round trip of {size} bytes");
    assert!(!dir.path().join("out.bin.part").exists());
}

#[tokio::test]
async fn round_trip_0_bytes() {
    round_trip(0).await;
}

#[tokio::test]
async fn round_trip_1_byte() {
    round_trip(1).await;
}

#[tokio::test]
async fn round_trip_16k_minus_1() {
    round_trip(16 * KIB - 1).await;
}

#[tokio::test]
async fn round_trip_16k_plus_1() {
    round_trip(16 * KIB + 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_100_mib() {
    round_trip(100 * MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_ranges_are_verified_on_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), config()).await;
    let (path, data) = random_file(dir.path(), "in.bin", 3 * MIB + 77);
    let c = srv.client("alice").await;
    let id = c.upload(&path, "in.bin", "x/y", progress()).await.unwrap();
    let info = c.stat(&id).await.unwrap();
    let ob = c.outboard(&info).await.unwrap();
    for (off, len) in [(0, 1), (16 * KIB as u64 - 1, 2), (MIB as u64 + 5, 100_000), (data.len() as u64 - 10, 10), (0, data.len() as u64)] {
        let got = c.read_range(&info, &ob, off, len).await.unwrap();
        assert!(got[..] == data[off as usize..(off + len) as usize], "range {off}+{len}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_killed_half_way_resumes_with_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), config()).await;
    let size = 32 * MIB;
    let (path, data) = random_file(dir.path(), "in.bin", size);
    let p = progress();
    let task = {
        let (opts, path, p) = (srv.options(srv.token("alice")), path.clone(), p.clone());
        tokio::spawn(async move {
            let c = Client::connect(&opts).await.unwrap();
            c.upload(&path, "in.bin", "video/mp4", p).await
        })
    };
    within(60, p.wait_for(|p| p.done.load(Ordering::Relaxed) >= size as u64 / 2)).await;
    // Kill the client: its task, connection and endpoint go away mid-transfer.
    task.abort();
    let _ = task.await;
    let id = p.id.get().unwrap().clone();

    let c = srv.client("alice").await;
    let info = c.stat(&id).await.unwrap();
    assert!(!info.complete);
    assert!(info.stored > 0 && info.stored < size as u64, "stored {}", info.stored);
    let p2 = progress();
    let id2 = within(60, c.upload(&path, "in.bin", "video/mp4", p2.clone())).await.unwrap();
    assert_eq!(id2, id, "the same upload resumed");
    let sent = p2.transferred.load(Ordering::Relaxed);
    assert!(sent <= size as u64 - info.stored, "resume sent {sent} bytes, but {} were already stored", info.stored);
    let out = dir.path().join("out.bin");
    c.download(&id, &out, progress()).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_interrupted_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), config()).await;
    let size = 32 * MIB + 5;
    let (path, data) = random_file(dir.path(), "in.bin", size);
    let id = srv.client("alice").await.upload(&path, "in.bin", "", progress()).await.unwrap();
    let out = dir.path().join("out.bin");
    let p = progress();
    let task = {
        let (opts, out, p, id) = (srv.options(srv.token("bob")), out.clone(), p.clone(), id.clone());
        tokio::spawn(async move {
            let c = Client::connect(&opts).await.unwrap();
            c.download(&id, &out, p).await
        })
    };
    within(60, p.wait_for(|p| p.done.load(Ordering::Relaxed) >= size as u64 / 2)).await;
    task.abort();
    let _ = task.await;
    assert!(!out.exists());
    assert!(dir.path().join("out.bin.part").exists());
    let c = srv.client("bob").await;
    let p2 = progress();
    within(60, c.download(&id, &out, p2.clone())).await.unwrap();
    let got = p2.transferred.load(Ordering::Relaxed);
    assert!(got < size as u64 - size as u64 / 4, "resumed download fetched {got} of {size} bytes");
    assert!(std::fs::read(&out).unwrap() == data);
}

/// Uploads `good`'s content but with `bad` bytes on the wire.
async fn upload_lying(c: &Client, dir: &std::path::Path, good: &[u8], bad: &[u8]) -> Result<String, ClientError> {
    let (ob, root) = tree::outboard_of(good, good.len() as u64).unwrap();
    let path = dir.join(format!("bad-{}", rand::random::<u32>()));
    std::fs::write(&path, bad).unwrap();
    let f = Arc::new(std::fs::File::open(&path).unwrap());
    c.upload_with(f, good.len() as u64, &ob, &root, "x", "y", progress()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_chunk_is_rejected_and_never_published() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), config()).await;
    let (path, data) = random_file(dir.path(), "in.bin", 2 * MIB);
    let mut bad = data.clone();
    bad[MIB + 3] ^= 0x40;
    let c = srv.client("alice").await;
    let err = upload_lying(&c, dir.path(), &data, &bad).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::HashMismatch), "{err}");
    assert!(err.to_string().contains("group 64"), "{err}");
    // The file is not published; resuming with the right bytes completes it.
    let p = progress();
    let id = c.upload(&path, "in.bin", "", p.clone()).await.unwrap();
    let info = c.stat(&id).await.unwrap();
    assert!(info.complete);
    assert!(p.transferred.load(Ordering::Relaxed) < data.len() as u64, "only the rejected part is sent again");
    let out = dir.path().join("out");
    c.download(&id, &out, progress()).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == data);

    // An outboard that does not match the declared hash is refused outright.
    let (mut ob, root) = tree::outboard_of(&bad[..], bad.len() as u64).unwrap();
    ob[100] ^= 1;
    let f = Arc::new(std::fs::File::open(&path).unwrap());
    let err = c.upload_with(f, bad.len() as u64, &ob, &root, "x", "y", progress()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::HashMismatch), "{err}");
}

#[tokio::test]
async fn wrong_expired_and_ungranted_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), config()).await;
    let other = ::common::Keys::from_secret(b"another-secret-another-secret-xx!").unwrap();
    let grants = ::common::Grants { files: true, ..Default::default() };
    let forged = other.mint_for("mallory", None, None, grants.clone(), std::time::Duration::from_secs(60));
    let expired = srv.keys.mint(&::common::Claims { sub: "alice".into(), name: None, room: None, grants, sid: None, iat: now() - 7200, exp: now() - 3600 });
    let no_files = srv.keys.mint_for("alice", None, None, ::common::Grants { publish: true, ..Default::default() }, std::time::Duration::from_secs(60));
    for (token, code, words) in [
        (forged.clone(), ErrorCode::Unauthorized, "signature"),
        (expired.clone(), ErrorCode::Unauthorized, "expired"),
        (no_files.clone(), ErrorCode::Forbidden, "files"),
        ("garbage".to_string(), ErrorCode::Unauthorized, "malformed"),
    ] {
        let err = Client::connect(&srv.options(token)).await.err().expect("refused");
        assert_eq!(err.code(), Some(code), "{err}");
        assert!(err.to_string().contains(words), "{err}");
    }
    // HTTP too.
    let (path, _) = random_file(dir.path(), "a", 10);
    let id = srv.client("alice").await.upload(&path, "a", "", progress()).await.unwrap();
    for (token, status) in [(forged, 401), (expired, 401), (no_files, 403)] {
        let (st, _, body) = http(srv.http, "GET", &format!("/files/{id}"), &[("authorization", format!("Bearer {token}"))], b"").await;
        assert_eq!(st, status, "{}", String::from_utf8_lossy(&body));
    }
    let (st, _, _) = http(srv.http, "GET", &format!("/files/{id}"), &[], b"").await;
    assert_eq!(st, 401);
}

#[tokio::test]
async fn over_limit_size_and_quota_are_refused_before_data_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.max_file_size = MIB as u64;
    cfg.user_quota = 3 * MIB as u64 / 2;
    let srv = start(dir.path(), cfg).await;
    let c = srv.client("alice").await;
    // Declare 2 MiB (the client's own check is bypassed by upload_with).
    let fake = vec![0u8; 2 * MIB];
    let err = upload_lying(&c, dir.path(), &fake, &fake).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TooLarge), "{err}");
    let stored = std::fs::read_dir(dir.path().join("relay/partial")).unwrap().count();
    assert_eq!(stored, 0, "nothing stored for a refused upload");
    // Quota: 1 MiB fits, a second 1 MiB does not.
    let (a, _) = random_file(dir.path(), "a", MIB);
    let (b, _) = random_file(dir.path(), "b", MIB);
    c.upload(&a, "a", "", progress()).await.unwrap();
    let err = c.upload(&b, "b", "", progress()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::QuotaExceeded), "{err}");
    // HTTP (tus) creation is refused the same way.
    let (st, _, _) = http(
        srv.http,
        "POST",
        "/files",
        &[("authorization", format!("Bearer {}", srv.token("bob"))), ("tus-resumable", "1.0.0".into()), ("upload-length", (2 * MIB).to_string())],
        b"",
    )
    .await;
    assert_eq!(st, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_uploads_with_ten_downloads_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Arc::new(start(dir.path(), config()).await);
    let mut existing = Vec::new();
    for i in 0..5 {
        let (path, data) = random_file(dir.path(), &format!("e{i}"), 4 * MIB + i * 1000);
        let id = srv.client("seed").await.upload(&path, "e", "", progress()).await.unwrap();
        existing.push((id, data));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..5 {
        let (path, data) = random_file(dir.path(), &format!("u{i}"), 4 * MIB + 333 * i);
        let srv = srv.clone();
        let dir = dir.path().to_owned();
        tasks.spawn(async move {
            let c = srv.client(&format!("up{i}")).await;
            let id = c.upload(&path, "u", "", progress()).await.unwrap();
            let out = dir.join(format!("u{i}.check"));
            c.download(&id, &out, progress()).await.unwrap();
            assert!(std::fs::read(&out).unwrap() == data);
        });
    }
    for j in 0..10 {
        let (id, data) = existing[j % 5].clone();
        let srv = srv.clone();
        let out = dir.path().join(format!("d{j}"));
        tasks.spawn(async move {
            let c = srv.client(&format!("down{j}")).await;
            c.download(&id, &out, progress()).await.unwrap();
            assert!(std::fs::read(&out).unwrap() == data);
        });
    }
    within(180, async {
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_can_start_while_the_upload_is_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), config()).await;
    let (path, data) = random_file(dir.path(), "in.bin", 6 * MIB + 123);
    let up = srv.client("alice").await;
    // The first 4 MiB arrive; the upload then stalls (a corrupt byte after them is refused).
    let mut bad = data.clone();
    bad[4 * MIB + 10] ^= 1;
    let (ob, root) = tree::outboard_of(&data[..], data.len() as u64).unwrap();
    let badp = dir.path().join("bad");
    std::fs::write(&badp, &bad).unwrap();
    let p = progress();
    let err = up.upload_with(Arc::new(std::fs::File::open(&badp).unwrap()), data.len() as u64, &ob, &root, "in.bin", "", p.clone()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::HashMismatch));
    let id = p.id.get().unwrap().clone();
    let out = dir.path().join("out.bin");
    let info = up.stat(&id).await.unwrap();
    assert!(!info.complete && info.stored >= 4 * MIB as u64 - 16 * KIB as u64, "{info:?}");

    let dl = {
        let (opts, out, id) = (srv.options(srv.token("bob")), out.clone(), id.clone());
        let dp = progress();
        let dp2 = dp.clone();
        (tokio::spawn(async move { Client::connect(&opts).await.unwrap().download(&id, &out, dp2).await }), dp)
    };
    // The recipient gets the verified first part while the upload is incomplete.
    within(60, dl.1.wait_for(|p| p.done.load(Ordering::Relaxed) >= 4 * MIB as u64 - 16 * KIB as u64)).await;
    assert!(!up.stat(&id).await.unwrap().complete);
    // The uploader resumes; the recipient finishes.
    up.upload(&path, "in.bin", "", progress()).await.unwrap();
    within(60, dl.0).await.unwrap().unwrap();
    assert!(std::fs::read(&out).unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_content_is_not_sent_again_but_needs_proof() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), config()).await;
    let (path, data) = random_file(dir.path(), "in.bin", 5 * MIB);
    let id_a = srv.client("alice").await.upload(&path, "a.bin", "", progress()).await.unwrap();
    let bob = srv.client("bob").await;
    let p = progress();
    let id_b = bob.upload(&path, "b.bin", "", p.clone()).await.unwrap();
    assert_ne!(id_a, id_b, "each uploader gets a file of their own");
    assert_eq!(p.transferred.load(Ordering::Relaxed), 0, "deduplicated: no byte sent");
    let info = bob.stat(&id_b).await.unwrap();
    assert!(info.complete);
    assert_eq!(info.name, "b.bin");
    let out = dir.path().join("out");
    bob.download(&id_b, &out, progress()).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == data);
    // Knowing the hash (and even the outboard) is not enough to get the file.
    let mallory = srv.client("mallory").await;
    let mut almost = data.clone();
    almost[4 * MIB] ^= 1;
    let err = upload_lying(&mallory, dir.path(), &data, &almost).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ProofFailed), "{err}");
    // One blob on disk for the two files.
    let blobs = std::fs::read_dir(dir.path().join("relay/blobs")).unwrap().filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "data").count();
    assert_eq!(blobs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_complete_and_partial_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = start(dir.path(), config()).await;
    let (pa, da) = random_file(dir.path(), "a", 3 * MIB + 1);
    let (pb, db) = random_file(dir.path(), "b", 4 * MIB + 9);
    let c = srv.client("alice").await;
    let id_a = c.upload(&pa, "a", "", progress()).await.unwrap();
    let mut bad = db.clone();
    bad[3 * MIB] ^= 1;
    let p = progress();
    let (ob, root) = tree::outboard_of(&db[..], db.len() as u64).unwrap();
    let badp = dir.path().join("bad");
    std::fs::write(&badp, &bad).unwrap();
    c.upload_with(Arc::new(std::fs::File::open(&badp).unwrap()), db.len() as u64, &ob, &root, "b", "", p.clone()).await.unwrap_err();
    let id_b = p.id.get().unwrap().clone();
    let stored = c.stat(&id_b).await.unwrap().stored;
    assert!(stored > 0);
    c.close().await;
    srv.stop().await;

    let srv = start(dir.path(), config()).await;
    let c = srv.client("alice").await;
    assert!(c.stat(&id_a).await.unwrap().complete);
    let info_b = c.stat(&id_b).await.unwrap();
    assert!(!info_b.complete);
    assert_eq!(info_b.stored, stored, "partial upload kept");
    let out = dir.path().join("out-a");
    c.download(&id_a, &out, progress()).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == da);
    let p = progress();
    assert_eq!(c.upload(&pb, "b", "", p.clone()).await.unwrap(), id_b);
    assert_eq!(p.transferred.load(Ordering::Relaxed), db.len() as u64 - stored);
    let out = dir.path().join("out-b");
    c.download(&id_b, &out, progress()).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == db);
}
