//! A load-test scenario: from a TOML file (`configs/loadtest/*.toml`), from command-line
//! flags, or both (flags override the file).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the simulator exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Calls: WebRTC participants through `/rtc`.
    #[default]
    Media,
    /// Chat: users in groups sending messages over `/ws`.
    Chat,
    /// Files: parallel uploads and downloads through the QUIC relay.
    Files,
}

/// Who talks when (publishers only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Speaking {
    /// Every publisher talks all the time (worst case for the SFU).
    #[default]
    All,
    /// One publisher per room talks at a time, turns of `turn` each; the others send
    /// Opus silence (no DTX: the packet rate stays, the size drops).
    Rotate,
    /// Each publisher talks in random bursts about a third of the time.
    Random,
}

/// How a participant leaves during churn (`--leave-mix`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Departure {
    /// Sends `leave`, waits for `left`, closes its peer connections (DTLS close) and the
    /// WebSocket (close handshake): what a polite client does.
    Leave,
    /// Sends `leave` and closes the WebSocket at once (close frame 1000) without waiting
    /// for `left`, its media just stopping: a page that unloads. Everyone still in does
    /// this at the end of a run. Not in the default mix.
    Quit,
    /// Closes the WebSocket with a close frame (1001, going away) without `leave`; its
    /// media just stops. The server keeps the session for its resume window.
    Close,
    /// A killed client: no `leave`, no close frame, no DTLS close. The TCP socket is
    /// dropped as the kernel drops a killed process's (FIN, or RST with unread data) and
    /// its media stops. The server only learns it from the socket's end.
    Vanish,
    /// The network went away: nothing more is sent or read, but the TCP connection and
    /// the UDP sockets stay open (held until the end check is over), so the server sees
    /// no end at all and can only notice by its own timeouts. Not in the default mix.
    Silent,
}

impl Departure {
    pub const ALL: [Departure; 5] = [
        Departure::Leave,
        Departure::Quit,
        Departure::Close,
        Departure::Vanish,
        Departure::Silent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Departure::Leave => "leave",
            Departure::Quit => "quit",
            Departure::Close => "close",
            Departure::Vanish => "vanish",
            Departure::Silent => "silent",
        }
    }
}

/// Relative weights of the ways churned participants leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaveMix {
    pub leave: u32,
    pub quit: u32,
    pub close: u32,
    pub vanish: u32,
    pub silent: u32,
}

impl Default for LeaveMix {
    /// A third each of `leave`, `close` and `vanish`.
    fn default() -> Self {
        LeaveMix {
            leave: 1,
            quit: 0,
            close: 1,
            vanish: 1,
            silent: 0,
        }
    }
}

impl LeaveMix {
    pub fn weight(&self, d: Departure) -> u32 {
        match d {
            Departure::Leave => self.leave,
            Departure::Quit => self.quit,
            Departure::Close => self.close,
            Departure::Vanish => self.vanish,
            Departure::Silent => self.silent,
        }
    }

    pub fn total(&self) -> u32 {
        Departure::ALL.iter().map(|&d| self.weight(d)).sum()
    }

    /// The kind for `r` in `0..total()`.
    pub fn pick(&self, mut r: u32) -> Departure {
        for d in Departure::ALL {
            let w = self.weight(d);
            if r < w {
                return d;
            }
            r -= w;
        }
        Departure::Leave
    }
}

impl std::str::FromStr for LeaveMix {
    type Err = String;

    /// `leave=1,quit=0,close=1,vanish=1,silent=0`; kinds not named weigh 0.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut m = LeaveMix {
            leave: 0,
            quit: 0,
            close: 0,
            vanish: 0,
            silent: 0,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected KIND=WEIGHT"))?;
            let v: u32 = v
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: the weight must be a whole number"))?;
            match k.trim() {
                "leave" => m.leave = v,
                "quit" => m.quit = v,
                "close" => m.close = v,
                "vanish" => m.vanish = v,
                "silent" => m.silent = v,
                other => {
                    return Err(format!(
                        "unknown kind {other:?}: leave, quit, close, vanish or silent"
                    ));
                }
            }
        }
        if m.total() == 0 {
            return Err("every weight is 0".into());
        }
        Ok(m)
    }
}

