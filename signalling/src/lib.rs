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
pub mod calls;
pub mod chat;
pub mod config;
pub mod db;
pub mod error;
pub mod hub;
pub mod limits;
pub mod model;
pub mod otp;
pub mod outbound;
pub mod phone;
pub mod push;
pub mod sms;
pub mod telegram;
pub mod users;
pub mod ws;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use anyhow::Context as _;
use parking_lot::{Mutex, RwLock};
use prometheus::{IntCounter, IntGauge, Opts};

pub use config::Config;

/// `tracing` filter directives that cap dependencies of the HTTP and WebSocket stack
/// whose verbose levels write personal data or secrets: tungstenite logs whole frames
/// (message text, `auth` tokens) at trace and client URLs at debug; axum's server logs
/// peer addresses and rejected input at trace; hyper_util's client logs hosts and
/// addresses at debug. `maxd` adds them after the operator's filter, so no log level
/// lifts them (a directive for the same target replaces an earlier one).
pub const LOG_CAPS: &[&str] = &[
    "tungstenite=info",
    "tokio_tungstenite=info",
    "hyper_util=info",
    "axum::serve=debug",
    "axum::rejection=debug",
    // rustls (push over HTTPS) names the servers it connects to at debug.
    "rustls=info",
];

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
    /// Code requests refused by rate limits or a number lock-out.
    pub codes_refused: IntCounter,
    /// Code checks refused by the per-IP limit.
    pub verifies_refused: IntCounter,
    /// Wrong codes entered.
    pub codes_wrong: IntCounter,
    /// Successful logins.
    pub logins: IntCounter,
    /// Requests refused by the message rate limit.
    pub rate_limited: IntCounter,
    /// Calls started.
    pub calls: IntCounter,
    /// Calls ended (any reason).
    pub calls_ended: IntCounter,
    /// Calls moved from peer-to-peer to the SFU.
    pub calls_to_sfu: IntCounter,
    /// Push requests made (ring and stop).
    pub pushes: IntCounter,
    /// Push targets dropped because the push service called them dead.
    pub push_targets_dropped: IntCounter,
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
            verifies_refused: c(
                "verifies_refused_total",
                "Login code checks refused by the per-IP limit",
            )?,
            codes_wrong: c("codes_wrong_total", "Wrong login codes entered")?,
            logins: c("logins_total", "Successful logins")?,
            rate_limited: c(
                "rate_limited_total",
                "Messages refused by the per-user rate limit",
            )?,
            calls: c("calls_total", "Calls started")?,
            calls_ended: c("calls_ended_total", "Calls ended")?,
            calls_to_sfu: c(
                "calls_to_sfu_total",
                "Calls moved from peer-to-peer to the SFU",
            )?,
            pushes: c("pushes_total", "Push requests made for ringing")?,
            push_targets_dropped: c(
                "push_targets_dropped_total",
                "Push targets dropped as dead by the push service",
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
    /// Live calls.
    pub calls: calls::Calls,
    pub(crate) pusher: push::Pusher,
    pub(crate) limits: Limits,
    pub(crate) members_cache: RwLock<HashMap<i64, Arc<chat::Members>>>,
    pub(crate) locks: Vec<tokio::sync::Mutex<()>>,
    pub(crate) webhooks_running: Mutex<HashSet<i64>>,
    pub(crate) me_weak: OnceLock<Weak<App>>,
}

/// The keyed rate limits of the control plane (see `docs/chat.md`, "Limits").
pub(crate) struct Limits {
    /// Code requests per client network (IPv4 address, IPv6 /64).
    pub codes_per_ip: limits::Keyed<IpAddr>,
    /// Code checks per client network.
    pub verifies_per_ip: limits::Keyed<IpAddr>,
    /// Messages per user.
    pub messages: limits::Keyed<i64>,
    /// Calls started or invited to, per user.
    pub call_invites: limits::Keyed<i64>,
}

impl Limits {
    fn new(cfg: &Config) -> Limits {
        Limits {
            codes_per_ip: limits::Keyed::new(limits::per_hour(cfg.codes_per_ip_per_hour)),
            verifies_per_ip: limits::Keyed::new(limits::per_hour(cfg.verifies_per_ip_per_hour)),
            messages: limits::Keyed::new(limits::per_second_burst_2x(cfg.messages_per_second)),
            call_invites: limits::Keyed::new(limits::per_minute(cfg.call_invites_per_minute)),
        }
    }

