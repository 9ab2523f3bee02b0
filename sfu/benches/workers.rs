//! Aggregate forwarding throughput of 1 and 2 media workers, measured in one run: each
//! worker is an engine on a thread of its own with a room of one audio publisher and N
//! subscribers, fed that publisher's prepared real SRTP datagrams as fast as it takes
//! them (no sockets, no simulator competing for the cores). The figure is the forwarded
//! packets (datagrams written) of all workers divided by the wall-clock time from a
//! common start until the last worker is done.
//!
//! `cargo bench -p maxd-sfu --bench workers [-- PACKETS SUBSCRIBERS]` (defaults: 40000
//! datagrams per worker, 10 subscribers). The machine's other load counts: run it on an
//! otherwise idle machine with at least two cores.

#[path = "../tests/harness/mod.rs"]
mod harness;
#[path = "../tests/netsim/mod.rs"]
mod netsim;

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use harness::{World, server};
use netsim::Link;
use sfu::engine::Io;
use str0m::net::Protocol;

/// Discards datagrams (counting them) - the cost of a socket send is not the engine's.
struct NullIo {
    sent: u64,
}

impl Io for NullIo {
    fn transmit(&mut self, _p: Protocol, _s: SocketAddr, _d: SocketAddr, _data: &[u8]) -> bool {
        self.sent += 1;
        true
    }
}

/// A connected room (one audio publisher, `n` subscribers) and `packets` of the
/// publisher's SRTP datagrams, not yet delivered.
fn prepare(seed: u64, n: usize, packets: usize) -> (World, SocketAddr, Vec<Vec<u8>>) {
    let mut w = World::new(
        seed,
        Link {
            latency: Duration::from_millis(1),
            jitter: Duration::ZERO,
            loss: 0.0,
        },
    );
    let p = w.join("publisher");
    w.publish(p, false);
    for k in 0..n {
        w.join(&format!("s{k}"));
    }
    w.run(6_000, false, |_, _| {});
    for (i, c) in w.clients.iter().enumerate().skip(1) {
        let got: usize = c.received.values().map(|r| r.packets.len()).sum();
        assert!(
            got > 5,
            "subscriber {i} receives before measuring; got {got}"
        );
    }
    let from = w.clients[p].pub_addr;
    let pkts = w
        .capture_audio(p, packets)
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    (w, from, pkts)
}

/// Feeds one worker's datagrams to its engine; returns datagrams written and the time.
fn drive(w: &mut World, from: SocketAddr, pkts: &[Vec<u8>], start: &Barrier) -> (u64, Duration) {
    let mut io = NullIo { sent: 0 };
    let base = w.now;
    start.wait();
    let t = Instant::now();
    for (i, d) in pkts.iter().enumerate() {
        let now = base + t.elapsed();
        w.engine
            .handle_datagram(now, Protocol::Udp, from, server(), d, &mut io);
        if i % 64 == 63 {
            w.engine.handle_timeout(now, &mut io);
        }
    }
    (io.sent, t.elapsed())
}

/// Runs `workers` engines at once; returns (forwarded packets/s in all, per worker).
fn run(workers: usize, n: usize, packets: usize) -> (f64, Vec<f64>) {
    let prepared: Vec<_> = (0..workers)
        .map(|k| prepare(1 + k as u64, n, packets))
        .collect();
    let barrier = Arc::new(Barrier::new(workers + 1));
    let threads: Vec<_> = prepared
        .into_iter()
        .enumerate()
        .map(|(k, (mut w, from, pkts))| {
            let b = barrier.clone();
            std::thread::Builder::new()
                .name(format!("bench-worker-{k}"))
                .spawn(move || drive(&mut w, from, &pkts, &b))
                .expect("thread")
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    let results: Vec<(u64, Duration)> = threads
        .into_iter()
        .map(|h| h.join().expect("worker"))
        .collect();
    let wall = t.elapsed();
    let total: u64 = results.iter().map(|r| r.0).sum();
    for (sent, _) in &results {
        assert!(
            *sent as f64 >= 0.99 * (packets * n) as f64,
            "sent {sent} for {packets} packets x {n}"
        );
    }
    let per = results
        .iter()
        .map(|(s, d)| *s as f64 / d.as_secs_f64())
        .collect();
    (total as f64 / wall.as_secs_f64(), per)
}

fn main() {
    // `cargo bench` passes `--bench`; numbers are ours.
    let nums: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let packets = nums.first().copied().unwrap_or(40_000);
    let n = nums.get(1).copied().unwrap_or(10);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "forwarding {packets} SRTP audio datagrams per worker to {n} subscribers each; {cores} cores"
    );
    let mut figures = Vec::new();
    for workers in [1usize, 2] {
        let (agg, per) = run(workers, n, packets);
        let per: Vec<String> = per.iter().map(|p| format!("{:.0}k", p / 1e3)).collect();
        println!(
            "workers={workers}: {:.0}k forwarded packets/s in all (per worker: {})",
            agg / 1e3,
            per.join(", ")
        );
        figures.push(agg);
    }
    println!("scaling 1 -> 2 workers: {:.2}x", figures[1] / figures[0]);
}
