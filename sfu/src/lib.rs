//! Selective Forwarding Unit: rooms of participants publishing and subscribing to
//! tracks, forwarded (never decoded) over one UDP port.
//!
//! - [`forward`]: forwarding decisions (rewriting, layers, keyframes, speakers), pure.
//! - [`engine`]: rooms, participants and str0m peers, sans-I/O.
//! - `worker`: the media workers (one engine each, owning whole rooms) and the receive
//!   path of the one UDP port in front of them; [`router`] routes its datagrams and
//!   `placement` its rooms.
//! - `rtc_ws`: the `/rtc` WebSocket; [`proto`] its messages.
//! - `whip`: WHIP and WHEP over HTTP.

mod config;
pub mod engine;
pub mod forward;
mod ice_tcp;
pub mod metrics;
mod placement;
pub mod proto;
pub mod router;
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
    media: worker::Media,
    state: rtc_ws::RtcState,
}

impl Sfu {
    /// Binds the media sockets and starts the media workers.
    pub async fn start(config: Config, ctx: common::Context) -> anyhow::Result<Sfu> {
        let metrics = metrics::Metrics::new(&ctx.registry);
        let media = worker::Media::spawn(&config, metrics)?;
        // A revoked device session leaves every room at once (its token is refused from
        // now on by `Keys::verify`).
        let workers = media.workers.clone();
        ctx.keys.revocations().on_revoke(move |sid| {
            workers.broadcast(|| engine::Command::Revoke { sid: sid.to_string() });
        });
        let state = rtc_ws::RtcState {
            keys: ctx.keys.clone(),
            workers: media.workers.clone(),
            next_conn: Arc::new(AtomicU64::new(1)),
            ping_interval: config.ws_ping_interval,
            idle_timeout: config.ws_idle_timeout,
        };
        Ok(Sfu { media, state })
    }

    /// The bound UDP media address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.media.udp_addr
    }

    /// The bound ICE-TCP address, if enabled.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.media.tcp_addr
    }

    /// Rooms placed on each media worker (index = worker).
    pub fn rooms_per_worker(&self) -> Vec<usize> {
        self.media.placement.rooms_per_worker()
    }

    /// `/rtc`, WHIP (`/whip/{room}`) and WHEP (`/whep/{room}`).
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/rtc", axum::routing::get(rtc_ws::rtc_handler))
            .with_state(self.state.clone())
            .merge(whip::router(self.state.clone()))
    }

    pub async fn shutdown(mut self) {
        tokio::task::spawn_blocking(move || self.media.stop()).await.ok();
    }
}
