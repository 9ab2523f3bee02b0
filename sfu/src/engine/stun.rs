//! Just enough STUN to route a binding request to its peer: the local ICE ufrag from the
//! USERNAME attribute (RFC 8445 7.2.2: `local-ufrag:remote-ufrag` as seen by us).

/// Whether the datagram looks like STUN (RFC 7983 demultiplexing: first byte 0..=3 and
/// the magic cookie).
pub fn is_stun(d: &[u8]) -> bool {
    d.len() >= 20 && d[0] < 4 && d[4..8] == [0x21, 0x12, 0xa4, 0x42]
}

/// The local ufrag named by a STUN message's USERNAME, if any. Never panics.
pub fn local_ufrag(d: &[u8]) -> Option<&str> {
    if !is_stun(d) {
        return None;
    }
    let len = u16::from_be_bytes([d[2], d[3]]) as usize;
    let end = (20 + len).min(d.len());
    let mut i = 20;
    while i + 4 <= end {
        let typ = u16::from_be_bytes([d[i], d[i + 1]]);
        let alen = u16::from_be_bytes([d[i + 2], d[i + 3]]) as usize;
        let v = d.get(i + 4..i + 4 + alen)?;
        if typ == 0x0006 {
            let s = std::str::from_utf8(v).ok()?;
            return s.split(':').next();
        }
        i += 4 + alen.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(username: &[u8]) -> Vec<u8> {
        let mut attr = vec![0x00, 0x06, 0x00, username.len() as u8];
        attr.extend_from_slice(username);
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attr);
        m
    }

    #[test]
    fn finds_ufrag_and_survives_garbage() {
        assert_eq!(local_ufrag(&binding(b"abcd:wxyz")), Some("abcd"));
        let m = binding(b"abcd:wxyz");
        for n in 0..m.len() {
            let _ = local_ufrag(&m[..n]);
        }
        assert_eq!(local_ufrag(&[0x80, 0x60, 0, 0]), None);
        let mut bad = binding(b"abcd:wxyz");
        bad[22] = 0xff; // attribute length past the end
        assert_eq!(local_ufrag(&bad), None);
    }
}
