//! File relay benchmark: 1 GiB (`--size`) upload and download through the relay,
//! against a raw-quinn baseline (one bulk stream, no disk) and plain TCP, measured in
//! the same run; and the server's peak resident memory.
//!
//! `cargo bench -p maxd-relay --bench throughput -- [--size BYTES] [--dir DIR]`
//!
//! The servers run in a child process (this binary with `--serve`), so its peak RSS
//! (VmHWM) is the relay's alone. Figures go to stdout as a Markdown table.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use relay::client::{Client, Options, Progress};
use relay::tls::Trust;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

const SECRET: &[u8] = b"relay-bench-secret-0123456789-abcdefgh";
const RAW_ALPN: &[u8] = b"raw-bench";

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if std::env::args().any(|a| a == "--serve") {
        return rt.block_on(serve(PathBuf::from(arg("--dir").unwrap())));
    }
    if !std::env::args().any(|a| a == "--bench") {
        // Only `cargo bench` (which passes --bench) runs the measurement.
        return Ok(());
    }
    rt.block_on(bench())
}

/// Child: relay, raw-quinn and TCP servers; prints their addresses; exits when stdin closes.
async fn serve(dir: PathBuf) -> anyhow::Result<()> {
    let keys = common::Keys::from_secret(SECRET)?;
    let ctx = common::Context { data_dir: dir.clone(), dev: true, keys, registry: prometheus::Registry::new() };
    let cfg = relay::Config { listen: "127.0.0.1:0".parse()?, max_file_size: u64::MAX / 4, user_quota: 0, ..Default::default() };
    let r = relay::Relay::start(cfg, ctx).await?;
    // Raw quinn: same TLS and transport settings, one bulk stream, no disk.
    let (certs, key) = relay::tls::load_or_make(None, None, &dir, true)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![RAW_ALPN.to_vec()];
    let mut scfg = quinn::ServerConfig::with_crypto(Arc::new(quinn::crypto::rustls::QuicServerConfig::try_from(tls)?));
    scfg.transport_config(Arc::new(relay::transport()));
    let raw = quinn::Endpoint::server(scfg, "127.0.0.1:0".parse()?)?;
    let raw_addr = raw.local_addr()?;
    let raw_dir = dir.clone();
    tokio::spawn(async move {
        while let Some(inc) = raw.accept().await {
            let dir = raw_dir.clone();
            tokio::spawn(async move {
                let Ok(conn) = inc.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let dir = dir.clone();
                    tokio::spawn(async move {
                        let mut cmd = [0u8; 9];
                        if recv.read_exact(&mut cmd).await.is_err() {
                            return;
                        }
                        let n = u64::from_be_bytes(cmd[1..].try_into().unwrap());
                        if cmd[0] == b'U' || cmd[0] == b'W' {
                            let sink = (cmd[0] == b'W').then(|| std::fs::File::create(dir.join("raw-sink.bin")).unwrap());
                            let mut got = 0u64;
                            while let Ok(Some(c)) = recv.read_chunk(usize::MAX, true).await {
                                if let Some(f) = &sink {
                                    use std::os::unix::fs::FileExt;
                                    f.write_all_at(&c.bytes, c.offset - 9).unwrap();
                                }
                                got += c.bytes.len() as u64;
                            }
                            drop(sink);
                            let _ = std::fs::remove_file(dir.join("raw-sink.bin"));
                            let _ = send.write_all(&got.to_be_bytes()).await;
                        } else {
                            let block = Bytes::from(vec![7u8; 1 << 20]);
                            let mut left = n;
                            while left > 0 {
                                let k = left.min(block.len() as u64) as usize;
                                if send.write_chunk(block.slice(..k)).await.is_err() {
                                    return;
                                }
                                left -= k as u64;
                            }
                        }
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    });
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let tcp_addr = tcp.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let mut cmd = [0u8; 9];
                if s.read_exact(&mut cmd).await.is_err() {
                    return;
                }
                let n = u64::from_be_bytes(cmd[1..].try_into().unwrap());
                let mut buf = vec![0u8; 1 << 20];
                if cmd[0] == b'U' {
                    let mut got = 0u64;
                    while got < n {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => got += k as u64,
                        }
                    }
                    let _ = s.write_all(&got.to_be_bytes()).await;
                } else {
                    let mut left = n;
                    while left > 0 {
                        let k = left.min(buf.len() as u64) as usize;
                        if s.write_all(&buf[..k]).await.is_err() {
                            return;
                        }
                        left -= k as u64;
                    }
                }
            });
        }
    });
    println!("{} {} {} {} {}", r.local_addr(), r.fingerprint(), raw_addr, tcp_addr, std::process::id());
    std::io::stdout().flush()?;
    let mut line = String::new();
    let _ = tokio::io::BufReader::new(tokio::io::stdin()).read_line(&mut line).await;
    r.shutdown().await;
    Ok(())
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// Raw quinn transfer; with `disk`, the receiving side writes what it gets to a file.
async fn raw_quinn(addr: SocketAddr, pin: &str, n: u64, upload: bool, disk: Option<&Path>) -> anyhow::Result<Duration> {
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    tls.alpn_protocols = vec![RAW_ALPN.to_vec()];
    let _ = pin;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?));
    cfg.transport_config(Arc::new(relay::transport()));
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(cfg);
    let conn = ep.connect(addr, "localhost")?.await?;
    let t0 = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut cmd = vec![if upload && disk.is_some() {
        b'W'
    } else if upload {
        b'U'
    } else {
        b'D'
    }];
    cmd.extend_from_slice(&n.to_be_bytes());
    send.write_all(&cmd).await?;
    if upload {
        let block = Bytes::from(vec![7u8; 1 << 20]);
        let mut left = n;
        while left > 0 {
            let k = left.min(block.len() as u64) as usize;
            send.write_chunk(block.slice(..k)).await?;
            left -= k as u64;
        }
        send.finish()?;
        let mut got = [0u8; 8];
        recv.read_exact(&mut got).await?;
        assert_eq!(u64::from_be_bytes(got), n);
    } else {
        send.finish()?;
        let sink = disk.map(std::fs::File::create).transpose()?;
        let mut got = 0u64;
        while let Some(c) = recv.read_chunk(usize::MAX, true).await? {
            if let Some(f) = &sink {
                use std::os::unix::fs::FileExt;
                f.write_all_at(&c.bytes, c.offset)?;
            }
            got += c.bytes.len() as u64;
        }
        assert_eq!(got, n);
        if let Some(p) = disk {
            let _ = std::fs::remove_file(p);
        }
    }
    let d = t0.elapsed();
    conn.close(0u32.into(), b"");
    ep.wait_idle().await;
    Ok(d)
}

