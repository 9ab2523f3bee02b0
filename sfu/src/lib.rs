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
pub mod metrics;
pub mod proto;
mod rtc_ws;
mod whip;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

pub use config::Config;

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
        let state = rtc_ws::RtcState {
            keys: ctx.keys.clone(),
            commands: worker.commands.clone(),
            next_conn: Arc::new(AtomicU64::new(1)),
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