    fn forget_idle(&self) {
        self.codes_per_ip.forget_idle();
        self.verifies_per_ip.forget_idle();
        self.messages.forget_idle();
        self.call_invites.forget_idle();
    }
}

/// How often limits forget idle keys and storage forgets what no longer matters.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(60);

/// The running control plane.
pub struct Signalling {
    app: Arc<App>,
    maintenance: tokio::task::AbortHandle,
}

impl Drop for Signalling {
    fn drop(&mut self) {
        self.maintenance.abort();
    }
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
        if !config.turn_urls.is_empty() && config.turn_secret.len() < 16 {
            anyhow::bail!(
                "signalling.turn_urls is set: signalling.turn_secret must be the TURN server's static-auth-secret (at least 16 characters)"
            );
        }
        let pusher = push::Pusher::new(&config)?;
        let db = db::Db::open(&config.database_url, &ctx.data_dir)
            .await
            .context("opening the chat database")?;
        let metrics = Metrics::new(&ctx.registry)?;
        let app = Arc::new(App {
            limits: Limits::new(&config),
            cfg: config,
            ctx,
            db,
            hub: hub::Hub::default(),
            sms,
            metrics,
            calls: calls::Calls::default(),
            pusher,
            members_cache: RwLock::default(),
            locks: (0..1024).map(|_| tokio::sync::Mutex::new(())).collect(),
            webhooks_running: Mutex::default(),
            me_weak: OnceLock::new(),
        });
        let _ = app.me_weak.set(Arc::downgrade(&app));
        // Sessions revoked before a restart stay refused while their tokens could live:
        // the last token of a session was minted at its `last_used_at`.
        let oldest_alive = now_ms() - app.tokens_dead_after(0) as i64 * 1000;
        let revoked: Vec<(String, i64)> = sqlx::query_as(
            "SELECT id, last_used_at FROM sessions WHERE revoked = 1 AND last_used_at > $1",
        )
        .bind(oldest_alive)
        .fetch_all(&app.db.pool)
        .await?;
        for (sid, last_mint) in &revoked {
            app.ctx
                .keys
                .revocations()
                .revoke(sid, app.tokens_dead_after(*last_mint));
        }
        // A revocation (here or by any plane of this process) closes the session's sockets.
        let weak = Arc::downgrade(&app);
        app.ctx.keys.revocations().on_revoke(move |sid| {
            if let Some(app) = weak.upgrade() {
                app.hub.kick_session(sid);
                // ... and takes it out of its calls' SFU rooms.
                app.calls
                    .session_revoked(sid, &app.ctx.keys, app.cfg.call_token_ttl);
            }
        });
        // Calls a previous run left ringing or active end as `failed`.
        let failed = app.fail_unfinished_calls().await?;
        if failed > 0 {
            tracing::info!(calls = failed, "calls of the previous run ended as failed");
        }
        let maintenance = tokio::spawn(maintain(Arc::downgrade(&app))).abort_handle();
        // Resume webhook deliveries left pending by a previous run.
        let pending: Vec<i64> = sqlx::query_scalar("SELECT DISTINCT bot_id FROM bot_updates")
            .fetch_all(&app.db.pool)
            .await?;
        for b in pending {
            app.webhook_kick(b);
        }
        tracing::info!(
            engine = match app.db.engine {
                db::Engine::Sqlite => "sqlite",
                db::Engine::Postgres => "postgresql",
            },
            "signalling started"
        );
        Ok(Signalling { app, maintenance })
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

/// Every [`MAINTENANCE_EVERY`]: limits forget idle keys; rotated refresh tokens older
/// than a refresh token's lifetime are forgotten (they would be expired anyway).
async fn maintain(app: Weak<App>) {
    let mut tick = tokio::time::interval(MAINTENANCE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(app) = app.upgrade() else { return };
        app.limits.forget_idle();
        let r = sqlx::query("DELETE FROM refresh_rotated WHERE rotated_at < $1")
            .bind(now_ms() - app.cfg.refresh_ttl.as_millis() as i64)
            .execute(&app.db.pool)
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "forgetting old rotated refresh tokens");
        }
    }
}

impl App {
    /// Whether the plane can serve: its database answers a query within a second.
    pub async fn ready(&self) -> Result<(), String> {
        let ping = sqlx::query("SELECT 1").execute(&self.db.pool);
        match tokio::time::timeout(std::time::Duration::from_secs(1), ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("database: {e}")),
            Err(_) => Err("database: no answer within 1 s".into()),
        }
    }
}
