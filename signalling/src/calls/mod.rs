//! Calls in chats: the shell around the pure lifecycle in [`machine`].
//!
//! Each live call is one [`Entry`]: the machine behind an async mutex (so one call's
//! operations, with their storage writes and fan-out, happen one at a time and in
//! order) and a timer task that sleeps until the machine's next deadline. An index
//! (under a plain mutex, never held across an await) says which call each user is in,
//! which calls ring each user and which group call each chat has.
//!
//! Lock order: a call's mutex, then a chat's lock (inside storage). Never the reverse.
//! The protocol is in `docs/calls.md`.

pub mod machine;
mod store;
pub mod turn;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::auth::{Caller, new_id};
use crate::error::{ApiError, ApiResult};
use crate::model::ChatKind;
use crate::push::PushMsg;
use crate::{App, now_ms};
use machine::{Call, CallError, Device, Effect, Kind, Mode, Phase, Settings, UserId};

/// One live call.
pub(crate) struct Entry {
    call: tokio::sync::Mutex<Call>,
    /// Wakes the timer task when deadlines may have changed.
    wake: tokio::sync::Notify,
    /// Unix ms the call started (for clients).
    started_at: i64,
    /// Users whose devices got a ring push (they get a stop push when the ring ends).
    pushed: Mutex<HashSet<UserId>>,
    /// Device sessions that were given an SFU token for this call.
    minted: Mutex<HashSet<Arc<str>>>,
}

#[derive(Default)]
struct Index {
    live: HashMap<i64, Arc<Entry>>,
    /// The call each user is in.
    user_in: HashMap<UserId, i64>,
    /// Calls ringing each user.
    ringing: HashMap<UserId, BTreeSet<i64>>,
    /// The ongoing group call of each chat.
    chat_call: HashMap<i64, i64>,
    /// Calls whose SFU tokens each device session holds (to take a logged-out device
    /// out of their rooms).
    minted: HashMap<Arc<str>, HashSet<i64>>,
}

/// Live calls of this process.
pub struct Calls {
    index: Mutex<Index>,
    /// Origin of the machines' millisecond clock.
    base: tokio::time::Instant,
}

impl Default for Calls {
    fn default() -> Self {
        Calls {
            index: Mutex::default(),
            base: tokio::time::Instant::now(),
        }
    }
}

impl Calls {
    fn now(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn get(&self, id: i64) -> Option<Arc<Entry>> {
        self.index.lock().live.get(&id).cloned()
    }

    /// Live calls.
    pub fn live_count(&self) -> usize {
        self.index.lock().live.len()
    }

    /// Brings the index in line with `c`.
    fn reindex(&self, c: &Call) {
        let mut ix = self.index.lock();
        let live = c.phase != Phase::Ended;
        for &u in &c.involved {
            if live && c.members.contains_key(&u) {
                ix.user_in.insert(u, c.id);
            } else if ix.user_in.get(&u) == Some(&c.id) {
                ix.user_in.remove(&u);
            }
            if live && c.is_ringing(u) {
                ix.ringing.entry(u).or_default().insert(c.id);
            } else if let Some(s) = ix.ringing.get_mut(&u) {
                s.remove(&c.id);
                if s.is_empty() {
                    ix.ringing.remove(&u);
                }
            }
        }
        if c.kind == Kind::Group {
            if live {
                ix.chat_call.insert(c.chat_id, c.id);
            } else if ix.chat_call.get(&c.chat_id) == Some(&c.id) {
                ix.chat_call.remove(&c.chat_id);
            }
        }
        if !live {
            ix.live.remove(&c.id);
        }
    }
}

/// What a client is told about a call.
fn view(c: &Call, e: &Entry) -> Value {
    let state = match c.phase {
        Phase::Ringing => "ringing",
        Phase::Active => "active",
        Phase::Ended => "ended",
    };
    let mut v = json!({
        "id": c.id,
        "chat_id": c.chat_id,
        "kind": c.kind.as_str(),
        "video": c.video,
        "mode": match c.mode { Mode::P2p => "p2p", Mode::Sfu => "sfu" },
        "state": state,
        "caller": c.caller,
        "participants": c.members.keys().collect::<Vec<_>>(),
        "ringing": c.ringing_users().collect::<Vec<_>>(),
        "started_at": e.started_at,
    });
    if let Some(r) = c.ended {
        v["reason"] = json!(r.as_str());
    }
    v
}

/// The SFU room of a call.
pub fn room_of(call_id: i64) -> String {
    format!("call-{call_id}")
}

/// The `sid` of the SFU tokens of one device in one call: revoking it takes that device
/// out of the call's room (the sfu evicts by `sid`) and refuses its tokens.
pub fn call_sid(session: &str, call_id: i64) -> String {
    format!("{session}:call:{call_id}")
}

impl Calls {
    /// A device session was revoked (logged out): its calls' SFU tokens are too, so it
    /// leaves their rooms at once.
    pub fn session_revoked(&self, session: &str, keys: &common::Keys, ttl: Duration) {
        let ids: Vec<i64> = self
            .index
            .lock()
            .minted
            .get(session)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for id in ids {
            keys.revocations()
                .revoke(&call_sid(session, id), token_dead_after(ttl));
        }
    }
}

/// When every SFU token minted now has expired (plus `Keys::verify`'s leeway).
fn token_dead_after(ttl: Duration) -> u64 {
    now_ms() as u64 / 1000 + ttl.as_secs().max(1) + 10
}

fn device(c: &Caller) -> Device {
    Device::new(c.user_id, &c.session_id)
}

impl App {
    fn call_settings(&self) -> Settings {
        Settings {
            ring_ms: self.cfg.ring_timeout.as_millis() as u64,
            grace_ms: self.cfg.call_disconnect_grace.as_millis() as u64,
            p2p: self.cfg.p2p_direct_calls,
        }
    }

