//! The main HTTP listener: an accept loop over hyper's HTTP/1.1 server (with upgrades,
//! for WebSockets) that keeps the port answering under abuse.
//!
//! - Every accepted socket gets `TCP_NODELAY`: small frames written back to back (an
//!   ack then an event on one WebSocket) leave at once instead of waiting ~40 ms for
//!   the peer's delayed ACK (Nagle).
//! - Slots ([`limits`]): at most `http.max_connections_per_ip` connections per client
//!   address (IPv6 per /64) and `http.max_connections` in all, kept below the process's
//!   open-file limit so accepting never runs the process out of descriptors. A refused
//!   connection gets a `503` with `{"error": "too_many_connections"}` and is closed.
//! - Timeouts ([`conn`]): `http.header_read_timeout` for a request head (slowloris),
//!   `http.idle_timeout` between keep-alive requests and for a response the client does
//!   not read. WebSockets are left to their planes once upgraded.
//! - Accept errors never spin: resource errors (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`)
//!   back off from 10 ms to 1 s; errors of one aborted connection are skipped.
//! - Shutdown: stop accepting, let requests in flight finish (`Connection: close`), and
//!   close what is left after [`DRAIN`].
//!
//! No log line of this module names a client address.

pub mod conn;
pub mod limits;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower_service::Service as _;
use tracing::{debug, info, warn};

use self::conn::{OnTimeout, Phase, TimedIo, TimedOut, Timeouts, TrackedBody};
use self::limits::{Limits, Refused};

/// How long requests in flight may take to finish once shutdown begins.
pub const DRAIN: Duration = Duration::from_secs(10);

/// What a refused connection is told before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
connection: close\r\nretry-after: 5\r\ncontent-length: 82\r\n\r\n\
{\"error\":\"too_many_connections\",\"message\":\"too many connections: try again later\"}";

/// The listener's settings, resolved from `[http]`.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub timeouts: Timeouts,
    /// Most open connections in all (already below the open-file limit).
    pub max_connections: usize,
    /// Most open connections from one client (IPv4 address or IPv6 /64); 0 = no limit.
    pub max_connections_per_ip: usize,
}

/// The highest `max_connections` the open-file limit `nofile` allows: a quarter of the
/// descriptors (at least 64, at most half) stays for the rest of the process - the
/// database, stored files, media and relay sockets, ICE-TCP.
pub fn connection_ceiling(nofile: u64) -> usize {
    let reserve = (nofile / 4).max(64).min(nofile / 2);
    usize::try_from(nofile - reserve)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// The listener's metrics, under the registry's `maxd_` prefix.
#[derive(Clone)]
pub struct Metrics {
    accepted: IntCounter,
    refused: IntCounterVec,
    timed_out: IntCounterVec,
    accept_errors: IntCounter,
    open: IntGauge,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Metrics> {
        let m = Metrics {
            accepted: IntCounter::new(
                "http_connections_accepted_total",
                "TCP connections accepted on the HTTP port",
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "http_connections_refused_total",
                    "HTTP connections closed at accept: reason per_ip (http.max_connections_per_ip) or total (http.max_connections)",
                ),
                &["reason"],
            )?,
            timed_out: IntCounterVec::new(
                Opts::new(
                    "http_connections_timed_out_total",
                    "HTTP connections closed by a timeout: phase header (http.header_read_timeout), idle or write (http.idle_timeout)",
                ),
                &["phase"],
            )?,
            accept_errors: IntCounter::new(
                "http_accept_errors_total",
                "accept() failures on the HTTP port for lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM)",
            )?,
            open: IntGauge::new(
                "http_connections_open",
                "Open connections on the HTTP port, WebSockets included",
            )?,
        };
        registry.register(Box::new(m.accepted.clone()))?;
        registry.register(Box::new(m.refused.clone()))?;
        registry.register(Box::new(m.timed_out.clone()))?;
        registry.register(Box::new(m.accept_errors.clone()))?;
        registry.register(Box::new(m.open.clone()))?;
        Ok(m)
    }

    fn on_timeout(&self) -> OnTimeout {
        let c = self.timed_out.clone();
        Arc::new(move |what| {
            let phase = match what {
                TimedOut::Header => "header",
                TimedOut::Idle => "idle",
                TimedOut::Write => "write",
            };
            c.with_label_values(&[phase]).inc();
        })
    }
}

