//! `maxd`: the messenger server in one binary.
//!
//! With no arguments it runs every plane on embedded defaults, bound to 127.0.0.1.

mod config;
mod files_cli;
mod listener;
mod rlimit;
mod server;
mod web;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "maxd",
    version,
    about = "Real-time messaging and calls server: SFU, chat and file relay in one binary",
    long_about = "Real-time messaging and calls server: SFU, chat and file relay in one binary.\n\n\
        With no subcommand, runs every plane on embedded defaults: HTTP on 127.0.0.1:8080, \
        media on UDP/TCP 127.0.0.1:7882, file relay on UDP 127.0.0.1:4433, data in ./maxd-data.\n\
        Configuration: --config FILE (TOML, see configs/maxd.toml), then MAXD_* environment \
        variables (MAXD_HTTP__LISTEN=0.0.0.0:8080)."
)]
struct Cli {
    /// TOML configuration file (every key is documented in configs/maxd.toml).
    #[arg(long, short = 'c', global = true, env = "MAXD_CONFIG_FILE")]
    config: Option<PathBuf>,
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

fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = Config::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            server::init_tracing(&cfg.log)?;
            server::raise_open_file_limit();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("maxd-http")
                .build()
                .context("starting the async runtime")?;
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
            let keys = server::keys(&cfg)?;
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
            print!("{}", toml::to_string(&cfg)?);
            Ok(())
        }
    }
}