    fn arc(&self) -> Arc<App> {
        self.me_weak
            .get()
            .and_then(|w| w.upgrade())
            .expect("the app outlives its requests")
    }

    /// ICE servers for `user`: TURN credentials when TURN is configured.
    pub fn ice_servers(&self, user: UserId) -> Vec<turn::IceServer> {
        if self.cfg.turn_urls.is_empty() || self.cfg.turn_secret.is_empty() {
            return Vec::new();
        }
        let exp = now_ms() as u64 / 1000 + self.cfg.turn_ttl.as_secs().max(1);
        vec![turn::credentials(
            &self.cfg.turn_secret,
            &self.cfg.turn_urls,
            user,
            exp,
        )]
    }

    /// What a device needs to join the call's SFU room: a token for that room only
    /// (publish and subscribe, `call_token_ttl`), and ICE servers.
    fn join_info(&self, call_id: i64, e: &Entry, d: &Device) -> Value {
        let iat = now_ms() as u64 / 1000;
        let room = room_of(call_id);
        e.minted.lock().insert(d.session.clone());
        self.calls
            .index
            .lock()
            .minted
            .entry(d.session.clone())
            .or_default()
            .insert(call_id);
        let token = self.ctx.keys.mint(&common::Claims {
            sub: d.user.to_string(),
            name: None,
            room: Some(room.clone()),
            grants: common::Grants {
                publish: true,
                subscribe: true,
                ..Default::default()
            },
            sid: Some(call_sid(&d.session, call_id)),
            iat,
            exp: iat + self.cfg.call_token_ttl.as_secs().max(1),
        });
        json!({"room": room, "token": token, "expires_in": self.cfg.call_token_ttl.as_secs(),
            "rtc_path": "/rtc"})
    }

    /// The answer to start / accept / join: the call, ICE servers, and for a call on the
    /// SFU the room's token; for a P2P call the device's role.
    fn call_answer(&self, c: &Call, e: &Entry, d: &Device) -> Value {
        let mut v = json!({"call": view(c, e), "ice_servers": self.ice_servers(d.user)});
        if c.phase != Phase::Ended && c.is_member_device(d) {
            match c.mode {
                Mode::Sfu => v["join"] = self.join_info(c.id, e, d),
                Mode::P2p => {
                    v["p2p"] =
                        json!({"role": if d.user == c.caller { "offerer" } else { "answerer" }})
                }
            }
        }
        v
    }

    fn check_call_rate(&self, user: UserId) -> ApiResult<()> {
        self.limits
            .call_invites
            .check(&user)
            .map_err(|retry_after| ApiError::RateLimited { retry_after })
    }

