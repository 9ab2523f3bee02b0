//! Prometheus metrics of the media plane. The hot path bumps plain integers in
//! [`Counters`]; [`Metrics::flush`] moves them to Prometheus about once a second, so
//! forwarding a packet costs no atomic operation.

use prometheus::{
    CounterVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    local::LocalHistogram,
};

/// Counts kept by the media worker between flushes.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub rtp_forwarded: u64,
    pub nacks_received: u64,
    pub keyframe_requests_received: u64,
    pub plis_sent: u64,
    pub drop_unknown_source: u64,
    pub drop_malformed: u64,
    pub drop_send_failed: u64,
    pub drop_layer: u64,
    pub peer_panics: u64,
    pub signal_drops: u64,
    /// Peer connections whose ICE timed out (no STUN and no media on any path).
    pub ice_timeouts: u64,
    /// Binding requests replayed because authenticated media proved the path alive.
    pub consent_by_media: u64,
    /// STUN dropped: the peer had used all the new source addresses it may.
    pub drop_address_limit: u64,
    /// Participants removed, by [`LeaveReason`].
    pub left: [u64; LeaveReason::ALL.len()],
}

/// Why a participant left the room; a metric label and the text the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// It sent `leave`.
    Left,
    /// Its identity joined again elsewhere.
    Replaced,
    /// Its signalling link was gone for the whole resume window (WHIP/WHEP: its media).
    ResumeWindowExpired,
    /// One of its peer connections failed (DTLS closed, SCTP lost, a WebRTC stack panic).
    MediaFailed,
    /// `DELETE` on its WHIP/WHEP session.
    Deleted,
    /// Its WHIP/WHEP offer could not be answered.
    OfferRefused,
    /// Its access token's session was revoked.
    Revoked,
}

impl LeaveReason {
    pub const ALL: [LeaveReason; 7] = [
        LeaveReason::Left,
        LeaveReason::Replaced,
        LeaveReason::ResumeWindowExpired,
        LeaveReason::MediaFailed,
        LeaveReason::Deleted,
        LeaveReason::OfferRefused,
        LeaveReason::Revoked,
    ];

    /// The `reason` label of `maxd_sfu_participants_left_total`.
    pub fn label(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Replaced => "replaced",
            LeaveReason::ResumeWindowExpired => "resume_window_expired",
            LeaveReason::MediaFailed => "media_failed",
            LeaveReason::Deleted => "deleted",
            LeaveReason::OfferRefused => "offer_refused",
            LeaveReason::Revoked => "revoked",
        }
    }

    /// What the participant is told (`left.reason`) and what the log says.
    pub fn text(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Replaced => "duplicate identity",
            LeaveReason::ResumeWindowExpired => "connection lost and not resumed within the resume window",
            LeaveReason::MediaFailed => "media connection failed",
            LeaveReason::Deleted => "ended by DELETE",
            LeaveReason::OfferRefused => "offer refused",
            LeaveReason::Revoked => "access revoked",
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    pub rooms: IntGauge,
    pub participants: IntGauge,
    pub peers: IntGauge,
    pub tracks: IntGauge,
    pub subscriptions: IntGauge,
    pub tcp_connections: IntGauge,
    packets_in: IntCounter,
    bytes_in: IntCounter,
    packets_out: IntCounter,
    bytes_out: IntCounter,
    rtp_forwarded: IntCounter,
    nacks_received: IntCounter,
    keyframe_requests_received: IntCounter,
    plis_sent: IntCounter,
    drops: IntCounterVec,
    peer_panics: IntCounter,
    signal_drops: IntCounter,
    ice_timeouts: IntCounter,
    consent_by_media: IntCounter,
    left: IntCounterVec,
    tcp_refused: IntCounterVec,
    pub forward_latency: Histogram,
    pub worker_cpu_seconds: CounterVec,
    /// Per media worker (label `worker`: "0", "1", ...).
    pub worker_rooms: IntGaugeVec,
    pub worker_participants: IntGaugeVec,
    pub worker_packets: IntCounterVec,
    pub worker_busy_seconds: CounterVec,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name, help).subsystem("sfu")).expect("valid metric");
    r.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::with_opts(Opts::new(name, help).subsystem("sfu")).expect("valid metric");
    r.register(Box::new(g.clone())).expect("metric registered once");
    g
}

