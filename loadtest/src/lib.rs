//! The load-test simulator: many real WebRTC clients (str0m: ICE, DTLS, SRTP) through
//! `/rtc`, and a report of what they saw. See `docs/loadtest.md`.
//!
//! [`run`] runs a [`Scenario`] and answers a judged [`Report`] (its `verdict` says
//! whether the run passed, and the binary's exit code); the `loadtest` binary adds the
//! command line, the live progress line, the table, the JSON file and the chart.

pub mod availability;
pub mod chart;
pub mod chat;
pub mod churn;
pub mod depart;
pub mod files;
pub mod http;
pub mod media;
pub mod participant;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod settle;
pub mod stats;
pub mod token;
pub mod verdict;

pub use report::Report;
pub use runner::RunOptions;
pub use scenario::{Departure, LeaveMix, Mode, Scenario, Speaking};
pub use verdict::Verdict;

use anyhow::Result;

/// Runs `sc` (media mode; `find_capacity` ramps subscribers step by step) and judges
/// the run (`Report::verdict`).
pub async fn run(sc: &Scenario, opts: &RunOptions) -> Result<Report> {
    let mut r = match sc.mode {
        Mode::Media if sc.find_capacity => find_capacity(sc, opts).await?,
        Mode::Media => runner::run_media(sc, opts).await?,
        Mode::Chat => chat::run_chat(sc).await?,
        Mode::Files => files::run_files(sc).await?,
    };
    r.verdict = verdict::judge(&r);
    Ok(r)
}

/// Raises subscribers per room by `capacity_step` until a step loses more than
/// `capacity_max_loss`, exceeds `capacity_max_p99_ms`, misses a track or a participant
/// fails. The report is the last passing step's, with every step listed.
pub async fn find_capacity(sc: &Scenario, opts: &RunOptions) -> Result<Report> {
    let mut steps = Vec::new();
    // One end check after the last step, against the server before the first.
    let baseline = runner::server_counts(&sc.url).await;
    let mut announced = None;
    let mut best: Option<Report> = None;
    let mut last: Option<Report> = None;
    let step = sc.capacity_step.max(1);
    let mut subs = if sc.subscribers == 0 {
        step
    } else {
        sc.subscribers
    };
    while subs <= sc.capacity_max {
        let s = Scenario {
            subscribers: subs,
            find_capacity: false,
            end_check: false,
            room_prefix: String::new(),
            ..sc.clone()
        };
        if opts.progress {
            eprintln!(
                "capacity step: {subs} subscribers per room ({} participants)",
                s.participants()
            );
        }
        let r = runner::run_media(&s, opts).await?;
        announced = announced.or(r.server.resume_window_s);
        let mut why = Vec::new();
        // Judged after the warm-up when there is one, else over the whole run.
        let (loss, p99) = if r.steady.delay_ms.count > 0 {
            (r.steady.loss_ratio, r.steady.delay_ms.p99)
        } else {
            (r.loss_ratio, r.delay_ms.p99)
        };
        if loss > sc.capacity_max_loss {
            why.push(format!("loss {:.3} %", loss * 100.0));
        }
        if p99 > sc.capacity_max_p99_ms {
            why.push(format!("p99 {p99:.1} ms"));
        }
        if r.tracks_received < r.tracks_expected {
            why.push(format!(
                "{} of {} tracks",
                r.tracks_received, r.tracks_expected
            ));
        }
        if r.participants.failed > 0 {
            why.push(format!("{} participants failed", r.participants.failed));
        }
        let passed = why.is_empty();
        steps.push(report::CapacityStep {
            subscribers_per_room: subs,
            participants: s.participants(),
            passed,
            loss_ratio: loss,
            delay_p99_ms: p99,
            tracks_expected: r.tracks_expected,
            tracks_received: r.tracks_received,
            failed_participants: r.participants.failed,
            server_cpu_percent_avg: r.server.cpu_percent_avg,
            server_rss_mb_max: r.server.rss_mb_max,
            why: (!passed).then(|| why.join(", ")),
        });
        if opts.progress {
            eprintln!(
                "  {}",
                if passed {
                    "pass".to_string()
                } else {
                    format!("FAIL: {}", why.join(", "))
                }
            );
        }
        if !passed {
            last = Some(r);
            break;
        }
        best = Some(r);
        subs += step;
    }
    let capacity = report::Capacity {
        subscribers_per_room: best.as_ref().map(|r| r.scenario.subscribers),
        participants: best.as_ref().map(|r| r.scenario.participants()),
        max_loss_ratio: sc.capacity_max_loss,
        max_p99_ms: sc.capacity_max_p99_ms,
        steps,
    };
    let mut r = best
        .or(last)
        .ok_or_else(|| anyhow::anyhow!("no capacity step ran"))?;
    r.capacity = Some(capacity);
    if sc.end_check {
        if opts.progress {
            eprintln!("end check: waiting for the server to let go of everything");
        }
        r.end_check = Some(runner::end_check(sc, baseline, announced).await);
    }
    Ok(r)
}
