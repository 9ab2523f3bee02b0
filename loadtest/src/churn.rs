//! Churn: who leaves next, how, and who takes the seat (seeded, so a run's choices can
//! be repeated: `seed` in the report); and whether the server let each leaver go in
//! time, as the others in its room saw it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::participant::Spec;
use crate::scenario::{Departure, LeaveMix};
use crate::stats::{Dist, round2};

/// The server's rule: a participant whose WebSocket ended without `leave` and did not
/// resume is gone within its resume window + 1 s. This much more is allowed for the
/// `participant_left` message to reach the others and for a busy machine's scheduling.
pub const REMOVAL_SLACK: Duration = Duration::from_secs(1);
/// Leavers named in the report when late or never seen.
const EXAMPLES: usize = 5;

pub struct Churn {
    rng: StdRng,
    mix: LeaveMix,
}

impl Churn {
    pub fn new(seed: u64, mix: LeaveMix) -> Churn {
        Churn {
            rng: StdRng::seed_from_u64(seed),
            mix,
        }
    }

    /// Which of `live` participants leaves (an index) and how.
    pub fn pick(&mut self, live: usize) -> (usize, Departure) {
        let who = self.rng.random_range(0..live.max(1));
        let how = self
            .mix
            .pick(self.rng.random_range(0..self.mix.total().max(1)));
        (who, how)
    }

    /// A new participant (another identity) in the seat of `old`, as participant
    /// number `index` of the run.
    pub fn replacement(old: &Spec, index: usize) -> Spec {
        Spec {
            index,
            identity: format!("{}-j{index}", old.seat),
            ..old.clone()
        }
    }
}

/// How long after a churned participant left the others in its room heard
/// `participant_left` for it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Removals {
    /// Milliseconds from the departure to the first `participant_left`, by kind.
    pub after_ms: BTreeMap<String, Dist>,
    /// Resume window + 1 s + [`REMOVAL_SLACK`], ms...
    pub limit_ms: f64,
    /// ...plus, for `silent` leavers, the time the server takes to notice their socket
    /// went silent (its WebSocket idle timeout and ping interval), ms.
    pub silent_extra_ms: f64,
    /// Departures early enough for the limit to pass while the run was on (the others
    /// would have heard it); later ones are not judged.
    pub judged: usize,
    /// Judged departures heard after the limit...
    pub late: usize,
    /// ...or never heard.
    pub unseen: usize,
    /// A few of those: `identity (kind): what`.
    pub examples: Vec<String>,
}

