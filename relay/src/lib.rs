//! QUIC file relay: files up to 4 GiB, resumable, verified end to end.
//!
//! [`Relay::start`] runs the QUIC server on a runtime of its own (its own threads), so
//! other work in the process cannot starve file transfers; [`Relay::router`] gives the
//! HTTP fallback routes merged into the main HTTP server. The wire protocol is in
//! `docs/relay.md`; [`client`] is the Rust client the `maxd files` CLI uses.

pub mod backend;
pub mod bitmap;
pub mod client;
pub mod clock;
pub mod conns;
mod handles;
mod http;
pub mod iobuf;
pub mod metrics;
pub mod proto;
pub mod rate;
mod server;
pub mod sessions;
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

pub use clock::Clock;
pub use server::transport;

/// The HTTP fallback's header parsers (`Range`, tus), for the fuzz targets and property
/// tests; not an API.
#[doc(hidden)]
pub use http::fuzzing as http_fuzzing;

/// Log filter directives that cap the libraries the relay runs on where they write peer
/// IP addresses: quinn-proto at `debug` (stateless resets) and `trace` (every packet),
/// quinn-udp at `warn` (send errors), axum's server at `trace` (every accepted HTTP
/// connection). `maxd` adds them to its log filter whatever level is configured, so no
/// address reaches the logs.
pub const LOG_CAPS: &[&str] = &["quinn_proto=info", "quinn_udp=error", "axum::serve=debug"];

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
    /// Unfinished uploads one user (token `sub`) may have at once; 0 = unlimited.
    pub max_partial_uploads: u32,
    /// Bytes (declared sizes) one user's unfinished uploads may add up to; 0 = unlimited.
    pub max_partial_bytes: u64,
    /// New uploads one user may start per minute (bursts of as many); 0 = unlimited.
    pub upload_starts_per_minute: u32,
    /// QUIC connections open at once, over the whole relay; 0 = unlimited.
    pub max_connections: usize,
    /// QUIC connections open at once from one IPv4 address or IPv6 /64; 0 = unlimited.
    pub max_connections_per_ip: u32,
    /// Time a new connection has to finish its handshake and authenticate.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// A connection with no request under way for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A peer silent this long is dropped (QUIC idle timeout: clients send keep-alives
    /// more often), and a transfer that moves no byte for this long is ended (what was
    /// stored is kept).
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
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
            max_partial_uploads: 100,
            max_partial_bytes: 10 << 30,
            upload_starts_per_minute: 60,
            max_connections: 4096,
            max_connections_per_ip: 128,
            auth_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            stall_timeout: Duration::from_secs(30),
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
        Relay::start_with_clock(config, ctx, Clock::system()).await
    }

    /// [`Relay::start`] with the clock expiry and rate limits follow (tests move it).
    pub async fn start_with_clock(
        config: Config,
        ctx: common::Context,
        clock: Clock,
    ) -> anyhow::Result<Relay> {
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
        let limits = store::Limits::of(&config);
        let store = {
            let dir = dir.clone();
            let metrics = metrics.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<store::Store> {
                let backend = Arc::new(
                    backend::LocalDir::new(&dir)
                        .with_context(|| format!("opening relay storage {}", dir.display()))?,
                );
                store::Store::open(&dir, backend, limits, clock, metrics)
                    .with_context(|| format!("loading relay storage {}", dir.display()))
            })
            .await??
        };
        let store = Arc::new(store);
        let server_cfg =
            tls::server_config(certs, key, server::server_transport(config.stall_timeout))?;
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
            sessions: sessions::Sessions::listen(ctx.keys.revocations()),
            keys: ctx.keys.clone(),
            caps: conns::Caps::new(config.max_connections, config.max_connections_per_ip),
            timeouts: server::Timeouts {
                auth: config.auth_timeout,
                idle: config.idle_timeout,
                stall: config.stall_timeout,
            },
            metrics,
        });
        runtime.spawn(server::serve(endpoint.clone(), shared.clone()));
        // Upload progress is saved after every put; this catches connections that drop
        // mid-put. Files that could not be opened at start-up are retried; expired files
        // are swept every minute.
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
                        if st.pending() > 0 {
                            st.retry_pending();
                        }
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

    /// QUIC connections open now.
    pub fn connections(&self) -> usize {
        self.shared.caps.open()
    }

    /// HTTP fallback routes (`/files/...`).
    pub fn router(&self) -> axum::Router {
        http::router(self.shared.clone())
    }

    /// Stops accepting, closes connections, saves upload progress.
    pub async fn shutdown(mut self) {
        self.endpoint
            .close(proto::CLOSE_SHUTDOWN.into(), b"relay shutting down");
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
            self.endpoint
                .close(proto::CLOSE_SHUTDOWN.into(), b"relay shutting down");
            self.shared.store.save_all();
            rt.shutdown_background();
        }
    }
}
