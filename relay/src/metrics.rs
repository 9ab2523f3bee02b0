//! Prometheus metrics of the relay (registered on the shared registry).

use prometheus::{IntCounter, IntGauge, Registry};

/// The relay's metrics. No user or file ids as labels.
#[derive(Clone)]
pub struct Metrics {
    /// Verified file bytes received and stored (`maxd_relay_bytes_received_total`).
    pub bytes_received: IntCounter,
    /// File bytes sent to downloaders, QUIC and HTTP (`maxd_relay_bytes_sent_total`).
    pub bytes_sent: IntCounter,
    /// Uploads completed and published.
    pub uploads_completed: IntCounter,
    /// Uploads answered from stored content (proof of possession accepted).
    pub dedup_hits: IntCounter,
    /// Groups refused because they did not match the hash.
    pub hash_mismatches: IntCounter,
    /// Failed proofs of possession.
    pub proof_failures: IntCounter,
    /// Connections refused for a bad, expired or insufficient token.
    pub auth_failures: IntCounter,
    /// QUIC connections open.
    pub connections: IntGauge,
    /// Files known (complete and partial).
    pub files: IntGauge,
    /// Stored files that could not be opened at start-up: kept, not served, retried.
    pub files_unavailable: IntGauge,
    /// QUIC connections refused because a connection cap was reached.
    pub connections_refused: IntCounter,
    /// Uploads refused by a per-user limit (quota, unfinished uploads, start rate).
    pub uploads_refused: IntCounter,
}

impl Metrics {
    /// Creates and registers the metrics. Registering twice on one registry (two relays
    /// in one process, as tests do) keeps the first set.
    pub fn new(registry: &Registry) -> Metrics {
        fn c(r: &Registry, name: &str, help: &str) -> IntCounter {
            let m = IntCounter::new(name, help).expect("valid metric");
            let _ = r.register(Box::new(m.clone()));
            m
        }
        fn g(r: &Registry, name: &str, help: &str) -> IntGauge {
            let m = IntGauge::new(name, help).expect("valid metric");
            let _ = r.register(Box::new(m.clone()));
            m
        }
        Metrics {
            bytes_received: c(
                registry,
                "relay_bytes_received_total",
                "Verified file bytes received and stored",
            ),
            bytes_sent: c(
                registry,
                "relay_bytes_sent_total",
                "File bytes sent to downloaders (QUIC and HTTP)",
            ),
            uploads_completed: c(
                registry,
                "relay_uploads_completed_total",
                "Uploads completed, verified and published",
            ),
            dedup_hits: c(
                registry,
                "relay_dedup_hits_total",
                "Uploads served from content already stored",
            ),
            hash_mismatches: c(
                registry,
                "relay_hash_mismatches_total",
                "Data groups refused because they did not match the hash",
            ),
            proof_failures: c(
                registry,
                "relay_proof_failures_total",
                "Failed proofs of possession on deduplicated uploads",
            ),
            auth_failures: c(
                registry,
                "relay_auth_failures_total",
                "Requests refused for a missing, bad, expired or insufficient token",
            ),
            connections: g(registry, "relay_connections", "QUIC connections open"),
            files: g(
                registry,
                "relay_files",
                "Files stored (complete and partial)",
            ),
            files_unavailable: g(
                registry,
                "relay_files_unavailable",
                "Stored files that could not be opened at start-up (kept, retried)",
            ),
            connections_refused: c(
                registry,
                "relay_connections_refused_total",
                "QUIC connections refused at the relay's connection caps",
            ),
            uploads_refused: c(
                registry,
                "relay_uploads_refused_total",
                "Uploads refused by a per-user limit (quota, unfinished uploads, start rate)",
            ),
        }
    }
}
