//! The real `maxd files` command line against a real `maxd`: upload, stat and download
//! round trip bit-exact, and an upload killed half-way sends only what the relay lacks
//! when run again.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{Maxd, bin, http, metric, relay_addr_and_pin};

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
    // "size: 3145729 bytes (3.00 MiB)": the exact figure is the first word.
    so.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| {
            let v = match k {
                "size" | "stored" => v.split_whitespace().next().unwrap_or(""),
                _ => v,
            };
            (k.to_string(), v.to_string())
        })
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
    let there_at = words.iter().rposition(|w| *w == "already").unwrap();
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

/// A relay-only `maxd` on a data directory that outlives it (so it can be restarted),
/// optionally under a limit on open file descriptors (`prlimit --nofile`).
struct Node {
    child: std::process::Child,
    log: PathBuf,
    http: std::net::SocketAddr,
    relay: std::net::SocketAddr,
}

impl Node {
    fn start(data: &Path, log: &Path, nofile: Option<u64>) -> Node {
        let http: std::net::SocketAddr = format!("127.0.0.1:{}", support::free_port())
            .parse()
            .unwrap();
        let relay: std::net::SocketAddr = format!("127.0.0.1:{}", support::free_port())
            .parse()
            .unwrap();
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let child = cmd
            .env("MAXD_DATA_DIR", data)
            .env("MAXD_HTTP__LISTEN", http.to_string())
            .env("MAXD_RELAY__LISTEN", relay.to_string())
            .env("MAXD_ROLES", r#"["relay"]"#)
            // One user stores them all, faster than the per-user limits allow.
            .env("MAXD_RELAY__UPLOAD_STARTS_PER_MINUTE", "0")
            .env("MAXD_RELAY__MAX_PARTIAL_UPLOADS", "0")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("spawn maxd");
        let mut node = Node {
            child,
            log: log.to_owned(),
            http,
            relay,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&node.log).unwrap_or_default();
            if text.contains("http listening") {
                return node;
            }
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("maxd exited ({status}):\n{text}");
            }
            assert!(Instant::now() < deadline, "maxd did not start:\n{text}");
            // Polling a child's log: there is no event to wait on.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request (connection: close): status, headers (lowercase names), body.
/// The relay used to keep three descriptors open per stored file and, when opening
/// one failed at start-up (EMFILE), took the file for gone and deleted it. Several
/// hundred files - complete, partial over QUIC, partial over tus - and a restart under
/// `ulimit -n 256`: every one is still there, and its bytes come back exact.
#[test]
fn a_restart_under_a_low_descriptor_limit_loses_nothing() {
    use relay::client::{Client, Options, Progress};
    use std::sync::Arc;
    const COMPLETE: usize = 200;
    const QUIC_PARTIAL: usize = 40;
    const TUS_PARTIAL: usize = 160;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let node = Node::start(&data, &dir.path().join("maxd-1.log"), None);
    let keys = common::Keys::resolve(None, &data, true).unwrap();
    let token = keys.mint_for(
        "alice",
        None,
        None,
        common::Grants {
            files: true,
            ..Default::default()
        },
        Duration::from_secs(3600),
    );
    let opts = |relay| Options {
        server: relay,
        server_name: "localhost".into(),
        token: token.clone(),
        trust: relay::tls::Trust::Pin(relay::tls::dev_fingerprint(&data).unwrap()),
        streams: 1,
    };
    // Sizes around group boundaries; each file's content is its own.
    let content = |i: usize| {
        let size = [1usize, 5000, 16 * 1024, 16 * 1024 + 1, 40_000][i % 5] + i;
        let (p, d) = random_file(&files, &format!("f{i}"), size);
        (p, d)
    };
    let mut complete = Vec::new();
    let mut quic_partial = Vec::new();
    rt.block_on(async {
        let c = Client::connect(&opts(node.relay)).await.unwrap();
        for i in 0..COMPLETE {
            let (p, d) = content(i);
            let id = c
                .upload(&p, &format!("f{i}"), "", Arc::new(Progress::default()))
                .await
                .unwrap();
            complete.push((id, d));
        }
        // Partial: the first batch (512 KiB) lands, the second has a corrupt group and
        // is refused.
        for i in 0..QUIC_PARTIAL {
            let (_, d) = random_file(&files, &format!("p{i}"), 600_000 + i);
            let (ob, root) = relay::tree::outboard_of(&d[..], d.len() as u64).unwrap();
            let mut bad = d.clone();
            bad[560_000] ^= 1;
            let badp = files.join(format!("p{i}.bad"));
            std::fs::write(&badp, &bad).unwrap();
            let p = Arc::new(Progress::default());
            let err = c
                .upload_with(
                    Arc::new(std::fs::File::open(&badp).unwrap()),
                    d.len() as u64,
                    &ob,
                    &root,
                    "p",
                    "",
                    p.clone(),
                )
                .await
                .unwrap_err();
            assert_eq!(
                err.code(),
                Some(relay::proto::ErrorCode::HashMismatch),
                "{err}"
            );
            quic_partial.push((p.id.get().unwrap().clone(), d));
        }
        c.close().await;
    });
    let auth = ("authorization", format!("Bearer {token}"));
    let tus = ("tus-resumable", "1.0.0".to_string());
    let mut tus_partial = Vec::new();
    for i in 0..TUS_PARTIAL {
        let (_, d) = random_file(&files, &format!("t{i}"), 50_000);
        let (st, h, _) = http(
            node.http,
            "POST",
            "/files",
            &[auth.clone(), tus.clone(), ("upload-length", "50000".into())],
            b"",
        );
        assert_eq!(st, 201);
        let loc = h.iter().find(|(k, _)| k == "location").unwrap().1.clone();
        let octet = (
            "content-type",
            "application/offset+octet-stream".to_string(),
        );
        let (st, h, _) = http(
            node.http,
            "PATCH",
            &loc,
            &[
                auth.clone(),
                tus.clone(),
                octet,
                ("upload-offset", "0".into()),
            ],
            &d[..40_000],
        );
        assert_eq!(st, 204);
        assert_eq!(
            h.iter().find(|(k, _)| k == "upload-offset").unwrap().1,
            "32768"
        );
        tus_partial.push((loc, d));
    }
    node.stop();

    // Holding three descriptors per file, 400 files need 1,200: far over 256.
    let node = Node::start(&data, &dir.path().join("maxd-2.log"), Some(256));
    rt.block_on(async {
        let c = Client::connect(&opts(node.relay)).await.unwrap();
        for (i, (id, d)) in complete.iter().enumerate() {
            let out = files.join(format!("out{i}"));
            let got = c.download(id, &out, Arc::new(Progress::default())).await;
            assert!(
                got.is_ok(),
                "complete file {i} of {COMPLETE} is gone after the restart: {:?}\n{}",
                got.err(),
                std::fs::read_to_string(&node.log).unwrap()
            );
            assert!(
                std::fs::read(&out).unwrap() == *d,
                "complete file {i} differs after the restart"
            );
        }
        for (i, (id, d)) in quic_partial.iter().enumerate() {
            let info = c
                .stat(id)
                .await
                .unwrap_or_else(|e| panic!("partial upload {i} is gone after the restart: {e}"));
            assert!(!info.complete);
            assert_eq!(info.stored, 512 * 1024, "partial upload {i}");
            let ob = c.outboard(&info).await.unwrap();
            assert!(
                c.read_range(&info, &ob, 0, 512 * 1024).await.unwrap() == d[..512 * 1024],
                "partial upload {i} differs"
            );
        }
        c.close().await;
    });
    for (i, (loc, d)) in tus_partial.iter().enumerate() {
        let (st, h, _) = http(node.http, "HEAD", loc, &[auth.clone(), tus.clone()], b"");
        assert_eq!(st, 200, "tus upload {i} is gone after the restart");
        assert_eq!(
            h.iter().find(|(k, _)| k == "upload-offset").unwrap().1,
            "32768",
            "tus upload {i}"
        );
        let (st, _, body) = http(
            node.http,
            "GET",
            loc,
            &[auth.clone(), ("range", "bytes=0-32767".into())],
            b"",
        );
        assert_eq!(st, 206, "tus upload {i}");
        assert!(body == d[..32768], "tus upload {i} differs");
    }
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(
        log.contains(&format!("files={}", COMPLETE + QUIC_PARTIAL + TUS_PARTIAL)),
        "the store did not load every file:\n{log}"
    );
}
