//! Redaction of personal data in logs.
//!
//! Wrap a value in [`Pii`] before it reaches a `tracing` field: `Display` and `Debug`
//! print a short keyed hash instead of the value, so one address can be followed through
//! the logs of one process without the address itself being written anywhere.

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::OnceLock;

/// A value that must not reach logs in clear.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Pii<T>(pub T);

fn hasher() -> &'static std::collections::hash_map::RandomState {
    static STATE: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    STATE.get_or_init(Default::default)
}

impl<T: Hash> Pii<T> {
    /// A per-process keyed hash of the value: equal values give equal tags.
    pub fn tag(&self) -> u32 {
        hasher().hash_one(&self.0) as u32
    }
}

impl<T: Hash> fmt::Display for Pii<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted:{:08x}>", self.tag())
    }
}

impl<T: Hash> fmt::Debug for Pii<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn never_prints_the_value() {
        let a: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let shown = format!("{} {:?}", Pii(a), Pii(a));
        assert!(!shown.contains("192.0.2.7"), "{shown}");
        assert_eq!(Pii(a).tag(), Pii(a).tag());
        let b: SocketAddr = "192.0.2.8:5000".parse().unwrap();
        assert_ne!(Pii(a).tag(), Pii(b).tag());
    }
}
