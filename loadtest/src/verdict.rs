//! Pass or fail: the checks a run must meet, and the `loadtest` exit codes (CI runs the
//! simulator and reads its exit code).

use serde::Serialize;

use crate::report::Report;

/// Every check passed.
pub const EXIT_PASSED: i32 = 0;
/// The simulator could not run (bad options or scenario, a file it could not write).
pub const EXIT_ERROR: i32 = 1;
/// The command line could not be parsed (clap's own code).
pub const EXIT_USAGE: i32 = 2;
/// The run finished and a check failed: see the report's `verdict.failures`.
pub const EXIT_FAILED: i32 = 3;

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// `participants`, `errors`, `loss`, `tracks`, `removals` or `left_behind`.
    pub check: &'static str,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub passed: bool,
    pub exit_code: i32,
    pub failures: Vec<Failure>,
}

impl Default for Verdict {
    /// Not judged yet: a failure, so nothing passes by accident.
    fn default() -> Self {
        Verdict {
            passed: false,
            exit_code: EXIT_FAILED,
            failures: vec![Failure {
                check: "judged",
                detail: "the run was not judged".into(),
            }],
        }
    }
}

/// Judges a finished run against its scenario's thresholds.
pub fn judge(r: &Report) -> Verdict {
    let sc = &r.scenario;
    let p = &r.participants;
    let mut failures = Vec::new();
    let mut fail = |check, detail: String| failures.push(Failure { check, detail });
    if p.started > 0 && p.connected == 0 {
        fail(
            "participants",
            format!("none of {} participants connected", p.started),
        );
    }
    if r.errors > sc.max_errors {
        fail(
            "errors",
            format!("{} errors (at most {} allowed)", r.errors, sc.max_errors),
        );
    }
    if r.loss_ratio > sc.max_loss {
        fail(
            "loss",
            format!(
                "loss {:.3} % (at most {:.3} % allowed)",
                r.loss_ratio * 100.0,
                sc.max_loss * 100.0
            ),
        );
    }
    if r.tracks_received < r.tracks_expected {
        fail(
            "tracks",
            format!(
                "{} of {} expected tracks never arrived",
                r.tracks_expected - r.tracks_received,
                r.tracks_expected
            ),
        );
    }
    if let Some(c) = &r.churn {
        let m = &c.removals;
        if m.late + m.unseen > 0 {
            fail(
                "removals",
                format!(
                    "{} of {} leavers were not let go within {:.1} s ({} late, {} never): {}",
                    m.late + m.unseen,
                    m.judged,
                    m.limit_ms / 1000.0,
                    m.late,
                    m.unseen,
                    m.examples.join("; ")
                ),
            );
        }
    }
    if let Some(e) = &r.end_check {
        if !e.settled {
            let what = if e.left_behind.is_empty() {
                e.error.clone().unwrap_or_else(|| "unknown".into())
            } else {
                e.left_behind
                    .iter()
                    .map(|(k, n)| format!("{n} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            fail(
                "left_behind",
                format!(
                    "the server still held {what} {:.0} s after the run (resume window {:.0} s + room grace {:.0} s + 3 s)",
                    e.waited_s, e.resume_window_s, e.room_grace_s
                ),
            );
        }
    }
    Verdict {
        passed: failures.is_empty(),
        exit_code: if failures.is_empty() {
            EXIT_PASSED
        } else {
            EXIT_FAILED
        },
        failures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Participants;
    use crate::settle::EndCheck;

    fn passing() -> Report {
        Report {
            participants: Participants {
                started: 4,
                connected: 4,
                ..Participants::default()
            },
            tracks_expected: 6,
            tracks_received: 6,
            ..Report::default()
        }
    }

    #[test]
    fn a_clean_run_passes() {
        let v = judge(&passing());
        assert!(v.passed, "{v:?}");
        assert_eq!(v.exit_code, EXIT_PASSED);
    }

    #[test]
    fn each_check_fails_on_its_own() {
        type Spoil = Box<dyn Fn(&mut Report)>;
        let cases: Vec<(&str, Spoil)> = vec![
            ("participants", Box::new(|r| r.participants.connected = 0)),
            ("errors", Box::new(|r| r.errors = 1)),
            ("loss", Box::new(|r| r.loss_ratio = 0.02)),
            ("tracks", Box::new(|r| r.tracks_received = 5)),
            (
                "removals",
                Box::new(|r| {
                    r.churn = Some(crate::report::ChurnFigures {
                        rate: 1.0,
                        leave_mix: Default::default(),
                        seed: 1,
                        newcomers: 1,
                        removals: crate::churn::Removals {
                            judged: 1,
                            unseen: 1,
                            ..Default::default()
                        },
                    })
                }),
            ),
            (
                "left_behind",
                Box::new(|r| {
                    let mut e = EndCheck::default();
                    e.left_behind.insert("participants".into(), 13);
                    r.end_check = Some(e);
                }),
            ),
        ];
        for (check, spoil) in cases {
            let mut r = passing();
            spoil(&mut r);
            let v = judge(&r);
            assert!(!v.passed, "{check}");
            assert_eq!(v.exit_code, EXIT_FAILED);
            assert_eq!(
                v.failures.iter().map(|f| f.check).collect::<Vec<_>>(),
                [check]
            );
        }
    }

    #[test]
    fn thresholds_come_from_the_scenario() {
        let mut r = passing();
        r.errors = 3;
        r.loss_ratio = 0.02;
        r.scenario.max_errors = 3;
        r.scenario.max_loss = 0.05;
        assert!(judge(&r).passed);
        // Not judged is not passed.
        assert!(!Verdict::default().passed);
    }
}
