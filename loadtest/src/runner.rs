//! Runs a media scenario: participants spread over `threads` event-loop threads, joined
//! at the join rate, churned (`churn` per second leave and as many join in their
//! seats), stopped `duration` (or `soak`) after the last join; the server's `/metrics`
//! and the collector are read every second for the progress line and the timeline.
//! Then the end check waits for the server to let go of everything.

use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::{mpsc, oneshot, watch};

use crate::churn::Churn;
use crate::http;
use crate::media::{OpusLoop, filler};
use crate::participant::{self, Shared, Spec};
use crate::report::{ChurnFigures, Participants, Report, ServerStats, SoakFigures, TimePoint};
use crate::scenario::{Departure, Scenario};
use crate::settle::{self, ServerCounts};
use crate::stats::{Collector, Dist, round2};
use crate::token::TokenSource;

/// Options of a run that are not part of the scenario.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Draw the live progress line (indicatif) on stderr.
    pub progress: bool,
}

/// The address this machine uses toward the server (the host candidate to offer).
pub fn local_ip_toward(url: &str) -> Result<IpAddr> {
    let host = http::host_of(url)?;
    let addr = host
        .to_socket_addrs()
        .context("resolve the server's host")?
        .next()
        .context("the server's host has no address")?;
    if addr.ip().is_loopback() {
        return Ok(addr.ip());
    }
    let probe = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    probe.connect(addr)?;
    Ok(probe.local_addr()?.ip())
}

/// Who joins, in order: every room's publishers first, then the subscribers.
pub fn plan(sc: &Scenario, prefix: &str) -> Vec<Spec> {
    let mut v = Vec::new();
    let expected = |publish: bool| (sc.publishers - publish as usize) * sc.tracks_per_publisher();
    for slot in 0..sc.publishers {
        for r in 0..sc.rooms {
            v.push(Spec {
                index: v.len(),
                room: format!("{prefix}-{r}"),
                seat: format!("pub-{r}-{slot}"),
                identity: format!("pub-{r}-{slot}"),
                publish: true,
                slot,
                expected_tracks: expected(true),
            });
        }
    }
    for s in 0..sc.subscribers {
        for r in 0..sc.rooms {
            v.push(Spec {
                index: v.len(),
                room: format!("{prefix}-{r}"),
                seat: format!("sub-{r}-{s}"),
                identity: format!("sub-{r}-{s}"),
                publish: false,
                slot: 0,
                expected_tracks: expected(false),
            });
        }
    }
    v
}

/// Kernel receive drops (`/proc/net/udp`, `/proc/net/udp6`) per local port.
pub fn udp_drops() -> std::collections::HashMap<u16, u64> {
    let mut m = std::collections::HashMap::new();
    for f in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(t) = std::fs::read_to_string(f) else {
            continue;
        };
        for l in t.lines().skip(1) {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let port = cols
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            let drops = cols.last().and_then(|d| d.parse::<u64>().ok());
            if let (Some(p), Some(d)) = (port, drops) {
                *m.entry(p).or_default() += d;
            }
        }
    }
    m
}

/// CPU seconds this process used so far (Linux `/proc/self/stat`, 100 ticks per second).
fn own_cpu_seconds() -> Option<f64> {
    proc_cpu_seconds("self")
}

