//! What participants measure, merged into one [`Collector`] that the runner reads every
//! second (progress, timeline) and at the end (report).
//!
//! Participants keep their counts locally and [`Collector::merge`] them a few times a
//! second, so the lock is taken rarely whatever the packet rate.

use std::collections::BTreeMap;

use crate::scenario::Departure;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// Delays are recorded in microseconds, up to a minute.
pub fn new_histogram() -> Histogram<u64> {
    histogram()
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Counters a participant accumulates between merges.
#[derive(Debug, Default, Clone)]
pub struct Delta {
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub packets_recv: u64,
    pub bytes_recv: u64,
    /// Media packets expected from sequence numbers, and the distinct ones received.
    pub expected: u64,
    pub received: u64,
    pub duplicates: u64,
    /// Media packets without our trailer (not made by the simulator).
    pub foreign: u64,
    pub send_errors: u64,
    pub nacks_sent: u64,
    pub plis_sent: u64,
    pub firs_sent: u64,
    pub nacks_recv: u64,
    pub keyframe_requests_recv: u64,
    /// One-way delays, microseconds.
    pub delays_us: Vec<u32>,
}

impl Delta {
    fn add(&mut self, o: &Delta) {
        self.packets_sent += o.packets_sent;
        self.bytes_sent += o.bytes_sent;
        self.packets_recv += o.packets_recv;
        self.bytes_recv += o.bytes_recv;
        self.expected += o.expected;
        self.received += o.received;
        self.duplicates += o.duplicates;
        self.foreign += o.foreign;
        self.send_errors += o.send_errors;
        self.nacks_sent += o.nacks_sent;
        self.plis_sent += o.plis_sent;
        self.firs_sent += o.firs_sent;
        self.nacks_recv += o.nacks_recv;
        self.keyframe_requests_recv += o.keyframe_requests_recv;
    }
}

/// Milliseconds from a participant's start to each step of its join; `None` when the
/// step did not happen (or does not apply: no publisher connection for a subscriber).
#[derive(Debug, Default, Clone, Serialize)]
pub struct JoinTimes {
    pub ws_open: Option<f64>,
    pub joined: Option<f64>,
    pub publisher_ice: Option<f64>,
    pub publisher_dtls: Option<f64>,
    pub subscriber_offer: Option<f64>,
    pub subscriber_ice: Option<f64>,
    pub subscriber_dtls: Option<f64>,
    pub first_packet: Option<f64>,
}

/// What a participant reports once, when it ends.
#[derive(Debug, Default, Clone)]
pub struct Final {
    pub join: JoinTimes,
    /// Distinct tracks it received media of (with our trailer).
    pub tracks_received: usize,
    /// Per track: ms from the track being available to its first packet.
    pub first_audio_ms: Vec<f64>,
    pub first_video_ms: Vec<f64>,
    /// Per track: RFC 3550 interarrival jitter at the end, ms.
    pub jitter_ms: Vec<f64>,
    /// Reached DTLS on both its peer connections.
    pub connected: bool,
    /// Ended by an error...
    pub failed: bool,
    /// ...after it had connected (the server or the network ended it).
    pub dropped: bool,
    /// Told to stop or leave before it had connected (within its connect timeout).
    pub still_joining: bool,
    /// Churn: how it was told to leave.
    pub departure: Option<Departure>,
    /// Tracks that were available to it long enough (`track_timeout`) while it was
    /// connected, and how many of those delivered media.
    pub tracks_expected: usize,
    pub tracks_received_expected: usize,
}

/// Everything merged so far.
pub struct Totals {
    pub sum: Delta,
    pub delay: Histogram<u64>,
    /// Since the runner last took the interval.
    pub interval: Delta,
    pub interval_delay: Histogram<u64>,
    /// How late the simulator's event loops woke (microseconds), and the worst since
    /// the runner last took the interval.
    pub loop_lag: Histogram<u64>,
    pub interval_lag_us: u64,
    pub joins: Vec<JoinTimes>,
    pub first_audio_ms: Vec<f64>,
    pub first_video_ms: Vec<f64>,
    pub jitter_ms: Vec<f64>,
    pub tracks_received: usize,
    /// Churn's count: see [`Final::tracks_expected`].
    pub tracks_expected_available: usize,
    pub tracks_received_available: usize,
    pub started: usize,
    pub connected_now: usize,
    pub ever_connected: usize,
    pub failed: usize,
    pub failed_joins: usize,
    pub dropped: usize,
    pub still_joining: usize,
    /// Ended without a departure and without an error: stopped with the run (quit).
    pub stopped_at_end: usize,
    pub departures: BTreeMap<Departure, u64>,
    pub finished: usize,
    /// Joins (starts) and ends since the runner last took the interval.
    pub interval_joins: u64,
    pub interval_ends: u64,
    pub errors: BTreeMap<String, u64>,
    /// Things that make the figures less trustworthy but are not the server's fault
    /// (the simulator falling behind its send clock).
    pub warnings: BTreeMap<String, u64>,
}

pub struct Collector {
    inner: Mutex<Option<Totals>>,
    /// Participants finished so far (the runner waits for all of them).
    finished: tokio::sync::watch::Sender<usize>,
}

impl Default for Collector {
    fn default() -> Self {
        Collector::new()
    }
}

impl Collector {
    pub fn new() -> Collector {
        Collector {
            inner: Mutex::new(Some(Totals {
                sum: Delta::default(),
                delay: histogram(),
                interval: Delta::default(),
                interval_delay: histogram(),
                loop_lag: histogram(),
                interval_lag_us: 0,
                joins: Vec::new(),
                first_audio_ms: Vec::new(),
                first_video_ms: Vec::new(),
                jitter_ms: Vec::new(),
                tracks_received: 0,
                tracks_expected_available: 0,
                tracks_received_available: 0,
                started: 0,
                connected_now: 0,
                ever_connected: 0,
                failed: 0,
                failed_joins: 0,
                dropped: 0,
                still_joining: 0,
                stopped_at_end: 0,
                departures: BTreeMap::new(),
                finished: 0,
                interval_joins: 0,
                interval_ends: 0,
                errors: BTreeMap::new(),
                warnings: BTreeMap::new(),
            })),
            finished: tokio::sync::watch::channel(0).0,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Totals) -> R) -> R {
        let mut g = self.inner.lock();
        f(g.as_mut().expect("collector not finished"))
    }

    /// Adds a participant's counts and empties `d` (its buffers are kept).
    pub fn merge(&self, d: &mut Delta) {
        self.with(|t| {
            t.sum.add(d);
            t.interval.add(d);
            for &us in &d.delays_us {
                let v = (us as u64).clamp(1, 60_000_000);
                let _ = t.delay.record(v);
                let _ = t.interval_delay.record(v);
            }
        });
        let mut delays = std::mem::take(&mut d.delays_us);
        delays.clear();
        *d = Delta {
            delays_us: delays,
            ..Delta::default()
        };
    }

    pub fn started(&self) {
        self.with(|t| {
            t.started += 1;
            t.interval_joins += 1;
        });
    }

    /// Participants finished so far, as a watch to wait on.
    pub fn finished_count(&self) -> tokio::sync::watch::Receiver<usize> {
        self.finished.subscribe()
    }

    pub fn connected(&self, now: bool) {
        self.with(|t| {
            if now {
                t.connected_now += 1;
                t.ever_connected += 1;
            } else {
                t.connected_now -= 1;
            }
        });
    }

    pub fn error(&self, e: impl Into<String>) {
        let e = e.into();
        tracing::debug!("participant error: {e}");
        self.with(|t| *t.errors.entry(e).or_default() += 1);
    }

    /// An event loop woke `us` microseconds after it asked to.
    pub fn loop_lag(&self, us: u64) {
        self.with(|t| {
            let _ = t.loop_lag.record(us.clamp(1, 60_000_000));
            t.interval_lag_us = t.interval_lag_us.max(us);
        });
    }

    pub fn warning(&self, w: impl Into<String>) {
        let w = w.into();
        self.with(|t| *t.warnings.entry(w).or_default() += 1);
    }

    pub fn finish(&self, f: Final) {
        self.with(|t| {
            t.finished += 1;
            t.interval_ends += 1;
            t.failed += f.failed as usize;
            t.dropped += f.dropped as usize;
            t.failed_joins += (f.failed && !f.dropped) as usize;
            t.still_joining += f.still_joining as usize;
            match f.departure {
                Some(d) => *t.departures.entry(d).or_default() += 1,
                None if !f.failed => t.stopped_at_end += 1,
                None => {}
            }
            t.tracks_expected_available += f.tracks_expected;
            t.tracks_received_available += f.tracks_received_expected;
            t.tracks_received += f.tracks_received;
            t.joins.push(f.join);
            t.first_audio_ms.extend(f.first_audio_ms);
            t.first_video_ms.extend(f.first_video_ms);
            t.jitter_ms.extend(f.jitter_ms);
        });
        self.finished.send_modify(|n| *n += 1);
    }

    /// The counts since the last call, and the delays recorded meanwhile.
    pub fn take_interval(&self) -> Interval {
        self.with(|t| Interval {
            delta: std::mem::take(&mut t.interval),
            delay: std::mem::replace(&mut t.interval_delay, histogram()),
            connected: t.connected_now,
            live: t.started - t.finished,
            joins: std::mem::take(&mut t.interval_joins),
            ends: std::mem::take(&mut t.interval_ends),
            lag_max_us: std::mem::take(&mut t.interval_lag_us),
        })
    }

    /// Reads the totals.
    pub fn read<R>(&self, f: impl FnOnce(&Totals) -> R) -> R {
        self.with(|t| f(t))
    }
}

/// One interval of the run (a second, for the timeline).
pub struct Interval {
    pub delta: Delta,
    /// Delays recorded in it (microseconds).
    pub delay: Histogram<u64>,
    /// Participants connected now...
    pub connected: usize,
    /// ...and started but not finished (joining, connected or leaving).
    pub live: usize,
    /// Participants started and finished in it.
    pub joins: u64,
    pub ends: u64,
    /// The simulator's worst event-loop lag in it, microseconds.
    pub lag_max_us: u64,
}

/// p50/p95/p99/max/mean of a set of samples (ms).
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
pub struct Dist {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Dist {
    pub fn of(samples: impl IntoIterator<Item = f64>) -> Dist {
        let mut v: Vec<f64> = samples.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Dist::default();
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
        Dist {
            count: v.len(),
            p50: round2(q(0.50)),
            p95: round2(q(0.95)),
            p99: round2(q(0.99)),
            max: round2(*v.last().unwrap()),
            mean: round2(v.iter().sum::<f64>() / v.len() as f64),
        }
    }

    /// From a histogram of microseconds, in ms.
    pub fn of_histogram(h: &Histogram<u64>) -> Dist {
        if h.is_empty() {
            return Dist::default();
        }
        let ms = |us: u64| round2(us as f64 / 1000.0);
        Dist {
            count: h.len() as usize,
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: round2(h.mean() / 1000.0),
        }
    }
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dist_quantiles() {
        let d = Dist::of((1..=100).map(|x| x as f64));
        assert_eq!(
            (d.p50, d.p95, d.p99, d.max, d.count),
            (50.0, 95.0, 99.0, 100.0, 100)
        );
        assert_eq!(Dist::of([]).count, 0);
    }

    #[test]
    fn ends_are_told_apart() {
        let c = Collector::new();
        let ends = [
            // Never connected: a failed join.
            Final {
                failed: true,
                ..Final::default()
            },
            // Connected, then ended by an error: dropped.
            Final {
                connected: true,
                failed: true,
                dropped: true,
                ..Final::default()
            },
            Final {
                connected: true,
                departure: Some(Departure::Vanish),
                ..Final::default()
            },
            Final {
                still_joining: true,
                departure: Some(Departure::Leave),
                ..Final::default()
            },
            // Stopped with the run.
            Final {
                connected: true,
                ..Final::default()
            },
        ];
        let mut done = c.finished_count();
        for f in ends {
            c.started();
            c.finish(f);
        }
        assert_eq!(*done.borrow_and_update(), 5);
        c.read(|t| {
            assert_eq!((t.failed, t.failed_joins, t.dropped), (2, 1, 1));
            assert_eq!((t.still_joining, t.stopped_at_end), (1, 1));
            assert_eq!(t.departures[&Departure::Vanish], 1);
            assert_eq!(t.departures[&Departure::Leave], 1);
        });
        let i = c.take_interval();
        assert_eq!((i.joins, i.ends, i.live), (5, 5, 0));
    }

    #[test]
    fn merge_moves_counts_and_delays() {
        let c = Collector::new();
        let mut d = Delta {
            packets_recv: 3,
            delays_us: vec![1000, 2000, 3000],
            ..Delta::default()
        };
        c.merge(&mut d);
        assert_eq!(d.packets_recv, 0);
        assert!(d.delays_us.is_empty());
        let i = c.take_interval();
        assert_eq!(i.delta.packets_recv, 3);
        assert_eq!(i.delay.len(), 3);
        assert_eq!(c.take_interval().delta.packets_recv, 0);
        c.read(|t| assert_eq!(t.delay.len(), 3));
    }
}