    /// Starts a call from a chat: a dialog calls the other member, a group starts (or
    /// joins) its group call.
    pub async fn start_call(&self, c: &Caller, chat_id: i64, video: bool) -> ApiResult<Value> {
        let (kind, _, _) = self.membership(chat_id, c.user_id).await?;
        let d = device(c);
        match kind {
            ChatKind::Channel => {
                return Err(ApiError::Forbidden(
                    "calls are made from dialogs and groups".into(),
                ));
            }
            ChatKind::Group => {
                let existing = self.calls.index.lock().chat_call.get(&chat_id).copied();
                if let Some(id) = existing {
                    return self.join_call(c, id).await;
                }
            }
            ChatKind::Dialog => {}
        }
        if self.calls.index.lock().user_in.contains_key(&c.user_id) {
            return Err(ApiError::AlreadyInCall);
        }
        self.check_call_rate(c.user_id)?;
        let members = self.members(chat_id).await?;
        let now = self.calls.now();
        let id = new_id();
        let (call, fx) = match kind {
            ChatKind::Dialog => {
                let callee = members
                    .users
                    .iter()
                    .copied()
                    .find(|u| *u != c.user_id)
                    .ok_or(ApiError::BadRequest(
                        "this dialog has nobody to call".into(),
                    ))?;
                let busy = {
                    let ix = self.calls.index.lock();
                    ix.user_in.contains_key(&callee)
                        || ix.ringing.get(&callee).map_or(0, BTreeSet::len)
                            >= self.cfg.max_ringing_per_user.max(1) as usize
                };
                Call::direct(
                    id,
                    chat_id,
                    &d,
                    callee,
                    video,
                    busy,
                    now,
                    self.call_settings(),
                )
            }
            _ => {
                let ring = if members.users.len() <= self.cfg.group_ring_max_members as usize {
                    members
                        .users
                        .iter()
                        .copied()
                        .filter(|u| !members.bots.contains(u))
                        .collect()
                } else {
                    Vec::new()
                };
                Call::group(id, chat_id, &d, video, ring, now, self.call_settings())
            }
        };
        let entry = Arc::new(Entry {
            call: tokio::sync::Mutex::new(call),
            wake: tokio::sync::Notify::new(),
            started_at: now_ms(),
            pushed: Mutex::default(),
            minted: Mutex::default(),
        });
        let mut guard = entry.call.lock().await;
        let raced = {
            let mut ix = self.calls.index.lock();
            // Two starts racing in one group: the second joins the first.
            let other = ix.chat_call.get(&chat_id).copied();
            match other {
                Some(other) if kind == ChatKind::Group => Some(other),
                _ if ix.user_in.contains_key(&c.user_id) => return Err(ApiError::AlreadyInCall),
                _ => {
                    // The caller is claimed with the check: two starts at once, one call.
                    ix.live.insert(id, entry.clone());
                    ix.user_in.insert(c.user_id, id);
                    None
                }
            }
        };
        if let Some(other) = raced {
            drop(guard);
            return Box::pin(self.join_call(c, other)).await;
        }
        self.calls.reindex(&guard);
        let participants: Vec<i64> = guard.members.keys().copied().collect();
        if let Err(e) = self.store_call_started(&guard, &participants).await {
            let fx = guard.end(machine::Reason::Failed, None, now);
            self.apply(&mut guard, &entry, fx).await;
            return Err(e);
        }
        self.metrics.calls.inc();
        self.apply(&mut guard, &entry, fx).await;
        tokio::spawn(timer(Arc::downgrade(&self.arc()), entry.clone()));
        if !self.hub.session_online(d.user, &d.session) {
            let fx = guard.device_lost(&d, false, self.calls.now());
            self.apply(&mut guard, &entry, fx).await;
        }
        Ok(self.call_answer(&guard, &entry, &d))
    }

    /// Runs `f` on live call `id` (whose chat `c` must be able to see), then carries out
    /// its effects. An ended call answers `call_ended`; an unknown one `not_found`.
    async fn with_call<F>(&self, c: &Caller, id: i64, f: F) -> ApiResult<Value>
    where
        F: FnOnce(&mut Call, u64) -> Result<Vec<Effect>, CallError>,
    {
        let Some(entry) = self.calls.get(id) else {
            return Err(self.dead_call(c, id).await);
        };
        let mut call = entry.call.lock().await;
        self.may_see(c.user_id, &call).await?;
        let fx = f(&mut call, self.calls.now())?;
        self.apply(&mut call, &entry, fx).await;
        Ok(self.call_answer(&call, &entry, &device(c)))
    }

