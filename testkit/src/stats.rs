//! Counters of received and sent media, shared between the media tasks and the test, with
//! a change signal so that tests wait on events rather than sleeping.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::sync::watch;

use crate::proto::TrackKind;

/// What has been received on one remote track.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteTrackStats {
    /// The server's track id (from the subscriber offer's `tracks`), or `mid:<mid>` if the
    /// offer did not name the transceiver.
    pub track_id: String,
    /// The publishing participant (from the offer's `tracks`).
    pub participant_id: String,
    pub mid: String,
    pub kind: TrackKind,
    pub packets: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// Video: packets with the marker bit; audio: every packet.
    pub frames: u64,
    pub keyframes: u64,
    /// Payloads whose codec headers or integrity record are broken.
    pub bad_payloads: u64,
    /// Intact payloads whose sender hash is not that of `participant_id` (misrouted media).
    pub foreign_payloads: u64,
    /// Packets carrying RTP header extensions (audio: the audio level, if negotiated).
    pub packets_with_extensions: u64,
    /// Highest frame counter seen in a record.
    pub last_counter: Option<u32>,
    /// Sender hash of the last intact payload ([`crate::media::identity_hash`]).
    pub last_sender: Option<u32>,
    /// Times the sender hash changed (a WHEP slot moving to another publisher).
    pub sender_switches: u64,
    pub first_packet_at: Option<Instant>,
    pub last_packet_at: Option<Instant>,
}

/// What this client has sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendStats {
    pub audio_packets: u64,
    pub video_frames: u64,
    pub keyframes: u64,
    /// PLI/FIR received on the video sender.
    pub keyframe_requests: u64,
    /// `write_rtp` failures (e.g. before the track was bound).
    pub write_errors: u64,
}

/// A value behind a lock plus a change signal, so that tests can wait for a condition on it
/// (re-checked after every change) instead of sleeping.
pub struct Observed<T> {
    value: Mutex<T>,
    changed: watch::Sender<u64>,
}

impl<T> Observed<T> {
    pub fn new(value: T) -> Arc<Self> {
        Arc::new(Self {
            value: Mutex::new(value),
            changed: watch::channel(0).0,
        })
    }

    /// Reads the value.
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.value.lock().expect("stats lock poisoned"))
    }

    /// Changes the value and wakes waiters.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let r = f(&mut self.value.lock().expect("stats lock poisoned"));
        self.changed.send_modify(|n| *n += 1);
        r
    }

    /// Waits until `f` returns `Some`, re-checking after every change; fails after `timeout`
    /// with `what` and the last state described by `describe`.
    pub async fn wait<R>(
        &self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&T) -> Option<R>,
        describe: impl Fn(&T) -> String,
    ) -> Result<R> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if let Some(r) = self.read(&mut f) {
                return Ok(r);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    if let Some(r) = self.read(&mut f) {
                        return Ok(r);
                    }
                    bail!(
                        "timed out after {timeout:?} waiting for {what}; state: {}",
                        self.read(describe)
                    );
                }
            }
        }
    }
}

/// Received-media counters of one client, by track id.
pub type RecvStats = Observed<HashMap<String, RemoteTrackStats>>;
