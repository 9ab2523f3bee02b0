//! The relay's tus 1.0 request headers (`relay/src/http.rs`): `Tus-Resumable`,
//! `Upload-Length`, `Upload-Offset`, `Upload-Metadata` and a `PATCH`'s `Content-Type`,
//! from any header lines a client can send.
#![no_main]
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use maxd_fuzz::headers;
use relay::http_fuzzing::{
    Refusal, patch_type, tus_metadata, tus_version, upload_length, upload_offset,
};

fn refused(r: &Refusal, status: u16) {
    assert_eq!(r.0, status, "{r:?}");
    assert!(!r.1.is_empty() && !r.2.is_empty());
}

/// RFC 9110 / tus 1.0: a length or offset is 1*DIGIT.
fn number(h: &axum::http::HeaderMap, name: &str) -> Option<u64> {
    let v = h.get(name)?.to_str().ok()?;
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fuzz_target!(|data: &[u8]| {
    let h = headers(data);
    match tus_version(&h) {
        Ok(()) => assert_eq!(h.get("tus-resumable").unwrap(), "1.0.0"),
        Err(r) => refused(&r, 412),
    }
    match upload_length(&h) {
        Ok(n) => assert_eq!(Some(n), number(&h, "upload-length")),
        Err(r) => {
            refused(&r, 400);
            assert_eq!(number(&h, "upload-length"), None);
        }
    }
    match upload_offset(&h) {
        Ok(n) => assert_eq!(Some(n), number(&h, "upload-offset")),
        Err(r) => {
            refused(&r, 400);
            assert_eq!(number(&h, "upload-offset"), None);
        }
    }
    match patch_type(&h) {
        Ok(()) => assert_eq!(
            h.get("content-type").unwrap(),
            "application/offset+octet-stream"
        ),
        Err(r) => refused(&r, 415),
    }
    match tus_metadata(&h) {
        Ok((name, mime)) => {
            for s in [&name, &mime] {
                assert!(s.len() <= 1024 && !s.chars().any(char::is_control), "{s:?}");
            }
            if h.get("upload-metadata").is_none() {
                assert_eq!(
                    (name.as_str(), mime.as_str()),
                    ("", "application/octet-stream")
                );
            }
            // The pairs written back as a client would give the same name and type.
            let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
            let mut again = axum::http::HeaderMap::new();
            let v = format!("filename {},filetype {}", b64(&name), b64(&mime));
            again.insert("upload-metadata", v.parse().unwrap());
            assert_eq!(tus_metadata(&again), Ok((name, mime)));
        }
        Err(r) => refused(&r, 400),
    }
});
