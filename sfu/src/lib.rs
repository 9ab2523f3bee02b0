//! Selective Forwarding Unit: rooms of participants publishing and subscribing to
//! tracks, forwarded (never decoded) over one UDP port.

mod config;
pub mod forward;
pub mod proto;

pub use config::Config;

/// The running media plane.
pub struct Sfu {
    _ctx: common::Context,
}

impl Sfu {
    pub async fn start(_config: Config, ctx: common::Context) -> anyhow::Result<Sfu> {
        Ok(Sfu { _ctx: ctx })
    }

    pub fn router(&self) -> axum::Router {
        axum::Router::new()
    }

    pub async fn shutdown(self) {}
}
