//! Media: tracks appearing, packets forwarded to subscribers, keyframe requests,
//! layer choice, speakers and connection quality.

use std::panic::{AssertUnwindSafe, catch_unwind};

use rand::Rng;
use std::time::Instant;

use str0m::media::{KeyframeRequestKind, MediaAdded, MediaKind, Rid};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Ssrc};
use str0m::{Event, IceConnectionState};

use super::ids::{PartKey, PeerKey};
use super::negotiate::pt_codec;
use super::state::{Layer, Link, Track, TrackKey, order_rids};
use super::{Engine, Io};
use crate::forward::{Codec, LayerDecision, Throttle, is_keyframe};
use crate::proto::{ConnQuality, PcKind, Quality, QualityUpdate, ServerMsg, SpeakerInfo, TrackKind};

impl Engine {
    pub(super) fn on_event(&mut self, now: Instant, pk: PeerKey, ev: Event, io: &mut dyn Io) {
        // Media and feedback str0m accepted from the datagram being handled prove its
        // path alive (see `liveness`).
        if let Some((from_pk, source)) = self.input_from {
            if from_pk == pk
                && matches!(
                    ev,
                    Event::RtpPacket(_) | Event::KeyframeRequest(_) | Event::EgressBitrateEstimate(_)
                )
            {
                self.note_media(now, pk, source, io);
            }
        }
        match ev {
            Event::RtpPacket(pkt) => self.on_rtp(now, pk, pkt, io),
            Event::MediaAdded(m) if self.peers[pk].kind == PcKind::Publisher => self.on_media_added(pk, m),
            Event::KeyframeRequest(req) => {
                self.counters.keyframe_requests_received += 1;
                let Some(&sk) = self.peers[pk].mid_sub.get(&req.mid) else { return };
                let sub = &self.subs[sk];
                if let Some(layer) = sub.selector.current() {
                    let t = sub.track;
                    self.request_keyframe(now, t, layer, io);
                }
            }
            Event::EgressBitrateEstimate(str0m::bwe::BweKind::Twcc { estimate, .. }) => {
                let part = self.peers[pk].part;
                self.participants[part].bwe = Some(estimate.as_u64());
            }
            Event::StreamPaused(p) => {
                if let Some(&(t, layer)) = self.peers[pk].ssrc_map.get(&p.ssrc) {
                    if let Some(l) = self.tracks[t].layers.get_mut(layer as usize) {
                        l.active = !p.paused;
                    }
                    self.update_track_targets(now, t, io);
                }
            }
            Event::MediaIngressStats(s) => {
                if let Some(loss) = s.loss {
                    let part = self.peers[pk].part;
                    self.participants[part].loss = loss;
                }
            }
            Event::MediaEgressStats(s) => {
                // Totals per mid: count what is new since the last report.
                let seen = self.peers[pk].egress_nacks.entry(s.mid).or_insert(0);
                self.counters.nacks_received += s.nacks.saturating_sub(*seen);
                *seen = s.nacks;
            }
            Event::IceConnectionStateChange(state) => {
                let part = self.peers[pk].part;
                match state {
                    IceConnectionState::Disconnected => {
                        self.counters.ice_timeouts += 1;
                        self.peers[pk].ice_down_since.get_or_insert(now);
                        // The receive path forgets its addresses (STUN teaches them
                        // again); the peer keeps them for an ICE restart.
                        for a in &self.peers[pk].addrs {
                            io.addr_forgotten(*a);
                        }
                        let kind = self.peers[pk].kind;
                        self.participants[part].span.in_scope(|| {
                            tracing::info!(
                                peer = pk,
                                pc = %kind,
                                "ICE disconnected: no STUN and no authenticated media on any path; \
                                 waiting for an ICE restart until the resume window ends"
                            )
                        });
                        // WHIP/WHEP sessions have no WebSocket: losing ICE starts their
                        // resume window.
                        let p = &mut self.participants[part];
                        if matches!(p.link, Link::Http) {
                            p.link = Link::Detached { since: now, conn: None };
                        }
                    }
                    IceConnectionState::Connected | IceConnectionState::Completed => {
                        self.peers[pk].ice_down_since = None;
                        let p = &mut self.participants[part];
                        if p.http.is_some() {
                            p.link = Link::Http;
                        }
                    }
                    _ => {}
                }
            }
            Event::Connected if self.peers[pk].kind == PcKind::Subscriber => {
                // Media waits for nothing once DTLS is done: choose every subscription's
                // layer now (audio flows at once) and ask for the keyframes video needs.
                let tracks: Vec<TrackKey> = self.peers[pk].mid_sub.values().map(|&sk| self.subs[sk].track).collect();
                self.layers_changed.extend(tracks);
            }
            Event::Closed => self.fail_peer(pk, "closed by the remote (DTLS close or SCTP lost)", false),
            _ => {}
        }
    }

