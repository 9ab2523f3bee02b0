//! The HTTP listener under abuse, on the real `maxd` with real sockets: slowloris and
//! idle connections are reaped, one client address cannot take every connection, a
//! flood under a low descriptor limit leaves the port answering without spinning,
//! the open-file limit is raised, and WebSockets are not cut by the idle timeout.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{Maxd, metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection to `to` from the loopback address `src` (Linux routes all of 127/8).
async fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{src}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// One keep-alive GET on `s`: (status, body). Errors if the server closes instead.
async fn get(s: &mut TcpStream, path: &str) -> std::io::Result<(u16, String)> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: maxd\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return Ok((status, body.to_string()));
            }
        }
    }
}

/// Reads until the server closes `s` (EOF or reset); what it sent, and when.
async fn until_closed(s: &mut TcpStream, limit: Duration) -> (String, Instant) {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let read_all = async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read_all)
        .await
        .expect("the server did not close the connection");
    (String::from_utf8_lossy(&got).into_owned(), Instant::now())
}

async fn metrics_from(src: &str, m: &Maxd) -> String {
    let mut s = connect_from(src, m.http).await;
    get(&mut s, "/metrics").await.unwrap().1
}

fn labelled(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Only maxd's own addresses may appear in its log (its listening lines, the URL it
/// says to open), no client's.
fn assert_no_client_address(log: &str, m: &Maxd) {
    let own = [m.http.to_string(), m.media.to_string(), m.relay.to_string()];
    for line in log.lines().filter(|l| !l.contains(" listening")) {
        let rest = own.iter().fold(line.to_string(), |l, a| l.replace(a.as_str(), "<maxd>"));
        assert!(
            !rest.contains("127.0.0."),
            "a client address in the log: {line}"
        );
    }
}

/// CPU time maxd has used (user + system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); `after_comm` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[tokio::test]
async fn a_slowloris_head_and_a_silent_connection_are_closed_at_the_header_timeout() {
    let m = Maxd::start_with(
        r#"["relay"]"#,
        &[
            ("MAXD_HTTP__HEADER_READ_TIMEOUT", "1s"),
            ("MAXD_HTTP__IDLE_TIMEOUT", "30s"),
        ],
    );
    let t0 = Instant::now();
    let mut slow = connect_from("127.0.0.1", m.http).await;
    let mut silent = connect_from("127.0.0.1", m.http).await;
    // A head that never ends, one byte every 50 ms (the load, not a synchronisation).
    let (mut rd, mut wr) = slow.split();
    let trickle = async {
        wr.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        let mut sent = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        for b in b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter().cycle() {
            tick.tick().await;
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    };
    let closed = async {
        let mut buf = [0u8; 256];
        let r = tokio::time::timeout(Duration::from_secs(5), rd.read(&mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "slowloris connection not closed: {r:?}"
        );
        t0.elapsed()
    };
    let (sent, slow_closed) = tokio::select! {
        t = closed => (None, t),
        n = trickle => (Some(n), t0.elapsed()),
    };
    assert!(
        sent.is_none(),
        "the server stopped the trickle by a write error first"
    );
    assert!(
        slow_closed >= Duration::from_millis(900) && slow_closed < Duration::from_secs(3),
        "slowloris closed after {slow_closed:?}"
    );
    let (_, at) = until_closed(&mut silent, Duration::from_secs(5)).await;
    let silent_closed = at - t0;
    assert!(
        silent_closed >= Duration::from_millis(900) && silent_closed < Duration::from_secs(3),
        "silent closed after {silent_closed:?}"
    );
    let text = metrics_from("127.0.0.2", &m).await;
    assert_eq!(
        labelled(
            &text,
            r#"maxd_http_connections_timed_out_total{phase="header"}"#
        ),
        2.0,
        "{text}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let m = Maxd::start_with(
        r#"["relay"]"#,
        &[
            ("MAXD_HTTP__HEADER_READ_TIMEOUT", "5s"),
            ("MAXD_HTTP__IDLE_TIMEOUT", "1s"),
        ],
    );
    let mut s = connect_from("127.0.0.1", m.http).await;
    assert_eq!(get(&mut s, "/healthz").await.unwrap().0, 200);
    // Kept alive: a second request on the same connection is served.
    assert_eq!(get(&mut s, "/healthz").await.unwrap().0, 200);
    let idle_from = Instant::now();
    let (_, at) = until_closed(&mut s, Duration::from_secs(5)).await;
    let idle = at - idle_from;
    // The idle timeout (1 s), not the header timeout (5 s).
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(3),
        "idle connection closed after {idle:?}"
    );
    let text = metrics_from("127.0.0.2", &m).await;
    assert_eq!(
        labelled(
            &text,
            r#"maxd_http_connections_timed_out_total{phase="idle"}"#
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn the_per_ip_cap_refuses_one_address_and_serves_another() {
    let m = Maxd::start_with(
        r#"["relay"]"#,
        &[("MAXD_HTTP__MAX_CONNECTIONS_PER_IP", "3")],
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from("127.0.0.1", m.http).await;
        assert_eq!(get(&mut s, "/healthz").await.unwrap().0, 200);
        held.push(s);
    }
    let mut fourth = connect_from("127.0.0.1", m.http).await;
    let (said, _) = until_closed(&mut fourth, Duration::from_secs(5)).await;
    assert!(
        said.starts_with("HTTP/1.1 503") && said.contains(r#""error":"too_many_connections""#),
        "{said:?}"
    );
    let mut other = connect_from("127.0.0.2", m.http).await;
    assert_eq!(get(&mut other, "/healthz").await.unwrap().0, 200);
    // A closed connection gives its slot back: 127.0.0.1 is served again once the
    // server has seen the close (each try waits for the server's answer).
    drop(held.pop());
    let mut served = false;
    for _ in 0..100 {
        let mut s = connect_from("127.0.0.1", m.http).await;
        if let Ok((200, _)) = get(&mut s, "/healthz").await {
            served = true;
            break;
        }
    }
    assert!(
        served,
        "127.0.0.1 never served again after closing a connection"
    );
    let text = get(&mut other, "/metrics").await.unwrap().1;
    assert!(
        labelled(
            &text,
            r#"maxd_http_connections_refused_total{reason="per_ip"}"#
        ) >= 1.0,
        "{text}"
    );
    // No client address in the log, whatever was refused.
    assert_no_client_address(&m.log(), &m);
}

/// Under `prlimit --nofile=256:256`: one address flooding gets its 64 connections
/// and no more, others are served; flooding from several addresses fills
/// `max_connections` (192 = 3/4 of 256), which is logged without an address and
/// answered with 503s, never by running out of descriptors; maxd does not spin; and
/// the port serves again once the flood goes.
#[tokio::test]
async fn a_flood_under_a_low_descriptor_limit_leaves_the_port_answering_without_spinning() {
    let m = Maxd::start_under(
        &["prlimit", "--nofile=256:256", "--"],
        r#"["sfu","signalling","relay"]"#,
        &[("MAXD_HTTP__MAX_CONNECTIONS_PER_IP", "64")],
    );
    let log = m.log();
    assert!(log.contains("max_connections=192"), "{log}");
    let cpu0 = cpu_ticks(m.pid());

    let mut flood = Vec::new();
    for _ in 0..300 {
        flood.push(connect_from("127.0.0.1", m.http).await);
    }
    // Every one of the 300 was accepted and judged once the counter says so.
    let mut text = String::new();
    for _ in 0..200 {
        text = metrics_from("127.0.0.2", &m).await;
        if metric(&text, "maxd_http_connections_accepted_total") >= 301.0 {
            break;
        }
    }
    assert_eq!(
        labelled(
            &text,
            r#"maxd_http_connections_refused_total{reason="per_ip"}"#
        ),
        236.0,
        "{text}"
    );
    let mut other = connect_from("127.0.0.2", m.http).await;
    assert_eq!(get(&mut other, "/healthz").await.unwrap().0, 200);
    drop(other);

    // Two more addresses fill the rest: 64 * 3 = 192.
    for src in ["127.0.0.3", "127.0.0.4"] {
        for _ in 0..64 {
            flood.push(connect_from(src, m.http).await);
        }
    }
    // Now everyone is refused with a 503, until the flood goes.
    let mut refused = None;
    for _ in 0..200 {
        let mut s = connect_from("127.0.0.5", m.http).await;
        match get(&mut s, "/healthz").await {
            Ok((503, body)) => {
                refused = Some(body);
                break;
            }
            Ok((200, _)) => continue, // the server has not taken in the last floods yet
            // Closed before the answer could be read (a reset can overtake it): again.
            Err(_) => continue,
            Ok(other) => panic!("{other:?}"),
        }
    }
    let body = refused.expect("max_connections never reached");
    assert!(body.contains("too_many_connections"), "{body}");
    // Held for a second: a spinning accept loop would burn about a core meanwhile.
    let held_from = cpu_ticks(m.pid());
    tokio::time::sleep(Duration::from_secs(1)).await; // the measurement window itself
    let held_ticks = cpu_ticks(m.pid()) - held_from;
    assert!(
        held_ticks < 20,
        "maxd used {held_ticks} ticks in 1 s while holding the flood"
    );

    let log = m.log();
    let line = log
        .lines()
        .find(|l| l.contains("http connection limit reached"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("max_connections=192"), "{line}");
    assert_no_client_address(&log, &m);
    assert!(!log.contains("Too many open files"), "{log}");

    drop(flood);
    let mut served = false;
    for _ in 0..200 {
        let mut s = connect_from("127.0.0.5", m.http).await;
        if let Ok((200, _)) = get(&mut s, "/healthz").await {
            served = true;
            break;
        }
    }
    assert!(
        served,
        "the port did not serve again after the flood closed"
    );
    let total = cpu_ticks(m.pid()) - cpu0;
    eprintln!("maxd CPU during the whole flood test: {total} ticks");
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_limit() {
    let m = Maxd::start_under(&["prlimit", "--nofile=512:4096", "--"], r#"["relay"]"#, &[]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", m.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums, ["4096", "4096"], "{line}");
    let log = m.log();
    let raised = log
        .lines()
        .find(|l| l.contains("open-file limit raised"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        raised.contains("from=512") && raised.contains("to=4096"),
        "{raised}"
    );
}

/// A WebSocket lives past `idle_timeout` and `header_read_timeout`: once upgraded,
/// the listener leaves it to its plane.
#[tokio::test]
async fn an_upgraded_websocket_is_not_cut_by_the_listener_timeouts() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let m = Maxd::start_with(
        r#"["sfu"]"#,
        &[
            ("MAXD_HTTP__HEADER_READ_TIMEOUT", "1s"),
            ("MAXD_HTTP__IDLE_TIMEOUT", "1s"),
        ],
    );
    let token = m.room_token("r1", "alice");
    let url = format!("ws://{}/rtc?access_token={token}", m.http);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    // Quiet for 2.5 s: longer than both listener timeouts (the thing under test).
    let quiet = tokio::time::timeout(Duration::from_millis(2500), ws.next()).await;
    assert!(
        quiet.is_err(),
        "the server sent or closed during the quiet time: {quiet:?}"
    );
    ws.send(Message::Ping(b"still there?".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert!(matches!(pong, Some(Ok(Message::Pong(_)))), "{pong:?}");
}

/// Two responses written back to back on one connection (two pipelined requests)
/// arrive together: with Nagle on, the second waited for the client's delayed ACK of
/// the first (about 40 ms here: 43.7 ms p50 before TCP_NODELAY, under 0.1 ms after).
#[tokio::test]
async fn back_to_back_responses_do_not_wait_for_a_delayed_ack() {
    let m = Maxd::start(r#"["relay"]"#);
    let mut s = connect_from("127.0.0.1", m.http).await;
    let req = b"GET /healthz HTTP/1.1\r\nhost: maxd\r\n\r\n";
    let mut times = Vec::new();
    let mut buf = vec![0u8; 65536];
    for _ in 0..20 {
        // A single request first, so the connection is past TCP's quick-ACK start.
        assert_eq!(get(&mut s, "/healthz").await.unwrap().0, 200);
        let t = Instant::now();
        s.write_all(&[&req[..], &req[..]].concat()).await.unwrap();
        let mut got = Vec::new();
        while got.windows(12).filter(|w| w == b"HTTP/1.1 200").count() < 2
            || !got.ends_with(b"ok\n")
        {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed");
            got.extend_from_slice(&buf[..n]);
        }
        times.push(t.elapsed());
    }
    times.sort();
    let p50 = times[times.len() / 2];
    assert!(
        p50 < Duration::from_millis(20),
        "two pipelined answers took {p50:?} (p50): Nagle is on"
    );
}
