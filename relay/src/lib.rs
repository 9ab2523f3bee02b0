//! QUIC file relay: files up to 4 GiB, resumable, verified end to end.
//!
//! [`Relay::start`] runs the QUIC server on threads of its own; [`Relay::router`] gives
//! the HTTP fallback routes merged into the main HTTP server.

use serde::{Deserialize, Serialize};

/// `[relay]` section of the config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {}

/// The running relay.
pub struct Relay {
    _ctx: common::Context,
}

impl Relay {
    /// Starts the QUIC server.
    pub async fn start(_config: Config, ctx: common::Context) -> anyhow::Result<Relay> {
        Ok(Relay { _ctx: ctx })
    }

    /// HTTP fallback routes (`/files/...`).
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
    }
}
