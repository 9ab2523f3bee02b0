//! The media workers and the receive path in front of them.
//!
//! - `sfu.workers` worker threads (`maxd-media-0`, `maxd-media-1`, ...), each with its
//!   own current-thread runtime and [`Engine`] owning whole rooms, fed datagrams,
//!   commands and time. Nothing else runs on them, so HTTP or chat load cannot delay
//!   packets. Each sends on the shared UDP socket itself (`sendmmsg`).
//! - One reader thread (`maxd-media-rx`) receives every datagram of the one UDP port
//!   with `recvmmsg` and hands each, in batches, to the worker that owns its peer
//!   (see [`crate::router`]).
//! - With ICE-TCP, an acceptor thread (`maxd-media-tcp`) owns the listener and the
//!   connections; a connection's frames go to the worker its first STUN frame names.
//!
//! Signalling reaches the worker of a room through [`Workers`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use str0m::net::Protocol;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::Config;
use crate::engine::{Command, Engine, EngineConfig, Io};
use crate::ice_tcp::{ACCEPT_PAUSE, Admission, TcpEvent, TcpLimits};
use crate::metrics::Metrics;
use crate::placement::{Placement, Workers};
use crate::router::{Batch, RouteMsg, Router, Ufrags, WorkerIndex};

/// Largest datagram accepted.
const MAX_DATAGRAM: usize = 2048;
/// Datagrams read with one `recvmmsg`, and handled per worker wake-up before timers
/// and commands get a turn.
const BATCH: usize = 64;
/// Datagrams queued for one worker; the reader drops (and counts) datagrams for a
/// worker this far behind rather than hold up the others. About what the 8 MiB socket
/// buffer holds of audio, so a worker busy for some milliseconds loses nothing.
const WORKER_QUEUE: usize = 16_384;
/// How often the reader looks at the stop flag while the port is silent.
const READ_TIMEOUT: Duration = Duration::from_millis(100);

