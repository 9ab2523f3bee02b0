//! The relay's control frames on a QUIC stream (`relay::proto`): a 4-byte length, then
//! JSON. Any byte stream splits into frames that parse, or stops at a refused one; a
//! request or response that parses survives a round trip through the encoder.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay::proto::{
    FrameError, MAX_FRAME, Request, Response, encode_frame, frame_len, is_file_id, parse_hash,
};
use serde::Serialize;

/// Encodes `msg`, decodes it, encodes again: the same bytes.
fn round_trip<T: Serialize + for<'de> serde::Deserialize<'de>>(msg: &T) {
    let Ok(bytes) = encode_frame(msg) else { return };
    let len = frame_len(bytes[..4].try_into().unwrap()).expect("we write frames we read");
    assert_eq!(len, bytes.len() - 4);
    let back: T = serde_json::from_slice(&bytes[4..]).expect("we read what we write");
    assert_eq!(encode_frame(&back).unwrap(), bytes);
}

fn check_ids(file: &str) {
    if is_file_id(file) {
        assert!(file.len() == 32 && file.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    }
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while rest.len() >= 4 {
        let header: [u8; 4] = rest[..4].try_into().unwrap();
        let len = match frame_len(header) {
            Ok(n) => n,
            Err(FrameError::TooLarge(n)) => {
                assert!(n > MAX_FRAME);
                return;
            }
            Err(e) => panic!("unexpected {e}"),
        };
        assert!(len <= MAX_FRAME);
        let Some(body) = rest.get(4..4 + len) else {
            return;
        };
        rest = &rest[4 + len..];
        if let Ok(req) = serde_json::from_slice::<Request>(body) {
            match &req {
                Request::Begin { hash, .. } => {
                    if let Some(h) = parse_hash(hash) {
                        assert_eq!(hex_lower(&h), hash.to_ascii_lowercase());
                    }
                }
                Request::Prove { mac } => {
                    if let Some(h) = parse_hash(mac) {
                        assert_eq!(hex_lower(&h), mac.to_ascii_lowercase());
                    }
                }
                Request::Put { file, .. }
                | Request::Get { file, .. }
                | Request::Stat { file }
                | Request::Outboard { file } => check_ids(file),
                Request::Hello { .. } => {}
            }
            round_trip(&req);
        }
        if let Ok(resp) = serde_json::from_slice::<Response>(body) {
            round_trip(&resp);
        }
    }
});

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
