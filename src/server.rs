//! Composition of the planes into one process.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tracing::info;

use crate::config::{Config, LogConfig, LogFormat, Role};

pub fn init_tracing(log: &LogConfig) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let mut filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .with_context(|| format!("invalid log.level {:?}", log.level))?;
    // Dependencies that would log peer IP addresses are capped, whatever the level.
    for cap in relay::LOG_CAPS {
        filter = filter.add_directive(cap.parse().expect("a valid directive"));
    }
    use std::io::IsTerminal;
    // Colours only on a terminal: files and journald get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// The token keys, resolved exactly as the server resolves them.
pub fn keys(cfg: &Config) -> anyhow::Result<common::Keys> {
    if cfg.auth.secret.is_none() && cfg.dev {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    }
    Ok(common::Keys::resolve(cfg.auth.secret.as_deref(), &cfg.data_dir, cfg.dev)?)
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let registry = prometheus::Registry::new_custom(Some("maxd".into()), None)?;
    #[cfg(target_os = "linux")]
    registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
    let ctx = common::Context {
        data_dir: cfg.data_dir.clone(),
        dev: cfg.dev,
        keys: keys(&cfg)?,
        registry: registry.clone(),
    };
    if cfg.dev {
        tracing::warn!("dev mode is on: dev-only endpoints are enabled; set `dev = false` in production");
    }

    let mut app = Router::new();
    let mut sfu_handle = None;
    if cfg.has(Role::Sfu) {
        let s = sfu::Sfu::start(cfg.sfu.clone(), ctx.clone()).await.context("starting the sfu")?;
        app = app.merge(s.router());
        // The browser client talks to this node's `/rtc`, so it is served where the sfu runs.
        app = app.merge(crate::web::router(cfg.dev, ctx.keys.clone()));
        sfu_handle = Some(s);
    }
    let mut _signalling = None;
    if cfg.has(Role::Signalling) {
        let s = signalling::Signalling::start(cfg.signalling.clone(), ctx.clone())
            .await
            .context("starting signalling")?;
        app = app.merge(s.router());
        _signalling = Some(s);
    }
    let mut _relay = None;
    if cfg.has(Role::Relay) {
        let r = relay::Relay::start(cfg.relay.clone(), ctx.clone()).await.context("starting the relay")?;
        app = app.merge(r.router());
        _relay = Some(r);
    }

    let metrics_registry = registry.clone();
    app = app
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(move || metrics(metrics_registry.clone())));

    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("binding HTTP on {} (is another maxd running?)", cfg.http.listen))?;
    info!(addr = %cfg.http.listen, roles = ?cfg.roles, "http listening");
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("http server")?;
    info!("shutting down");
    if let Some(s) = sfu_handle {
        s.shutdown().await;
    }
    if let Some(r) = _relay {
        r.shutdown().await;
    }
    Ok(())
}

async fn metrics(registry: prometheus::Registry) -> impl IntoResponse {
    use prometheus::Encoder;
    let mut buf = Vec::with_capacity(16 * 1024);
    let enc = prometheus::TextEncoder::new();
    match enc.encode(&registry.gather(), &mut buf) {
        Ok(()) => ([(header::CONTENT_TYPE, enc.format_type().to_string())], buf).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
