//! Rate limits: GCRA limiters from `governor`, keyed by client network, user or
//! connection. Every limit is documented in `docs/chat.md` ("Limits").

use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

/// `n` per hour, all of them usable at once (one more comes back every hour / `n`).
pub fn per_hour(n: u32) -> Quota {
    Quota::per_hour(nz(n))
}

/// `n` per minute, all of them usable at once.
pub fn per_minute(n: u32) -> Quota {
    Quota::per_minute(nz(n))
}

/// `n` per second with bursts of twice as many.
pub fn per_second_burst_2x(n: u32) -> Quota {
    Quota::per_second(nz(n)).allow_burst(nz(n.saturating_mul(2)))
}

/// Whole seconds to wait, at least 1 (what `retry_after` and `Retry-After` carry).
fn retry_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

/// A limit per key (client network, user id, ...).
pub struct Keyed<K: Hash + Eq + Clone> {
    lim: DefaultKeyedRateLimiter<K>,
    clock: DefaultClock,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    pub fn new(quota: Quota) -> Self {
        Keyed {
            lim: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one from `key`'s allowance, or says how many seconds until one is back.
    pub fn check(&self, key: &K) -> Result<(), u64> {
        self.lim
            .check_key(key)
            .map_err(|n| retry_secs(n.wait_time_from(self.clock.now())))
    }

    /// Forgets keys whose allowance is full again (they would behave as new ones).
    pub fn forget_idle(&self) {
        self.lim.retain_recent();
        self.lim.shrink_to_fit();
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.lim.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lim.is_empty()
    }
}

/// A limit on one thing (one connection).
pub struct Direct {
    lim: DefaultDirectRateLimiter,
    clock: DefaultClock,
}

impl Direct {
    pub fn new(quota: Quota) -> Self {
        Direct {
            lim: RateLimiter::direct(quota),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one, or says how many seconds until one is back.
    pub fn check(&self) -> Result<(), u64> {
        self.lim
            .check()
            .map_err(|n| retry_secs(n.wait_time_from(self.clock.now())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_limit_refuses_past_the_burst_with_a_wait() {
        let l = Keyed::new(per_hour(3));
        for _ in 0..3 {
            assert!(l.check(&1).is_ok());
        }
        let wait = l.check(&1).unwrap_err();
        assert!((1..=1200).contains(&wait), "{wait}");
        assert!(l.check(&2).is_ok(), "another key has its own allowance");
        let d = Direct::new(per_second_burst_2x(1));
        assert!(d.check().is_ok() && d.check().is_ok());
        assert_eq!(d.check(), Err(1));
    }
}
