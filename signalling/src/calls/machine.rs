//! The call lifecycle as pure logic: inputs (what a device did, or that time passed) go
//! in with the time they happen at, effects come out. No I/O, no clock, no tasks: the
//! shell ([`super`]) stores, fans out, pushes and arms one timer at
//! [`Call::next_deadline`]. Tested here on a virtual clock (plain milliseconds).
//!
//! Modelled on Telegram's `phone.requestCall` / `receivedCall` / `acceptCall` /
//! `discardCall` (discard reasons missed, busy, hangup, disconnect), Matrix's `m.call.*`
//! (one device answers, the others learn it was answered elsewhere) and MatrixRTC for
//! group calls (ring small rooms, notify large ones; the call lives while anyone is in it).
//!
//! A **device** is one login session of a user. A user is in a call through exactly one
//! device; joining from another device moves them there.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;

pub type UserId = i64;

/// One device (login session) of a user.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Device {
    pub user: UserId,
    pub session: Arc<str>,
}

impl Device {
    pub fn new(user: UserId, session: &str) -> Device {
        Device {
            user,
            session: session.into(),
        }
    }
}

/// 1:1 call from a dialog, or a call bound to a group chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Direct,
    Group,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Group => "group",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Invited; nobody but the caller is in.
    Ringing,
    /// Two or more are in (a group call is active from its start).
    Active,
    Ended,
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Someone hung up an active call (a group call: the last one left).
    Hangup,
    /// The callee declined.
    Declined,
    /// The callee is in another call (or declined as busy).
    Busy,
    /// Nobody answered within the ring timeout.
    Missed,
    /// The caller hung up before an answer.
    Cancelled,
    /// A party's device went away (its connection dropped) and did not come back in time.
    Disconnect,
    /// The server could not keep the call (it restarted mid-call).
    Failed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Hangup => "hangup",
            Reason::Declined => "declined",
            Reason::Busy => "busy",
            Reason::Missed => "missed",
            Reason::Cancelled => "cancelled",
            Reason::Disconnect => "disconnect",
            Reason::Failed => "failed",
        }
    }
}

/// Where the media goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Directly between the two devices (TURN as fallback), signalled over `/ws`.
    P2p,
    /// Through the SFU room of the call.
    Sfu,
}

/// Why a device stops ringing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopWhy {
    /// Another device of the same user answered.
    AnsweredElsewhere,
    /// The user declined (on some device).
    Declined,
    /// The ring timeout passed (the call may go on: a group call).
    Timeout,
    /// The call ended.
    Ended,
}

/// Timing the machine needs.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long an invite rings.
    pub ring_ms: u64,
    /// How long a party's device may be gone before it counts as left.
    pub grace_ms: u64,
    /// Whether a 1:1 call starts peer-to-peer.
    pub p2p: bool,
}

/// What a call operation may refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("the call has ended")]
    Ended,
    #[error("the call was answered on another device")]
    AnsweredElsewhere,
    #[error("you are not invited to this call")]
    NotInvited,
    #[error("you are not in this call")]
    NotInCall,
    #[error("not possible in the call's current state")]
    BadState,
    /// (From the shell.) The user is in another call.
    #[error("you are in another call: hang up first")]
    AlreadyInCall,
}

impl CallError {
    /// Stable code of the error (see `docs/calls.md`).
    pub fn code(self) -> &'static str {
        match self {
            CallError::Ended => "call_ended",
            CallError::AnsweredElsewhere => "answered_elsewhere",
            CallError::NotInvited => "not_invited",
            CallError::NotInCall => "not_in_call",
            CallError::BadState => "call_state",
            CallError::AlreadyInCall => "already_in_call",
        }
    }
}