/// The running media plane: its threads and the handle that reaches its workers.
pub struct Media {
    pub workers: Workers,
    pub udp_addr: SocketAddr,
    pub tcp_addr: Option<SocketAddr>,
    pub placement: Arc<Placement>,
    stop: Arc<AtomicBool>,
    shutdown: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Media {
    pub fn spawn(cfg: &Config, metrics: Metrics) -> anyhow::Result<Media> {
        let udp = std::net::UdpSocket::bind(cfg.udp_listen).with_context(|| {
            format!(
                "binding media UDP {} (is another maxd running?)",
                cfg.udp_listen
            )
        })?;
        // The reader blocks in `recvmmsg` (waking to look at the stop flag); the workers
        // send with MSG_DONTWAIT.
        udp.set_read_timeout(Some(READ_TIMEOUT))?;
        let (rcv, snd) = (
            grow_buffer(&udp, libc::SO_RCVBUF),
            grow_buffer(&udp, libc::SO_SNDBUF),
        );
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
            seed: None,
        };
        let limits = TcpLimits {
            max_connections: cfg.tcp_max_connections,
            max_per_ip: cfg.tcp_max_connections_per_ip,
            first_frame: cfg.tcp_first_frame_timeout,
            idle: cfg.tcp_idle_timeout,
        };
        let n = cfg.worker_count();
        let sock = Arc::new(udp);
        let ufrags = Ufrags::new();
        let placement = Arc::new(Placement::new(n));
        let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded::<RouteMsg>();
        let (pool_tx, pool_rx) = crossbeam_channel::unbounded::<Batch>();
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut senders = Vec::new();
        let mut batch_txs = Vec::new();
        let mut tcp_txs = Vec::new();
        let media = |threads: Vec<std::thread::JoinHandle<()>>, senders: Vec<_>| Media {
            workers: Workers::new(senders, placement.clone()),
            udp_addr,
            tcp_addr,
            placement: placement.clone(),
            stop: stop.clone(),
            shutdown: stop_tx.clone(),
            threads,
        };
        for index in 0..n {
            let engine = Engine::new(ecfg.clone(), Some(metrics.clone()), Instant::now())
                .map_err(anyhow::Error::msg)?;
            let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
            // Every batch holds at least one datagram: bounded by `queued` first.
            let (batch_tx, batch_rx) = mpsc::channel::<Batch>(WORKER_QUEUE);
            let queued = Arc::new(AtomicUsize::new(0));
            let (tcp_tx, tcp_rx) = mpsc::channel::<TcpEvent>(4096);
            let io = WorkerIo {
                index,
                udp: UdpOut::new(sock.as_raw_fd()),
                tcp: HashMap::new(),
                ctl: ctl_tx.clone(),
                ufrags: ufrags.clone(),
                placement: placement.clone(),
            };
            let w = WorkerLoop {
                index,
                engine,
                io,
                local: udp_addr,
                tcp_local: tcp_addr,
                batches: batch_rx,
                queued: queued.clone(),
                pool: pool_tx.clone(),
                commands: cmd_rx,
                tcp: tcp_rx,
                stop: stop_rx.clone(),
                metrics: metrics.clone(),
                placement: placement.clone(),
                _sock: sock.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("maxd-media-{index}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a current-thread runtime");
                    rt.block_on(w.run());
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // Stop the workers already started before reporting.
                    media(threads, senders).stop();
                    return Err(e).context("starting a media worker thread");
                }
            }
            senders.push(cmd_tx);
            batch_txs.push((batch_tx, queued));
            tcp_txs.push(tcp_tx);
        }
        let router = Router::new(n, ufrags.clone());
        let reader = Reader {
            sock: sock.clone(),
            router,
            ctl: ctl_rx,
            outs: batch_txs,
            pool: pool_rx,
            stop: stop.clone(),
        };
        let m = metrics.clone();
        match std::thread::Builder::new()
            .name("maxd-media-rx".into())
            .spawn(move || reader.run(&m))
        {
            Ok(t) => threads.push(t),
            Err(e) => {
                media(threads, senders).stop();
                return Err(e).context("starting the media receive thread");
            }
        }
        if let Some(l) = tcp {
            let txs = Arc::new(tcp_txs);
            let stop_rx = stop_rx.clone();
            let m = metrics.clone();
            let spawned = std::thread::Builder::new()
                .name("maxd-media-tcp".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a current-thread runtime");
                    rt.block_on(async move {
                        let l = TcpListener::from_std(l).expect("registering the TCP listener");
                        accept_loop(l, limits, ufrags, txs, stop_rx, m).await;
                    });
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    media(threads, senders).stop();
                    return Err(e).context("starting the ICE-TCP thread");
                }
            }
        }
        match tcp_addr {
            Some(tcp) => tracing::info!(udp = %udp_addr, tcp = %tcp, workers = n, "media listening"),
            None => tracing::info!(udp = %udp_addr, tcp = "off", workers = n, "media listening"),
        }
        Ok(media(threads, senders))
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Media {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `d` is a STUN Binding success response (RFC 5389: 0x0101, magic cookie).
fn is_binding_success(d: &[u8]) -> bool {
    d.len() >= 20 && d[0] == 0x01 && d[1] == 0x01 && d[4..8] == [0x21, 0x12, 0xa4, 0x42]
}

struct WorkerIo {
    index: WorkerIndex,
    udp: UdpOut,
    tcp: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    ctl: crossbeam_channel::Sender<RouteMsg>,
    ufrags: Arc<Ufrags>,
    placement: Arc<Placement>,
}

impl Io for WorkerIo {
    fn transmit(
        &mut self,
        proto: Protocol,
        _source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) -> bool {
        match proto {
            Protocol::Udp => {
                // str0m answers only binding requests with our password's integrity: the
                // address is authenticated, and its datagrams are ours from now on. The
                // reader learns it before the client, which sends media only after this
                // answer, can send any.
                if is_binding_success(data) {
                    let _ = self.ctl.send(RouteMsg::Learned(destination, self.index));
                }
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

    fn ufrag_added(&mut self, ufrag: &str) {
        self.ufrags.add(ufrag, self.index);
    }

    fn ufrag_removed(&mut self, ufrag: &str) {
        self.ufrags.remove(ufrag, self.index);
    }

    fn addr_forgotten(&mut self, addr: SocketAddr) {
        let _ = self.ctl.send(RouteMsg::Forgotten(addr, self.index));
    }

    fn may_close_room(&mut self, room: &str) -> bool {
        self.placement.may_close(room, self.index)
    }
}

fn thread_cpu_micros() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; the clock id is valid on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// One media worker: its engine and everything that feeds it.
struct WorkerLoop {
    index: WorkerIndex,
    engine: Engine,
    io: WorkerIo,
    local: SocketAddr,
    tcp_local: Option<SocketAddr>,
    batches: mpsc::Receiver<Batch>,
    /// Datagrams in `batches`, shared with the reader.
    queued: Arc<AtomicUsize>,
    pool: crossbeam_channel::Sender<Batch>,
    commands: mpsc::UnboundedReceiver<Command>,
    tcp: mpsc::Receiver<TcpEvent>,
    stop: watch::Receiver<bool>,
    metrics: Metrics,
    placement: Arc<Placement>,
    /// Keeps the socket the sends go to open while this worker runs.
    _sock: Arc<std::net::UdpSocket>,
}

/// What woke a worker.
enum Wake {
    Stop,
    Batch(Batch),
    Command(Command),
    Tcp(TcpEvent),
    Timer,
}

impl WorkerLoop {
    async fn run(mut self) {
        let label = self.index.to_string();
        let m = &self.metrics;
        let cpu = m.worker_cpu_seconds.with_label_values(&[&label]);
        let busy_c = m.worker_busy_seconds.with_label_values(&[&label]);
        let packets_c = m.worker_packets.with_label_values(&[&label]);
        let rooms_g = m.worker_rooms.with_label_values(&[&label]);
        let participants_g = m.worker_participants.with_label_values(&[&label]);
        let (mut busy, mut packets) = (Duration::ZERO, 0u64);
        let mut cpu_last = thread_cpu_micros();
        let mut second = Instant::now() + Duration::from_secs(1);
        let sleep = tokio::time::sleep_until(self.engine.poll_timeout().into());
        tokio::pin!(sleep);
        loop {
            sleep.as_mut().reset(self.engine.poll_timeout().into());
            let wake = tokio::select! {
                biased;
                _ = self.stop.changed() => Wake::Stop,
                Some(b) = self.batches.recv() => Wake::Batch(b),
                Some(c) = self.commands.recv() => Wake::Command(c),
                Some(e) = self.tcp.recv() => Wake::Tcp(e),
                _ = &mut sleep => Wake::Timer,
            };
            let woke = Instant::now();
            match wake {
                Wake::Stop => break,
                Wake::Batch(mut b) => {
                    self.queued.fetch_sub(b.len(), Ordering::Relaxed);
                    packets += b.len() as u64;
                    for i in 0..b.len() {
                        let (src, d) = b.get(i);
                        let forwarded = self.engine.handle_datagram(
                            Instant::now(),
                            Protocol::Udp,
                            src,
                            self.local,
                            d,
                            &mut self.io,
                        );
                        // One packet's copies leave together, before the next is handled.
                        self.io.udp.flush();
                        if forwarded {
                            // From when the reader took it off the socket.
                            self.engine.record_latency(b.at);
                        }
                    }
                    b.clear();
                    let _ = self.pool.send(b);
                    // Media first, but not media only: while batches keep coming the
                    // branches below would never be chosen, so joins, leaves and the
                    // engine's timers (resume windows, room grace, ICE) get their turn
                    // after every batch.
                    let now = Instant::now();
                    if self.engine.poll_timeout() <= now {
                        self.engine.handle_timeout(now, &mut self.io);
                    }
                    for _ in 0..BATCH {
                        match self.commands.try_recv() {
                            Ok(cmd) => self.command(cmd),
                            Err(_) => break,
                        }
                    }
                    for _ in 0..BATCH {
                        match self.tcp.try_recv() {
                            Ok(ev) => packets += self.on_tcp(ev),
                            Err(_) => break,
                        }
                    }
                }
                Wake::Command(cmd) => self.command(cmd),
                Wake::Tcp(ev) => packets += self.on_tcp(ev),
                Wake::Timer => self.engine.handle_timeout(Instant::now(), &mut self.io),
            }
            self.io.udp.flush();
            if self.io.udp.failed > 0 {
                self.engine.counters.drop_send_failed += std::mem::take(&mut self.io.udp.failed);
            }
            let now = Instant::now();
            busy += now.saturating_duration_since(woke);
            if now >= second {
                second = now + Duration::from_secs(1);
                let c = thread_cpu_micros();
                cpu.inc_by(c.saturating_sub(cpu_last) as f64 / 1e6);
                cpu_last = c;
                busy_c.inc_by(std::mem::take(&mut busy).as_secs_f64());
                packets_c.inc_by(std::mem::take(&mut packets));
                let s = self.engine.stats();
                rooms_g.set(s.rooms as i64);
                participants_g.set(s.participants as i64);
                self.placement.set_participants(self.index, s.participants);
            }
        }
        tracing::info!(worker = self.index, "media worker stopped");
    }

    /// A signalling command. One that may make a room tells the placement it arrived.
    fn command(&mut self, cmd: Command) {
        let placing = match &cmd {
            Command::Join { claims, .. } | Command::HttpOffer { claims, .. } => claims.room.clone(),
            _ => None,
        };
        self.engine
            .handle_command(Instant::now(), cmd, &mut self.io);
        if let Some(room) = placing {
            self.placement.handled(&room, self.engine.has_room(&room));
        }
        self.placement
            .set_participants(self.index, self.engine.stats().participants);
    }

    /// An event of an ICE-TCP connection this worker owns; returns the datagrams handled.
    fn on_tcp(&mut self, ev: TcpEvent) -> u64 {
        match ev {
            TcpEvent::Opened(a, tx) => {
                self.io.tcp.insert(a, tx);
                0
            }
            TcpEvent::Data(a, d) => {
                if let Some(l) = self.tcp_local {
                    let at = Instant::now();
                    if self
                        .engine
                        .handle_datagram(at, Protocol::Tcp, a, l, &d, &mut self.io)
                    {
                        self.io.udp.flush();
                        self.engine.record_latency(at);
                    }
                }
                1
            }
            TcpEvent::Closed(a) => {
                self.io.tcp.remove(&a);
                0
            }
        }
    }
}

/// The receive path: reads the UDP port and hands each datagram to its worker.
struct Reader {
    sock: Arc<std::net::UdpSocket>,
    router: Router,
    ctl: crossbeam_channel::Receiver<RouteMsg>,
    /// Each worker's batch channel and the datagrams queued in it.
    outs: Vec<(mpsc::Sender<Batch>, Arc<AtomicUsize>)>,
    pool: crossbeam_channel::Receiver<Batch>,
    stop: Arc<AtomicBool>,
}

impl Reader {
    fn run(mut self, metrics: &Metrics) {
        let fd = self.sock.as_raw_fd();
        let mut rx = RecvMmsg::new(BATCH);
        let mut pending: Vec<Option<Batch>> = (0..self.outs.len()).map(|_| None).collect();
        let mut spare: Vec<Batch> = Vec::new();
        let mut queue_full = 0u64;
        let mut second = Instant::now() + Duration::from_secs(1);
        while !self.stop.load(Ordering::Relaxed) {
            let n = rx.recv(fd);
            // Workers' address changes first: one that answered a client's STUN has
            // sent its change before the answer, so before anything the client sent
            // after it.
            while let Ok(m) = self.ctl.try_recv() {
                self.router.apply(m);
            }
            let at = Instant::now();
            for i in 0..n {
                let Some((src, d)) = rx.get(i) else { continue };
                if let Some(w) = self.router.route(src, d) {
                    let b = pending[w].get_or_insert_with(|| {
                        spare
                            .pop()
                            .or_else(|| self.pool.try_recv().ok())
                            .unwrap_or_else(|| Batch::new(at))
                    });
                    b.push(src, d);
                }
            }
            for (w, slot) in pending.iter_mut().enumerate() {
                let Some(mut b) = slot.take() else { continue };
                b.at = at;
                let (tx, queued) = &self.outs[w];
                let n = b.len();
                if queued.load(Ordering::Relaxed) + n > WORKER_QUEUE {
                    queue_full += n as u64;
                    b.clear();
                    spare.push(b);
                    continue;
                }
                queued.fetch_add(n, Ordering::Relaxed);
                if let Err(
                    mpsc::error::TrySendError::Full(mut b)
                    | mpsc::error::TrySendError::Closed(mut b),
                ) = tx.try_send(b)
                {
                    queued.fetch_sub(n, Ordering::Relaxed);
                    queue_full += n as u64;
                    b.clear();
                    spare.push(b);
                }
            }
            if at >= second {
                second = at + Duration::from_secs(1);
                metrics.router_drops(
                    std::mem::take(&mut self.router.dropped_unknown),
                    std::mem::take(&mut queue_full),
                );
            }
        }
        tracing::debug!("media receive path stopped");
    }
}

/// Receive buffers for one `recvmmsg`: up to `n` datagrams per call.
struct RecvMmsg {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    got: usize,
}

// SAFETY: the raw pointers inside point into the struct's own heap buffers, which move
// with it; nothing is shared.
unsafe impl Send for RecvMmsg {}

impl RecvMmsg {
    fn new(n: usize) -> RecvMmsg {
        let mut r = RecvMmsg {
            bufs: vec![0u8; n * MAX_DATAGRAM],
            // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
            addrs: vec![unsafe { std::mem::zeroed() }; n],
            iovs: Vec::with_capacity(n),
            hdrs: Vec::with_capacity(n),
            got: 0,
        };
        for i in 0..n {
            r.iovs.push(libc::iovec {
                // SAFETY: `i * MAX_DATAGRAM` lies within `bufs`, which is never resized.
                iov_base: unsafe { r.bufs.as_mut_ptr().add(i * MAX_DATAGRAM) }.cast(),
                iov_len: MAX_DATAGRAM,
            });
        }
        for i in 0..n {
            // SAFETY: an all-zero msghdr is valid (no control data, no flags).
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&mut r.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_iov = &mut r.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            r.hdrs.push(h);
        }
        r
    }

    /// Waits for datagrams (up to the socket's read timeout) and reads as many as are
    /// there, up to the batch size. Returns how many; 0 on timeout or error.
    fn recv(&mut self, fd: RawFd) -> usize {
        for h in &mut self.hdrs {
            h.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points into `addrs`, `iovs` and `bufs`, owned by `self`
        // and neither moved nor resized during the call.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        self.got = if r > 0 { r as usize } else { 0 };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) {
                // ICMP errors (port unreachable) surface here on Linux; harmless.
                tracing::trace!(error = %common::pii::scrub(&e.to_string()), "udp receive error");
            }
        }
        self.got
    }

    /// Datagram `i` of the last `recv`: its source and bytes.
    fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        if i >= self.got {
            return None;
        }
        let len = (self.hdrs[i].msg_len as usize).min(MAX_DATAGRAM);
        let src = from_sockaddr(&self.addrs[i])?;
        Some((src, &self.bufs[i * MAX_DATAGRAM..i * MAX_DATAGRAM + len]))
    }
}

fn from_sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The ICE-TCP listener and its connections, on a thread of their own: each admitted
/// connection goes to the worker its first STUN frame names.
async fn accept_loop(
    listener: TcpListener,
    limits: TcpLimits,
    ufrags: Arc<Ufrags>,
    workers: Arc<Vec<mpsc::Sender<TcpEvent>>>,
    mut stop: watch::Receiver<bool>,
    metrics: Metrics,
) {
    let mut admission = Admission::default();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<SocketAddr>();
    // Accepting pauses until then after an accept error (out of descriptors).
    let mut accept_paused: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            Some(peer) = done_rx.recv() => {
                admission.closed(peer);
                metrics.tcp_connections.set(admission.open() as i64);
            }
            acc = async {
                if let Some(t) = accept_paused {
                    tokio::time::sleep_until(t).await;
                }
                listener.accept().await
            } => {
                accept_paused = None;
                match acc {
                    Ok((stream, peer)) => match admission.admit(&limits, peer, Instant::now()) {
                        Ok(()) => {
                            metrics.tcp_connections.set(admission.open() as i64);
                            let (ufrags, workers, done) = (ufrags.clone(), workers.clone(), done_tx.clone());
                            tokio::spawn(async move {
                                let route = |first: &[u8]| ufrags.route_stun(first).and_then(|w| workers.get(w).cloned());
                                crate::ice_tcp::serve(stream, peer, limits, route).await;
                                let _ = done.send(peer);
                            });
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

// SAFETY: the raw pointers in `iovs` and `hdrs` point into the struct's own buffers and
// are rebuilt by every flush before use; nothing is shared with another thread.
unsafe impl Send for UdpOut {}

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

    /// Two workers, three rooms: a WebRTC stack panic in a peer of one room fails only
    /// that participant; its room-mate on the same worker and the room on the other
    /// worker go on.
    #[cfg(feature = "fault-injection")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_panic_on_one_worker_touches_no_other_participant() {
        use crate::engine::ConnId;
        use crate::proto::{ClientMsg, PcKind, ServerMsg};

        let cfg = Config { udp_listen: "127.0.0.1:0".parse().unwrap(), tcp_listen: None, workers: 2, ..Config::default() };
        let mut media = Media::spawn(&cfg, Metrics::new(&prometheus::Registry::new())).unwrap();
        let w = media.workers.clone();
        let within = Duration::from_secs(15);
        async fn next(rx: &mut mpsc::Receiver<ServerMsg>, want: impl Fn(&ServerMsg) -> bool) -> ServerMsg {
            loop {
                let m = tokio::time::timeout(Duration::from_secs(15), rx.recv()).await.expect("in time").expect("open");
                if want(&m) {
                    return m;
                }
            }
        }
        let mut people = Vec::new();
        for (i, (room, who)) in [("r0", "alice"), ("r0", "bob"), ("r1", "carol")].into_iter().enumerate() {
            let claims = common::Claims {
                sub: who.into(),
                name: None,
                room: Some(room.into()),
                grants: common::Grants::parse_list("publish,subscribe").unwrap(),
                sid: None,
                iat: 0,
                exp: u64::MAX,
            };
            let (tx, mut rx) = mpsc::channel(256);
            let conn = ConnId(i as u64 + 1);
            let worker = w.send_placing(room, Command::Join { conn, claims, tx, auto_subscribe: true }).unwrap();
            let ServerMsg::Joined { participant, .. } = next(&mut rx, |m| matches!(m, ServerMsg::Joined { .. })).await
            else {
                unreachable!()
            };
            people.push((worker, conn, participant.id, rx));
        }
        assert_eq!(people[0].0, people[1].0, "a room on one worker");
        assert_ne!(people[0].0, people[2].0, "the second room on the other worker");
        let (alice_worker, alice) = (people[0].0, people[0].2.clone());
        w.send_to(alice_worker, Command::InjectPanic { participant_id: alice.clone(), pc: PcKind::Subscriber }).unwrap();
        // Alice's subscriber connection gets its next timer input, panics, and she leaves.
        let left = next(&mut people[0].3, |m| matches!(m, ServerMsg::Left { .. })).await;
        assert!(matches!(&left, ServerMsg::Left { reason } if reason == "media connection failed"), "{left:?}");
        let gone = next(&mut people[1].3, |m| matches!(m, ServerMsg::ParticipantLeft { .. })).await;
        assert!(matches!(gone, ServerMsg::ParticipantLeft { participant_id, .. } if participant_id == alice));
        // Bob (same worker) and Carol (the other) still answer.
        for (worker, conn, _, rx) in people.iter_mut().skip(1) {
            w.send_to(*worker, Command::Client { conn: *conn, msg: ClientMsg::Ping }).unwrap();
            tokio::time::timeout(within, next(rx, |m| matches!(m, ServerMsg::Pong))).await.expect("pong");
        }
        tokio::task::spawn_blocking(move || media.stop()).await.unwrap();
    }

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

    /// One `recvmmsg` takes what is queued (up to the batch size), each datagram with
    /// its own source, IPv4 and IPv6; a silent socket returns after its read timeout.
    #[test]
    fn recvmmsg_reads_a_batch_with_sources() {
        for (bind, peer) in [("127.0.0.1:0", "127.0.0.1:0"), ("[::1]:0", "[::1]:0")] {
            let Ok(rx) = std::net::UdpSocket::bind(bind) else { continue }; // no IPv6 here
            rx.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let to = rx.local_addr().unwrap();
            let senders: Vec<_> = (0..2).map(|_| std::net::UdpSocket::bind(peer).unwrap()).collect();
            for i in 0..10u8 {
                senders[i as usize % 2].send_to(&[i; 30][..10 + i as usize], to).unwrap();
            }
            let mut r = RecvMmsg::new(4);
            let mut got = Vec::new();
            while got.len() < 10 {
                let n = r.recv(rx.as_raw_fd());
                assert!((1..=4).contains(&n), "{n}");
                for i in 0..n {
                    let (src, d) = r.get(i).unwrap();
                    got.push((src, d.to_vec()));
                }
                assert!(r.get(n).is_none());
            }
            for (i, (src, d)) in got.iter().enumerate() {
                assert_eq!(*src, senders[i % 2].local_addr().unwrap());
                assert_eq!(d, &vec![i as u8; 10 + i]);
            }
            assert_eq!(r.recv(rx.as_raw_fd()), 0, "timeout with nothing queued");
        }
    }

    #[test]
    fn binding_success_is_told_from_other_stun() {
        let mut m = vec![0u8; 20];
        m[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m[0] = 0x01;
        m[1] = 0x01;
        assert!(is_binding_success(&m));
        m[1] = 0x11; // error response
        assert!(!is_binding_success(&m));
        m[0] = 0x00;
        m[1] = 0x01; // request
        assert!(!is_binding_success(&m));
        assert!(!is_binding_success(&m[..19]));
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
