//! A call where UDP to the media server is blocked: coturn started here with TURN REST
//! credentials (`use-auth-secret`), `maxd` configured with the same secret, nftables
//! dropping every packet to the media port that does not come from coturn's relay
//! ports, and Chromium forced to `iceTransportPolicy: 'relay'`. Alice and Bob set the
//! call up through signalling (REST); Chromium publishes into the call's SFU room with
//! Alice's token and plays it back with Bob's, using the TURN credentials signalling
//! handed out. Wrong and expired credentials give no relay candidate.
//!
//! Needs root, `nft`, `turnserver` (coturn), node, Chromium and tests/browser/node_modules
//! (`scripts/test.sh` installs them all); says what is missing and fails unless
//! `MAXD_SKIP_BROWSER_TESTS=1`.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Maxd, free_port};

const SECRET: &str = "turn-test-secret-0123456789";
/// coturn's relay ports: the only sources allowed to reach the media port.
const RELAY_PORTS: (u16, u16) = (49160, 49200);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn tools_present() -> bool {
    if std::env::var_os("MAXD_SKIP_BROWSER_TESTS").is_some_and(|v| v != "0") {
        eprintln!("MAXD_SKIP_BROWSER_TESTS is set: skipping the TURN test");
        return false;
    }
    let mut missing = Vec::new();
    for (what, ok) in [
        ("Chromium at /usr/bin/chromium", Path::new("/usr/bin/chromium").exists()),
        ("node", Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success())),
        ("turnserver (coturn)", Command::new("turnserver").arg("--version").output().is_ok()),
        ("nft run as root", Command::new("nft").args(["list", "tables"]).output().is_ok_and(|o| o.status.success())),
        ("tests/browser/node_modules (npm ci there)", browser_dir().join("node_modules/playwright-core").exists()),
    ] {
        if !ok {
            missing.push(what);
        }
    }
    assert!(missing.is_empty(), "the TURN test needs {}: run scripts/test.sh, or set MAXD_SKIP_BROWSER_TESTS=1", missing.join(", "));
    true
}

