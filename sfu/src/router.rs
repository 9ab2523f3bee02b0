//! The receive path of the one media UDP port: which media worker a datagram is for.
//!
//! - **STUN** is routed by the local ICE ufrag its USERNAME names. Every ufrag is
//!   registered in the shared [`Ufrags`] table by the worker whose peer owns it before
//!   the ufrag reaches the client in any SDP, and removed when the peer leaves or
//!   restarts ICE. (A table rather than a worker number inside the ufrag: str0m 0.25
//!   makes the credentials of an SDP-negotiated ICE restart itself.)
//! - **Everything else** (DTLS, SRTP, SRTCP) by its source address. A worker teaches the
//!   address when it answers a binding request from it with a success response, which
//!   str0m sends only for a request carrying our password's MESSAGE-INTEGRITY: only
//!   authenticated addresses are learned. The worker forgets it when its peer leaves,
//!   drops the address, or its ICE times out.
//! - Anything else is dropped and counted (`unknown_source`).
//!
//! The address table is owned by the reader thread alone ([`Router`]); workers change
//! it through a channel ([`RouteMsg`]) that the reader drains before routing each batch
//! it read. A worker sends the message before the STUN answer that makes the client
//! send media, so the table knows the address before the media arrives. The ufrag table
//! is shared with the ICE-TCP acceptor (a connection goes to the worker its first STUN
//! frame names) behind a mutex taken once per STUN message, never per media packet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::engine::{is_stun, local_ufrag};

/// Index of a media worker.
pub type WorkerIndex = usize;

/// Which worker owns each local ICE ufrag.
#[derive(Debug, Default)]
pub struct Ufrags {
    map: Mutex<HashMap<String, WorkerIndex>>,
}

impl Ufrags {
    pub fn new() -> Arc<Ufrags> {
        Arc::new(Ufrags::default())
    }

    /// `worker` answers STUN for `ufrag` from now on.
    pub fn add(&self, ufrag: &str, worker: WorkerIndex) {
        self.lock().insert(ufrag.to_string(), worker);
    }

    /// `worker` no longer answers for `ufrag` (another worker's claim stays).
    pub fn remove(&self, ufrag: &str, worker: WorkerIndex) {
        let mut m = self.lock();
        if m.get(ufrag) == Some(&worker) {
            m.remove(ufrag);
        }
    }

    /// The worker that owns `ufrag`.
    pub fn get(&self, ufrag: &str) -> Option<WorkerIndex> {
        self.lock().get(ufrag).copied()
    }

    /// The worker a STUN message is for, by the local ufrag it names.
    pub fn route_stun(&self, data: &[u8]) -> Option<WorkerIndex> {
        self.get(local_ufrag(data)?)
    }

    /// Ufrags registered.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, WorkerIndex>> {
        // A panic elsewhere while holding it leaves a map that is still consistent.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A worker's change to the address table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMsg {
    /// The worker authenticated STUN from this address: its datagrams go there.
    Learned(SocketAddr, WorkerIndex),
    /// The worker no longer knows this address.
    Forgotten(SocketAddr, WorkerIndex),
}

/// The reader thread's routing state.
pub struct Router {
    workers: usize,
    ufrags: Arc<Ufrags>,
    addrs: HashMap<SocketAddr, WorkerIndex>,
    /// Datagrams no worker claims, since the count was last taken.
    pub dropped_unknown: u64,
}

impl Router {
    pub fn new(workers: usize, ufrags: Arc<Ufrags>) -> Router {
        Router {
            workers,
            ufrags,
            addrs: HashMap::new(),
            dropped_unknown: 0,
        }
    }

    /// Applies a worker's change to the address table.
    pub fn apply(&mut self, msg: RouteMsg) {
        match msg {
            RouteMsg::Learned(a, w) if w < self.workers => {
                self.addrs.insert(a, w);
            }
            RouteMsg::Learned(..) => {}
            RouteMsg::Forgotten(a, w) => {
                // A newer claim by another worker (a NAT reusing the port) stays.
                if self.addrs.get(&a) == Some(&w) {
                    self.addrs.remove(&a);
                }
            }
        }
    }

    /// The worker the datagram from `source` is for; `None` (counted) when none is.
    pub fn route(&mut self, source: SocketAddr, data: &[u8]) -> Option<WorkerIndex> {
        let w = if is_stun(data) {
            self.ufrags.route_stun(data)
        } else {
            self.addrs.get(&source).copied()
        };
        let w = w.filter(|&w| w < self.workers);
        if w.is_none() {
            self.dropped_unknown += 1;
        }
        w
    }

    /// Addresses known.
    pub fn addresses(&self) -> usize {
        self.addrs.len()
    }
}

