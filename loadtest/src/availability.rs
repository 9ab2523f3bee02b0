//! Which tracks a participant could have received, and for how long: from the
//! server's `joined`, `participant_joined`, `track_published`, `track_unpublished` and
//! `participant_left`, and the simulator's own knowledge of when a publisher stopped
//! (a vanished publisher's tracks stay announced for the server's resume window, but
//! carry nothing).
//!
//! With churn the set of tracks a participant should receive changes all the time; a
//! track counts as expected when it was available to the participant for at least a
//! minimum time (`track_timeout`), so the report's `tracks_expected` stays honest.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Window {
    /// Participant id of the publisher.
    owner: String,
    from: Instant,
    until: Option<Instant>,
}

/// One participant's view of the room's tracks over time.
#[derive(Debug, Default)]
pub struct Availability {
    /// Our own participant id: the server announces our tracks to us too.
    me: Option<String>,
    /// Participant id -> identity.
    identities: HashMap<String, String>,
    tracks: HashMap<String, Window>,
}

impl Availability {
    /// Our own participant id (from `joined`).
    pub fn me(&mut self, id: &str) {
        self.me = Some(id.to_string());
    }

    /// A participant of the room (from `joined` or `participant_joined`).
    pub fn participant(&mut self, id: &str, identity: &str) {
        self.identities
            .entry(id.to_string())
            .or_insert_with(|| identity.to_string());
    }

    /// Track `id` of participant `owner` is available from `at` (the first time
    /// counts). Our own tracks are not for us.
    pub fn track(&mut self, id: &str, owner: &str, at: Instant) {
        if self.me.as_deref() == Some(owner) {
            return;
        }
        self.tracks.entry(id.to_string()).or_insert_with(|| Window {
            owner: owner.to_string(),
            from: at,
            until: None,
        });
    }

    /// When track `id` became available, if it did.
    pub fn since(&self, id: &str) -> Option<Instant> {
        self.tracks.get(id).map(|w| w.from)
    }

    /// Track `id`'s window and publisher, relative to `t0`, for logs.
    pub fn describe(&self, id: &str, t0: Instant) -> String {
        let rel = |t: Instant| {
            let s = t.saturating_duration_since(t0).as_secs_f64()
                - t0.saturating_duration_since(t).as_secs_f64();
            format!("{s:.2}s")
        };
        match self.tracks.get(id) {
            Some(w) => format!(
                "from {} until {} of {} ({})",
                rel(w.from),
                w.until.map(rel).unwrap_or_else(|| "-".into()),
                w.owner,
                self.identities
                    .get(&w.owner)
                    .map(String::as_str)
                    .unwrap_or("?")
            ),
            None => "unknown".into(),
        }
    }

    /// Track `id` was unpublished at `at`.
    pub fn track_gone(&mut self, id: &str, at: Instant) {
        if let Some(w) = self.tracks.get_mut(id) {
            w.until.get_or_insert(at);
        }
    }

    /// Participant `owner` left at `at`: its tracks end.
    pub fn participant_gone(&mut self, owner: &str, at: Instant) {
        for w in self.tracks.values_mut().filter(|w| w.owner == owner) {
            w.until.get_or_insert(at);
        }
    }

    /// The tracks that were available to us for at least `min` between `since` (we
    /// could receive: our join) and `end` (we stopped), their publisher still sending:
    /// `stopped(identity)` says when a publisher of this run stopped sending, if it did.
    pub fn expected<'a>(
        &'a self,
        since: Instant,
        end: Instant,
        min: Duration,
        stopped: impl Fn(&str) -> Option<Instant> + 'a,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.tracks.iter().filter_map(move |(id, w)| {
            let from = w.from.max(since);
            let mut until = w.until.unwrap_or(end).min(end);
            if let Some(t) = self.identities.get(&w.owner).and_then(|i| stopped(i)) {
                until = until.min(t);
            }
            (until.saturating_duration_since(from) >= min).then_some(id.as_str())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_track_counts_when_available_long_enough() {
        let t0 = Instant::now();
        let s = |x: u64| t0 + Duration::from_secs(x);
        let mut a = Availability::default();
        a.me("PA_0");
        a.track("TR_mine", "PA_0", s(0));
        a.participant("PA_1", "pub-1");
        a.participant("PA_2", "pub-2");
        a.participant("PA_3", "pub-3");
        a.participant("PA_4", "pub-4");
        // Available from our join (t=0) to the end (t=20).
        a.track("TR_long", "PA_1", s(0));
        // Unpublished after 3 s: too short to count.
        a.track("TR_short", "PA_2", s(0));
        a.track_gone("TR_short", s(3));
        // Its publisher vanished at t=2 (the server announces it until its resume
        // window ends, but nothing flows): not expected.
        a.track("TR_vanished", "PA_3", s(1));
        // Published at t=16: 4 s before the end.
        a.track("TR_late", "PA_4", s(16));
        a.participant_gone("PA_2", s(10));
        let stopped = |identity: &str| (identity == "pub-3").then(|| s(2));
        let mut e: Vec<_> = a
            .expected(s(0), s(20), Duration::from_secs(5), stopped)
            .collect();
        e.sort();
        assert_eq!(e, ["TR_long"]);
        // With a shorter minimum the late track counts too; the first `until` stays.
        let mut e: Vec<_> = a
            .expected(s(0), s(20), Duration::from_secs(3), |_| None)
            .collect();
        e.sort();
        assert_eq!(e, ["TR_late", "TR_long", "TR_short", "TR_vanished"]);
    }

    #[test]
    fn our_own_join_bounds_the_window() {
        let t0 = Instant::now();
        let mut a = Availability::default();
        a.track("TR_1", "PA_1", t0);
        // We joined at t=18 and stopped at t=20: 2 s of it.
        let n = a
            .expected(
                t0 + Duration::from_secs(18),
                t0 + Duration::from_secs(20),
                Duration::from_secs(5),
                |_| None,
            )
            .count();
        assert_eq!(n, 0);
        assert_eq!(a.since("TR_1"), Some(t0));
    }
}
