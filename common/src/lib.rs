//! Pieces every plane of `maxd` shares.
//!
//! - [`token`]: the access tokens (JWT, HS256) that signalling mints and the sfu and the
//!   relay verify, so those two keep no account data.
//! - [`pii`]: wrappers that keep personal data (IP addresses, phone numbers, message
//!   text) out of logs.
//! - [`Context`]: what `maxd` hands each plane when it starts it.

pub mod netaddr;
pub mod pii;
pub mod revoke;
pub mod token;

use std::path::PathBuf;

pub use revoke::Revocations;
pub use token::{Claims, Grants, Keys, TokenError};

/// What `maxd` hands to each plane it starts.
#[derive(Clone)]
pub struct Context {
    /// The data directory (SQLite database, stored files, dev secrets). Exists.
    pub data_dir: PathBuf,
    /// Dev mode: dev-only conveniences (token endpoint, codes written to a file,
    /// self-signed certificates). Production configs set `dev = false`.
    pub dev: bool,
    /// Signs and verifies access tokens.
    pub keys: Keys,
    /// Where every plane registers its Prometheus metrics (served at `/metrics`).
    pub registry: prometheus::Registry,
}
