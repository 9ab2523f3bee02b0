//! A seeded network model on a virtual clock: every datagram is delayed by a base
//! latency plus uniform jitter (which reorders), and lost with a given probability.
//! Same seed, same run.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub latency: Duration,
    pub jitter: Duration,
    pub loss: f64,
}

impl Link {
    pub fn clean() -> Link {
        Link { latency: Duration::from_millis(10), jitter: Duration::ZERO, loss: 0.0 }
    }
}

pub struct Datagram {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

pub struct Net {
    rng: StdRng,
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    items: HashMap<u64, Datagram>,
    next: u64,
    pub link: Link,
    pub sent: u64,
    pub lost: u64,
}

impl Net {
    pub fn new(seed: u64, link: Link) -> Net {
        Net { rng: StdRng::seed_from_u64(seed), heap: BinaryHeap::new(), items: HashMap::new(), next: 0, link, sent: 0, lost: 0 }
    }

    pub fn send(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        self.sent += 1;
        if self.link.loss > 0.0 && self.rng.random_bool(self.link.loss) {
            self.lost += 1;
            return;
        }
        let jitter = if self.link.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_micros(self.rng.random_range(0..self.link.jitter.as_micros() as u64))
        };
        let at = now + self.link.latency + jitter;
        let id = self.next;
        self.next += 1;
        self.items.insert(id, Datagram { from, to, data: data.to_vec() });
        self.heap.push(Reverse((at, id)));
    }

    /// The next datagram due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Datagram> {
        let Reverse((at, id)) = *self.heap.peek()?;
        if at > now {
            return None;
        }
        self.heap.pop();
        self.items.remove(&id)
    }
}
