//! The media worker: a thread of its own that owns the UDP socket, the ICE-TCP listener
//! and the [`Engine`], and feeds it datagrams, commands and time. Nothing else runs on
//! it, so HTTP or chat load cannot delay packets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use str0m::net::Protocol;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};

use crate::Config;
use crate::engine::{Command, Engine, EngineConfig, Io};
use crate::ice_tcp::{ACCEPT_PAUSE, Admission, TcpEvent, TcpLimits};
use crate::metrics::Metrics;

/// Largest datagram accepted.
const MAX_DATAGRAM: usize = 2048;
/// Datagrams handled per socket wake-up before timers and commands get a turn.
const BATCH: usize = 64;

pub struct Worker {
    pub commands: mpsc::UnboundedSender<Command>,
    pub udp_addr: SocketAddr,
    pub tcp_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    pub fn spawn(cfg: &Config, metrics: Metrics) -> anyhow::Result<Worker> {
        let udp = std::net::UdpSocket::bind(cfg.udp_listen)
            .with_context(|| format!("binding media UDP {} (is another maxd running?)", cfg.udp_listen))?;
        udp.set_nonblocking(true)?;
        let (rcv, snd) = (grow_buffer(&udp, libc::SO_RCVBUF), grow_buffer(&udp, libc::SO_SNDBUF));
        tracing::debug!(receive = rcv, send = snd, "media socket buffers (bytes)");
        let udp_addr = udp.local_addr()?;
        let tcp = match cfg.tcp_listen {
            Some(a) => {
                let l = std::net::TcpListener::bind(a)
                    .with_context(|| format!("binding ICE-TCP {a} (is another maxd running?)"))?;
                l.set_nonblocking(true)?;
                Some(l)
            }
            None => None,
        };
        let tcp_addr = tcp.as_ref().map(|l| l.local_addr()).transpose()?;
        let advertise = |a: SocketAddr| match cfg.public_ip {
            Some(ip) => SocketAddr::new(ip, a.port()),
            None => a,
        };
        let ecfg = EngineConfig {
            udp_candidate: advertise(udp_addr),
            tcp_candidate: tcp_addr.map(advertise),
            empty_room_grace: cfg.empty_room_grace,
            resume_window: cfg.resume_window,
            keyframe_interval: cfg.keyframe_request_interval,
            max_participants: cfg.max_participants_per_room,
        };
        let engine = Engine::new(ecfg, Some(metrics.clone()), Instant::now()).map_err(anyhow::Error::msg)?;
        let limits = TcpLimits {
            max_connections: cfg.tcp_max_connections,
            max_per_ip: cfg.tcp_max_connections_per_ip,
            first_frame: cfg.tcp_first_frame_timeout,
            idle: cfg.tcp_idle_timeout,
        };
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("maxd-media-0".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime");
                rt.block_on(async move {
                    let udp = UdpSocket::from_std(udp).expect("registering the UDP socket");
                    let tcp = tcp.map(|l| TcpListener::from_std(l).expect("registering the TCP listener"));
                    run(engine, udp, tcp, limits, cmd_rx, stop_rx, metrics).await;
                });
            })
            .context("starting the media worker thread")?;
        tracing::info!(udp = %udp_addr, tcp = ?tcp_addr, "media listening");
        Ok(Worker { commands: cmd_tx, udp_addr, tcp_addr, shutdown: stop_tx, thread: Some(thread) })
    }

    pub fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

struct WorkerIo {
    udp: UdpOut,
    tcp: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
}

impl Io for WorkerIo {
    fn transmit(&mut self, proto: Protocol, _source: SocketAddr, destination: SocketAddr, data: &[u8]) -> bool {
        match proto {
            Protocol::Udp => {
                self.udp.push(data, destination);
                true
            }
            Protocol::Tcp => match self.tcp.get(&destination) {
                Some(tx) => tx.try_send(data.to_vec()).is_ok(),
                None => false,
            },
            _ => false,
        }
    }
}

fn thread_cpu_micros() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; the clock id is valid on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

