//! `loadtest`: runs a scenario against a maxd node and reports what the simulated
//! participants saw. See `docs/loadtest.md`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use loadtest::{Mode, RunOptions, Scenario, Speaking};

#[derive(Parser, Debug)]
#[command(
    name = "loadtest",
    version,
    about = "Load-test simulator for maxd: real WebRTC clients through /rtc"
)]
struct Cli {
    /// Scenario file (TOML, see configs/loadtest/); flags override its values.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Base URL of the node's HTTP port.
    #[arg(long)]
    url: Option<String>,
    #[arg(long)]
    rooms: Option<usize>,
    /// Publishers per room (they also receive each other).
    #[arg(long)]
    publishers: Option<usize>,
    /// Receive-only participants per room.
    #[arg(long)]
    subscribers: Option<usize>,
    /// How long to run after the last participant joined (e.g. 15s, 2m).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Steady-state figures start this long after the last join (default 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    warmup: Option<Duration>,
    /// Publish a camera track too.
    #[arg(long, conflicts_with = "audio_only")]
    video: bool,
    /// Publish the microphone only.
    #[arg(long)]
    audio_only: bool,
    /// Three simulcast layers for video (true/false).
    #[arg(long)]
    simulcast: Option<bool>,
    /// Opus bitrate, bits/s.
    #[arg(long)]
    audio_bitrate: Option<u32>,
    /// Top video layer bitrate, bits/s.
    #[arg(long)]
    video_bitrate: Option<u32>,
    #[arg(long)]
    fps: Option<u32>,
    /// Pace video at 2.5 x its bitrate like a browser (true/false).
    #[arg(long)]
    pacing: Option<bool>,
    #[arg(long, value_parser = humantime::parse_duration)]
    keyframe_interval: Option<Duration>,
    /// Participants joining per second.
    #[arg(long)]
    join_rate: Option<f64>,
    #[arg(long, value_enum)]
    speaking: Option<Speaking>,
    /// Opus DTX while not talking (one packet per 400 ms).
    #[arg(long)]
    dtx: Option<bool>,
    #[arg(long)]
    room_prefix: Option<String>,
    /// Threads driving participants.
    #[arg(long)]
    threads: Option<usize>,
    /// The server's auth secret (signs tokens here, HS256).
    #[arg(long, env = "LOADTEST_TOKEN_SECRET", hide_env_values = true)]
    token_secret: Option<String>,
    /// Command printing a token; {room}, {identity} and {grants} are replaced.
    #[arg(long)]
    token_command: Option<String>,
    #[arg(long, value_parser = humantime::parse_duration)]
    connect_timeout: Option<Duration>,
    /// Pid of a maxd on this machine: exact server CPU from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Ramp subscribers per room until loss > 0.5 % or p99 delay > 100 ms.
    #[arg(long)]
    find_capacity: bool,
    #[arg(long)]
    capacity_step: Option<usize>,
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
    /// Chat mode: members per group, senders per group, messages per second per sender.
    #[arg(long)]
    group_size: Option<usize>,
    #[arg(long)]
    senders: Option<usize>,
    #[arg(long)]
    rate: Option<f64>,
    /// Chat/files mode: the server's data directory (dev-mode SMS codes are read there).
    #[arg(long)]
    data_dir: Option<String>,
    /// Files mode: bytes per file, parallel clients, relay address.
    #[arg(long)]
    file_size: Option<u64>,
    #[arg(long)]
    clients: Option<usize>,
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

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,str0m=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let sc = scenario(&cli)?;
    let opts = RunOptions {
        progress: !cli.quiet,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(loadtest::run(&sc, &opts))?;
    print!("{}", report.table());
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
    Ok(())
}
