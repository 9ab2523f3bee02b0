//! Which media worker owns each room, and the handle that sends signalling to it.
//!
//! A room lives on one worker from its first join until it closes; every command for it
//! (`/rtc` messages, WHIP/WHEP requests) goes to that worker. A new room goes to the
//! least-loaded worker (fewest participants, counting joins on their way, then fewest
//! rooms).
//!
//! A worker closes an empty room only through [`Placement::may_close`], which refuses
//! while a join for the room is on its way to it: so a room never exists on two workers
//! at once, and a join never reaches a worker that just dropped the room.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

use crate::engine::Command;
use crate::router::WorkerIndex;

struct Entry {
    worker: WorkerIndex,
    /// Room-making commands (join, WHIP/WHEP offer) sent to the worker, not yet handled.
    pending: usize,
}

#[derive(Default)]
struct Inner {
    rooms: HashMap<String, Entry>,
    /// Per worker: rooms placed there, and room-making commands on their way.
    rooms_on: Vec<usize>,
    pending_on: Vec<usize>,
}

/// The room -> worker map.
pub struct Placement {
    inner: Mutex<Inner>,
    /// Participants on each worker, as the worker last reported.
    participants: Vec<AtomicUsize>,
}

impl Placement {
    pub fn new(workers: usize) -> Placement {
        Placement {
            inner: Mutex::new(Inner {
                rooms: HashMap::new(),
                rooms_on: vec![0; workers],
                pending_on: vec![0; workers],
            }),
            participants: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn workers(&self) -> usize {
        self.participants.len()
    }

    /// The worker of `room` for a command that may make it: its owner, or the
    /// least-loaded worker for a new room. Each call must be followed by
    /// [`Placement::handled`] (by the worker) or [`Placement::not_sent`].
    pub fn place(&self, room: &str) -> WorkerIndex {
        let mut g = self.lock();
        let inner = &mut *g;
        if let Some(e) = inner.rooms.get_mut(room) {
            e.pending += 1;
            inner.pending_on[e.worker] += 1;
            return e.worker;
        }
        let w = (0..self.workers())
            .min_by_key(|&w| {
                (
                    self.participants[w].load(Ordering::Relaxed) + inner.pending_on[w],
                    inner.rooms_on[w],
                    w,
                )
            })
            .unwrap_or(0);
        inner.rooms.insert(
            room.to_string(),
            Entry {
                worker: w,
                pending: 1,
            },
        );
        inner.rooms_on[w] += 1;
        inner.pending_on[w] += 1;
        w
    }

    /// The worker that owns `room`, if it is placed.
    pub fn owner(&self, room: &str) -> Option<WorkerIndex> {
        self.lock().rooms.get(room).map(|e| e.worker)
    }

    /// A worker handled a command [`Placement::place`] sent it; `open`: the room exists
    /// on it now (a refused WHEP offer for an unknown room makes none).
    pub fn handled(&self, room: &str, open: bool) {
        let mut g = self.lock();
        let inner = &mut *g;
        let Some(e) = inner.rooms.get_mut(room) else {
            return;
        };
        e.pending = e.pending.saturating_sub(1);
        let w = e.worker;
        inner.pending_on[w] = inner.pending_on[w].saturating_sub(1);
        if e.pending == 0 && !open {
            inner.rooms.remove(room);
            inner.rooms_on[w] = inner.rooms_on[w].saturating_sub(1);
        }
    }

    /// A placed command could not be sent (its worker is gone).
    pub fn not_sent(&self, room: &str) {
        self.handled(room, false);
    }

    /// `worker` wants to close its empty room `room`: allowed (and the room unplaced)
    /// unless a join is on its way to it.
    pub fn may_close(&self, room: &str, worker: WorkerIndex) -> bool {
        let mut g = self.lock();
        let inner = &mut *g;
        match inner.rooms.get(room) {
            Some(e) if e.worker == worker => {
                if e.pending > 0 {
                    return false;
                }
                inner.rooms.remove(room);
                inner.rooms_on[worker] = inner.rooms_on[worker].saturating_sub(1);
                true
            }
            _ => true,
        }
    }

    /// `worker` reports how many participants it has.
    pub fn set_participants(&self, worker: WorkerIndex, n: usize) {
        if let Some(p) = self.participants.get(worker) {
            p.store(n, Ordering::Relaxed);
        }
    }

    /// Rooms placed on each worker.
    pub fn rooms_per_worker(&self) -> Vec<usize> {
        self.lock().rooms_on.clone()
    }
}

/// Sends signalling commands to the worker that owns their room.
#[derive(Clone)]
pub struct Workers {
    senders: Vec<mpsc::UnboundedSender<Command>>,
    placement: std::sync::Arc<Placement>,
}

/// The worker is gone (shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerGone;

impl Workers {
    pub fn new(
        senders: Vec<mpsc::UnboundedSender<Command>>,
        placement: std::sync::Arc<Placement>,
    ) -> Workers {
        Workers { senders, placement }
    }

    /// Sends a command that may make `room` (join, WHIP/WHEP offer) to the room's worker,
    /// placing a new room. Returns the worker.
    pub fn send_placing(&self, room: &str, cmd: Command) -> Result<WorkerIndex, WorkerGone> {
        let w = self.placement.place(room);
        match self.senders[w].send(cmd) {
            Ok(()) => Ok(w),
            Err(_) => {
                self.placement.not_sent(room);
                Err(WorkerGone)
            }
        }
    }

    /// Sends a command about an existing room (resume, WHIP/WHEP PATCH and DELETE). An
    /// unplaced room has no sessions: the first worker answers that it knows none.
    pub fn send_to_room(&self, room: &str, cmd: Command) -> Result<WorkerIndex, WorkerGone> {
        let w = self.placement.owner(room).unwrap_or(0);
        self.send_to(w, cmd).map(|()| w)
    }

    /// Sends a command to worker `w` (a WebSocket's messages go where its join went).
    pub fn send_to(&self, w: WorkerIndex, cmd: Command) -> Result<(), WorkerGone> {
        self.senders
            .get(w)
            .ok_or(WorkerGone)?
            .send(cmd)
            .map_err(|_| WorkerGone)
    }

    /// Sends a command to every worker.
    pub fn broadcast(&self, make: impl Fn() -> Command) {
        for s in &self.senders {
            let _ = s.send(make());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_rooms_go_to_the_least_loaded_worker() {
        let p = Placement::new(2);
        // Ties go to the lower index; a join on its way counts as load.
        assert_eq!(p.place("a"), 0);
        assert_eq!(p.place("b"), 1);
        assert_eq!(p.place("a"), 0, "a placed room stays");
        p.handled("a", true);
        p.handled("a", true);
        p.handled("b", true);
        p.set_participants(0, 2);
        p.set_participants(1, 1);
        assert_eq!(p.place("c"), 1);
        p.handled("c", true);
        p.set_participants(1, 2);
        // Equal participants: fewer rooms wins.
        assert_eq!(p.place("d"), 0);
        p.handled("d", true);
        assert_eq!(p.rooms_per_worker(), vec![2, 2]);
    }

    #[test]
    fn a_room_closes_only_without_a_join_on_its_way() {
        let p = Placement::new(2);
        assert_eq!(p.place("a"), 0);
        p.handled("a", true);
        // A join is routed to worker 0 while worker 0 wants to close the room: refused,
        // so the join finds the room where it was sent.
        assert_eq!(p.place("a"), 0);
        assert!(!p.may_close("a", 0));
        p.handled("a", true);
        assert!(p.may_close("a", 0));
        assert_eq!(p.owner("a"), None);
        assert_eq!(p.rooms_per_worker(), vec![0, 0]);
        // Another worker cannot unplace a room it does not own.
        assert_eq!(p.place("b"), 0);
        p.handled("b", true);
        assert!(p.may_close("b", 1));
        assert_eq!(p.owner("b"), Some(0));
    }

    #[test]
    fn a_command_that_made_no_room_unplaces_it() {
        let p = Placement::new(3);
        // WHEP to a room nobody opened: the worker makes no room.
        assert_eq!(p.place("ghost"), 0);
        p.handled("ghost", false);
        assert_eq!(p.owner("ghost"), None);
        assert_eq!(p.rooms_per_worker(), vec![0, 0, 0]);
        // A send that failed likewise.
        p.place("x");
        p.not_sent("x");
        assert_eq!(p.owner("x"), None);
    }
}
