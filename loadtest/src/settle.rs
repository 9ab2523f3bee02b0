//! The end check: once every participant has gone, the server must let go of them all.
//! A participant whose WebSocket ended without `leave` is removed within the server's
//! resume window (+1 s), an empty room closes after its grace (+1 s), and the gauges
//! are updated once a second; so the check reads `/metrics` until the counts are back
//! at what they were before the run, for at most resume window + room grace + 3 s.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::http;
use crate::stats::round2;

/// What the check may wait beyond the resume window and the room grace: a second for
/// each of the server's once-a-second sweeps (sessions, then rooms) and one for its
/// gauges.
pub const SLACK: Duration = Duration::from_secs(3);
/// How often `/metrics` is read meanwhile (the gauges change once a second).
const POLL: Duration = Duration::from_millis(500);

/// The SFU's object counts and the process's memory, from `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServerCounts {
    pub participants: i64,
    pub rooms: i64,
    pub tracks: i64,
    pub subscriptions: i64,
    /// Peer connections (`maxd_sfu_peers`), when the server exports them.
    pub peers: Option<i64>,
    pub rss_mb: Option<f64>,
}

impl ServerCounts {
    /// `None` when the text has no SFU gauges (not a node with the `sfu` role).
    pub fn parse(metrics: &str) -> Option<ServerCounts> {
        let g = |name: &str| http::metric(metrics, name).map(|v| v as i64);
        Some(ServerCounts {
            participants: g("maxd_sfu_participants")?,
            rooms: g("maxd_sfu_rooms")?,
            tracks: g("maxd_sfu_tracks").unwrap_or(0),
            subscriptions: g("maxd_sfu_subscriptions").unwrap_or(0),
            peers: g("maxd_sfu_peers"),
            rss_mb: http::metric(metrics, "maxd_process_resident_memory_bytes")
                .map(|b| round2(b / 1048576.0)),
        })
    }

    /// The counts still above `baseline`, by name, with how many more.
    pub fn above(&self, baseline: &ServerCounts) -> BTreeMap<String, i64> {
        let mut m = BTreeMap::new();
        let mut check = |name: &str, now: i64, before: i64| {
            if now > before {
                m.insert(name.to_string(), now - before);
            }
        };
        check("participants", self.participants, baseline.participants);
        check("rooms", self.rooms, baseline.rooms);
        check("tracks", self.tracks, baseline.tracks);
        check("subscriptions", self.subscriptions, baseline.subscriptions);
        if let (Some(p), Some(b)) = (self.peers, baseline.peers) {
            check("peers", p, b);
        }
        m
    }
}

/// Reads the server's counts.
pub async fn read(url: &str) -> Result<ServerCounts> {
    let (status, body) = http::request(url, "GET", "/metrics", None, None)
        .await
        .context("read /metrics")?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    ServerCounts::parse(&body).context("/metrics has no maxd_sfu_participants: not an SFU node?")
}

/// The end check's findings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EndCheck {
    /// The server's resume window used for the limit, and where it came from:
    /// `option` (`--resume-window`), `server` (its `joined`), `default` (10 s).
    pub resume_window_s: f64,
    pub resume_window_from: String,
    /// The server's empty-room grace used for the limit (`--room-grace`).
    pub room_grace_s: f64,
    /// The longest the check would wait: resume window + room grace + 3 s.
    pub limit_s: f64,
    /// How long it waited for the counts to come back.
    pub waited_s: f64,
    /// Everything was back at the baseline within the limit.
    pub settled: bool,
    /// Before the run...
    pub baseline: Option<ServerCounts>,
    /// ...and at the end of the check.
    pub end: Option<ServerCounts>,
    /// What was still there at the end, above the baseline (empty when settled).
    pub left_behind: BTreeMap<String, i64>,
    /// Why the check could not be made.
    pub error: Option<String>,
    /// Every reading, for the timeline.
    #[serde(skip)]
    pub samples: Vec<(Instant, ServerCounts)>,
}

/// Waits until the server's counts are back at `baseline`, at most `resume` + `grace`
/// + [`SLACK`].
pub async fn settle(
    url: &str,
    baseline: Option<ServerCounts>,
    resume: (Duration, &str),
    grace: Duration,
) -> EndCheck {
    let limit = resume.0 + grace + SLACK;
    let mut check = EndCheck {
        resume_window_s: resume.0.as_secs_f64(),
        resume_window_from: resume.1.to_string(),
        room_grace_s: grace.as_secs_f64(),
        limit_s: limit.as_secs_f64(),
        baseline: baseline.clone(),
        ..EndCheck::default()
    };
    let Some(base) = baseline else {
        check.error = Some("the server's /metrics could not be read before the run".into());
        return check;
    };
    let start = Instant::now();
    let deadline = start + limit;
    loop {
        match read(url).await {
            Ok(c) => {
                check.samples.push((Instant::now(), c.clone()));
                check.left_behind = c.above(&base);
                check.end = Some(c);
                check.error = None;
                if check.left_behind.is_empty() {
                    check.settled = true;
                    break;
                }
            }
            Err(e) => check.error = Some(format!("{e:#}")),
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        // The server announces nothing when it lets go of a participant or a room:
        // its gauges are read again until they are back or the limit passes.
        tokio::time::sleep_until((now + POLL).min(deadline).into()).await;
    }
    check.waited_s = round2(start.elapsed().as_secs_f64());
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP maxd_sfu_rooms Open rooms\nmaxd_sfu_rooms 2\nmaxd_sfu_participants 5\n\
        maxd_sfu_tracks 4\nmaxd_sfu_subscriptions 6\nmaxd_process_resident_memory_bytes 104857600\n";

    #[test]
    fn parses_the_gauges_and_names_what_is_left() {
        let c = ServerCounts::parse(TEXT).unwrap();
        assert_eq!(
            (c.participants, c.rooms, c.tracks, c.subscriptions),
            (5, 2, 4, 6)
        );
        assert_eq!(c.peers, None);
        assert_eq!(c.rss_mb, Some(100.0));
        let base = ServerCounts {
            participants: 1,
            rooms: 2,
            tracks: 4,
            subscriptions: 0,
            peers: None,
            rss_mb: Some(50.0),
        };
        let left = c.above(&base);
        assert_eq!(
            left.into_iter().collect::<Vec<_>>(),
            [
                ("participants".to_string(), 4),
                ("subscriptions".to_string(), 6)
            ]
        );
        // Memory is reported, never judged: it is not in `above`.
        assert!(c.above(&c).is_empty());
        assert!(ServerCounts::parse("maxd_chat_connections 3\n").is_none());
    }
}
