//! WHIP (RFC 9725) and WHEP sessions: participants driven over HTTP instead of `/rtc`.
//!
//! A WHIP session is a participant with only a publisher connection: its tracks are
//! ordinary room tracks. A WHEP session is a hidden participant with only a subscriber
//! connection whose transceivers were offered by the client; each transceiver (a
//! [`Slot`]) carries one room track of its kind at a time and moves to another when that
//! track ends, under the same SSRC with continuous sequence numbers and timestamps.

use std::panic::{AssertUnwindSafe, catch_unwind};

use rand::Rng;
use std::time::Instant;

use str0m::change::SdpOffer;
use str0m::media::{MediaKind, Mid};
use str0m::{Candidate, IceCreds};
use tokio::sync::oneshot;

use super::ids::{PartKey, PeerKey};
use super::negotiate::{pt_codec, pt_for};
use super::session::Refusal;
use super::state::{HttpSession, Slot, Sub, Whep};
use super::bounds::{MAX_REMOTE_CANDIDATES, check_sdp, client_text};
use super::{Engine, Io};
use crate::forward::{Codec, LayerSelector, Rewriter};
use crate::proto::{PcKind, Quality, ServerMsg, Source, TrackKind};

/// What a `POST` makes.
#[derive(Debug, Clone)]
pub enum HttpKind {
    /// `POST /whip/{room}`: publish.
    Whip,
    /// `POST /whep/{room}[/{participant}]`: play the room, or one participant (by id
    /// or identity).
    Whep { target: Option<String> },
}

/// A refusal, with the HTTP status it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
}

impl HttpError {
    fn new(status: u16, message: impl Into<String>) -> HttpError {
        HttpError { status, message: message.into() }
    }
}

/// A session made by `POST`.
#[derive(Debug, Clone)]
pub struct HttpCreated {
    pub resource: String,
    pub participant_id: String,
    pub answer: String,
    pub etag: String,
}

/// What a `PATCH` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchOutcome {
    /// Candidates added (204).
    Trickled,
    /// ICE restarted: the server's new credentials and candidates (200).
    Restarted { frag: String, etag: String },
}

pub type Reply<T> = oneshot::Sender<Result<T, HttpError>>;

/// An `application/trickle-ice-sdpfrag` body, parsed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SdpFrag {
    pub ufrag: Option<String>,
    pub pwd: Option<String>,
    pub candidates: Vec<String>,
}

impl SdpFrag {
    /// Parses the lines we use; others (`m=`, `a=mid`, `a=end-of-candidates`) are
    /// accepted and ignored. Lines that are not SDP (`x=...`) are refused.
    pub fn parse(body: &str) -> Result<SdpFrag, String> {
        let mut f = SdpFrag::default();
        for (i, line) in body.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            let bytes = line.as_bytes();
            if bytes.len() < 2 || bytes[1] != b'=' || !bytes[0].is_ascii_lowercase() {
                return Err(format!("line {} is not an SDP line", i + 1));
            }
            if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
                f.ufrag = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
                f.pwd = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("a=") {
                if v.starts_with("candidate:") {
                    f.candidates.push(v.to_string());
                }
            }
        }
        Ok(f)
    }
}

/// The `a=ice-ufrag` of an SDP (the first one).
fn sdp_ufrag(sdp: &str) -> Option<String> {
    sdp.lines().find_map(|l| l.trim_end_matches('\r').strip_prefix("a=ice-ufrag:").map(|v| v.trim().to_string()))
}

/// The `a=mid` of each media section of an SDP, in order.
fn offered_mids(sdp: &str) -> Vec<Mid> {
    sdp.lines().filter_map(|l| l.trim_end_matches('\r').strip_prefix("a=mid:")).map(|m| Mid::from(m.trim())).collect()
}

fn etag_of(ufrag: &str) -> String {
    format!("\"{ufrag}\"")
}