/// A media scenario (and the options of the other modes).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Free-form name, shown in the report.
    pub name: String,
    pub mode: Mode,
    /// Base URL of the node's HTTP port.
    pub url: String,
    /// Rooms, each with the same participants.
    pub rooms: usize,
    /// Participants per room that publish (and subscribe to the others).
    pub publishers: usize,
    /// Participants per room that only subscribe.
    pub subscribers: usize,
    /// How long to run after the last participant joined.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Steady-state figures (`steady` in the report, and `--find-capacity`'s verdict)
    /// start this long after the last join.
    #[serde(with = "humantime_serde")]
    pub warmup: Duration,
    /// Publishers send a camera track besides the microphone.
    pub video: bool,
    /// The camera track has three simulcast layers.
    pub simulcast: bool,
    /// Opus bitrate, bits/s.
    pub audio_bitrate: u32,
    /// Top video layer bitrate, bits/s.
    pub video_bitrate: u32,
    pub fps: u32,
    /// Pace video packets at 2.5 x the video bitrate, as browsers do (libwebrtc's
    /// pacer); false writes each frame's packets back to back.
    pub pacing: bool,
    /// A keyframe this often (besides those asked for by PLI/FIR).
    #[serde(with = "humantime_serde")]
    pub keyframe_interval: Duration,
    /// Participants joining per second (all of them, across rooms).
    pub join_rate: f64,
    /// Churn: once everyone has joined, this many participants per second leave (in
    /// the ways of `leave_mix`) and as many new ones join in their places. 0: none.
    pub churn: f64,
    /// How churned participants leave.
    pub leave_mix: LeaveMix,
    /// A soak: run this long (instead of `duration`) after the last initial join; the
    /// report adds the server's memory trend.
    #[serde(with = "humantime_serde")]
    pub soak: Option<Duration>,
    /// With churn, a track counts as expected by a participant when it was available
    /// to it (both in the room, its publisher not gone) at least this long.
    #[serde(with = "humantime_serde")]
    pub track_timeout: Duration,
    /// Seed of the churn's choices (who leaves, how); random when unset (the report
    /// says which was used).
    pub seed: Option<u64>,
    /// After the run, wait for the server to let go of everything (participants,
    /// rooms, tracks, subscriptions back to what `/metrics` said before the run).
    pub end_check: bool,
    /// The server's `sfu.resume_window`; unset: what the server says in `joined`.
    #[serde(with = "humantime_serde")]
    pub resume_window: Option<Duration>,
    /// The server's `sfu.empty_room_grace` (it does not say it; 20s is its default).
    #[serde(with = "humantime_serde")]
    pub room_grace: Duration,
    /// How long the server takes to notice a `/rtc` socket that went silent: its
    /// `sfu.ws_idle_timeout` + `sfu.ws_ping_interval` (40s + 15s by default). A `silent`
    /// leaver is judged against the resume window + 1 s + this.
    #[serde(with = "humantime_serde")]
    pub ws_idle: Duration,
    /// The run fails above this loss ratio (after NACK repair)...
    pub max_loss: f64,
    /// ...or with more errors than this (a participant that fails is one).
    pub max_errors: u64,
    pub speaking: Speaking,
    /// Opus DTX: while not talking, send one silence packet every 400 ms instead of 50/s.
    pub dtx: bool,
    /// Turn length for `speaking = "rotate"`.
    #[serde(with = "humantime_serde")]
    pub turn: Duration,
    /// Room names are `{room_prefix}-{n}`; a random prefix when empty.
    pub room_prefix: String,
    /// Threads driving the participants (each runs its share on one event loop).
    pub threads: usize,
    /// Secret that signs access tokens (HS256), as the server's `auth.secret`.
    pub token_secret: Option<String>,
    /// Command printing a token, with `{room}` and `{identity}` replaced, run by `sh -c`
    /// (e.g. `maxd token --room {room} --identity {identity}`). Used when there is no secret.
    pub token_command: Option<String>,
    /// A participant that is not connected (DTLS on each of its peer connections) this
    /// long after it started counts as failed.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Process id of a server on this machine: its CPU is read from `/proc` (exact)
    /// instead of `/metrics` (whole seconds).
    pub server_pid: Option<u32>,
    /// `--find-capacity`: subscribers are raised step by step until a step fails.
    pub find_capacity: bool,
    /// Subscribers added per capacity step (per room).
    pub capacity_step: usize,
    /// Largest subscriber count tried (per room).
    pub capacity_max: usize,
    /// A capacity step fails above this loss ratio...
    pub capacity_max_loss: f64,
    /// ...or above this p99 one-way delay (ms).
    pub capacity_max_p99_ms: f64,
    /// Chat mode: users per group.
    pub chat_group_size: usize,
    /// Chat mode: messages each sender sends per second.
    pub chat_rate: f64,
    /// Chat mode: how many members of each group send.
    pub chat_senders: usize,
    /// Chat/files mode: the server's data directory (dev mode: SMS codes are read from
    /// `sms-codes.jsonl` there to log users in).
    pub data_dir: Option<String>,
    /// Files mode: size of each file, bytes.
    pub file_size: u64,
    /// Files mode: parallel clients.
    pub file_clients: usize,
    /// Files mode: the relay's QUIC address (host:port).
    pub relay_addr: Option<String>,
    /// Files mode: SHA-256 fingerprint of the relay's certificate (printed by maxd);
    /// without it, the dev certificate in `data_dir` is pinned.
    pub relay_pin: Option<String>,
    /// Files mode: parallel QUIC streams per transfer.
    pub file_streams: usize,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "default".into(),
            mode: Mode::Media,
            url: "http://127.0.0.1:8080".into(),
            rooms: 1,
            publishers: 2,
            subscribers: 2,
            duration: Duration::from_secs(15),
            warmup: Duration::from_secs(5),
            video: false,
            simulcast: true,
            audio_bitrate: 32_000,
            video_bitrate: 1_200_000,
            fps: 30,
            pacing: true,
            keyframe_interval: Duration::from_secs(3),
            join_rate: 20.0,
            churn: 0.0,
            leave_mix: LeaveMix::default(),
            soak: None,
            track_timeout: Duration::from_secs(5),
            seed: None,
            end_check: true,
            resume_window: None,
            room_grace: Duration::from_secs(20),
            ws_idle: Duration::from_secs(55),
            max_loss: 0.01,
            max_errors: 0,
            speaking: Speaking::All,
            dtx: false,
            turn: Duration::from_secs(3),
            room_prefix: String::new(),
            threads: 1,
            token_secret: None,
            token_command: None,
            connect_timeout: Duration::from_secs(20),
            server_pid: None,
            find_capacity: false,
            capacity_step: 10,
            capacity_max: 1000,
            capacity_max_loss: 0.005,
            capacity_max_p99_ms: 100.0,
            chat_group_size: 20,
            chat_rate: 1.0,
            chat_senders: 2,
            data_dir: None,
            file_size: 16 << 20,
            file_clients: 4,
            relay_addr: None,
            relay_pin: None,
            file_streams: 4,
        }
    }
}

