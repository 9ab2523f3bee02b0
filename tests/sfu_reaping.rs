//! The media plane reaps what clients leave open, against a real `maxd`: ICE-TCP
//! connections that never send a check (or send garbage) are closed after their
//! first-frame timeout, connection caps per client address and in all hold, and a
//! `/rtc` WebSocket whose client vanished without a close (it answers no ping) is closed
//! and its participant removed after the resume window.

mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::{Maxd, metric};
use tokio_tungstenite::tungstenite::Message;

/// Connects from `local` (any 127/8 address is ours on loopback) to `to`.
fn connect_from(local: &str, to: SocketAddr) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
    let local: SocketAddr = format!("{local}:0").parse().unwrap();
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    bind(&fd, &local).unwrap_or_else(|e| panic!("bind {local}: {e}"));
    connect(&fd, &to).unwrap_or_else(|e| panic!("connect {to}: {e}"));
    let s = TcpStream::from(fd);
    s.set_nodelay(true).unwrap();
    s
}

/// Whether the server closed `s` within `within` (EOF or reset), reading what it sent.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}

/// Polls `/metrics` (the server's own state; there is no event to wait on) until
/// `name` reads `want`, or fails after `within`.
fn wait_metric(m: &Maxd, name: &str, want: f64, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let v = metric(&m.metrics(), name);
        if v == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{name} is {v}, not {want}, after {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ice_tcp_connections_that_send_nothing_or_garbage_are_closed() {
    let m = Maxd::start_with(r#"["sfu"]"#, &[("MAXD_SFU__TCP_FIRST_FRAME_TIMEOUT", "1s")]);
    let mut idle: Vec<TcpStream> = (0..50).map(|_| connect_from("127.0.0.1", m.media)).collect();
    let mut garbage = connect_from("127.0.0.1", m.media);
    std::io::Write::write_all(&mut garbage, &[0, 4, 0x80, 0x60, 0, 1]).unwrap();
    assert!(closed_within(&mut garbage, Duration::from_millis(900)), "a first frame that is not STUN closes at once");
    let start = Instant::now();
    for s in idle.iter_mut() {
        assert!(closed_within(s, Duration::from_secs(5)), "an idle ICE-TCP connection is closed");
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(4), "all 50 closed after the 1 s first-frame timeout: {took:?}");
    wait_metric(&m, "maxd_sfu_tcp_connections", 0.0, Duration::from_secs(5));
}

#[test]
fn ice_tcp_caps_per_client_address_and_in_all() {
    let m = Maxd::start_with(
        r#"["sfu"]"#,
        &[
            ("MAXD_SFU__TCP_FIRST_FRAME_TIMEOUT", "30s"),
            ("MAXD_SFU__TCP_MAX_CONNECTIONS", "6"),
            ("MAXD_SFU__TCP_MAX_CONNECTIONS_PER_IP", "4"),
        ],
    );
    let mut held: Vec<TcpStream> = (0..4).map(|_| connect_from("127.0.0.1", m.media)).collect();
    wait_metric(&m, "maxd_sfu_tcp_connections", 4.0, Duration::from_secs(5));
    let mut fifth = connect_from("127.0.0.1", m.media);
    assert!(closed_within(&mut fifth, Duration::from_secs(2)), "a fifth from one address is refused");
    // Another client address is still served.
    held.push(connect_from("127.0.0.2", m.media));
    held.push(connect_from("127.0.0.2", m.media));
    wait_metric(&m, "maxd_sfu_tcp_connections", 6.0, Duration::from_secs(5));
    let mut seventh = connect_from("127.0.0.3", m.media);
    assert!(closed_within(&mut seventh, Duration::from_secs(2)), "the seventh in all is refused");
    for s in held.iter_mut() {
        assert!(!closed_within(s, Duration::from_millis(100)), "admitted connections stay open");
    }
    let text = m.metrics();
    assert!(text.contains("maxd_sfu_tcp_refused_total{limit=\"per_ip\"} 1"), "{text}");
    assert!(text.contains("maxd_sfu_tcp_refused_total{limit=\"total\"} 1"), "{text}");
    assert!(m.log().contains("ICE-TCP connection refused"), "the refusal is logged");
    // (127.0.0.1 is also the server's own listen address, which its log names.)
    let log = m.log();
    assert!(!log.contains("127.0.0.2") && !log.contains("127.0.0.3"), "no client address in the log:\n{log}");
}

#[test]
fn a_vanished_rtc_client_is_closed_by_ping_and_leaves_after_the_window() {
    let m = Maxd::start_with(
        r#"["sfu"]"#,
        &[
            ("MAXD_SFU__WS_PING_INTERVAL", "1s"),
            ("MAXD_SFU__WS_IDLE_TIMEOUT", "2s"),
            ("MAXD_SFU__RESUME_WINDOW", "1s"),
            ("MAXD_SFU__EMPTY_ROOM_GRACE", "1s"),
        ],
    );
    let token = m.room_token("reap", "ghost");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = format!("ws://{}/rtc?access_token={token}", m.http);
    let ws = rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        ws.send(Message::Text(r#"{"type":"join"}"#.into())).await.unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap() {
                Some(Ok(Message::Text(t))) if t.contains("\"joined\"") => break,
                Some(Ok(_)) => continue,
                other => panic!("no joined: {other:?}"),
            }
        }
        ws
    });
    wait_metric(&m, "maxd_sfu_participants", 1.0, Duration::from_secs(5));
    // The client is gone without a goodbye: its socket stays open but it reads nothing
    // and answers no ping. Idle 2 s + ping 1 s + resume window 1 s + a second's sweep.
    let took = wait_metric(&m, "maxd_sfu_participants", 0.0, Duration::from_secs(10));
    eprintln!("participant removed {took:?} after it went silent");
    wait_metric(&m, "maxd_sfu_rooms", 0.0, Duration::from_secs(5));
    let text = m.metrics();
    assert!(text.contains("maxd_sfu_participants_left_total{reason=\"resume_window_expired\"} 1"), "{text}");
    drop(ws);
}

/// A media socket that never runs dry (a flood of datagrams from nobody it knows) must
/// not keep joins, leaves and timers waiting: the worker serves media first, but hands
/// the other work its turn after every batch.
#[test]
fn joins_and_leaves_are_served_while_the_media_socket_is_flooded() {
    let m = Maxd::start_with(r#"["sfu"]"#, &[("MAXD_SFU__RESUME_WINDOW", "1s"), ("MAXD_SFU__EMPTY_ROOM_GRACE", "1s")]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooders: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            let to = m.media;
            std::thread::spawn(move || {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                let junk = [0x80u8; 40];
                let mut sent = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if s.send_to(&junk, to).is_ok() {
                        sent += 1;
                    }
                }
                sent
            })
        })
        .collect();
    // Wait until the flood has reached the server.
    let start = Instant::now();
    while metric(&m.metrics(), "maxd_sfu_dropped_packets_total") < 10_000.0 {
        // (The drop counter moves to /metrics on the engine's one-second timer: a worker
        // that starves its timers never shows it.)
        assert!(start.elapsed() < Duration::from_secs(10), "the flood never showed in /metrics");
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = m.room_token("flood", "alice");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = format!("ws://{}/rtc?access_token={token}", m.http);
    let joined_in = rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let t = Instant::now();
        ws.send(Message::Text(r#"{"type":"join"}"#.into())).await.unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Text(txt)))) if txt.contains("\"joined\"") => break,
                Ok(Some(Ok(_))) => continue,
                other => panic!("no joined within 10 s under the flood: {other:?}"),
            }
        }
        let joined_in = t.elapsed();
        ws.close(None).await.unwrap();
        joined_in
    });
    // The closed session ends after the resume window (1 s), the room after its grace.
    let gone = wait_metric(&m, "maxd_sfu_participants_left_total", 1.0, Duration::from_secs(10));
    wait_metric(&m, "maxd_sfu_rooms", 0.0, Duration::from_secs(10));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent: u64 = flooders.into_iter().map(|f| f.join().unwrap()).sum();
    eprintln!("joined in {joined_in:?}, left {gone:?} after closing, under {sent} junk datagrams");
    assert!(gone < Duration::from_secs(4), "the closed session took {gone:?} to end (resume window 1 s)");
    assert!(joined_in < Duration::from_secs(2), "joined took {joined_in:?} under the flood");
}