async fn tcp(addr: SocketAddr, n: u64, upload: bool) -> anyhow::Result<Duration> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let t0 = Instant::now();
    let mut cmd = vec![if upload { b'U' } else { b'D' }];
    cmd.extend_from_slice(&n.to_be_bytes());
    s.write_all(&cmd).await?;
    let mut buf = vec![7u8; 1 << 20];
    if upload {
        let mut left = n;
        while left > 0 {
            let k = left.min(buf.len() as u64) as usize;
            s.write_all(&buf[..k]).await?;
            left -= k as u64;
        }
        let mut got = [0u8; 8];
        s.read_exact(&mut got).await?;
    } else {
        let mut got = 0u64;
        while got < n {
            let k = s.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            got += k as u64;
        }
    }
    Ok(t0.elapsed())
}

fn make_file(path: &Path, size: u64) -> anyhow::Result<()> {
    if path.metadata().map(|m| m.len() == size).unwrap_or(false) {
        return Ok(());
    }
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut state = 0x9E3779B97F4A7C15u64;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for c in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            c.copy_from_slice(&state.to_le_bytes());
        }
        let k = left.min(block.len() as u64) as usize;
        f.write_all(&block[..k])?;
        left -= k as u64;
    }
    f.flush()?;
    Ok(())
}