impl Metrics {
    pub fn new(r: &Registry) -> Metrics {
        let drops = IntCounterVec::new(
            Opts::new("dropped_packets_total", "Packets dropped, by reason").subsystem("sfu"),
            &["reason"],
        )
        .expect("valid metric");
        r.register(Box::new(drops.clone())).expect("metric registered once");
        let forward_latency = Histogram::with_opts(
            HistogramOpts::new(
                "forward_latency_seconds",
                "Time from receiving a media packet to handing its forwarded copies to the socket",
            )
            .subsystem("sfu")
            .buckets(vec![
                0.000_025, 0.000_05, 0.000_1, 0.000_2, 0.000_3, 0.000_5, 0.000_75, 0.001, 0.0015, 0.002,
                0.003, 0.005, 0.01, 0.02, 0.05, 0.1,
            ]),
        )
        .expect("valid metric");
        r.register(Box::new(forward_latency.clone())).expect("metric registered once");
        let worker_cpu_seconds = CounterVec::new(
            Opts::new("worker_cpu_seconds_total", "CPU time used by each media worker thread, seconds")
                .subsystem("sfu"),
            &["worker"],
        )
        .expect("valid metric");
        r.register(Box::new(worker_cpu_seconds.clone())).expect("metric registered once");
        let left = IntCounterVec::new(
            Opts::new("participants_left_total", "Participants removed from rooms, by reason").subsystem("sfu"),
            &["reason"],
        )
        .expect("valid metric");
        r.register(Box::new(left.clone())).expect("metric registered once");
        let tcp_refused = IntCounterVec::new(
            Opts::new("tcp_refused_total", "ICE-TCP connections refused, by the limit that refused them")
                .subsystem("sfu"),
            &["limit"],
        )
        .expect("valid metric");
        r.register(Box::new(tcp_refused.clone())).expect("metric registered once");
        let worker_rooms = IntGaugeVec::new(
            Opts::new("worker_rooms", "Open rooms on each media worker").subsystem("sfu"),
            &["worker"],
        )
        .expect("valid metric");
        r.register(Box::new(worker_rooms.clone())).expect("metric registered once");
        let worker_participants = IntGaugeVec::new(
            Opts::new("worker_participants", "Participants on each media worker").subsystem("sfu"),
            &["worker"],
        )
        .expect("valid metric");
        r.register(Box::new(worker_participants.clone())).expect("metric registered once");
        let worker_packets = IntCounterVec::new(
            Opts::new("worker_packets_total", "Datagrams (UDP and ICE-TCP) handled by each media worker")
                .subsystem("sfu"),
            &["worker"],
        )
        .expect("valid metric");
        r.register(Box::new(worker_packets.clone())).expect("metric registered once");
        let worker_busy_seconds = CounterVec::new(
            Opts::new(
                "worker_busy_seconds_total",
                "Wall-clock time each media worker spent handling input rather than waiting for it",
            )
            .subsystem("sfu"),
            &["worker"],
        )
        .expect("valid metric");
        r.register(Box::new(worker_busy_seconds.clone())).expect("metric registered once");
        Metrics {
            worker_rooms,
            worker_participants,
            worker_packets,
            worker_busy_seconds,
            rooms: gauge(r, "rooms", "Open rooms"),
            participants: gauge(r, "participants", "Participants in all rooms"),
            peers: gauge(r, "peers", "WebRTC peer connections (up to two per participant)"),
            tracks: gauge(r, "tracks", "Published tracks"),
            subscriptions: gauge(r, "subscriptions", "Track subscriptions (downtracks)"),
            tcp_connections: gauge(r, "tcp_connections", "Open ICE-TCP connections"),
            packets_in: counter(r, "packets_received_total", "Datagrams received on the media ports"),
            bytes_in: counter(r, "bytes_received_total", "Bytes received on the media ports"),
            packets_out: counter(r, "packets_sent_total", "Datagrams sent on the media ports"),
            bytes_out: counter(r, "bytes_sent_total", "Bytes sent on the media ports"),
            rtp_forwarded: counter(r, "rtp_forwarded_total", "RTP packets forwarded to subscribers"),
            nacks_received: counter(r, "nacks_received_total", "NACKs received from subscribers"),
            keyframe_requests_received: counter(
                r,
                "keyframe_requests_received_total",
                "PLI/FIR received from subscribers",
            ),
            plis_sent: counter(r, "plis_sent_total", "Keyframe requests sent to publishers"),
            drops,
            peer_panics: counter(r, "peer_panics_total", "Peers closed because the WebRTC stack panicked"),
            signal_drops: counter(
                r,
                "signal_slow_consumers_total",
                "Signalling connections dropped because the client did not read fast enough",
            ),
            ice_timeouts: counter(
                r,
                "ice_timeouts_total",
                "Peer connections whose ICE timed out: no STUN and no authenticated media on any path",
            ),
            consent_by_media: counter(
                r,
                "consent_by_media_total",
                "Paths kept alive by authenticated media for clients that skip STUN consent checks",
            ),
            left,
            tcp_refused,
            forward_latency,
            worker_cpu_seconds,
        }
    }

