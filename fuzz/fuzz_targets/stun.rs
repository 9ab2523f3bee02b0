//! STUN demultiplexing of the media port: `is_stun` and the ufrag that routes a binding
//! request to its peer (`sfu/src/engine/stun.rs`), on any datagram.
#![no_main]
use libfuzzer_sys::fuzz_target;
use maxd_fuzz::binding;
use sfu::engine::fuzzing::local_ufrag;
use sfu::engine::is_stun;

fuzz_target!(|data: &[u8]| {
    let stun = is_stun(data);
    // RFC 7983: first byte 0..=3, and the magic cookie (RFC 8489) at bytes 4..8.
    assert_eq!(
        stun,
        data.len() >= 20 && data[0] <= 3 && data[4..8] == [0x21, 0x12, 0xa4, 0x42]
    );
    if let Some(u) = local_ufrag(data) {
        assert!(stun, "a ufrag from a datagram that is no STUN");
        assert!(!u.contains(':'));
        // It is read from inside the message: after the header, within the datagram.
        let off = u.as_ptr() as usize - data.as_ptr() as usize;
        assert!(
            off >= 24 && off + u.len() <= data.len(),
            "ufrag at {off}+{} of {}",
            u.len(),
            data.len()
        );
        // A binding request naming it routes to it again.
        let again = binding(format!("{u}:peer").as_bytes(), &[]);
        assert_eq!(local_ufrag(&again), Some(u));
    }
    // Whatever follows a USERNAME, the ufrag it names is found.
    if data.len() < 512 {
        let (name, tail) = data.split_at(data.len() / 2);
        if let Ok(name) = std::str::from_utf8(name) {
            let expect = name.split(':').next().unwrap();
            assert_eq!(local_ufrag(&binding(name.as_bytes(), tail)), Some(expect));
        }
    }
});
