//! The web client that `maxd` serves, end to end in real browsers: headless Chromium
//! driven by playwright-core (`tests/browser/run.mjs`) types a room and a name and clicks
//! Join, as a person would. Also the static files and the dev-only token endpoint.
//!
//! Needs `node`, Chromium (`/usr/bin/chromium`, or `$CHROMIUM`) and
//! `tests/browser/node_modules` (`npm ci` there); `scripts/test.sh` installs all three.
//! Without them the browser tests fail saying so, unless `MAXD_SKIP_BROWSER_TESTS=1`.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::Maxd;
use testkit::{Client, TrackKind};

/// One browser test at a time: each runs several Chromiums, and the machine may have
/// two cores.
static BROWSERS: Mutex<()> = Mutex::new(());

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Screenshots and other artifacts: under the target directory, never committed.
fn artifact_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-artifacts");
    std::fs::create_dir_all(&d).expect("artifact dir");
    d
}

/// Whether the browser tests can run; panics with what is missing unless told to skip.
fn browser_tools() -> bool {
    if std::env::var_os("MAXD_SKIP_BROWSER_TESTS").is_some_and(|v| v != "0") {
        eprintln!("MAXD_SKIP_BROWSER_TESTS is set: skipping a browser test");
        return false;
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut missing = Vec::new();
    if !Path::new(&chromium).exists() {
        missing.push(format!("Chromium at {chromium}"));
    }
    if Command::new("node")
        .arg("--version")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        missing.push("node".to_string());
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        missing.push("tests/browser/node_modules (run `npm ci` there)".to_string());
    }
    assert!(
        missing.is_empty(),
        "browser test needs {}: run scripts/test.sh, which installs them, or set MAXD_SKIP_BROWSER_TESTS=1",
        missing.join(", ")
    );
    true
}

/// `node run.mjs SCENARIO` against `m`, its JSON lines arriving on a channel.
struct Driver {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Value>,
    stderr: std::thread::JoinHandle<String>,
    work: tempfile::TempDir,
}

impl Driver {
    fn start(scenario: &str, m: &Maxd, env: &[(&str, &str)]) -> Driver {
        Self::start_script("run.mjs", scenario, m, env)
    }

    /// `node SCRIPT SCENARIO` (a script of `tests/browser`) against `m`.
    fn start_script(script: &str, scenario: &str, m: &Maxd, env: &[(&str, &str)]) -> Driver {
        let work = tempfile::tempdir().expect("work dir");
        let mut child = Command::new("node")
            .arg(script)
            .arg(scenario)
            .current_dir(browser_dir())
            .env("MAXD_URL", m.base_url())
            .env("DATA_DIR", m.dir.path().join("data"))
            .env("ARTIFACT_DIR", artifact_dir())
            .env("WORK_DIR", work.path())
            // Chromium's and node's temporary files stay in this test's own folder.
            .env("TMPDIR", work.path())
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("browser: {line}");
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let stdin = child.stdin.take();
        Driver {
            child,
            stdin,
            lines,
            stderr,
            work,
        }
    }

