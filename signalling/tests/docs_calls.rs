//! The complete exchange in docs/calls.md runs against the server frame by frame: each
//! `name> {...}` is sent on that device's socket, each `name< {...}` must arrive there
//! (the next frame of that type), with every field shown equal (`"…"` is any value,
//! `"$X"` a value named earlier or bound here). The stored-event examples parse.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/calls.md")).unwrap()
}

fn block(tag: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in doc().lines() {
        match &mut cur {
            None if line.trim() == format!("```{tag}") => cur = Some(String::new()),
            Some(b) if line.trim() == "```" => {
                out.push(std::mem::take(b));
                cur = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

/// Replaces `"$X"` strings by their values.
fn fill(v: &Value, vars: &HashMap<String, Value>) -> Value {
    match v {
        Value::String(s) if s.starts_with('$') => vars
            .get(s)
            .cloned()
            .unwrap_or_else(|| panic!("{s} is not known yet")),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, x)| (k.clone(), fill(x, vars))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| fill(x, vars)).collect()),
        other => other.clone(),
    }
}

/// Whether `got` shows everything `want` does, binding new `$X` names.
fn matches(want: &Value, got: &Value, vars: &mut HashMap<String, Value>) -> Result<(), String> {
    match want {
        Value::String(s) if s == "…" => {
            if got.is_null() {
                Err("missing".into())
            } else {
                Ok(())
            }
        }
        Value::String(s) if s.starts_with('$') => match vars.get(s) {
            Some(v) if v == got => Ok(()),
            Some(v) => Err(format!("{s} is {v}, got {got}")),
            None => {
                vars.insert(s.clone(), got.clone());
                Ok(())
            }
        },
        Value::Object(m) => {
            for (k, w) in m {
                matches(w, &got[k], vars).map_err(|e| format!("{k}: {e}"))?;
            }
            Ok(())
        }
        Value::Array(a) => {
            let g = got.as_array().ok_or(format!("not an array: {got}"))?;
            if g.len() != a.len() {
                return Err(format!("{} items, got {got}", a.len()));
            }
            for (w, x) in a.iter().zip(g) {
                matches(w, x, vars)?;
            }
            Ok(())
        }
        other if other == got => Ok(()),
        other => Err(format!("want {other}, got {got}")),
    }
}

#[test]
fn stored_event_examples_parse() {
    let server = block("json server");
    assert!(server.len() >= 2);
    for b in server {
        let v: Value = serde_json::from_str(&b).unwrap_or_else(|e| panic!("{b}: {e}"));
        assert!(v["seq"].is_i64(), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_exchange_runs() {
    let exchange = block("exchange");
    assert_eq!(exchange.len(), 1, "one exchange in docs/calls.md");
    let s = start(signalling::Config {
        code_cooldown: Duration::ZERO,
        ..Default::default()
    })
    .await;
    let alice = login(s.addr, &s.data_dir, "+79160002001", "alice").await;
    let phone = login(s.addr, &s.data_dir, "+79160002002", "phone").await;
    let laptop = login(s.addr, &s.data_dir, "+79160002002", "laptop").await;
    let (_, d) = http(
        s.addr,
        "POST",
        "/api/dialogs",
        Some(&alice.token),
        Some(json!({"user_id": phone.id})),
    )
    .await;
    let mut vars: HashMap<String, Value> = HashMap::new();
    vars.insert("$DIALOG".into(), d["id"].clone());
    vars.insert("$ALICE".into(), json!(alice.id));
    vars.insert("$BOB".into(), json!(phone.id));
    let mut socks: HashMap<&str, Ws> = HashMap::new();
    for (name, u) in [("alice", &alice), ("phone", &phone), ("laptop", &laptop)] {
        let mut ws = Ws::connect(s.addr, &u.token).await;
        ws.sync(json!([])).await;
        socks.insert(name, ws);
    }
    let mut steps = 0;
    for line in exchange[0].lines().filter(|l| !l.trim().is_empty()) {
        let (who, dir, frame) = match (line.find('>'), line.find('<')) {
            (Some(i), Some(j)) if i < j => (&line[..i], '>', &line[i + 1..]),
            (Some(i), None) => (&line[..i], '>', &line[i + 1..]),
            (_, Some(j)) => (&line[..j], '<', &line[j + 1..]),
            _ => panic!("not a step: {line}"),
        };
        let frame: Value =
            serde_json::from_str(frame.trim()).unwrap_or_else(|e| panic!("{line}: {e}"));
        let ws = socks
            .get_mut(who.trim())
            .unwrap_or_else(|| panic!("who is {who}?"));
        if dir == '>' {
            ws.send(fill(&frame, &vars)).await;
        } else {
            let ty = frame["type"].as_str().unwrap();
            let got = ws.next_of(ty).await;
            if let Err(e) = matches(&frame, &got, &mut vars) {
                panic!("step {line}\n  {e}\n  got {got}");
            }
        }
        steps += 1;
    }
    assert!(steps >= 20, "{steps} steps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_the_call_endpoints() {
    let s = start(Default::default()).await;
    let (st, v) = http(s.addr, "GET", "/api/openapi.json", None, None).await;
    assert_eq!(st, 200);
    for p in [
        "/api/calls",
        "/api/calls/{id}",
        "/api/calls/{id}/received",
        "/api/calls/{id}/accept",
        "/api/calls/{id}/decline",
        "/api/calls/{id}/hangup",
        "/api/calls/{id}/join",
        "/api/calls/{id}/invite",
        "/api/calls/{id}/video",
        "/api/calls/{id}/sfu",
        "/api/calls/{id}/signal",
        "/api/chats/{id}/call",
        "/api/push",
        "/api/push/vapid",
    ] {
        assert!(v["paths"].get(p).is_some(), "openapi lacks {p}");
    }
    for c in ["Call", "CallAnswer", "IceServer", "Join", "PushTarget"] {
        assert!(
            v["components"]["schemas"].get(c).is_some(),
            "openapi lacks {c}"
        );
    }
}
