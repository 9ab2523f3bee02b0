//! `--mode files`: parallel uploads, then parallel downloads, through the QUIC file
//! relay with the relay's own client library (what `maxd files` uses); every byte is
//! verified by the library. Reports aggregate throughput and per-transfer times.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::{RngCore, SeedableRng};
use relay::client::{Client, Options, Progress};
use relay::tls::Trust;
use serde::Serialize;

use crate::report::{Participants, Report};
use crate::scenario::Scenario;
use crate::stats::{Dist, round2};
use crate::token::TokenSource;

#[derive(Debug, Clone, Serialize, Default)]
pub struct Phase {
    pub transfers: usize,
    pub ok: usize,
    pub bytes: u64,
    pub seconds: f64,
    /// All transfers together, MiB/s (bytes / wall time of the phase).
    pub mib_per_s: f64,
    /// Per transfer, ms.
    pub transfer_ms: Dist,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct FileFigures {
    pub clients: usize,
    pub file_size: u64,
    pub streams_per_transfer: usize,
    pub upload: Phase,
    pub download: Phase,
}

fn phase(results: &[(Result<u64>, Duration)], wall: Duration) -> Phase {
    let bytes: u64 = results.iter().filter_map(|(r, _)| r.as_ref().ok()).sum();
    let secs = wall.as_secs_f64().max(1e-6);
    Phase {
        transfers: results.len(),
        ok: results.iter().filter(|(r, _)| r.is_ok()).count(),
        bytes,
        seconds: round2(secs),
        mib_per_s: round2(bytes as f64 / 1048576.0 / secs),
        transfer_ms: Dist::of(
            results
                .iter()
                .filter(|(r, _)| r.is_ok())
                .map(|(_, d)| d.as_secs_f64() * 1000.0),
        ),
    }
}

/// Uploads `file_clients` files of `file_size` bytes in parallel (one connection each),
/// then downloads each from another client in parallel.
pub async fn run_files(sc: &Scenario) -> Result<Report> {
    let tokens =
        TokenSource::from_options(sc.token_secret.as_deref(), sc.token_command.as_deref())?;
    let relay_addr = sc.relay_addr.as_deref().unwrap_or("127.0.0.1:4433");
    let server: SocketAddr = relay_addr
        .to_socket_addrs()
        .context("resolve the relay address")?
        .next()
        .context("no relay address")?;
    let trust = match (&sc.relay_pin, &sc.data_dir) {
        (Some(p), _) => Trust::Pin(p.clone()),
        (None, Some(d)) => Trust::Pin(relay::tls::dev_fingerprint(std::path::Path::new(d))?),
        (None, None) => anyhow::bail!(
            "files mode needs --relay-pin FINGERPRINT (printed by maxd) or --data-dir (dev mode)"
        ),
    };
    let n = sc.file_clients.max(1);
    let dir = tempfile_dir()?;
    let mut paths = Vec::new();
    for i in 0..n {
        let p = dir.join(format!("up-{i}.bin"));
        let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random::<u64>() ^ i as u64);
        let mut f = std::io::BufWriter::new(std::fs::File::create(&p)?);
        let mut left = sc.file_size;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let k = left.min(buf.len() as u64) as usize;
            rng.fill_bytes(&mut buf[..k]);
            std::io::Write::write_all(&mut f, &buf[..k])?;
            left -= k as u64;
        }
        std::io::Write::flush(&mut f)?;
        paths.push(p);
    }
    let mut clients = Vec::new();
    for i in 0..n {
        let token = tokens
            .token(
                None,
                &format!("loadtest-files-{i}"),
                "files",
                Duration::from_secs(3600),
            )
            .await?;
        let opts = Options {
            server,
            server_name: "localhost".into(),
            token,
            trust: trust.clone(),
            streams: sc.file_streams.max(1),
        };
        clients.push(Arc::new(
            Client::connect(&opts)
                .await
                .map_err(|e| anyhow::anyhow!("connect to the relay: {e}"))?,
        ));
    }
    let start = Instant::now();
    let t = Instant::now();
    let ups = futures_util::future::join_all(clients.iter().zip(&paths).map(|(c, p)| async move {
        let t = Instant::now();
        let r = c
            .upload(
                p,
                "loadtest.bin",
                "application/octet-stream",
                Arc::new(Progress::default()),
            )
            .await;
        (r.map_err(|e| anyhow::anyhow!("upload: {e}")), t.elapsed())
    }))
    .await;
    let up_wall = t.elapsed();
    let ids: Vec<Option<String>> = ups.iter().map(|(r, _)| r.as_ref().ok().cloned()).collect();
    let up: Vec<(Result<u64>, Duration)> = ups
        .into_iter()
        .map(|(r, d)| (r.map(|_| sc.file_size), d))
        .collect();
    let t = Instant::now();
    let downs = futures_util::future::join_all(clients.iter().enumerate().map(|(i, c)| {
        let id = ids[(i + 1) % n].clone();
        let out = dir.join(format!("down-{i}.bin"));
        async move {
            let t = Instant::now();
            let r = match id {
                Some(id) => c
                    .download(&id, &out, Arc::new(Progress::default()))
                    .await
                    .map(|info| info.size)
                    .map_err(|e| anyhow::anyhow!("download: {e}")),
                None => Err(anyhow::anyhow!("download: nothing uploaded")),
            };
            let _ = std::fs::remove_file(&out);
            (r, t.elapsed())
        }
    }))
    .await;
    let down_wall = t.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    let mut errors = std::collections::BTreeMap::new();
    for (r, _) in up.iter().chain(&downs) {
        if let Err(e) = r {
            *errors.entry(format!("{e:#}")).or_insert(0u64) += 1;
        }
    }
    let fig = FileFigures {
        clients: n,
        file_size: sc.file_size,
        streams_per_transfer: sc.file_streams.max(1),
        upload: phase(&up, up_wall),
        download: phase(&downs, down_wall),
    };
    for c in clients {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.close().await;
        }
    }
    let ok = fig.upload.ok + fig.download.ok;
    Ok(Report {
        mode: "files".into(),
        scenario: sc.clone(),
        duration_s: round2(start.elapsed().as_secs_f64()),
        participants: Participants {
            planned: n,
            started: n,
            connected: n,
            failed: n - fig.download.ok.min(n),
            ..Participants::default()
        },
        tracks_expected: 2 * n,
        tracks_received: ok,
        bitrate_out_kbps: round2(fig.upload.mib_per_s * 8.0 * 1048.576),
        bitrate_in_kbps: round2(fig.download.mib_per_s * 8.0 * 1048.576),
        errors: errors.values().sum(),
        errors_by_kind: errors,
        files: Some(serde_json::to_value(&fig)?),
        ..Default::default()
    })
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("loadtest-files-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