/// Something that accepts connections: the real [`TcpListener`], or a stand-in in the
/// unit tests of the error path.
pub trait Accept: Send {
    fn accept(&mut self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send;
}

impl Accept for TcpListener {
    fn accept(&mut self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

/// Whether an accept error concerns only the connection being accepted (try the next
/// one at once) rather than the process's resources (back off).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || e.raw_os_error() == Some(71) // EPROTO: a protocol error on that connection
}

/// Exponential back-off for accept errors: 10 ms doubling to 1 s, reset by a success.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    fn next_wait(&mut self) -> Duration {
        let w = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        w
    }
}

/// At most one log line per `every`, telling how many events it stands for.
#[derive(Debug)]
struct Throttle {
    every: Duration,
    last: Option<Instant>,
    count: u64,
}

impl Throttle {
    fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            count: 0,
        }
    }

    /// Counts an event; `Some(n)` when a line is due, `n` events since the last one.
    fn hit(&mut self, now: Instant) -> Option<u64> {
        self.count += 1;
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

/// Decrements the open-connections gauge when the connection's socket is dropped.
struct OpenGauge(IntGauge);

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves `app` on connections from `listener` until `shutdown` completes, then drains.
pub async fn serve<A: Accept>(
    mut listener: A,
    app: Router,
    settings: Settings,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) {
    let limits = Limits::new(settings.max_connections, settings.max_connections_per_ip);
    let (stop_tx, stop_rx) = watch::channel(false);
    let on_timeout = metrics.on_timeout();
    let mut tasks = JoinSet::new();
    let mut backoff = Backoff::new();
    let mut full_log = Throttle::new(Duration::from_secs(10));
    let mut per_ip_log = Throttle::new(Duration::from_secs(10));
    let mut error_log = Throttle::new(Duration::from_secs(10));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                metrics.accept_errors.inc();
                let wait = backoff.next_wait();
                if let Some(n) = error_log.hit(Instant::now()) {
                    warn!(error = %e, failures = n, retry_in = %humantime::format_duration(wait), "accepting an HTTP connection failed; backing off");
                }
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        backoff.reset();
        metrics.accepted.inc();
        let slot = match limits.try_acquire(peer.ip()) {
            Ok(s) => s,
            Err(why) => {
                metrics.refused.with_label_values(&[why.as_str()]).inc();
                let _ = stream.try_write(REFUSED);
                drop(stream);
                match why {
                    Refused::Total => {
                        if let Some(n) = full_log.hit(Instant::now()) {
                            warn!(
                                open = limits.open(),
                                max_connections = limits.max_total(),
                                refused = n,
                                "http connection limit reached: refusing new connections until some close \
                                 (see http.max_connections and the open-file limit)"
                            );
                        }
                    }
                    Refused::PerIp => {
                        if let Some(n) = per_ip_log.hit(Instant::now()) {
                            info!(
                                max_connections_per_ip = settings.max_connections_per_ip,
                                refused = n,
                                "a client reached http.max_connections_per_ip: refusing its new connections"
                            );
                        }
                    }
                }
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "setting TCP_NODELAY failed");
        }
        metrics.open.inc();
        let guard = (slot, OpenGauge(metrics.open.clone()));
        let io = TimedIo::new(
            stream,
            Phase::new(),
            settings.timeouts,
            on_timeout.clone(),
            guard,
        );
        tasks.spawn(serve_connection(io, peer, app.clone(), stop_rx.clone()));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let in_flight = tasks.len();
    if in_flight > 0 {
        info!(
            connections = in_flight,
            "http: finishing requests in flight"
        );
    }
    let drained =
        tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(connections = tasks.len(), after = %humantime::format_duration(DRAIN), "http: closing connections still busy at shutdown");
        tasks.shutdown().await;
    }
}

