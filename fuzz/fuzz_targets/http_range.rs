//! The relay's `Range` header (`relay/src/http.rs`) on downloads: one `bytes=` range of
//! RFC 9110, checked against a reference reading of the grammar and the file's size.
#![no_main]
use axum::http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use relay::http_fuzzing::range;

/// RFC 9110 14.1.2: `bytes=FIRST-[LAST]` or `bytes=-SUFFIX`, digits only; the range
/// within `size` as `[start, end)`, or `None` when it is not one satisfiable range.
fn reference(v: &str, size: u64) -> Option<(u64, u64)> {
    let digits = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let spec = v.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n = digits(b)?;
        (size.saturating_sub(n), if n == 0 { 0 } else { size })
    } else {
        let s = digits(a)?;
        let e = if b.is_empty() {
            size
        } else {
            digits(b)?.saturating_add(1).min(size)
        };
        (s, e)
    };
    (start < end).then_some((start, end))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().unwrap()) >> (data[0] % 64);
    let mut h = HeaderMap::new();
    assert_eq!(range(&h, size), Ok(None));
    let Ok(v) = HeaderValue::from_bytes(&data[8..]) else {
        return;
    };
    h.insert(header::RANGE, v.clone());
    let got = range(&h, size);
    let want = v.to_str().ok().and_then(|s| reference(s, size));
    match got {
        Ok(Some((s, e))) => {
            assert!(s < e && e <= size);
            assert_eq!(Some((s, e)), want, "{v:?} of {size}");
        }
        Ok(None) => panic!("a Range header read as none"),
        Err((status, code, message)) => {
            assert_eq!(
                (status, code.as_str()),
                (416, "range_not_satisfiable"),
                "{message}"
            );
            assert_eq!(want, None, "{v:?} of {size} refused: {message}");
        }
    }
});
