//! The real `maxd files` command line against a real `maxd`: upload, stat and download
//! round trip bit-exact, and an upload killed half-way sends only what the relay lacks
//! when run again.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{Maxd, bin, metric};

/// The relay's address and certificate fingerprint, from maxd's own log line.
fn relay_addr_and_pin(m: &Maxd) -> (String, String) {
    let log = m.log();
    let line = log
        .lines()
        .find(|l| l.contains("relay listening"))
        .unwrap_or_else(|| panic!("no relay line in the log:\n{log}"));
    let field = |name: &str| {
        let at = line
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            + name.len()
            + 1;
        line[at..].split_whitespace().next().unwrap().to_string()
    };
    (field("addr"), field("fingerprint"))
}

fn random_file(dir: &Path, name: &str, size: usize) -> (PathBuf, Vec<u8>) {
    let mut data = vec![0u8; size];
    let mut x = 0x2545F4914F6CDD1Du64 ^ size as u64;
    for c in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    let p = dir.join(name);
    std::fs::write(&p, &data).unwrap();
    (p, data)
}

/// `maxd files ARGS` with only the dev defaults: the node's data directory and relay
/// address from the environment, as an operator on the node would have them.
fn files_dev(m: &Maxd, relay: &str, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("files")
        .args(args)
        .env("MAXD_DATA_DIR", m.dir.path().join("data"))
        .env("MAXD_RELAY__LISTEN", relay)
        .env("RUST_LOG", "warn");
    c
}

/// `maxd files upload PATH` with explicit --server, --token and --pin (no dev defaults).
fn upload_cmd(relay: &str, token: &str, pin: &str, path: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(["files", "upload"])
        .arg(path)
        .args(["--server", relay, "--token", token, "--pin", pin])
        .args(extra);
    // Run from an empty directory with no config: nothing may come from dev defaults.
    c.current_dir(std::env::temp_dir())
        .env_remove("MAXD_DATA_DIR")
        .env("MAXD_DATA_DIR", "/nonexistent/maxd-files-cli-test");
    c
}

fn ok(out: Output, what: &str) -> (String, String) {
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{so}\nstderr:\n{se}",
        out.status
    );
    (so, se)
}

