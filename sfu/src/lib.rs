//! Selective Forwarding Unit: rooms of participants publishing and subscribing to
//! tracks, forwarded (never decoded) over one UDP port.
//!
//! - [`forward`]: forwarding decisions (rewriting, layers, keyframes, speakers), pure.
//! - [`engine`]: rooms, participants and str0m peers, sans-I/O.
//! - `worker`: the media thread that owns the sockets and drives the engine.
//! - `rtc_ws`: the `/rtc` WebSocket; [`proto`] its messages.
//! - `whip`: WHIP and WHEP over HTTP.

mod config;
pub mod engine;
pub mod forward;
mod ice_tcp;
pub mod metrics;
pub mod proto;
mod rtc_ws;
mod whip;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

pub use config::Config;

/// Log directives `maxd` adds after the operator's filter, so no level lifts them: at
/// debug and trace the WebRTC stack (str0m and its ICE agent `is`) logs client
/// addresses, candidates and ICE credentials. Its info and warn lines carry none.
pub const LOG_CAPS: &[&str] = &["str0m=info", "is=info", "str0m_proto=info"];

/// The running media plane.
pub struct Sfu {
    worker: worker::Worker,
    state: rtc_ws::RtcState,
}

impl Sfu {
    /// Binds the media sockets and starts the media worker.
    pub async fn start(config: Config, ctx: common::Context) -> anyhow::Result<Sfu> {
        let metrics = metrics::Metrics::new(&ctx.registry);
        let worker = worker::Worker::spawn(&config, metrics)?;
        // A revoked device session leaves every room at once (its token is refused from
        // now on by `Keys::verify`).
        let commands = worker.commands.clone();
        ctx.keys.revocations().on_revoke(move |sid| {
            let _ = commands.send(engine::Command::Revoke { sid: sid.to_string() });
        });
        let state = rtc_ws::RtcState {
            keys: ctx.keys.clone(),
            commands: worker.commands.clone(),
            next_conn: Arc::new(AtomicU64::new(1)),
            ping_interval: config.ws_ping_interval,
            idle_timeout: config.ws_idle_timeout,
        };
        Ok(Sfu { worker, state })
    }

    /// The bound UDP media address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.worker.udp_addr
    }

    /// The bound ICE-TCP address, if enabled.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.worker.tcp_addr
    }

    /// `/rtc`, WHIP (`/whip/{room}`) and WHEP (`/whep/{room}`).
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/rtc", axum::routing::get(rtc_ws::rtc_handler))
            .with_state(self.state.clone())
            .merge(whip::router(self.state.clone()))
    }

    pub async fn shutdown(mut self) {
        tokio::task::spawn_blocking(move || self.worker.stop()).await.ok();
    }
}
