//! The engine's own random choices come from its seed: two runs of the same call on the
//! virtual clock with the same seed name participants, tracks and sessions alike, and
//! another seed names them otherwise.

mod harness;
mod netsim;

use std::time::Duration;

use harness::{World, tracks_of};
use netsim::Link;
use sfu::proto::ServerMsg;

/// Participant ids, session ids and track ids of a two-party call run with `seed`.
fn names(seed: u64) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut w = World::new(
        seed,
        Link {
            latency: Duration::from_millis(5),
            jitter: Duration::ZERO,
            loss: 0.0,
        },
    );
    let (a, b) = (w.join("alice"), w.join("bob"));
    w.publish(a, false);
    w.run(3_000, false, |_, _| {});
    let pids = vec![w.clients[a].pid.clone(), w.clients[b].pid.clone()];
    let sessions = [a, b]
        .iter()
        .map(|&i| {
            w.clients[i]
                .msgs
                .iter()
                .find_map(|m| match m {
                    ServerMsg::Joined { session_id, .. } => Some(session_id.clone()),
                    _ => None,
                })
                .expect("joined")
        })
        .collect();
    let mut tracks: Vec<String> = tracks_of(&w, b).into_iter().map(|(id, _)| id).collect();
    tracks.sort();
    assert!(!tracks.is_empty(), "bob sees alice's tracks");
    (pids, sessions, tracks)
}

#[test]
fn the_same_seed_names_everything_alike() {
    let first = names(7);
    assert_eq!(first, names(7));
    let other = names(8);
    assert_ne!(first.0, other.0, "participant ids");
    assert_ne!(first.1, other.1, "session ids");
    assert_ne!(first.2, other.2, "track ids");
}