async fn bench() -> anyhow::Result<()> {
    let size: u64 = arg("--size").map(|s| s.parse()).transpose()?.unwrap_or(1 << 30);
    let base = arg("--dir").map(PathBuf::from).unwrap_or_else(std::env::temp_dir).join("maxd-relay-bench");
    let _ = std::fs::remove_dir_all(base.join("server"));
    std::fs::create_dir_all(base.join("server"))?;
    let input = base.join(format!("input-{size}.bin"));
    make_file(&input, size)?;
    let output = base.join("output.bin");
    let _ = std::fs::remove_file(&output);

    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--serve", "--dir"])
        .arg(base.join("server"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await?.ok_or_else(|| anyhow::anyhow!("server did not start"))?;
    let parts: Vec<&str> = line.split_whitespace().collect();
    let (relay_addr, pin, raw_addr, tcp_addr, pid): (SocketAddr, String, SocketAddr, SocketAddr, u32) =
        (parts[0].parse()?, parts[1].to_owned(), parts[2].parse()?, parts[3].parse()?, parts[4].parse()?);
    let idle_kib = vm_hwm_kib(pid);

    let keys = common::Keys::from_secret(SECRET)?;
    let token = keys.mint_for("bench", None, None, common::Grants { files: true, ..Default::default() }, Duration::from_secs(3600));
    let opts = Options { server: relay_addr, server_name: "localhost".into(), token, trust: Trust::Pin(pin.clone()), streams: 4 };

    let streams: usize = arg("--streams").map(|s| s.parse()).transpose()?.unwrap_or(4);
    let opts = Options { streams, ..opts };
    // `--relay-only` skips the baselines (for profiling the relay alone).
    let baselines = !std::env::args().any(|a| a == "--relay-only");
    let zero = Duration::from_nanos(1);
    let me = std::process::id();
    let (c0, k0) = (cpu_secs(pid), cpu_secs(me));
    let raw_up = if baselines { raw_quinn(raw_addr, &pin, size, true, None).await? } else { zero };
    let (c1, k1) = (cpu_secs(pid), cpu_secs(me));
    let raw_down = if baselines { raw_quinn(raw_addr, &pin, size, false, None).await? } else { zero };
    let (c2, k2) = (cpu_secs(pid), cpu_secs(me));
    let rawd_up = if baselines { raw_quinn(raw_addr, &pin, size, true, Some(&output)).await? } else { zero };
    let rawd_down = if baselines { raw_quinn(raw_addr, &pin, size, false, Some(&output)).await? } else { zero };
    let tcp_up = if baselines { tcp(tcp_addr, size, true).await? } else { zero };
    let tcp_down = if baselines { tcp(tcp_addr, size, false).await? } else { zero };

    let t = Instant::now();
    let (ob, root) = {
        let input = input.clone();
        tokio::task::spawn_blocking(move || relay::tree::outboard_of(std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&input)?), size)).await??
    };
    let hash_time = t.elapsed();
    // The relay's own peak from here on: the baselines' peak is reported apart.
    let baseline_peak_kib = vm_hwm_kib(pid);
    let hwm_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let c = Client::connect(&opts).await?;
    let (c3, k3) = (cpu_secs(pid), cpu_secs(me));
    let t = Instant::now();
    let id = c.upload_with(Arc::new(std::fs::File::open(&input)?), size, &ob, &root, "bench.bin", "application/octet-stream", Arc::new(Progress::default())).await?;
    let up = t.elapsed();
    let (c4, k4) = (cpu_secs(pid), cpu_secs(me));
    let up_peak_kib = vm_hwm_kib(pid);
    let t = Instant::now();
    c.download(&id, &output, Arc::new(Progress::default())).await?;
    let down = t.elapsed();
    let (c5, k5) = (cpu_secs(pid), cpu_secs(me));
    c.close().await;
    let peak_kib = vm_hwm_kib(pid);
    let same = std::fs::metadata(&output)?.len() == size;
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    let _ = std::fs::remove_file(&output);

    let gib = size as f64 / (1u64 << 30) as f64;
    println!("File relay benchmark: {gib:.2} GiB over loopback ({} cores)", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!();
    println!("| path | upload MiB/s | download MiB/s |");
    println!("|---|---|---|");
    println!("| raw quinn, 1 stream, no disk | {:.0} | {:.0} |", mib_s(size, raw_up), mib_s(size, raw_down));
    println!("| raw quinn, 1 stream, receiver writes to disk | {:.0} | {:.0} |", mib_s(size, rawd_up), mib_s(size, rawd_down));
    println!("| plain TCP, no TLS, no disk | {:.0} | {:.0} |", mib_s(size, tcp_up), mib_s(size, tcp_down));
    println!("| relay ({streams} streams, verified, disk) | {:.0} | {:.0} |", mib_s(size, up), mib_s(size, down));
    println!("| relay / raw quinn | {:.0} % | {:.0} % |", 100.0 * raw_up.as_secs_f64() / up.as_secs_f64(), 100.0 * raw_down.as_secs_f64() / down.as_secs_f64());
    println!("| relay / raw quinn with disk | {:.0} % | {:.0} % |", 100.0 * rawd_up.as_secs_f64() / up.as_secs_f64(), 100.0 * rawd_down.as_secs_f64() / down.as_secs_f64());
    println!("| relay / TCP | {:.0} % | {:.0} % |", 100.0 * tcp_up.as_secs_f64() / up.as_secs_f64(), 100.0 * tcp_down.as_secs_f64() / down.as_secs_f64());
    println!();
    println!("Server CPU seconds per GiB: raw quinn up {:.2} / down {:.2}; relay up {:.2} / down {:.2}.", (c1 - c0) / gib, (c2 - c1) / gib, (c4 - c3) / gib, (c5 - c4) / gib);
    println!("Client CPU seconds per GiB: raw quinn up {:.2} / down {:.2}; relay up {:.2} / down {:.2}.", (k1 - k0) / gib, (k2 - k1) / gib, (k4 - k3) / gib, (k5 - k4) / gib);
    if baselines {
        // On a machine whose cores are all busy (client and server share them), the
        // rate is about cores / CPU per GiB: this ratio is the least noisy comparison.
        let (ru, rd) = ((c1 - c0) + (k1 - k0), (c2 - c1) + (k2 - k1));
        let (lu, ld) = ((c4 - c3) + (k4 - k3), (c5 - c4) + (k5 - k4));
        println!("Client + server CPU per GiB, raw quinn / relay: up {:.0} %, down {:.0} %.", 100.0 * ru / lu, 100.0 * rd / ld);
    }
    println!("Client-side BLAKE3 outboard of the file before upload: {:.0} MiB/s ({:.2} s, not in the upload figure).", mib_s(size, hash_time), hash_time.as_secs_f64());
    println!(
        "Server process peak RSS (VmHWM): {:.1} MiB after start, {:.1} MiB after the baselines; {} {:.1} MiB after the relay upload, {:.1} MiB after the relay download. Output size ok: {same}.",
        idle_kib as f64 / 1024.0,
        baseline_peak_kib as f64 / 1024.0,
        if hwm_reset { "peak reset, then" } else { "(peak could not be reset)" },
        up_peak_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0
    );
    Ok(())
}

/// The raw baseline's client does not verify (the relay's pinning costs nothing per byte).
#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, _: &[u8], _: &rustls::pki_types::CertificateDer<'_>, _: &rustls::DigitallySignedStruct) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(&self, _: &[u8], _: &rustls::pki_types::CertificateDer<'_>, _: &rustls::DigitallySignedStruct) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms.supported_schemes()
    }
}