    /// Counts an ICE-TCP connection refused by a limit.
    pub fn tcp_refused(&self, r: crate::ice_tcp::Refused) {
        let label = match r {
            crate::ice_tcp::Refused::Total => "total",
            crate::ice_tcp::Refused::PerIp => "per_ip",
        };
        self.tcp_refused.with_label_values(&[label]).inc();
    }

    /// Counts datagrams the receive path dropped before any worker saw them: from an
    /// unknown source, or for a worker whose queue was full.
    pub fn router_drops(&self, unknown_source: u64, queue_full: u64) {
        self.drops.with_label_values(&["unknown_source"]).inc_by(unknown_source);
        self.drops.with_label_values(&["worker_queue_full"]).inc_by(queue_full);
    }

    pub fn local_latency(&self) -> LocalHistogram {
        self.forward_latency.local()
    }

    /// Moves the counts to Prometheus and zeroes them.
    pub fn flush(&self, c: &mut Counters) {
        let c = std::mem::take(c);
        self.packets_in.inc_by(c.packets_in);
        self.bytes_in.inc_by(c.bytes_in);
        self.packets_out.inc_by(c.packets_out);
        self.bytes_out.inc_by(c.bytes_out);
        self.rtp_forwarded.inc_by(c.rtp_forwarded);
        self.nacks_received.inc_by(c.nacks_received);
        self.keyframe_requests_received.inc_by(c.keyframe_requests_received);
        self.plis_sent.inc_by(c.plis_sent);
        self.drops.with_label_values(&["unknown_source"]).inc_by(c.drop_unknown_source);
        self.drops.with_label_values(&["malformed"]).inc_by(c.drop_malformed);
        self.drops.with_label_values(&["send_failed"]).inc_by(c.drop_send_failed);
        self.drops.with_label_values(&["layer_not_selected"]).inc_by(c.drop_layer);
        self.peer_panics.inc_by(c.peer_panics);
        self.signal_drops.inc_by(c.signal_drops);
        self.drops.with_label_values(&["address_limit"]).inc_by(c.drop_address_limit);
        self.ice_timeouts.inc_by(c.ice_timeouts);
        self.consent_by_media.inc_by(c.consent_by_media);
        for (n, r) in c.left.iter().zip(LeaveReason::ALL) {
            self.left.with_label_values(&[r.label()]).inc_by(*n);
        }
    }
}
