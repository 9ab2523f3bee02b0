//! Runs a media scenario: participants spread over `threads` event-loop threads, joined
//! at the join rate, stopped `duration` after the last join; the server's `/metrics`
//! and the collector are read every second for the progress line and the timeline.

use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::{mpsc, watch};

use crate::http;
use crate::media::{OpusLoop, filler};
use crate::participant::{self, Shared, Spec};
use crate::report::{Participants, Report, ServerStats, TimePoint};
use crate::scenario::Scenario;
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
    /// `maxd_sfu_worker_cpu_microseconds_total`, all workers, in seconds.
    worker: Option<f64>,
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
        worker: http::metric(&body, "maxd_sfu_worker_cpu_microseconds_total").map(|us| us / 1e6),
    })
}

/// Runs the scenario once; the report covers the whole run.
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
    });
    let (stop_tx, stop_rx) = watch::channel(false);

    // Event-loop threads, each fed participants through a channel.
    let mut feeds = Vec::new();
    let mut threads = Vec::new();
    for t in 0..sc.threads {
        let (tx, mut rx) = mpsc::unbounded_channel::<Spec>();
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
                        let mut tasks = Vec::new();
                        while let Some(spec) = rx.recv().await {
                            tasks.push(tokio::task::spawn_local(participant::run(
                                spec,
                                shared.clone(),
                                stop.clone(),
                            )));
                        }
                        for t in tasks {
                            if t.await.is_err() {
                                shared.collector.error("participant task panicked");
                            }
                        }
                    });
                })
                .context("spawn thread")?,
        );
    }

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
            let spec = pending.next().unwrap();
            let t = spec.index % feeds.len();
            let _ = feeds[t].send(spec);
            next_join += gap;
        }
        if pending.peek().is_none() && end.is_none() {
            end = Some(Instant::now() + sc.duration);
            steady_from = Some(Instant::now() + sc.warmup);
        }
        if end.is_some_and(|e| now >= e) {
            break;
        }
        let mut wake = next_tick;
        if pending.peek().is_some() {
            wake = wake.min(next_join);
        }
        if let Some(e) = end {
            wake = wake.min(e);
        }
        tokio::time::sleep_until(wake.into()).await;
        if Instant::now() >= next_tick {
            next_tick += Duration::from_secs(1);
            let s = scrape(&sc.url, sc.server_pid).await;
            let (d, h, connected) = collector.take_interval();
            let now = Instant::now();
            if steady_from.is_some_and(|s| last_tick >= s) {
                let _ = steady_delay.add(&h);
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
            let dl = Dist::of_histogram(&h);
            let loss = if d.expected > 0 {
                1.0 - d.received as f64 / d.expected as f64
            } else {
                0.0
            };
            let point = TimePoint {
                t: round2(now.duration_since(start).as_secs_f64()),
                connected,
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
            };
            if let Some(pb) = &pb {
                pb.set_message(format!(
                    "{:>5.0}s  connected {}/{}  out {:.1} Mbit/s  in {:.1} Mbit/s  loss {:.2} %  delay p50 {:.1} ms p99 {:.1} ms  server CPU {}",
                    point.t,
                    point.connected,
                    total,
                    point.bitrate_out_kbps / 1000.0,
                    point.bitrate_in_kbps / 1000.0,
                    point.loss_ratio * 100.0,
                    point.delay_p50_ms,
                    point.delay_p99_ms,
                    point.server_cpu_percent.map(|c| format!("{c:.0} %")).unwrap_or_else(|| "-".into()),
                ));
            }
            timeline.push(point);
        }
    }
    let ran_for = start.elapsed();
    let fin_scrape = scrape(&sc.url, sc.server_pid).await;
    let _ = stop_tx.send(true);
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
        collector.error("participants did not stop within 30 s");
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let cpu1 = own_cpu_seconds();
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
            },
            tracks_expected: sc.tracks_expected(),
            tracks_received: t.tracks_received,
            packets_sent: s.packets_sent,
            packets_received: s.received,
            packets_expected: s.expected,
            packets_lost: s.expected.saturating_sub(s.received),
            duplicates: s.duplicates,
            foreign_packets: s.foreign,
            loss_ratio: round2(loss.max(0.0) * 1e6) / 1e6,
            delay_ms: Dist::of_histogram(&t.delay),
            steady: crate::report::Steady {
                from_s: steady_from.map(|s| round2(s.duration_since(start).as_secs_f64())),
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
            server,
            simulator_cpu_percent: simulator_cpu,
            simulator_socket_drops,
            timeline,
            capacity: None,
            chat: None,
            files: None,
        }
    });
    Ok(report)
}
