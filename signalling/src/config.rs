//! `[signalling]` configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[signalling]` section of the config. Every key is documented in `configs/maxd.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// PostgreSQL URL (`postgres://user:pass@host/db`). Empty: SQLite in the data directory.
    pub database_url: String,
    /// Country calling codes allowed to register (7 = Russia, 375 = Belarus).
    pub allowed_country_codes: Vec<u16>,
    /// Domain named in the last line of the SMS (`@host #123456`) for code autofill.
    pub sms_domain: String,
    /// SMS provider: `dev` (codes written to `<data_dir>/sms-codes.jsonl`, dev mode only)
    /// or `http` (JSON posted to `sms_gateway_url`).
    pub sms_provider: String,
    /// Gateway URL for the `http` provider (plain `http://`).
    pub sms_gateway_url: String,
    /// Value of the `Authorization` header sent to the gateway, if any.
    pub sms_gateway_auth: String,
    /// How long a code stays valid.
    #[serde(with = "humantime_serde")]
    pub code_ttl: Duration,
    /// Least time between two codes sent to one number.
    #[serde(with = "humantime_serde")]
    pub code_cooldown: Duration,
    /// Most codes sent to one number in 24 hours.
    pub codes_per_number_per_day: u32,
    /// Most code requests from one IP address per hour.
    pub codes_per_ip_per_hour: u32,
    /// Tries (wrong or right) that one code allows; the last wrong one burns it.
    pub code_max_attempts: u32,
    /// Most code checks (`/api/auth/verify`) from one IP address per hour (IPv6: per /64).
    pub verifies_per_ip_per_hour: u32,
    /// Codes burnt by wrong tries, within `lockout_window`, that lock the number.
    pub burnt_codes_before_lockout: u32,
    /// Window over which burnt codes are counted; the number stays locked until the
    /// oldest of them is this old.
    #[serde(with = "humantime_serde")]
    pub lockout_window: Duration,
    /// Lifetime of access tokens (JWT).
    #[serde(with = "humantime_serde")]
    pub access_ttl: Duration,
    /// Lifetime of an unused refresh token.
    #[serde(with = "humantime_serde")]
    pub refresh_ttl: Duration,
    /// Most members of a group.
    pub max_group_members: u32,
    /// Most subscribers of a channel.
    pub max_channel_members: u32,
    /// Most characters in a message text.
    pub max_text_chars: usize,
    /// Largest WebSocket frame or HTTP body accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Messages one user may send per second (burst allowed: twice as many).
    pub messages_per_second: u32,
    /// How long a `/ws` connection opened without a token has to send its `auth` frame.
    #[serde(with = "humantime_serde")]
    pub ws_auth_timeout: Duration,
    /// How often the server pings an idle `/ws` connection.
    #[serde(with = "humantime_serde")]
    pub ws_ping_interval: Duration,
    /// A `/ws` peer from which nothing (not even a pong) arrives for this long is closed.
    #[serde(with = "humantime_serde")]
    pub ws_idle_timeout: Duration,
    /// Frames one `/ws` connection may send per second (burst allowed: twice as many);
    /// frames over it are answered `rate_limited` and not acted on.
    pub ws_frames_per_second: u32,
    /// Open `/ws` connections one account may have at once; one more is closed (4005).
    pub ws_connections_per_user: u32,
    /// How long an invite rings before the call is `missed` (a group call stops ringing).
    #[serde(with = "humantime_serde")]
    pub ring_timeout: Duration,
    /// How long a party's device may have no `/ws` connection before it counts as gone
    /// (the call ends with `disconnect`, or the member leaves a group call).
    #[serde(with = "humantime_serde")]
    pub call_disconnect_grace: Duration,
    /// Lifetime of the SFU access tokens minted for a call (ask again to rejoin).
    #[serde(with = "humantime_serde")]
    pub call_token_ttl: Duration,
    /// Group calls ring members in groups of at most this many members; in larger
    /// groups a call is only announced.
    pub group_ring_max_members: u32,
    /// 1:1 calls start peer-to-peer (offer/answer relayed over `/ws`) and move to the
    /// SFU when a third person joins or P2P fails; false: every call uses the SFU.
    pub p2p_direct_calls: bool,
    /// Calls one user may start or invite to per minute (bursts of as many).
    pub call_invites_per_minute: u32,
    /// Calls that may ring one user at once; one more ends at once as `busy`.
    pub max_ringing_per_user: u32,
    /// TURN server URLs handed to call clients (`turn:host:3478?transport=udp`,
    /// `turns:host:5349?transport=tcp`). Empty: no TURN.
    pub turn_urls: Vec<String>,
    /// Secret shared with the TURN server (coturn `static-auth-secret`).
    pub turn_secret: String,
    /// Lifetime of TURN credentials.
    #[serde(with = "humantime_serde")]
    pub turn_ttl: Duration,
    /// URL of the push gateway (APNs VoIP / FCM relay with a sygnal-style API),
    /// `https://` (or `http://` on a trusted network). Empty: `gateway` push targets are
    /// refused.
    pub push_gateway_url: String,
    /// PEM file of CA certificates trusted for push over HTTPS besides Mozilla's roots
    /// (a gateway with a private CA). Empty: none.
    pub push_ca_file: String,
    /// VAPID private key for Web Push (base64url of the 32-byte P-256 scalar). Empty:
    /// `webpush` targets are refused.
    pub push_vapid_private_key: String,
    /// VAPID `sub` claim: how the push service reaches the operator.
    pub push_vapid_subject: String,
    /// Hosts a Web Push endpoint may be on (the browsers' push services); any other
    /// endpoint is refused at registration, so the server posts to no address a client
    /// chooses. `*.example.com` takes every subdomain of example.com.
    pub push_webpush_hosts: Vec<String>,
    /// Time one push request may take.
    #[serde(with = "humantime_serde")]
    pub push_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: String::new(),
            allowed_country_codes: vec![7, 375],
            sms_domain: "localhost".into(),
            sms_provider: "dev".into(),
            sms_gateway_url: String::new(),
            sms_gateway_auth: String::new(),
            code_ttl: Duration::from_secs(300),
            code_cooldown: Duration::from_secs(60),
            codes_per_number_per_day: 10,
            codes_per_ip_per_hour: 30,
            code_max_attempts: 5,
            verifies_per_ip_per_hour: 60,
            burnt_codes_before_lockout: 3,
            lockout_window: Duration::from_secs(24 * 3600),
            access_ttl: Duration::from_secs(900),
            refresh_ttl: Duration::from_secs(60 * 24 * 3600),
            max_group_members: 10_000,
            max_channel_members: 100_000,
            max_text_chars: 4096,
            max_frame_bytes: 65_536,
            messages_per_second: 50,
            ws_auth_timeout: Duration::from_secs(10),
            ws_ping_interval: Duration::from_secs(20),
            ws_idle_timeout: Duration::from_secs(60),
            ws_frames_per_second: 100,
            ws_connections_per_user: 32,
            ring_timeout: Duration::from_secs(45),
            call_disconnect_grace: Duration::from_secs(10),
            call_token_ttl: Duration::from_secs(120),
            group_ring_max_members: 16,
            p2p_direct_calls: true,
            call_invites_per_minute: 20,
            max_ringing_per_user: 3,
            turn_urls: Vec::new(),
            turn_secret: String::new(),
            turn_ttl: Duration::from_secs(6 * 3600),
            push_gateway_url: String::new(),
            push_ca_file: String::new(),
            push_vapid_private_key: String::new(),
            push_vapid_subject: "mailto:admin@localhost".into(),
            push_webpush_hosts: vec![
                "fcm.googleapis.com".into(),
                "updates.push.services.mozilla.com".into(),
                "web.push.apple.com".into(),
                "*.notify.windows.com".into(),
            ],
            push_timeout: Duration::from_secs(10),
        }
    }
}
