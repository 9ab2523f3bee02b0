//! Composition of the planes into one process.

use anyhow::Context as _;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tracing::{info, warn};

use crate::config::{Config, HttpConfig, LogConfig, LogFormat, Role};
use crate::listener;

pub fn init_tracing(log: &LogConfig) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let mut filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .with_context(|| format!("invalid log.level {:?}", log.level))?;
    // Dependencies whose verbose levels write personal data (peer addresses, ICE
    // credentials, tokens) stay capped at any level.
    for d in signalling::LOG_CAPS.iter().chain(sfu::LOG_CAPS).chain(relay::LOG_CAPS) {
        filter = filter.add_directive(d.parse()?);
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

/// The server's token keys: the configured secret, or in dev mode the data directory's
/// dev secret, made on first start.
pub fn keys(cfg: &Config) -> anyhow::Result<common::Keys> {
    if cfg.auth.secret.is_none() && cfg.dev {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    }
    Ok(common::Keys::resolve(
        cfg.auth.secret.as_deref(),
        &cfg.data_dir,
        cfg.dev,
    )?)
}

/// The keys a CLI verb (`maxd token`, `maxd files`) signs with: the server's, resolved
/// as the server does, but never a new dev secret - a token signed with one the server
/// never sees would be refused. Without one, the error says what to pass; `hint` adds
/// the verb's own way out.
pub fn cli_keys_or(cfg: &Config, hint: &str) -> anyhow::Result<common::Keys> {
    // An absolute path in the message: the directory this was run from is the question.
    let data_dir = std::path::absolute(&cfg.data_dir).unwrap_or_else(|_| cfg.data_dir.clone());
    common::Keys::resolve_existing(cfg.auth.secret.as_deref(), &data_dir, cfg.dev).map_err(|e| {
        match e {
            common::token::KeyError::NoDevSecret { .. } => anyhow::anyhow!(
                "{e}.\nRun this where maxd runs, or point it at the server's data directory: \
             --data-dir DIR (or the server's --config FILE, or MAXD_DATA_DIR=DIR); {hint}."
            ),
            other => other.into(),
        }
    })
}

/// Raises the soft open-file limit to the hard one and logs the outcome.
pub fn raise_open_file_limit() {
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
    match crate::rlimit::raise_nofile() {
        (n, None) if n.before != n.soft => {
            info!(from = %show(n.before), to = %show(n.soft), hard = %show(n.hard), "open-file limit raised")
        }
        (n, None) => {
            info!(soft = %show(n.soft), hard = %show(n.hard), "open-file limit (already at the hard limit)")
        }
        (n, Some(e)) => warn!(
            error = %e, soft = %show(n.soft), hard = %show(n.hard),
            "could not raise the open-file limit; connections are capped below the soft limit"
        ),
    }
}

/// The listener's settings from `[http]` and the open-file limit now.
fn listener_settings(http: &HttpConfig) -> listener::Settings {
    let nofile = crate::rlimit::current_nofile().unwrap_or(u64::MAX);
    let ceiling = listener::connection_ceiling(nofile);
    let max_connections = match http.max_connections {
        0 => ceiling,
        n if n > ceiling => {
            warn!(
                configured = n,
                lowered_to = ceiling,
                open_file_limit = nofile,
                "http.max_connections is above what the open-file limit allows: lowered"
            );
            ceiling
        }
        n => n,
    };
    listener::Settings {
        timeouts: listener::conn::Timeouts {
            header_read: http.header_read_timeout,
            idle: http.idle_timeout,
        },
        max_connections,
        max_connections_per_ip: http.max_connections_per_ip,
    }
}

/// What to do next, said once at start as `livekit-server --dev` does: the URL to open,
/// where the data lives (absolute), and in dev mode where login codes go and how to
/// mint a token.
fn first_steps(cfg: &Config) -> Vec<String> {
    let addr = cfg.http.listen;
    // A wildcard listen address is not something to type into a browser.
    let host = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let url = format!("http://{host}:{}", addr.port());
    let data = std::path::absolute(&cfg.data_dir).unwrap_or_else(|_| cfg.data_dir.clone());
    let mut lines = Vec::new();
    if cfg.has(Role::Signalling) {
        lines.push(format!("open {url}/ in a browser: the messenger"));
    }
    if cfg.has(Role::Sfu) {
        lines.push(format!("calls without an account: {url}/call; WHIP {url}/whip/ROOM, WHEP {url}/whep/ROOM"));
    }
    lines.push(format!("data directory: {}", data.display()));
    if cfg.dev {
        if cfg.has(Role::Signalling) && cfg.signalling.sms_provider == "dev" {
            lines.push(format!(
                "dev mode: no SMS is sent; login codes are the last lines of {}",
                data.join(signalling::sms::DEV_SMS_FILE).display()
            ));
        }
        lines.push(format!(
            "a token for WHIP/WHEP or the simulator: maxd token --data-dir {} --room demo --identity alice --grants publish,subscribe",
            data.display()
        ));
    }
    lines
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let registry = prometheus::Registry::new_custom(Some("maxd".into()), None)?;
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    let ctx = common::Context {
        data_dir: cfg.data_dir.clone(),
        dev: cfg.dev,
        keys: keys(&cfg)?,
        registry: registry.clone(),
    };
    if cfg.dev {
        tracing::warn!(
            "dev mode is on: dev-only endpoints are enabled; set `dev = false` in production"
        );
    }

    let mut app = Router::new();
    let mut sfu_handle = None;
    if cfg.has(Role::Sfu) {
        let s = sfu::Sfu::start(cfg.sfu.clone(), ctx.clone())
            .await
            .context("starting the sfu")?;
        app = app.merge(s.router());
        // The browser client talks to this node's `/rtc`, so it is served where the sfu runs.
        // In dev mode the login screen says where the dev SMS provider writes codes.
        let sms_file = (cfg.dev && cfg.signalling.sms_provider == "dev").then(|| {
            let f = cfg.data_dir.join(signalling::sms::DEV_SMS_FILE);
            std::path::absolute(&f).unwrap_or(f).display().to_string()
        });
        let dev_info = crate::web::DevInfo { sms_file };
        app = app.merge(crate::web::router(cfg.dev, ctx.keys.clone(), dev_info));
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
        let r = relay::Relay::start(cfg.relay.clone(), ctx.clone())
            .await
            .context("starting the relay")?;
        app = app.merge(r.router());
        _relay = Some(r);
    }

    let build_info = prometheus::IntGaugeVec::new(
        prometheus::Opts::new("build_info", "Always 1; the labels say which maxd this is"),
        &["version", "roles"],
    )?;
    let roles = cfg.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",");
    build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), &roles]).set(1);
    registry.register(Box::new(build_info))?;

    let readiness = Readiness {
        sfu: cfg.has(Role::Sfu),
        signalling: _signalling.as_ref().map(|s: &signalling::Signalling| s.app().clone()),
        relay: cfg.has(Role::Relay),
    };
    let metrics_registry = registry.clone();
    app = app
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(move || ready(readiness.clone())))
        .route("/metrics", get(move || metrics(metrics_registry.clone())));

    let settings = listener_settings(&cfg.http);
    let http_metrics = listener::Metrics::register(&registry)?;
    let tcp = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| {
            format!(
                "binding HTTP on {} (is another maxd running?)",
                cfg.http.listen
            )
        })?;
    info!(
        max_connections = settings.max_connections,
        max_connections_per_ip = settings.max_connections_per_ip,
        header_read_timeout = %humantime::format_duration(settings.timeouts.header_read),
        idle_timeout = %humantime::format_duration(settings.timeouts.idle),
        "http limits"
    );
    info!(addr = %cfg.http.listen, roles = %roles, "http listening");
    for line in first_steps(&cfg) {
        info!("{line}");
    }
    listener::serve(tcp, app, settings, http_metrics, shutdown_signal()).await;
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
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

