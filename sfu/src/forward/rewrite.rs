//! Per-subscriber RTP rewriting: one outgoing stream (one SSRC, continuous sequence
//! numbers and timestamps) out of incoming streams that change under it - simulcast
//! layer switches, a publisher that restarts, pauses and resumes.
//!
//! Incoming packets are grouped into *segments*: runs from one source. When the source
//! changes (or [`Rewriter::rebase`] is called) a new segment starts right after the
//! highest sequence number sent so far, and its timestamps continue from the last sent
//! timestamp plus the wall-clock time that passed. Inside a segment, sequence numbers and
//! timestamps keep their incoming spacing, so losses stay visible to the receiver (which
//! NACKs them) and reordering is preserved.

use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Rewriter {
    clock_rate: u32,
    src: Option<u32>,
    rebase: bool,
    seq_offset: i64,
    ts_offset: u32,
    segment_start: u64,
    max_out_seq: Option<u64>,
    last_out_ts: u32,
    last_out_at: Option<Instant>,
    first_seq: u64,
    first_ts: u32,
}

/// Where a forwarded packet goes in the outgoing stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// Extended outgoing sequence number (starts below 2^15, so no ROC is signalled).
    pub seq: u64,
    pub ts: u32,
    /// First packet of a new segment.
    pub new_segment: bool,
}

impl Rewriter {
    /// `first_seq` and `first_ts` are where the outgoing stream starts (random in use).
    pub fn new(clock_rate: u32, first_seq: u16, first_ts: u32) -> Rewriter {
        Rewriter {
            clock_rate: clock_rate.max(1),
            src: None,
            rebase: false,
            seq_offset: 0,
            ts_offset: 0,
            segment_start: 0,
            max_out_seq: None,
            last_out_ts: first_ts,
            last_out_at: None,
            first_seq: (first_seq & 0x7fff) as u64,
            first_ts,
        }
    }

    /// The next packet starts a new segment even if its source is unchanged (after a
    /// pause, a mute, or forwarding that skipped packets on purpose).
    pub fn rebase(&mut self) {
        self.rebase = true;
    }

    /// Rewrites a packet of source `src` with extended sequence number `seq` and RTP
    /// timestamp `ts`. `None`: the packet belongs before the current segment (a late
    /// packet of an old layer, or reordered across a switch) and must be dropped.
    pub fn rewrite(&mut self, src: u32, seq: u64, ts: u32, now: Instant) -> Option<Rewritten> {
        let mut new_segment = false;
        if self.src != Some(src) || self.rebase {
            new_segment = true;
            let out_seq = match self.max_out_seq {
                Some(m) => m + 1,
                None => self.first_seq,
            };
            let out_ts = match self.last_out_at {
                Some(at) => {
                    let elapsed = now.saturating_duration_since(at);
                    let ticks = (elapsed.as_micros() as u64 * self.clock_rate as u64 / 1_000_000).max(1);
                    self.last_out_ts.wrapping_add(ticks as u32)
                }
                None => self.first_ts,
            };
            self.seq_offset = out_seq as i64 - seq as i64;
            self.ts_offset = out_ts.wrapping_sub(ts);
            self.segment_start = seq;
            self.src = Some(src);
            self.rebase = false;
        } else if seq < self.segment_start {
            return None;
        }
        let out_seq = (seq as i64 + self.seq_offset) as u64;
        let out_ts = ts.wrapping_add(self.ts_offset);
        if self.max_out_seq.is_none_or(|m| out_seq > m) {
            self.max_out_seq = Some(out_seq);
            self.last_out_ts = out_ts;
            self.last_out_at = Some(now);
        }
        Some(Rewritten { seq: out_seq, ts: out_ts, new_segment })
    }

    /// Highest outgoing sequence number so far.
    pub fn max_seq(&self) -> Option<u64> {
        self.max_out_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keeps_spacing_inside_a_segment_and_continues_across_switches() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(90_000, 1000, 5000);
        let a = r.rewrite(0xa, 70_000, 1_000_000, t0).unwrap();
        assert_eq!((a.seq, a.ts, a.new_segment), (1000, 5000, true));
        // Loss of 70_001 stays a gap; reordering keeps order.
        let b = r.rewrite(0xa, 70_003, 1_006_000, t0 + Duration::from_millis(66)).unwrap();
        let c = r.rewrite(0xa, 70_002, 1_003_000, t0 + Duration::from_millis(67)).unwrap();
        assert_eq!((b.seq, b.ts), (1003, 11_000));
        assert_eq!((c.seq, c.ts), (1002, 8000));
        // Switch to another source 100 ms after the newest sent packet.
        let d = r.rewrite(0xb, 9, 42, t0 + Duration::from_millis(166)).unwrap();
        assert!(d.new_segment);
        assert_eq!(d.seq, 1004);
        assert_eq!(d.ts, 11_000 + 9000);
        // A packet of the new source from before the switch point is dropped (the layer
        // selector already drops packets of layers other than the current one).
        assert_eq!(r.rewrite(0xb, 8, 42u32.wrapping_sub(3000), t0 + Duration::from_millis(167)), None);
        let e = r.rewrite(0xb, 10, 42 + 3000, t0 + Duration::from_millis(200)).unwrap();
        assert_eq!((e.seq, e.ts), (1005, 23_000));
    }

    #[test]
    fn timestamps_wrap_and_rebase_restarts_segment() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(48_000, 7, u32::MAX - 100);
        let a = r.rewrite(1, 5, 0, t0).unwrap();
        let b = r.rewrite(1, 6, 960, t0 + Duration::from_millis(20)).unwrap();
        assert_eq!(b.ts, a.ts.wrapping_add(960));
        r.rebase();
        // Same source restarts its numbering (e.g. publisher reconnected).
        let c = r.rewrite(1, 3, 77, t0 + Duration::from_millis(1020)).unwrap();
        assert!(c.new_segment);
        assert_eq!(c.seq, b.seq + 1);
        assert_eq!(c.ts, b.ts.wrapping_add(48_000));
    }

    #[test]
    fn first_sequence_number_needs_no_roc() {
        let r = Rewriter::new(90_000, 0xffff, 0);
        assert!(r.first_seq < 0x8000);
    }
}