    fn on_media_added(&mut self, pk: PeerKey, m: MediaAdded) {
        if self.peers[pk].mid_track.contains_key(&m.mid) {
            return;
        }
        let part = self.peers[pk].part;
        let video = m.kind == MediaKind::Video;
        let (source, name) = self.declared_source(part, &m.mid, video);
        if !self.participants[part].grants.may_publish(source) {
            return;
        }
        let rids: Vec<String> = m
            .simulcast
            .as_ref()
            .map(|s| {
                let layers = if s.recv.is_empty() { &s.send } else { &s.recv };
                layers.iter().map(|l| l.rid.to_string()).collect()
            })
            .unwrap_or_default();
        let layers: Vec<Layer> = if rids.is_empty() {
            vec![Layer { rid: None, bytes: 0, bitrate: 0, last_packet: None, active: false }]
        } else {
            order_rids(&rids)
                .into_iter()
                .take(3)
                .map(|r| Layer { rid: Some(Rid::from(r.as_str())), bytes: 0, bitrate: 0, last_packet: None, active: false })
                .collect()
        };
        // Codec from the first payload type the publisher offered for this media.
        let rtc = &self.peers[pk].rtc;
        let (codec, clock_rate) = rtc
            .media(m.mid)
            .and_then(|md| md.remote_pts().iter().find_map(|&pt| pt_codec(rtc, pt)))
            .unwrap_or((if video { Codec::Vp8 } else { Codec::Opus }, if video { 90_000 } else { 48_000 }));
        let id = {
            let b: [u8; 6] = self.rng.random();
            format!("TR_{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
        };
        let n = layers.len();
        let span = tracing::info_span!(parent: &self.participants[part].span, "track", track = %id);
        let t = self.tracks.insert(Track {
            span,
            id: id.clone(),
            owner: part,
            peer: pk,
            mid: m.mid,
            kind: if video { TrackKind::Video } else { TrackKind::Audio },
            source,
            name,
            codec,
            clock_rate,
            layers,
            muted: false,
            subs: Vec::new(),
            throttles: (0..n).map(|_| Throttle::new(self.cfg.keyframe_interval)).collect(),
            used_qualities: Vec::new(),
        });
        self.track_by_id.insert(id, t);
        self.peers[pk].mid_track.insert(m.mid, t);
        self.participants[part].tracks.push(t);
        let info = self.tracks[t].info(&self.participants[part].id);
        self.tracks[t].span.in_scope(|| tracing::info!(kind = %info.kind, codec = %info.codec, layers = n, "track published"));
        let room = self.participants[part].room.clone();
        let msg = ServerMsg::TrackPublished { track: info };
        self.send(part, msg.clone());
        self.broadcast(&room, Some(part), &msg);
        let auto: Vec<PartKey> = self.rooms[&room]
            .participants
            .iter()
            .copied()
            .filter(|&k| k != part && self.participants[k].auto_subscribe)
            .collect();
        for k in &auto {
            self.add_sub(*k, t);
        }
        self.pending_reneg.extend(auto);
        let wheps = self.rooms[&room].participants.iter().copied().filter(|&k| {
            self.participants[k].http.as_ref().is_some_and(|h| h.whep.is_some())
        });
        self.whep_refill.extend(wheps);
    }

    /// Which track and layer an incoming SSRC carries, learned on its first packet.
    fn classify(&mut self, pk: PeerKey, ssrc: Ssrc) -> Option<(TrackKey, u8)> {
        if let Some(&v) = self.peers[pk].ssrc_map.get(&ssrc) {
            return Some(v);
        }
        let peer = &mut self.peers[pk];
        let (mid, rid) = {
            let mut api = peer.rtc.direct_api();
            let rx = api.stream_rx(&ssrc)?;
            (rx.mid(), rx.rid())
        };
        let &t = peer.mid_track.get(&mid)?;
        let track = &self.tracks[t];
        let layer = match rid {
            Some(r) => track.layers.iter().position(|l| l.rid == Some(r))?,
            None => 0,
        };
        self.peers[pk].ssrc_map.insert(ssrc, (t, layer as u8));
        Some((t, layer as u8))
    }

    fn on_rtp(&mut self, now: Instant, pk: PeerKey, pkt: RtpPacket, io: &mut dyn Io) {
        let Some((t, layer)) = self.classify(pk, pkt.header.ssrc) else {
            return;
        };
        let layer = layer as usize;
        let track = &mut self.tracks[t];
        if let Some(l) = track.layers.get_mut(layer) {
            l.bytes += pkt.payload.len() as u64;
            l.last_packet = Some(now);
            if !l.active {
                l.active = true;
                self.layers_changed.push(t);
            }
        }
        if track.muted || pkt.payload.is_empty() {
            return;
        }
        let codec = track.codec;
        let video = codec.is_video();
        if let (false, Some(level)) = (video, pkt.header.ext_vals.audio_level) {
            let owner = track.owner;
            let room = &self.participants[owner].room;
            if let Some(r) = self.rooms.get_mut(room) {
                r.speakers.observe(&owner, level);
            }
        }
        let key = video && is_keyframe(codec, &pkt.payload);
        let ext = ExtensionValues {
            audio_level: pkt.header.ext_vals.audio_level,
            voice_activity: pkt.header.ext_vals.voice_activity,
            video_orientation: pkt.header.ext_vals.video_orientation,
            ..Default::default()
        };
        let src = *pkt.header.ssrc;
        let seq = *pkt.seq_no;
        let ts = pkt.header.timestamp;
        let marker = pkt.header.marker;

        let mut subs = std::mem::take(&mut self.scratch_subs);
        subs.clear();
        subs.extend_from_slice(&self.tracks[t].subs);
        for &sk in &subs {
            let Some(sub) = self.subs.get_mut(sk) else { continue };
            let (Some(out_ssrc), Some(pt)) = (sub.ssrc, sub.pt) else { continue };
            match sub.selector.on_packet(layer, key || !video) {
                LayerDecision::Drop => {
                    self.counters.drop_layer += 1;
                    continue;
                }
                LayerDecision::Forward { switched } => {
                    if switched {
                        sub.rewriter.rebase();
                        self.tracks[t].span.in_scope(|| tracing::debug!(layer, subscription = sk, "layer switched at a keyframe"));
                    }
                }
            }
            let Some(rw) = sub.rewriter.rewrite(src, seq, ts, now) else { continue };
            let peer_key = sub.peer;
            let Some(peer) = self.peers.get_mut(peer_key) else { continue };
            if peer.failed {
                continue;
            }
            let payload = pkt.payload.clone();
            let write = RtpWrite::new(pt, rw.seq.into(), rw.ts, pkt.timestamp, payload)
                .marker(marker)
                .ext_vals(ext.clone())
                .nackable(video);
            let ok = catch_unwind(AssertUnwindSafe(|| {
                let mut api = peer.rtc.direct_api();
                match api.stream_tx(&out_ssrc) {
                    Some(tx) => {
                        tx.write_rtp(write);
                        true
                    }
                    None => false,
                }
            }));
            match ok {
                Ok(true) => {
                    self.counters.rtp_forwarded += 1;
                    self.forwarded_in_input += 1;
                    // str0m releases queued RTP on time input: send it now, not on the
                    // worker's next turn.
                    self.drain(peer_key, io);
                    self.peer_input(peer_key, str0m::Input::Timeout(now));
                    self.drain(peer_key, io);
                }
                Ok(false) => {}
                Err(_) => self.fail_peer(peer_key, "writing RTP", true),
            }
        }
        self.scratch_subs = subs;
    }

    /// Asks the publisher of `t` for a keyframe on `layer`, at most once per interval.
    pub(super) fn request_keyframe(&mut self, now: Instant, t: TrackKey, layer: usize, io: &mut dyn Io) {
        let Some(track) = self.tracks.get_mut(t) else { return };
        if !track.codec.is_video() {
            return;
        }
        let Some(th) = track.throttles.get_mut(layer) else { return };
        if !th.allow(now) {
            return;
        }
        let rid = track.layers.get(layer).and_then(|l| l.rid);
        let (mid, pk) = (track.mid, track.peer);
        let Some(peer) = self.peers.get_mut(pk) else { return };
        let ok = catch_unwind(AssertUnwindSafe(|| {
            let mut api = peer.rtc.direct_api();
            match api.stream_rx_by_mid(mid, rid) {
                Some(rx) => {
                    rx.request_keyframe(KeyframeRequestKind::Pli);
                    true
                }
                None => false,
            }
        }));
        if matches!(ok, Ok(true)) {
            self.counters.plis_sent += 1;
            self.drain(pk, io);
        }
    }

    /// Recomputes the target layer of every subscriber of `t` and asks for the keyframes
    /// that pending switches need.
    pub(super) fn update_track_targets(&mut self, now: Instant, t: TrackKey, io: &mut dyn Io) {
        let Some(track) = self.tracks.get(t) else { return };
        let active = track.active_layers();
        let rates = track.bitrates();
        let video = track.codec.is_video();
        let mut want = [false; 3];
        for &sk in &track.subs.clone() {
            let sub = &mut self.subs[sk];
            let part = &self.participants[sub.part];
            let budget = if video {
                let videos = part.subs.iter().filter(|&&s| self.tracks[self.subs[s].track].codec.is_video()).count().max(1);
                part.bwe.map(|b| b / videos as u64)
            } else {
                None
            };
            let sub = &mut self.subs[sk];
            sub.selector.update_target(&active, &rates, budget);
            if let Some(l) = sub.selector.wants_keyframe() {
                // A keyframe is useful once the subscription is negotiated and its
                // connection can carry it (DTLS done); `Event::Connected` asks again.
                let ready = self.peers.get(sub.peer).is_some_and(|p| p.rtc.is_connected());
                if sub.ssrc.is_some() && ready {
                    want[l.min(2)] = true;
                }
            }
        }
        for (l, w) in want.into_iter().enumerate() {
            if w && active[l] {
                self.request_keyframe(now, t, l, io);
            }
        }
    }

    pub(super) fn set_quality(&mut self, now: Instant, sk: super::state::SubKey, q: Quality, paused: bool, io: &mut dyn Io) {
        let sub = &mut self.subs[sk];
        let was_paused = sub.paused;
        sub.max_quality = q;
        sub.paused = paused;
        sub.selector.set_request(q.index(), paused);
        if was_paused && !paused {
            sub.rewriter.rebase();
        }
        let t = sub.track;
        self.update_track_targets(now, t, io);
    }

    pub(super) fn set_muted(&mut self, now: Instant, t: TrackKey, muted: bool, io: &mut dyn Io) {
        let track = &mut self.tracks[t];
        if track.muted == muted {
            return;
        }
        track.muted = muted;
        track.span.in_scope(|| tracing::debug!(muted, "mute changed"));
        let owner = track.owner;
        let msg = ServerMsg::TrackMuted {
            track_id: track.id.clone(),
            participant_id: self.participants[owner].id.clone(),
            muted,
        };
        if !muted {
            for &sk in &track.subs {
                self.subs[sk].rewriter.rebase();
            }
        }
        let room = self.participants[owner].room.clone();
        self.broadcast(&room, None, &msg);
        if !muted {
            self.update_track_targets(now, t, io);
        }
    }

    /// Ends a published track: subscribers lose it (renegotiated), the room is told.
    pub(super) fn unpublish(&mut self, t: TrackKey, io: &mut dyn Io) {
        let Some(track) = self.tracks.try_remove(t) else { return };
        track.span.in_scope(|| tracing::info!(subscribers = track.subs.len(), "track unpublished"));
        self.track_by_id.remove(&track.id);
        let mut touched = Vec::new();
        for sk in track.subs.iter().copied() {
            if let Some(s) = self.subs.get(sk) {
                touched.push(s.part);
            }
            self.remove_sub(sk);
        }
        if let Some(peer) = self.peers.get_mut(track.peer) {
            peer.mid_track.remove(&track.mid);
            peer.ssrc_map.retain(|_, v| v.0 != t);
        }
        if let Some(p) = self.participants.get_mut(track.owner) {
            p.tracks.retain(|&x| x != t);
            let pid = p.id.clone();
            let room = p.room.clone();
            self.broadcast(&room, None, &ServerMsg::TrackUnpublished { track_id: track.id.clone(), participant_id: pid });
        }
        for part in touched {
            self.renegotiate(part, io);
        }
    }

    /// Every 200 ms: active speakers, pending renegotiations, layer changes.
    pub(super) fn tick(&mut self, now: Instant, io: &mut dyn Io) {
        let mut changed = Vec::new();
        for (name, room) in self.rooms.iter_mut() {
            if let Some(list) = room.speakers.tick() {
                changed.push((name.clone(), list));
            }
        }
        for (room, list) in changed {
            let speakers = list
                .into_iter()
                .filter_map(|(k, level)| {
                    self.participants.get(k).map(|p| SpeakerInfo { participant_id: p.id.clone(), level })
                })
                .collect();
            self.broadcast(&room, None, &ServerMsg::Speakers { speakers });
        }
        self.flush_pending(now, io);
    }

    /// Renegotiations and layer updates collected while handling packets.
    pub(super) fn flush_pending(&mut self, now: Instant, io: &mut dyn Io) {
        let mut parts = std::mem::take(&mut self.pending_reneg);
        parts.sort_unstable();
        parts.dedup();
        for pk in parts {
            if self.participants.contains(pk) {
                self.renegotiate(pk, io);
            }
        }
        let mut wheps = std::mem::take(&mut self.whep_refill);
        wheps.sort_unstable();
        wheps.dedup();
        for pk in wheps {
            self.whep_fill(now, pk, io);
        }
        let mut ts = std::mem::take(&mut self.layers_changed);
        ts.sort_unstable();
        ts.dedup();
        for t in ts {
            self.update_track_targets(now, t, io);
        }
    }

    /// Once a second: layer bitrates and activity, targets, subscribed qualities,
    /// connection quality.
    pub(super) fn media_second(&mut self, now: Instant, io: &mut dyn Io) {
        let keys: Vec<TrackKey> = self.tracks.iter().map(|(k, _)| k).collect();
        for t in keys {
            let track = &mut self.tracks[t];
            for l in track.layers.iter_mut() {
                l.bitrate = l.bytes * 8;
                l.bytes = 0;
                l.active = l.last_packet.is_some_and(|at| now.saturating_duration_since(at).as_millis() < 1500);
            }
            self.update_track_targets(now, t, io);
            let track = &self.tracks[t];
            if track.layers.len() > 1 {
                let mut used: Vec<Quality> = track
                    .subs
                    .iter()
                    .filter_map(|&s| {
                        let sel = &self.subs[s].selector;
                        sel.target().or(sel.current()).map(Quality::from_index)
                    })
                    .collect();
                used.sort();
                used.dedup();
                if used != track.used_qualities {
                    let msg = ServerMsg::SubscribedQuality { track_id: track.id.clone(), qualities: used.clone() };
                    let owner = track.owner;
                    self.tracks[t].used_qualities = used;
                    self.send(owner, msg);
                }
            }
        }
        // Connection quality every 2 s, per room.
        if now.duration_since(self.started).as_secs().is_multiple_of(2) {
            let rooms: Vec<(String, Vec<PartKey>)> =
                self.rooms.iter().map(|(n, r)| (n.clone(), r.participants.clone())).collect();
            for (room, members) in rooms {
                let updates: Vec<QualityUpdate> = members
                    .iter()
                    .filter(|&&k| !self.is_hidden(k))
                    .map(|&k| {
                        let p = &self.participants[k];
                        let quality = if p.publisher.is_some_and(|pk| self.peers.get(pk).is_none_or(|x| x.failed)) {
                            ConnQuality::Lost
                        } else if p.loss > 0.05 {
                            ConnQuality::Poor
                        } else if p.loss > 0.01 {
                            ConnQuality::Good
                        } else {
                            ConnQuality::Excellent
                        };
                        QualityUpdate { participant_id: p.id.clone(), quality, loss: p.loss }
                    })
                    .collect();
                if !updates.is_empty() {
                    self.broadcast(&room, None, &ServerMsg::ConnectionQuality { updates });
                }
            }
        }
    }
}
