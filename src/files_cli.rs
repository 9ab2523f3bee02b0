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
            let now = std::time::SystemTime::now();
            let percent = if i.size == 0 { 100.0 } else { i.stored as f64 * 100.0 / i.size as f64 };
            println!(
                "id: {}\nname: {}\ntype: {}\nsize: {} bytes ({})\nblake3: {}\ncomplete: {}\nstored: {} bytes ({:.0} %)\ncreated: {}\nexpires: {}",
                i.id,
                i.name,
                i.mime,
                i.size,
                indicatif::BinaryBytes(i.size),
                i.hash.as_deref().unwrap_or("(not known until the upload completes)"),
                i.complete,
                i.stored,
                percent,
                when(i.created, now),
                when(i.expires, now)
            );
        }
    }
    Ok(())
}

/// A Unix time as people read it: UTC date and time, and how far from now.
fn when(unix_secs: u64, now: std::time::SystemTime) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(unix_secs);
    let at = humantime::format_rfc3339_seconds(t);
    // Whole minutes (or seconds under one) read better than "6days 23h 59m 58s".
    let round = |d: Duration| {
        let s = d.as_secs();
        humantime::format_duration(Duration::from_secs(if s >= 60 { s / 60 * 60 } else { s })).to_string()
    };
    match t.duration_since(now) {
        Ok(ahead) => format!("{at} (in {})", round(ahead)),
        Err(e) => format!("{at} ({} ago)", round(e.duration())),
    }
}

/// The last line of an upload or download: what moved, how fast, and what the relay
/// already had (a deduplicated upload sends nothing, so it has no rate to speak of).
fn summary_line(what: &str, total: u64, moved: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-6);
    let there = total.saturating_sub(moved);
    let rate = if moved == 0 && total > 0 {
        "nothing to send: the relay already had every byte".to_string()
    } else {
        format!("{}/s", indicatif::BinaryBytes((moved as f64 / secs) as u64))
    };
    format!(
        "{what} {total} bytes ({}) in {} ({rate}); {moved} bytes over the network, {there} already there",
        indicatif::BinaryBytes(total),
        humantime::format_duration(Duration::from_millis(elapsed.as_millis() as u64)),
    )
}

fn summary(what: &str, p: &Progress, t0: Instant) {
    let moved = p.transferred.load(Ordering::Relaxed);
    let total = p.total.load(Ordering::Relaxed);
    eprintln!("{}", summary_line(what, total, moved, t0.elapsed()));
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
        // Until the size is known (the relay has answered) a spinner, not a bar that
        // reads full at "0 B/0 B".
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(indicatif::ProgressStyle::with_template("{msg} {spinner} connecting to the relay").unwrap());
        bar.set_message(what);
        let mut sized = false;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            let total = p.total.load(Ordering::Relaxed);
            if !sized && total > 0 {
                sized = true;
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}")
                        .unwrap()
                        .progress_chars("=> "),
                );
            }
            if sized {
                bar.set_length(total);
                bar.set_position(p.done.load(Ordering::Relaxed));
            } else {
                bar.tick();
            }
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stopped => break,
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_dates_and_distances() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_764_572_400); // 2025-12-01T07:00:00Z
        assert_eq!(when(1_764_572_400 + 7 * 86_400 - 30, now), "2025-12-08T06:59:30Z (in 6days 23h 59m)");
        assert_eq!(when(1_764_572_400 - 42, now), "2025-12-01T06:59:18Z (42s ago)");
    }

    #[test]
    fn a_deduplicated_upload_says_so_instead_of_a_zero_rate() {
        let line = summary_line("uploaded", 3 << 20, 0, Duration::from_millis(120));
        assert_eq!(
            line,
            "uploaded 3145728 bytes (3.00 MiB) in 120ms (nothing to send: the relay already had every byte); 0 bytes over the network, 3145728 already there"
        );
        let line = summary_line("downloaded", 4 << 20, 4 << 20, Duration::from_secs(2));
        assert!(line.contains("(2.00 MiB/s)"), "{line}");
    }
}