/// Judges each departure against `limit` (`silent` ones against `limit + silent_extra`:
/// the server learns only by its own timeouts that their socket went silent);
/// `observed_until` is when the others stopped listening (the end of the run).
pub fn removals(
    departures: &HashMap<String, (Instant, Departure)>,
    seen: &HashMap<String, Instant>,
    limit: Duration,
    silent_extra: Duration,
    observed_until: Instant,
) -> Removals {
    let mut after: BTreeMap<Departure, Vec<f64>> = BTreeMap::new();
    let mut r = Removals {
        limit_ms: limit.as_secs_f64() * 1000.0,
        silent_extra_ms: silent_extra.as_secs_f64() * 1000.0,
        ..Removals::default()
    };
    let mut sorted: Vec<_> = departures.iter().collect();
    sorted.sort_by_key(|(_, (t, _))| *t);
    for (identity, &(t, kind)) in sorted {
        let limit = if kind == Departure::Silent { limit + silent_extra } else { limit };
        let heard = seen.get(identity).map(|s| s.saturating_duration_since(t));
        if let Some(h) = heard {
            after
                .entry(kind)
                .or_default()
                .push(h.as_secs_f64() * 1000.0);
        }
        if t + limit > observed_until {
            continue;
        }
        r.judged += 1;
        let what = match heard {
            Some(h) if h > limit => {
                r.late += 1;
                format!("heard after {:.1} s", h.as_secs_f64())
            }
            Some(_) => continue,
            None => {
                r.unseen += 1;
                "never heard".to_string()
            }
        };
        if r.examples.len() < EXAMPLES {
            r.examples
                .push(format!("{identity} ({}): {what}", kind.name()));
        }
    }
    r.after_ms = after
        .into_iter()
        .map(|(k, v)| (k.name().to_string(), Dist::of(v)))
        .collect();
    r.limit_ms = round2(r.limit_ms);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_are_judged_against_the_limit() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let deps: HashMap<String, (Instant, Departure)> = [
            ("a", (s(0), Departure::Leave)),
            ("b", (s(0), Departure::Vanish)),
            ("c", (s(1000), Departure::Close)),
            ("d", (s(2000), Departure::Silent)),
            // Too close to the end to be judged, though never heard.
            ("e", (s(9000), Departure::Vanish)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let seen: HashMap<String, Instant> = [("a", s(5)), ("b", s(3000)), ("c", s(6000))]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let r = removals(&deps, &seen, Duration::from_secs(4), Duration::ZERO, s(10_000));
        assert_eq!((r.judged, r.late, r.unseen), (4, 1, 1));
        assert_eq!(r.limit_ms, 4000.0);
        assert_eq!(r.after_ms["leave"].max, 5.0);
        assert_eq!(r.after_ms["vanish"].count, 1);
        assert_eq!(r.after_ms["close"].max, 5000.0);
        assert_eq!(
            r.examples,
            ["c (close): heard after 5.0 s", "d (silent): never heard"]
        );
    }

    #[test]
    fn silent_leavers_get_the_servers_idle_timeout_too() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let deps: HashMap<String, (Instant, Departure)> =
            [("a".to_string(), (s(0), Departure::Silent)), ("b".to_string(), (s(0), Departure::Vanish))].into();
        let seen: HashMap<String, Instant> = [("a".to_string(), s(7000)), ("b".to_string(), s(7000))].into();
        let r = removals(&deps, &seen, Duration::from_secs(4), Duration::from_secs(5), s(20_000));
        assert_eq!((r.judged, r.late, r.unseen), (2, 1, 0));
        assert_eq!(r.examples, ["b (vanish): heard after 7.0 s"]);
    }

    fn spec() -> Spec {
        Spec {
            index: 3,
            room: "r-0".into(),
            seat: "pub-0-1".into(),
            identity: "pub-0-1".into(),
            publish: true,
            slot: 1,
            expected_tracks: 2,
        }
    }

    #[test]
    fn same_seed_same_choices_and_the_mix_is_kept() {
        let mix: LeaveMix = "leave=1,close=1,vanish=2".parse().unwrap();
        let mut a = Churn::new(7, mix);
        let mut b = Churn::new(7, mix);
        let xs: Vec<_> = (0..1000).map(|_| a.pick(10)).collect();
        assert_eq!(xs, (0..1000).map(|_| b.pick(10)).collect::<Vec<_>>());
        assert!(xs.iter().all(|&(i, _)| i < 10));
        let n = |d| xs.iter().filter(|x| x.1 == d).count();
        assert_eq!(n(Departure::Silent), 0);
        // 1:1:2 within a loose margin (1000 draws).
        assert!(
            (180..320).contains(&n(Departure::Leave)),
            "{}",
            n(Departure::Leave)
        );
        assert!(
            (180..320).contains(&n(Departure::Close)),
            "{}",
            n(Departure::Close)
        );
        assert!(
            (400..600).contains(&n(Departure::Vanish)),
            "{}",
            n(Departure::Vanish)
        );
    }

    #[test]
    fn a_replacement_takes_the_seat_with_a_new_identity() {
        let r = Churn::replacement(&spec(), 42);
        assert_eq!(r.index, 42);
        assert_eq!(r.identity, "pub-0-1-j42");
        assert_eq!((r.room.as_str(), r.seat.as_str()), ("r-0", "pub-0-1"));
        assert!(r.publish && r.slot == 1);
    }
}
