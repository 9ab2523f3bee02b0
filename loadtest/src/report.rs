//! The report: JSON (every figure), a table for the terminal.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::scenario::{LeaveMix, Scenario};
use crate::settle::EndCheck;
use crate::stats::Dist;
use crate::verdict::Verdict;

#[derive(Debug, Clone, Serialize, Default)]
pub struct Participants {
    /// The population: rooms x (publishers + subscribers).
    pub planned: usize,
    /// Joins: every participant started, churn's newcomers included.
    pub started: usize,
    /// Reached DTLS on both its peer connections.
    pub connected: usize,
    /// Ended by an error: `failed_joins` + `dropped`.
    pub failed: usize,
    /// Never connected (refused, or not connected within the connect timeout).
    pub failed_joins: usize,
    /// Connected, then ended by the server or an error.
    pub dropped: usize,
    /// Told to leave, or stopped with the run, before it had connected (within its
    /// connect timeout): neither connected nor failed.
    pub still_joining: usize,
    /// Churn's leaves by kind (`leave`, `quit`, `close`, `vanish`, `silent`).
    pub departures: BTreeMap<String, u64>,
    /// Stopped with the run: they quit at once (`leave` and a close frame, without
    /// waiting for `left`).
    pub stopped_at_end: usize,
}

/// `--churn`: what the churn did (its leaves are in `participants.departures`).
#[derive(Debug, Clone, Serialize)]
pub struct ChurnFigures {
    /// Participants per second leaving, and as many joining.
    pub rate: f64,
    pub leave_mix: LeaveMix,
    /// The seed of its choices: `--seed` repeats them.
    pub seed: u64,
    /// Participants that joined in the seat of one that left.
    pub newcomers: usize,
    /// Did the server let each leaver go in time (as the others in its room heard)?
    pub removals: crate::churn::Removals,
}

/// `--soak`: the server's memory over the run after the warm-up.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SoakFigures {
    /// RSS (MiB) at the first sample after the warm-up, at the last, and the highest.
    pub rss_mb_first: Option<f64>,
    pub rss_mb_last: Option<f64>,
    pub rss_mb_max: Option<f64>,
    /// Least-squares slope of RSS over that time, MiB per hour.
    pub rss_mb_per_hour: Option<f64>,
    pub samples: usize,
}