async fn run(
    mut engine: Engine,
    udp: UdpSocket,
    tcp: Option<TcpListener>,
    limits: TcpLimits,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut stop: watch::Receiver<bool>,
    metrics: Metrics,
) {
    let local = udp.local_addr().expect("bound socket");
    let tcp_local = tcp.as_ref().and_then(|l| l.local_addr().ok());
    let mut io = WorkerIo { udp: UdpOut::new(udp.as_raw_fd()), tcp: HashMap::new() };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let (tcp_tx, mut tcp_rx) = mpsc::channel::<TcpEvent>(4096);
    let sleep = tokio::time::sleep_until(engine.poll_timeout().into());
    tokio::pin!(sleep);
    let cpu = metrics.worker_cpu_seconds.with_label_values(&["0"]);
    let mut cpu_last = thread_cpu_micros();
    let mut cpu_next = Instant::now() + Duration::from_secs(1);
    let mut admission = Admission::default();
    // Accepting pauses until then after an accept error (out of descriptors).
    let mut accept_paused: Option<tokio::time::Instant> = None;
    loop {
        sleep.as_mut().reset(engine.poll_timeout().into());
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = udp.readable() => {
                if r.is_err() { continue; }
                for _ in 0..BATCH {
                    match udp.try_recv_from(&mut buf) {
                        Ok((n, src)) => {
                            let at = Instant::now();
                            let forwarded = engine.handle_datagram(at, Protocol::Udp, src, local, &buf[..n], &mut io);
                            // One packet's copies leave together, before the next is read.
                            io.udp.flush();
                            if forwarded {
                                engine.record_latency(at);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            // ICMP errors (port unreachable) surface here on Linux; harmless.
                            tracing::trace!(error = %common::pii::scrub(&e.to_string()), "udp receive error");
                            break;
                        }
                    }
                }
                // Media first, but not media only: while the socket stays readable the
                // branches below would never be chosen, so joins, leaves and the
                // engine's timers (resume windows, room grace, ICE) get their turn after
                // every batch.
                let now = Instant::now();
                if engine.poll_timeout() <= now {
                    engine.handle_timeout(now, &mut io);
                }
                for _ in 0..BATCH {
                    match commands.try_recv() {
                        Ok(cmd) => engine.handle_command(Instant::now(), cmd, &mut io),
                        Err(_) => break,
                    }
                }
                for _ in 0..BATCH {
                    match tcp_rx.try_recv() {
                        Ok(ev) => on_tcp(ev, &mut engine, &mut io, tcp_local, &mut admission, &metrics),
                        Err(_) => break,
                    }
                }
            }
            Some(cmd) = commands.recv() => engine.handle_command(Instant::now(), cmd, &mut io),
            Some(ev) = tcp_rx.recv() => on_tcp(ev, &mut engine, &mut io, tcp_local, &mut admission, &metrics),
            acc = async {
                if let Some(t) = accept_paused {
                    tokio::time::sleep_until(t).await;
                }
                match &tcp { Some(l) => l.accept().await, None => std::future::pending().await }
            } => {
                accept_paused = None;
                match acc {
                    Ok((stream, peer)) => match admission.admit(&limits, peer, Instant::now()) {
                        Ok(()) => {
                            metrics.tcp_connections.set(admission.open() as i64);
                            tokio::spawn(crate::ice_tcp::serve(stream, peer, limits, tcp_tx.clone()));
                        }
                        Err(r) => {
                            metrics.tcp_refused(r);
                            drop(stream);
                        }
                    },
                    Err(e) => {
                        // EMFILE and friends: retrying at once would spin this thread.
                        tracing::warn!(error = %e, "ICE-TCP accept failed; pausing accepts for {ACCEPT_PAUSE:?}");
                        accept_paused = Some(tokio::time::Instant::now() + ACCEPT_PAUSE);
                    }
                }
            }
            _ = &mut sleep => engine.handle_timeout(Instant::now(), &mut io),
        }
        io.udp.flush();
        if io.udp.failed > 0 {
            engine.counters.drop_send_failed += std::mem::take(&mut io.udp.failed);
        }
        let now = Instant::now();
        if now >= cpu_next {
            cpu_next = now + Duration::from_secs(1);
            let c = thread_cpu_micros();
            cpu.inc_by(c.saturating_sub(cpu_last));
            cpu_last = c;
        }
    }
    tracing::info!("media worker stopped");
}

