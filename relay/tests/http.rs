//! The HTTP fallback (GET with Range, tus 1.0 upload) and expiry, on a real relay.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use relay::proto::ErrorCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_with_ranges_serves_what_quic_uploaded() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), config()).await;
    let (path, data) = random_file(dir.path(), "clip.mp4", 200_000);
    let id = srv
        .client("alice")
        .await
        .upload(&path, "clip été.mp4", "video/mp4", progress())
        .await
        .unwrap();
    let auth = [("authorization", format!("Bearer {}", srv.token("bob")))];
    let (st, h, body) = http(srv.http, "GET", &format!("/files/{id}"), &auth, b"").await;
    assert_eq!(st, 200);
    assert!(body == data);
    assert_eq!(header(&h, "content-type"), Some("video/mp4"));
    assert_eq!(header(&h, "accept-ranges"), Some("bytes"));
    assert_eq!(
        header(&h, "etag"),
        Some(format!("\"{}\"", blake3::hash(&data).to_hex()).as_str())
    );
    assert!(
        header(&h, "content-disposition")
            .unwrap()
            .contains("clip%20%C3%A9t%C3%A9.mp4")
    );
    for (range, s, e) in [
        ("bytes=10-19", 10, 20),
        ("bytes=199990-", 199_990, 200_000),
        ("bytes=-5", 199_995, 200_000),
        ("bytes=16380-50000", 16380, 50001),
    ] {
        let (st, h, body) = http(
            srv.http,
            "GET",
            &format!("/files/{id}"),
            &[auth[0].clone(), ("range", range.into())],
            b"",
        )
        .await;
        assert_eq!(st, 206, "{range}");
        assert!(body[..] == data[s..e], "{range}");
        assert_eq!(
            header(&h, "content-range"),
            Some(format!("bytes {s}-{}/200000", e - 1).as_str())
        );
    }
    let (st, _, _) = http(
        srv.http,
        "GET",
        &format!("/files/{id}"),
        &[auth[0].clone(), ("range", "bytes=300000-".into())],
        b"",
    )
    .await;
    assert_eq!(st, 416);
    // Token in the query, for plain links.
    let (st, _, body) = http(
        srv.http,
        "GET",
        &format!("/files/{id}?access_token={}", srv.token("carol")),
        &[],
        b"",
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(body.len(), data.len());
    let (st, _, _) = http(
        srv.http,
        "GET",
        "/files/0123456789abcdef0123456789abcdef",
        &auth,
        b"",
    )
    .await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_upload_resumes_and_is_verified_for_quic_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), config()).await;
    let (_, data) = random_file(dir.path(), "x", 100_000);
    let tok = srv.token("alice");
    let auth = ("authorization", format!("Bearer {tok}"));
    let tus = ("tus-resumable", "1.0.0".to_string());
    let (st, h, _) = http(srv.http, "OPTIONS", "/files", &[], b"").await;
    assert_eq!(st, 204);
    assert_eq!(header(&h, "tus-extension"), Some("creation"));
    let meta = format!(
        "filename {},filetype {}",
        base64::engine::general_purpose::STANDARD.encode("notes.txt"),
        base64::engine::general_purpose::STANDARD.encode("text/plain")
    );
    let (st, h, _) = http(
        srv.http,
        "POST",
        "/files",
        &[
            auth.clone(),
            tus.clone(),
            ("upload-length", "100000".into()),
            ("upload-metadata", meta),
        ],
        b"",
    )
    .await;
    assert_eq!(st, 201);
    let loc = header(&h, "location").unwrap().to_owned();
    let id = loc.trim_start_matches("/files/").to_owned();
    let octet = (
        "content-type",
        "application/offset+octet-stream".to_string(),
    );
    // First request stops mid-group: the offset comes back at the group boundary.
    let (st, h, _) = http(
        srv.http,
        "PATCH",
        &loc,
        &[
            auth.clone(),
            tus.clone(),
            octet.clone(),
            ("upload-offset", "0".into()),
        ],
        &data[..50_000],
    )
    .await;
    assert_eq!(st, 204);
    assert_eq!(header(&h, "upload-offset"), Some("49152"));
    let (st, h, _) = http(srv.http, "HEAD", &loc, &[auth.clone(), tus.clone()], b"").await;
    assert_eq!(st, 200);
    assert_eq!(header(&h, "upload-offset"), Some("49152"));
    assert_eq!(header(&h, "upload-length"), Some("100000"));
    // A wrong offset is refused.
    let (st, _, _) = http(
        srv.http,
        "PATCH",
        &loc,
        &[
            auth.clone(),
            tus.clone(),
            octet.clone(),
            ("upload-offset", "50000".into()),
        ],
        &data[50_000..],
    )
    .await;
    assert_eq!(st, 409);
    // Someone else cannot continue it.
    let other = ("authorization", format!("Bearer {}", srv.token("mallory")));
    let (st, _, _) = http(
        srv.http,
        "PATCH",
        &loc,
        &[
            other,
            tus.clone(),
            octet.clone(),
            ("upload-offset", "49152".into()),
        ],
        &data[49_152..],
    )
    .await;
    assert_eq!(st, 404);
    let (st, h, _) = http(
        srv.http,
        "PATCH",
        &loc,
        &[
            auth.clone(),
            tus.clone(),
            octet.clone(),
            ("upload-offset", "49152".into()),
        ],
        &data[49_152..],
    )
    .await;
    assert_eq!(st, 204);
    assert_eq!(header(&h, "upload-offset"), Some("100000"));
    let (st, _, body) = http(srv.http, "GET", &loc, std::slice::from_ref(&auth), b"").await;
    assert_eq!(st, 200);
    assert!(body == data);
    // The relay computed the hash; QUIC recipients verify against it.
    let c = srv.client("bob").await;
    let info = c.stat(&id).await.unwrap();
    assert!(info.complete);
    assert_eq!(info.name, "notes.txt");
    assert_eq!(
        info.hash.as_deref(),
        Some(blake3::hash(&data).to_hex().as_str())
    );
    let out = dir.path().join("out");
    c.download(&id, &out, progress()).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_files_are_gone_and_swept_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.ttl = Duration::from_secs(3600);
    let clock = relay::Clock::manual();
    let srv = start_with_clock(dir.path(), cfg, clock.clone()).await;
    let blobs = || {
        std::fs::read_dir(dir.path().join("relay/blobs"))
            .unwrap()
            .count()
    };
    let (path, data) = random_file(dir.path(), "a", 40_000);
    let alice = srv.client("alice").await;
    let a = alice.upload(&path, "a", "", progress()).await.unwrap();
    let info = alice.stat(&a).await.unwrap();
    assert_eq!(info.expires - info.created, 3600);
    // Half an hour later bob stores the same content: his file lives an hour from then.
    clock.advance(Duration::from_secs(1800));
    let bob = srv.client("bob").await;
    let b = bob.upload(&path, "b", "", progress()).await.unwrap();
    clock.advance(Duration::from_secs(1799));
    assert!(alice.stat(&a).await.is_ok(), "expired early");
    assert_eq!(srv.relay().sweep_expired(), 0);
    // Alice's file expires; the content stays for bob's.
    clock.advance(Duration::from_secs(1));
    let err = alice.stat(&a).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    let (st, _, _) = http(
        srv.http,
        "GET",
        &format!("/files/{a}"),
        &[("authorization", format!("Bearer {}", srv.token("x")))],
        b"",
    )
    .await;
    assert_eq!(st, 404);
    assert_eq!(srv.relay().sweep_expired(), 1);
    assert!(!dir.path().join(format!("relay/files/{a}.json")).exists());
    assert_eq!(
        blobs(),
        2,
        "the blob (data and outboard) is kept for the other file"
    );
    let out = dir.path().join("out");
    bob.download(&b, &out, progress()).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == data);
    // Bob's expires: the blob goes with its last file.
    clock.advance(Duration::from_secs(1800));
    assert_eq!(
        bob.stat(&b).await.unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(srv.relay().sweep_expired(), 1);
    assert_eq!(blobs(), 0, "the blob went with its last file");
}
