//! Grouping client addresses for per-client limits.
//!
//! An IPv6 user typically owns a whole /64 (RFC 6177), and can pick a fresh address in
//! it for every connection; limits keyed by the full address would give them 2^64
//! quotas. Limits therefore key IPv6 by its /64 prefix, IPv4 (and IPv4-mapped IPv6) by
//! the address.

use std::net::{IpAddr, Ipv6Addr};

/// The key a per-client limit counts `ip` under: IPv4 as is, IPv6 by its /64.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_by_64_ipv4_as_is() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limit_key(a), limit_key(b));
        assert_ne!(limit_key(a), limit_key(c));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(limit_key(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(limit_key(mapped), v4);
        assert_ne!(limit_key("192.0.2.2".parse().unwrap()), v4);
    }
}
