//! Connection slots of the HTTP listener: at most `max_per_ip` open connections from
//! one client address (IPv6 counted per /64, the block one subscriber usually gets)
//! and at most `max_total` in all. A slot is held for the connection's whole life,
//! WebSocket upgrades included, and given back when its [`Slot`] is dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Whose connections are counted together: one IPv4 address, or one IPv6 /64
/// (`common::netaddr::limit_key`).
pub type ClientKey = IpAddr;

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its client already holds `max_per_ip` connections.
    PerIp,
    /// The listener already holds `max_total` connections.
    Total,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::PerIp => "per_ip",
            Refused::Total => "total",
        }
    }
}

#[derive(Debug)]
struct Inner {
    max_total: usize,
    /// 0: no per-client limit.
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<ClientKey, usize>>,
}

/// The listener's connection counts; clones share them.
#[derive(Debug, Clone)]
pub struct Limits(Arc<Inner>);

impl Limits {
    /// `max_per_ip = 0` turns the per-client limit off; `max_total` is always enforced.
    pub fn new(max_total: usize, max_per_ip: usize) -> Limits {
        Limits(Arc::new(Inner {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        }))
    }

    pub fn max_total(&self) -> usize {
        self.0.max_total
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.0.total.load(Ordering::Relaxed)
    }

    /// A slot for a connection from `ip`, or why there is none.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<Slot, Refused> {
        let inner = &self.0;
        // Reserve a place in the total first, so the per-client table never grows
        // past max_total entries.
        if inner
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < inner.max_total).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Refused::Total);
        }
        let key = common::netaddr::limit_key(ip);
        if inner.max_per_ip > 0 {
            let mut map = inner.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(key).or_insert(0);
            if *n >= inner.max_per_ip {
                drop(map);
                inner.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refused::PerIp);
            }
            *n += 1;
        }
        Ok(Slot {
            limits: self.clone(),
            key,
        })
    }

    /// Connections open now from `ip`'s client (its address, or its /64).
    #[cfg(test)]
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let map = self.0.per_ip.lock().unwrap();
        map.get(&common::netaddr::limit_key(ip)).copied().unwrap_or(0)
    }
}

/// One connection's place in [`Limits`], given back on drop.
#[derive(Debug)]
pub struct Slot {
    limits: Limits,
    key: ClientKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let inner = &self.limits.0;
        if inner.max_per_ip > 0 {
            let mut map = inner.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&self.key);
                }
            }
        }
        inner.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_ip_limit_counts_each_address_and_gives_slots_back() {
        let l = Limits::new(100, 2);
        let a1 = l.try_acquire(ip("192.0.2.1")).unwrap();
        let _a2 = l.try_acquire(ip("192.0.2.1")).unwrap();
        assert_eq!(l.try_acquire(ip("192.0.2.1")).unwrap_err(), Refused::PerIp);
        // Another address is not affected.
        let _b = l.try_acquire(ip("192.0.2.2")).unwrap();
        assert_eq!(l.open(), 3);
        drop(a1);
        assert_eq!(l.open(), 2);
        let _a3 = l.try_acquire(ip("192.0.2.1")).unwrap();
        assert_eq!(l.open_from(ip("192.0.2.1")), 2);
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let l = Limits::new(100, 2);
        let _a = l.try_acquire(ip("2001:db8:1:2::1")).unwrap();
        let _b = l.try_acquire(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(
            l.try_acquire(ip("2001:db8:1:2:abcd::1")).unwrap_err(),
            Refused::PerIp
        );
        // The next /64 is another client.
        let _c = l.try_acquire(ip("2001:db8:1:3::1")).unwrap();
        let _d = l.try_acquire(ip("::ffff:192.0.2.7")).unwrap();
        let _e = l.try_acquire(ip("192.0.2.7")).unwrap();
        assert_eq!(
            l.try_acquire(ip("::ffff:192.0.2.7")).unwrap_err(),
            Refused::PerIp
        );
    }

    #[test]
    fn total_limit_refuses_everyone_until_a_slot_is_given_back() {
        let l = Limits::new(2, 0);
        let a = l.try_acquire(ip("192.0.2.1")).unwrap();
        let _b = l.try_acquire(ip("192.0.2.1")).unwrap();
        assert_eq!(l.try_acquire(ip("192.0.2.9")).unwrap_err(), Refused::Total);
        drop(a);
        let _c = l.try_acquire(ip("192.0.2.9")).unwrap();
        assert_eq!(l.open(), 2);
    }

    #[test]
    fn a_refused_per_ip_connection_does_not_keep_a_total_slot_and_the_table_empties() {
        let l = Limits::new(3, 1);
        let a = l.try_acquire(ip("192.0.2.1")).unwrap();
        for _ in 0..10 {
            assert_eq!(l.try_acquire(ip("192.0.2.1")).unwrap_err(), Refused::PerIp);
        }
        assert_eq!(l.open(), 1);
        drop(a);
        assert_eq!(l.open(), 0);
        assert!(l.0.per_ip.lock().unwrap().is_empty());
    }
}
