//! `maxd`: the messenger server in one binary.
//!
//! With no arguments it runs every plane on embedded defaults, bound to 127.0.0.1.

mod config;
mod files_cli;
mod listener;
mod memory;
mod rlimit;
mod server;
mod web;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory, Parser, Subcommand};

use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "maxd",
    version,
    about = "Real-time messaging and calls server: SFU, chat and file relay in one binary",
    long_about = "Real-time messaging and calls server: SFU, chat and file relay in one binary.\n\n\
        With no subcommand, runs every plane on embedded defaults: HTTP on 127.0.0.1:8080, \
        media on UDP/TCP 127.0.0.1:7882, file relay on UDP 127.0.0.1:4433, data in ./maxd-data.\n\
        Configuration: --config FILE (TOML, see configs/maxd.toml), then environment \
        variables MAXD_SECTION__KEY for keys in sections (MAXD_HTTP__LISTEN=0.0.0.0:8080) and \
        MAXD_DATA_DIR, MAXD_DEV, MAXD_ROLES for the top-level keys, then --data-dir. Other \
        MAXD_ variables belong to options (shown as [env: ...]) and are never read as keys."
)]
struct Cli {
    /// TOML configuration file (every key is documented in configs/maxd.toml).
    #[arg(long, short = 'c', global = true, env = "MAXD_CONFIG_FILE")]
    config: Option<PathBuf>,
    /// The data directory (config key `data_dir`, env MAXD_DATA_DIR), overriding both.
    /// `maxd token` and `maxd files` read the server's dev secret and relay certificate
    /// there: pass the server's when not run where the server runs.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Run,
    /// Print an access token signed with this node's secret.
    Token {
        /// Room the token opens.
        #[arg(long)]
        room: Option<String>,
        /// Identity of the bearer (unique in the room).
        #[arg(long)]
        identity: String,
        /// Display name shown to others (defaults to the identity).
        #[arg(long)]
        name: Option<String>,
        /// Comma-separated grants: publish, subscribe, files, chat, source:camera,
        /// source:microphone, source:screen_share, source:screen_share_audio.
        #[arg(long, default_value = "publish,subscribe")]
        grants: String,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Upload, download and inspect files on the relay.
    #[command(subcommand)]
    Files(files_cli::FilesCommand),
    /// Print the effective configuration (defaults, file and environment merged) as TOML.
    Config,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("maxd: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `MAXD_` variables read by a plane or by the test harness rather than by a
/// command-line option or as a config key.
const OTHER_VARIABLES: &[&str] = &[
    // relay/src/iobuf.rs: turns O_DIRECT off (docs/relay.md).
    "MAXD_RELAY_NO_DIRECT_IO",
    // tests/browser.rs: skips the browser tests (docs/web.md).
    "MAXD_SKIP_BROWSER_TESTS",
];

/// Every `MAXD_` variable something reads besides config keys: the command line's own
/// (from its definition, so the list cannot drift) and [`OTHER_VARIABLES`].
fn known_variables() -> Vec<String> {
    fn walk(cmd: &clap::Command, out: &mut Vec<String>) {
        out.extend(
            cmd.get_arguments()
                .filter_map(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned()),
        );
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out: Vec<String> = OTHER_VARIABLES.iter().map(|s| s.to_string()).collect();
    walk(&Cli::command(), &mut out);
    out
}

fn unread_variable_warning(name: &str) -> String {
    format!(
        "environment variable {name} is not a configuration key or an option, and is ignored \
         (keys in sections are MAXD_SECTION__KEY; top-level keys MAXD_DATA_DIR, MAXD_DEV, MAXD_ROLES)"
    )
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    if let Some(dir) = cli.data_dir {
        cfg.data_dir = dir;
    }
    let unread = config::unread_variables(
        std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()),
        &known_variables(),
    );
    let command = cli.command.unwrap_or(Command::Run);
    if !matches!(command, Command::Run) {
        for name in &unread {
            eprintln!("maxd: warning: {}", unread_variable_warning(name));
        }
    }
    match command {
        Command::Run => {
            server::init_tracing(&cfg.log)?;
            for name in &unread {
                tracing::warn!("{}", unread_variable_warning(name));
            }
            server::raise_open_file_limit();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("maxd-http")
                .build()
                .context("starting the async runtime")?;
            memory::start_trimming();
            rt.block_on(server::run(cfg))
        }
        Command::Token {
            room,
            identity,
            name,
            grants,
            ttl,
        } => {
            let grants = common::Grants::parse_list(&grants).map_err(anyhow::Error::msg)?;
            let keys = server::cli_keys_or(
                &cfg,
                "or pass the same auth.secret as the server (MAXD_AUTH__SECRET)",
            )?;
            let token = keys.mint_for(
                &identity,
                Some(name.as_deref().unwrap_or(&identity)),
                room.as_deref(),
                grants,
                ttl,
            );
            println!("{token}");
            Ok(())
        }
        Command::Files(cmd) => files_cli::run(&cfg, cmd),
        Command::Config => {
            print!("{}", config::to_redacted_toml(&cfg)?);
            Ok(())
        }
    }
}
