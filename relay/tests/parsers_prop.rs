//! Property tests of the relay's parsers that face the network - the same the `fuzz/`
//! targets `relay_frame`, `http_range` and `tus_headers` fuzz (docs/fuzzing.md): control
//! frames, the HTTP fallback's `Range`, and tus headers.

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine as _;
use proptest::prelude::*;
use relay::http_fuzzing::{range, tus_metadata, upload_length, upload_offset};
use relay::proto::{MAX_FRAME, Request, Response, encode_frame, frame_len, is_file_id, parse_hash};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[ -~]{0,24}", 1 => any::<String>()]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u32>(), text()).prop_map(|(version, token)| Request::Hello { version, token }),
        (text(), text(), any::<u64>(), "[0-9a-fA-F]{64}|[ -~]{0,8}").prop_map(
            |(name, mime, size, hash)| Request::Begin {
                name,
                mime,
                size,
                hash
            }
        ),
        "[0-9a-f]{64}|[ -~]{0,8}".prop_map(|mac| Request::Prove { mac }),
        ("[0-9a-f]{32}|[ -~]{0,8}", any::<u64>(), any::<u64>())
            .prop_map(|(file, offset, len)| Request::Put { file, offset, len }),
        (text(), any::<u64>(), proptest::option::of(any::<u64>()))
            .prop_map(|(file, offset, len)| Request::Get { file, offset, len }),
        text().prop_map(|file| Request::Stat { file }),
        text().prop_map(|file| Request::Outboard { file }),
    ]
}

/// Reads frames from a byte stream as the server does: `Ok` bodies, then the error
/// that stops it (`None` when the bytes simply end).
fn read_frames(mut b: &[u8]) -> (Vec<&[u8]>, Option<usize>) {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = match frame_len(b[..4].try_into().unwrap()) {
            Ok(n) => n,
            Err(_) => {
                return (
                    out,
                    Some(u32::from_be_bytes(b[..4].try_into().unwrap()) as usize),
                );
            }
        };
        let Some(body) = b.get(4..4 + len) else { break };
        out.push(body);
        b = &b[4 + len..];
    }
    (out, None)
}

/// RFC 9110 14.1.2 read strictly: `[start, end)` of one satisfiable range, digits only.
fn reference_range(v: &str, size: u64) -> Option<(u64, u64)> {
    let digits = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (a, b) = v.trim().strip_prefix("bytes=")?.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n = digits(b)?;
        (size.saturating_sub(n), if n == 0 { 0 } else { size })
    } else {
        (
            digits(a)?,
            if b.is_empty() {
                size
            } else {
                digits(b)?.saturating_add(1).min(size)
            },
        )
    };
    (start < end).then_some((start, end))
}

fn with(name: &'static str, v: &str) -> Option<HeaderMap> {
    let mut h = HeaderMap::new();
    h.insert(name, HeaderValue::from_str(v).ok()?);
    Some(h)
}

proptest! {
    #[test]
    fn requests_round_trip_through_frames(reqs in proptest::collection::vec(request(), 1..5)) {
        let mut stream = Vec::new();
        for r in &reqs {
            stream.extend(encode_frame(r).unwrap());
        }
        let (bodies, err) = read_frames(&stream);
        prop_assert!(err.is_none());
        prop_assert_eq!(bodies.len(), reqs.len());
        for (body, r) in bodies.iter().zip(&reqs) {
            let back: Request = serde_json::from_slice(body).unwrap();
            prop_assert_eq!(encode_frame(&back).unwrap(), encode_frame(r).unwrap());
            match back {
                Request::Put { file, .. } => prop_assert_eq!(is_file_id(&file), file.len() == 32 && file.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())),
                Request::Prove { mac } => prop_assert_eq!(parse_hash(&mac).is_some(), mac.len() == 64 && mac.bytes().all(|b| b.is_ascii_hexdigit())),
                _ => {}
            }
        }
    }

    #[test]
    fn any_bytes_split_into_frames_or_stop(b in proptest::collection::vec(any::<u8>(), 0..256), big in (MAX_FRAME as u32 + 1)..) {
        let (bodies, err) = read_frames(&b);
        prop_assert!(err.is_none_or(|n| n > MAX_FRAME));
        for body in bodies {
            let _ = serde_json::from_slice::<Request>(body);
            let _ = serde_json::from_slice::<Response>(body);
        }
        // A length over the limit is refused before anything is read or allocated.
        prop_assert!(frame_len(big.to_be_bytes()).is_err());
    }

    #[test]
    fn ranges_follow_rfc_9110(
        size in prop_oneof![0..100u64, any::<u64>()],
        a in prop_oneof![Just(String::new()), "[0-9]{1,3}", "[0-9]{18,21}", "[+ -]?[0-9]{1,3}"],
        b in prop_oneof![Just(String::new()), "[0-9]{1,3}", "[0-9]{18,21}", "[+ -]?[0-9]{1,3}"],
        unit in prop_oneof![4 => Just("bytes=".to_string()), 1 => "[a-z=]{0,6}".prop_map(String::from)],
        extra in prop_oneof![4 => Just(String::new()), 1 => ",[0-9]{0,3}-[0-9]{0,3}"],
    ) {
        let v = format!("{unit}{a}-{b}{extra}");
        let Some(h) = with("range", &v) else { return Ok(()) };
        match range(&h, size) {
            Ok(Some((s, e))) => {
                prop_assert!(s < e && e <= size);
                prop_assert_eq!(Some((s, e)), reference_range(&v, size), "{:?} of {}", v, size);
            }
            Ok(None) => prop_assert!(false, "a Range header read as none"),
            Err((status, code, _)) => {
                prop_assert_eq!((status, code.as_str()), (416, "range_not_satisfiable"));
                prop_assert_eq!(reference_range(&v, size), None, "{:?} of {} refused", v, size);
            }
        }
    }

    #[test]
    fn tus_numbers_are_digits(v in prop_oneof!["[0-9]{1,20}", "[+ -]?[0-9]{1,4}", "[ -~]{0,6}"]) {
        let strict = (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())).then(|| v.parse::<u64>().ok()).flatten();
        if let Some(h) = with("upload-length", &v) {
            prop_assert_eq!(upload_length(&h).ok(), strict, "Upload-Length: {:?}", v);
        }
        if let Some(h) = with("upload-offset", &v) {
            prop_assert_eq!(upload_offset(&h).ok(), strict, "Upload-Offset: {:?}", v);
        }
    }

    #[test]
    fn tus_metadata_round_trips(name in text(), mime in text(), junk in "[ -~]{0,12}") {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let h = with("upload-metadata", &format!("filename {},filetype {}", b64(&name), b64(&mime))).unwrap();
        let fits = |s: &str| s.len() <= 1024 && !s.chars().any(char::is_control);
        match tus_metadata(&h) {
            Ok(got) => prop_assert_eq!(got, (name, mime)),
            Err((status, _, _)) => prop_assert!(status == 400 && !(fits(&name) && fits(&mime))),
        }
        if let Some(h) = with("upload-metadata", &junk) {
            if let Ok((n, m)) = tus_metadata(&h) {
                prop_assert!(fits(&n) && fits(&m));
            }
        }
    }
}

#[test]
fn no_range_header_is_the_whole_file() {
    assert_eq!(range(&HeaderMap::new(), 10), Ok(None));
    let mut h = HeaderMap::new();
    h.insert(header::RANGE, HeaderValue::from_static("bytes=0-499"));
    assert_eq!(range(&h, 10_000), Ok(Some((0, 500))));
}
