//! In-process fan-out: which connections are open for which user, and which users are
//! in which chat. Events for a chat are published under that chat's lock, right after
//! commit, so every connection sees one chat's events in sequence order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use tokio::sync::mpsc;

/// What a connection task receives.
#[derive(Debug, Clone)]
pub enum Out {
    /// A stored chat event (has a per-chat sequence number).
    Chat {
        chat_id: i64,
        seq: i64,
        json: Arc<str>,
    },
    /// An ephemeral event (typing, receipts, presence, new login).
    Ephemeral(Arc<str>),
}

/// Capacity of one connection's queue; a connection that falls this far behind is
/// closed and resumes from its last sequence numbers.
pub const QUEUE: usize = 2048;

struct Conn {
    id: u64,
    session_id: Arc<str>,
    tx: mpsc::Sender<Out>,
    /// Told when the connection's session is revoked (a stored permit: never lost, and
    /// never blocked by a full queue).
    revoked: Arc<tokio::sync::Notify>,
}

/// What [`Hub::connect`] gives a connection task.
pub struct Registered {
    pub id: u64,
    pub rx: mpsc::Receiver<Out>,
    /// Whether the user was offline before.
    pub first: bool,
    /// Notified when the session is revoked.
    pub revoked: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
pub struct Hub {
    conns: RwLock<HashMap<i64, Vec<Conn>>>,
    members: RwLock<HashMap<i64, Arc<Vec<i64>>>>,
    next: AtomicU64,
    pub bot_wakers: RwLock<HashMap<i64, Arc<tokio::sync::Notify>>>,
}

impl Hub {
    /// Registers a connection of `user_id`'s device session `session_id`, unless the
    /// user has `max` open already (`None`).
    pub fn connect(&self, user_id: i64, session_id: &str, max: usize) -> Option<Registered> {
        let mut c = self.conns.write();
        let v = c.entry(user_id).or_default();
        if v.len() >= max {
            return None;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let revoked = Arc::new(tokio::sync::Notify::new());
        let first = v.is_empty();
        v.push(Conn {
            id,
            session_id: session_id.into(),
            tx,
            revoked: revoked.clone(),
        });
        Some(Registered {
            id,
            rx,
            first,
            revoked,
        })
    }

    /// Removes a connection; returns whether the user is now offline.
    pub fn disconnect(&self, user_id: i64, conn_id: u64) -> bool {
        let mut c = self.conns.write();
        if let Some(v) = c.get_mut(&user_id) {
            v.retain(|x| x.id != conn_id);
            if v.is_empty() {
                c.remove(&user_id);
                return true;
            }
            return false;
        }
        true
    }

    pub fn is_online(&self, user_id: i64) -> bool {
        self.conns.read().contains_key(&user_id)
    }

    /// Whether device session `session_id` of `user_id` has an open connection.
    pub fn session_online(&self, user_id: i64, session_id: &str) -> bool {
        self.conns
            .read()
            .get(&user_id)
            .is_some_and(|v| v.iter().any(|c| *c.session_id == *session_id))
    }

    /// Device sessions of `user_id` with an open connection.
    pub fn online_sessions(&self, user_id: i64) -> Vec<Arc<str>> {
        let c = self.conns.read();
        let mut v: Vec<Arc<str>> = c
            .get(&user_id)
            .map(|v| v.iter().map(|c| c.session_id.clone()).collect())
            .unwrap_or_default();
        v.sort();
        v.dedup();
        v
    }

    /// Sends an ephemeral event to the connections of one device session only.
    pub fn send_session(&self, user_id: i64, session_id: &str, json: &str) {
        let out = Out::Ephemeral(json.into());
        let c = self.conns.read();
        if let Some(v) = c.get(&user_id) {
            for conn in v.iter().filter(|c| *c.session_id == *session_id) {
                // A full queue: that connection is lagging and will be told to resume.
                let _ = conn.tx.try_send(out.clone());
            }
        }
    }

    pub fn connection_count(&self) -> usize {
        self.conns.read().values().map(Vec::len).sum()
    }

    pub fn cached_members(&self, chat_id: i64) -> Option<Arc<Vec<i64>>> {
        self.members.read().get(&chat_id).cloned()
    }

    pub fn set_members(&self, chat_id: i64, m: Arc<Vec<i64>>) {
        self.members.write().insert(chat_id, m);
    }

    pub fn invalidate_members(&self, chat_id: i64) {
        self.members.write().remove(&chat_id);
    }

    fn deliver(
        &self,
        users: impl IntoIterator<Item = i64>,
        out: &Out,
        except_session: Option<&str>,
    ) -> usize {
        let mut lagged = Vec::new();
        let mut n = 0;
        {
            let c = self.conns.read();
            for u in users {
                if let Some(v) = c.get(&u) {
                    for conn in v {
                        if except_session.is_some_and(|s| *conn.session_id == *s) {
                            continue;
                        }
                        match conn.tx.try_send(out.clone()) {
                            Ok(()) => n += 1,
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                if matches!(out, Out::Chat { .. }) {
                                    lagged.push((u, conn.id));
                                }
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => {}
                        }
                    }
                }
            }
        }
        // A connection that cannot keep up loses its queue sender: its task drains what
        // is queued, then tells the client to resume, so nothing is skipped silently.
        if !lagged.is_empty() {
            let mut c = self.conns.write();
            for (u, id) in lagged {
                if let Some(v) = c.get_mut(&u) {
                    v.retain(|x| x.id != id);
                    if v.is_empty() {
                        c.remove(&u);
                    }
                }
            }
        }
        n
    }

    /// Sends a stored chat event to every connection of `users`.
    pub fn publish_chat(&self, users: &[i64], chat_id: i64, seq: i64, json: Arc<str>) -> usize {
        self.deliver(
            users.iter().copied(),
            &Out::Chat { chat_id, seq, json },
            None,
        )
    }

    pub fn send_ephemeral(&self, users: &[i64], json: String, except_session: Option<&str>) {
        self.deliver(
            users.iter().copied(),
            &Out::Ephemeral(json.into()),
            except_session,
        );
    }

    pub fn send_user_except(&self, user_id: i64, except_session: &str, json: String) {
        self.deliver(
            [user_id],
            &Out::Ephemeral(json.into()),
            Some(except_session),
        );
    }

    /// Closes the connections of one revoked session (they close with code 4001).
    /// Scans every connection: revocations are rare next to messages.
    pub fn kick_session(&self, session_id: &str) {
        let c = self.conns.read();
        for conn in c.values().flatten() {
            if *conn.session_id == *session_id {
                conn.revoked.notify_one();
            }
        }
    }

    pub fn bot_waker(&self, bot_id: i64) -> Arc<tokio::sync::Notify> {
        if let Some(n) = self.bot_wakers.read().get(&bot_id) {
            return n.clone();
        }
        self.bot_wakers.write().entry(bot_id).or_default().clone()
    }
}
