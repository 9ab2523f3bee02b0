//! Giving freed memory back to the system.
//!
//! glibc's allocator keeps memory that was freed in its arenas (one per thread that
//! allocated, up to 8 per core), so after a busy hour the process stays at its peak
//! size although the engine freed everything (`sfu/tests/memory.rs` shows the heap
//! itself goes back). `malloc_trim(0)` returns the free pages of every arena to the
//! system. It runs on a thread of its own every [`TRIM_EVERY`], so it never sits on
//! the media or HTTP threads' path; the arenas' locks are taken one at a time, briefly.

use std::time::Duration;

/// How often freed memory is given back.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Starts the trimming thread (glibc only; elsewhere nothing to do).
pub fn start_trimming() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new().name("maxd-trim".into()).spawn(|| {
            loop {
                std::thread::sleep(TRIM_EVERY);
                trim();
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the memory trimming thread");
        }
    }
}

/// Gives the free pages of every glibc arena back to the system now.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks and releases glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Small blocks freed by a thread stay in its arena (glibc does not return them on
    /// free); a trim gives them back. 128 MiB of 4 KiB blocks, as per-packet and
    /// per-peer buffers are, so the drop is far above what other tests move.
    #[test]
    fn freed_small_blocks_go_back_to_the_system() {
        std::thread::spawn(|| {
            let mut blocks: Vec<Vec<u8>> = (0..32 * 1024).map(|i| vec![i as u8; 4096]).collect();
            // Keep the last one so the arena's top is not simply shrunk on free.
            let keep = blocks.pop();
            drop(blocks);
            let before = rss_kib();
            super::trim();
            let after = rss_kib();
            drop(keep);
            assert!(
                before.saturating_sub(after) > 64 * 1024,
                "RSS went from {before} KiB to {after} KiB after trimming"
            );
        })
        .join()
        .unwrap();
    }
}
