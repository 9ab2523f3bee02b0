//! A UDP proxy for one client in front of `maxd`'s media port, a network element that
//! counts what passes by kind (RFC 7983 demultiplexing: STUN, DTLS, RTP/RTCP) and
//! direction, so that a test can prove what a peer did or did not send.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// What a datagram is, by its first byte (RFC 7983).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stun,
    Dtls,
    /// SRTP or SRTCP.
    Media,
    Other,
}

pub fn kind_of(d: &[u8]) -> Kind {
    match d.first() {
        Some(0..=3) => Kind::Stun,
        Some(20..=63) => Kind::Dtls,
        Some(128..=191) => Kind::Media,
        _ => Kind::Other,
    }
}

/// Counts of one direction.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub stun: u64,
    pub dtls: u64,
    pub media: u64,
    pub other: u64,
    pub last_stun: Option<Instant>,
    pub last_media: Option<Instant>,
}

impl Counts {
    fn count(&mut self, d: &[u8], now: Instant) {
        match kind_of(d) {
            Kind::Stun => {
                self.stun += 1;
                self.last_stun = Some(now);
            }
            Kind::Dtls => self.dtls += 1,
            Kind::Media => {
                self.media += 1;
                self.last_media = Some(now);
            }
            Kind::Other => self.other += 1,
        }
    }
}

/// Both directions: from the client to the server, and back.
#[derive(Debug, Clone, Copy, Default)]
pub struct Traffic {
    pub from_client: Counts,
    pub from_server: Counts,
}

/// An ICMP error reported on a later receive (the peer's port was not open yet).
fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
    )
}

pub struct UdpProxy {
    /// Where the client sends (in place of the server's media address).
    pub addr: SocketAddr,
    traffic: Arc<Mutex<Traffic>>,
    tasks: [JoinHandle<()>; 2],
}

impl UdpProxy {
    /// Listens on a free loopback port and relays to `server` from a second socket (so the
    /// server sees that socket as the client's address). The first source address to
    /// send is the client; datagrams from anyone else are ignored.
    pub async fn start(server: SocketAddr) -> UdpProxy {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind proxy"));
        let back = Arc::new(
            UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind proxy upstream"),
        );
        back.connect(server).await.expect("connect upstream");
        let addr = front.local_addr().unwrap();
        let traffic = Arc::new(Mutex::new(Traffic::default()));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let up = {
            let (front, back, traffic, client) =
                (front.clone(), back.clone(), traffic.clone(), client.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let (n, from) = match front.recv_from(&mut buf).await {
                        Ok(r) => r,
                        Err(e) if transient(&e) => continue,
                        Err(_) => return,
                    };
                    if *client.lock().unwrap().get_or_insert(from) != from {
                        continue;
                    }
                    traffic
                        .lock()
                        .unwrap()
                        .from_client
                        .count(&buf[..n], Instant::now());
                    let _ = back.send(&buf[..n]).await;
                }
            })
        };
        let down = {
            let traffic = traffic.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = match back.recv(&mut buf).await {
                        Ok(n) => n,
                        Err(e) if transient(&e) => continue,
                        Err(_) => return,
                    };
                    traffic
                        .lock()
                        .unwrap()
                        .from_server
                        .count(&buf[..n], Instant::now());
                    let to = *client.lock().unwrap();
                    if let Some(to) = to {
                        let _ = front.send_to(&buf[..n], to).await;
                    }
                }
            })
        };
        UdpProxy {
            addr,
            traffic,
            tasks: [up, down],
        }
    }

    pub fn traffic(&self) -> Traffic {
        *self.traffic.lock().unwrap()
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
