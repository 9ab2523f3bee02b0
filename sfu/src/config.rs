//! `[sfu]` section of the config.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Media-plane settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// UDP socket every peer shares (ICE-lite).
    pub udp_listen: SocketAddr,
    /// ICE-TCP listener (RFC 4571 framing) for clients whose UDP is blocked; unset to disable.
    pub tcp_listen: Option<SocketAddr>,
    /// Media workers: threads that each own whole rooms and forward their media, all
    /// behind the one UDP port. 0: one per available core.
    pub workers: usize,
    /// Address advertised in ICE candidates when the node sits behind 1:1 NAT.
    /// Unset: the listen address.
    pub public_ip: Option<IpAddr>,
    /// How long an empty room stays before it is closed.
    #[serde(with = "humantime_serde")]
    pub empty_room_grace: Duration,
    /// How long a participant whose WebSocket dropped may resume its session.
    #[serde(with = "humantime_serde")]
    pub resume_window: Duration,
    /// Least time between two keyframe requests sent to one publisher's track.
    #[serde(with = "humantime_serde")]
    pub keyframe_request_interval: Duration,
    /// Most participants in one room.
    pub max_participants_per_room: usize,
    /// Most ICE-TCP connections open at once; more are closed at once (and logged).
    pub tcp_max_connections: usize,
    /// Most ICE-TCP connections from one client address (IPv6: one /64). Raise it when
    /// many clients share one address (a large NAT with UDP blocked).
    pub tcp_max_connections_per_ip: usize,
    /// Time an ICE-TCP connection has to send its first frame (a STUN check).
    #[serde(with = "humantime_serde")]
    pub tcp_first_frame_timeout: Duration,
    /// An ICE-TCP connection that sends nothing for this long is closed.
    #[serde(with = "humantime_serde")]
    pub tcp_idle_timeout: Duration,
    /// A `/rtc` WebSocket is pinged this often ...
    #[serde(with = "humantime_serde")]
    pub ws_ping_interval: Duration,
    /// ... and closed when nothing (not even a pong) came for this long; the session
    /// then waits `resume_window` for a resume.
    #[serde(with = "humantime_serde")]
    pub ws_idle_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            udp_listen: "127.0.0.1:7882".parse().unwrap(),
            tcp_listen: Some("127.0.0.1:7882".parse().unwrap()),
            workers: 0,
            public_ip: None,
            empty_room_grace: Duration::from_secs(20),
            resume_window: Duration::from_secs(10),
            keyframe_request_interval: Duration::from_millis(500),
            max_participants_per_room: 500,
            tcp_max_connections: 4096,
            tcp_max_connections_per_ip: 64,
            tcp_first_frame_timeout: Duration::from_secs(5),
            tcp_idle_timeout: Duration::from_secs(30),
            ws_ping_interval: Duration::from_secs(15),
            ws_idle_timeout: Duration::from_secs(40),
        }
    }
}

/// Most media workers (`workers`).
pub const MAX_WORKERS: usize = 256;

impl Config {
    /// The number of media workers to run: `workers`, or one per available core.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_WORKERS),
            n => n,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.max_participants_per_room == 0 {
            return Err("max_participants_per_room must be at least 1".into());
        }
        if self.udp_listen.ip().is_unspecified() && self.public_ip.is_none() {
            return Err(format!(
                "udp_listen {} binds every interface, so it cannot be advertised to clients: set public_ip to the address clients reach",
                self.udp_listen
            ));
        }
        if self.tcp_max_connections == 0 || self.tcp_max_connections_per_ip == 0 {
            return Err("tcp_max_connections and tcp_max_connections_per_ip must be at least 1 (unset tcp_listen to disable ICE-TCP)".into());
        }
        if self.ws_ping_interval.is_zero() || self.ws_idle_timeout <= self.ws_ping_interval {
            return Err("ws_idle_timeout must be longer than ws_ping_interval, which must not be zero".into());
        }
        if self.workers > MAX_WORKERS {
            return Err(format!("workers may be at most {MAX_WORKERS} (0: one per available core)"));
        }
        if self.resume_window > Duration::from_secs(600) {
            return Err("resume_window may be at most 10m".into());
        }
        Ok(())
    }
}
