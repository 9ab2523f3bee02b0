//! Log redaction of foreign error texts (`common::pii::scrub`) and the key per-address
//! limits count under (`common::netaddr::limit_key`). An address set apart by the
//! punctuation error texts use never survives scrubbing.
#![no_main]
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use common::netaddr::limit_key;
use common::pii::scrub;
use libfuzzer_sys::fuzz_target;

const APART: &[char] = &[
    ' ', ',', '(', ')', '=', '/', '"', '\'', ';', '\n', '<', '>', '@',
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 20 {
        return;
    }
    let (addr, rest) = data.split_at(19);
    let ip = if addr[0] & 1 == 0 {
        IpAddr::V4(Ipv4Addr::new(addr[1], addr[2], addr[3], addr[4]))
    } else {
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&addr[1..17]).unwrap()))
    };

    // limit_key: IPv4 as is, IPv6 by its /64, IPv4-mapped IPv6 as its IPv4; stable.
    let k = limit_key(ip);
    assert_eq!(limit_key(k), k);
    match (ip, k) {
        (IpAddr::V4(_), _) => assert_eq!(k, ip),
        (IpAddr::V6(v6), IpAddr::V4(v4)) => assert_eq!(v6.to_ipv4_mapped(), Some(v4)),
        (IpAddr::V6(v6), IpAddr::V6(k6)) => {
            assert_eq!(v6.to_ipv4_mapped(), None);
            assert_eq!(k6.segments()[..4], v6.segments()[..4]);
            assert_eq!(k6.segments()[4..], [0; 4]);
        }
    }

    // scrub: any text passes; an address with or without a port, set apart, is hidden.
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let once = scrub(text);
    assert_eq!(scrub(&once), once, "scrubbing twice changes nothing");
    let port = u16::from_be_bytes([addr[17], addr[18]]);
    let shown = match addr[0] % 4 {
        0 | 1 => ip.to_string(),
        _ => SocketAddr::new(ip, port).to_string(),
    };
    let mid = (0..=text.len() / 2)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap();
    let (before, after) = text.split_at(mid);
    let (l, r) = (
        APART[addr[5] as usize % APART.len()],
        APART[addr[6] as usize % APART.len()],
    );
    // `::` (the unspecified address) names no one; it is left as it is.
    if text.contains(&shown) || shown == "::" {
        return;
    }
    let line = format!("{before}{l}{shown}{r}{after}");
    let s = scrub(&line);
    assert!(!s.contains(&shown), "{shown} in {s:?}");
});