/// coturn on a loopback port, killed on drop.
struct Coturn {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Coturn {
    fn start() -> Coturn {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("turnserver")
            .args(["-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
            .arg(format!("--listening-port={port}"))
            .args(["--use-auth-secret", &format!("--static-auth-secret={SECRET}"), "--realm=maxd"])
            // coturn refuses loopback peers (the SFU here) without a CLI password.
            .args(["--allow-loopback-peers", "--cli-password=x", "--no-cli", "--no-tls", "--no-dtls"])
            .arg(format!("--min-port={}", RELAY_PORTS.0))
            .arg(format!("--max-port={}", RELAY_PORTS.1))
            .arg(format!("--pidfile={}", dir.path().join("turn.pid").display()))
            .args(["--log-file=stdout", "--simple-log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver");
        let c = Coturn { child, port, _dir: dir };
        c.wait_ready();
        c
    }

    /// Waits until coturn answers a STUN binding request on its port.
    fn wait_ready(&self) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        // Binding request: type 0x0001, length 0, magic cookie, transaction id.
        let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        req.extend_from_slice(b"maxd-turn-ok");
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = [0u8; 512];
        loop {
            sock.send_to(&req, ("127.0.0.1", self.port)).unwrap();
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if n >= 20 && buf[0..2] == [0x01, 0x01] {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "coturn did not answer STUN on {}", self.port);
        }
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nft(args: &[&str]) {
    let out = Command::new("nft").args(args).output().expect("nft");
    assert!(out.status.success(), "nft {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Drops UDP to the media port unless it comes from coturn's relay ports, and all TCP
/// to it (ICE-TCP): only the TURN path is left. Its own table, deleted on drop.
struct DirectPathBlocked {
    table: String,
}

impl DirectPathBlocked {
    fn new(media_port: u16) -> DirectPathBlocked {
        let table = format!("maxd_calls_turn_{}", std::process::id());
        let b = DirectPathBlocked { table };
        let (t, p) = (b.table.as_str(), media_port.to_string());
        nft(&["add", "table", "inet", t]);
        nft(&["add", "chain", "inet", t, "in", "{ type filter hook input priority 0 ; }"]);
        let relay = format!("{}-{}", RELAY_PORTS.0, RELAY_PORTS.1);
        nft(&["add", "rule", "inet", t, "in", "udp", "dport", &p, "udp", "sport", "!=", &relay, "counter", "drop"]);
        nft(&["add", "rule", "inet", t, "in", "tcp", "dport", &p, "counter", "drop"]);
        b
    }

    /// Packets the rules dropped.
    fn dropped(&self) -> u64 {
        let out = Command::new("nft").args(["list", "table", "inet", &self.table]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split("packets ")
            .skip(1)
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for DirectPathBlocked {
    fn drop(&mut self) {
        let _ = Command::new("nft").args(["delete", "table", "inet", &self.table]).output();
    }
}

/// A blocking HTTP/1.1 request with a JSON body.
fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let body = body.to_string();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let v = buf.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b).ok()).unwrap_or(Value::Null);
    (status, v)
}

fn login(m: &Maxd, phone: &str) -> (i64, String) {
    let (st, v) = http(m.http, "POST", "/api/auth/code", None, json!({"phone": phone}));
    assert_eq!(st, 200, "{v}");
    let codes = std::fs::read_to_string(m.dir.path().join("data/sms-codes.jsonl")).unwrap();
    let code = codes.lines().rev().map(|l| serde_json::from_str::<Value>(l).unwrap()).find(|v| v["to"] == phone).unwrap()["code"].clone();
    let (st, v) = http(m.http, "POST", "/api/auth/verify", None, json!({"phone": phone, "code": code}));
    assert_eq!(st, 200, "{v}");
    (v["user_id"].as_i64().unwrap(), v["access_token"].as_str().unwrap().to_string())
}

#[test]
fn a_turn_only_call_works_and_bad_credentials_get_no_relay() {
    if !tools_present() {
        return;
    }
    let turn = Coturn::start();
    let urls = format!(r#"["turn:127.0.0.1:{}?transport=udp"]"#, turn.port);
    let m = Maxd::start_with(
        r#"["sfu","signalling"]"#,
        &[
            ("MAXD_SIGNALLING__TURN_URLS", urls.as_str()),
            ("MAXD_SIGNALLING__TURN_SECRET", SECRET),
            ("MAXD_SIGNALLING__P2P_DIRECT_CALLS", "false"),
        ],
    );
    let (alice, ta) = login(&m, "+79160004001");
    let (bob, tb) = login(&m, "+79160004002");
    let (_, d) = http(m.http, "POST", "/api/dialogs", Some(&ta), json!({"user_id": bob}));
    let (st, started) = http(m.http, "POST", "/api/calls", Some(&ta), json!({"chat_id": d["id"], "video": true}));
    assert_eq!(st, 200, "{started}");
    let call = started["call"]["id"].as_i64().unwrap();
    let (st, accepted) = http(m.http, "POST", &format!("/api/calls/{call}/accept"), Some(&tb), json!({}));
    assert_eq!(st, 200, "{accepted}");
    let good = started["ice_servers"].clone();
    assert_eq!(good[0]["username"].as_str().unwrap().split_once(':').unwrap().1, alice.to_string());
    let mut wrong = good.clone();
    wrong[0]["credential"] = json!("not-the-password");
    let expired_user = format!("{}:{alice}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 60);
    let mut expired = good.clone();
    expired[0]["username"] = json!(expired_user);
    expired[0]["credential"] = json!(signalling::calls::turn::password(SECRET, &expired_user));

    let blocked = DirectPathBlocked::new(m.media.port());
    // The rules hold: datagrams to the media port from anywhere but the relay are dropped.
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..3 {
        probe.send_to(b"direct", m.media).unwrap();
    }
    assert!(blocked.dropped() >= 3, "the direct path is cut");
    let work = tempfile::tempdir().unwrap();
    let out = Command::new("node")
        .arg("calls_turn.mjs")
        .current_dir(browser_dir())
        .env("MAXD_URL", m.base_url())
        .env("ROOM", format!("call-{call}"))
        .env("WHIP_TOKEN", started["join"]["token"].as_str().unwrap())
        .env("WHEP_TOKEN", accepted["join"]["token"].as_str().unwrap())
        .env("ICE_GOOD", good.to_string())
        .env("ICE_WRONG", wrong.to_string())
        .env("ICE_EXPIRED", expired.to_string())
        .env("WORK_DIR", work.path())
        .env("TMPDIR", work.path())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "result")
        .unwrap_or_else(|| panic!("no result:\n{stdout}\n{}\n--- maxd:\n{}", String::from_utf8_lossy(&out.stderr), m.log()));
    assert!(out.status.success(), "{stdout}");
    println!("TURN call: {result}");
    let g = &result["gathered"];
    assert!(g["good"].as_u64().unwrap() >= 1, "signalling's credentials get a relay candidate: {g}");
    assert_eq!(g["wrong"], 0, "a wrong password gets none: {g}");
    assert_eq!(g["expired"], 0, "an expired username gets none, though its HMAC is right: {g}");
    for pc in ["publisher", "player"] {
        assert_eq!(result[pc]["local"], "relay", "{pc} goes through TURN: {result}");
    }
    assert!(result["decoded"].as_u64().unwrap() >= 10);
    drop(blocked);
}
