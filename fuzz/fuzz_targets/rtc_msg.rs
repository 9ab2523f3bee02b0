//! `/rtc` client messages (`sfu::proto::ClientMsg`), one JSON text frame each: any text
//! parses or is refused without a panic, and what parses survives a round trip.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sfu::proto::ClientMsg;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(msg) = serde_json::from_str::<ClientMsg>(text) else {
        return;
    };
    let json = serde_json::to_string(&msg).expect("client messages serialize");
    let back: ClientMsg = serde_json::from_str(&json).expect("what we write we read");
    assert_eq!(back, msg);
    // It is the message the frame named: by `type` in an object, or (serde's internally
    // tagged enums also take a sequence) by the first element of an array.
    let sent: Value = serde_json::from_str(text).unwrap();
    let tag = serde_json::to_value(&msg).unwrap()["type"].clone();
    match &sent {
        Value::Array(a) => assert_eq!(a.first(), Some(&tag)),
        _ => assert_eq!(sent["type"], tag),
    }
});
