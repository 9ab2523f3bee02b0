//! Forwarding decisions, free of sockets, threads and str0m: what to forward to one
//! subscriber and how to rewrite it. Every piece is driven by the caller's clock, so
//! tests run on virtual time.

pub mod keyframe;
pub mod layer;
pub mod rewrite;
pub mod speaker;
pub mod throttle;

pub use keyframe::{Codec, is_keyframe};
pub use layer::{LayerDecision, LayerSelector};
pub use rewrite::Rewriter;
pub use speaker::SpeakerDetector;
pub use throttle::Throttle;
