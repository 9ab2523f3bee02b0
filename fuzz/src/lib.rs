//! Helpers the fuzz targets share: building inputs the way clients send them.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// A STUN binding request (RFC 8489) naming `username` in its USERNAME attribute, with
/// `tail` appended as further attribute bytes.
pub fn binding(username: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut attr = vec![0x00, 0x06];
    attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attr.extend_from_slice(username);
    while attr.len() % 4 != 0 {
        attr.push(0);
    }
    attr.extend_from_slice(tail);
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    m.extend_from_slice(&[7; 12]);
    m.extend_from_slice(&attr);
    m
}

/// Headers from `name: value` lines (what a client could send; lines that are no valid
/// header are skipped, as hyper would refuse the request).
pub fn headers(data: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            h.append(n, v);
        }
    }
    h
}

/// Splits `data` at each `sep` byte.
pub fn split(data: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    data.split(move |&b| b == sep)
}
