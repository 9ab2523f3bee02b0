//! Runs the real `maxd` binary for end-to-end tests: free ports, its own data directory,
//! configuration through `MAXD_*` environment variables, killed on drop.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Maxd {
    child: Child,
    pub dir: tempfile::TempDir,
    pub http: SocketAddr,
    pub media: SocketAddr,
    /// The relay's QUIC address.
    pub relay: SocketAddr,
    env: Vec<(String, String)>,
}

/// A port free on loopback for both TCP and UDP.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A port free on `ip` for both TCP and UDP.
pub fn free_port_on(ip: &str) -> u16 {
    loop {
        let t = TcpListener::bind((ip, 0)).expect("bind tcp");
        let port = t.local_addr().unwrap().port();
        if UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_maxd"))
}

impl Maxd {
    /// Starts `maxd` with the given roles and waits for `/healthz`.
    pub fn start(roles: &str) -> Maxd {
        Self::start_with(roles, &[])
    }

    /// Ports are picked free, but another process may take one before `maxd` binds it:
    /// then `maxd` exits saying so, and we try again with new ports. `RUST_LOG` in
    /// `extra` replaces the default `info`.
    pub fn start_with(roles: &str, extra: &[(&str, &str)]) -> Maxd {
        Self::start_under(&[], roles, extra)
    }

    /// As [`Maxd::start_with`], run through `prefix` (a program that execs the rest of
    /// its command line, e.g. `prlimit --nofile=256:256 --`), so the pid is maxd's.
    pub fn start_under(prefix: &[&str], roles: &str, extra: &[(&str, &str)]) -> Maxd {
        Self::start_full("127.0.0.1", prefix, roles, extra)
    }

    /// As [`Maxd::start_with`], every plane listening on `ip` (another loopback address
    /// than the clients' 127.0.0.1, so the server's own addresses are told apart from
    /// theirs).
    pub fn start_on(ip: &str, roles: &str, extra: &[(&str, &str)]) -> Maxd {
        Self::start_full(ip, &[], roles, extra)
    }

    fn start_full(ip: &str, prefix: &[&str], roles: &str, extra: &[(&str, &str)]) -> Maxd {
        for attempt in 1.. {
            match Self::try_start(ip, prefix, roles, extra) {
                Ok(m) => return m,
                Err(log) if attempt < 4 && log.contains("binding") => continue,
                Err(log) => panic!("maxd did not start:\n{log}"),
            }
        }
        unreachable!()
    }

    fn try_start(ip: &str, prefix: &[&str], roles: &str, extra: &[(&str, &str)]) -> Result<Maxd, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let http: SocketAddr = format!("{ip}:{}", free_port_on(ip)).parse().unwrap();
        let media: SocketAddr = format!("{ip}:{}", free_port_on(ip)).parse().unwrap();
        let relay: SocketAddr = format!("{ip}:{}", free_port_on(ip)).parse().unwrap();
        let mut env = vec![
            ("MAXD_DATA_DIR".to_string(), dir.path().join("data").display().to_string()),
            ("MAXD_HTTP__LISTEN".to_string(), http.to_string()),
            ("MAXD_SFU__UDP_LISTEN".to_string(), media.to_string()),
            ("MAXD_SFU__TCP_LISTEN".to_string(), media.to_string()),
            ("MAXD_RELAY__LISTEN".to_string(), relay.to_string()),
            ("MAXD_ROLES".to_string(), roles.to_string()),
        ];
        for (k, v) in extra {
            env.push((k.to_string(), v.to_string()));
        }
        let log = std::fs::File::create(dir.path().join("maxd.log")).unwrap();
        let mut cmd = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let child = cmd
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn maxd");
        let mut m = Maxd { child, dir, http, media, relay, env };
        m.wait_healthy(Duration::from_secs(30))?;
        Ok(m)
    }

    /// Waits for `maxd` to say it listens, or for `maxd` to exit (its log is the error).
    fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("maxd exited early ({status}):\n{}", self.log()));
            }
            // Its own log line, not a connect: another process may hold the port.
            if self.log().contains("http listening") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("maxd did not listen within {timeout:?}:\n{}", self.log()));
            }
            // Polling the log of a child process: there is no event to wait on.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.http)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maxd.log")).unwrap_or_default()
    }

    /// `maxd token ...` with this server's configuration.
    pub fn token(&self, args: &[&str]) -> String {
        let out = Command::new(bin())
            .arg("token")
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("run maxd token");
        assert!(out.status.success(), "maxd token failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn room_token(&self, room: &str, identity: &str) -> String {
        self.token(&["--room", room, "--identity", identity])
    }

    /// The latest dev-mode SMS code sent to `phone` (E.164), from the dev provider's file.
    pub fn sms_code(&self, phone: &str) -> String {
        let codes = std::fs::read_to_string(self.dir.path().join("data/sms-codes.jsonl")).unwrap_or_default();
        let line: serde_json::Value = codes
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["to"] == phone)
            .unwrap_or_else(|| panic!("no SMS code was sent to {phone}"));
        line["code"].as_str().expect("a code").to_string()
    }

    /// The text of `/metrics`.
    pub fn metrics(&self) -> String {
        http_get(self.http, "/metrics").1
    }
}

impl Drop for Maxd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http(addr, "GET", path, &[], &[]);
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The value of a Prometheus sample (summed over label sets) in `text`.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One HTTP/1.1 request with `Connection: close`: (status, headers in lower case, body).
pub fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, raw[split + 4..].to_vec())
}


/// The relay's address and certificate fingerprint, from maxd's own log line.
pub fn relay_addr_and_pin(m: &Maxd) -> (String, String) {
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

pub mod pion;
pub mod udp_proxy;

/// JSON over HTTP to `maxd` (the access token as a bearer token): (status, body; `Null`
/// when the body is not JSON).
pub async fn api(m: &Maxd, method: &str, path: &str, token: Option<&str>, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let r = testkit::whip::http(&m.base_url(), method, path, &headers, &body).await.unwrap();
    (r.status, serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null))
}