/// An event of an ICE-TCP connection task.
fn on_tcp(
    ev: TcpEvent,
    engine: &mut Engine,
    io: &mut WorkerIo,
    local: Option<SocketAddr>,
    admission: &mut Admission,
    metrics: &Metrics,
) {
    match ev {
        TcpEvent::Opened(a, tx) => {
            io.tcp.insert(a, tx);
        }
        TcpEvent::Data(a, d) => {
            if let Some(l) = local {
                let at = Instant::now();
                if engine.handle_datagram(at, Protocol::Tcp, a, l, &d, io) {
                    io.udp.flush();
                    engine.record_latency(at);
                }
            }
        }
        TcpEvent::Closed(a) => {
            io.tcp.remove(&a);
            admission.closed(a);
            metrics.tcp_connections.set(admission.open() as i64);
        }
    }
}

/// Socket buffer size asked for: the 208 KiB default overflows (and drops datagrams)
/// when the media thread is busy for a few milliseconds under load.
const SOCKET_BUFFER: libc::c_int = 8 * 1024 * 1024;

/// Grows a socket buffer (`SO_RCVBUF` or `SO_SNDBUF`) to [`SOCKET_BUFFER`]: past the
/// system limit (`net.core.rmem_max`) when privileged, else up to it. Returns the size
/// the kernel reports.
fn grow_buffer(sock: &std::net::UdpSocket, opt: libc::c_int) -> libc::c_int {
    let fd = sock.as_raw_fd();
    let force = if opt == libc::SO_RCVBUF { libc::SO_RCVBUFFORCE } else { libc::SO_SNDBUFFORCE };
    let size = SOCKET_BUFFER;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket; the option value is a c_int we own.
    unsafe {
        let p = (&size as *const libc::c_int).cast();
        if libc::setsockopt(fd, libc::SOL_SOCKET, force, p, len) != 0 {
            libc::setsockopt(fd, libc::SOL_SOCKET, opt, p, len);
        }
    }
    let mut got: libc::c_int = 0;
    let mut got_len = len;
    // SAFETY: as above; `got` and `got_len` are ours.
    unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&mut got as *mut libc::c_int).cast(), &mut got_len) };
    got
}

/// Datagrams queued for the UDP socket and sent with one `sendmmsg` per flush: the
/// copies of one forwarded packet cost one system call instead of one each, and the
/// media thread gives up the CPU at most once for them (on loopback and busy hosts,
/// every `sendto` is a point where the kernel may switch to a woken receiver).
struct UdpOut {
    fd: RawFd,
    /// Payloads back to back.
    data: Vec<u8>,
    /// (offset, length, destination) of each queued datagram.
    items: Vec<(usize, usize, SocketAddr)>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Datagrams the socket refused since the engine last took the count.
    failed: u64,
    /// Queued datagrams that trigger a flush on their own.
    limit: usize,
}

/// Queued datagrams that trigger a flush on their own (bounds memory and latency).
const MAX_QUEUED: usize = 512;

impl UdpOut {
    fn new(fd: RawFd) -> UdpOut {
        UdpOut::with_limit(fd, MAX_QUEUED)
    }

    fn with_limit(fd: RawFd, limit: usize) -> UdpOut {
        UdpOut {
            limit,
            fd,
            data: Vec::with_capacity(MAX_QUEUED * 1200),
            items: Vec::with_capacity(MAX_QUEUED),
            addrs: Vec::with_capacity(MAX_QUEUED),
            iovs: Vec::with_capacity(MAX_QUEUED),
            hdrs: Vec::with_capacity(MAX_QUEUED),
            failed: 0,
        }
    }

    fn push(&mut self, data: &[u8], destination: SocketAddr) {
        if self.items.len() >= self.limit {
            self.flush();
        }
        self.items.push((self.data.len(), data.len(), destination));
        self.data.extend_from_slice(data);
    }