fn stat(m: &Maxd, relay: &str, id: &str) -> std::collections::HashMap<String, String> {
    let (so, _) = ok(
        files_dev(m, relay, &["stat", id]).output().unwrap(),
        "maxd files stat",
    );
    so.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Parses the CLI's summary: "... N bytes over the network, M already there".
fn network_bytes(stderr: &str) -> (u64, u64) {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("bytes over the network"))
        .unwrap_or_else(|| panic!("no summary in:\n{stderr}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "over").unwrap();
    let moved = words[at - 2].parse().unwrap();
    let there_at = words.iter().position(|w| *w == "already").unwrap();
    let there = words[there_at - 1].parse().unwrap();
    (moved, there)
}

#[test]
fn cli_upload_stat_download_round_trip_and_resume() {
    let m = Maxd::start(r#"["relay"]"#);
    let (relay, pin) = relay_addr_and_pin(&m);
    let token = m.token(&["--identity", "alice", "--grants", "files", "--ttl", "1h"]);
    let dir = tempfile::tempdir().unwrap();

    // Bit-exact round trips, sizes around a group boundary; the id is the last line.
    for (i, size) in [0usize, 1, 16 * 1024 + 1, 3 * 1024 * 1024 + 5]
        .into_iter()
        .enumerate()
    {
        let (path, data) = random_file(dir.path(), &format!("small-{i}.bin"), size);
        let (so, _) = ok(
            upload_cmd(&relay, &token, &pin, &path, &[])
                .output()
                .unwrap(),
            "maxd files upload",
        );
        let id = so.lines().last().unwrap().trim().to_string();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "last line is not a file id: {so:?}"
        );
        let st = stat(&m, &relay, &id);
        assert_eq!(st["size"], size.to_string());
        assert_eq!(st["complete"], "true");
        assert_eq!(st["name"], format!("small-{i}.bin"));
        let (_, root) = relay::tree::outboard_of(&data[..], size as u64).unwrap();
        assert_eq!(st["blake3"], hex(&root));
        let out = dir.path().join(format!("small-{i}.out"));
        ok(
            files_dev(&m, &relay, &["download", &id, out.to_str().unwrap()])
                .output()
                .unwrap(),
            "maxd files download",
        );
        assert!(
            std::fs::read(&out).unwrap() == data,
            "downloaded bytes differ for size {size}"
        );
    }

    // A big upload killed half-way (by its number of stored bytes on the relay's
    // metrics), then run again: only the missing ranges go over the network.
    let size = 96 << 20;
    let (path, data) = random_file(dir.path(), "big.bin", size);
    let before = metric(&m.metrics(), "maxd_relay_bytes_received_total") as u64;
    let mut child = upload_cmd(&relay, &token, &pin, &path, &["--streams", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = metric(&m.metrics(), "maxd_relay_bytes_received_total") as u64 - before;
        if got >= 8 << 20 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the upload ended before it could be killed (stored {got} bytes)"
        );
        assert!(
            Instant::now() < deadline,
            "the upload did not progress: {got} bytes stored"
        );
        // Polling the relay's metrics: the child gives no event to wait on.
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let killed = child.wait_with_output().unwrap();
    assert!(
        !killed.status.success(),
        "the killed upload reported success"
    );
    // The partial upload is on the relay under its id (its record is written before
    // any data is accepted), incomplete.
    let id = std::fs::read_dir(m.dir.path().join("data/relay/files"))
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".json")
                .map(str::to_owned)
        })
        .find(|id| stat(&m, &relay, id)["name"] == "big.bin")
        .expect("the killed upload left no file record");
    let st = stat(&m, &relay, &id);
    assert_eq!(
        st["complete"], "false",
        "the killed upload is complete: {st:?}"
    );
    let stored: u64 = st["stored"].parse().unwrap();
    assert!(
        stored >= 8 << 20 && stored < size as u64,
        "stored {stored} of {size}"
    );

    let (so, se) = ok(
        upload_cmd(&relay, &token, &pin, &path, &[])
            .output()
            .unwrap(),
        "maxd files upload (resumed)",
    );
    assert_eq!(
        so.lines().last().unwrap().trim(),
        id,
        "the resumed upload has another id"
    );
    let (moved, there) = network_bytes(&se);
    assert_eq!(moved + there, size as u64);
    assert!(
        there >= stored,
        "only {there} bytes counted as already there, the relay had {stored}"
    );
    assert!(
        moved <= size as u64 - stored,
        "the resumed upload sent {moved} of {size} bytes though the relay had {stored}"
    );
    // Every byte was stored once: what the relay received for this file is its size.
    // (Batches the relay had buffered when the client was killed are stored at once,
    // long before the rerun has hashed the file and asked what is missing.)
    let total = metric(&m.metrics(), "maxd_relay_bytes_received_total") as u64 - before;
    assert_eq!(
        total, size as u64,
        "the relay stored {total} bytes for a file of {size}"
    );
    let st = stat(&m, &relay, &id);
    assert_eq!(st["complete"], "true");

    let out = dir.path().join("big.out");
    let (_, se) = ok(
        files_dev(&m, &relay, &["download", &id, out.to_str().unwrap()])
            .output()
            .unwrap(),
        "maxd files download",
    );
    assert!(
        std::fs::read(&out).unwrap() == data,
        "the downloaded big file differs"
    );
    assert_eq!(network_bytes(&se), (size as u64, 0));
    // Downloading again into the same path starts over (OUT exists, no OUT.part).
    assert!(!dir.path().join("big.out.part").exists());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
