//! Memory follows live participants: a call's heap is measured while it runs (bytes per
//! audio participant, per video subscription) and after everyone left, when it must be
//! back where it started. A counting allocator measures the engine's heap exactly,
//! without the allocator's own retention that RSS also shows.

mod harness;
mod netsim;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use harness::World;
use netsim::Link;
use sfu::proto::ClientMsg;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn link() -> Link {
    Link { latency: Duration::from_millis(5), jitter: Duration::ZERO, loss: 0.0 }
}

/// One call: 8 audio participants hearing each other, then one video publisher to 8
/// more; everyone leaves. Returns the heap growth (incl. the simulated clients) at the
/// audio peak and at the video peak.
fn a_call(w: &mut World, round: usize) -> (isize, isize) {
    let base = live();
    let first = w.clients.len();
    for i in 0..8 {
        let c = w.join(&format!("a{round}-{i}"));
        w.publish_audio(c);
    }
    w.run(5_000, false, |_, _| {});
    let audio = live() - base;
    let p = w.join(&format!("v{round}"));
    w.publish(p, false);
    for i in 0..8 {
        w.join(&format!("s{round}-{i}"));
    }
    w.run(8_000, false, |_, _| {});
    let video = live() - base;
    for i in first..w.clients.len() {
        w.command(i, ClientMsg::Leave);
    }
    w.pump();
    w.clients.truncate(first);
    w.run(7_000, false, |_, _| {}); // past the empty-room grace (5 s)
    assert_eq!(w.engine.stats().participants, 0);
    assert_eq!(w.engine.stats().rooms, 0);
    (audio, video)
}

/// The first call initialises what lives for the process (lazy statics of the crypto
/// and SDP code, the tracing registry, capacity of the engine's tables at their peak);
/// every later identical call must end where the one before ended.
#[test]
fn heap_follows_live_participants_call_after_call() {
    let mut w = World::new(21, link());
    w.run(1_000, false, |_, _| {});
    a_call(&mut w, 0);
    let after_first = live();
    let (audio, video) = a_call(&mut w, 1);
    let after_second = live();
    a_call(&mut w, 2);
    let after_third = live();
    eprintln!(
        "heap incl. the simulated clients: 8-person audio room {} KiB; 1 video publisher to 16 receivers +{} KiB",
        audio / 1024,
        (video - audio) / 1024
    );
    eprintln!(
        "after each call: +{} bytes, +{} bytes over the call before",
        after_second - after_first,
        after_third - after_second
    );
    for (n, grown) in [(2, after_second - after_first), (3, after_third - after_second)] {
        assert!(grown < 16 * 1024, "call {n} left {grown} bytes more than the call before");
    }
}
