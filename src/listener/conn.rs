//! Timeouts of one HTTP connection, kept by its socket wrapper ([`TimedIo`]) and by the
//! service around the router, which tell each other where the connection is through a
//! shared [`Phase`]:
//!
//! - **head**: from accept, or from the first byte of the next request, until the
//!   request's head is complete. Bounded by `header_read_timeout` from its start, however
//!   the bytes trickle in (slowloris).
//! - **busy**: a request is being served. No deadline from the listener: handlers own
//!   theirs. A response the client does not read for `idle_timeout` (no write progress)
//!   ends the connection.
//! - **idle**: a keep-alive connection between requests. Bounded by `idle_timeout`.
//! - **upgraded**: a WebSocket. The listener leaves it alone (the planes keep its
//!   timeouts); its slot is still held until the socket closes.
//!
//! This is Go's `ReadHeaderTimeout` / `IdleTimeout` split; hyper's own
//! `header_read_timeout` starts as soon as a connection waits for a request, which would
//! make the idle timeout the header timeout.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::{Body, Bytes};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Where a connection is; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Head = 0,
    Busy = 1,
    Idle = 2,
    Upgraded = 3,
}

impl Kind {
    fn from_bits(b: u64) -> Kind {
        match b & 3 {
            0 => Kind::Head,
            1 => Kind::Busy,
            2 => Kind::Idle,
            _ => Kind::Upgraded,
        }
    }
}

/// The phase of one connection and when it began, in one atomic word: the kind in the
/// low 2 bits, milliseconds since the connection was accepted above them.
#[derive(Debug)]
pub struct Phase {
    accepted: Instant,
    word: AtomicU64,
    /// The connection task, as last seen reading while busy: woken when the response
    /// is finished, so that a read hyper began while busy picks up the idle deadline.
    reader: AtomicWaker,
}

impl Phase {
    /// A connection accepted now: waiting for its first request head.
    pub fn new() -> Arc<Phase> {
        Arc::new(Phase {
            accepted: Instant::now(),
            word: AtomicU64::new(Kind::Head as u64),
            reader: AtomicWaker::new(),
        })
    }

    fn pack(&self, kind: Kind) -> u64 {
        let ms = Instant::now()
            .saturating_duration_since(self.accepted)
            .as_millis() as u64;
        (ms << 2) | kind as u64
    }

    pub fn get(&self) -> (Kind, Instant) {
        let w = self.word.load(Ordering::Acquire);
        (
            Kind::from_bits(w),
            self.accepted + Duration::from_millis(w >> 2),
        )
    }

    pub fn kind(&self) -> Kind {
        Kind::from_bits(self.word.load(Ordering::Acquire))
    }

