//! Whether a peer's path is alive, and how much a peer may make the engine remember.
//!
//! **Consent by media.** We are an ICE-lite agent: we send no checks, and str0m drops a
//! candidate pair that has had no binding request for 15 s. A full agent should keep
//! sending consent checks (RFC 7675), but some do not while they stream (Pion 3.1 WHIP
//! publishers): their media would be cut off although it keeps arriving. Authenticated
//! media on the path is proof of life, so when a peer's last binding request is older
//! than [`CONSENT_REPLAY_AFTER`] and authenticated media (RTP, or RTCP feedback that
//! str0m turned into an event) arrived from that same address since, the engine hands
//! str0m that request again. It carries the client's own MESSAGE-INTEGRITY (keyed with
//! our password), so nothing is forged and a path that carries no authentic media
//! still times out. str0m answers it; the client discards an answer to a transaction it
//! already finished (RFC 5389 7.3.3).
//!
//! **Bounds.** Each peer learns at most [`MAX_NEW_ADDRS`] source addresses per ICE
//! credential generation (str0m keeps every peer-reflexive candidate and scans them all
//! for each request), so STUN from thousands of addresses costs a bounded amount of the
//! thread that carries everyone's media. Signalled candidates: see `bounds`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::Input;
use str0m::net::{Protocol, Receive};

use super::ids::PeerKey;
use super::{Engine, Io};

/// Replay the last binding request when the path has had none for this long (str0m
/// gives an ICE-lite pair up after 15 s without one).
pub const CONSENT_REPLAY_AFTER: Duration = Duration::from_secs(5);
/// Largest binding request kept for replay.
const MAX_STORED_REQUEST: usize = 548;
/// New source addresses a peer may use per ICE credential generation (host, reflexive,
/// relayed over IPv4 and IPv6, and a network change or two).
pub const MAX_NEW_ADDRS: u8 = 16;
/// Source addresses a peer remembers in all (older ones are forgotten first).
const MAX_ADDRS: usize = 32;

/// A peer's liveness bookkeeping.
#[derive(Default)]
pub struct Liveness {
    /// The last binding request from the client: when, from where, and its bytes.
    last_request: Option<StoredRequest>,
    /// When authenticated media last arrived from `last_request`'s source.
    media_at: Option<Instant>,
    /// New source addresses still allowed in this ICE generation.
    pub new_addrs_left: u8,
    /// Remote candidates accepted in this ICE generation.
    pub candidates: usize,
}

struct StoredRequest {
    at: Instant,
    proto: Protocol,
    source: SocketAddr,
    destination: SocketAddr,
    bytes: Vec<u8>,
}

impl Liveness {
    pub fn new() -> Liveness {
        Liveness { new_addrs_left: MAX_NEW_ADDRS, ..Liveness::default() }
    }

    /// A new ICE credential generation (ICE restart): the client may come from new
    /// addresses and signal new candidates.
    pub fn restarted(&mut self) {
        self.new_addrs_left = MAX_NEW_ADDRS;
        self.candidates = 0;
        self.last_request = None;
        self.media_at = None;
    }
}

/// Whether `d` is a STUN Binding request (RFC 5389: method 1, class request).
fn is_binding_request(d: &[u8]) -> bool {
    d.len() >= 20 && d[0] == 0x00 && d[1] == 0x01
}

impl Engine {
    /// A STUN message from `source` was routed to `pk` by its ufrag. Returns false when
    /// the peer may not learn another address (the message is dropped).
    #[allow(clippy::too_many_arguments)] // the datagram's parts, as `handle_datagram` has them
    pub(super) fn note_stun(
        &mut self,
        now: Instant,
        pk: PeerKey,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
        io: &mut dyn Io,
    ) -> bool {
        let peer = &mut self.peers[pk];
        if !peer.addrs.contains(&source) {
            if peer.live.new_addrs_left == 0 {
                self.counters.drop_address_limit += 1;
                return false;
            }
            peer.live.new_addrs_left -= 1;
            if peer.addrs.len() >= MAX_ADDRS {
                let old = peer.addrs.remove(0);
                if self.by_addr.get(&old) == Some(&pk) {
                    self.by_addr.remove(&old);
                    io.addr_forgotten(old);
                }
            }
            peer.addrs.push(source);
        }
        self.by_addr.insert(source, pk);
        if is_binding_request(data) && data.len() <= MAX_STORED_REQUEST {
            let live = &mut self.peers[pk].live;
            match &mut live.last_request {
                Some(r) => {
                    if r.source != source {
                        live.media_at = None;
                    }
                    r.at = now;
                    r.proto = proto;
                    r.source = source;
                    r.destination = destination;
                    r.bytes.clear();
                    r.bytes.extend_from_slice(data);
                }
                None => {
                    live.last_request =
                        Some(StoredRequest { at: now, proto, source, destination, bytes: data.to_vec() });
                }
            }
        }
        true
    }

    /// Authenticated media or feedback from `pk` arrived (an event str0m made from the
    /// datagram from `source` being handled). Replays the last binding request when the
    /// path has had none for a while.
    pub(super) fn note_media(&mut self, now: Instant, pk: PeerKey, source: SocketAddr, io: &mut dyn Io) {
        let Some(peer) = self.peers.get_mut(pk) else { return };
        let Some(req) = &mut peer.live.last_request else { return };
        if req.source != source {
            return;
        }
        peer.live.media_at = Some(now);
        if now.saturating_duration_since(req.at) < CONSENT_REPLAY_AFTER {
            return;
        }
        // The replayed request counts as this moment's consent.
        req.at = now;
        let (proto, destination) = (req.proto, req.destination);
        let bytes = std::mem::take(&mut req.bytes);
        if let Ok(recv) = Receive::new(proto, source, destination, &bytes) {
            self.counters.consent_by_media += 1;
            self.peer_input(pk, Input::Receive(now, recv));
            self.drain(pk, io);
        }
        if let Some(r) = self.peers.get_mut(pk).and_then(|p| p.live.last_request.as_mut()) {
            if r.bytes.is_empty() {
                r.bytes = bytes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_requests_are_told_from_other_stun() {
        let mut m = vec![0u8; 20];
        m[1] = 0x01;
        assert!(is_binding_request(&m));
        m[0] = 0x01; // success response 0x0101
        assert!(!is_binding_request(&m));
        m[0] = 0x00;
        m[1] = 0x11; // indication 0x0011
        assert!(!is_binding_request(&m));
        assert!(!is_binding_request(&m[..10]));
    }
}