/// Datagrams read for one worker in one go, back to back, with the time they were read.
/// Batches go back to the reader when handled, so the receive path allocates nothing
/// per datagram once warm.
pub struct Batch {
    pub at: Instant,
    data: Vec<u8>,
    items: Vec<(u32, u16, SocketAddr)>,
}

impl Batch {
    /// An empty batch; it grows to what it carries and keeps that capacity when reused.
    pub fn new(at: Instant) -> Batch {
        Batch {
            at,
            data: Vec::with_capacity(4 * 1500),
            items: Vec::with_capacity(4),
        }
    }

    pub fn push(&mut self, source: SocketAddr, d: &[u8]) {
        self.items
            .push((self.data.len() as u32, d.len() as u16, source));
        self.data.extend_from_slice(d);
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn get(&self, i: usize) -> (SocketAddr, &[u8]) {
        let (off, len, src) = self.items[i];
        (src, &self.data[off as usize..off as usize + len as usize])
    }

    pub fn clear(&mut self) {
        self.items.clear();
        self.data.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(username: &str) -> Vec<u8> {
        let u = username.as_bytes();
        let mut attr = vec![0x00, 0x06, 0x00, u.len() as u8];
        attr.extend_from_slice(u);
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attr);
        m
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    const RTP: [u8; 12] = [0x80, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 7];

    #[test]
    fn stun_goes_to_the_worker_that_registered_its_ufrag() {
        let u = Ufrags::new();
        let mut r = Router::new(2, u.clone());
        u.add("aaaa", 0);
        u.add("bbbb", 1);
        assert_eq!(r.route(addr(1), &binding("aaaa:client")), Some(0));
        assert_eq!(r.route(addr(1), &binding("bbbb:client")), Some(1));
        // The local ufrag is the part before the colon: the client's is not looked up.
        assert_eq!(r.route(addr(1), &binding("client:bbbb")), None);
        assert_eq!(r.route(addr(1), &binding("nobody:x")), None);
        assert_eq!(r.dropped_unknown, 2);
        // A worker that restarted ICE drops its old ufrag; another worker's stays.
        u.remove("aaaa", 1);
        assert_eq!(u.get("aaaa"), Some(0));
        u.remove("aaaa", 0);
        assert_eq!(r.route(addr(1), &binding("aaaa:client")), None);
        assert_eq!(u.count(), 1);
    }

    #[test]
    fn media_follows_the_learned_address_until_it_is_forgotten() {
        let u = Ufrags::new();
        let mut r = Router::new(2, u);
        // Unknown sources are dropped and counted, before and after learning.
        assert_eq!(r.route(addr(5000), &RTP), None);
        r.apply(RouteMsg::Learned(addr(5000), 1));
        assert_eq!(r.route(addr(5000), &RTP), Some(1));
        assert_eq!(r.route(addr(5001), &RTP), None);
        // Another worker learning the same address (a reused NAT port) takes it over;
        // the first one's later eviction does not remove the new claim.
        r.apply(RouteMsg::Learned(addr(5000), 0));
        r.apply(RouteMsg::Forgotten(addr(5000), 1));
        assert_eq!(r.route(addr(5000), &RTP), Some(0));
        r.apply(RouteMsg::Forgotten(addr(5000), 0));
        assert_eq!(r.route(addr(5000), &RTP), None);
        assert_eq!(r.addresses(), 0);
        assert_eq!(r.dropped_unknown, 3);
        // A worker index past the configured count is never used.
        r.apply(RouteMsg::Learned(addr(6000), 7));
        assert_eq!(r.route(addr(6000), &RTP), None);
    }

    #[test]
    fn garbage_is_dropped_not_routed() {
        let u = Ufrags::new();
        u.add("aaaa", 0);
        let mut r = Router::new(1, u);
        r.apply(RouteMsg::Learned(addr(1), 0));
        // STUN-looking garbage from a known address is still routed by ufrag (none).
        let mut bad = binding("aaaa:x");
        bad[22] = 0xff;
        assert_eq!(r.route(addr(1), &bad), None);
        // Every truncation of a good binding request: routed or dropped, never a panic.
        let good = binding("aaaa:client");
        for n in 0..good.len() {
            let _ = r.route(addr(2), &good[..n]);
        }
        assert_eq!(r.route(addr(2), &good), Some(0));
    }

    #[test]
    fn batches_keep_datagrams_in_order() {
        let mut b = Batch::new(Instant::now());
        for i in 0..100u16 {
            b.push(addr(i), &vec![i as u8; 10 + i as usize]);
        }
        assert_eq!(b.len(), 100);
        for i in 0..100u16 {
            let (src, d) = b.get(i as usize);
            assert_eq!(src, addr(i));
            assert_eq!(d, &vec![i as u8; 10 + i as usize][..]);
        }
        b.clear();
        assert!(b.is_empty());
    }
}