/// What the shell must do after an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Ring every device of these users (push to those without a connection).
    Ring(Vec<UserId>),
    /// First device of `user` acknowledged the ring: tell the caller it rings.
    Ringing { user: UserId },
    /// Stop ringing `user`'s devices, except `except` (the one that answered).
    StopRing {
        user: UserId,
        except: Option<Arc<str>>,
        why: StopWhy,
    },
    /// `device` accepted (1:1): the caller and that device are told.
    Accepted { device: Device },
    /// Someone joined, left, moved devices or switched video: tell the call.
    Updated,
    /// `device` is no longer the user's device in the call (moved to another one).
    Replaced { device: Device },
    /// The media moved from peer-to-peer to the SFU room.
    ToSfu,
    /// The call ended; nothing more happens to it.
    Ended {
        reason: Reason,
        by: Option<UserId>,
        duration_ms: Option<u64>,
    },
}

#[derive(Debug, Clone, Default)]
struct Ring {
    /// Devices that acknowledged the invite.
    acked: BTreeSet<Arc<str>>,
    /// Since when no device of the user that acknowledged is reachable (no connection,
    /// no push target): the ring fails with `disconnect` after the grace.
    unreachable_since: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Member {
    pub device: Arc<str>,
    pub joined_ms: u64,
    /// Since when the device has no connection.
    pub lost_since: Option<u64>,
}

/// One call. Times are milliseconds on the shell's monotonic clock.
#[derive(Debug, Clone)]
pub struct Call {
    pub id: i64,
    pub chat_id: i64,
    pub kind: Kind,
    pub caller: UserId,
    pub video: bool,
    pub phase: Phase,
    pub mode: Mode,
    pub started_ms: u64,
    pub answered_ms: Option<u64>,
    pub ring_until: u64,
    /// Users being rung.
    ring: BTreeMap<UserId, Ring>,
    /// Users in the call, with their device.
    pub members: BTreeMap<UserId, Member>,
    /// Users that were ever in the call or invited to it (may see it).
    pub involved: BTreeSet<UserId>,
    pub ended: Option<Reason>,
    settings: Settings,
}

impl Call {
    /// A 1:1 call from `caller` to `callee`. A busy callee ends it at once (`busy`).
    #[allow(clippy::too_many_arguments)]
    pub fn direct(
        id: i64,
        chat_id: i64,
        caller: &Device,
        callee: UserId,
        video: bool,
        busy: bool,
        now: u64,
        settings: Settings,
    ) -> (Call, Vec<Effect>) {
        let mut c = Call::new(id, chat_id, Kind::Direct, caller, video, now, settings);
        c.mode = if settings.p2p { Mode::P2p } else { Mode::Sfu };
        c.involved.insert(callee);
        if busy {
            let fx = c.end(Reason::Busy, Some(callee), now);
            return (c, fx);
        }
        c.ring.insert(callee, Ring::default());
        (c, vec![Effect::Ring(vec![callee])])
    }

    /// A group call started by `starter`, ringing `ring` (empty: only announced).
    pub fn group(
        id: i64,
        chat_id: i64,
        starter: &Device,
        video: bool,
        ring: Vec<UserId>,
        now: u64,
        settings: Settings,
    ) -> (Call, Vec<Effect>) {
        let mut c = Call::new(id, chat_id, Kind::Group, starter, video, now, settings);
        c.mode = Mode::Sfu;
        c.phase = Phase::Active;
        let ring: Vec<UserId> = ring.into_iter().filter(|u| *u != starter.user).collect();
        for &u in &ring {
            c.ring.insert(u, Ring::default());
            c.involved.insert(u);
        }
        let fx = if ring.is_empty() {
            vec![]
        } else {
            vec![Effect::Ring(ring)]
        };
        (c, fx)
    }

    fn new(
        id: i64,
        chat_id: i64,
        kind: Kind,
        caller: &Device,
        video: bool,
        now: u64,
        settings: Settings,
    ) -> Call {
        let mut members = BTreeMap::new();
        members.insert(
            caller.user,
            Member {
                device: caller.session.clone(),
                joined_ms: now,
                lost_since: None,
            },
        );
        Call {
            id,
            chat_id,
            kind,
            caller: caller.user,
            video,
            phase: Phase::Ringing,
            mode: Mode::Sfu,
            started_ms: now,
            answered_ms: None,
            ring_until: now + settings.ring_ms,
            ring: BTreeMap::new(),
            members,
            involved: [caller.user].into(),
            ended: None,
            settings,
        }
    }

