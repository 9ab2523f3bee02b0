//! Control plane: accounts, chats, messages, call set-up, bots.
//!
//! Runs inside `maxd` on the main HTTP port: [`Signalling::router`] is merged into the
//! HTTP server.

use serde::{Deserialize, Serialize};

/// `[signalling]` section of the config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {}

/// The running control plane.
pub struct Signalling {
    _ctx: common::Context,
}

impl Signalling {
    /// Opens storage and starts background work.
    pub async fn start(_config: Config, ctx: common::Context) -> anyhow::Result<Signalling> {
        Ok(Signalling { _ctx: ctx })
    }

    /// HTTP and WebSocket routes of the control plane.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
    }
}