/// CPU seconds of process `pid` (`self` or a number) from `/proc/PID/stat`.
fn proc_cpu_seconds(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

struct Scrape {
    at: Instant,
    cpu: Option<f64>,
    rss: Option<f64>,
    forwarded: Option<f64>,
    /// `maxd_sfu_worker_cpu_seconds_total`, all workers (servers before it had
    /// `maxd_sfu_worker_cpu_microseconds_total`).
    worker: Option<f64>,
    counts: Option<ServerCounts>,
}

/// Reads `/metrics`; with `pid` (a server on this machine), its CPU time comes from
/// `/proc` (the process collector's counter has a resolution of one second).
async fn scrape(url: &str, pid: Option<u32>) -> Option<Scrape> {
    let at = Instant::now();
    let (status, body) = http::request(url, "GET", "/metrics", None, None)
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    Some(Scrape {
        at,
        cpu: match pid {
            Some(p) => proc_cpu_seconds(&p.to_string()),
            None => http::metric(&body, "maxd_process_cpu_seconds_total"),
        },
        rss: http::metric(&body, "maxd_process_resident_memory_bytes"),
        forwarded: http::metric(&body, "maxd_sfu_rtp_forwarded_total"),
        worker: http::metric(&body, "maxd_sfu_worker_cpu_seconds_total")
            .or_else(|| http::metric(&body, "maxd_sfu_worker_cpu_microseconds_total").map(|us| us / 1e6)),
        counts: ServerCounts::parse(&body),
    })
}

/// The server's counts now (the end check's baseline), if `/metrics` answers.
pub async fn server_counts(url: &str) -> Option<ServerCounts> {
    settle::read(url).await.ok()
}

/// The resume window the end check waits for: `--resume-window`, else what the server
/// said in `joined`, else the server's default (10 s).
pub fn resume_window(sc: &Scenario, announced: Option<u64>) -> (Duration, &'static str) {
    match (sc.resume_window, announced) {
        (Some(d), _) => (d, "option"),
        (None, Some(s)) => (Duration::from_secs(s), "server"),
        (None, None) => (Duration::from_secs(10), "default"),
    }
}

/// The end check after a run (see [`settle`]).
pub async fn end_check(
    sc: &Scenario,
    baseline: Option<ServerCounts>,
    announced: Option<u64>,
) -> settle::EndCheck {
    settle::settle(
        &sc.url,
        baseline,
        resume_window(sc, announced),
        sc.room_grace,
    )
    .await
}

/// How often the lag probe asks to wake.
const LAG_PROBE: Duration = Duration::from_millis(10);

/// Measures how late this thread's event loop wakes: a simulator whose loop lags
/// delays everything it measures (packets sit in its sockets), so its lag is reported
/// next to the server's figures.
async fn lag_probe(collector: Arc<Collector>, mut stop: watch::Receiver<bool>) {
    loop {
        let due = Instant::now() + LAG_PROBE;
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        let lag = Instant::now().saturating_duration_since(due);
        collector.loop_lag(lag.as_micros() as u64);
    }
}

/// A participant of the run that is still in, and how to tell it to leave.
struct Live {
    spec: Spec,
    depart: oneshot::Sender<Departure>,
}

/// Least-squares slope of `(t seconds, y)`, per hour.
fn per_hour(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| round2(sxy / sxx * 3600.0))
}

/// The server's memory over the timeline from `from_s` to `until_s`.
fn soak_figures(timeline: &[TimePoint], from_s: f64, until_s: f64) -> SoakFigures {
    let pts: Vec<(f64, f64)> = timeline
        .iter()
        .filter(|p| p.t >= from_s && p.t <= until_s)
        .filter_map(|p| p.server_rss_mb.map(|r| (p.t, r)))
        .collect();
    SoakFigures {
        rss_mb_first: pts.first().map(|p| p.1),
        rss_mb_last: pts.last().map(|p| p.1),
        rss_mb_max: pts.iter().map(|p| p.1).reduce(f64::max),
        rss_mb_per_hour: per_hour(&pts),
        samples: pts.len(),
    }
}

