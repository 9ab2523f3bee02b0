//! The load-test simulator: many real WebRTC / WebSocket / QUIC clients against a node or
//! a cluster, and a report of what they saw. Not built yet.
