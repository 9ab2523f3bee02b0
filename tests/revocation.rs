//! One revocation story for every plane of one `maxd`: a device session logged out in
//! signalling is refused at once by the file relay (HTTP download, tus upload, QUIC),
//! with the same `session_revoked` answer chat gives, while another session of the same
//! account keeps working.

mod support;

use std::net::SocketAddr;
use std::process::Command;

use serde_json::{Value, json};
use support::{Maxd, bin, http, relay_addr_and_pin};

fn json_req(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut headers = vec![("content-type", "application/json".to_string())];
    if let Some(t) = token {
        headers.push(("authorization", format!("Bearer {t}")));
    }
    let (status, _, body) = http(addr, method, path, &headers, body.to_string().as_bytes());
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Registers (or logs in) `phone` with the dev SMS code: (access token, refresh token).
fn login(m: &Maxd, phone: &str, device: &str) -> (String, String) {
    let (st, v) = json_req(m.http, "POST", "/api/auth/code", None, json!({ "phone": phone }));
    assert_eq!(st, 200, "{v}");
    let code = m.sms_code(phone);
    let (st, v) =
        json_req(m.http, "POST", "/api/auth/verify", None, json!({ "phone": phone, "code": code, "device_name": device }));
    assert_eq!(st, 200, "{v}");
    (v["access_token"].as_str().unwrap().to_string(), v["refresh_token"].as_str().unwrap().to_string())
}

/// A tus upload of `data` in one PATCH: the file id.
fn tus_upload(addr: SocketAddr, token: &str, data: &[u8]) -> Result<String, (u16, String)> {
    let auth = ("authorization", format!("Bearer {token}"));
    let (st, h, body) = http(
        addr,
        "POST",
        "/files",
        &[auth.clone(), ("tus-resumable", "1.0.0".into()), ("upload-length", data.len().to_string())],
        &[],
    );
    if st != 201 {
        return Err((st, String::from_utf8_lossy(&body).into_owned()));
    }
    let location = h.iter().find(|(k, _)| k == "location").unwrap().1.clone();
    let (st, _, body) = http(
        addr,
        "PATCH",
        &location,
        &[
            auth,
            ("tus-resumable", "1.0.0".into()),
            ("upload-offset", "0".into()),
            ("content-type", "application/offset+octet-stream".into()),
        ],
        data,
    );
    if st != 204 {
        return Err((st, String::from_utf8_lossy(&body).into_owned()));
    }
    Ok(location.trim_start_matches("/files/").to_string())
}

#[test]
fn a_logged_out_session_is_refused_by_the_relay_at_once() {
    // Two devices log in one after the other: no cooldown between their codes.
    let m = Maxd::start_with(r#"["sfu","signalling","relay"]"#, &[("MAXD_SIGNALLING__CODE_COOLDOWN", "0s")]);
    let (phone_token, _) = login(&m, "+79001234567", "phone");
    let (laptop_token, _) = login(&m, "+79001234567", "laptop");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let id = tus_upload(m.http, &phone_token, &data).expect("upload with the phone's session");
    let get = |token: &str| http(m.http, "GET", &format!("/files/{id}"), &[("authorization", format!("Bearer {token}"))], &[]);
    let (st, _, body) = get(&phone_token);
    assert_eq!((st, body.len()), (200, data.len()));

    let (st, v) = json_req(m.http, "POST", "/api/auth/logout", Some(&phone_token), json!({}));
    assert_eq!(st, 200, "{v}");

    // Chat refuses it...
    let (st, v) = json_req(m.http, "GET", "/api/me", Some(&phone_token), Value::Null);
    assert_eq!((st, v["error"].as_str()), (401, Some("session_revoked")), "{v}");
    // ...and so does the relay, on every path.
    let (st, _, body) = get(&phone_token);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert_eq!(st, 401, "download after logout: {body}");
    assert!(body["message"].as_str().unwrap_or("").contains("revoked"), "{body}");
    let refused = tus_upload(m.http, &phone_token, b"more").unwrap_err();
    assert_eq!(refused.0, 401, "tus upload after logout: {refused:?}");
    let (relay, pin) = relay_addr_and_pin(&m);
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["files", "download", &id])
        .arg(dir.path().join("out"))
        .args(["--server", &relay, "--token", &phone_token, "--pin", &pin])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success(), "QUIC download after logout succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("revoked"), "the QUIC refusal says why: {err}");

    // The laptop's session of the same account is not affected.
    let (st, _, body) = get(&laptop_token);
    assert_eq!((st, body.len()), (200, data.len()));
}