    /// Why a call that is not live cannot be acted on.
    async fn dead_call(&self, c: &Caller, id: i64) -> ApiError {
        match self.stored_call(id).await {
            Ok(Some((chat_id, _, _))) => match self.membership(chat_id, c.user_id).await {
                Ok(_) => ApiError::Call(CallError::Ended),
                Err(_) => ApiError::NotFound("call"),
            },
            Ok(None) => ApiError::NotFound("call"),
            Err(e) => e,
        }
    }

    /// Who may see a call: members of a group's chat; the parties and invitees of a 1:1
    /// call. Others get `not_found` (a 1:1) or `not_member` (a group).
    async fn may_see(&self, user: UserId, call: &Call) -> ApiResult<()> {
        match call.kind {
            Kind::Group => self.membership(call.chat_id, user).await.map(|_| ()),
            Kind::Direct if call.involved.contains(&user) => Ok(()),
            Kind::Direct => Err(ApiError::NotFound("call")),
        }
    }

    /// `GET /api/calls/{id}`.
    pub async fn get_call(&self, c: &Caller, id: i64) -> ApiResult<Value> {
        let Some(entry) = self.calls.get(id) else {
            return match self.dead_call(c, id).await {
                ApiError::Call(CallError::Ended) => {
                    let (chat_id, kind, reason) = self
                        .stored_call(id)
                        .await?
                        .ok_or(ApiError::NotFound("call"))?;
                    Ok(
                        json!({"call": {"id": id, "chat_id": chat_id, "kind": kind, "state": "ended", "reason": reason}}),
                    )
                }
                e => Err(e),
            };
        };
        let call = entry.call.lock().await;
        self.may_see(c.user_id, &call).await?;
        Ok(json!({"call": view(&call, &entry)}))
    }

    /// `GET /api/chats/{id}/call`: the chat's ongoing group call, if any.
    pub async fn chat_call(&self, c: &Caller, chat_id: i64) -> ApiResult<Value> {
        self.membership(chat_id, c.user_id).await?;
        let id = self.calls.index.lock().chat_call.get(&chat_id).copied();
        match id.and_then(|id| self.calls.get(id)) {
            Some(e) => {
                let call = e.call.lock().await;
                Ok(json!({"call": view(&call, &e)}))
            }
            None => Ok(json!({"call": null})),
        }
    }

    pub async fn call_received(&self, c: &Caller, id: i64) -> ApiResult<Value> {
        let d = device(c);
        self.with_call(c, id, |call, now| call.received(&d, now))
            .await
    }

    pub async fn accept_call(&self, c: &Caller, id: i64) -> ApiResult<Value> {
        self.enter_call(c, id, false).await
    }

    pub async fn join_call(&self, c: &Caller, id: i64) -> ApiResult<Value> {
        self.enter_call(c, id, true).await
    }

    async fn enter_call(&self, c: &Caller, id: i64, join: bool) -> ApiResult<Value> {
        let d = device(c);
        let d2 = d.clone();
        let calls = &self.calls;
        let v = self
            .with_call(c, id, move |call, now| {
                // Checked and claimed under one lock: two answers of one user to two
                // calls at once cannot both get in.
                let mut ix = calls.index.lock();
                if ix.user_in.get(&d2.user).is_some_and(|other| *other != id) {
                    return Err(CallError::AlreadyInCall);
                }
                let fx = if join {
                    call.join(&d2, now)
                } else {
                    call.accept(&d2, now)
                }?;
                ix.user_in.insert(d2.user, id);
                Ok(fx)
            })
            .await?;
        if !self.hub.session_online(d.user, &d.session) {
            self.device_lost_in(id, &d).await;
        }
        Ok(v)
    }

    pub async fn decline_call(&self, c: &Caller, id: i64, busy: bool) -> ApiResult<Value> {
        let d = device(c);
        self.with_call(c, id, |call, now| call.decline(&d, busy, now))
            .await
    }

