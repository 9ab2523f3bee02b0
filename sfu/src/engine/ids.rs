//! Identifiers. Internal keys index slabs; public ids are the strings clients see.

/// Key of a participant in the engine's slab.
pub type PartKey = usize;
/// Key of a peer connection (one str0m `Rtc`).
pub type PeerKey = usize;
/// Key of a published track.
pub type TrackKey = usize;
/// Key of a subscription (one subscriber receiving one track).
pub type SubKey = usize;

/// A WebSocket connection carrying a participant's signalling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);