    /// Sends everything queued. A full socket buffer drops the rest (as `sendto` would
    /// drop each); a datagram the kernel refuses (e.g. unreachable) is skipped alone.
    fn flush(&mut self) {
        let n = self.items.len();
        if n == 0 {
            return;
        }
        self.addrs.clear();
        self.iovs.clear();
        self.hdrs.clear();
        for &(off, len, dst) in &self.items {
            self.addrs.push(sockaddr(dst));
            self.iovs.push(libc::iovec {
                // SAFETY: `off..off + len` lies within `self.data`, which is not touched
                // until the send below has returned.
                iov_base: unsafe { self.data.as_mut_ptr().add(off) }.cast(),
                iov_len: len,
            });
        }
        for i in 0..n {
            // SAFETY: an all-zero msghdr is valid (no control data, no flags).
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = sockaddr_len(self.items[i].2);
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        let mut start = 0;
        while start < n {
            // SAFETY: `hdrs[start..n]` are initialised and point into `addrs`, `iovs`
            // and `data`, all alive and unmoved for the duration of the call.
            let sent = unsafe {
                libc::sendmmsg(self.fd, self.hdrs[start..].as_mut_ptr(), (n - start) as libc::c_uint, libc::MSG_DONTWAIT)
            };
            if sent > 0 {
                start += sent as usize;
                continue;
            }
            let err = std::io::Error::last_os_error();
            match err.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => {
                    self.failed += (n - start) as u64;
                    break;
                }
                _ => {
                    tracing::trace!(error = %common::pii::scrub(&err.to_string()), "udp send refused");
                    self.failed += 1;
                    start += 1;
                }
            }
        }
        self.items.clear();
        self.data.clear();
    }
}

fn sockaddr(a: SocketAddr) -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut s: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            unsafe { std::ptr::write((&mut s as *mut libc::sockaddr_storage).cast(), sin) };
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut s as *mut libc::sockaddr_storage).cast(), sin6) };
        }
    }
    s
}

fn sockaddr_len(a: SocketAddr) -> libc::socklen_t {
    (match a {
        SocketAddr::V4(_) => std::mem::size_of::<libc::sockaddr_in>(),
        SocketAddr::V6(_) => std::mem::size_of::<libc::sockaddr_in6>(),
    }) as libc::socklen_t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Queued datagrams reach their destinations intact and in order, across flushes
    /// and with an IPv6 socket too.
    #[test]
    fn media_socket_buffers_grow_past_the_default() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // SAFETY: getuid has no preconditions.
        let root = unsafe { libc::getuid() } == 0;
        // The kernel reports twice what it keeps; the default is 212,992. Privileged, the
        // buffers get the full 8 MiB; otherwise up to the system limit.
        for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
            let got = grow_buffer(&sock, opt);
            if root {
                assert_eq!(got, 2 * SOCKET_BUFFER, "option {opt}");
            } else {
                assert!(got >= 212_992, "option {opt}: {got}");
            }
        }
    }

    #[test]
    fn sendmmsg_batches_arrive() {
        for (bind, peer) in [("127.0.0.1:0", "127.0.0.1:0"), ("[::1]:0", "[::1]:0")] {
            let Ok(tx) = std::net::UdpSocket::bind(bind) else { continue }; // no IPv6 here
            let rx = std::net::UdpSocket::bind(peer).unwrap();
            rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let dst = rx.local_addr().unwrap();
            // A small limit so the receiver's default buffer holds every datagram.
            let mut out = UdpOut::with_limit(tx.as_raw_fd(), 64);
            for i in 0..150 {
                out.push(&[i as u8; 100][..50 + i % 50], dst);
            }
            out.flush();
            assert_eq!(out.failed, 0);
            let mut buf = [0u8; 200];
            for i in 0..150 {
                let (n, from) = rx.recv_from(&mut buf).unwrap();
                assert_eq!(from, tx.local_addr().unwrap());
                assert_eq!(&buf[..n], &[i as u8; 100][..50 + i % 50], "datagram {i}");
            }
        }
    }
}
