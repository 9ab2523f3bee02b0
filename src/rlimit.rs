//! The open-file limit (`RLIMIT_NOFILE`). Every connection, WebSocket and stored file
//! holds a descriptor, and Linux starts most processes with a soft limit of 1024 while
//! allowing far more: `maxd` raises its soft limit to the hard limit at start-up.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The limit before and after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nofile {
    /// Soft limit found at start (`None`: unlimited).
    pub before: Option<u64>,
    /// Soft limit now.
    pub soft: Option<u64>,
    /// Hard limit.
    pub hard: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. On failure the limit is left as
/// it was, and the error is returned with it for the caller to log.
pub fn raise_nofile() -> (Nofile, Option<rustix::io::Errno>) {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let mut n = Nofile {
        before: current,
        soft: current,
        hard: maximum,
    };
    if current == maximum {
        return (n, None);
    }
    match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: maximum,
            maximum,
        },
    ) {
        Ok(()) => {
            n.soft = getrlimit(Resource::Nofile).current;
            (n, None)
        }
        Err(e) => (n, Some(e)),
    }
}

/// The soft `RLIMIT_NOFILE` now.
pub fn current_nofile() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}
