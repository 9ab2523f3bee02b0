//! Upload starts per user and minute: a GCRA (generic cell rate algorithm) per user,
//! which is a token bucket of `per_minute` tokens refilled evenly over a minute, kept as
//! one number per user (the time at which the bucket would be full again).

use std::collections::HashMap;

use parking_lot::Mutex;

/// Per-user limit of events per minute, bursts of up to `per_minute` allowed.
pub struct PerMinute {
    per_minute: u32,
    /// User -> "theoretical arrival time" (ms): when the user's bucket is full again.
    full_at: Mutex<HashMap<String, u64>>,
}

impl PerMinute {
    /// `per_minute` = 0: unlimited.
    pub fn new(per_minute: u32) -> PerMinute {
        PerMinute {
            per_minute,
            full_at: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one event for `user` at `now_ms`; `Err(ms)` = refused, retry in that many
    /// milliseconds.
    pub fn take(&self, user: &str, now_ms: u64) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let interval = 60_000 / u64::from(self.per_minute).min(60_000);
        let burst = 60_000 - interval;
        let mut map = self.full_at.lock();
        let tat = map.get(user).copied().unwrap_or(now_ms).max(now_ms);
        if tat - now_ms > burst {
            return Err(tat - now_ms - burst);
        }
        match map.get_mut(user) {
            Some(t) => *t = tat + interval,
            None => {
                map.insert(user.to_owned(), tat + interval);
            }
        }
        Ok(())
    }

    /// Forgets users whose bucket is full again (they are as if never seen).
    pub fn prune(&self, now_ms: u64) {
        self.full_at.lock().retain(|_, &mut t| t > now_ms);
    }

    /// Users remembered (for tests).
    pub fn len(&self) -> usize {
        self.full_at.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_an_even_rate_per_user() {
        let r = PerMinute::new(6);
        let t = 1_000_000;
        for _ in 0..6 {
            r.take("a", t).unwrap();
        }
        // The 7th at once waits for one token: 10 s.
        assert_eq!(r.take("a", t), Err(10_000));
        assert_eq!(r.take("a", t + 9_999), Err(1));
        // Another user is not affected.
        r.take("b", t).unwrap();
        r.take("a", t + 10_000).unwrap();
        assert!(r.take("a", t + 10_000).is_err());
        // A minute later the bucket is full again and the user forgotten.
        r.prune(t + 70_000);
        assert_eq!(r.len(), 0);
        for _ in 0..6 {
            r.take("a", t + 70_000).unwrap();
        }
        assert!(r.take("a", t + 70_000).is_err());
    }

    #[test]
    fn zero_is_unlimited() {
        let r = PerMinute::new(0);
        for _ in 0..10_000 {
            r.take("a", 5).unwrap();
        }
        assert!(r.is_empty());
    }
}