    pub async fn hangup_call(&self, c: &Caller, id: i64) -> ApiResult<Value> {
        let d = device(c);
        self.with_call(c, id, |call, now| call.hangup(&d, now))
            .await
    }

    /// A party rings one more person: a contact of theirs (they share a dialog) or, in a
    /// group call, a member of the group.
    pub async fn invite_to_call(&self, c: &Caller, id: i64, user: UserId) -> ApiResult<Value> {
        let entry = self.calls.get(id).ok_or(ApiError::NotFound("call"))?;
        let (kind, chat_id) = {
            let call = entry.call.lock().await;
            self.may_see(c.user_id, &call).await?;
            (call.kind, call.chat_id)
        };
        let allowed = match kind {
            Kind::Group => self.membership(chat_id, user).await.is_ok(),
            Kind::Direct => {
                let key = format!("{}:{}", c.user_id.min(user), c.user_id.max(user));
                sqlx::query_scalar::<_, i64>("SELECT id FROM chats WHERE dialog_key = $1")
                    .bind(&key)
                    .fetch_optional(&self.db.pool)
                    .await?
                    .is_some()
            }
        };
        if !allowed || user == c.user_id {
            return Err(ApiError::Forbidden(
                "you can invite your contacts (a dialog with them), or members of the group".into(),
            ));
        }
        self.check_call_rate(c.user_id)?;
        let d = device(c);
        self.with_call(c, id, |call, now| call.invite(&d, user, now))
            .await
    }

    pub async fn set_call_video(&self, c: &Caller, id: i64, video: bool) -> ApiResult<Value> {
        let d = device(c);
        self.with_call(c, id, |call, _| call.set_video(&d, video))
            .await
    }

    pub async fn call_to_sfu(&self, c: &Caller, id: i64) -> ApiResult<Value> {
        let d = device(c);
        self.with_call(c, id, |call, _| call.to_sfu(&d)).await
    }

    /// Relays a P2P signal (`offer`, `answer`, `candidate` ...) to the other party of a
    /// 1:1 call. Only the devices in the call exchange signals.
    pub async fn call_signal(&self, c: &Caller, id: i64, data: Value) -> ApiResult<()> {
        let entry = self.calls.get(id).ok_or(ApiError::NotFound("call"))?;
        let call = entry.call.lock().await;
        let d = device(c);
        if !call.is_member_device(&d) {
            return Err(ApiError::Call(CallError::NotInCall));
        }
        if call.mode != Mode::P2p || call.phase != Phase::Active {
            return Err(ApiError::Call(CallError::BadState));
        }
        let msg = json!({"type": "call_signal", "call_id": id, "from": c.user_id, "data": data})
            .to_string();
        for (u, m) in &call.members {
            if *u != c.user_id {
                self.hub.send_session(*u, &m.device, &msg);
            }
        }
        Ok(())
    }

    /// `call_incoming` frames for the calls ringing `user` now (sent after `sync`, so a
    /// device woken by a push rings).
    pub(crate) async fn pending_rings(&self, user: UserId) -> Vec<String> {
        let ids: Vec<i64> = self
            .calls
            .index
            .lock()
            .ringing
            .get(&user)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let mut out = Vec::new();
        for id in ids {
            if let Some(e) = self.calls.get(id) {
                let call = e.call.lock().await;
                if call.is_ringing(user) {
                    out.push(self.incoming(&call, &e).to_string());
                }
            }
        }
        out
    }

    fn incoming(&self, c: &Call, e: &Entry) -> Value {
        let left = c.ring_until.saturating_sub(self.calls.now());
        json!({"type": "call_incoming", "call_id": c.id, "chat_id": c.chat_id, "from": c.caller,
            "kind": c.kind.as_str(), "video": c.video, "ring_until": now_ms() + left as i64,
            "call": view(c, e)})
    }

    /// The last connection of device `session` of `user` closed.
    pub(crate) async fn calls_device_gone(&self, user: UserId, session: &str) {
        let d = Device::new(user, session);
        for id in self.calls_of(user) {
            self.device_lost_in(id, &d).await;
        }
    }

