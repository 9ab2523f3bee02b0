//! Active speakers from the audio-level header extension (RFC 6464), with hysteresis.
//!
//! Each audio packet reports a level in -dBov (0 = loudest, 127 = silence). Every tick
//! (the caller's, ~200 ms) each participant's mean level over the tick is smoothed; a
//! participant becomes a speaker above `enter` and stops being one below `exit`
//! (`exit < enter`), so a voice near the threshold does not flicker. Silence, DTX and
//! muting all decay the level.

use std::collections::HashMap;
use std::hash::Hash;

#[derive(Debug, Default, Clone)]
struct Entry {
    sum: f32,
    count: u32,
    smoothed: f32,
    active: bool,
}

#[derive(Debug, Clone)]
pub struct SpeakerDetector<K> {
    entries: HashMap<K, Entry>,
    enter: f32,
    exit: f32,
    last: Vec<K>,
}

/// Loudness 0.0..=1.0 of a -dBov value.
pub fn loudness(dbov: i8) -> f32 {
    let d = (dbov as i16).unsigned_abs().min(127) as f32;
    (127.0 - d) / 127.0
}

impl<K: Hash + Eq + Clone + Ord> Default for SpeakerDetector<K> {
    fn default() -> Self {
        // Enter above -50 dBov, leave below -62 dBov.
        SpeakerDetector { entries: HashMap::new(), enter: loudness(-50), exit: loudness(-62), last: Vec::new() }
    }
}

impl<K: Hash + Eq + Clone + Ord> SpeakerDetector<K> {
    /// One audio packet's level.
    pub fn observe(&mut self, who: &K, dbov: i8) {
        let e = match self.entries.get_mut(who) {
            Some(e) => e,
            None => self.entries.entry(who.clone()).or_default(),
        };
        e.sum += loudness(dbov);
        e.count += 1;
    }

    pub fn remove(&mut self, who: &K) {
        self.entries.remove(who);
    }

    /// Ends a tick. Returns the speakers, loudest first, when the set changed.
    pub fn tick(&mut self) -> Option<Vec<(K, f32)>> {
        let mut speakers: Vec<(K, f32)> = Vec::new();
        for (k, e) in self.entries.iter_mut() {
            let mean = if e.count > 0 { e.sum / e.count as f32 } else { 0.0 };
            e.smoothed = 0.5 * e.smoothed + 0.5 * mean;
            e.sum = 0.0;
            e.count = 0;
            e.active = if e.active { e.smoothed >= self.exit } else { e.smoothed >= self.enter };
            if e.active {
                speakers.push((k.clone(), e.smoothed));
            }
        }
        speakers.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut set: Vec<K> = speakers.iter().map(|s| s.0.clone()).collect();
        set.sort();
        if set == self.last {
            return None;
        }
        self.last = set;
        Some(speakers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_tick(d: &mut SpeakerDetector<u32>, levels: &[(u32, i8)]) -> Option<Vec<u32>> {
        for &(k, l) in levels {
            for _ in 0..10 {
                d.observe(&k, l);
            }
        }
        d.tick().map(|v| v.into_iter().map(|s| s.0).collect())
    }

    #[test]
    fn loud_voice_becomes_speaker_and_hysteresis_holds() {
        let mut d = SpeakerDetector::default();
        assert_eq!(run_tick(&mut d, &[(1, -127), (2, -127)]), None);
        // Loud speech for two ticks: speaker after smoothing.
        let first = run_tick(&mut d, &[(1, -20), (2, -127)]);
        let second = run_tick(&mut d, &[(1, -20), (2, -127)]);
        assert_eq!(first.or(second), Some(vec![1]));
        // Level hovering between exit and enter keeps speaker 1, does not add 2.
        for _ in 0..5 {
            assert_eq!(run_tick(&mut d, &[(1, -55), (2, -55)]), None);
        }
        // Silence: 1 stops speaking within a few ticks.
        let mut out = None;
        for _ in 0..5 {
            if let Some(v) = run_tick(&mut d, &[(1, -127), (2, -127)]) {
                out = Some(v);
                break;
            }
        }
        assert_eq!(out, Some(vec![]));
    }

    #[test]
    fn loudest_first() {
        let mut d = SpeakerDetector::default();
        let mut last = None;
        for _ in 0..6 {
            for _ in 0..10 {
                d.observe(&1u32, -40);
                d.observe(&2u32, -10);
            }
            if let Some(v) = d.tick() {
                last = Some(v);
            }
        }
        let v = last.expect("speakers reported");
        assert_eq!(v.iter().map(|s| s.0).collect::<Vec<_>>(), vec![2, 1]);
        assert!(v[0].1 > v[1].1);
    }
}
