//! `maxd files ...`: the file relay's command-line client.
//!
//! In the default dev setup, run where `maxd` runs, no flags are needed: the relay's
//! address comes from the config, a token with the `files` grant is minted with the
//! node's dev secret, and the relay's self-signed certificate is pinned from the data
//! directory. Otherwise `--server`, `--token` and `--pin` (or `--ca`) say where and how.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use relay::client::{Client, Options, Progress};
use relay::tls::Trust;

use crate::config::Config;

#[derive(Subcommand)]
pub enum FilesCommand {
    /// Upload a file; prints its id as the last line. Run again to resume.
    Upload {
        /// File to upload.
        path: PathBuf,
        /// Name recipients see (default: the file's name).
        #[arg(long)]
        name: Option<String>,
        /// Media type (default: guessed from the extension).
        #[arg(long = "type")]
        mime: Option<String>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Download a file by id to OUT, verifying every byte. Run again to resume.
    Download {
        /// File id (from `maxd files upload`).
        id: String,
        /// Where to write it (OUT.part and OUT.part.state while under way).
        out: PathBuf,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Describe a file: name, type, size, hash, upload progress, expiry.
    Stat {
        id: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

/// Where the relay is and how to trust and authenticate to it.
#[derive(Args)]
pub struct ConnArgs {
    /// Relay address (UDP), e.g. 203.0.113.5:4433. Default: `relay.listen` of the config.
    #[arg(long, env = "MAXD_FILES_SERVER")]
    server: Option<SocketAddr>,
    /// Name the certificate is checked for, with --ca.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Access token with the `files` grant. Default in dev mode: minted locally.
    #[arg(long, env = "MAXD_FILES_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// SHA-256 fingerprint of the relay's certificate (printed by `maxd` at start).
    /// Default in dev mode: read from the data directory.
    #[arg(long, env = "MAXD_FILES_PIN")]
    pin: Option<String>,
    /// Verify the relay's certificate against these PEM root certificates instead.
    #[arg(long, conflicts_with = "pin")]
    ca: Option<PathBuf>,
    /// Parallel QUIC streams.
    #[arg(long, default_value_t = 4)]
    streams: usize,
}

impl ConnArgs {
    fn options(&self, cfg: &Config) -> anyhow::Result<Options> {
        let mut server = self.server.unwrap_or(cfg.relay.listen);
        if server.ip().is_unspecified() {
            server.set_ip(if server.is_ipv6() { "::1".parse()? } else { "127.0.0.1".parse()? });
        }
        let token = match &self.token {
            Some(t) => t.clone(),
            None if cfg.dev => {
                let keys = crate::server::cli_keys_or(
                    cfg,
                    "or give the relay's address, a token and its certificate: --server HOST:PORT --token TOKEN --pin FINGERPRINT",
                )?;
                let grants = common::Grants { files: true, ..Default::default() };
                keys.mint_for("dev", Some("dev"), None, grants, Duration::from_secs(24 * 3600))
            }
            None => bail!("--token is required: an access token with the `files` grant (your account's, or `maxd token --identity NAME --grants files`)"),
        };
        let trust = match (&self.pin, &self.ca) {
            (Some(p), _) => Trust::Pin(p.clone()),
            (None, Some(ca)) => Trust::Roots(ca.clone()),
            (None, None) if cfg.dev && cfg.relay.cert.is_none() => Trust::Pin(relay::tls::dev_fingerprint(&cfg.data_dir)?),
            (None, None) => bail!("--pin FINGERPRINT (printed by maxd at start) or --ca FILE is required to trust the relay"),
        };
        Ok(Options { server, server_name: self.server_name.clone(), token, trust, streams: self.streams })
    }
}

pub fn run(cfg: &Config, cmd: FilesCommand) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().worker_threads(2).build().context("starting the async runtime")?;
    rt.block_on(run_async(cfg, cmd))
}

async fn connect(cfg: &Config, conn: &ConnArgs) -> anyhow::Result<Client> {
    let opts = conn.options(cfg)?;
    Ok(Client::connect(&opts).await?)
}

async fn run_async(cfg: &Config, cmd: FilesCommand) -> anyhow::Result<()> {
    match cmd {
        FilesCommand::Upload { path, name, mime, conn } => {
            let name = name.unwrap_or_else(|| path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
            let mime = mime.unwrap_or_else(|| guess_mime(&path).to_owned());
            let client = connect(cfg, &conn).await?;
            let progress = Arc::new(Progress::default());
            let bar = show_progress(progress.clone(), "upload");
            let t0 = Instant::now();
            let id = client.upload(&path, &name, &mime, progress.clone()).await.with_context(|| format!("uploading {}", path.display()));
            bar.finish().await;
            let id = id?;
            summary("uploaded", &progress, t0);
            client.close().await;
            println!("{id}");
        }
        FilesCommand::Download { id, out, conn } => {
            let client = connect(cfg, &conn).await?;
            let progress = Arc::new(Progress::default());
            let bar = show_progress(progress.clone(), "download");
            let t0 = Instant::now();
            let info = client.download(&id, &out, progress.clone()).await.with_context(|| format!("downloading {id}"));
            bar.finish().await;
            let info = info?;
            summary("downloaded", &progress, t0);
            client.close().await;
            eprintln!("{} ({} bytes, blake3 {}) -> {}", info.name, info.size, info.hash.unwrap_or_default(), out.display());
        }
        FilesCommand::Stat { id, conn } => {
            let client = connect(cfg, &conn).await?;
            let i = client.stat(&id).await?;
            client.close().await;
            println!("id: {}\nname: {}\ntype: {}\nsize: {}\nblake3: {}\ncomplete: {}\nstored: {}\ncreated: {}\nexpires: {}", i.id, i.name, i.mime, i.size, i.hash.as_deref().unwrap_or("(not known until the upload completes)"), i.complete, i.stored, i.created, i.expires);
        }
    }
    Ok(())
}

fn summary(what: &str, p: &Progress, t0: Instant) {
    let secs = t0.elapsed().as_secs_f64().max(1e-6);
    let moved = p.transferred.load(Ordering::Relaxed);
    let total = p.total.load(Ordering::Relaxed);
    eprintln!(
        "{what} {total} bytes in {secs:.2}s ({:.1} MiB/s); {moved} bytes over the network, {} already there",
        moved as f64 / secs / (1 << 20) as f64,
        total.saturating_sub(moved)
    );
}

struct Bar {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Bar {
    async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// A progress bar with rate and ETA on standard error when it is a terminal.
fn show_progress(p: Arc<Progress>, what: &'static str) -> Bar {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}")
                .unwrap()
                .progress_chars("=> "),
        );
        bar.set_message(what);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            bar.set_length(p.total.load(Ordering::Relaxed));
            bar.set_position(p.done.load(Ordering::Relaxed));
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stopped => break,
            }
        }
        bar.set_position(p.done.load(Ordering::Relaxed));
        bar.finish_and_clear();
    });
    Bar { stop, task }
}

fn guess_mime(path: &Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    match ext.as_str() {
        "mp4" | "m4v" => "video/mp4",
        "mov" => "video/quicktime",
        "webm" => "video/webm",
        "mkv" => "video/x-matroska",
        "mp3" => "audio/mpeg",
        "ogg" | "opus" => "audio/ogg",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "txt" => "text/plain",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}
