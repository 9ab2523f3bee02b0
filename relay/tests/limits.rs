//! Per-user limits on uploads: unfinished uploads (how many, how many bytes) and new
//! uploads a minute. A user at a limit gets a specific error (HTTP: JSON and 429/413;
//! QUIC: the error frame's code); other users are not affected.

mod common;

use std::time::Duration;

use common::*;
use relay::proto::ErrorCode;

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Descriptors the process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_1001st_unfinished_upload_of_a_user_is_refused_and_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.max_partial_uploads = 1000;
    cfg.upload_starts_per_minute = 0;
    let srv = start(dir.path(), cfg).await;
    let tus = ("tus-resumable", "1.0.0".to_string());
    let bearer = |u: &str| ("authorization", format!("Bearer {}", srv.token(u)));
    let create = |user: &'static str, len: u64| {
        let h = [
            bearer(user),
            tus.clone(),
            ("upload-length", len.to_string()),
        ];
        async move { http(srv.http, "POST", "/files", &h, b"").await }
    };
    let fds = open_fds();
    let mut first = None;
    for i in 0..1000 {
        let (st, h, body) = create("mallory", 1).await;
        assert_eq!(st, 201, "upload {i}: {}", String::from_utf8_lossy(&body));
        first.get_or_insert_with(|| header(&h, "location").unwrap().to_owned());
    }
    // No descriptor is held per stored file (three each, before): what is open is
    // bounded by the cache of open blobs (at most 256 blob parts, 512 descriptors).
    assert!(
        open_fds() < fds + 600,
        "{} descriptors open after 1000 uploads, {fds} before",
        open_fds()
    );
    let (st, h, body) = create("mallory", 1).await;
    assert_eq!(st, 429);
    assert_eq!(header(&h, "content-type"), Some("application/json"));
    let v = json(&body);
    assert_eq!(v["error"], "too_many_partial_uploads");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("1000 unfinished uploads"),
        "{v}"
    );
    // Over QUIC too, with the same code.
    let (path, data) = random_file(dir.path(), "a", 40_000);
    let err = srv
        .client("mallory")
        .await
        .upload(&path, "a", "", progress())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TooManyPartialUploads), "{err}");
    // Another user is not affected.
    let (st, _, _) = create("alice", 1).await;
    assert_eq!(st, 201);
    let alice = srv.client("alice").await;
    let id = alice.upload(&path, "a", "", progress()).await.unwrap();
    let out = dir.path().join("out");
    alice.download(&id, &out, progress()).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == data);
    // Finishing one frees a place.
    let loc = first.unwrap();
    let octet = (
        "content-type",
        "application/offset+octet-stream".to_string(),
    );
    let (st, _, _) = http(
        srv.http,
        "PATCH",
        &loc,
        &[
            bearer("mallory"),
            tus.clone(),
            octet,
            ("upload-offset", "0".into()),
        ],
        b"x",
    )
    .await;
    assert_eq!(st, 204);
    let (st, _, _) = create("mallory", 1).await;
    assert_eq!(st, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bytes_of_unfinished_uploads_are_limited_per_user() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.max_partial_bytes = 100_000;
    let srv = start(dir.path(), cfg).await;
    let tus = ("tus-resumable", "1.0.0".to_string());
    let post = |user: &str, len: u64| {
        let h = [
            ("authorization", format!("Bearer {}", srv.token(user))),
            tus.clone(),
            ("upload-length", len.to_string()),
        ];
        async move { http(srv.http, "POST", "/files", &h, b"").await }
    };
    assert_eq!(post("mallory", 60_000).await.0, 201);
    let (st, _, body) = post("mallory", 50_000).await;
    assert_eq!(st, 413);
    assert_eq!(json(&body)["error"], "partial_quota_exceeded");
    let (path, _) = random_file(dir.path(), "a", 50_000);
    let err = srv
        .client("mallory")
        .await
        .upload(&path, "a", "", progress())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PartialQuotaExceeded), "{err}");
    assert_eq!(
        post("mallory", 40_000).await.0,
        201,
        "up to the limit is fine"
    );
    assert_eq!(
        post("alice", 90_000).await.0,
        201,
        "another user is not affected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_starts_are_limited_per_user_and_minute() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.upload_starts_per_minute = 5;
    let clock = relay::Clock::manual();
    let srv = start_with_clock(dir.path(), cfg, clock.clone()).await;
    let tus = ("tus-resumable", "1.0.0".to_string());
    let post = |user: &str| {
        let h = [
            ("authorization", format!("Bearer {}", srv.token(user))),
            tus.clone(),
            ("upload-length", "10".to_string()),
        ];
        async move { http(srv.http, "POST", "/files", &h, b"").await }
    };
    for _ in 0..4 {
        assert_eq!(post("mallory").await.0, 201);
    }
    // QUIC starts count as well: the fifth is one.
    let (path, _) = random_file(dir.path(), "a", 100_000);
    let (ob, root) = relay::tree::outboard_of(&std::fs::read(&path).unwrap()[..], 100_000).unwrap();
    let mut bad = std::fs::read(&path).unwrap();
    bad[70_000] ^= 1;
    std::fs::write(dir.path().join("bad"), &bad).unwrap();
    let c = srv.client("mallory").await;
    let p = progress();
    let f = std::sync::Arc::new(std::fs::File::open(dir.path().join("bad")).unwrap());
    assert_eq!(
        c.upload_with(f, 100_000, &ob, &root, "a", "", p.clone())
            .await
            .unwrap_err()
            .code(),
        Some(ErrorCode::HashMismatch)
    );
    let id = p.id.get().unwrap().clone();
    // The sixth within the minute is refused, saying when to retry.
    let (st, h, body) = post("mallory").await;
    assert_eq!(st, 429);
    assert_eq!(header(&h, "retry-after"), Some("12"));
    let v = json(&body);
    assert_eq!(v["error"], "rate_limited");
    assert_eq!(v["retry_after"], 12);
    let (other, _) = random_file(dir.path(), "b", 1000);
    let err = c.upload(&other, "b", "", progress()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RateLimited), "{err}");
    assert!(err.to_string().contains("retry in 12 s"), "{err}");
    // Resuming is not a start.
    assert_eq!(c.upload(&path, "a", "", progress()).await.unwrap(), id);
    // Another user is not affected.
    assert_eq!(post("alice").await.0, 201);
    // On the relay's clock, 12 s later one more start is allowed, and only one.
    clock.advance(Duration::from_secs(11));
    assert_eq!(post("mallory").await.0, 429);
    clock.advance(Duration::from_secs(1));
    assert_eq!(post("mallory").await.0, 201);
    assert_eq!(post("mallory").await.0, 429);
}
