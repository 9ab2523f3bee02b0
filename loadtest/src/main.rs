//! `loadtest`: runs a scenario against a maxd node and reports what the simulated
//! participants saw. See `docs/loadtest.md`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use loadtest::verdict::{EXIT_ERROR, EXIT_FAILED, EXIT_PASSED, EXIT_USAGE};
use loadtest::{LeaveMix, Mode, RunOptions, Scenario, Speaking};

const EXIT_CODES: &str = "\
Exit codes:
  0  every check passed
  1  the simulator could not run (bad option or scenario, unwritable report)
  2  the command line could not be parsed
  3  the run finished and a check failed (the table's verdict and the report's
     verdict.failures say which): the server still held participants, rooms, tracks or
     subscriptions after its resume window and room grace (left_behind); with churn, a
     leaver not let go within the resume window + 1 s (removals); an expected track
     that never arrived (tracks); more errors than --max-errors (errors; a failed
     participant is one); loss above --max-loss (loss); no participant connected
     (participants)";

#[derive(Parser, Debug)]
#[command(
    name = "loadtest",
    version,
    about = "Load-test simulator for maxd: real WebRTC clients through /rtc",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Scenario file (TOML, see configs/loadtest/); flags override its values.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// What to load (default media).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Base URL of the node's HTTP port (default http://127.0.0.1:8080).
    #[arg(long)]
    url: Option<String>,
    /// Rooms, filled one after the other (default 1).
    #[arg(long)]
    rooms: Option<usize>,
    /// Publishers per room; they also receive each other (default 2).
    #[arg(long)]
    publishers: Option<usize>,
    /// Receive-only participants per room (default 2).
    #[arg(long)]
    subscribers: Option<usize>,
    /// How long to run after the last participant joined, e.g. 15s, 2m (default 15s).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Steady-state figures start this long after the last join (default 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    warmup: Option<Duration>,
    /// Publish a camera track too (default: microphone only).
    #[arg(long, conflicts_with = "audio_only")]
    video: bool,
    /// Publish the microphone only, overriding a scenario file's `video = true`.
    #[arg(long)]
    audio_only: bool,
    /// Three simulcast layers for video, true/false (default true).
    #[arg(long)]
    simulcast: Option<bool>,
    /// Opus bitrate, bits/s (default 32000).
    #[arg(long)]
    audio_bitrate: Option<u32>,
    /// Top video layer bitrate, bits/s (default 1200000).
    #[arg(long)]
    video_bitrate: Option<u32>,
    /// Video frames per second (default 30).
    #[arg(long)]
    fps: Option<u32>,
    /// Pace video at 2.5 x its bitrate like a browser, true/false (default true).
    #[arg(long)]
    pacing: Option<bool>,
    /// A video keyframe this often, besides those the server asks for (default 3s).
    #[arg(long, value_parser = humantime::parse_duration)]
    keyframe_interval: Option<Duration>,
    /// Participants joining per second (default 20).
    #[arg(long)]
    join_rate: Option<f64>,
    /// Churn: once all have joined, RATE participants per second leave (see
    /// --leave-mix) and as many new ones join in their places (default 0: no churn).
    #[arg(long, value_name = "RATE")]
    churn: Option<f64>,
    /// How churned participants leave, by weight: leave (polite: waits for left), quit
    /// (leave and close at once, as a page unloads), close (WebSocket close frame, no
    /// leave), vanish (a killed client: no close frame), silent (network gone: sockets
    /// held open, nothing sent). Default leave=1,close=1,vanish=1.
    #[arg(long, value_name = "KIND=W,...")]
    leave_mix: Option<LeaveMix>,
    /// Soak: run this long (e.g. 10m) instead of --duration; the report adds the
    /// server's memory trend.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    soak: Option<Duration>,
    /// Seed of the churn's choices (default: a random one, which the report gives).
    #[arg(long)]
    seed: Option<u64>,
    /// With churn, a track counts as expected by a participant once available to it
    /// this long (default 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    track_timeout: Option<Duration>,
    /// Fail (exit 3) above this loss ratio after NACK repair (default 0.01).
    #[arg(long, value_name = "RATIO")]
    max_loss: Option<f64>,
    /// Fail (exit 3) with more errors than this (default 0; a failed participant is one).
    #[arg(long, value_name = "N")]
    max_errors: Option<u64>,
    /// Skip the end check (waiting for the server to let go of every participant and
    /// room after the run).
    #[arg(long)]
    no_end_check: bool,
    /// The server's sfu.resume_window (default: what the server says in `joined`).
    #[arg(long, value_parser = humantime::parse_duration)]
    resume_window: Option<Duration>,
    /// The server's sfu.empty_room_grace (default 20s, the server's default).
    #[arg(long, value_parser = humantime::parse_duration)]
    room_grace: Option<Duration>,
    /// How long the server takes to notice a silent /rtc socket: its sfu.ws_idle_timeout
    /// plus sfu.ws_ping_interval (default 55s, the server's defaults). `silent` leavers
    /// are judged against the resume window + 1 s + this.
    #[arg(long, value_parser = humantime::parse_duration)]
    ws_idle: Option<Duration>,
    /// Who talks when (default all).
    #[arg(long, value_enum)]
    speaking: Option<Speaking>,
    /// Opus DTX while not talking: one packet per 400 ms (default false).
    #[arg(long)]
    dtx: Option<bool>,
    /// Prefix of the room names (default: `lt` and four random hex digits, so that two
    /// runs against one server do not meet).
    #[arg(long)]
    room_prefix: Option<String>,
    /// Threads driving participants (default 1).
    #[arg(long)]
    threads: Option<usize>,
    /// The server's auth secret: tokens are signed here, HS256 (or use --token-command).
    #[arg(long, env = "LOADTEST_TOKEN_SECRET", hide_env_values = true)]
    token_secret: Option<String>,
    /// Command printing a token; {room}, {identity} and {grants} are replaced, e.g.
    /// 'target/release/maxd token --room {room} --identity {identity} --grants {grants}'.
    #[arg(long)]
    token_command: Option<String>,
    /// A participant that has not connected this long after it started joining counts
    /// as failed (default 20s).
    #[arg(long, value_parser = humantime::parse_duration)]
    connect_timeout: Option<Duration>,
    /// Pid of a maxd on this machine: exact server CPU from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Ramp subscribers per room by --capacity-step until loss > 0.5 % or p99 delay >
    /// 100 ms, up to --capacity-max.
    #[arg(long)]
    find_capacity: bool,
    /// With --find-capacity: subscribers added per room at each step (default 10).
    #[arg(long)]
    capacity_step: Option<usize>,
    /// With --find-capacity: stop at this many subscribers per room (default 1000).
    #[arg(long)]
    capacity_max: Option<usize>,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the SVG chart here (default: the report's path with .svg).
    #[arg(long)]
    chart: Option<PathBuf>,
    /// No progress line.
    #[arg(long, short)]
    quiet: bool,
    /// Chat mode: members per group (default 20).
    #[arg(long)]
    group_size: Option<usize>,
    /// Chat mode: members of each group who send (default 2).
    #[arg(long)]
    senders: Option<usize>,
    /// Chat mode: messages per second per sender (default 1).
    #[arg(long)]
    rate: Option<f64>,
    /// Chat/files mode: the server's data directory (dev-mode SMS codes are read there).
    #[arg(long)]
    data_dir: Option<String>,
    /// Files mode: bytes per file (default 16777216, 16 MiB).
    #[arg(long)]
    file_size: Option<u64>,
    /// Files mode: clients uploading and downloading in parallel (default 4).
    #[arg(long)]
    clients: Option<usize>,
    /// Files mode: the relay's QUIC address (default 127.0.0.1:4433).
    #[arg(long)]
    relay: Option<String>,
    /// Files mode: the relay certificate's SHA-256 fingerprint (printed by maxd).
    #[arg(long)]
    relay_pin: Option<String>,
}