    async fn device_lost_in(&self, id: i64, d: &Device) {
        let reachable =
            !self.hub.online_sessions(d.user).is_empty() || self.has_push_target(d.user).await;
        if let Some(entry) = self.calls.get(id) {
            let mut call = entry.call.lock().await;
            let fx = call.device_lost(d, reachable, self.calls.now());
            self.apply(&mut call, &entry, fx).await;
        }
    }

    /// Device `session` of `user` has a connection again.
    pub(crate) async fn calls_device_back(&self, user: UserId, session: &str) {
        let d = Device::new(user, session);
        for id in self.calls_of(user) {
            if let Some(entry) = self.calls.get(id) {
                let mut call = entry.call.lock().await;
                call.device_back(&d);
                entry.wake.notify_one();
            }
        }
    }

    fn calls_of(&self, user: UserId) -> Vec<i64> {
        let ix = self.calls.index.lock();
        let mut v: Vec<i64> = ix.user_in.get(&user).copied().into_iter().collect();
        if let Some(r) = ix.ringing.get(&user) {
            v.extend(r.iter().copied());
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Sends `json` to every device of the call's members.
    fn to_members(&self, c: &Call, json: &str) {
        for (u, m) in &c.members {
            self.hub.send_session(*u, &m.device, json);
        }
    }

    /// Carries out a machine's effects (call lock held): storage, fan-out, push, timer.
    async fn apply(&self, c: &mut Call, e: &Entry, fx: Vec<Effect>) {
        // The index first: whoever is told of a change (an end) may act on it at once.
        self.calls.reindex(c);
        for f in fx {
            match f {
                Effect::Ring(users) => {
                    let inc = self.incoming(c, e).to_string();
                    self.hub.send_ephemeral(&users, inc, None);
                    let left = Duration::from_millis(c.ring_until.saturating_sub(self.calls.now()));
                    for u in users {
                        let targets = self.offline_push_targets(u).await;
                        if targets.is_empty() {
                            continue;
                        }
                        let body = json!({"type": "call_incoming", "call_id": c.id, "chat_id": c.chat_id,
                            "from": c.caller, "kind": c.kind.as_str(), "video": c.video});
                        e.pushed.lock().insert(u);
                        self.arc()
                            .push_to(u, push_msg(c.id, body, left), Some(targets));
                    }
                }
                Effect::Ringing { user } => {
                    let j = json!({"type": "call_ringing", "call_id": c.id, "user_id": user})
                        .to_string();
                    self.to_members(c, &j);
                }
                Effect::StopRing { user, except, why } => {
                    let j = json!({"type": "call_ring_stopped", "call_id": c.id, "reason": why})
                        .to_string();
                    self.hub.send_ephemeral(&[user], j, except.as_deref());
                    if e.pushed.lock().remove(&user) {
                        let body = json!({"type": "call_stop", "call_id": c.id, "reason": why});
                        let ttl = self.cfg.ring_timeout;
                        self.arc().push_to(user, push_msg(c.id, body, ttl), None);
                    }
                }
                Effect::Accepted { device } => {
                    let j = json!({"type": "call_accepted", "call_id": c.id, "by": device.user,
                        "mode": match c.mode { Mode::P2p => "p2p", Mode::Sfu => "sfu" }})
                    .to_string();
                    for (u, m) in &c.members {
                        if *u != device.user {
                            self.hub.send_session(*u, &m.device, &j);
                        }
                    }
                    if let Err(err) = self.store_call_answered(c).await {
                        tracing::warn!(error = %err, "storing a call's answer");
                    }
                }
                Effect::Updated => {
                    let j = json!({"type": "call_updated", "call": view(c, e)}).to_string();
                    match c.kind {
                        Kind::Group => {
                            if let Ok(m) = self.members(c.chat_id).await {
                                self.hub.send_ephemeral(&m.users, j, None);
                            }
                        }
                        Kind::Direct => {
                            let users: Vec<i64> = c.involved.iter().copied().collect();
                            self.hub.send_ephemeral(&users, j, None);
                        }
                    }
                }
                Effect::Replaced { device } => {
                    let j = json!({"type": "call_moved", "call_id": c.id}).to_string();
                    self.hub.send_session(device.user, &device.session, &j);
                }
                Effect::ToSfu => {
                    self.metrics.calls_to_sfu.inc();
                    for (u, m) in &c.members {
                        let d = Device {
                            user: *u,
                            session: m.device.clone(),
                        };
                        let j = json!({"type": "call_mode", "call_id": c.id, "mode": "sfu",
                            "join": self.join_info(c.id, e, &d), "ice_servers": self.ice_servers(*u)})
                        .to_string();
                        self.hub.send_session(*u, &m.device, &j);
                    }
                    if let Err(err) = self.store_call_mode(c).await {
                        tracing::warn!(error = %err, "storing a call's mode");
                    }
                }
                Effect::Ended {
                    reason,
                    by,
                    duration_ms,
                } => {
                    // Committed before anyone is told: a client that hears of the end
                    // finds it in the history.
                    let stored = self
                        .store_call_ended(
                            c.id,
                            c.chat_id,
                            c.kind,
                            c.caller,
                            c.video,
                            reason,
                            by,
                            duration_ms,
                        )
                        .await;
                    if let Err(err) = stored {
                        tracing::warn!(error = %err, "storing a call's end");
                    }
                    let mut j = json!({"type": "call_ended", "call_id": c.id, "chat_id": c.chat_id, "reason": reason});
                    if let Some(b) = by {
                        j["by"] = json!(b);
                    }
                    if let Some(d) = duration_ms {
                        j["duration_ms"] = json!(d);
                    }
                    // A group call's end clears its banner for every member of the chat.
                    let mut users: Vec<i64> = c.involved.iter().copied().collect();
                    if c.kind == Kind::Group {
                        if let Ok(m) = self.members(c.chat_id).await {
                            users.extend(m.users.iter().filter(|u| !c.involved.contains(u)));
                        }
                    }
                    self.hub.send_ephemeral(&users, j.to_string(), None);
                    self.metrics.calls_ended.inc();
                }
            }
        }
        self.calls.reindex(c);
        self.evict_departed(c, e);
        e.wake.notify_one();
    }

    /// Devices that hold SFU tokens for the call but are no longer in it (left, moved,
    /// or the call ended): their call `sid` is revoked, so the sfu takes them out of the
    /// room and refuses their tokens.
    fn evict_departed(&self, c: &Call, e: &Entry) {
        let live: HashSet<&str> = if c.phase == Phase::Ended {
            HashSet::new()
        } else {
            c.members.values().map(|m| &*m.device).collect()
        };
        let gone: Vec<Arc<str>> = {
            let mut minted = e.minted.lock();
            let gone = minted
                .iter()
                .filter(|s| !live.contains(&***s))
                .cloned()
                .collect::<Vec<_>>();
            for g in &gone {
                minted.remove(g);
            }
            gone
        };
        if gone.is_empty() {
            return;
        }
        {
            let mut ix = self.calls.index.lock();
            for g in &gone {
                if let Some(set) = ix.minted.get_mut(g) {
                    set.remove(&c.id);
                    if set.is_empty() {
                        ix.minted.remove(g);
                    }
                }
            }
        }
        for g in gone {
            self.ctx.keys.revocations().revoke(
                &call_sid(&g, c.id),
                token_dead_after(self.cfg.call_token_ttl),
            );
        }
    }
}

fn push_msg(call_id: i64, body: Value, ttl: Duration) -> PushMsg {
    PushMsg {
        body,
        ttl,
        topic: format!("call-{call_id}"),
    }
}

/// Sleeps until the call's next deadline and runs the machine's timeouts; ends with the
/// call (or the app).
async fn timer(app: std::sync::Weak<App>, entry: Arc<Entry>) {
    loop {
        let deadline = {
            let call = entry.call.lock().await;
            if call.phase == Phase::Ended {
                return;
            }
            call.next_deadline()
        };
        let Some(app_now) = app.upgrade() else { return };
        let base = app_now.calls.base;
        drop(app_now);
        match deadline {
            Some(ms) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(base + Duration::from_millis(ms)) => {}
                    _ = entry.wake.notified() => continue,
                }
            }
            None => {
                entry.wake.notified().await;
                continue;
            }
        }
        let Some(app) = app.upgrade() else { return };
        let mut call = entry.call.lock().await;
        let fx = call.on_time(app.calls.now());
        app.apply(&mut call, &entry, fx).await;
    }
}
