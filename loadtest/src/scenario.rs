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

    /// Participants in all rooms.
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
