//! Test client for the maxd SFU's `/rtc` protocol (`docs/protocol.md`), built on webrtc-rs
//! (`webrtc` 0.21) so that end-to-end tests exercise the server with an independent WebRTC
//! stack.
//!
//! ```no_run
//! # async fn demo(base: &str, token_a: &str, token_b: &str) -> anyhow::Result<()> {
//! use std::time::Duration;
//! use testkit::{Client, TrackKind};
//! let alice = Client::connect(base, token_a).await?;
//! alice.publish_av().await?;
//! let bob = Client::connect(base, token_b).await?;
//! let got = bob.wait_media_from(&alice.participant_id(), TrackKind::Video, 30, Duration::from_secs(10)).await?;
//! assert_eq!(got.bad_payloads, 0);
//! # Ok(()) }
//! ```
//!
//! Modules: [`proto`] (messages), [`ws`] (WebSocket), [`media`] (synthetic Opus/VP8 payloads
//! with integrity records), [`peer`] (webrtc-rs peer connections), [`client`] (the client).

pub mod client;
pub mod media;
pub mod peer;
pub mod proto;
pub mod stats;
pub mod whip;
pub mod ws;

pub use client::{Client, ClientOptions, DEFAULT_TIMEOUT, Published, Received, WsClosed};
pub use proto::{ClientMsg, ParticipantInfo, ServerMsg, TrackInfo, TrackKind};
pub use stats::{RemoteTrackStats, SendStats};
