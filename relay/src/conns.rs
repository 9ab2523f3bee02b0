//! Caps on concurrent QUIC connections: over the whole relay and per source address
//! (an IPv4 address, or an IPv6 /64, which one host usually owns whole).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `relay.max_connections`.
    Global,
    /// `relay.max_connections_per_ip`.
    PerAddress,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, u32>,
}

/// Connection counts and their caps; cheap to clone.
#[derive(Clone)]
pub struct Caps {
    max: usize,
    per_source: u32,
    counts: Arc<Mutex<Counts>>,
}

/// One admitted connection; gives its place back when dropped.
pub struct Permit {
    counts: Arc<Mutex<Counts>>,
    source: IpAddr,
}

impl Caps {
    /// 0 = no cap.
    pub fn new(max: usize, per_source: u32) -> Caps {
        Caps {
            max,
            per_source,
            counts: Arc::default(),
        }
    }

    /// Admits a connection from `ip`, or says which cap is reached.
    pub fn admit(&self, ip: IpAddr) -> Result<Permit, Full> {
        let src = common::netaddr::limit_key(ip);
        let mut c = self.counts.lock();
        if self.max > 0 && c.total >= self.max {
            return Err(Full::Global);
        }
        let n = c.by_source.entry(src).or_default();
        if self.per_source > 0 && *n >= self.per_source {
            return Err(Full::PerAddress);
        }
        *n += 1;
        c.total += 1;
        Ok(Permit {
            counts: self.counts.clone(),
            source: src,
        })
    }

    /// Connections admitted and not yet ended.
    pub fn open(&self) -> usize {
        self.counts.lock().total
    }

    /// Whether more than half of the global cap is in use (then new clients must prove
    /// their address first, so spoofed ones cannot fill the rest).
    pub fn busy(&self) -> bool {
        self.max > 0 && self.open() * 2 >= self.max
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.counts.lock();
        c.total -= 1;
        if let Some(n) = c.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_source_and_overall_and_free_on_drop() {
        let caps = Caps::new(4, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = caps.admit(a).unwrap();
        let _a2 = caps.admit(a).unwrap();
        assert_eq!(caps.admit(a).err(), Some(Full::PerAddress));
        let _b1 = caps.admit(b).unwrap();
        assert!(caps.busy());
        // One IPv6 host, two addresses of its /64: counted together.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2".parse().unwrap();
        let _c = caps.admit(v6a).unwrap();
        assert_eq!(caps.admit(v6b).err(), Some(Full::Global));
        drop(a1);
        assert_eq!(caps.open(), 3);
        let _a3 = caps.admit(a).unwrap();
        let caps = Caps::new(10, 1);
        let _x = caps.admit(v6a).unwrap();
        assert_eq!(caps.admit(v6b).err(), Some(Full::PerAddress));
        // A v4-mapped address counts as its IPv4 address.
        let _y = caps.admit(a).unwrap();
        assert_eq!(
            caps.admit("::ffff:192.0.2.1".parse().unwrap()).err(),
            Some(Full::PerAddress)
        );
    }
}