    // ---- getters -----------------------------------------------------------------

    /// Users whose devices ring now.
    pub fn ringing_users(&self) -> impl Iterator<Item = UserId> + '_ {
        self.ring.keys().copied()
    }

    pub fn is_ringing(&self, user: UserId) -> bool {
        self.ring.contains_key(&user)
    }

    /// Whether `device` is the device through which its user is in the call.
    pub fn is_member_device(&self, device: &Device) -> bool {
        self.members
            .get(&device.user)
            .is_some_and(|m| m.device == device.session)
    }

    /// The device that `user` is in the call with.
    pub fn member_device(&self, user: UserId) -> Option<Device> {
        self.members.get(&user).map(|m| Device {
            user,
            session: m.device.clone(),
        })
    }

    /// When [`Call::on_time`] must run next.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.phase == Phase::Ended {
            return None;
        }
        let grace = self.settings.grace_ms;
        let ring = (!self.ring.is_empty()).then_some(self.ring_until);
        let lost = self
            .members
            .values()
            .filter_map(|m| m.lost_since.map(|t| t + grace));
        let unreachable = self
            .ring
            .values()
            .filter_map(|r| r.unreachable_since.map(|t| t + grace));
        ring.into_iter().chain(lost).chain(unreachable).min()
    }

    // ---- inputs --------------------------------------------------------------------

    fn live(&self) -> Result<(), CallError> {
        if self.phase == Phase::Ended {
            Err(CallError::Ended)
        } else {
            Ok(())
        }
    }

    /// A device of a rung user acknowledges the invite.
    pub fn received(&mut self, d: &Device, _now: u64) -> Result<Vec<Effect>, CallError> {
        self.live()?;
        let Some(r) = self.ring.get_mut(&d.user) else {
            return Err(self.why_not_ringing(d.user));
        };
        let first = r.acked.is_empty();
        r.acked.insert(d.session.clone());
        r.unreachable_since = None;
        Ok(if first {
            vec![Effect::Ringing { user: d.user }]
        } else {
            vec![]
        })
    }

    fn why_not_ringing(&self, user: UserId) -> CallError {
        if self.members.contains_key(&user) {
            CallError::AnsweredElsewhere
        } else if self.involved.contains(&user) {
            CallError::BadState
        } else {
            CallError::NotInvited
        }
    }

    /// A device answers: in a 1:1 call the callee (or someone invited later) accepts; in
    /// a group call this is a join. Of two devices of one user answering at once, the
    /// first wins and the second gets [`CallError::AnsweredElsewhere`].
    pub fn accept(&mut self, d: &Device, now: u64) -> Result<Vec<Effect>, CallError> {
        self.live()?;
        if self.kind == Kind::Group {
            return self.join(d, now);
        }
        if self.ring.remove(&d.user).is_none() {
            return Err(self.why_not_ringing(d.user));
        }
        let mut fx = vec![Effect::StopRing {
            user: d.user,
            except: Some(d.session.clone()),
            why: StopWhy::AnsweredElsewhere,
        }];
        self.add_member(d, now);
        if self.phase == Phase::Ringing {
            self.phase = Phase::Active;
            self.answered_ms = Some(now);
        }
        fx.push(Effect::Accepted { device: d.clone() });
        if self.members.len() > 2 && self.mode == Mode::P2p {
            self.mode = Mode::Sfu;
            fx.push(Effect::ToSfu);
        }
        fx.push(Effect::Updated);
        Ok(fx)
    }

    fn add_member(&mut self, d: &Device, now: u64) {
        self.involved.insert(d.user);
        self.members.insert(
            d.user,
            Member {
                device: d.session.clone(),
                joined_ms: now,
                lost_since: None,
            },
        );
    }

    /// A member of the group joins (or a user already in moves to device `d`).
    pub fn join(&mut self, d: &Device, now: u64) -> Result<Vec<Effect>, CallError> {
        self.live()?;
        let mut fx = Vec::new();
        if self.kind == Kind::Direct {
            // A 1:1 call is joined by answering; its own parties may move devices.
            if !self.members.contains_key(&d.user) {
                return self.accept(d, now);
            }
        }
        if self.ring.remove(&d.user).is_some() {
            fx.push(Effect::StopRing {
                user: d.user,
                except: Some(d.session.clone()),
                why: StopWhy::AnsweredElsewhere,
            });
        }
        match self.members.get_mut(&d.user) {
            Some(m) if m.device == d.session => {
                m.lost_since = None;
                return Ok(fx);
            }
            Some(m) => {
                let old = std::mem::replace(&mut m.device, d.session.clone());
                m.lost_since = None;
                fx.push(Effect::Replaced {
                    device: Device {
                        user: d.user,
                        session: old,
                    },
                });
            }
            None => self.add_member(d, now),
        }
        fx.push(Effect::Updated);
        Ok(fx)
    }

    /// A rung user declines (on any device). The callee of a 1:1 call ends it
    /// (`declined`, or `busy` when the device says so); anyone else just stops ringing.
    pub fn decline(&mut self, d: &Device, busy: bool, now: u64) -> Result<Vec<Effect>, CallError> {
        self.live()?;
        if self.ring.remove(&d.user).is_none() {
            return Err(self.why_not_ringing(d.user));
        }
        let mut fx = vec![Effect::StopRing {
            user: d.user,
            except: None,
            why: StopWhy::Declined,
        }];
        if self.kind == Kind::Direct && self.phase == Phase::Ringing {
            let reason = if busy { Reason::Busy } else { Reason::Declined };
            fx.extend(self.end(reason, Some(d.user), now));
        }
        Ok(fx)
    }

    /// A device hangs up: the caller before an answer cancels; a party of an active 1:1
    /// call ends it; a group member leaves (the last one out ends it). A rung user who
    /// hangs up declines.
    pub fn hangup(&mut self, d: &Device, now: u64) -> Result<Vec<Effect>, CallError> {
        self.live()?;
        if !self.is_member_device(d) {
            if self.ring.contains_key(&d.user) {
                return self.decline(d, false, now);
            }
            return Err(if self.members.contains_key(&d.user) {
                CallError::AnsweredElsewhere
            } else {
                CallError::NotInCall
            });
        }
        self.leave(d.user, Reason::Hangup, now)
    }

    fn leave(&mut self, user: UserId, reason: Reason, now: u64) -> Result<Vec<Effect>, CallError> {
        match (self.kind, self.phase) {
            (Kind::Direct, Phase::Ringing) => {
                let r = if reason == Reason::Hangup {
                    Reason::Cancelled
                } else {
                    reason
                };
                Ok(self.end(r, Some(user), now))
            }
            (Kind::Direct, _) => {
                self.members.remove(&user);
                if self.members.len() < 2 {
                    Ok(self.end(reason, Some(user), now))
                } else {
                    Ok(vec![Effect::Updated])
                }
            }
            (Kind::Group, _) => {
                self.members.remove(&user);
                if self.members.is_empty() {
                    Ok(self.end(reason, Some(user), now))
                } else {
                    Ok(vec![Effect::Updated])
                }
            }
        }
    }

    /// A member rings one more user (a contact of theirs, checked by the shell). A 1:1
    /// call that gets a third person moves to the SFU once that person answers.
    pub fn invite(
        &mut self,
        by: &Device,
        user: UserId,
        now: u64,
    ) -> Result<Vec<Effect>, CallError> {
        self.live()?;
        if !self.is_member_device(by) {
            return Err(CallError::NotInCall);
        }
        if self.kind == Kind::Direct && self.phase == Phase::Ringing {
            return Err(CallError::BadState);
        }
        if self.members.contains_key(&user) || self.ring.contains_key(&user) {
            return Ok(vec![]);
        }
        self.involved.insert(user);
        self.ring.insert(user, Ring::default());
        // A later invite rings for a whole ring timeout of its own.
        self.ring_until = self.ring_until.max(now + self.settings.ring_ms);
        Ok(vec![Effect::Ring(vec![user])])
    }

    /// A member switches video on or off.
    pub fn set_video(&mut self, d: &Device, video: bool) -> Result<Vec<Effect>, CallError> {
        self.live()?;
        if !self.is_member_device(d) {
            return Err(CallError::NotInCall);
        }
        if self.video == video {
            return Ok(vec![]);
        }
        self.video = video;
        Ok(vec![Effect::Updated])
    }

    /// A party says peer-to-peer failed: the call moves to the SFU.
    pub fn to_sfu(&mut self, d: &Device) -> Result<Vec<Effect>, CallError> {
        self.live()?;
        if !self.is_member_device(d) {
            return Err(CallError::NotInCall);
        }
        if self.mode == Mode::Sfu {
            return Ok(vec![]);
        }
        if self.phase != Phase::Active {
            return Err(CallError::BadState);
        }
        self.mode = Mode::Sfu;
        Ok(vec![Effect::ToSfu, Effect::Updated])
    }

    /// A device lost its last connection. `reachable`: whether its user can still be
    /// rung (another connected device, or a push target).
    pub fn device_lost(&mut self, d: &Device, reachable: bool, now: u64) -> Vec<Effect> {
        if self.phase == Phase::Ended {
            return vec![];
        }
        if let Some(m) = self.members.get_mut(&d.user) {
            if m.device == d.session && m.lost_since.is_none() {
                m.lost_since = Some(now);
            }
        }
        if let Some(r) = self.ring.get_mut(&d.user) {
            r.acked.remove(&d.session);
            if !reachable && r.acked.is_empty() && r.unreachable_since.is_none() {
                r.unreachable_since = Some(now);
            }
        }
        vec![]
    }

    /// A device has a connection again.
    pub fn device_back(&mut self, d: &Device) {
        if let Some(m) = self.members.get_mut(&d.user) {
            if m.device == d.session {
                m.lost_since = None;
            }
        }
        if let Some(r) = self.ring.get_mut(&d.user) {
            r.unreachable_since = None;
        }
    }

    /// Time passed: ring timeouts, devices gone past the grace.
    pub fn on_time(&mut self, now: u64) -> Vec<Effect> {
        if self.phase == Phase::Ended {
            return vec![];
        }
        let mut fx = Vec::new();
        let grace = self.settings.grace_ms;
        // Members whose device stayed away: they leave (`disconnect`).
        let gone: Vec<UserId> = self
            .members
            .iter()
            .filter(|(_, m)| m.lost_since.is_some_and(|t| now >= t + grace))
            .map(|(u, _)| *u)
            .collect();
        for u in gone {
            if let Ok(f) = self.leave(u, Reason::Disconnect, now) {
                fx.extend(f);
            }
            if self.phase == Phase::Ended {
                return fx;
            }
        }
        // A rung user whose devices all vanished after acknowledging.
        let vanished: Vec<UserId> = self
            .ring
            .iter()
            .filter(|(_, r)| r.unreachable_since.is_some_and(|t| now >= t + grace))
            .map(|(u, _)| *u)
            .collect();
        for u in vanished {
            self.ring.remove(&u);
            fx.push(Effect::StopRing {
                user: u,
                except: None,
                why: StopWhy::Ended,
            });
            if self.kind == Kind::Direct && self.phase == Phase::Ringing {
                fx.extend(self.end(Reason::Disconnect, Some(u), now));
                return fx;
            }
        }
        if !self.ring.is_empty() && now >= self.ring_until {
            if self.kind == Kind::Direct && self.phase == Phase::Ringing {
                fx.extend(self.end(Reason::Missed, None, now));
                return fx;
            }
            for u in std::mem::take(&mut self.ring).into_keys() {
                fx.push(Effect::StopRing {
                    user: u,
                    except: None,
                    why: StopWhy::Timeout,
                });
            }
        }
        fx
    }

    /// Ends the call now for `reason` (also used by the shell on a failure).
    pub fn end(&mut self, reason: Reason, by: Option<UserId>, now: u64) -> Vec<Effect> {
        if self.phase == Phase::Ended {
            return vec![];
        }
        let mut fx: Vec<Effect> = std::mem::take(&mut self.ring)
            .into_keys()
            .map(|user| Effect::StopRing {
                user,
                except: None,
                why: StopWhy::Ended,
            })
            .collect();
        let duration_ms = match self.kind {
            Kind::Direct => self.answered_ms.map(|a| now.saturating_sub(a)),
            Kind::Group => Some(now.saturating_sub(self.started_ms)),
        };
        self.phase = Phase::Ended;
        self.ended = Some(reason);
        fx.push(Effect::Ended {
            reason,
            by,
            duration_ms,
        });
        fx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Settings = Settings {
        ring_ms: 45_000,
        grace_ms: 10_000,
        p2p: true,
    };
    const ALICE: UserId = 1;
    const BOB: UserId = 2;
    const CAROL: UserId = 3;

    fn dev(u: UserId, s: &str) -> Device {
        Device::new(u, s)
    }

    fn ended(fx: &[Effect]) -> Option<(Reason, Option<u64>)> {
        fx.iter().find_map(|e| match e {
            Effect::Ended {
                reason,
                duration_ms,
                ..
            } => Some((*reason, *duration_ms)),
            _ => None,
        })
    }

    fn call() -> Call {
        let (c, fx) = Call::direct(7, 70, &dev(ALICE, "a1"), BOB, true, false, 1_000, S);
        assert_eq!(fx, vec![Effect::Ring(vec![BOB])]);
        assert_eq!(c.mode, Mode::P2p);
        c
    }

    #[test]
    fn first_ack_says_ringing_once() {
        let mut c = call();
        assert_eq!(
            c.received(&dev(BOB, "b1"), 1_100).unwrap(),
            vec![Effect::Ringing { user: BOB }]
        );
        assert_eq!(c.received(&dev(BOB, "b2"), 1_200).unwrap(), vec![]);
        assert_eq!(
            c.received(&dev(CAROL, "c1"), 1_200),
            Err(CallError::NotInvited)
        );
    }

    #[test]
    fn one_device_accepts_the_other_is_told_and_a_second_accept_loses() {
        let mut c = call();
        let fx = c.accept(&dev(BOB, "b2"), 5_000).unwrap();
        assert_eq!(
            fx[0],
            Effect::StopRing {
                user: BOB,
                except: Some("b2".into()),
                why: StopWhy::AnsweredElsewhere
            }
        );
        assert!(fx.contains(&Effect::Accepted {
            device: dev(BOB, "b2")
        }));
        assert_eq!(c.phase, Phase::Active);
        // The race: the other device's accept arrives second.
        assert_eq!(
            c.accept(&dev(BOB, "b1"), 5_001),
            Err(CallError::AnsweredElsewhere)
        );
        // Only the device in the call can hang up for Bob.
        assert_eq!(
            c.hangup(&dev(BOB, "b1"), 6_000),
            Err(CallError::AnsweredElsewhere)
        );
        let fx = c.hangup(&dev(BOB, "b2"), 65_000).unwrap();
        assert_eq!(ended(&fx), Some((Reason::Hangup, Some(60_000))));
        assert_eq!(c.hangup(&dev(ALICE, "a1"), 65_001), Err(CallError::Ended));
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn decline_busy_cancel() {
        let mut c = call();
        let fx = c.decline(&dev(BOB, "b1"), false, 2_000).unwrap();
        assert_eq!(ended(&fx), Some((Reason::Declined, None)));

        let mut c = call();
        let fx = c.decline(&dev(BOB, "b1"), true, 2_000).unwrap();
        assert_eq!(ended(&fx).unwrap().0, Reason::Busy);

        let (c, fx) = Call::direct(8, 70, &dev(ALICE, "a1"), BOB, false, true, 0, S);
        assert_eq!(ended(&fx), Some((Reason::Busy, None)));
        assert_eq!(c.phase, Phase::Ended);

        let mut c = call();
        let fx = c.hangup(&dev(ALICE, "a1"), 3_000).unwrap();
        assert!(fx.contains(&Effect::StopRing {
            user: BOB,
            except: None,
            why: StopWhy::Ended
        }));
        assert_eq!(ended(&fx).unwrap().0, Reason::Cancelled);
    }

    #[test]
    fn unanswered_call_is_missed_exactly_at_the_ring_timeout() {
        let mut c = call();
        c.received(&dev(BOB, "b1"), 1_500).unwrap();
        assert_eq!(c.next_deadline(), Some(46_000));
        assert_eq!(c.on_time(45_999), vec![]);
        let fx = c.on_time(46_000);
        assert_eq!(ended(&fx), Some((Reason::Missed, None)));
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn a_callee_that_vanishes_mid_ring_ends_it_after_the_grace_unless_it_comes_back() {
        let mut c = call();
        c.received(&dev(BOB, "b1"), 1_500).unwrap();
        // Reachable by push: keeps ringing until the timeout.
        c.device_lost(&dev(BOB, "b1"), true, 2_000);
        assert_eq!(c.next_deadline(), Some(46_000));
        // Another run where nothing can reach Bob any more.
        let mut c = call();
        c.received(&dev(BOB, "b1"), 1_500).unwrap();
        c.device_lost(&dev(BOB, "b1"), false, 2_000);
        assert_eq!(c.next_deadline(), Some(12_000));
        c.device_back(&dev(BOB, "b1"));
        assert_eq!(
            c.next_deadline(),
            Some(46_000),
            "came back within the grace"
        );
        c.device_lost(&dev(BOB, "b1"), false, 20_000);
        assert_eq!(c.on_time(29_999), vec![]);
        let fx = c.on_time(30_000);
        assert_eq!(ended(&fx).unwrap().0, Reason::Disconnect);
    }

    #[test]
    fn a_caller_that_disconnects_ends_the_call_after_the_grace() {
        let mut c = call();
        c.accept(&dev(BOB, "b1"), 2_000).unwrap();
        c.device_lost(&dev(ALICE, "a1"), false, 10_000);
        assert_eq!(c.next_deadline(), Some(20_000));
        let fx = c.on_time(20_000);
        assert_eq!(ended(&fx), Some((Reason::Disconnect, Some(18_000))));
        // While ringing too.
        let mut c = call();
        c.device_lost(&dev(ALICE, "a1"), false, 3_000);
        let fx = c.on_time(13_000);
        assert_eq!(ended(&fx).unwrap().0, Reason::Disconnect);
        // A device that is not the one in the call changes nothing.
        let mut c = call();
        c.device_lost(&dev(ALICE, "a2"), false, 3_000);
        assert_eq!(c.next_deadline(), Some(46_000));
    }

    #[test]
    fn a_third_person_moves_a_p2p_call_to_the_sfu() {
        let mut c = call();
        c.accept(&dev(BOB, "b1"), 2_000).unwrap();
        assert_eq!(
            c.invite(&dev(CAROL, "c1"), ALICE, 2_100),
            Err(CallError::NotInCall)
        );
        assert_eq!(
            c.invite(&dev(ALICE, "a1"), CAROL, 3_000).unwrap(),
            vec![Effect::Ring(vec![CAROL])]
        );
        assert_eq!(c.mode, Mode::P2p, "still P2P while Carol's phone rings");
        let fx = c.accept(&dev(CAROL, "c1"), 4_000).unwrap();
        assert!(fx.contains(&Effect::ToSfu));
        assert_eq!(c.mode, Mode::Sfu);
        // Carol leaves: Alice and Bob go on; Bob leaves: it ends.
        assert_eq!(
            c.hangup(&dev(CAROL, "c1"), 5_000).unwrap(),
            vec![Effect::Updated]
        );
        let fx = c.hangup(&dev(BOB, "b1"), 6_000).unwrap();
        assert_eq!(ended(&fx), Some((Reason::Hangup, Some(4_000))));
    }

    #[test]
    fn p2p_failure_moves_to_the_sfu_once() {
        let mut c = call();
        assert_eq!(c.to_sfu(&dev(ALICE, "a1")), Err(CallError::BadState));
        c.accept(&dev(BOB, "b1"), 2_000).unwrap();
        assert_eq!(
            c.to_sfu(&dev(BOB, "b1")).unwrap(),
            vec![Effect::ToSfu, Effect::Updated]
        );
        assert_eq!(c.to_sfu(&dev(ALICE, "a1")).unwrap(), vec![]);
    }

    #[test]
    fn group_call_rings_then_stops_ringing_but_lives_until_the_last_leaves() {
        let (mut c, fx) = Call::group(
            9,
            90,
            &dev(ALICE, "a1"),
            false,
            vec![ALICE, BOB, CAROL],
            0,
            S,
        );
        assert_eq!(fx, vec![Effect::Ring(vec![BOB, CAROL])]);
        assert_eq!(c.phase, Phase::Active);
        let fx = c.accept(&dev(BOB, "b1"), 1_000).unwrap();
        assert!(fx.contains(&Effect::Updated));
        let fx = c.on_time(45_000);
        assert_eq!(
            fx,
            vec![Effect::StopRing {
                user: CAROL,
                except: None,
                why: StopWhy::Timeout
            }]
        );
        assert_eq!(c.next_deadline(), None);
        // Carol joins late, from a second device after her first.
        c.join(&dev(CAROL, "c1"), 50_000).unwrap();
        let fx = c.join(&dev(CAROL, "c2"), 51_000).unwrap();
        assert_eq!(
            fx,
            vec![
                Effect::Replaced {
                    device: dev(CAROL, "c1")
                },
                Effect::Updated
            ]
        );
        assert_eq!(
            c.hangup(&dev(ALICE, "a1"), 60_000).unwrap(),
            vec![Effect::Updated]
        );
        assert_eq!(
            c.hangup(&dev(BOB, "b1"), 61_000).unwrap(),
            vec![Effect::Updated]
        );
        let fx = c.hangup(&dev(CAROL, "c2"), 70_000).unwrap();
        assert_eq!(ended(&fx), Some((Reason::Hangup, Some(70_000))));
    }

    #[test]
    fn a_group_member_that_declines_only_stops_their_ring() {
        let (mut c, _) = Call::group(9, 90, &dev(ALICE, "a1"), false, vec![BOB, CAROL], 0, S);
        let fx = c.decline(&dev(BOB, "b1"), false, 100).unwrap();
        assert_eq!(fx.len(), 1);
        assert_eq!(c.phase, Phase::Active);
        assert!(c.is_ringing(CAROL) && !c.is_ringing(BOB));
        // A large group is only announced.
        let (c, fx) = Call::group(10, 90, &dev(ALICE, "a1"), false, vec![], 0, S);
        assert!(fx.is_empty() && c.next_deadline().is_none());
    }

    #[test]
    fn group_member_gone_past_the_grace_leaves_and_the_last_ends_it() {
        let (mut c, _) = Call::group(9, 90, &dev(ALICE, "a1"), false, vec![], 0, S);
        c.join(&dev(BOB, "b1"), 100).unwrap();
        c.device_lost(&dev(BOB, "b1"), false, 1_000);
        assert_eq!(c.on_time(11_000), vec![Effect::Updated]);
        c.device_lost(&dev(ALICE, "a1"), false, 12_000);
        let fx = c.on_time(22_000);
        assert_eq!(ended(&fx).unwrap().0, Reason::Disconnect);
    }

    #[test]
    fn video_switches() {
        let mut c = call();
        assert_eq!(
            c.set_video(&dev(ALICE, "a1"), false).unwrap(),
            vec![Effect::Updated]
        );
        assert!(!c.video);
        assert_eq!(
            c.set_video(&dev(BOB, "b1"), true),
            Err(CallError::NotInCall)
        );
    }
}