impl Engine {
    /// `POST /whip/{room}` or `POST /whep/{room}`: the token was verified for the room.
    pub(super) fn http_offer(
        &mut self,
        now: Instant,
        claims: common::Claims,
        kind: HttpKind,
        offer_sdp: &str,
        io: &mut dyn Io,
    ) -> Result<HttpCreated, HttpError> {
        check_sdp(offer_sdp).map_err(|e| HttpError::new(422, e))?;
        let offer = SdpOffer::from_sdp_string(offer_sdp)
            .map_err(|e| HttpError::new(400, format!("the offer is not valid SDP: {}", client_text(e))))?;
        let remote_ufrag =
            sdp_ufrag(offer_sdp).ok_or_else(|| HttpError::new(400, "the offer has no a=ice-ufrag"))?;
        let room = claims.room.clone().ok_or_else(|| HttpError::new(403, "access token opens no room"))?;
        let whep = match &kind {
            HttpKind::Whip => None,
            HttpKind::Whep { target } => {
                let Some(r) = self.rooms.get(&room) else {
                    return Err(HttpError::new(404, format!("no room {room:?} is open")));
                };
                if let Some(t) = target {
                    let found = r.participants.iter().any(|&k| {
                        let p = &self.participants[k];
                        (p.id == *t || p.identity == *t) && p.http.as_ref().is_none_or(|h| h.whep.is_none())
                    });
                    if !found {
                        return Err(HttpError::new(404, format!("no participant {t:?} in room {room:?}")));
                    }
                }
                Some(Whep { target: target.clone(), slots: Vec::new() })
            }
        };
        let is_whep = whep.is_some();
        let resource = {
            let b: [u8; 16] = self.rng.random();
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        };
        let http = HttpSession { resource: resource.clone(), remote_ufrag, whep };
        let pk = match self.admit(now, &claims, None, false, Some(http), io) {
            Ok(pk) => pk,
            Err(Refusal::NoRoom) => return Err(HttpError::new(403, "access token opens no room")),
            Err(Refusal::Full(max)) => {
                return Err(HttpError::new(503, format!("room is full ({max} participants)")));
            }
        };
        self.resources.insert(resource.clone(), pk);
        // `admit` leaves it detached until ICE connects: a session never connected ends
        // after the resume window, like one whose connection was lost.
        if !is_whep {
            let info = self.participant_info(pk);
            self.broadcast(&room, Some(pk), &ServerMsg::ParticipantJoined { participant: info });
        }
        let pc = if is_whep { PcKind::Subscriber } else { PcKind::Publisher };
        let peer = self.new_peer(now, pk, pc, io);
        if is_whep {
            self.participants[pk].subscriber = Some(peer);
        } else {
            self.participants[pk].publisher = Some(peer);
        }
        let rtc = &mut self.peers[peer].rtc;
        let res = catch_unwind(AssertUnwindSafe(|| rtc.sdp_api().accept_offer(offer)));
        let answer = match res {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                self.remove_participant(now, pk, crate::metrics::LeaveReason::OfferRefused, false, io);
                return Err(HttpError::new(400, format!("offer refused: {}", client_text(e))));
            }
            Err(_) => {
                self.fail_peer(peer, "accepting a WHIP/WHEP offer", true);
                self.remove_participant(now, pk, crate::metrics::LeaveReason::OfferRefused, false, io);
                return Err(HttpError::new(400, "the offer could not be handled"));
            }
        };
        self.drain(peer, io);
        self.refresh_ufrag(peer, io);
        // What was negotiated, in offer order. (str0m announces media only once DTLS is
        // up, too late to refuse the offer.) WHIP tracks appear when media starts.
        let rtc = &self.peers[peer].rtc;
        let usable: Vec<(Mid, TrackKind)> = offered_mids(offer_sdp)
            .into_iter()
            .filter_map(|mid| {
                let media = rtc.media(mid)?;
                let direction_ok =
                    if is_whep { media.direction().is_sending() } else { media.direction().is_receiving() };
                let codec_ok =
                    media.remote_pts().iter().any(|&pt| pt_codec(rtc, pt).is_some_and(|(c, _)| c != Codec::Other));
                let kind = match media.kind() {
                    MediaKind::Audio => TrackKind::Audio,
                    MediaKind::Video => TrackKind::Video,
                };
                (direction_ok && codec_ok).then_some((mid, kind))
            })
            .collect();
        if usable.is_empty() {
            self.remove_participant(now, pk, crate::metrics::LeaveReason::OfferRefused, false, io);
            let what = if is_whep { "receive" } else { "send" };
            return Err(HttpError::new(
                406,
                format!("the offer has no audio or video to {what} in a codec we support (Opus, VP8, H.264, VP9, AV1)"),
            ));
        }
        if let Some(whep) = self.participants[pk].http.as_mut().and_then(|h| h.whep.as_mut()) {
            whep.slots = usable.into_iter().map(|(mid, kind)| Slot { mid, kind, sub: None, carry: None }).collect();
            self.whep_fill(now, pk, io);
        }
        let ufrag = self.peers[peer].ufrag.clone();
        let p = &self.participants[pk];
        p.span.in_scope(|| tracing::info!(kind = if is_whep { "whep" } else { "whip" }, "http session created"));
        Ok(HttpCreated { resource, participant_id: p.id.clone(), answer: answer.to_sdp_string(), etag: etag_of(&ufrag) })
    }

    fn http_session(&self, resource: &str, identity: &str) -> Result<(PartKey, PeerKey), HttpError> {
        let &pk = self.resources.get(resource).ok_or_else(|| HttpError::new(404, "no such session (it ended)"))?;
        let p = &self.participants[pk];
        if p.identity != identity {
            return Err(HttpError::new(403, "this session belongs to another identity"));
        }
        let peer = p.publisher.or(p.subscriber).ok_or_else(|| HttpError::new(404, "the session has no connection"))?;
        Ok((pk, peer))
    }

    /// `PATCH` on a session: trickled candidates, or an ICE restart.
    pub(super) fn http_patch(
        &mut self,
        resource: &str,
        identity: &str,
        if_match: Option<&str>,
        frag: &SdpFrag,
        io: &mut dyn Io,
    ) -> Result<PatchOutcome, HttpError> {
        let (pk, peer) = self.http_session(resource, identity)?;
        let current = etag_of(&self.peers[peer].ufrag);
        let remote = &self.participants[pk].http.as_ref().expect("http session").remote_ufrag;
        let restart = frag.ufrag.as_ref().is_some_and(|u| u != remote);
        match if_match {
            Some("*") | None => {}
            Some(tag) if tag == current => {}
            Some(_) => return Err(HttpError::new(412, "If-Match does not match the session's ETag")),
        }
        // Counted before anything is parsed: a fragment's cost on this thread is bounded.
        let used = if restart { 0 } else { self.peers[peer].live.candidates };
        if used + frag.candidates.len() > MAX_REMOTE_CANDIDATES {
            return Err(HttpError::new(
                422,
                format!(
                    "too many candidates: at most {MAX_REMOTE_CANDIDATES} per session until an ICE restart \
                     ({used} already, {} in this PATCH)",
                    frag.candidates.len()
                ),
            ));
        }
        let mut candidates = Vec::with_capacity(frag.candidates.len());
        for c in &frag.candidates {
            match Candidate::from_sdp_string(c) {
                Ok(c) => candidates.push(c),
                Err(e) => return Err(HttpError::new(422, format!("candidate does not parse: {}", client_text(e)))),
            }
        }
        if restart {
            let (Some(ufrag), Some(pwd)) = (frag.ufrag.clone(), frag.pwd.clone()) else {
                return Err(HttpError::new(422, "an ICE restart needs both a=ice-ufrag and a=ice-pwd"));
            };
            let local = IceCreds::new();
            let rtc = &mut self.peers[peer].rtc;
            let mut api = rtc.direct_api();
            api.set_local_ice_credentials(local.clone());
            api.set_remote_ice_credentials(IceCreds { ufrag: ufrag.clone(), pass: pwd });
            self.participants[pk].http.as_mut().expect("http session").remote_ufrag = ufrag;
            self.refresh_ufrag(peer, io);
        }
        self.peers[peer].live.candidates += candidates.len();
        for c in candidates {
            self.peers[peer].rtc.add_remote_candidate(c);
        }
        self.drain(peer, io);
        if !restart {
            return Ok(PatchOutcome::Trickled);
        }
        let local = self.peers[peer].rtc.direct_api().local_ice_credentials();
        let mut frag = format!("a=ice-ufrag:{}\r\na=ice-pwd:{}\r\n", local.ufrag, local.pass);
        for c in [Some(&self.udp_candidate), self.tcp_candidate.as_ref()].into_iter().flatten() {
            frag.push_str(&format!("a={}\r\n", c.to_sdp_string()));
        }
        frag.push_str("a=end-of-candidates\r\n");
        self.participants[pk].span.in_scope(|| tracing::info!("http session ICE restart"));
        Ok(PatchOutcome::Restarted { frag, etag: etag_of(&local.ufrag) })
    }

    /// `DELETE` on a session.
    pub(super) fn http_delete(&mut self, now: Instant, resource: &str, identity: &str, io: &mut dyn Io) -> Result<(), HttpError> {
        let (pk, _) = self.http_session(resource, identity)?;
        self.remove_participant(now, pk, crate::metrics::LeaveReason::Deleted, false, io);
        Ok(())
    }

    /// Gives each idle slot of a WHEP session a room track: the earliest joined
    /// participant's first track of the slot's kind (cameras and microphones before
    /// screen shares) that the slot's negotiated codecs can carry and no other slot
    /// of the session carries.
    pub(super) fn whep_fill(&mut self, now: Instant, pk: PartKey, io: &mut dyn Io) {
        let Some(p) = self.participants.get(pk) else { return };
        let Some(whep) = p.http.as_ref().and_then(|h| h.whep.as_ref()) else { return };
        let Some(peer) = p.subscriber else { return };
        let Some(room) = self.rooms.get(&p.room) else { return };
        let mut used: Vec<usize> = whep.slots.iter().filter_map(|s| s.sub.map(|sk| self.subs[sk].track)).collect();
        let owners: Vec<PartKey> = room
            .participants
            .iter()
            .copied()
            .filter(|&k| {
                let o = &self.participants[k];
                k != pk && whep.target.as_ref().is_none_or(|t| o.id == *t || o.identity == *t)
            })
            .collect();
        let mut assign = Vec::new();
        for (i, slot) in whep.slots.iter().enumerate() {
            if slot.sub.is_some() {
                continue;
            }
            let rtc = &self.peers[peer].rtc;
            let fits = |t: usize, screens: bool| {
                let tr = &self.tracks[t];
                tr.kind == slot.kind
                    && matches!(tr.source, Source::ScreenShare | Source::ScreenShareAudio) == screens
                    && !used.contains(&t)
                    && pt_for(rtc, slot.mid, tr.codec).is_some()
            };
            let pick = [false, true].into_iter().find_map(|screens| {
                owners.iter().find_map(|&o| self.participants[o].tracks.iter().copied().find(|&t| fits(t, screens)))
            });
            if let Some(t) = pick {
                used.push(t);
                assign.push((i, t));
            }
        }
        for (i, t) in assign {
            self.whep_attach(now, pk, peer, i, t, io);
        }
    }

    fn whep_attach(&mut self, now: Instant, pk: PartKey, peer: PeerKey, slot: usize, t: usize, io: &mut dyn Io) {
        let (mid, carry) = {
            let whep = self.participants[pk].http.as_mut().and_then(|h| h.whep.as_mut()).expect("whep session");
            let s = &mut whep.slots[slot];
            (s.mid, s.carry.take())
        };
        let track = &self.tracks[t];
        let (codec, clock_rate, layers) = (track.codec, track.clock_rate, track.layers.len());
        let rtc = &mut self.peers[peer].rtc;
        let pt = pt_for(rtc, mid, codec);
        let ssrc = rtc.direct_api().stream_tx_by_mid(mid, None).map(|s| s.ssrc());
        let (Some(pt), Some(ssrc)) = (pt, ssrc) else { return };
        let rewriter = carry.unwrap_or_else(|| Rewriter::new(clock_rate, self.rng.random(), self.rng.random()));
        let sk = self.subs.insert(Sub {
            track: t,
            part: pk,
            peer,
            mid: Some(mid),
            ssrc: Some(ssrc),
            pt: Some(pt),
            rewriter,
            selector: LayerSelector::new(layers),
            max_quality: Quality::High,
            paused: false,
        });
        self.tracks[t].subs.push(sk);
        self.participants[pk].subs.push(sk);
        self.peers[peer].mid_sub.insert(mid, sk);
        if let Some(whep) = self.participants[pk].http.as_mut().and_then(|h| h.whep.as_mut()) {
            whep.slots[slot].sub = Some(sk);
        }
        self.participants[pk].span.in_scope(|| tracing::debug!(track = %self.tracks[t].id, %mid, "whep slot attached"));
        self.update_track_targets(now, t, io);
    }

    /// A WHEP subscription ended: its slot keeps the numbering for the next track.
    /// Returns false when `sk` is not a WHEP slot's.
    pub(super) fn whep_detach(&mut self, part: PartKey, sk: usize, rewriter: &Rewriter) -> bool {
        let Some(whep) = self.participants.get_mut(part).and_then(|p| p.http.as_mut()).and_then(|h| h.whep.as_mut())
        else {
            return false;
        };
        if let Some(slot) = whep.slots.iter_mut().find(|s| s.sub == Some(sk)) {
            slot.sub = None;
            slot.carry = Some(rewriter.clone());
        }
        self.whep_refill.push(part);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdpfrag_parse() {
        let body = "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n\
                    a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0\r\na=end-of-candidates\r\n";
        let f = SdpFrag::parse(body).unwrap();
        assert_eq!(f.ufrag.as_deref(), Some("EsAw"));
        assert_eq!(f.pwd.as_deref(), Some("P2uYro0UCOQ4zxjKXaWCBui1"));
        assert_eq!(f.candidates.len(), 1);
        assert!(f.candidates[0].starts_with("candidate:1387637174"));
        assert!(SdpFrag::parse("hello\r\n").is_err());
        assert_eq!(SdpFrag::parse("").unwrap(), SdpFrag::default());
    }
}
