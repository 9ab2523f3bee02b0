//! SDP: the publisher connection answers the client's offers; the subscriber connection
//! offers whenever the participant's subscriptions change, one offer at a time.

use std::panic::{AssertUnwindSafe, catch_unwind};

use rand::Rng;

use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::{Candidate, Rtc};

use super::ids::PartKey;
use super::bounds::{MAX_MLINES, MAX_REMOTE_CANDIDATES, check_sdp, client_text};
use super::state::{PendingOffer, Sub, SubKey, TrackKey};
use super::{Engine, Io};
use crate::forward::{Codec, LayerSelector, Rewriter};
use crate::proto::{ErrorCode, MidTrack, PcKind, PublishTrack, Quality, ServerMsg, TrackKind};

/// Our codec for a str0m codec.
pub(super) fn codec_of(c: str0m::format::Codec) -> Codec {
    use str0m::format::Codec as C;
    match c {
        C::Opus => Codec::Opus,
        C::Vp8 => Codec::Vp8,
        C::Vp9 => Codec::Vp9,
        C::H264 => Codec::H264,
        C::Av1 => Codec::Av1,
        _ => Codec::Other,
    }
}

/// Codec and clock rate of payload type `pt` in `rtc`'s negotiated config.
pub(super) fn pt_codec(rtc: &Rtc, pt: Pt) -> Option<(Codec, u32)> {
    let p = rtc.codec_config().find(|p| p.pt() == pt)?;
    Some((codec_of(p.spec().codec), p.spec().clock_rate.get()))
}

/// The payload type `rtc` negotiated for `codec` on `mid`.
pub(super) fn pt_for(rtc: &Rtc, mid: Mid, codec: Codec) -> Option<Pt> {
    let media = rtc.media(mid)?;
    media.remote_pts().iter().copied().find(|&pt| pt_codec(rtc, pt).is_some_and(|(c, _)| c == codec))
}