fn scenario(cli: &Cli) -> Result<Scenario> {
    let mut sc = match &cli.config {
        Some(p) => Scenario::from_toml(
            &std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?,
        )
        .with_context(|| format!("parse {}", p.display()))?,
        None => Scenario::default(),
    };
    macro_rules! set {
        ($($f:ident <- $c:expr),* $(,)?) => { $( if let Some(v) = $c.clone() { sc.$f = v; } )* };
    }
    set!(mode <- cli.mode, url <- cli.url, rooms <- cli.rooms, publishers <- cli.publishers,
        subscribers <- cli.subscribers, duration <- cli.duration, warmup <- cli.warmup, simulcast <- cli.simulcast,
        audio_bitrate <- cli.audio_bitrate, video_bitrate <- cli.video_bitrate, fps <- cli.fps, pacing <- cli.pacing,
        keyframe_interval <- cli.keyframe_interval, join_rate <- cli.join_rate, speaking <- cli.speaking, dtx <- cli.dtx,
        room_prefix <- cli.room_prefix, threads <- cli.threads, connect_timeout <- cli.connect_timeout,
        capacity_step <- cli.capacity_step, capacity_max <- cli.capacity_max,
        churn <- cli.churn, leave_mix <- cli.leave_mix, track_timeout <- cli.track_timeout,
        max_loss <- cli.max_loss, max_errors <- cli.max_errors, room_grace <- cli.room_grace, ws_idle <- cli.ws_idle,
        chat_group_size <- cli.group_size, chat_senders <- cli.senders, chat_rate <- cli.rate,
        file_size <- cli.file_size, file_clients <- cli.clients);
    if cli.token_secret.is_some() {
        sc.token_secret = cli.token_secret.clone();
    }
    if cli.token_command.is_some() {
        sc.token_command = cli.token_command.clone();
    }
    if cli.data_dir.is_some() {
        sc.data_dir = cli.data_dir.clone();
    }
    if cli.server_pid.is_some() {
        sc.server_pid = cli.server_pid;
    }
    if cli.relay_pin.is_some() {
        sc.relay_pin = cli.relay_pin.clone();
    }
    if cli.relay.is_some() {
        sc.relay_addr = cli.relay.clone();
    }
    if cli.soak.is_some() {
        sc.soak = cli.soak;
    }
    if cli.seed.is_some() {
        sc.seed = cli.seed;
    }
    if cli.resume_window.is_some() {
        sc.resume_window = cli.resume_window;
    }
    if cli.no_end_check {
        sc.end_check = false;
    }
    if cli.video {
        sc.video = true;
    }
    if cli.audio_only {
        sc.video = false;
    }
    if cli.find_capacity {
        sc.find_capacity = true;
    }
    if cli.config.is_none() {
        sc.name = "command line".into();
    }
    Ok(sc)
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,str0m=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                EXIT_USAGE
            } else {
                EXIT_PASSED
            });
        }
    };
    let code = match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            EXIT_ERROR
        }
    };
    std::process::exit(code);
}

