//! Connections and transfers that hold the relay's resources without using them are
//! ended: idle connections, connections that never authenticate, silent peers,
//! stalled transfers; and the connection caps hold while the relay goes on serving.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use relay::client::Client;
use relay::proto::{self, ErrorCode, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn closed_with(e: quinn::ConnectionError, code: u32) -> Result<(), String> {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) if c.error_code == code.into() => Ok(()),
        other => Err(format!("closed otherwise: {other}")),
    }
}

/// A raw QUIC connection to the relay (no hello sent), from `bind`, sending keep-alives
/// every `keep_alive`.
async fn raw(
    srv: &Server,
    bind: &str,
    keep_alive: Option<Duration>,
) -> (quinn::Endpoint, quinn::Connection) {
    let mut t = relay::transport();
    t.keep_alive_interval(keep_alive);
    let cfg = relay::tls::client_config(
        &relay::tls::Trust::Pin(srv.relay().fingerprint().to_owned()),
        t,
    )
    .unwrap();
    let mut ep = quinn::Endpoint::client(bind.parse().unwrap()).unwrap();
    ep.set_default_client_config(cfg);
    let conn = ep
        .connect(srv.relay().local_addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
    (ep, conn)
}

async fn hello(conn: &quinn::Connection, token: String) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    proto::write_frame(
        &mut send,
        &Request::Hello {
            version: proto::VERSION,
            token,
        },
    )
    .await
    .unwrap();
    let _ = send.finish();
    assert!(matches!(
        proto::read_frame(&mut recv).await.unwrap(),
        Response::Welcome { .. }
    ));
}

