//! Chat `/ws` client frames (`signalling::ws`): the first-frame `auth`, every message
//! of an authenticated connection, and the content checks a `send` passes before any
//! storage is read. Any text is answered with a well-formed `error` event or parses.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use signalling::chat::validate_content;
use signalling::ws::{ClientMsg, parse_auth_frame, parse_frame};

const MAX_FRAME: usize = 65_536;
const MAX_TEXT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sent: Option<Value> = serde_json::from_str(text).ok();
    let sent_req_id = sent
        .as_ref()
        .and_then(|v| v.get("req_id"))
        .cloned()
        .unwrap_or(Value::Null);
    // The server echoes the req_id it parsed; serde_json's float parsing is not exact
    // (no `float_roundtrip`), so a number of 17+ digits comes back as the nearest float
    // it read: compare what the client reads back.
    let echoed: Value = serde_json::from_str(&sent_req_id.to_string()).unwrap();

    let (token, req_id) = parse_auth_frame(text);
    assert_eq!(req_id, sent_req_id);
    if let Some(t) = token {
        let v = sent.as_ref().expect("an auth frame is JSON");
        assert_eq!(v["type"], "auth");
        assert_eq!(v["access_token"], t.as_str());
    }

    match parse_frame(text, MAX_FRAME) {
        Ok((msg, req_id)) => {
            assert_eq!(req_id, sent_req_id);
            if let ClientMsg::Send { message, .. } = msg {
                if validate_content(&message, MAX_TEXT).is_ok() {
                    assert!((1..=64).contains(&message.client_id.len()));
                    assert!(
                        message
                            .text
                            .as_ref()
                            .is_none_or(|t| t.chars().count() <= MAX_TEXT)
                    );
                    assert!(message.attachments.len() <= 10);
                    for a in &message.attachments {
                        assert!(
                            (1..=128).contains(&a.file_id.len())
                                && a.name.len() <= 256
                                && a.mime.len() <= 128
                        );
                        assert!(a.waveform.as_ref().is_none_or(|w| w.len() <= 128));
                    }
                }
            }
        }
        Err(event) => {
            let v: Value = serde_json::from_str(&event).expect("the error event is JSON");
            assert_eq!(v["type"], "error");
            assert!(v["code"].is_string() && v["message"].is_string(), "{event}");
            assert!(v.get("error").is_none(), "{event}");
            assert_eq!(v.get("req_id").cloned().unwrap_or(Value::Null), echoed);
        }
    }
});