/// Runs and writes the outputs; answers the exit code of the verdict.
fn run(cli: &Cli) -> Result<i32> {
    let sc = scenario(cli)?;
    let opts = RunOptions {
        progress: !cli.quiet,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(loadtest::run(&sc, &opts))?;
    print!("{}", report.table());
    debug_assert!(report.verdict.passed || report.verdict.exit_code == EXIT_FAILED);
    if let Some(path) = &cli.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("report: {}", path.display());
    }
    let chart = cli
        .chart
        .clone()
        .or_else(|| cli.report.as_ref().map(|p| p.with_extension("svg")));
    if let Some(path) = chart {
        if !report.timeline.is_empty() {
            loadtest::chart::write_svg(
                &path,
                &format!("maxd load test: {}", sc.name),
                &report.timeline,
            )?;
            eprintln!("chart: {}", path.display());
        }
    }
    Ok(report.verdict.exit_code)
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every option says what it does, and every option whose value has a default says
    /// which (`--help` is the simulator's manual).
    #[test]
    fn every_option_is_described_with_its_default() {
        // Options with no default value: what they name has to come from the user.
        const NO_DEFAULT: &[&str] = &[
            "config", "token_secret", "token_command", "server_pid", "report", "data_dir",
            "relay_pin", "leave_mix", "soak", "resume_window",
        ];
        let cmd = Cli::command();
        let mut faults = Vec::new();
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let help = a.get_long_help().or(a.get_help()).map(|h| h.to_string()).unwrap_or_default();
            if help.trim().is_empty() {
                faults.push(format!("--{id}: no description"));
            } else if a.get_action().takes_values() && !NO_DEFAULT.contains(&id) && !help.contains("default") {
                faults.push(format!("--{id}: no default given"));
            }
        }
        assert!(faults.is_empty(), "{faults:#?}");
    }
}
