//! A real relay (real quinn, real files, real sockets) for the tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use relay::client::{Client, Options, Progress};
use relay::tls::Trust;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const SECRET: &[u8] = b"relay-test-secret-0123456789-abcdef";

pub struct Server {
    pub relay: Option<relay::Relay>,
    pub data_dir: PathBuf,
    pub keys: common::Keys,
    pub http: SocketAddr,
    http_task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.http_task.abort();
    }
}

pub fn config() -> relay::Config {
    relay::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    }
}

pub async fn start(data_dir: &Path, config: relay::Config) -> Server {
    start_with_clock(data_dir, config, relay::Clock::system()).await
}

/// A relay whose expiry and rate limits follow `clock` (a manual one moves only when told).
pub async fn start_with_clock(
    data_dir: &Path,
    config: relay::Config,
    clock: relay::Clock,
) -> Server {
    let keys = common::Keys::from_secret(SECRET).unwrap();
    let ctx = common::Context {
        data_dir: data_dir.to_owned(),
        dev: true,
        keys: keys.clone(),
        registry: prometheus::Registry::new(),
    };
    let relay = relay::Relay::start_with_clock(config, ctx, clock)
        .await
        .expect("relay starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let router = relay.router();
    let http_task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Server {
        relay: Some(relay),
        data_dir: data_dir.to_owned(),
        keys,
        http,
        http_task,
    }
}

impl Server {
    pub fn relay(&self) -> &relay::Relay {
        self.relay.as_ref().unwrap()
    }

    pub fn token(&self, user: &str) -> String {
        let grants = common::Grants {
            files: true,
            ..Default::default()
        };
        self.keys
            .mint_for(user, None, None, grants, Duration::from_secs(3600))
    }

    pub fn options(&self, token: String) -> Options {
        Options {
            server: self.relay().local_addr(),
            server_name: "localhost".into(),
            token,
            trust: Trust::Pin(self.relay().fingerprint().to_owned()),
            streams: 4,
        }
    }

    pub async fn client(&self, user: &str) -> Client {
        Client::connect(&self.options(self.token(user)))
            .await
            .expect("client connects")
    }

    pub async fn stop(&mut self) {
        self.relay.take().unwrap().shutdown().await;
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A file of `size` random bytes.
pub fn random_file(dir: &Path, name: &str, size: usize) -> (PathBuf, Vec<u8>) {
    let mut data = vec![0u8; size];
    rand::rng().fill_bytes(&mut data);
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

pub fn progress() -> Arc<Progress> {
    Arc::new(Progress::default())
}

/// Bounds every wait of a test.
pub async fn within<T>(secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("timed out")
}

/// A minimal HTTP/1.1 exchange: returns status, headers (lowercase names) and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let hdrs: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if hdrs
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    (status, hdrs, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        b = &b[nl + 2..];
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[..n]);
        b = &b[n + 2..];
    }
}

pub fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}
