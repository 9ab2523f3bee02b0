//! What each device session (the token's `sid`) has open on the relay - QUIC
//! connections, HTTP uploads and downloads - so that revoking the session
//! (`Keys::revocations().revoke`) ends them at once rather than when the token expires.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::proto::CLOSE_REVOKED;

enum Live {
    Quic(quinn::Connection),
    /// An HTTP request: told by setting the value to `true`.
    Http(watch::Sender<bool>),
}

/// The live things of every session.
#[derive(Default)]
pub struct Sessions {
    next: AtomicU64,
    live: Mutex<HashMap<String, HashMap<u64, Live>>>,
}

/// Registration of one live thing; removed when dropped.
pub struct Registered {
    sessions: Weak<Sessions>,
    sid: String,
    key: u64,
}

impl Sessions {
    /// A registry that hears `revocations` (it is held weakly there: dropping the
    /// registry unhooks it).
    pub fn listen(revocations: &common::Revocations) -> Arc<Sessions> {
        let s = Arc::new(Sessions::default());
        let weak = Arc::downgrade(&s);
        revocations.on_revoke(move |sid| {
            if let Some(s) = weak.upgrade() {
                s.revoke(sid);
            }
        });
        s
    }

    fn add(self: &Arc<Self>, sid: &str, live: Live) -> Registered {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.live
            .lock()
            .entry(sid.to_owned())
            .or_default()
            .insert(key, live);
        Registered {
            sessions: Arc::downgrade(self),
            sid: sid.to_owned(),
            key,
        }
    }

    /// Closes `conn` when session `sid` is revoked.
    pub fn add_quic(self: &Arc<Self>, sid: &str, conn: quinn::Connection) -> Registered {
        self.add(sid, Live::Quic(conn))
    }

    /// A receiver that turns `true` when session `sid` is revoked.
    pub fn add_http(self: &Arc<Self>, sid: &str) -> (Registered, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(false);
        (self.add(sid, Live::Http(tx)), rx)
    }

    /// Ends everything of session `sid` (called from the revoking thread: only
    /// non-blocking calls here).
    pub fn revoke(&self, sid: &str) {
        let Some(live) = self.live.lock().remove(sid) else {
            return;
        };
        for l in live.into_values() {
            match l {
                Live::Quic(c) => c.close(CLOSE_REVOKED.into(), b"session revoked"),
                Live::Http(tx) => {
                    let _ = tx.send(true);
                }
            }
        }
    }

    /// Live things registered (for tests).
    pub fn len(&self) -> usize {
        self.live.lock().values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(s) = self.sessions.upgrade() {
            let mut live = s.live.lock();
            if let Some(m) = live.get_mut(&self.sid) {
                m.remove(&self.key);
                if m.is_empty() {
                    live.remove(&self.sid);
                }
            }
        }
    }
}