/// Milliseconds from a participant's start (before the WebSocket opens) to each step.
#[derive(Debug, Clone, Serialize, Default)]
pub struct JoinBreakdown {
    pub ws_open: Dist,
    pub joined: Dist,
    pub publisher_ice: Dist,
    pub publisher_dtls: Dist,
    pub subscriber_offer: Dist,
    pub subscriber_ice: Dist,
    pub subscriber_dtls: Dist,
    pub first_packet: Dist,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ServerStats {
    /// `/metrics` answered.
    pub reachable: bool,
    /// Where process CPU comes from: `metrics` (`maxd_process_cpu_seconds_total`, whole
    /// seconds: per-second figures are coarse) or `/proc` (`--server-pid`, exact).
    pub cpu_source: String,
    /// Server CPU over the run, percent of one core.
    pub cpu_percent_avg: Option<f64>,
    /// The media worker thread(s) alone (`maxd_sfu_worker_cpu_seconds_total`).
    pub media_worker_cpu_percent_avg: Option<f64>,
    /// Highest one-second CPU figure.
    pub cpu_percent_max: Option<f64>,
    /// Resident memory (`maxd_process_resident_memory_bytes`), MiB.
    pub rss_mb_max: Option<f64>,
    pub rss_mb_end: Option<f64>,
    /// Datagrams the kernel dropped on the server's media socket (receive buffer full)
    /// during the run; only when the server runs on this machine.
    pub udp_socket_drops: Option<u64>,
    /// Forwarded RTP packets per second over the run (`maxd_sfu_rtp_forwarded_total`).
    pub rtp_forwarded_per_s: Option<f64>,
    /// The resume window the server announced in `joined`, seconds.
    pub resume_window_s: Option<u64>,
}

/// The run after its warm-up (`warmup` after the last join): what a settled call sees,
/// without the joins' keyframe bursts and bandwidth-estimate ramps.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Steady {
    /// Seconds from the start of the run; `None` if the run ended before.
    pub from_s: Option<f64>,
    pub delay_ms: Dist,
    pub loss_ratio: f64,
    pub packets_expected: u64,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TimePoint {
    pub t: f64,
    pub connected: usize,
    pub bitrate_out_kbps: f64,
    pub bitrate_in_kbps: f64,
    pub packets_in: u64,
    pub loss_ratio: f64,
    pub delay_p50_ms: f64,
    pub delay_p99_ms: f64,
    pub server_cpu_percent: Option<f64>,
    pub media_worker_cpu_percent: Option<f64>,
    pub server_rss_mb: Option<f64>,
    /// Simulated participants started and not finished (joining, in, or leaving).
    pub live: usize,
    /// Participants started and finished in this second.
    pub joins: u64,
    pub ends: u64,
    /// The server's `maxd_sfu_participants` and `maxd_sfu_rooms`.
    pub server_participants: Option<i64>,
    pub server_rooms: Option<i64>,
    /// The simulator's worst event-loop lag in this second (ms).
    pub simulator_lag_ms: f64,
}

/// `--find-capacity`: one line per step.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityStep {
    pub subscribers_per_room: usize,
    pub participants: usize,
    pub passed: bool,
    pub loss_ratio: f64,
    pub delay_p99_ms: f64,
    pub tracks_expected: usize,
    pub tracks_received: usize,
    pub failed_participants: usize,
    pub server_cpu_percent_avg: Option<f64>,
    pub server_rss_mb_max: Option<f64>,
    pub why: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    /// Highest subscribers per room that passed (None if the first step failed).
    pub subscribers_per_room: Option<usize>,
    /// Participants in all rooms at that step.
    pub participants: Option<usize>,
    pub max_loss_ratio: f64,
    pub max_p99_ms: f64,
    pub steps: Vec<CapacityStep>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub mode: String,
    pub scenario: Scenario,
    pub rooms: Vec<String>,
    pub duration_s: f64,
    pub participants: Participants,
    /// (participant, track) pairs that should have been received...
    pub tracks_expected: usize,
    /// ...and those of which media with the simulator's trailer arrived.
    pub tracks_received: usize,
    pub packets_sent: u64,
    /// Distinct media packets received, and expected from the sequence numbers.
    pub packets_received: u64,
    pub packets_expected: u64,
    pub packets_lost: u64,
    pub duplicates: u64,
    pub foreign_packets: u64,
    /// packets_lost / packets_expected (after NACK repair), 0..1.
    pub loss_ratio: f64,
    /// One-way delay, publisher's send to subscriber's receipt.
    pub delay_ms: Dist,
    /// The same after the warm-up.
    pub steady: Steady,
    /// RFC 3550 interarrival jitter at the end of the run, per received track.
    pub jitter_ms: Dist,
    pub join_ms: JoinBreakdown,
    /// From a track becoming available to the participant (its join, or the track's
    /// publication) to the track's first packet.
    pub time_to_first_audio_ms: Dist,
    pub time_to_first_video_ms: Dist,
    pub nacks_sent: u64,
    pub nacks_received: u64,
    pub plis_sent: u64,
    pub firs_sent: u64,
    /// PLI/FIR that reached publishers.
    pub keyframe_requests_received: u64,
    /// All UDP the simulator sent / received, averaged over the run.
    pub bitrate_out_kbps: f64,
    pub bitrate_in_kbps: f64,
    pub send_errors: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Not errors, but they make the figures less trustworthy (the simulator fell
    /// behind its send clock: it is the bottleneck).
    pub warnings_by_kind: BTreeMap<String, u64>,
    pub server: ServerStats,
    /// CPU the simulator itself used, percent of one core.
    pub simulator_cpu_percent: Option<f64>,
    /// How late the simulator's event loops woke (a 10 ms timer on each thread), ms:
    /// when this grows, the simulator (or the machine) is the bottleneck and its delay
    /// figures include its own lateness.
    pub simulator_loop_lag_ms: Dist,
    /// Datagrams the kernel dropped on the simulator's own sockets (its receive buffers
    /// were full: the simulator, not the server, lost them).
    pub simulator_socket_drops: u64,
    pub timeline: Vec<TimePoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn: Option<ChurnFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soak: Option<SoakFigures>,
    /// After the run: did the server let go of everything? (media mode, unless
    /// `end_check = false`)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_check: Option<EndCheck>,
    /// Pass or fail, and why; `exit_code` is the binary's.
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<serde_json::Value>,
}

fn opt(x: Option<f64>, unit: &str) -> String {
    x.map(|v| format!("{v:.1}{unit}"))
        .unwrap_or_else(|| "-".into())
}

fn dist_row(out: &mut String, name: &str, d: &Dist) {
    if d.count == 0 {
        let _ = writeln!(out, "  {name:<26} -");
    } else {
        let _ = writeln!(
            out,
            "  {name:<26} p50 {:>8.1}  p95 {:>8.1}  p99 {:>8.1}  max {:>8.1}  (n={})",
            d.p50, d.p95, d.p99, d.max, d.count
        );
    }
}

impl Report {
    /// The final table printed on the terminal.
    pub fn table(&self) -> String {
        let mut o = String::new();
        if let Some(f) = &self.files {
            let _ = writeln!(
                o,
                "files: {} clients x {} bytes, {} streams per transfer",
                f["clients"], f["file_size"], f["streams_per_transfer"]
            );
            for ph in ["upload", "download"] {
                let p = &f[ph];
                let d =
                    serde_json::from_value::<Dist>(p["transfer_ms"].clone()).unwrap_or_default();
                let _ = writeln!(
                    o,
                    "  {ph:<9} {}/{} ok, {} MiB/s together over {} s; per transfer p50 {:.0} ms, max {:.0} ms",
                    p["ok"], p["transfers"], p["mib_per_s"], p["seconds"], d.p50, d.max
                );
            }
            let _ = writeln!(o, "  errors    {}", self.errors);
            for (k, n) in &self.errors_by_kind {
                let _ = writeln!(o, "    {n:>6} x {k}");
            }
            self.verdict_lines(&mut o);
            return o;
        }
        if let Some(c) = &self.chat {
            let g = |k: &str| c[k].clone();
            let _ = writeln!(
                o,
                "chat: {} groups x {} members ({} senders at {}/s each), {} users, setup {} s, run {:.1} s",
                g("groups"),
                g("group_size"),
                g("senders_per_group"),
                g("rate_per_sender"),
                g("users"),
                g("setup_s"),
                self.duration_s
            );
            let _ = writeln!(
                o,
                "  messages                   {} sent, {} acked; deliveries {} of {} expected ({} /s)",
                g("messages_sent"),
                g("messages_acked"),
                g("deliveries"),
                g("deliveries_expected"),
                g("deliveries_per_s")
            );
            let d = |k: &str| serde_json::from_value::<Dist>(c[k].clone()).unwrap_or_default();
            let _ = writeln!(o, "  (ms)");
            dist_row(&mut o, "ack (after commit)", &d("ack_ms"));
            dist_row(&mut o, "fan-out", &d("fanout_ms"));
            let _ = writeln!(o, "  errors                     {}", self.errors);
            for (k, n) in &self.errors_by_kind {
                let _ = writeln!(o, "    {n:>6} x {k}");
            }
            self.verdict_lines(&mut o);
            return o;
        }
        let sc = &self.scenario;
        let _ = writeln!(
            o,
            "scenario {:?}: {} room(s) x ({} publishers + {} subscribers), {}, {:.1} s",
            sc.name,
            sc.rooms,
            sc.publishers,
            sc.subscribers,
            if sc.video {
                format!(
                    "audio+video{}",
                    if sc.simulcast { " (simulcast)" } else { "" }
                )
            } else {
                "audio only".into()
            },
            self.duration_s
        );
        let p = &self.participants;
        let _ = writeln!(
            o,
            "  participants               {} planned, {} joined, {} connected, {} failed ({} joins, {} dropped), {} still joining at their end",
            p.planned, p.started, p.connected, p.failed, p.failed_joins, p.dropped, p.still_joining
        );
        if let Some(c) = &self.churn {
            let kinds = p
                .departures
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                o,
                "  churn                      {}/s (seed {}): {} newcomers; left by {}; {} stopped at the end",
                c.rate,
                c.seed,
                c.newcomers,
                if kinds.is_empty() { "-".into() } else { kinds },
                p.stopped_at_end
            );
            let r = &c.removals;
            let _ = writeln!(
                o,
                "  removal (participant_left) {} judged: {} late, {} never heard (limit {:.1} s: resume window + 1 s + 1 s)",
                r.judged,
                r.late,
                r.unseen,
                r.limit_ms / 1000.0
            );
            for (k, d) in &r.after_ms {
                dist_row(&mut o, &format!("  after {k} (ms)"), d);
            }
            for e in &r.examples {
                let _ = writeln!(o, "    {e}");
            }
        }
        let _ = writeln!(
            o,
            "  tracks received            {} / {} expected",
            self.tracks_received, self.tracks_expected
        );
        let _ = writeln!(
            o,
            "  packets                    {} sent, {} received of {} expected, {} lost ({:.3} %)",
            self.packets_sent,
            self.packets_received,
            self.packets_expected,
            self.packets_lost,
            self.loss_ratio * 100.0
        );
        let _ = writeln!(o, "  (ms)");
        dist_row(&mut o, "one-way delay", &self.delay_ms);
        if self.steady.delay_ms.count > 0 {
            let name = format!(
                "  after warm-up (loss {:.3} %)",
                self.steady.loss_ratio * 100.0
            );
            dist_row(&mut o, &name, &self.steady.delay_ms);
        }
        dist_row(&mut o, "jitter", &self.jitter_ms);
        dist_row(&mut o, "join: websocket open", &self.join_ms.ws_open);
        dist_row(&mut o, "join: joined", &self.join_ms.joined);
        dist_row(&mut o, "join: publisher ICE", &self.join_ms.publisher_ice);
        dist_row(&mut o, "join: publisher DTLS", &self.join_ms.publisher_dtls);
        dist_row(
            &mut o,
            "join: subscriber offer",
            &self.join_ms.subscriber_offer,
        );
        dist_row(&mut o, "join: subscriber ICE", &self.join_ms.subscriber_ice);
        dist_row(
            &mut o,
            "join: subscriber DTLS",
            &self.join_ms.subscriber_dtls,
        );
        dist_row(&mut o, "join: first packet", &self.join_ms.first_packet);
        dist_row(&mut o, "time to first audio", &self.time_to_first_audio_ms);
        dist_row(&mut o, "time to first video", &self.time_to_first_video_ms);
        let _ = writeln!(
            o,
            "  NACK sent/received         {} / {}   PLI sent {}   keyframe requests at publishers {}",
            self.nacks_sent, self.nacks_received, self.plis_sent, self.keyframe_requests_received
        );
        let _ = writeln!(
            o,
            "  simulator                  out {:.2} Mbit/s, in {:.2} Mbit/s, CPU {}, socket drops {}, event-loop lag p99 {:.1} ms max {:.1} ms",
            self.bitrate_out_kbps / 1000.0,
            self.bitrate_in_kbps / 1000.0,
            opt(self.simulator_cpu_percent, " %"),
            self.simulator_socket_drops,
            self.simulator_loop_lag_ms.p99,
            self.simulator_loop_lag_ms.max
        );
        let s = &self.server;
        let _ = writeln!(
            o,
            "  server                     CPU avg {} max {} (media worker {}), RSS max {}, forwarded {} pkt/s, UDP socket drops {}",
            opt(s.cpu_percent_avg, " %"),
            opt(s.cpu_percent_max, " %"),
            opt(s.media_worker_cpu_percent_avg, " %"),
            opt(s.rss_mb_max, " MiB"),
            opt(s.rtp_forwarded_per_s, ""),
            s.udp_socket_drops
                .map(|d| d.to_string())
                .unwrap_or_else(|| "-".into())
        );
        if let Some(sk) = &self.soak {
            let _ = writeln!(
                o,
                "  soak                       server RSS {} -> {} (max {}), trend {} over {} samples",
                opt(sk.rss_mb_first, " MiB"),
                opt(sk.rss_mb_last, " MiB"),
                opt(sk.rss_mb_max, " MiB"),
                opt(sk.rss_mb_per_hour, " MiB/h"),
                sk.samples
            );
        }
        let _ = writeln!(o, "  errors                     {}", self.errors);
        for (k, n) in &self.errors_by_kind {
            let _ = writeln!(o, "    {n:>6} x {k}");
        }
        for (k, n) in &self.warnings_by_kind {
            let _ = writeln!(o, "  warning {n:>6} x {k}");
        }
        if let Some(e) = &self.end_check {
            let counts = |c: &Option<crate::settle::ServerCounts>| {
                c.as_ref()
                    .map(|c| {
                        format!(
                            "{} participants, {} rooms, {} tracks, {} subscriptions{}, RSS {}",
                            c.participants,
                            c.rooms,
                            c.tracks,
                            c.subscriptions,
                            c.peers.map(|p| format!(", {p} peers")).unwrap_or_default(),
                            opt(c.rss_mb, " MiB")
                        )
                    })
                    .unwrap_or_else(|| "-".into())
            };
            let _ = writeln!(
                o,
                "  end check                  {} after {:.1} s (limit {:.0} s: resume window {:.0} s from {}, room grace {:.0} s)",
                if e.settled {
                    "nothing left"
                } else {
                    "LEFT BEHIND"
                },
                e.waited_s,
                e.limit_s,
                e.resume_window_s,
                e.resume_window_from,
                e.room_grace_s
            );
            let _ = writeln!(o, "    before                   {}", counts(&e.baseline));
            let _ = writeln!(o, "    after                    {}", counts(&e.end));
            if let Some(err) = &e.error {
                let _ = writeln!(o, "    error                    {err}");
            }
        }
        if let Some(c) = &self.capacity {
            let _ = writeln!(
                o,
                "capacity (loss <= {:.2} %, p99 <= {:.0} ms): {}",
                c.max_loss_ratio * 100.0,
                c.max_p99_ms,
                match (c.subscribers_per_room, c.participants) {
                    (Some(s), Some(p)) => format!("{s} subscribers per room ({p} participants)"),
                    _ => "not even the first step passed".into(),
                }
            );
            for st in &c.steps {
                let _ = writeln!(
                    o,
                    "  {:>5} subs/room {:>6} participants  {}  loss {:.3} %  p99 {:.1} ms  tracks {}/{}  server CPU {}{}",
                    st.subscribers_per_room,
                    st.participants,
                    if st.passed { "pass" } else { "FAIL" },
                    st.loss_ratio * 100.0,
                    st.delay_p99_ms,
                    st.tracks_received,
                    st.tracks_expected,
                    opt(st.server_cpu_percent_avg, " %"),
                    st.why
                        .as_ref()
                        .map(|w| format!("  ({w})"))
                        .unwrap_or_default()
                );
            }
        }
        self.verdict_lines(&mut o);
        o
    }

    fn verdict_lines(&self, o: &mut String) {
        let v = &self.verdict;
        if v.passed {
            let _ = writeln!(o, "verdict: PASS");
        } else {
            let _ = writeln!(o, "verdict: FAIL (exit code {})", v.exit_code);
            for f in &v.failures {
                let _ = writeln!(o, "  {:<12} {}", f.check, f.detail);
            }
        }
    }
}
