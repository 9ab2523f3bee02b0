//! Control plane: accounts, chats, messages, bots.
//!
//! Runs inside `maxd` on the main HTTP port: [`Signalling::router`] is merged into the
//! HTTP server. REST under `/api/...`, real time over the WebSocket `/ws`; the protocol
//! is in `docs/chat.md`.
//!
//! Every chat change is a chat *event* with the next per-chat sequence number, stored in
//! the same transaction as the change and fanned out only after commit, under the
//! chat's lock, so every connection sees one chat's events in order and a resuming
//! client gets exactly what it missed from storage.

pub mod api;
pub mod auth;
pub mod bots;
pub mod chat;
pub mod config;
pub mod db;
pub mod error;
pub mod hub;
pub mod model;
pub mod phone;
pub mod sms;
pub mod users;
pub mod ws;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock, Weak};

use anyhow::Context as _;
use parking_lot::{Mutex, RwLock};
use prometheus::{IntCounter, IntGauge, Opts};

pub use config::Config;

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Prometheus metrics of the control plane.
pub struct Metrics {
    /// Messages stored.
    pub messages: IntCounter,
    /// Chat events stored (messages, edits, deletions, reactions, membership).
    pub events: IntCounter,
    /// Chat events handed to connections.
    pub deliveries: IntCounter,
    /// Open WebSocket connections.
    pub connections: IntGauge,
    /// Login codes sent.
    pub codes_sent: IntCounter,
    /// Code requests refused by rate limits.
    pub codes_refused: IntCounter,
    /// Wrong codes entered.
    pub codes_wrong: IntCounter,
    /// Successful logins.
    pub logins: IntCounter,
    /// Requests refused by the message rate limit.
    pub rate_limited: IntCounter,
}

impl Metrics {
    fn new(reg: &prometheus::Registry) -> anyhow::Result<Metrics> {
        let c = |n: &str, h: &str| -> anyhow::Result<IntCounter> {
            let m = IntCounter::with_opts(Opts::new(n, h).namespace("signalling"))?;
            reg.register(Box::new(m.clone()))?;
            Ok(m)
        };
        let connections = IntGauge::with_opts(
            Opts::new("connections", "Open chat WebSocket connections").namespace("signalling"),
        )?;
        reg.register(Box::new(connections.clone()))?;
        Ok(Metrics {
            messages: c("messages_total", "Messages stored")?,
            events: c("events_total", "Chat events stored")?,
            deliveries: c(
                "deliveries_total",
                "Chat events handed to WebSocket connections",
            )?,
            connections,
            codes_sent: c("codes_sent_total", "Login codes sent by SMS")?,
            codes_refused: c(
                "codes_refused_total",
                "Login code requests refused by rate limits",
            )?,
            codes_wrong: c("codes_wrong_total", "Wrong login codes entered")?,
            logins: c("logins_total", "Successful logins")?,
            rate_limited: c(
                "rate_limited_total",
                "Messages refused by the per-user rate limit",
            )?,
        })
    }
}

/// Shared state of the control plane.
pub struct App {
    pub cfg: Config,
    pub ctx: common::Context,
    pub db: db::Db,
    pub hub: hub::Hub,
    pub sms: Box<dyn sms::SmsSender>,
    pub metrics: Metrics,
    pub(crate) ip_codes: Mutex<HashMap<IpAddr, (i64, u32)>>,
    pub(crate) send_buckets: Mutex<HashMap<i64, (f64, f64)>>,
    pub(crate) revoked: Mutex<HashSet<String>>,
    pub(crate) members_cache: RwLock<HashMap<i64, Arc<chat::Members>>>,
    pub(crate) locks: Vec<tokio::sync::Mutex<()>>,
    pub(crate) webhooks_running: Mutex<HashSet<i64>>,
    pub(crate) me_weak: OnceLock<Weak<App>>,
}

/// The running control plane.
pub struct Signalling {
    app: Arc<App>,
}

impl Signalling {
    /// Opens storage (applying migrations) and starts background work.
    pub async fn start(config: Config, ctx: common::Context) -> anyhow::Result<Signalling> {
        let sms: Box<dyn sms::SmsSender> = match config.sms_provider.as_str() {
            "dev" => {
                if !ctx.dev {
                    anyhow::bail!(
                        "signalling.sms_provider = \"dev\" works in dev mode only: configure the http provider"
                    );
                }
                Box::new(sms::DevFileSms::new(ctx.data_dir.join(sms::DEV_SMS_FILE)))
            }
            "http" => Box::new(sms::HttpSms::new(
                &config.sms_gateway_url,
                &config.sms_gateway_auth,
            )?),
            other => {
                anyhow::bail!("signalling.sms_provider {other:?}: expected \"dev\" or \"http\"")
            }
        };
        if config.allowed_country_codes.is_empty() {
            anyhow::bail!("signalling.allowed_country_codes is empty: nobody could register");
        }
        let db = db::Db::open(&config.database_url, &ctx.data_dir)
            .await
            .context("opening the chat database")?;
        // Sessions revoked before a restart stay refused while their tokens could live.
        let revoked: Vec<String> =
            sqlx::query_scalar("SELECT id FROM sessions WHERE revoked = 1 AND last_used_at > $1")
                .bind(now_ms() - config.access_ttl.as_millis() as i64 * 2 - 86_400_000)
                .fetch_all(&db.pool)
                .await?;
        let metrics = Metrics::new(&ctx.registry)?;
        let app = Arc::new(App {
            cfg: config,
            ctx,
            db,
            hub: hub::Hub::default(),
            sms,
            metrics,
            ip_codes: Mutex::default(),
            send_buckets: Mutex::default(),
            revoked: Mutex::new(revoked.into_iter().collect()),
            members_cache: RwLock::default(),
            locks: (0..1024).map(|_| tokio::sync::Mutex::new(())).collect(),
            webhooks_running: Mutex::default(),
            me_weak: OnceLock::new(),
        });
        let _ = app.me_weak.set(Arc::downgrade(&app));
        // Resume webhook deliveries left pending by a previous run.
        let pending: Vec<i64> = sqlx::query_scalar("SELECT DISTINCT bot_id FROM bot_updates")
            .fetch_all(&app.db.pool)
            .await?;
        for b in pending {
            app.webhook_kick(b);
        }
        tracing::info!(engine = ?app.db.engine, "signalling started");
        Ok(Signalling { app })
    }

    /// HTTP and WebSocket routes of the control plane.
    pub fn router(&self) -> axum::Router {
        api::router(self.app.clone())
    }

    /// The shared state (for tests and benchmarks in this crate).
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }
}
