//! Time as the relay's expiry and rate logic sees it: the system clock in production,
//! a clock that only moves when told to in tests (so expiry and rate limits are tested
//! without sleeping).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, from the system or from a test.
#[derive(Clone, Debug, Default)]
pub struct Clock(Option<Arc<AtomicU64>>);

fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(None)
    }

    /// A clock that starts at the system's time and then moves only by [`Clock::advance`].
    pub fn manual() -> Clock {
        Clock(Some(Arc::new(AtomicU64::new(system_ms()))))
    }

    /// Moves a manual clock forward (the system clock cannot be moved: no-op).
    pub fn advance(&self, by: Duration) {
        if let Some(t) = &self.0 {
            t.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match &self.0 {
            Some(t) => t.load(Ordering::SeqCst),
            None => system_ms(),
        }
    }

    /// Seconds since the Unix epoch.
    pub fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = Clock::manual();
        let t = c.now_ms();
        assert_eq!(c.now_ms(), t);
        c.advance(Duration::from_secs(61));
        assert_eq!(c.now_ms(), t + 61_000);
        assert_eq!(
            c.clone().now_secs(),
            (t + 61_000) / 1000,
            "clones share the time"
        );
    }
}
