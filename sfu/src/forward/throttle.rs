//! Rate limit for keyframe requests: at most one per interval.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Throttle {
    interval: Duration,
    last: Option<Instant>,
    /// Requests refused since the last allowed one.
    pub suppressed: u64,
}

impl Throttle {
    pub fn new(interval: Duration) -> Throttle {
        Throttle { interval, last: None, suppressed: 0 }
    }

    /// True (and the clock restarts) when a request may go out at `now`.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.interval => {
                self.suppressed += 1;
                false
            }
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_interval_on_virtual_time() {
        let t0 = Instant::now();
        let mut th = Throttle::new(Duration::from_millis(500));
        // 50 subscribers each ask every 20 ms for 2 s: 4 requests pass.
        let mut passed = 0;
        for step in 0..100u64 {
            let now = t0 + Duration::from_millis(step * 20);
            for _ in 0..50 {
                if th.allow(now) {
                    passed += 1;
                }
            }
        }
        assert_eq!(passed, 4);
        assert_eq!(th.suppressed, 100 * 50 - 4);
    }
}