    /// `from` -> `to`, only if the connection is in `from`.
    fn transition(&self, from: Kind, to: Kind) {
        let cur = self.word.load(Ordering::Acquire);
        if Kind::from_bits(cur) == from {
            let _ =
                self.word
                    .compare_exchange(cur, self.pack(to), Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// The router was handed a request: its head is complete.
    pub fn request_started(&self) {
        self.transition(Kind::Head, Kind::Busy);
        // A pipelined request hyper had already buffered arrives without new bytes.
        self.transition(Kind::Idle, Kind::Busy);
    }

    /// The response's body was written out (or dropped).
    pub fn response_finished(&self) {
        self.transition(Kind::Busy, Kind::Idle);
        self.reader.wake();
    }

    /// A `101 Switching Protocols` response: the socket now belongs to a WebSocket.
    pub fn upgraded(&self) {
        self.word
            .store(self.pack(Kind::Upgraded), Ordering::Release);
    }

    /// A byte of a new request arrived on an idle connection.
    fn bytes_arrived(&self) {
        self.transition(Kind::Idle, Kind::Head);
    }
}

/// The listener's two timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

/// What timed out, for the metric's `phase` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimedOut {
    Header,
    Idle,
    Write,
}

/// Called once when a connection is closed by a timeout.
pub type OnTimeout = Arc<dyn Fn(TimedOut) + Send + Sync>;

/// A socket that enforces [`Timeouts`] according to its connection's [`Phase`], and
/// holds `G` (the connection's slot) until it is dropped, upgraded or not.
pub struct TimedIo<S, G> {
    inner: S,
    phase: Arc<Phase>,
    timeouts: Timeouts,
    read_sleep: Pin<Box<Sleep>>,
    write_sleep: Pin<Box<Sleep>>,
    write_stalled: bool,
    timed_out: Option<TimedOut>,
    on_timeout: OnTimeout,
    _guard: G,
}

impl<S, G> TimedIo<S, G> {
    pub fn new(
        inner: S,
        phase: Arc<Phase>,
        timeouts: Timeouts,
        on_timeout: OnTimeout,
        guard: G,
    ) -> Self {
        let far = Instant::now() + Duration::from_secs(86400 * 365);
        TimedIo {
            inner,
            phase,
            timeouts,
            read_sleep: Box::pin(tokio::time::sleep_until(far)),
            write_sleep: Box::pin(tokio::time::sleep_until(far)),
            write_stalled: false,
            timed_out: None,
            on_timeout,
            _guard: guard,
        }
    }

    pub fn phase(&self) -> &Arc<Phase> {
        &self.phase
    }

    fn fail(&mut self, what: TimedOut) -> io::Error {
        if self.timed_out.is_none() {
            self.timed_out = Some(what);
            (self.on_timeout)(what);
        }
        let msg = match what {
            TimedOut::Header => "request head not received within http.header_read_timeout",
            TimedOut::Idle => "keep-alive connection idle for http.idle_timeout",
            TimedOut::Write => "client read nothing for http.idle_timeout",
        };
        io::Error::new(io::ErrorKind::TimedOut, msg)
    }

    /// Write-side bookkeeping: a write that cannot progress for `idle` ends the
    /// connection, unless it is a WebSocket.
    fn on_write<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => {
                if self.phase.kind() == Kind::Upgraded {
                    return Poll::Pending;
                }
                if !self.write_stalled {
                    self.write_stalled = true;
                    let d = Instant::now() + self.timeouts.idle;
                    self.write_sleep.as_mut().reset(d);
                }
                if self.write_sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(self.fail(TimedOut::Write)));
                }
                Poll::Pending
            }
            ready => {
                self.write_stalled = false;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin, G: Unpin> AsyncRead for TimedIo<S, G> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(what) = this.timed_out {
            return Poll::Ready(Err(this.fail(what)));
        }
        let (kind, since) = this.phase.get();
        let (limit, what) = match kind {
            Kind::Head => (this.timeouts.header_read, TimedOut::Header),
            Kind::Idle => (this.timeouts.idle, TimedOut::Idle),
            Kind::Busy => {
                this.phase.reader.register(cx.waker());
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            Kind::Upgraded => return Pin::new(&mut this.inner).poll_read(cx, buf),
        };
        let deadline = since + limit;
        if this.read_sleep.deadline() != deadline {
            this.read_sleep.as_mut().reset(deadline);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    match kind {
                        Kind::Idle => this.phase.bytes_arrived(),
                        // A head still incomplete past its deadline, however fast it comes.
                        _ if Instant::now() >= deadline => {
                            return Poll::Ready(Err(this.fail(what)));
                        }
                        _ => {}
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                ready!(this.read_sleep.as_mut().poll(cx));
                Poll::Ready(Err(this.fail(what)))
            }
        }
    }
}

impl<S: AsyncWrite + Unpin, G: Unpin> AsyncWrite for TimedIo<S, G> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.on_write(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.on_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.on_write(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A response body that tells the connection's [`Phase`] when it is finished: hyper
/// drops it once written out (or when the connection fails).
pub struct TrackedBody {
    inner: Body,
    phase: Arc<Phase>,
}

impl TrackedBody {
    pub fn wrap(inner: Body, phase: Arc<Phase>) -> Body {
        Body::new(TrackedBody { inner, phase })
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.phase.response_finished();
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    const T: Timeouts = Timeouts {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    fn io(
        phase: Arc<Phase>,
        buf: usize,
    ) -> (
        TimedIo<DuplexStream, ()>,
        DuplexStream,
        Arc<Mutex<Vec<TimedOut>>>,
    ) {
        let (a, b) = tokio::io::duplex(buf);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let on: OnTimeout = Arc::new(move |w| s.lock().unwrap().push(w));
        (TimedIo::new(a, phase, T, on, ()), b, seen)
    }

    /// On a virtual clock: a head whose bytes trickle in is cut off `header_read` after
    /// the connection began, not after its last byte.
    #[tokio::test(start_paused = true)]
    async fn a_trickling_head_is_cut_at_header_read_timeout() {
        let phase = Phase::new();
        let (mut server, mut client, seen) = io(phase.clone(), 1024);
        let t0 = Instant::now();
        let trickle = tokio::spawn(async move {
            for b in b"GET / HTTP/1.1\r\nHost: x\r\n".iter().cycle() {
                if client.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let mut buf = [0u8; 64];
        let err = loop {
            match server.read(&mut buf).await {
                Ok(n) => assert!(n > 0),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), T.header_read);
        assert_eq!(*seen.lock().unwrap(), vec![TimedOut::Header]);
        drop(server);
        trickle.await.unwrap();
    }

    /// Idle between requests: `idle` from the end of the response; then the next
    /// request's first byte starts a fresh `header_read` window.
    #[tokio::test(start_paused = true)]
    async fn idle_then_head_deadlines_follow_the_phase() {
        let phase = Phase::new();
        let (mut server, mut client, seen) = io(phase.clone(), 1024);
        phase.request_started();
        tokio::time::sleep(Duration::from_secs(100)).await; // a slow handler: no deadline
        phase.response_finished();
        let idle_from = Instant::now();
        // 59 s idle, then a byte: the connection survives and is reading a head.
        tokio::time::sleep(Duration::from_secs(59)).await;
        client.write_all(b"G").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(server.read(&mut buf).await.unwrap(), 1);
        assert_eq!(phase.kind(), Kind::Head);
        let head_from = Instant::now();
        assert_eq!(head_from - idle_from, Duration::from_secs(59));
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(head_from.elapsed(), T.header_read);
        assert_eq!(*seen.lock().unwrap(), vec![TimedOut::Header]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
        let phase = Phase::new();
        let (mut server, _client, seen) = io(phase.clone(), 1024);
        phase.request_started();
        phase.response_finished();
        let t0 = Instant::now();
        let err = server.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), T.idle);
        assert_eq!(*seen.lock().unwrap(), vec![TimedOut::Idle]);
    }

    /// hyper reads (for the next request, or EOF) while a response is still going out:
    /// that read must still end at the idle deadline once the response is finished.
    #[tokio::test(start_paused = true)]
    async fn a_read_begun_while_busy_gets_the_idle_deadline() {
        let phase = Phase::new();
        let (mut server, _client, seen) = io(phase.clone(), 1024);
        phase.request_started();
        let p = phase.clone();
        let finish = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            p.response_finished();
        });
        let t0 = Instant::now();
        let read =
            tokio::time::timeout(Duration::from_secs(3600), server.read(&mut [0u8; 8])).await;
        let err = read
            .expect("the read outlived the idle deadline")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), Duration::from_secs(5) + T.idle);
        assert_eq!(*seen.lock().unwrap(), vec![TimedOut::Idle]);
        finish.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_upgraded_connection_has_no_listener_deadline() {
        let phase = Phase::new();
        let (mut server, mut client, seen) = io(phase.clone(), 16);
        phase.request_started();
        phase.upgraded();
        phase.response_finished(); // the 101's empty body: stays upgraded
        assert_eq!(phase.kind(), Kind::Upgraded);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let n = server.read(&mut buf).await.unwrap();
            (n, server)
        });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        client.write_all(b"ping").await.unwrap();
        let (n, mut server) = reader.await.unwrap();
        assert_eq!(n, 4);
        // A reader that stopped reading does not fail the writer either.
        let big = vec![0u8; 64];
        let w = tokio::spawn(async move { server.write_all(&big).await });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!w.is_finished());
        assert!(seen.lock().unwrap().is_empty());
        w.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_a_response_is_cut_after_idle_timeout() {
        let phase = Phase::new();
        let (mut server, _client, seen) = io(phase.clone(), 16);
        phase.request_started();
        let t0 = Instant::now();
        let err = server.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), T.idle);
        assert_eq!(*seen.lock().unwrap(), vec![TimedOut::Write]);
    }

    #[test]
    fn tracked_body_marks_the_response_finished_when_dropped() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let phase = Phase::new();
            phase.request_started();
            let body = TrackedBody::wrap(Body::from("x"), phase.clone());
            assert_eq!(phase.kind(), Kind::Busy);
            drop(body);
            assert_eq!(phase.kind(), Kind::Idle);
        });
    }
}