/// Waits until the relay has `n` connections open.
async fn connections(srv: &Server, n: usize) {
    within(10, async {
        while srv.relay().connections() != n {
            // Polling a counter: the relay gives no event to wait on.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_unauthenticated_connections_are_closed_busy_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.idle_timeout = Duration::from_secs(1);
    cfg.auth_timeout = Duration::from_secs(1);
    let srv = start(dir.path(), cfg).await;

    // Authenticated, then nothing: closed as idle.
    let t = Instant::now();
    let c = srv.client("alice").await;
    closed_with(within(10, c.closed()).await, proto::CLOSE_IDLE).unwrap();
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "closed before its idle timeout"
    );
    // Never says hello: closed when the auth timeout runs out.
    let t = Instant::now();
    let (_ep, conn) = raw(&srv, "127.0.0.1:0", Some(Duration::from_millis(200))).await;
    closed_with(
        within(10, conn.closed()).await,
        proto::CLOSE_UNAUTHENTICATED,
    )
    .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "closed before its auth timeout"
    );

    // A connection with a request under way is not idle: a download waits for an upload
    // longer than the idle timeout, and completes.
    let (path, data) = random_file(dir.path(), "a", 2 << 20);
    let up = srv.client("alice").await;
    let mut bad = data.clone();
    bad[1 << 20] ^= 1;
    std::fs::write(dir.path().join("bad"), &bad).unwrap();
    let (ob, root) = relay::tree::outboard_of(&data[..], data.len() as u64).unwrap();
    let p = progress();
    up.upload_with(
        Arc::new(std::fs::File::open(dir.path().join("bad")).unwrap()),
        data.len() as u64,
        &ob,
        &root,
        "a",
        "",
        p.clone(),
    )
    .await
    .unwrap_err();
    let id = p.id.get().unwrap().clone();
    let down = Arc::new(srv.client("bob").await);
    let out = dir.path().join("out");
    let dl = {
        let (down, id, out) = (down.clone(), id.clone(), out.clone());
        tokio::spawn(async move { down.download(&id, &out, progress()).await })
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(3), down.closed())
            .await
            .is_err(),
        "a connection waiting for an upload was closed as idle"
    );
    let up = srv.client("alice").await;
    up.upload(&path, "a", "", progress()).await.unwrap();
    within(10, dl).await.unwrap().unwrap();
    assert!(std::fs::read(&out).unwrap() == data);
    // Then it is idle.
    closed_with(within(10, down.closed()).await, proto::CLOSE_IDLE).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_dropped_after_the_stall_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.stall_timeout = Duration::from_secs(1);
    let srv = start(dir.path(), cfg).await;
    // A client on a runtime of its own, which then stops dead: no close, no packet.
    let opts = srv.options(srv.token("alice"));
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let client = rt.block_on(Client::connect(&opts)).unwrap();
        std::mem::forget(client);
        rt.shutdown_background();
    })
    .await
    .unwrap();
    let t = Instant::now();
    connections(&srv, 0).await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "dropped after {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_transfers_are_ended_and_keep_what_they_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.stall_timeout = Duration::from_secs(1);
    let srv = start(dir.path(), cfg).await;
    let (_, data) = random_file(dir.path(), "a", 1 << 20);

    // HTTP: a PATCH whose body stops half-way is answered 408, and the batch that
    // arrived whole is kept.
    let token = srv.token("alice");
    let (st, h, _) = http(
        srv.http,
        "POST",
        "/files",
        &[
            ("authorization", format!("Bearer {token}")),
            ("tus-resumable", "1.0.0".into()),
            ("upload-length", data.len().to_string()),
        ],
        b"",
    )
    .await;
    assert_eq!(st, 201);
    let loc = header(&h, "location").unwrap().to_owned();
    let mut s = tokio::net::TcpStream::connect(srv.http).await.unwrap();
    let head = format!(
        "PATCH {loc} HTTP/1.1\r\nhost: t\r\nconnection: close\r\nauthorization: Bearer {token}\r\ntus-resumable: 1.0.0\r\ncontent-type: application/offset+octet-stream\r\nupload-offset: 0\r\ncontent-length: {}\r\n\r\n",
        data.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&data[..600_000]).await.unwrap();
    let mut answer = Vec::new();
    within(10, s.read_to_end(&mut answer)).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"timeout""#), "{answer}");
    let (st, h, _) = http(
        srv.http,
        "HEAD",
        &loc,
        &[
            ("authorization", format!("Bearer {token}")),
            ("tus-resumable", "1.0.0".into()),
        ],
        b"",
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(header(&h, "upload-offset"), Some("524288"));

    // QUIC: a put whose data stops is answered with `timeout`; the connection, kept
    // alive by its client, stays usable.
    let (ob, root) = relay::tree::outboard_of(&data[..], data.len() as u64).unwrap();
    let (_ep, conn) = raw(&srv, "127.0.0.1:0", Some(Duration::from_millis(200))).await;
    hello(&conn, token.clone()).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    proto::write_frame(
        &mut send,
        &Request::Begin {
            name: "b".into(),
            mime: String::new(),
            size: data.len() as u64,
            hash: hex::encode(root),
        },
    )
    .await
    .unwrap();
    assert!(matches!(
        proto::read_frame(&mut recv).await.unwrap(),
        Response::SendOutboard { .. }
    ));
    send.write_all(&ob).await.unwrap();
    let Response::Upload { file, .. } = proto::read_frame(&mut recv).await.unwrap() else {
        panic!("no upload")
    };
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    proto::write_frame(
        &mut send,
        &Request::Put {
            file: file.clone(),
            offset: 0,
            len: data.len() as u64,
        },
    )
    .await
    .unwrap();
    send.write_all(&data[..600_000]).await.unwrap();
    let t = Instant::now();
    match within(10, proto::read_frame::<Response>(&mut recv))
        .await
        .unwrap()
    {
        Response::Error { code, message } => assert_eq!(code, ErrorCode::Timeout, "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() >= Duration::from_millis(900));
    let c = Client::connect(&srv.options(token)).await.unwrap();
    assert_eq!(
        c.stat(&file).await.unwrap().stored,
        524_288,
        "the whole batch is kept"
    );
    assert!(conn.close_reason().is_none(), "the connection was closed");
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let c = Capture::default();
            let w = c.clone();
            tracing_subscriber::fmt()
                .with_env_filter("relay=info")
                .with_writer(move || w.clone())
                .with_ansi(false)
                .init();
            c
        })
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_hold_while_the_relay_serves_the_others() {
    let logs = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.max_connections = 3;
    cfg.max_connections_per_ip = 2;
    let srv = start(dir.path(), cfg).await;
    let opts = |u: &str| srv.options(srv.token(u));
    let from = |ip: &str| -> SocketAddr { format!("{ip}:0").parse().unwrap() };
    let a1 = Client::connect_from(&opts("a"), from("127.0.0.2"))
        .await
        .unwrap();
    let a2 = Client::connect_from(&opts("a"), from("127.0.0.2"))
        .await
        .unwrap();
    // A third from the same address is refused...
    let err = Client::connect_from(&opts("a"), from("127.0.0.2"))
        .await
        .err()
        .expect("over the per-address cap");
    assert!(err.to_string().contains("connection limit"), "{err}");
    // ...not one from another address, up to the global cap.
    let b1 = Client::connect_from(&opts("b"), from("127.0.0.3"))
        .await
        .unwrap();
    let err = Client::connect_from(&opts("c"), from("127.0.0.4"))
        .await
        .err()
        .expect("over the global cap");
    assert!(err.to_string().contains("connection limit"), "{err}");
    // Those admitted are served.
    let (path, data) = random_file(dir.path(), "f", 300_000);
    let id = a1.upload(&path, "f", "", progress()).await.unwrap();
    let out = dir.path().join("out");
    b1.download(&id, &out, progress()).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == data);
    // A place given back is taken again.
    a2.close().await;
    connections(&srv, 2).await;
    let c1 = Client::connect_from(&opts("c"), from("127.0.0.4"))
        .await
        .unwrap();
    assert!(c1.stat(&id).await.unwrap().complete);
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("relay connection cap reached"), "{logs}");
    assert!(
        logs.contains("relay.max_connections_per_ip") && logs.contains("relay.max_connections)"),
        "{logs}"
    );
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        assert!(
            !logs.contains(ip),
            "a client's address is in the logs:\n{logs}"
        );
    }
}