/// One connection: HTTP/1.1 with keep-alive and upgrades, until it closes, times out,
/// or is upgraded (then the socket belongs to the WebSocket's task).
async fn serve_connection<G: Send + Unpin + 'static>(
    io: TimedIo<TcpStream, G>,
    peer: SocketAddr,
    app: Router,
    mut stop: watch::Receiver<bool>,
) {
    let phase = io.phase().clone();
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        phase.request_started();
        req.extensions_mut().insert(ConnectInfo(peer));
        let res = app.clone().call(req.map(Body::new));
        let phase = phase.clone();
        async move {
            let res = match res.await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                phase.upgraded();
                return Ok::<_, Infallible>(res);
            }
            Ok(res.map(|b| TrackedBody::wrap(b, phase)))
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    // The listener keeps its own header and idle timeouts (see `conn`).
    http.keep_alive(true).header_read_timeout(None);
    let conn = http.serve_connection(TokioIo::new(io), svc).with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(error = %e, "http connection ended with an error");
                }
                return;
            }
            _ = stop.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn the_connection_ceiling_leaves_descriptors_for_the_rest_of_the_process() {
        assert_eq!(connection_ceiling(256), 192);
        assert_eq!(connection_ceiling(1024), 768);
        assert_eq!(connection_ceiling(100), 50);
        assert_eq!(connection_ceiling(1_048_576), 786_432);
        assert_eq!(connection_ceiling(1), 1);
    }

    #[test]
    fn backoff_doubles_to_a_second_and_resets() {
        let mut b = Backoff::new();
        let waits: Vec<_> = (0..9).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_wait().as_millis(), 10);
    }

    #[test]
    fn throttle_logs_once_per_period_with_the_count() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Duration::from_secs(10));
        assert_eq!(t.hit(t0), Some(1));
        for s in 1..10 {
            assert_eq!(t.hit(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(t.hit(t0 + Duration::from_secs(10)), Some(10));
    }

    /// A listener whose every accept fails with EMFILE, counting calls.
    struct OutOfFiles(Arc<AtomicUsize>);

    impl Accept for OutOfFiles {
        async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
            let n = self.0.fetch_add(1, Ordering::Relaxed);
            // A loop without back-off never lets the virtual clock move: stop it here.
            assert!(n < 10_000, "accept called {n} times: the loop spins");
            Err(io::Error::from_raw_os_error(24))
        }
    }

    /// On a virtual clock: with the process out of descriptors, the loop tries accept
    /// about once a second, not in a tight loop, and still stops on shutdown.
    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off_instead_of_spinning() {
        let calls = Arc::new(AtomicUsize::new(0));
        let metrics = Metrics::register(&Registry::new()).unwrap();
        let settings = Settings {
            timeouts: Timeouts {
                header_read: Duration::from_secs(10),
                idle: Duration::from_secs(60),
            },
            max_connections: 10,
            max_connections_per_ip: 0,
        };
        let t0 = Instant::now();
        serve(
            OutOfFiles(calls.clone()),
            Router::new(),
            settings,
            metrics.clone(),
            tokio::time::sleep(Duration::from_secs(60)),
        )
        .await;
        assert_eq!(t0.elapsed(), Duration::from_secs(60));
        let n = calls.load(Ordering::Relaxed);
        // 10+20+...+640 ms = 1.27 s for the first 7, then one a second: 7 + 58 or 59.
        assert!((64..=67).contains(&n), "{n} accept calls in 60 s");
        assert_eq!(metrics.accept_errors.get() as usize, n);
    }

    /// The real accept loop on a real socket: the server's end of an accepted
    /// connection has TCP_NODELAY (found among this process's descriptors by its peer).
    #[tokio::test]
    async fn accepted_sockets_have_tcp_nodelay() {
        use std::os::fd::BorrowedFd;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let settings = Settings {
            timeouts: Timeouts {
                header_read: Duration::from_secs(10),
                idle: Duration::from_secs(60),
            },
            max_connections: 10,
            max_connections_per_ip: 0,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            tcp,
            app,
            settings,
            Metrics::register(&Registry::new()).unwrap(),
            async {
                let _ = stopped.await;
            },
        ));
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = client.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        // The connection is open (keep-alive), so its server end is one of our fds.
        let me = client.local_addr().unwrap();
        let mut found = None;
        for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
            let Ok(fd) = entry.unwrap().file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            // SAFETY: only queried while the connection, which owns the fd, is open.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let peer = rustix::net::getpeername(fd)
                .ok()
                .flatten()
                .and_then(|a| SocketAddr::try_from(a).ok());
            if peer == Some(me) {
                found = Some(rustix::net::sockopt::tcp_nodelay(fd).unwrap());
            }
        }
        assert_eq!(
            found,
            Some(true),
            "the server's end of the connection: TCP_NODELAY"
        );
        assert!(
            !client.nodelay().unwrap(),
            "the client's end is left as the OS made it"
        );
        let _ = stop.send(());
        server.await.unwrap();
    }

    #[test]
    fn connection_errors_are_not_resource_errors() {
        assert!(is_connection_error(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
        assert!(is_connection_error(&io::Error::from_raw_os_error(71)));
        for emfile_enfile_enobufs_enomem in [24, 23, 105, 12] {
            assert!(!is_connection_error(&io::Error::from_raw_os_error(
                emfile_enfile_enobufs_enomem
            )));
        }
    }
}
