//! What the relay writes to its logs, at every level, during an ordinary session of
//! uploads and downloads over QUIC and HTTP: never a file id (a download capability),
//! never a token, never the client's IP address.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_file_id_token_or_address_reaches_the_logs_at_any_level() {
    let capture = Capture::default();
    let writer = capture.clone();
    // Everything, at trace, with the caps maxd puts on dependencies that log addresses.
    let mut filter = tracing_subscriber::EnvFilter::new("trace");
    for cap in relay::LOG_CAPS {
        filter = filter.add_directive(cap.parse().unwrap());
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let dir = tempfile::tempdir().unwrap();
    // The relay on 127.0.0.2, the clients on 127.0.0.1: that address is the clients' alone.
    let mut cfg = config();
    cfg.listen = "127.0.0.2:0".parse().unwrap();
    let srv = start(dir.path(), cfg).await;
    let alice = srv.token("alice");
    let bob = srv.token("bob");
    let mut ids = Vec::new();

    // QUIC: a new upload, a partial one resumed, a deduplicated one, downloads, errors.
    let c = srv.client("alice").await;
    let (path, data) = random_file(dir.path(), "a", 100_000);
    ids.push(c.upload(&path, "a.bin", "", progress()).await.unwrap());
    let (pb, db) = random_file(dir.path(), "b", 80_000);
    let (ob, root) = relay::tree::outboard_of(&db[..], db.len() as u64).unwrap();
    let mut bad = db.clone();
    bad[40_000] ^= 1;
    std::fs::write(dir.path().join("bad"), &bad).unwrap();
    let p = progress();
    c.upload_with(
        Arc::new(std::fs::File::open(dir.path().join("bad")).unwrap()),
        db.len() as u64,
        &ob,
        &root,
        "b",
        "",
        p.clone(),
    )
    .await
    .unwrap_err();
    ids.push(p.id.get().unwrap().clone());
    assert_eq!(c.upload(&pb, "b", "", progress()).await.unwrap(), ids[1]);
    let d = srv.client("bob").await;
    ids.push(d.upload(&path, "copy.bin", "", progress()).await.unwrap());
    for id in &ids {
        let out = dir.path().join(format!("out-{id}"));
        d.download(id, &out, progress()).await.unwrap();
    }
    d.stat("0123456789abcdef0123456789abcdef")
        .await
        .unwrap_err();

    // HTTP: a tus upload, downloads with the token in the header and in the query.
    let tus = ("tus-resumable", "1.0.0".to_string());
    let auth = ("authorization", format!("Bearer {alice}"));
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
    ids.push(loc.trim_start_matches("/files/").to_owned());
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
        &data,
    )
    .await;
    assert_eq!(st, 204);
    let (st, _, _) = http(srv.http, "HEAD", &loc, &[auth.clone(), tus], b"").await;
    assert_eq!(st, 200);
    for id in &ids {
        let (st, _, _) = http(
            srv.http,
            "GET",
            &format!("/files/{id}?access_token={bob}"),
            &[],
            b"",
        )
        .await;
        assert_eq!(st, 200);
        let (st, _, _) = http(
            srv.http,
            "GET",
            &format!("/files/{id}"),
            &[auth.clone(), ("range", "bytes=5-100".into())],
            b"",
        )
        .await;
        assert_eq!(st, 206);
    }
    let (st, _, _) = http(
        srv.http,
        "GET",
        "/files/0123456789abcdef0123456789abcdef",
        std::slice::from_ref(&auth),
        b"",
    )
    .await;
    assert_eq!(st, 404);
    c.close().await;
    d.close().await;
    drop(srv);

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("relay listening"), "nothing was captured");
    for id in &ids {
        assert!(
            !logs.contains(id.as_str()),
            "a file id is in the logs:\n{}",
            lines_with(&logs, id)
        );
    }
    for token in [&alice, &bob] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(
            !logs.contains(signature),
            "a token is in the logs:\n{}",
            lines_with(&logs, signature)
        );
    }
    assert!(
        !logs.contains("127.0.0.1"),
        "the client's address is in the logs:\n{}",
        lines_with(&logs, "127.0.0.1")
    );
}

fn lines_with(logs: &str, what: &str) -> String {
    logs.lines()
        .filter(|l| l.contains(what))
        .take(5)
        .collect::<Vec<_>>()
        .join("\n")
}
