//! ICE-TCP (RFC 6544) connections: RFC 4571 framing (16-bit length, then the datagram),
//! and what keeps them from piling up.
//!
//! - A connection must send a complete STUN message as its first frame within
//!   `tcp_first_frame_timeout`, and some frame at least every `tcp_idle_timeout` after
//!   (ICE consent checks come every few seconds, media far more often).
//! - At most `tcp_max_connections` in all and `tcp_max_connections_per_ip` from one
//!   address (IPv6: one /64); a refused connection is closed at once and counted.
//! - An accept error (out of descriptors) pauses accepting instead of spinning.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::engine::is_stun;

/// Largest frame accepted (a datagram).
pub const MAX_FRAME: usize = 2048;
/// How long accepting pauses after an accept error (EMFILE, ENFILE, ENOMEM).
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(250);

/// What the connection tasks tell the media worker.
pub enum TcpEvent {
    Opened(SocketAddr, mpsc::Sender<Vec<u8>>),
    Data(SocketAddr, Vec<u8>),
    Closed(SocketAddr),
}

/// The limits of the ICE-TCP listener, from [`crate::Config`].
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    pub max_connections: usize,
    pub max_per_ip: usize,
    pub first_frame: Duration,
    pub idle: Duration,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerIp,
}

/// Counts open connections, in all and per client address (IPv6 per /64).
#[derive(Debug, Default)]
pub struct Admission {
    open: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// When a refusal was last logged (one line per 10 s at most).
    logged: Option<Instant>,
    pub refused_total: u64,
    pub refused_per_ip: u64,
}

impl Admission {
    /// Admits a connection from `peer`, or says which limit refuses it.
    pub fn admit(&mut self, limits: &TcpLimits, peer: SocketAddr, now: Instant) -> Result<(), Refused> {
        let key = common::netaddr::limit_key(peer.ip());
        let refused = if self.open >= limits.max_connections {
            self.refused_total += 1;
            Some(Refused::Total)
        } else if self.per_ip.get(&key).copied().unwrap_or(0) >= limits.max_per_ip {
            self.refused_per_ip += 1;
            Some(Refused::PerIp)
        } else {
            None
        };
        if let Some(r) = refused {
            if self.logged.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(10)) {
                self.logged = Some(now);
                tracing::warn!(
                    open = self.open,
                    limit = if r == Refused::Total { limits.max_connections } else { limits.max_per_ip },
                    "ICE-TCP connection refused: {} (sfu.tcp_max_connections{})",
                    if r == Refused::Total { "the listener is full" } else { "too many from one client address" },
                    if r == Refused::Total { "" } else { "_per_ip" },
                );
            }
            return Err(r);
        }
        self.open += 1;
        *self.per_ip.entry(key).or_default() += 1;
        Ok(())
    }

    /// A connection admitted from `peer` closed.
    pub fn closed(&mut self, peer: SocketAddr) {
        let key = common::netaddr::limit_key(peer.ip());
        self.open = self.open.saturating_sub(1);
        if let Some(n) = self.per_ip.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&key);
            }
        }
    }

    pub fn open(&self) -> usize {
        self.open
    }
}

/// Reads one frame into a fresh buffer; `None` on close, a bad length or an error.
async fn read_frame<R: AsyncReadExt + Unpin>(rd: &mut R) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    rd.read_exact(&mut len).await.ok()?;
    let n = u16::from_be_bytes(len) as usize;
    if n == 0 || n > MAX_FRAME {
        return None;
    }
    let mut d = vec![0u8; n];
    rd.read_exact(&mut d).await.ok()?;
    Some(d)
}

/// Serves one admitted connection until it closes, breaks a rule or times out. Its
/// first frame must be STUN naming a known ufrag: `route` gives the events channel of
/// the media worker that owns it, which then gets every frame, and
/// [`TcpEvent::Closed`] at the end. The caller releases the admission when this returns.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    limits: TcpLimits,
    route: impl FnOnce(&[u8]) -> Option<mpsc::Sender<TcpEvent>>,
) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    // The first frame must be STUN (an ICE connectivity check), and come soon.
    let first = match tokio::time::timeout(limits.first_frame, read_frame(&mut rd)).await {
        Ok(Some(d)) if is_stun(&d) => d,
        _ => return,
    };
    let Some(events) = route(&first) else { return };
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(1024);
    if events.send(TcpEvent::Opened(peer, out_tx)).await.is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(d) = out_rx.recv().await {
            let len = (d.len().min(u16::MAX as usize) as u16).to_be_bytes();
            if wr.write_all(&len).await.is_err() || wr.write_all(&d).await.is_err() {
                break;
            }
        }
    });
    let mut next = Some(first);
    while let Some(d) = next.take() {
        if events.send(TcpEvent::Data(peer, d)).await.is_err() {
            break;
        }
        next = tokio::time::timeout(limits.idle, read_frame(&mut rd)).await.ok().flatten();
    }
    writer.abort();
    let _ = events.send(TcpEvent::Closed(peer)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> TcpLimits {
        TcpLimits { max_connections: 3, max_per_ip: 2, first_frame: Duration::from_secs(5), idle: Duration::from_secs(30) }
    }

    #[test]
    fn caps_in_all_and_per_client() {
        let mut a = Admission::default();
        let now = Instant::now();
        let l = limits();
        let v6 = |s: &str| -> SocketAddr { format!("[{s}]:1000").parse().unwrap() };
        assert!(a.admit(&l, v6("2001:db8::1"), now).is_ok());
        // Another address in the same /64 counts as the same client.
        assert!(a.admit(&l, v6("2001:db8::ffff"), now).is_ok());
        assert_eq!(a.admit(&l, v6("2001:db8::2"), now), Err(Refused::PerIp));
        assert!(a.admit(&l, v6("2001:db8:0:1::1"), now).is_ok());
        assert_eq!(a.admit(&l, "192.0.2.1:5".parse().unwrap(), now), Err(Refused::Total));
        a.closed(v6("2001:db8::1"));
        assert!(a.admit(&l, v6("2001:db8::3"), now).is_ok());
        assert_eq!(a.open(), 3);
        assert_eq!((a.refused_per_ip, a.refused_total), (1, 1));
    }
}
