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

/// Text of a foreign error fit for a log line: every word that holds an IP address
/// (with or without a port, IPv4 or IPv6) is replaced by its [`Pii`] tag. For errors of
/// dependencies (WebRTC, QUIC, TLS stacks) whose messages may name the peer.
pub fn scrub(text: &str) -> String {
    use std::net::{IpAddr, SocketAddr};
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let start = rest.find(|c: char| c.is_ascii_hexdigit() || c == '[' || c == ':').unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        if rest.is_empty() {
            break;
        }
        let end = rest
            .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']' | '%')))
            .unwrap_or(rest.len());
        if end == 0 {
            // A lone character that starts no address.
            let n = rest.chars().next().map_or(1, char::len_utf8);
            out.push_str(&rest[..n]);
            rest = &rest[n..];
            continue;
        }
        let word = &rest[..end];
        // The word as it is (an IPv6 address may end in `::`), or without the `.` or `:`
        // of the sentence around it; a zone (`fe80::1%eth0`) does not save an address.
        let is_addr = |w: &str| {
            let ip = w.trim_start_matches('[').trim_end_matches(']');
            w.parse::<SocketAddr>().is_ok() || ip.split('%').next().is_some_and(|ip| ip.parse::<IpAddr>().is_ok())
        };
        let addr = [word, word.trim_end_matches('.'), word.trim_end_matches(['.', ':'])]
            .into_iter()
            .find(|w| w.len() > 2 && w.contains(['.', ':']) && is_addr(w));
        match addr {
            Some(a) => {
                out.push_str(&Pii(a).to_string());
                out.push_str(&word[a.len()..]);
            }
            None => out.push_str(word),
        }
        rest = &rest[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn scrub_hides_addresses_in_foreign_errors() {
        let e = "no route to 192.0.2.7:5000 from [2001:db8::1]:443 via fe80::1, code 0x1f at 12:30";
        let s = scrub(e);
        for leak in ["192.0.2.7", "2001:db8::1", "fe80::1"] {
            assert!(!s.contains(leak), "{s}");
        }
        assert!(s.starts_with("no route to <redacted:"), "{s}");
        assert!(s.contains("code 0x1f at 12:30"), "words that are no address stay: {s}");
        assert_eq!(scrub("peer connection failed: DTLS closed"), "peer connection failed: DTLS closed");
        assert_eq!(scrub(""), "");
        assert_eq!(scrub("ünïcode façade"), "ünïcode façade");
    }

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
