//! Loopback fan-out capacity: one publisher's audio+video to N subscribers through a
//! running maxd; prints per-run loss and the server's receive-to-send latency from
//! `/metrics`. Tokens come from `maxd token` run with the caller's environment, so run
//! it where (and with the same MAXD_* settings as) the server.
//!
//! ```text
//! cargo run --release -p maxd-testkit --example fanout -- http://127.0.0.1:8080 target/release/maxd 10 20 40
//! ```

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use testkit::{Client, ClientOptions};

fn token(maxd: &str, room: &str, identity: &str) -> Result<String> {
    let out = Command::new(maxd).args(["token", "--room", room, "--identity", identity]).output()?;
    ensure!(out.status.success(), "maxd token: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// The text of the server's `/metrics`.
fn metrics(base: &str) -> Result<String> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// (count, sum, cumulative buckets (upper bound, count)) of a Prometheus histogram.
type Histogram = (f64, f64, Vec<(f64, f64)>);

/// The forward-latency histogram.
fn histogram(base: &str) -> Result<Histogram> {
    let body = metrics(base)?;
    let (mut count, mut sum, mut buckets) = (0.0, 0.0, Vec::new());
    for l in body.lines() {
        let v = |l: &str| l.rsplit(' ').next().and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
        if l.starts_with("maxd_sfu_forward_latency_seconds_bucket{le=\"") {
            let le = l.split('"').nth(1).unwrap_or("+Inf");
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse()? };
            buckets.push((le, v(l)));
        } else if l.starts_with("maxd_sfu_forward_latency_seconds_count") {
            count = v(l);
        } else if l.starts_with("maxd_sfu_forward_latency_seconds_sum") {
            sum = v(l);
        }
    }
    Ok((count, sum, buckets))
}

fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let total = after.last().map(|b| b.1).unwrap_or(0.0) - before.last().map(|b| b.1).unwrap_or(0.0);
    for (i, (le, c)) in after.iter().enumerate() {
        let prev = before.get(i).map(|b| b.1).unwrap_or(0.0);
        if c - prev >= q * total {
            return *le;
        }
    }
    f64::INFINITY
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let base = args.next().context("usage: fanout BASE_URL MAXD_BIN N...")?;
    let maxd = args.next().context("usage: fanout BASE_URL MAXD_BIN N...")?;
    let ns: Vec<usize> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    println!("| subscribers | loss (audio+video) | forward latency p50 | p99 | server CPU |");
    println!("|---|---|---|---|---|");
    for (run, n) in ns.into_iter().enumerate() {
        let room = format!("fanout{run}");
        let publisher = Client::connect(&base, &token(&maxd, &room, "pub")?).await?;
        let opts = ClientOptions { auto_subscribe: true, ..Default::default() };
        let mut subs = Vec::new();
        for i in 0..n {
            subs.push(Client::connect_with(&base, &token(&maxd, &room, &format!("s{i}"))?, opts.clone()).await?);
        }
        publisher.publish_av().await?;
        let pid = publisher.participant_id();
        for s in &subs {
            s.wait_av_from_all(std::slice::from_ref(&pid), 10, Duration::from_secs(30)).await?;
        }
        let got = |s: &Client| s.stats().iter().filter(|t| t.participant_id == pid).map(|t| t.packets).sum::<u64>();
        let sent = |p: &Client| {
            let st = p.send_stats();
            st.audio_packets + st.video_frames
        };
        let (_, _, h0) = histogram(&base)?;
        let cpu0 = cpu_secs(&base);
        let r0: Vec<u64> = subs.iter().map(got).collect();
        let s0 = sent(&publisher);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let s1 = sent(&publisher);
        // Let packets in flight land before counting.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r1: Vec<u64> = subs.iter().map(got).collect();
        let (_, _, h1) = histogram(&base)?;
        let cpu = (cpu_secs(&base) - cpu0) / t0.elapsed().as_secs_f64();
        let expect = ((s1 - s0) * n as u64) as f64;
        let recv: u64 = r1.iter().zip(&r0).map(|(a, b)| a - b).sum();
        let loss = (1.0 - recv as f64 / expect).max(0.0);
        println!(
            "| {n} | {:.3} % | {} | {} | {:.0} % |",
            loss * 100.0,
            fmt(quantile(&h0, &h1, 0.5)),
            fmt(quantile(&h0, &h1, 0.99)),
            cpu * 100.0
        );
        publisher.close().await;
        for s in subs {
            s.close().await;
        }
    }
    Ok(())
}

fn fmt(le: f64) -> String {
    if le.is_infinite() { "> 50 ms".into() } else { format!("<= {} us", (le * 1e6).round()) }
}

/// Server process CPU seconds from `maxd_process_cpu_seconds_total`.
fn cpu_secs(base: &str) -> f64 {
    let body = metrics(base).unwrap_or_default();
    body.lines()
        .find(|l| l.starts_with("maxd_process_cpu_seconds_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}
