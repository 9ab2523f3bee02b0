//! Revoked device sessions, shared by every plane of one process.
//!
//! Access tokens are stateless and live up to their `exp`. When signalling revokes a
//! device session (logout, session revoke, refresh-token reuse), it records the session
//! id here; [`crate::Keys::verify`] then refuses every token carrying that `sid`, on every
//! plane (chat, relay over HTTP and QUIC, sfu), at once. Planes that hold long-lived
//! connections (the relay's QUIC connections, chat WebSockets, `/rtc` sessions) register
//! a listener with [`Revocations::on_revoke`] and close what belongs to the session.
//!
//! An entry is kept until every token that could carry it has expired (`until`), so the
//! list stays bounded by the revocations of one access-token lifetime.
//!
//! The list lives in memory; signalling persists revocations in its database and loads
//! the recent ones back at start-up, so a restart does not revive a revoked session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

type Listener = Arc<dyn Fn(&str) + Send + Sync>;

/// A cheaply cloned handle on the process's revocation list.
#[derive(Clone, Default)]
pub struct Revocations {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Session id -> seconds since the epoch after which no token of it can be valid.
    revoked: RwLock<HashMap<String, u64>>,
    listeners: Mutex<Vec<Listener>>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.revoked.read().map(|r| r.len()).unwrap_or(0);
        write!(f, "Revocations({n} sessions)")
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Revocations {
    /// Revokes session `sid` until `until` (seconds since the Unix epoch: the latest
    /// expiry of any token minted for it), then tells every listener.
    pub fn revoke(&self, sid: &str, until: u64) {
        let now = now_secs();
        {
            let mut r = self.inner.revoked.write().unwrap_or_else(|e| e.into_inner());
            // Forget entries whose tokens have all expired: the list stays bounded.
            if r.len() >= 1024 && r.len().is_power_of_two() {
                r.retain(|_, &mut t| t > now);
            }
            let e = r.entry(sid.to_string()).or_insert(until);
            *e = (*e).max(until);
        }
        let listeners: Vec<Listener> = self.inner.listeners.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for l in listeners {
            l(sid);
        }
    }

    /// Whether tokens of session `sid` are refused.
    pub fn is_revoked(&self, sid: &str) -> bool {
        let r = self.inner.revoked.read().unwrap_or_else(|e| e.into_inner());
        r.get(sid).is_some_and(|&t| t > now_secs())
    }

    /// Calls `f(sid)` on every later revocation (from the revoking thread: keep it short
    /// and non-blocking, e.g. a channel send).
    pub fn on_revoke(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        self.inner.listeners.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::new(f));
    }

    /// Number of sessions listed (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inner.revoked.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn revoked_until_expiry_and_listeners_hear_it() {
        let r = Revocations::default();
        let heard = Arc::new(AtomicUsize::new(0));
        let h = heard.clone();
        r.on_revoke(move |sid| {
            if sid == "s1" {
                h.fetch_add(1, Ordering::SeqCst);
            }
        });
        assert!(!r.is_revoked("s1"));
        r.revoke("s1", now_secs() + 60);
        assert!(r.is_revoked("s1"));
        assert!(!r.is_revoked("s2"));
        assert_eq!(heard.load(Ordering::SeqCst), 1);
        // An entry past its tokens' lifetime no longer matters.
        r.revoke("old", now_secs() - 1);
        assert!(!r.is_revoked("old"));
    }

    #[test]
    fn stays_bounded() {
        let r = Revocations::default();
        for i in 0..5000 {
            r.revoke(&format!("gone{i}"), now_secs() - 1);
        }
        assert!(r.len() < 5000, "{}", r.len());
    }
}
