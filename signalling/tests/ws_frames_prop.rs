//! Property tests of the chat `/ws` frame parsers - the same the `fuzz/` target
//! `ws_frame` fuzzes (docs/fuzzing.md): any text is a message or a well-formed `error`
//! event that carries the frame's `req_id`, and `send` content is bounded before any
//! storage is read.

use proptest::prelude::*;
use serde_json::{Value, json};
use signalling::chat::validate_content;
use signalling::ws::{ClientMsg, parse_auth_frame, parse_frame};

const MAX_FRAME: usize = 65_536;

/// Frames as clients write them (from docs/chat.md), with values of any kind.
fn frame() -> impl Strategy<Value = Value> {
    let s = prop_oneof![3 => "[ -~]{0,16}", 1 => any::<String>()];
    let n = prop_oneof![any::<i64>(), 0..100i64];
    let any_json = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[ -~]{0,8}".prop_map(Value::from),
        Just(json!([1, "x"])),
        Just(json!({"k": 1})),
    ];
    let attachment = (s.clone(), s.clone(), any::<u64>(), s.clone(), proptest::option::of(any::<u64>()),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..140)))
        .prop_map(|(f, name, size, mime, d, w)| json!({"file_id": f, "name": name, "size": size, "mime": mime, "duration_ms": d, "waveform": w}));
    prop_oneof![
        (s.clone(), any_json.clone()).prop_map(|(t, r)| json!({"type": "auth", "access_token": t, "req_id": r})),
        (n.clone(), n.clone()).prop_map(|(c, q)| json!({"type": "sync", "since": [{"chat_id": c, "seq": q}]})),
        (n.clone(), s.clone(), proptest::option::of(s.clone()), proptest::option::of(s.clone()),
            proptest::collection::vec(attachment, 0..12), any_json.clone())
            .prop_map(|(c, id, text, sticker, att, r)| json!({"type": "send", "chat_id": c, "client_id": id,
                "text": text, "sticker": sticker, "attachments": att, "req_id": r})),
        (n.clone(), n.clone(), s.clone()).prop_map(|(c, q, t)| json!({"type": "edit", "chat_id": c, "seq": q, "text": t})),
        (n.clone(), n.clone(), any::<bool>()).prop_map(|(c, q, b)| json!({"type": "delete", "chat_id": c, "seq": q, "for_everyone": b})),
        (n.clone(), n.clone(), s.clone()).prop_map(|(c, q, e)| json!({"type": "react", "chat_id": c, "seq": q, "emoji": e})),
        n.clone().prop_map(|c| json!({"type": "typing", "chat_id": c})),
        (n.clone(), n.clone()).prop_map(|(c, q)| json!({"type": "read", "chat_id": c, "seq": q})),
        any_json.clone().prop_map(|r| json!({"type": "ping", "req_id": r})),
        (s.clone(), any_json).prop_map(|(t, v)| json!({"type": t, "x": v})),
    ]
}

fn check(text: &str) -> Result<(), TestCaseError> {
    let sent: Option<Value> = serde_json::from_str(text).ok();
    let sent_req_id = sent
        .as_ref()
        .and_then(|v| v.get("req_id"))
        .cloned()
        .unwrap_or(Value::Null);
    let (token, req_id) = parse_auth_frame(text);
    prop_assert_eq!(&req_id, &sent_req_id);
    if let Some(t) = token {
        let v = sent.as_ref().unwrap();
        prop_assert!(v["type"] == "auth" && v["access_token"] == t.as_str());
    }
    match parse_frame(text, MAX_FRAME) {
        Ok((msg, req_id)) => {
            prop_assert_eq!(req_id, sent_req_id);
            if let ClientMsg::Send { message, .. } = msg {
                if validate_content(&message, 4096).is_ok() {
                    prop_assert!((1..=64).contains(&message.client_id.len()));
                    prop_assert!(message.attachments.len() <= 10);
                    for a in &message.attachments {
                        prop_assert!(
                            (1..=128).contains(&a.file_id.len())
                                && a.name.len() <= 256
                                && a.mime.len() <= 128
                        );
                        prop_assert!(
                            a.waveform
                                .as_ref()
                                .is_none_or(|w| w.len() <= 128 && a.duration_ms.is_some())
                        );
                    }
                }
            }
        }
        Err(event) => {
            let v: Value = serde_json::from_str(&event).unwrap();
            prop_assert_eq!(&v["type"], "error");
            prop_assert!(
                v["code"].is_string() && v["message"].is_string(),
                "{}",
                event
            );
            // Echoed as parsed: serde_json reads numbers of 17+ digits to the nearest
            // float it finds (no `float_roundtrip`), so compare what a client reads back.
            let echoed: Value = serde_json::from_str(&sent_req_id.to_string()).unwrap();
            prop_assert_eq!(v.get("req_id").cloned().unwrap_or(Value::Null), echoed);
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn frames_as_clients_write_them(v in frame()) {
        check(&v.to_string())?;
    }

    #[test]
    fn frames_with_edits(v in frame(), edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<char>()), 1..4)) {
        let mut chars: Vec<char> = v.to_string().chars().collect();
        for (i, c) in edits {
            let i = i.index(chars.len());
            chars[i] = c;
        }
        check(&chars.into_iter().collect::<String>())?;
    }

    #[test]
    fn any_text(t in any::<String>()) {
        check(&t)?;
    }
}

#[test]
fn a_frame_over_the_limit_is_refused_before_it_is_parsed() {
    let text = format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(100));
    let event = parse_frame(&text, 64).unwrap_err();
    let v: Value = serde_json::from_str(&event).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("too_large"))
    );
}