#[cfg(test)]
mod first_steps_tests {
    use super::*;

    #[test]
    fn a_first_run_says_what_to_open_where_the_data_is_and_what_next() {
        let mut cfg = Config::default();
        cfg.http.listen = "0.0.0.0:8080".parse().unwrap();
        cfg.data_dir = "maxd-data".into();
        let lines = first_steps(&cfg);
        let text = lines.join("\n");
        assert!(text.contains("open http://127.0.0.1:8080/ in a browser"), "{text}");
        let abs = std::env::current_dir().unwrap().join("maxd-data");
        assert!(text.contains(&format!("data directory: {}", abs.display())), "{text}");
        assert!(cfg.dev, "dev mode is the embedded default");
        assert!(text.contains(&format!("{}", abs.join("sms-codes.jsonl").display())), "{text}");
        assert!(text.contains("maxd token --data-dir"), "{text}");
        cfg.dev = false;
        let text = first_steps(&cfg).join("\n");
        assert!(!text.contains("sms-codes") && !text.contains("maxd token"), "{text}");
    }
}

/// What `/readyz` checks: the planes this node runs, and for signalling its database.
#[derive(Clone)]
struct Readiness {
    sfu: bool,
    signalling: Option<std::sync::Arc<signalling::App>>,
    relay: bool,
}

/// `/readyz`: `200` when every plane this node runs can serve, else `503`; the body
/// says which planes run and, for one that cannot serve, why:
/// `{"ready": true, "planes": {"sfu": {"ready": true}, "signalling": {"ready": true}}}`.
/// `/healthz` says only that the process answers (liveness).
async fn ready(r: Readiness) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut planes = serde_json::Map::new();
    let mut all = true;
    if r.sfu {
        planes.insert("sfu".into(), serde_json::json!({"ready": true}));
    }
    if let Some(s) = &r.signalling {
        let v = match s.ready().await {
            Ok(()) => serde_json::json!({"ready": true}),
            Err(why) => {
                all = false;
                serde_json::json!({"ready": false, "error": why})
            }
        };
        planes.insert("signalling".into(), v);
    }
    if r.relay {
        planes.insert("relay".into(), serde_json::json!({"ready": true}));
    }
    let status = if all { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(serde_json::json!({"ready": all, "planes": planes}))).into_response()
}