impl Scenario {
    pub fn from_toml(text: &str) -> anyhow::Result<Scenario> {
        Ok(toml::from_str(text)?)
    }

    /// How long the run lasts after the last initial join.
    pub fn run_for(&self) -> Duration {
        self.soak.unwrap_or(self.duration)
    }

    /// Participants in all rooms (at any moment: churn replaces those who leave).
    pub fn participants(&self) -> usize {
        self.rooms * (self.publishers + self.subscribers)
    }

    /// Tracks each publisher sends.
    pub fn tracks_per_publisher(&self) -> usize {
        1 + self.video as usize
    }

    /// (participant, track) pairs that should be received.
    pub fn tracks_expected(&self) -> usize {
        let per_room = self.publishers * (self.publishers.saturating_sub(1) + self.subscribers);
        self.rooms * per_room * self.tracks_per_publisher()
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.rooms > 0, "rooms must be at least 1");
        anyhow::ensure!(self.publishers + self.subscribers > 0, "no participants");
        anyhow::ensure!(self.join_rate > 0.0, "join_rate must be positive");
        anyhow::ensure!(self.threads > 0, "threads must be at least 1");
        anyhow::ensure!(
            self.churn >= 0.0 && self.churn.is_finite(),
            "churn must be 0 or more participants per second"
        );
        anyhow::ensure!(
            self.churn == 0.0 || self.leave_mix.total() > 0,
            "leave_mix: every weight is 0"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.max_loss),
            "max_loss is a ratio between 0 and 1"
        );
        anyhow::ensure!(
            self.url.starts_with("http://"),
            "url must be http://HOST:PORT (wss/https is not supported by the simulator)"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_scenarios_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/loadtest");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Scenario::from_toml(&std::fs::read_to_string(&p).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 3);
    }

    #[test]
    fn leave_mix_parses_and_picks_by_weight() {
        let m: LeaveMix = "leave=1, vanish=2".parse().unwrap();
        assert_eq!(
            (m.leave, m.quit, m.close, m.vanish, m.silent),
            (1, 0, 0, 2, 0)
        );
        let q: LeaveMix = "quit=1".parse().unwrap();
        assert_eq!(q.pick(0), Departure::Quit);
        assert_eq!(m.total(), 3);
        let picks: Vec<_> = (0..3).map(|r| m.pick(r)).collect();
        assert_eq!(
            picks,
            [Departure::Leave, Departure::Vanish, Departure::Vanish]
        );
        assert!("leave=x".parse::<LeaveMix>().is_err());
        assert!("jump=1".parse::<LeaveMix>().is_err());
        assert!("leave=0".parse::<LeaveMix>().is_err());
        // The default: a third each of leave, close, vanish.
        let d = LeaveMix::default();
        assert_eq!(
            (0..3).map(|r| d.pick(r)).collect::<Vec<_>>(),
            [Departure::Leave, Departure::Close, Departure::Vanish]
        );
    }

    #[test]
    fn churn_keys_in_toml() {
        let s = Scenario::from_toml(
            "churn = 2.0\nsoak = \"10m\"\nleave_mix = { leave = 2, silent = 1 }\nresume_window = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(s.churn, 2.0);
        assert_eq!(s.run_for(), Duration::from_secs(600));
        assert_eq!(s.leave_mix.weight(Departure::Leave), 2);
        assert_eq!(
            s.leave_mix.weight(Departure::Close),
            1,
            "unnamed keys keep defaults"
        );
        assert_eq!(s.leave_mix.weight(Departure::Silent), 1);
        assert_eq!(s.resume_window, Some(Duration::from_secs(2)));
        assert!(
            Scenario::from_toml("churn = -1.0")
                .unwrap()
                .validate()
                .is_err()
        );
    }

    #[test]
    fn expected_tracks() {
        let s = Scenario {
            rooms: 2,
            publishers: 2,
            subscribers: 3,
            video: true,
            ..Scenario::default()
        };
        // Each publisher's 2 tracks reach 1 other publisher and 3 subscribers, in 2 rooms.
        assert_eq!(s.tracks_expected(), 2 * 2 * 4 * 2);
    }
}
