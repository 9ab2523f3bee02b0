//! Test support: a real server on a free port, an HTTP client, a WebSocket client, and a
//! private PostgreSQL server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMsg;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct Server {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub sig: signalling::Signalling,
    pub keys: common::Keys,
    pub cfg: signalling::Config,
    tmp: Option<tempfile::TempDir>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start(cfg: signalling::Config) -> Server {
    start_in(cfg, tempfile::tempdir().unwrap()).await
}

impl Server {
    /// Stops this server and starts a new one on the same data directory, as a new
    /// process would: same secret, empty in-memory state.
    pub async fn restart(mut self) -> Server {
        let tmp = self.tmp.take().unwrap();
        let cfg = self.cfg.clone();
        drop(self);
        start_in(cfg, tmp).await
    }
}

async fn start_in(cfg: signalling::Config, tmp: tempfile::TempDir) -> Server {
    let keys = common::Keys::from_secret(&[9u8; 32]).unwrap();
    let ctx = common::Context {
        data_dir: tmp.path().to_path_buf(),
        dev: true,
        keys: keys.clone(),
        registry: prometheus::Registry::new(),
    };
    let sig = signalling::Signalling::start(cfg.clone(), ctx)
        .await
        .expect("signalling starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = sig.router();
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    Server {
        addr,
        data_dir: tmp.path().to_path_buf(),
        sig,
        keys,
        cfg,
        tmp: Some(tmp),
        task,
    }
}

/// A config for tests: SQLite, or PostgreSQL when `url` is given.
pub fn config(url: Option<&str>) -> signalling::Config {
    signalling::Config {
        database_url: url.unwrap_or("").to_string(),
        ..Default::default()
    }
}

pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            bytes::Bytes::from(b.to_string())
        }
        None => bytes::Bytes::new(),
    };
    let resp = tokio::time::timeout(WAIT, client.request(req.body(Full::new(body)).unwrap()))
        .await
        .expect("http timeout")
        .expect("http");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
    (status, v)
}

pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = client
        .request(
            req.body(Full::new(bytes::Bytes::from(body.to_string())))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// An answer as it came: status, `Content-Type` and body text.
pub struct Raw {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: String,
}

/// Any request: `content_type` and `body` as given (no JSON encoding).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Raw {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = tokio::time::timeout(
        WAIT,
        client.request(req.body(Full::new(bytes::Bytes::from(body))).unwrap()),
    )
    .await
    .expect("http timeout")
    .expect("http");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Raw {
        status,
        content_type,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// A push gateway (or bot webhook receiver) on HTTPS with a certificate from a private CA (written to a PEM file
/// `maxd` is told to trust); each request's body goes to the channel.
pub async fn tls_gateway(
    dir: &std::path::Path,
) -> (
    u16,
    std::path::PathBuf,
    tokio::sync::mpsc::UnboundedReceiver<Value>,
) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let ca_file = dir.join("gateway-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head, then Content-Length bytes of body.
                let body = loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break body.to_string();
                        }
                    }
                };
                let answer = r#"{"rejected":[]}"#;
                let _ = s
                    .write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}", answer.len()).as_bytes())
                    .await;
                let _ = s.shutdown().await;
                let _ = tx.send(serde_json::from_str(&body).unwrap_or(Value::Null));
            });
        }
    });
    (port, ca_file, rx)
}

/// The latest code the dev SMS provider wrote for `phone`, with its full text.
pub fn dev_code(data_dir: &Path, phone: &str) -> (String, String) {
    let s = std::fs::read_to_string(data_dir.join(signalling::sms::DEV_SMS_FILE))
        .expect("dev SMS file");
    let line = s
        .lines()
        .rev()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["to"] == phone)
        .expect("a code for this number");
    (
        line["code"].as_str().unwrap().to_string(),
        line["text"].as_str().unwrap().to_string(),
    )
}

pub struct User {
    pub id: i64,
    pub token: String,
    pub refresh: String,
    pub session: String,
}

/// Registers (or logs in) `phone` with the code read from the dev provider.
pub async fn login(addr: SocketAddr, data_dir: &Path, phone: &str, device: &str) -> User {
    let (st, v) = http(
        addr,
        "POST",
        "/api/auth/code",
        None,
        Some(json!({"phone": phone})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (code, _) = dev_code(data_dir, phone);
    let (st, v) = http(
        addr,
        "POST",
        "/api/auth/verify",
        None,
        Some(json!({"phone": phone, "code": code, "device_name": device})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    User {
        id: v["user_id"].as_i64().unwrap(),
        token: v["access_token"].as_str().unwrap().into(),
        refresh: v["refresh_token"].as_str().unwrap().into(),
        session: v["session_id"].as_str().unwrap().into(),
    }
}

pub struct Ws {
    pub inner: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Ws {
    pub async fn connect(addr: SocketAddr, token: &str) -> Ws {
        let (inner, _) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws?access_token={token}"))
                .await
                .expect("ws connects");
        Ws { inner }
    }

    pub async fn send(&mut self, v: Value) {
        self.inner
            .send(WsMsg::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, s: &str) {
        self.inner
            .send(WsMsg::Text(s.to_string().into()))
            .await
            .unwrap();
    }

    /// Next JSON event, or panics after [`WAIT`].
    pub async fn next(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.inner.next())
                .await
                .expect("timed out waiting for an event");
            match m {
                Some(Ok(WsMsg::Text(t))) => return serde_json::from_str(&t).unwrap(),
                Some(Ok(WsMsg::Close(f))) => panic!("closed: {f:?}"),
                Some(Ok(_)) => continue,
                other => panic!("ws ended: {other:?}"),
            }
        }
    }

    /// Next event of `type`, skipping presence/typing/receipt noise of other types.
    pub async fn next_of(&mut self, ty: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == ty {
                return v;
            }
        }
    }

    /// Next event that is not ephemeral (presence, typing, receipt, new_login).
    pub async fn next_stored(&mut self) -> Value {
        loop {
            let v = self.next().await;
            if !matches!(
                v["type"].as_str(),
                Some("presence" | "typing" | "receipt" | "new_login")
            ) {
                return v;
            }
        }
    }

    /// The stored event with sequence `seq`: skips ephemeral events, answers to requests
    /// and stored events below `seq` (echoes of this client's own earlier requests), and
    /// fails on anything above it (a gap).
    pub async fn expect(&mut self, seq: i64) -> Value {
        loop {
            let v = self.next().await;
            let Some(s) = v["seq"].as_i64() else {
                assert_ne!(v["type"], "error", "{v}");
                continue;
            };
            if matches!(v["type"].as_str(), Some("ok" | "ack")) || s < seq {
                continue;
            }
            assert_eq!(s, seq, "expected event {seq}, got {v}");
            return v;
        }
    }

    pub async fn sync(&mut self, since: Value) -> Value {
        self.send(json!({"type": "sync", "since": since})).await;
        self.next_of("synced").await
    }
}

pub mod pg;
#[allow(unused_imports)]
pub use pg::postgres;