impl Engine {
    pub(super) fn publisher_offer(
        &mut self,
        now: std::time::Instant,
        pk: PartKey,
        sdp: &str,
        tracks: Vec<PublishTrack>,
        io: &mut dyn Io,
    ) {
        if !self.participants[pk].grants.publish {
            return self.error(pk, ErrorCode::NotAllowed, "token does not grant publish");
        }
        if let Err(e) = check_sdp(sdp) {
            return self.error(pk, ErrorCode::Limit, e);
        }
        if tracks.len() > MAX_MLINES {
            return self.error(pk, ErrorCode::Limit, format!("too many track descriptions (at most {MAX_MLINES})"));
        }
        let offer = match SdpOffer::from_sdp_string(sdp) {
            Ok(o) => o,
            Err(e) => return self.error(pk, ErrorCode::BadSdp, format!("offer does not parse: {}", client_text(e))),
        };
        for t in tracks {
            if !self.participants[pk].grants.may_publish(t.source) {
                self.error(pk, ErrorCode::NotAllowed, format!("token does not allow publishing {:?}", t.source));
            }
            self.participants[pk].publish_meta.insert(t.mid.clone(), t);
        }
        let peer = match self.participants[pk].publisher {
            Some(p) => p,
            None => {
                let p = self.new_peer(now, pk, PcKind::Publisher, io);
                self.participants[pk].publisher = Some(p);
                p
            }
        };
        let rtc = &mut self.peers[peer].rtc;
        let res = catch_unwind(AssertUnwindSafe(|| rtc.sdp_api().accept_offer(offer)));
        let answer = match res {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                self.drain(peer, io);
                return self.error(pk, ErrorCode::BadSdp, format!("offer refused: {}", client_text(e)));
            }
            Err(_) => {
                self.fail_peer(peer, "accepting an offer", true);
                return self.error(pk, ErrorCode::BadSdp, "offer could not be handled");
            }
        };
        self.drain(peer, io);
        self.refresh_ufrag(peer, io);
        // Descriptions are kept only for media the connection has.
        let rtc = &self.peers[peer].rtc;
        self.participants[pk].publish_meta.retain(|mid, _| rtc.media(Mid::from(mid.as_str())).is_some());
        self.send(pk, ServerMsg::Answer { sdp: answer.to_sdp_string() });
    }

    pub(super) fn subscriber_answer(&mut self, pk: PartKey, sdp: &str, offer_id: u64, io: &mut dyn Io) {
        let Some(peer) = self.participants[pk].subscriber else {
            return self.error(pk, ErrorCode::BadState, "no subscriber connection");
        };
        if self.participants[pk].pending_offer.as_ref().is_none_or(|o| o.id != offer_id) {
            return self.error(pk, ErrorCode::BadState, format!("no offer {offer_id} is awaiting an answer"));
        }
        if let Err(e) = check_sdp(sdp) {
            return self.error(pk, ErrorCode::Limit, e);
        }
        let answer = match SdpAnswer::from_sdp_string(sdp) {
            Ok(a) => a,
            Err(e) => return self.error(pk, ErrorCode::BadSdp, format!("answer does not parse: {}", client_text(e))),
        };
        let pending = self.participants[pk].pending_offer.take().expect("checked above");
        let rtc = &mut self.peers[peer].rtc;
        let res = catch_unwind(AssertUnwindSafe(|| rtc.sdp_api().accept_answer(pending.pending, answer)));
        self.drain(peer, io);
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // The offer is spent; offer again so the client can recover.
                self.error(pk, ErrorCode::BadSdp, format!("answer refused: {}", client_text(e)));
                self.participants[pk].offer_again = true;
            }
            Err(_) => {
                self.fail_peer(peer, "accepting an answer", true);
                return self.error(pk, ErrorCode::BadSdp, "answer could not be handled");
            }
        }
        self.refresh_ufrag(peer, io);
        for s in self.participants[pk].subs.clone() {
            self.resolve_sub(s);
        }
        if std::mem::take(&mut self.participants[pk].offer_again) {
            self.renegotiate(pk, io);
        }
    }

    pub(super) fn trickle(&mut self, pk: PartKey, pc: PcKind, candidate: &str, io: &mut dyn Io) {
        let peer = match pc {
            PcKind::Publisher => self.participants[pk].publisher,
            PcKind::Subscriber => self.participants[pk].subscriber,
        };
        let Some(peer) = peer else {
            return self.error(pk, ErrorCode::BadState, format!("no {pc:?} connection yet"));
        };
        let line = candidate.trim().trim_start_matches("a=");
        if line.is_empty() {
            return; // end-of-candidates
        }
        if self.peers[peer].live.candidates >= MAX_REMOTE_CANDIDATES {
            return self.error(
                pk,
                ErrorCode::Limit,
                format!("too many candidates: at most {MAX_REMOTE_CANDIDATES} per connection until an ICE restart"),
            );
        }
        match Candidate::from_sdp_string(line) {
            Ok(c) => {
                self.peers[peer].live.candidates += 1;
                self.peers[peer].rtc.add_remote_candidate(c);
                self.drain(peer, io);
            }
            Err(e) => self.error(pk, ErrorCode::BadMessage, format!("candidate does not parse: {}", client_text(e))),
        }
    }

    /// Adds a subscription (not yet negotiated).
    pub(super) fn add_sub(&mut self, pk: PartKey, t: TrackKey) {
        let Some(peer) = self.participants[pk].subscriber else { return };
        if self.participants[pk].subs.iter().any(|&s| self.subs[s].track == t) {
            return;
        }
        let track = &self.tracks[t];
        let first_seq: u16 = self.rng.random();
        let first_ts: u32 = self.rng.random();
        let sk = self.subs.insert(Sub {
            track: t,
            part: pk,
            peer,
            mid: None,
            ssrc: None,
            pt: None,
            rewriter: Rewriter::new(track.clock_rate, first_seq, first_ts),
            selector: LayerSelector::new(track.layers.len()),
            max_quality: Quality::High,
            paused: false,
        });
        self.tracks[t].subs.push(sk);
        self.participants[pk].subs.push(sk);
    }

    /// Ends a subscription; its transceiver is stopped at the next offer.
    pub(super) fn remove_sub(&mut self, sk: SubKey) {
        let Some(sub) = self.subs.try_remove(sk) else { return };
        if let Some(t) = self.tracks.get_mut(sub.track) {
            t.subs.retain(|&s| s != sk);
        }
        if self.whep_detach(sub.part, sk, &sub.rewriter) {
            if let Some(p) = self.participants.get_mut(sub.part) {
                p.subs.retain(|&s| s != sk);
            }
            if let (Some(mid), Some(peer)) = (sub.mid, self.peers.get_mut(sub.peer)) {
                peer.mid_sub.remove(&mid);
            }
            return;
        }
        if let Some(p) = self.participants.get_mut(sub.part) {
            p.subs.retain(|&s| s != sk);
            if let Some(mid) = sub.mid {
                p.stop_mids.push(mid);
            }
        }
        if let (Some(mid), Some(peer)) = (sub.mid, self.peers.get_mut(sub.peer)) {
            peer.mid_sub.remove(&mid);
        }
    }

    /// Sends a subscriber offer with every change made since the last one, unless an
    /// offer is already awaiting its answer (then it follows the answer).
    pub(super) fn renegotiate(&mut self, pk: PartKey, io: &mut dyn Io) {
        let Some(p) = self.participants.get(pk) else { return };
        let Some(peer) = p.subscriber else { return };
        if p.http.is_some() {
            // WHEP: the client's offer fixed the transceivers; slots change instead.
            self.whep_refill.push(pk);
            return;
        }
        if p.pending_offer.is_some() {
            self.participants[pk].offer_again = true;
            return;
        }
        let to_add: Vec<(SubKey, MediaKind, String, String)> = p
            .subs
            .iter()
            .filter(|&&sk| self.subs[sk].mid.is_none())
            .map(|&sk| {
                let track = &self.tracks[self.subs[sk].track];
                let kind = match track.kind {
                    TrackKind::Audio => MediaKind::Audio,
                    TrackKind::Video => MediaKind::Video,
                };
                (sk, kind, self.participants[track.owner].id.clone(), track.id.clone())
            })
            .collect();
        let Engine { participants, peers, subs, .. } = self;
        let p = &mut participants[pk];
        let rtc_peer = &mut peers[peer];
        let res = catch_unwind(AssertUnwindSafe(|| {
            let mut api = rtc_peer.rtc.sdp_api();
            // The data channel's m-line goes first and stays: the first m-line tags the
            // BUNDLE group, and Chromium tears the whole transport down (DTLS close) when
            // an offer stops the tagged m-line, which would drop this subscriber when the
            // participant whose tracks came first leaves.
            if !p.has_channel {
                api.add_channel("maxd".into());
                p.has_channel = true;
            }
            for (sk, kind, owner_id, track_id) in to_add {
                let mid = api.add_media(kind, Direction::SendOnly, Some(owner_id), Some(track_id), None);
                subs[sk].mid = Some(mid);
                rtc_peer.mid_sub.insert(mid, sk);
            }
            for mid in p.stop_mids.drain(..) {
                api.stop_media(mid);
            }
            if std::mem::take(&mut p.ice_restart) {
                api.ice_restart(true);
            }
            api.apply()
        }));
        let applied = match res {
            Ok(a) => a,
            Err(_) => {
                self.fail_peer(peer, "making an offer", true);
                return;
            }
        };
        let Some((offer, pending)) = applied else { return };
        self.drain(peer, io);
        self.refresh_ufrag(peer, io);
        let id = self.participants[pk].next_offer_id;
        self.participants[pk].next_offer_id += 1;
        let p = &self.participants[pk];
        let mut mids = Vec::with_capacity(p.subs.len());
        for &sk in &p.subs {
            let sub = &self.subs[sk];
            let track = &self.tracks[sub.track];
            if let Some(mid) = sub.mid {
                mids.push(MidTrack {
                    mid: mid.to_string(),
                    track_id: track.id.clone(),
                    participant_id: self.participants[track.owner].id.clone(),
                });
            }
        }
        let msg = ServerMsg::Offer { sdp: offer.to_sdp_string(), offer_id: id, tracks: mids };
        self.participants[pk].pending_offer = Some(PendingOffer { id, pending, msg: msg.clone() });
        self.send(pk, msg);
    }

    /// After negotiation: the outgoing SSRC and payload type of a subscription.
    fn resolve_sub(&mut self, sk: SubKey) {
        let sub = &self.subs[sk];
        let (Some(mid), None) = (sub.mid, sub.ssrc) else { return };
        let codec = self.tracks[sub.track].codec;
        let Some(peer) = self.peers.get_mut(sub.peer) else { return };
        let ssrc = peer.rtc.direct_api().stream_tx_by_mid(mid, None).map(|s| s.ssrc());
        let pt = pt_for(&peer.rtc, mid, codec);
        let sub = &mut self.subs[sk];
        sub.ssrc = ssrc;
        sub.pt = pt;
        // Forward from now on: the layer is chosen at once, not at the next second.
        self.layers_changed.push(sub.track);
        if pt.is_none() {
            let id = self.tracks[sub.track].id.clone();
            let part = sub.part;
            self.error(part, ErrorCode::BadSdp, format!("your answer accepts no codec for {id} ({})", codec.mime()));
        }
    }
}

