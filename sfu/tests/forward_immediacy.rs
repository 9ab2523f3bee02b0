//! A forwarded packet leaves the engine while the incoming datagram is handled, not on
//! a later timer turn (str0m releases queued RTP only on time input).

mod netsim;
mod harness;
use std::time::Duration;
use harness::{World, server, NetIo};
use netsim::Link;
use str0m::net::Protocol;
#[test]
fn forwarded_packets_leave_within_handle_datagram() {
    let mut w = World::new(1, Link { latency: Duration::from_millis(1), jitter: Duration::ZERO, loss: 0.0 });
    let p = w.join("publisher");
    w.publish(p, false);
    w.join("s0");
    w.run(3_000, false, |_, _| {});
    let pkts = w.capture_audio(p, 10);
    let from = w.clients[p].pub_addr;
    let before = w.net.sent;
    let f0 = w.engine.counters.rtp_forwarded;
    for (a, d) in &pkts {
        assert_eq!(*a, from);
        let now = w.now;
        let mut io = NetIo { net: &mut w.net, now };
        w.engine.handle_datagram(now, Protocol::Udp, from, server(), d, &mut io);
    }
    let sent = w.net.sent - before;
    assert_eq!(w.engine.counters.rtp_forwarded - f0, 10);
    assert!(sent >= 10, "forwarded packets leave within handle_datagram: {sent}");
}
