//! Sessions: join, resume, leave, and the client messages that are not SDP.

use std::collections::HashMap;
use std::time::Instant;

use common::token::Source;
use rand::Rng;

use super::ids::{ConnId, PartKey};
use super::state::{HttpSession, Link, Participant, Room, SignalTx};
use super::{Engine, Io};
use crate::forward::SpeakerDetector;
use crate::metrics::LeaveReason;
use crate::proto::{ClientMsg, ErrorCode, ParticipantInfo, PcKind, ServerMsg};

fn random_id(rng: &mut impl Rng, prefix: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut s = String::with_capacity(prefix.len() + len);
    s.push_str(prefix);
    for _ in 0..len {
        s.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    s
}

/// Why a participant could not be admitted.
pub(super) enum Refusal {
    NoRoom,
    Full(usize),
}

impl Engine {
    /// WHEP viewers are not shown to the room.
    pub(super) fn is_hidden(&self, pk: PartKey) -> bool {
        self.participants.get(pk).and_then(|p| p.http.as_ref()).is_some_and(|h| h.whep.is_some())
    }

    pub(super) fn participant_info(&self, pk: PartKey) -> ParticipantInfo {
        let p = &self.participants[pk];
        ParticipantInfo {
            id: p.id.clone(),
            identity: p.identity.clone(),
            name: p.name.clone(),
            tracks: p.tracks.iter().map(|&t| self.tracks[t].info(&p.id)).collect(),
        }
    }

    fn joined_msg(&self, pk: PartKey, resumed: bool) -> ServerMsg {
        let p = &self.participants[pk];
        let others = self.rooms[&p.room]
            .participants
            .iter()
            .filter(|&&k| k != pk && !self.is_hidden(k))
            .map(|&k| self.participant_info(k))
            .collect();
        ServerMsg::Joined {
            room: p.room.clone(),
            participant: self.participant_info(pk),
            session_id: p.session_id.clone(),
            resume_window_secs: self.cfg.resume_window.as_secs(),
            participants: others,
            resumed,
        }
    }

    /// Admits a participant into the token's room: replaces an older session of the
    /// same identity, refuses when the room is full, makes the room on first use.
    pub(super) fn admit(
        &mut self,
        now: Instant,
        claims: &common::Claims,
        conn: Option<(ConnId, SignalTx)>,
        auto_subscribe: bool,
        http: Option<HttpSession>,
        io: &mut dyn Io,
    ) -> Result<PartKey, Refusal> {
        let Some(room_name) = claims.room.clone() else {
            return Err(Refusal::NoRoom);
        };
        // The same identity joining again replaces its old session.
        let existing = self.rooms.get(&room_name).and_then(|r| {
            r.participants.iter().copied().find(|&k| self.participants[k].identity == claims.sub)
        });
        if let Some(old) = existing {
            self.remove_participant(now, old, LeaveReason::Replaced, true, io);
        }
        let count = self.rooms.get(&room_name).map_or(0, |r| r.participants.len());
        if count >= self.cfg.max_participants {
            return Err(Refusal::Full(self.cfg.max_participants));
        }
        let room = self.rooms.entry(room_name.clone()).or_insert_with(|| {
            let span = tracing::info_span!(parent: None, "room", room = %room_name);
            span.in_scope(|| tracing::info!("room created"));
            Room {
                span,
                participants: Vec::new(),
                empty_since: None,
                speakers: SpeakerDetector::default(),
            }
        });
        room.empty_since = None;
        let room_span = room.span.clone();
        let session_id = {
            let b: [u8; 16] = self.rng.random();
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        };
        let http_kind = http.as_ref().map(|h| if h.whep.is_some() { "whep" } else { "whip" });
        let id = random_id(&mut self.rng, "PA_", 10);
        let span = tracing::info_span!(parent: &room_span, "participant", participant = %id);
        let pk = self.participants.insert(Participant {
            span,
            id,
            identity: claims.sub.clone(),
            name: claims.name.clone().unwrap_or_else(|| claims.sub.clone()),
            room: room_name.clone(),
            grants: claims.grants.clone(),
            sid: claims.sid.clone(),
            session_id: session_id.clone(),
            // Until a WebSocket or media attaches, the resume window runs.
            link: Link::Detached { since: now, conn: None },
            publisher: None,
            subscriber: None,
            tracks: Vec::new(),
            subs: Vec::new(),
            auto_subscribe,
            publish_meta: HashMap::new(),
            next_offer_id: 1,
            pending_offer: None,
            offer_again: false,
            ice_restart: false,
            has_channel: false,
            stop_mids: Vec::new(),
            bwe: None,
            loss: 0.0,
            http,
        });
        self.rooms.get_mut(&room_name).expect("room exists").participants.push(pk);
        self.sessions.insert(session_id, pk);
        if let Some((c, tx)) = conn {
            self.conns.insert(c, pk);
            self.participants[pk].link = Link::Ws { conn: c, tx };
        }
        self.participants[pk].span.in_scope(|| tracing::info!(via = http_kind.unwrap_or("rtc"), "joined"));
        Ok(pk)
    }

    pub(super) fn join(
        &mut self,
        now: Instant,
        conn: ConnId,
        claims: common::Claims,
        tx: SignalTx,
        auto_subscribe: bool,
        io: &mut dyn Io,
    ) {
        let pk = match self.admit(now, &claims, Some((conn, tx.clone())), auto_subscribe, None, io) {
            Ok(pk) => pk,
            Err(Refusal::NoRoom) => {
                let _ = tx.try_send(ServerMsg::Left { reason: "token names no room".into() });
                return;
            }
            Err(Refusal::Full(max)) => {
                let _ = tx.try_send(ServerMsg::Error {
                    code: ErrorCode::RoomFull,
                    message: format!("room is full ({max} participants)"),
                });
                let _ = tx.try_send(ServerMsg::Left { reason: "room full".into() });
                return;
            }
        };
        let room_name = self.participants[pk].room.clone();
        let joined = self.joined_msg(pk, false);
        self.send(pk, joined);
        let info = self.participant_info(pk);
        self.broadcast(&room_name, Some(pk), &ServerMsg::ParticipantJoined { participant: info });

        if claims.grants.subscribe {
            let peer = self.new_peer(now, pk, PcKind::Subscriber, io);
            self.participants[pk].subscriber = Some(peer);
            if auto_subscribe {
                let tracks: Vec<_> = self.rooms[&room_name]
                    .participants
                    .iter()
                    .filter(|&&k| k != pk)
                    .flat_map(|&k| self.participants[k].tracks.clone())
                    .collect();
                for t in tracks {
                    self.add_sub(pk, t);
                }
            }
            self.renegotiate(pk, io);
        }
    }

    pub(super) fn resume(&mut self, conn: ConnId, claims: common::Claims, tx: SignalTx, session_id: &str) {
        let found = self.sessions.get(session_id).copied().filter(|&pk| {
            let p = &self.participants[pk];
            p.identity == claims.sub && claims.room.as_deref() == Some(p.room.as_str())
        });
        let Some(pk) = found else {
            let _ = tx.try_send(ServerMsg::Error {
                code: ErrorCode::NotFound,
                message: "no such session to resume (expired, or another identity): send `join`".into(),
            });
            return;
        };
        let p = &mut self.participants[pk];
        // The old WebSocket (if still open) loses its queue and closes; its messages no
        // longer count.
        if let Some(old) = p.link.conn() {
            self.conns.remove(&old);
        }
        p.link = Link::Ws { conn, tx };
        self.conns.insert(conn, pk);
        self.participants[pk].span.in_scope(|| tracing::info!("resumed"));
        let joined = self.joined_msg(pk, true);
        self.send(pk, joined);
        if let Some(msg) = self.participants[pk].pending_offer.as_ref().map(|o| o.msg.clone()) {
            self.send(pk, msg);
        }
    }

    /// The WebSocket `conn` is gone. If its participant was attached to it, the resume
    /// window starts now; if the engine had already detached it, the window runs already.
    pub(super) fn conn_closed(&mut self, now: Instant, conn: ConnId) {
        let Some(pk) = self.conns.remove(&conn) else { return };
        let p = &mut self.participants[pk];
        match &mut p.link {
            Link::Ws { conn: c, .. } if *c == conn => {
                p.link = Link::Detached { since: now, conn: None };
                p.span.in_scope(|| tracing::info!("signalling connection lost; session kept for resume"));
            }
            Link::Detached { conn: c, .. } if *c == Some(conn) => *c = None,
            _ => {}
        }
    }

    /// Detaches a participant's WebSocket from the engine's side (the client does not
    /// read, or is gone): its queue is dropped, so the connection closes, and the resume
    /// window starts now. The connection stays known until it closes, so a `leave` it
    /// sent meanwhile still removes the participant.
    pub(super) fn detach(&mut self, pk: PartKey, why: &str) {
        let now = self.now;
        let Some(p) = self.participants.get_mut(pk) else { return };
        if let Link::Ws { conn, .. } = p.link {
            p.link = Link::Detached { since: now, conn: Some(conn) };
            p.span.in_scope(|| tracing::info!("{why}; session kept for resume"));
        }
    }

    pub(super) fn client_msg(&mut self, now: Instant, pk: PartKey, msg: ClientMsg, io: &mut dyn Io) {
        // Everything logged while handling this message is under room > participant.
        let span = self.participants[pk].span.clone();
        let _entered = span.enter();
        match msg {
            ClientMsg::Join { .. } | ClientMsg::Resume { .. } => {
                self.error(pk, ErrorCode::BadState, "already in the room");
            }
            ClientMsg::Offer { sdp, tracks } => self.publisher_offer(now, pk, &sdp, tracks, io),
            ClientMsg::Answer { sdp, offer_id } => self.subscriber_answer(pk, &sdp, offer_id, io),
            ClientMsg::Trickle { pc, candidate } => self.trickle(pk, pc, &candidate, io),
            ClientMsg::Subscribe { track_ids } => {
                if !self.participants[pk].grants.subscribe {
                    return self.error(pk, ErrorCode::NotAllowed, "token does not grant subscribe");
                }
                for id in track_ids {
                    match self.find_track(pk, &id) {
                        Some(t) if self.tracks[t].owner != pk => self.add_sub(pk, t),
                        Some(_) => self.error(pk, ErrorCode::BadState, format!("{id} is your own track")),
                        None => self.error(pk, ErrorCode::NotFound, format!("no track {id} in this room")),
                    }
                }
                self.renegotiate(pk, io);
            }
            ClientMsg::Unsubscribe { track_ids } => {
                for id in track_ids {
                    let sub = self.find_track(pk, &id).and_then(|t| self.sub_of(pk, t));
                    match sub {
                        Some(s) => self.remove_sub(s),
                        None => self.error(pk, ErrorCode::NotFound, format!("not subscribed to {id}")),
                    }
                }
                self.renegotiate(pk, io);
            }
            ClientMsg::SetQuality { track_id, max_quality, paused } => {
                match self.find_track(pk, &track_id).and_then(|t| self.sub_of(pk, t)) {
                    Some(s) => self.set_quality(now, s, max_quality, paused, io),
                    None => self.error(pk, ErrorCode::NotFound, format!("not subscribed to {track_id}")),
                }
            }
            ClientMsg::Mute { track_id, muted } => match self.own_track(pk, &track_id) {
                Some(t) => self.set_muted(now, t, muted, io),
                None => self.error(pk, ErrorCode::NotFound, format!("you publish no track {track_id}")),
            },
            ClientMsg::Unpublish { track_id } => match self.own_track(pk, &track_id) {
                Some(t) => self.unpublish(t, io),
                None => self.error(pk, ErrorCode::NotFound, format!("you publish no track {track_id}")),
            },
            ClientMsg::IceRestart => {
                if self.participants[pk].subscriber.is_none() {
                    return self.error(pk, ErrorCode::BadState, "no subscriber connection");
                }
                self.participants[pk].ice_restart = true;
                self.renegotiate(pk, io);
            }
            ClientMsg::Ping => self.send(pk, ServerMsg::Pong),
            ClientMsg::Leave => {
                self.remove_participant(now, pk, LeaveReason::Left, true, io);
            }
        }
    }

    fn find_track(&self, pk: PartKey, id: &str) -> Option<super::state::TrackKey> {
        let t = *self.track_by_id.get(id)?;
        let owner = self.tracks[t].owner;
        (self.participants[owner].room == self.participants[pk].room).then_some(t)
    }

    fn own_track(&self, pk: PartKey, id: &str) -> Option<super::state::TrackKey> {
        self.track_by_id.get(id).copied().filter(|&t| self.tracks[t].owner == pk)
    }

    fn sub_of(&self, pk: PartKey, t: super::state::TrackKey) -> Option<super::state::SubKey> {
        self.participants[pk].subs.iter().copied().find(|&s| self.subs[s].track == t)
    }

    /// Removes a participant: its subscriptions, its tracks (telling subscribers), its
    /// peers; tells the room. `notify` sends `left` to the participant itself.
    pub(super) fn remove_participant(
        &mut self,
        now: Instant,
        pk: PartKey,
        why: LeaveReason,
        notify: bool,
        io: &mut dyn Io,
    ) {
        if !self.participants.contains(pk) {
            return;
        }
        self.counters.left[LeaveReason::ALL.iter().position(|&r| r == why).expect("listed")] += 1;
        let reason = why.text();
        for s in self.participants[pk].subs.clone() {
            self.remove_sub(s);
        }
        for t in self.participants[pk].tracks.clone() {
            self.unpublish(t, io);
        }
        if notify {
            self.send(pk, ServerMsg::Left { reason: reason.to_string() });
        }
        let hidden = self.is_hidden(pk);
        let p = self.participants.remove(pk);
        p.span.in_scope(|| tracing::info!(reason = why.label(), "left: {reason}"));
        if let Some(h) = &p.http {
            self.resources.remove(&h.resource);
        }
        for peer in [p.publisher, p.subscriber].into_iter().flatten() {
            self.remove_peer(peer, io);
        }
        self.sessions.remove(&p.session_id);
        if let Some(c) = p.link.conn() {
            self.conns.remove(&c);
        }
        if let Some(room) = self.rooms.get_mut(&p.room) {
            room.participants.retain(|&k| k != pk);
            room.speakers.remove(&pk);
            if room.participants.is_empty() {
                room.empty_since = Some(now);
            }
        }
        if !hidden {
            self.broadcast(
                &p.room,
                None,
                &ServerMsg::ParticipantLeft { participant_id: p.id.clone(), identity: p.identity.clone() },
            );
        }
    }

    /// Once a second: sessions past their resume window leave; empty rooms past their
    /// grace period close.
    pub(super) fn sessions_second(&mut self, now: Instant, io: &mut dyn Io) {
        let window = self.cfg.resume_window;
        let expired: Vec<PartKey> = self
            .participants
            .iter()
            .filter(|(_, p)| p.link.detached_since().is_some_and(|t| now.saturating_duration_since(t) >= window))
            .map(|(k, _)| k)
            .collect();
        for pk in expired {
            self.remove_participant(now, pk, LeaveReason::ResumeWindowExpired, false, io);
        }
        // A connection whose ICE stayed down for the window is not coming back: the
        // participant is told and removed (its WebSocket may still be open).
        let media_gone: Vec<PartKey> = self
            .peers
            .iter()
            .filter(|(_, peer)| peer.ice_down_since.is_some_and(|t| now.saturating_duration_since(t) >= window))
            .map(|(_, peer)| peer.part)
            .collect();
        for pk in media_gone {
            self.remove_participant(now, pk, LeaveReason::MediaFailed, true, io);
        }
        let grace = self.cfg.empty_room_grace;
        self.rooms.retain(|name, r| {
            let keep = r.empty_since.is_none_or(|t| now.saturating_duration_since(t) < grace)
                || !io.may_close_room(name);
            if !keep {
                r.span.in_scope(|| tracing::info!("room closed"));
            }
            keep
        });
    }

    /// The source a publisher declared for `mid`, else the usual one for its kind.
    pub(super) fn declared_source(&self, pk: PartKey, mid: &str, video: bool) -> (Source, Option<String>) {
        match self.participants[pk].publish_meta.get(mid) {
            Some(m) => (m.source, m.name.clone()),
            None if video => (Source::Camera, None),
            None => (Source::Microphone, None),
        }
    }
}
