//! Forwarding throughput with real SRTP: one publisher's audio to N subscribers through
//! the engine (decrypt once, rewrite and encrypt N times), no sockets. The str0m
//! clients are set up and connected on the virtual network first; the timed part is
//! only `Engine::handle_datagram` with the publisher's real SRTP datagrams.
//!
//! `cargo bench -p maxd-sfu --bench forward`: criterion's "elements/s" is forwarded
//! packets per second on one core.

#[path = "../tests/netsim/mod.rs"]
mod netsim;
#[path = "../tests/harness/mod.rs"]
mod harness;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use harness::{World, server};
use netsim::Link;
use sfu::engine::Io;
use str0m::net::Protocol;

/// Discards datagrams (counting them) - the cost of a socket send is not the engine's.
struct NullIo {
    sent: u64,
    bytes: u64,
}

impl Io for NullIo {
    fn transmit(&mut self, _p: Protocol, _s: SocketAddr, _d: SocketAddr, data: &[u8]) -> bool {
        self.sent += 1;
        self.bytes += data.len() as u64;
        true
    }
}

fn setup(n: usize) -> (World, usize) {
    let mut w = World::new(1, Link { latency: Duration::from_millis(1), jitter: Duration::ZERO, loss: 0.0 });
    let p = w.join("publisher");
    w.publish(p, false);
    for k in 0..n {
        w.join(&format!("s{k}"));
    }
    w.run(6_000, false, |_, _| {});
    for (i, c) in w.clients.iter().enumerate().skip(1) {
        let got: usize = c.received.values().map(|r| r.packets.len()).sum();
        let types: Vec<String> = c.msgs.iter().map(|m| format!("{m:?}").chars().take(40).collect()).collect();
        assert!(got > 5, "subscriber {i} receives before measuring; got {got}; messages {types:?}");
    }
    (w, p)
}

fn forward(c: &mut Criterion) {
    let mut g = c.benchmark_group("forward_audio_srtp");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for n in [1usize, 10, 100] {
        let (mut w, p) = setup(n);
        let mut io = NullIo { sent: 0, bytes: 0 };
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_custom(|iters| {
                // Keep ICE consent and RTCP alive between samples.
                w.run(60, false, |_, _| {});
                let pkts = w.capture_audio(p, iters as usize);
                assert!(pkts.len() as u64 >= iters, "captured {} datagrams for {iters} packets", pkts.len());
                let from = w.clients[p].pub_addr;
                let before = io.sent;
                let base = w.now;
                let start = Instant::now();
                for (i, (_, d)) in pkts.iter().enumerate() {
                    let now = base + start.elapsed();
                    w.engine.handle_datagram(now, Protocol::Udp, from, server(), d, &mut io);
                    if i % 64 == 63 {
                        w.engine.handle_timeout(now, &mut io);
                    }
                }
                let took = start.elapsed();
                w.now = base + took;
                let forwarded = io.sent - before;
                assert!(
                    forwarded as f64 >= 0.99 * (iters as usize * n) as f64,
                    "sent {forwarded} datagrams for {iters} packets x {n} subscribers"
                );
                took
            })
        });
        eprintln!("N={n}: {} datagrams written, {} bytes", io.sent, io.bytes);
    }
    g.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
