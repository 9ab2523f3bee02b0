//! QUIC file relay: files up to 4 GiB, resumable, verified end to end.
//!
//! [`Relay::start`] runs the QUIC server on a runtime of its own (its own threads), so
//! other work in the process cannot starve file transfers; [`Relay::router`] gives the
//! HTTP fallback routes merged into the main HTTP server. The wire protocol is in
//! `docs/relay.md`; [`client`] is the Rust client the `maxd files` CLI uses.

pub mod backend;
pub mod bitmap;
pub mod client;
mod http;
pub mod iobuf;
pub mod metrics;
pub mod proto;
mod server;
pub mod store;
pub mod tls;
pub mod tree;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub use server::transport;

/// `[relay]` section of the config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// UDP address of the QUIC relay.
    pub listen: SocketAddr,
    /// TLS certificate chain (PEM). Unset in dev: a self-signed one is made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM), with `cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Directory of stored files. Unset: `<data_dir>/relay`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Largest file accepted, in bytes.
    pub max_file_size: u64,
    /// Bytes one user may keep stored, complete and partial; 0 = unlimited.
    pub user_quota: u64,
    /// How long a file is kept after its upload starts.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Worker threads of the relay's own runtime.
    pub threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:4433".parse().unwrap(),
            cert: None,
            key: None,
            dir: None,
            max_file_size: 4 << 30,
            user_quota: 20 << 30,
            ttl: Duration::from_secs(30 * 24 * 3600),
            threads: 2,
        }
    }
}

/// The running relay.
pub struct Relay {
    shared: Arc<server::Shared>,
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    fingerprint: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Relay {
    /// Opens the store, binds the QUIC endpoint and starts serving on the relay's own
    /// runtime.
    pub async fn start(config: Config, ctx: common::Context) -> anyhow::Result<Relay> {
        let dir = config
            .dir
            .clone()
            .unwrap_or_else(|| ctx.data_dir.join("relay"));
        let (certs, key) = tls::load_or_make(
            config.cert.as_deref(),
            config.key.as_deref(),
            &ctx.data_dir,
            ctx.dev,
        )?;
        let fingerprint = tls::fingerprint(&certs[0]);
        let metrics = metrics::Metrics::new(&ctx.registry);
        let limits = store::Limits {
            max_file_size: config.max_file_size,
            user_quota: config.user_quota,
            ttl: config.ttl,
        };
        let store = {
            let dir = dir.clone();
            let metrics = metrics.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<store::Store> {
                let backend = Arc::new(
                    backend::LocalDir::new(&dir)
                        .with_context(|| format!("opening relay storage {}", dir.display()))?,
                );
                store::Store::open(&dir, backend, limits, metrics)
                    .with_context(|| format!("loading relay storage {}", dir.display()))
            })
            .await??
        };
        let store = Arc::new(store);
        let server_cfg = tls::server_config(certs, key, server::transport())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads.max(1))
            .thread_name("maxd-relay")
            .enable_all()
            .build()
            .context("starting the relay runtime")?;
        let endpoint = {
            let _guard = runtime.enter();
            server::bind(config.listen, server_cfg).with_context(|| {
                format!(
                    "binding the relay on UDP {} (is another maxd running?)",
                    config.listen
                )
            })?
        };
        let addr = endpoint.local_addr()?;
        let shared = Arc::new(server::Shared {
            store: store.clone(),
            keys: ctx.keys.clone(),
            metrics,
        });
        runtime.spawn(server::serve(endpoint.clone(), shared.clone()));
        // Upload progress is saved after every put; this catches connections that drop
        // mid-put. Expired files are swept every minute.
        runtime.spawn({
            let store = store.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(2));
                let mut n = 0u64;
                loop {
                    tick.tick().await;
                    let st = store.clone();
                    let sweep = n.is_multiple_of(30);
                    n += 1;
                    let _ = tokio::task::spawn_blocking(move || {
                        st.save_all();
                        if sweep {
                            let gone = st.sweep();
                            if gone > 0 {
                                info!(files = gone, "expired files deleted");
                            }
                        }
                    })
                    .await;
                }
            }
        });
        info!(addr = %addr, fingerprint = %fingerprint, dir = %dir.display(), "relay listening (QUIC, ALPN maxd-relay/1); clients pin this SHA-256 certificate fingerprint");
        Ok(Relay {
            shared,
            endpoint,
            addr,
            fingerprint,
            runtime: Some(runtime),
        })
    }

    /// The bound QUIC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// SHA-256 fingerprint (hex) of the relay's certificate.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Deletes expired files now (the relay also does it every minute); returns how many.
    pub fn sweep_expired(&self) -> usize {
        self.shared.store.sweep()
    }

    /// HTTP fallback routes (`/files/...`).
    pub fn router(&self) -> axum::Router {
        http::router(self.shared.clone())
    }

    /// Stops accepting, closes connections, saves upload progress.
    pub async fn shutdown(mut self) {
        self.endpoint.close(0u32.into(), b"relay shutting down");
        let store = self.shared.store.clone();
        if tokio::task::spawn_blocking(move || store.save_all())
            .await
            .is_err()
        {
            warn!("saving upload progress failed");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            self.endpoint.close(0u32.into(), b"relay shutting down");
            self.shared.store.save_all();
            rt.shutdown_background();
        }
    }
}