/// Runs the scenario once; the report covers the whole run, and (with `end_check`)
/// what the server still held after it.
pub async fn run_media(sc: &Scenario, opts: &RunOptions) -> Result<Report> {
    sc.validate()?;
    anyhow::ensure!(
        sc.token_secret.is_some() || sc.token_command.is_some(),
        "no way to get tokens: give --token-secret (the server's auth.secret) or --token-command"
    );
    let tokens =
        TokenSource::from_options(sc.token_secret.as_deref(), sc.token_command.as_deref())?;
    let prefix = if sc.room_prefix.is_empty() {
        format!("lt{:04x}", rand::random::<u16>())
    } else {
        sc.room_prefix.clone()
    };
    let specs = plan(sc, &prefix);
    let total = specs.len();
    let opus = Arc::new(OpusLoop::encode(sc.audio_bitrate, 5).context("pre-encode Opus")?);
    let cert = str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .context("DTLS certificate")?;
    let collector = Arc::new(Collector::new());
    let (release_tx, release_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        scenario: sc.clone(),
        collector: collector.clone(),
        tokens,
        opus,
        filler: filler(),
        local_ip: local_ip_toward(&sc.url)?,
        cert,
        epoch: Instant::now(),
        ports: parking_lot::Mutex::new(Vec::new()),
        server_media: std::sync::OnceLock::new(),
        resume_window_secs: std::sync::OnceLock::new(),
        stopped: parking_lot::Mutex::new(std::collections::HashMap::new()),
        departures: parking_lot::Mutex::new(std::collections::HashMap::new()),
        left_seen: parking_lot::Mutex::new(std::collections::HashMap::new()),
        release: release_rx,
    });
    let (stop_tx, stop_rx) = watch::channel(false);

    // Event-loop threads, each fed participants through a channel.
    let mut feeds = Vec::new();
    let mut threads = Vec::new();
    for t in 0..sc.threads {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Spec, oneshot::Receiver<Departure>)>();
        feeds.push(tx);
        let shared = shared.clone();
        let stop = stop_rx.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("loadtest-{t}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("tokio runtime");
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&rt, async move {
                        tokio::task::spawn_local(lag_probe(shared.collector.clone(), stop.clone()));
                        let mut tasks = tokio::task::JoinSet::new();
                        loop {
                            tokio::select! {
                                next = rx.recv() => match next {
                                    Some((spec, depart)) => {
                                        tasks.spawn_local(participant::run(
                                            spec,
                                            shared.clone(),
                                            stop.clone(),
                                            depart,
                                        ));
                                    }
                                    None => break,
                                },
                                // Reap the finished, so a long soak keeps no handles.
                                Some(r) = tasks.join_next(), if !tasks.is_empty() => {
                                    if r.is_err() {
                                        shared.collector.error("participant task panicked");
                                    }
                                }
                            }
                        }
                        while let Some(r) = tasks.join_next().await {
                            if r.is_err() {
                                shared.collector.error("participant task panicked");
                            }
                        }
                    });
                })
                .context("spawn thread")?,
        );
    }
    let spawn = |spec: Spec| -> Live {
        let (tx, rx) = oneshot::channel();
        let _ = feeds[spec.index % feeds.len()].send((spec.clone(), rx));
        Live { spec, depart: tx }
    };

    let pb = if opts.progress {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(Duration::from_millis(200));
        Some(pb)
    } else {
        None
    };
    let start = Instant::now();
    let cpu0 = own_cpu_seconds();
    let drops0 = udp_drops();
    let first = scrape(&sc.url, sc.server_pid).await;
    let baseline = first.as_ref().and_then(|s| s.counts.clone());
    let mut last = first.as_ref().map(|s| (s.at, s.cpu, s.worker));
    let mut server = ServerStats {
        reachable: first.is_some(),
        cpu_source: if sc.server_pid.is_some() {
            "/proc"
        } else {
            "metrics"
        }
        .into(),
        ..ServerStats::default()
    };
    let mut server_cpu = Vec::new();
    let mut rss_max: f64 = 0.0;
    let mut timeline = Vec::new();

    let seed = sc.seed.unwrap_or_else(rand::random);
    let mut churn = Churn::new(seed, sc.leave_mix);
    let churn_gap = (sc.churn > 0.0).then(|| Duration::from_secs_f64(1.0 / sc.churn));
    let mut next_churn: Option<Instant> = None;
    let mut live: Vec<Live> = Vec::with_capacity(total);
    let mut started = 0usize;
    let mut newcomers = 0usize;

    let gap = Duration::from_secs_f64(1.0 / sc.join_rate);
    let mut next_join = start;
    let mut pending = specs.into_iter().peekable();
    let mut next_tick = start + Duration::from_secs(1);
    let mut end: Option<Instant> = None;
    // The steady window: from `warmup` after the last join to the end.
    let mut steady_from: Option<Instant> = None;
    let mut steady_delay = crate::stats::new_histogram();
    let (mut steady_expected, mut steady_received) = (0u64, 0u64);
    let mut last_tick = start;
    loop {
        let now = Instant::now();
        while pending.peek().is_some() && next_join <= now {
            live.push(spawn(pending.next().unwrap()));
            started += 1;
            next_join += gap;
        }
        if pending.peek().is_none() && end.is_none() {
            end = Some(now + sc.run_for());
            steady_from = Some(now + sc.warmup);
            next_churn = churn_gap.map(|g| now + g);
        }
        if end.is_some_and(|e| now >= e) {
            break;
        }
        // Churn: one leaves, one joins in its seat.
        while let (Some(t), Some(g)) = (next_churn, churn_gap) {
            if t > now || live.is_empty() {
                break;
            }
            let (i, how) = churn.pick(live.len());
            let gone = live.swap_remove(i);
            // An Err: it had already ended by itself (failed); its seat is refilled.
            let _ = gone.depart.send(how);
            live.push(spawn(Churn::replacement(&gone.spec, started)));
            started += 1;
            newcomers += 1;
            next_churn = Some(t + g);
        }
        let mut wake = next_tick;
        if pending.peek().is_some() {
            wake = wake.min(next_join);
        }
        if let Some(e) = end {
            wake = wake.min(e);
        }
        if let Some(c) = next_churn {
            wake = wake.min(c);
        }
        tokio::time::sleep_until(wake.into()).await;
        if Instant::now() >= next_tick {
            next_tick += Duration::from_secs(1);
            let s = scrape(&sc.url, sc.server_pid).await;
            let iv = collector.take_interval();
            let (d, h) = (&iv.delta, &iv.delay);
            let now = Instant::now();
            if steady_from.is_some_and(|s| last_tick >= s) {
                let _ = steady_delay.add(h);
                steady_expected += d.expected;
                steady_received += d.received;
            }
            let secs = now.duration_since(last_tick).as_secs_f64().max(1e-3);
            last_tick = now;
            let mut cpu_pct = None;
            let mut worker_pct = None;
            if let Some(s) = &s {
                if let Some((at0, c0, w0)) = last {
                    let dt = s.at.duration_since(at0).as_secs_f64().max(1e-3);
                    if let (Some(c0), Some(c1)) = (c0, s.cpu) {
                        let p = (c1 - c0) / dt * 100.0;
                        cpu_pct = Some(round2(p));
                        server_cpu.push(p);
                    }
                    if let (Some(w0), Some(w1)) = (w0, s.worker) {
                        worker_pct = Some(round2((w1 - w0) / dt * 100.0));
                    }
                }
                if let Some(r) = s.rss {
                    rss_max = rss_max.max(r);
                }
                last = Some((s.at, s.cpu, s.worker));
            }
            let dl = Dist::of_histogram(h);
            let loss = if d.expected > 0 {
                1.0 - d.received as f64 / d.expected as f64
            } else {
                0.0
            };
            let counts = s.as_ref().and_then(|s| s.counts.as_ref());
            let point = TimePoint {
                t: round2(now.duration_since(start).as_secs_f64()),
                connected: iv.connected,
                bitrate_out_kbps: round2(d.bytes_sent as f64 * 8.0 / secs / 1000.0),
                bitrate_in_kbps: round2(d.bytes_recv as f64 * 8.0 / secs / 1000.0),
                packets_in: d.packets_recv,
                loss_ratio: round2(loss.max(0.0) * 1e4) / 1e4,
                delay_p50_ms: dl.p50,
                delay_p99_ms: dl.p99,
                server_cpu_percent: cpu_pct,
                media_worker_cpu_percent: worker_pct,
                server_rss_mb: s
                    .as_ref()
                    .and_then(|s| s.rss)
                    .map(|r| round2(r / 1048576.0)),
                live: iv.live,
                joins: iv.joins,
                ends: iv.ends,
                server_participants: counts.map(|c| c.participants),
                server_rooms: counts.map(|c| c.rooms),
                simulator_lag_ms: round2(iv.lag_max_us as f64 / 1000.0),
            };
            if let Some(pb) = &pb {
                pb.set_message(format!(
                    "{:>5.0}s  connected {}/{} (+{} -{})  out {:.1} Mbit/s  in {:.1} Mbit/s  loss {:.2} %  delay p50 {:.1} ms p99 {:.1} ms  server CPU {}  server participants {}",
                    point.t,
                    point.connected,
                    total,
                    point.joins,
                    point.ends,
                    point.bitrate_out_kbps / 1000.0,
                    point.bitrate_in_kbps / 1000.0,
                    point.loss_ratio * 100.0,
                    point.delay_p50_ms,
                    point.delay_p99_ms,
                    point.server_cpu_percent.map(|c| format!("{c:.0} %")).unwrap_or_else(|| "-".into()),
                    point.server_participants.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                ));
            }
            timeline.push(point);
        }
    }
    let ran_for = start.elapsed();
    let run_end = Instant::now();
    let fin_scrape = scrape(&sc.url, sc.server_pid).await;
    let _ = stop_tx.send(true);
    // Every participant leaves (within a few seconds each: see `depart`).
    let mut finished = collector.finished_count();
    if tokio::time::timeout(
        Duration::from_secs(30),
        finished.wait_for(|&n| n >= started),
    )
    .await
    .is_err()
    {
        collector.error("participants did not stop within 30 s");
    }
    drop(live);
    let cpu1 = own_cpu_seconds();
    if let Some(pb) = &pb {
        pb.set_message("end check: waiting for the server to let go of everything");
    }
    let announced = shared.resume_window_secs.get().copied();
    server.resume_window_s = announced;
    let removals = crate::churn::removals(
        &shared.departures.lock(),
        &shared.left_seen.lock(),
        resume_window(sc, announced).0 + Duration::from_secs(1) + crate::churn::REMOVAL_SLACK,
        sc.ws_idle,
        run_end,
    );
    let end_check = if sc.end_check {
        let e = end_check(sc, baseline, announced).await;
        // The timeline goes on with the server's side while it lets go.
        for (at, c) in &e.samples {
            timeline.push(TimePoint {
                t: round2(at.duration_since(start).as_secs_f64()),
                server_rss_mb: c.rss_mb,
                server_participants: Some(c.participants),
                server_rooms: Some(c.rooms),
                ..TimePoint::default()
            });
        }
        Some(e)
    } else {
        None
    };
    // Silent participants may now close their sockets.
    let _ = release_tx.send(true);
    drop(feeds);
    let joiner = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    });
    if tokio::time::timeout(Duration::from_secs(30), joiner)
        .await
        .is_err()
    {
        collector.error("simulator threads did not stop within 30 s");
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    // Kernel drops on this machine's sockets during the run: ours, and the server's
    // media socket when it is local (its port is the source of its datagrams).
    let drops1 = udp_drops();
    let delta = |p: u16| {
        drops1
            .get(&p)
            .copied()
            .unwrap_or(0)
            .saturating_sub(drops0.get(&p).copied().unwrap_or(0))
    };
    let simulator_socket_drops: u64 = shared.ports.lock().iter().map(|&p| delta(p)).sum();
    if let Some(a) = shared.server_media.get() {
        if a.ip().is_loopback() || a.ip() == shared.local_ip {
            server.udp_socket_drops = Some(delta(a.port()));
        }
    }
    if let (Some(f), Some(s0)) = (&fin_scrape, &first) {
        if let (Some(c0), Some(c1)) = (s0.cpu, f.cpu) {
            server.cpu_percent_avg = Some(round2(
                (c1 - c0) / f.at.duration_since(s0.at).as_secs_f64() * 100.0,
            ));
        }
        if let (Some(a), Some(b)) = (s0.worker, f.worker) {
            server.media_worker_cpu_percent_avg = Some(round2(
                (b - a) / f.at.duration_since(s0.at).as_secs_f64() * 100.0,
            ));
        }
        if let (Some(a), Some(b)) = (s0.forwarded, f.forwarded) {
            let secs = f.at.duration_since(s0.at).as_secs_f64();
            server.rtp_forwarded_per_s = Some(round2((b - a) / secs));
        }
        if let Some(r) = f.rss {
            rss_max = rss_max.max(r);
            server.rss_mb_end = Some(round2(r / 1048576.0));
        }
    }
    server.cpu_percent_max = server_cpu.iter().copied().reduce(f64::max).map(round2);
    server.rss_mb_max = (rss_max > 0.0).then(|| round2(rss_max / 1048576.0));
    let simulator_cpu = cpu0
        .zip(cpu1)
        .map(|(a, b)| round2((b - a) / ran_for.as_secs_f64() * 100.0));
    let steady_from_s = steady_from.map(|s| round2(s.duration_since(start).as_secs_f64()));
    let soak = sc.soak.map(|_| {
        soak_figures(
            &timeline,
            steady_from_s.unwrap_or(0.0),
            ran_for.as_secs_f64(),
        )
    });

    let report = collector.read(|t| {
        let s = &t.sum;
        let loss = if s.expected > 0 {
            1.0 - s.received as f64 / s.expected as f64
        } else {
            0.0
        };
        let joins = &t.joins;
        let pick =
            |f: fn(&crate::stats::JoinTimes) -> Option<f64>| Dist::of(joins.iter().filter_map(f));
        let secs = ran_for.as_secs_f64();
        // Without churn every participant expects the same tracks for the whole run;
        // with churn, those that were available to it long enough.
        let (tracks_expected, tracks_received) = if sc.churn > 0.0 {
            (t.tracks_expected_available, t.tracks_received_available)
        } else {
            (sc.tracks_expected(), t.tracks_received)
        };
        Report {
            mode: "media".into(),
            scenario: sc.clone(),
            rooms: (0..sc.rooms).map(|r| format!("{prefix}-{r}")).collect(),
            duration_s: round2(secs),
            participants: Participants {
                planned: total,
                started: t.started,
                connected: t.ever_connected,
                failed: t.failed,
                failed_joins: t.failed_joins,
                dropped: t.dropped,
                still_joining: t.still_joining,
                departures: t
                    .departures
                    .iter()
                    .map(|(k, n)| (k.name().to_string(), *n))
                    .collect(),
                stopped_at_end: t.stopped_at_end,
            },
            tracks_expected,
            tracks_received,
            packets_sent: s.packets_sent,
            packets_received: s.received,
            packets_expected: s.expected,
            packets_lost: s.expected.saturating_sub(s.received),
            duplicates: s.duplicates,
            foreign_packets: s.foreign,
            loss_ratio: round2(loss.max(0.0) * 1e6) / 1e6,
            delay_ms: Dist::of_histogram(&t.delay),
            steady: crate::report::Steady {
                from_s: steady_from_s,
                delay_ms: Dist::of_histogram(&steady_delay),
                loss_ratio: if steady_expected > 0 {
                    round2((1.0 - steady_received as f64 / steady_expected as f64).max(0.0) * 1e6)
                        / 1e6
                } else {
                    0.0
                },
                packets_expected: steady_expected,
            },
            jitter_ms: Dist::of(t.jitter_ms.iter().copied()),
            join_ms: crate::report::JoinBreakdown {
                ws_open: pick(|j| j.ws_open),
                joined: pick(|j| j.joined),
                publisher_ice: pick(|j| j.publisher_ice),
                publisher_dtls: pick(|j| j.publisher_dtls),
                subscriber_offer: pick(|j| j.subscriber_offer),
                subscriber_ice: pick(|j| j.subscriber_ice),
                subscriber_dtls: pick(|j| j.subscriber_dtls),
                first_packet: pick(|j| j.first_packet),
            },
            time_to_first_audio_ms: Dist::of(t.first_audio_ms.iter().copied()),
            time_to_first_video_ms: Dist::of(t.first_video_ms.iter().copied()),
            nacks_sent: s.nacks_sent,
            nacks_received: s.nacks_recv,
            plis_sent: s.plis_sent,
            firs_sent: s.firs_sent,
            keyframe_requests_received: s.keyframe_requests_recv,
            bitrate_out_kbps: round2(s.bytes_sent as f64 * 8.0 / secs / 1000.0),
            bitrate_in_kbps: round2(s.bytes_recv as f64 * 8.0 / secs / 1000.0),
            send_errors: s.send_errors,
            errors: t.errors.values().sum(),
            errors_by_kind: t.errors.clone(),
            warnings_by_kind: t.warnings.clone(),
            server,
            simulator_cpu_percent: simulator_cpu,
            simulator_loop_lag_ms: Dist::of_histogram(&t.loop_lag),
            simulator_socket_drops,
            timeline,
            churn: (sc.churn > 0.0).then_some(ChurnFigures {
                rate: sc.churn,
                leave_mix: sc.leave_mix,
                seed,
                newcomers,
                removals,
            }),
            soak,
            end_check,
            ..Report::default()
        }
    });
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_trend_per_hour() {
        // 1 MiB more every 60 s: 60 MiB/h.
        let pts: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64 * 60.0, 100.0 + i as f64))
            .collect();
        assert_eq!(per_hour(&pts), Some(60.0));
        assert_eq!(per_hour(&pts[..1]), None);
    }

    #[test]
    fn resume_window_precedence() {
        let mut sc = Scenario::default();
        assert_eq!(
            resume_window(&sc, None),
            (Duration::from_secs(10), "default")
        );
        assert_eq!(
            resume_window(&sc, Some(3)),
            (Duration::from_secs(3), "server")
        );
        sc.resume_window = Some(Duration::from_secs(7));
        assert_eq!(
            resume_window(&sc, Some(3)),
            (Duration::from_secs(7), "option")
        );
    }
}