    /// The next event named `name` (earlier ones are returned too, in `seen`).
    fn wait_event(
        &mut self,
        name: &str,
        timeout: Duration,
        seen: &mut Vec<Value>,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    seen.push(v.clone());
                    if v["event"] == name {
                        return Ok(v);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("no {name:?} event within {timeout:?}"));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("the driver ended before {name:?}"));
                }
            }
        }
    }

    fn say(&mut self, line: &str) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "{line}");
        }
    }

    /// Waits for the driver to exit (killing it after `timeout`): (success, stderr).
    fn finish(mut self, timeout: Duration) -> (bool, String) {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        let ok = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status.success(),
                Ok(None) if Instant::now() < deadline => {
                    // Polling a child process's exit: there is no event to wait on.
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break false;
                }
            }
        };
        let stderr = self.stderr.join().unwrap_or_default();
        drop(self.work);
        (ok, stderr)
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn three_browsers_call_through_the_web_client() {
    if !browser_tools() {
        return;
    }
    let _one = BROWSERS.lock().unwrap_or_else(|e| e.into_inner());
    let m = Maxd::start(r#"["sfu"]"#);
    let started = Instant::now();
    let mut d = Driver::start("call", &m, &[("ROOM", "three"), ("SAMPLES", "5")]);
    let mut seen = Vec::new();
    let passed = d.wait_event("passed", Duration::from_secs(180), &mut seen);
    let (ok, stderr) = d.finish(Duration::from_secs(30));
    assert!(
        passed.is_ok() && ok,
        "browser call failed: {passed:?}\n--- driver stderr:\n{}\n--- maxd log:\n{}",
        tail(&stderr, 80),
        tail(&m.log(), 40)
    );
    let ev = |name: &str| {
        seen.iter()
            .find(|v| v["event"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let flowing = ev("media_flowing");
    assert!(
        flowing["ms_since_join_click"]
            .as_u64()
            .is_some_and(|ms| ms <= 10_000),
        "{flowing}"
    );
    let shot = PathBuf::from(ev("screenshot")["path"].as_str().expect("screenshot event"));
    assert!(
        std::fs::metadata(&shot)
            .map(|md| md.len() > 1000)
            .unwrap_or(false),
        "screenshot at {}",
        shot.display()
    );
    let lat = ev("join_to_first_frame");
    let p50 = lat["p50_ms"].as_u64().expect("join_to_first_frame event");
    println!(
        "web client: join click to first remote frame decoded: p50 {p50} ms, samples {} (click to joined: p50 {} ms; \
         joining a call of 2 browsers, 320x180 fake video, loopback)",
        lat["samples_ms"], lat["joined_p50_ms"]
    );
    println!("screenshot: {}", shot.display());
    println!("browser test took {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn browser_pages_publish_with_whip_and_play_with_whep() {
    if !browser_tools() {
        return;
    }
    let _one = BROWSERS.lock().unwrap_or_else(|e| e.into_inner());
    let m = Maxd::start(r#"["sfu"]"#);
    let (whip, whep) = (m.room_token("stage", "encoder"), m.room_token("stage", "viewer"));
    let mut d = Driver::start("whip", &m, &[("ROOM", "stage"), ("WHIP_TOKEN", &whip), ("WHEP_TOKEN", &whep)]);
    let mut seen = Vec::new();
    let passed = d.wait_event("passed", Duration::from_secs(90), &mut seen);
    let (ok, stderr) = d.finish(Duration::from_secs(30));
    assert!(
        passed.is_ok() && ok,
        "WHIP/WHEP pages failed: {passed:?}\n--- driver stderr:\n{}\n--- maxd log:\n{}",
        tail(&stderr, 80),
        tail(&m.log(), 40)
    );
    let decoded = seen.iter().find(|v| v["event"] == "whep_decodes").cloned().unwrap_or(Value::Null);
    assert_eq!((decoded["frameWidth"].as_u64(), decoded["frameHeight"].as_u64()), (Some(320), Some(180)), "{decoded}");
    let created = seen.iter().find(|v| v["event"] == "whip_created").cloned().unwrap_or(Value::Null);
    assert!(created["location"].as_str().is_some_and(|l| l.starts_with("/whip/stage/sessions/")), "{created}");
}

#[test]
fn browser_and_webrtc_rs_client_exchange_audio_and_video() {
    if !browser_tools() {
        return;
    }
    let _one = BROWSERS.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let m = Maxd::start(r#"["sfu"]"#);
    let t = Duration::from_secs(20);
    let peer = rt.block_on(async {
        let peer = Client::connect(&m.base_url(), &m.room_token("mixed", "rustpeer"))
            .await
            .expect("join");
        peer.publish_av().await.expect("publish");
        peer
    });
    let mut d = Driver::start("mixed", &m, &[("ROOM", "mixed"), ("PEER_NAME", "rustpeer")]);
    let ready = match d.wait_event("ready", Duration::from_secs(60), &mut Vec::new()) {
        Ok(v) => v,
        Err(e) => {
            let (_, stderr) = d.finish(Duration::from_secs(10));
            panic!(
                "browser side failed: {e}\n--- driver stderr:\n{}\n--- maxd log:\n{}",
                tail(&stderr, 60),
                tail(&m.log(), 40)
            );
        }
    };
    // The browser received the peer's audio and video (the driver checked); now the
    // webrtc-rs peer receives the browser's.
    let browser = ready["participant"]
        .as_str()
        .expect("browser participant id")
        .to_string();
    let (audio, video) = rt.block_on(async {
        let a = peer
            .wait_media_from(&browser, TrackKind::Audio, 50, t)
            .await
            .expect("audio from the browser");
        let v = peer
            .wait_media_from(&browser, TrackKind::Video, 30, t)
            .await
            .expect("video from the browser");
        (a, v)
    });
    assert!(audio.bytes > 0 && video.bytes > 0, "{audio:?} {video:?}");
    d.say("done");
    let (ok, stderr) = d.finish(Duration::from_secs(30));
    assert!(ok, "browser side failed:\n{}", tail(&stderr, 60));
    rt.block_on(peer.close());
}

/// Drops every packet to and from one local port (UDP and TCP) while it lives: an nftables
/// table of this process's own, deleted on drop.
struct Blackhole {
    table: String,
}

fn nft(args: &[&str]) -> Result<(), String> {
    let out = Command::new("nft")
        .args(args)
        .output()
        .map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Blackhole {
    fn new(port: u16) -> Blackhole {
        let table = format!("maxd_browser_test_{}", std::process::id());
        let b = Blackhole { table };
        let t = b.table.as_str();
        let port = port.to_string();
        nft(&["add", "table", "inet", t]).unwrap();
        nft(&[
            "add",
            "chain",
            "inet",
            t,
            "in",
            "{ type filter hook input priority 0 ; }",
        ])
        .unwrap();
        for rule in [
            ["udp", "dport"],
            ["udp", "sport"],
            ["tcp", "dport"],
            ["tcp", "sport"],
        ] {
            nft(&[
                "add", "rule", "inet", t, "in", rule[0], rule[1], &port, "drop",
            ])
            .unwrap();
        }
        b
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        let _ = nft(&["delete", "table", "inet", &self.table]);
    }
}

/// A network outage on the media port: both browsers notice (ICE disconnected), and when
/// the network is back they restart ICE on both connections by themselves and media
/// flows again. Needs root and `nft` (scripts/test.sh installs nftables); says so and
/// returns otherwise.
#[test]
fn browsers_recover_from_a_media_outage_by_themselves() {
    if !browser_tools() {
        return;
    }
    if nft(&["list", "tables"]).is_err() {
        eprintln!("skipping the media outage test: it needs root and nft (nftables)");
        return;
    }
    let _one = BROWSERS.lock().unwrap_or_else(|e| e.into_inner());
    let m = Maxd::start(r#"["sfu"]"#);
    let mut d = Driver::start("blip", &m, &[("ROOM", "blip")]);
    let mut seen = Vec::new();
    let step = |d: &mut Driver, seen: &mut Vec<Value>, event: &str| {
        d.wait_event(event, Duration::from_secs(60), seen)
    };
    let mut res = step(&mut d, &mut seen, "ready");
    if res.is_ok() {
        let hole = Blackhole::new(m.media.port());
        d.say("blocked");
        res = step(&mut d, &mut seen, "media_down");
        drop(hole);
        d.say("unblocked");
    }
    if res.is_ok() {
        res = step(&mut d, &mut seen, "passed");
    }
    let (ok, stderr) = d.finish(Duration::from_secs(30));
    assert!(
        res.is_ok() && ok,
        "outage recovery failed: {res:?}\n--- driver stderr:\n{}\n--- maxd log:\n{}",
        tail(&stderr, 60),
        tail(&m.log(), 40)
    );
}

// ---- the messenger (web/index.html at `/`) -----------------------------------------------

/// `maxd` with every plane the messenger uses: chat (signalling), files (relay), calls;
/// `extra` environment on top.
fn messenger_server(extra: &[(&str, &str)]) -> Maxd {
    // A second login of one number follows at once in the devices step.
    let mut env = vec![("MAXD_SIGNALLING__CODE_COOLDOWN", "1s")];
    env.extend_from_slice(extra);
    Maxd::start_with(r#"["sfu","signalling","relay"]"#, &env)
}

/// Runs `messenger.mjs SCENARIO` to `passed` against a server with `server_env`; the
/// events it printed.
fn run_messenger(
    scenario: &str,
    server_env: &[(&str, &str)],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Vec<Value> {
    let _one = BROWSERS.lock().unwrap_or_else(|e| e.into_inner());
    let m = messenger_server(server_env);
    let started = Instant::now();
    let mut d = Driver::start_script("messenger.mjs", scenario, &m, env);
    let mut seen = Vec::new();
    let passed = d.wait_event("passed", timeout, &mut seen);
    let (ok, stderr) = d.finish(Duration::from_secs(30));
    assert!(
        passed.is_ok() && ok,
        "messenger {scenario} failed: {passed:?}\n--- driver stderr:\n{}\n--- maxd log:\n{}",
        tail(&stderr, 80),
        tail(&m.log(), 40)
    );
    println!(
        "messenger {scenario} took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    seen
}

fn screenshots(seen: &[Value]) -> Vec<PathBuf> {
    let shots: Vec<PathBuf> = seen
        .iter()
        .filter(|v| v["event"] == "screenshot")
        .map(|v| PathBuf::from(v["path"].as_str().unwrap()))
        .collect();
    for s in &shots {
        assert!(
            std::fs::metadata(s)
                .map(|md| md.len() > 1000)
                .unwrap_or(false),
            "screenshot at {}",
            s.display()
        );
        println!("screenshot: {}", s.display());
    }
    shots
}

/// Two people log in with their numbers and SMS codes, open a dialog and write: ticks,
/// typing, reply, edit, reaction, delete; one goes offline while the other writes and
/// comes back to exactly what was missed, nothing twice; history by cursor; a group, a
/// forward; devices and log out. One window is phone-sized (390x844), the other desktop-sized (1280x720).
#[test]
fn messenger_two_people_chat_live_and_resume_after_going_offline() {
    if !browser_tools() {
        return;
    }
    let seen = run_messenger("chat", &[], &[], Duration::from_secs(180));
    for step in [
        "logged_in",
        "message_delivered_and_read",
        "typing_and_reply",
        "edit_react_delete",
        "offline_and_back",
        "reload_keeps_ticks",
        "offline_reload",
        "history_by_cursor",
        "group",
        "forward",
        "read_offline",
        "devices_and_logout",
    ] {
        assert!(seen.iter().any(|v| v["event"] == step), "no {step} step");
    }
    let shots = screenshots(&seen);
    for size in ["1280x720", "390x844"] {
        assert!(
            shots.iter().any(|s| s.to_string_lossy().contains(size)),
            "a screenshot at {size}"
        );
    }
}

/// A 50 MiB file sent in a dialog: the page reloads in the middle of the upload, the
/// upload is listed with its progress, resumes from where the relay had it once the file
/// is chosen again, and the other person downloads it bit-exact. Then a voice message
/// recorded from the (fake) microphone, with its waveform, played to its end, and a
/// picture shown as a preview.
#[test]
fn messenger_file_upload_survives_a_reload_and_voice_messages_play() {
    if !browser_tools() {
        return;
    }
    let seen = run_messenger("file", &[], &[("FILE_MIB", "50")], Duration::from_secs(180));
    let done = seen
        .iter()
        .find(|v| v["event"] == "file_bit_exact")
        .expect("file_bit_exact");
    println!("messenger file: {done}");
    let voice = seen
        .iter()
        .find(|v| v["event"] == "voice_message")
        .expect("voice_message");
    println!("messenger voice message: {voice}");
    assert!(seen.iter().any(|v| v["event"] == "image_preview"), "no image preview");
    screenshots(&seen);
}

/// Access tokens of 4 seconds: two tabs of one login write at the moment both need a
/// new token, three times, and reconnect after each refresh. Both stay logged in with
/// one session: the tabs never present a refresh token another tab already rotated
/// (which the server answers by revoking the session).
#[test]
fn messenger_two_tabs_refresh_tokens_without_revoking_the_session() {
    if !browser_tools() {
        return;
    }
    let seen = run_messenger(
        "refresh",
        &[("MAXD_SIGNALLING__ACCESS_TTL", "4s")],
        &[],
        Duration::from_secs(120),
    );
    let r = seen
        .iter()
        .find(|v| v["event"] == "refreshed_in_two_tabs")
        .expect("refreshed_in_two_tabs");
    assert!(r["rotations"].as_u64().is_some_and(|n| n >= 3), "{r}");
}

// ---- the static files and the dev token endpoint (no browser) -------------------------

/// A plain HTTP/1.1 request: (status, lower-cased head, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

#[test]
fn web_client_files_are_served_from_the_binary() {
    let m = Maxd::start(r#"["sfu"]"#);
    for (path, ctype) in [
        ("/", "text/html; charset=utf-8"),
        ("/index.html", "text/html; charset=utf-8"),
        ("/messenger.js", "text/javascript; charset=utf-8"),
        ("/api.js", "text/javascript; charset=utf-8"),
        ("/chatsocket.js", "text/javascript; charset=utf-8"),
        ("/tus.js", "text/javascript; charset=utf-8"),
        ("/voice.js", "text/javascript; charset=utf-8"),
        ("/cache.js", "text/javascript; charset=utf-8"),
        ("/sw.js", "text/javascript; charset=utf-8"),
        ("/messenger.css", "text/css; charset=utf-8"),
        ("/call", "text/html; charset=utf-8"),
        ("/call.html", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/rtc.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
    ] {
        let (status, head, body) = http(m.http, "GET", path, &[], "");
        assert_eq!(status, 200, "{path}");
        assert_eq!(header(&head, "content-type"), Some(ctype), "{path}");
        assert_eq!(header(&head, "cache-control"), Some("no-cache"), "{path}");
        assert!(!body.is_empty(), "{path}");
        let etag = header(&head, "etag").expect("etag").to_string();
        let (status, _, body) = http(m.http, "GET", path, &[("If-None-Match", &etag)], "");
        assert_eq!((status, body.as_str()), (304, ""), "{path} revalidated");
    }
    // `/` is the messenger, `/call` the room page; both with the page's CSP.
    let (_, head, body) = http(m.http, "GET", "/", &[], "");
    assert!(
        body.contains(r#"id="phone""#) && body.contains("/messenger.js"),
        "the messenger"
    );
    assert!(
        header(&head, "content-security-policy").is_some_and(|c| c.contains("default-src 'self'"))
    );
    let (_, head, body) = http(m.http, "GET", "/call", &[], "");
    assert!(
        body.contains(r#"id="join""#) && body.contains("/app.js"),
        "the room page"
    );
    assert!(
        header(&head, "content-security-policy").is_some_and(|c| c.contains("default-src 'self'"))
    );
    // The room page's links from before the messenger still lead to it.
    for q in ["room=demo&token=abc", "video=320x180", "room=demo"] {
        let (status, head, _) = http(m.http, "GET", &format!("/?{q}"), &[], "");
        assert_eq!(status, 307, "/?{q}");
        assert_eq!(
            header(&head, "location"),
            Some(format!("/call?{q}").as_str())
        );
    }
    assert_eq!(http(m.http, "GET", "/?chat=1", &[], "").0, 200);
    assert_eq!(http(m.http, "GET", "/nope.js", &[], "").0, 404);
    // Dev mode: the login screen learns where the dev SMS provider writes codes.
    let (status, head, body) = http(m.http, "GET", "/dev/info", &[], "");
    assert_eq!(status, 200);
    assert_eq!(header(&head, "cache-control"), Some("no-store"));
    let info: Value = serde_json::from_str(&body).unwrap();
    let file = info["sms_file"].as_str().expect("sms_file");
    assert!(
        Path::new(file).is_absolute() && file.ends_with("data/sms-codes.jsonl"),
        "{file}"
    );
}

#[test]
fn dev_token_endpoint_issues_room_tokens_and_checks_input() {
    let m = Maxd::start(r#"["sfu"]"#);
    let json = [("Content-Type", "application/json")];
    let post = |body: &str| http(m.http, "POST", "/dev/token", &json, body);
    let (status, head, body) = post(r#"{"room":"demo","name":"Алиса"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&head, "cache-control"), Some("no-store"));
    let v: Value = serde_json::from_str(&body).unwrap();
    let keys = common::Keys::resolve(None, &m.dir.path().join("data"), true).unwrap();
    let claims = keys
        .verify_room(v["token"].as_str().unwrap(), "demo")
        .expect("a token for the room");
    assert_eq!(claims.name.as_deref(), Some("Алиса"));
    assert_eq!(claims.sub, v["identity"].as_str().unwrap());
    assert!(
        claims.grants.publish
            && claims.grants.subscribe
            && !claims.grants.files
            && !claims.grants.chat
    );
    let (_, _, again) = post(r#"{"room":"demo","name":"Алиса"}"#);
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_ne!(
        again["identity"], v["identity"],
        "every token gets its own identity"
    );

    for (bad, why) in [
        (r#"{"room":"","name":"a"}"#, "room is empty"),
        (r#"{"room":"a b","name":"a"}"#, "room may contain only"),
        (
            &format!(r#"{{"room":"{}","name":"a"}}"#, "r".repeat(65)),
            "room is longer",
        ),
        (r#"{"room":"r","name":"  "}"#, "name is empty"),
        (
            &format!(r#"{{"room":"r","name":"{}"}}"#, "n".repeat(65)),
            "name is longer",
        ),
        (r#"{"room":"r","name":"a\u0007"}"#, "control characters"),
        (r#"{"room":"r"}"#, "expected JSON"),
        (r#"{"room":"r","name":"a","admin":true}"#, "expected JSON"),
        ("not json", "expected JSON"),
    ] {
        let (status, _, body) = post(bad);
        assert_eq!(status, 400, "{bad}: {body}");
        let e: Value = serde_json::from_str(&body).expect("a JSON error");
        assert!(
            e["error"].as_str().is_some_and(|s| s.contains(why)),
            "{bad}: {body}"
        );
    }
    // Names never reach the server log.
    assert!(!m.log().contains("Алиса"));
}

#[test]
fn dev_token_endpoint_does_not_exist_outside_dev_mode() {
    let secret = "0123456789abcdef0123456789abcdef-test";
    let m = Maxd::start_with(
        r#"["sfu"]"#,
        &[("MAXD_DEV", "false"), ("MAXD_AUTH__SECRET", secret)],
    );
    let (status, _, _) = http(
        m.http,
        "POST",
        "/dev/token",
        &[("Content-Type", "application/json")],
        r#"{"room":"demo","name":"a"}"#,
    );
    assert_eq!(status, 404);
    assert_eq!(http(m.http, "GET", "/dev/info", &[], "").0, 404);
    assert_eq!(
        http(m.http, "GET", "/", &[], "").0,
        200,
        "the page itself is still served"
    );
}
