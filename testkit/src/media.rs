//! Synthetic media: RTP packets whose payloads look like Opus / VP8 to a forwarding SFU
//! and carry an integrity record that the receiver checks.
//!
//! Payload layouts:
//! - audio: one Opus TOC byte (`0x78`, 20 ms frame) followed by the record;
//! - video: VP8 payload descriptor `0x10` (S bit, partition 0), a VP8 frame tag (bit 0 of
//!   the first byte is 0 for keyframes, 1 for delta frames), for keyframes the start code
//!   `9d 01 2a` and a 160x120 size, then the record.
//!
//! The record: `MAGIC` (4 bytes), sender hash (u32 BE, [`identity_hash`] of the sender's
//! participant id), per-track frame counter (u32 BE), total record length (u16 BE), filler
//! bytes derived from the counter, and an FNV-1a checksum (u32 BE) of everything before it.

use bytes::Bytes;
use rtc::rtp;

/// First bytes of every integrity record.
pub const MAGIC: [u8; 4] = *b"MXTK";
/// Bytes of the record around its filler: magic, hash, counter, length, checksum.
const RECORD_OVERHEAD: usize = 4 + 4 + 4 + 2 + 4;
/// Opus TOC byte used for audio payloads (config 15: hybrid FB 20 ms, mono, one frame).
pub const OPUS_TOC: u8 = 0x78;
/// VP8 payload descriptor: no extensions, non-reference 0, S bit set, partition 0.
pub const VP8_DESCRIPTOR: u8 = 0x10;
/// Keyframe start code following the VP8 frame tag.
pub const VP8_START_CODE: [u8; 3] = [0x9d, 0x01, 0x2a];
/// Picture size announced in keyframes.
pub const VIDEO_WIDTH: u16 = 160;
pub const VIDEO_HEIGHT: u16 = 120;

/// Audio: 48 kHz clock, 20 ms packets.
pub const AUDIO_CLOCK_RATE: u32 = 48_000;
pub const AUDIO_TIMESTAMP_STEP: u32 = 960;
pub const AUDIO_PACKET_INTERVAL_MS: u64 = 20;
/// Video: 90 kHz clock, 30 fps, one packet per frame.
pub const VIDEO_CLOCK_RATE: u32 = 90_000;
pub const VIDEO_TIMESTAMP_STEP: u32 = 3_000;
pub const VIDEO_FRAME_INTERVAL_MS: u64 = 33;
/// A keyframe is sent at least this often (in frames), besides on PLI/FIR.
pub const KEYFRAME_INTERVAL_FRAMES: u32 = 30;

/// 32-bit FNV-1a.
pub fn fnv1a(data: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for &b in data {
        hash ^= b as u32;
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The hash of a participant id that senders put in every record.
pub fn identity_hash(participant_id: &str) -> u32 {
    fnv1a(participant_id.as_bytes())
}

/// What a valid record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub sender_hash: u32,
    pub counter: u32,
}

/// Why a payload failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    TooShort,
    BadHeader(&'static str),
    BadMagic,
    BadLength,
    BadChecksum,
}

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PayloadError::TooShort => write!(f, "payload too short"),
            PayloadError::BadHeader(what) => write!(f, "bad codec header: {what}"),
            PayloadError::BadMagic => write!(f, "integrity record magic missing"),
            PayloadError::BadLength => write!(f, "integrity record length mismatch"),
            PayloadError::BadChecksum => write!(f, "integrity record checksum mismatch"),
        }
    }
}

impl std::error::Error for PayloadError {}

/// Builds a record of exactly `len` bytes (at least [`RECORD_OVERHEAD`]).
pub fn build_record(sender_hash: u32, counter: u32, len: usize) -> Vec<u8> {
    let len = len.clamp(RECORD_OVERHEAD, u16::MAX as usize);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&sender_hash.to_be_bytes());
    out.extend_from_slice(&counter.to_be_bytes());
    out.extend_from_slice(&(len as u16).to_be_bytes());
    let filler = len - RECORD_OVERHEAD;
    let mut x = counter.wrapping_mul(2_654_435_761) ^ sender_hash;
    for _ in 0..filler {
        // xorshift: cheap pseudo-random filler so corruption anywhere is detectable.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.push(x as u8);
    }
    let sum = fnv1a(&out);
    out.extend_from_slice(&sum.to_be_bytes());
    out
}

/// Checks a record (the whole rest of the payload after the codec headers).
pub fn verify_record(data: &[u8]) -> Result<Record, PayloadError> {
    if data.len() < RECORD_OVERHEAD {
        return Err(PayloadError::TooShort);
    }
    if data[..4] != MAGIC {
        return Err(PayloadError::BadMagic);
    }
    let len = u16::from_be_bytes([data[12], data[13]]) as usize;
    if len != data.len() {
        return Err(PayloadError::BadLength);
    }
    let (body, sum) = data.split_at(len - 4);
    if fnv1a(body) != u32::from_be_bytes(sum.try_into().expect("4 bytes")) {
        return Err(PayloadError::BadChecksum);
    }
    Ok(Record {
        sender_hash: u32::from_be_bytes(data[4..8].try_into().expect("4 bytes")),
        counter: u32::from_be_bytes(data[8..12].try_into().expect("4 bytes")),
    })
}

/// An audio payload: Opus TOC byte + record (`record_len` bytes).
pub fn audio_payload(sender_hash: u32, counter: u32, record_len: usize) -> Vec<u8> {
    let mut out = vec![OPUS_TOC];
    out.extend(build_record(sender_hash, counter, record_len));
    out
}

/// A VP8 payload of one whole frame: descriptor, frame tag, keyframe header, record.
pub fn vp8_payload(keyframe: bool, sender_hash: u32, counter: u32, record_len: usize) -> Vec<u8> {
    let record = build_record(sender_hash, counter, record_len);
    let mut out = Vec::with_capacity(record.len() + 11);
    out.push(VP8_DESCRIPTOR);
    // Frame tag (RFC 6386 9.1), 3 bytes little endian: bit 0 inverse keyframe flag,
    // bits 1-3 version 0, bit 4 show_frame, bits 5-23 first partition size.
    let first_partition = (record.len() as u32).min((1 << 19) - 1);
    let tag: u32 = (first_partition << 5) | (1 << 4) | u32::from(!keyframe);
    out.extend_from_slice(&tag.to_le_bytes()[..3]);
    if keyframe {
        out.extend_from_slice(&VP8_START_CODE);
        out.extend_from_slice(&VIDEO_WIDTH.to_le_bytes()); // horizontal scale 0
        out.extend_from_slice(&VIDEO_HEIGHT.to_le_bytes()); // vertical scale 0
    }
    out.extend(record);
    out
}

/// What a video payload says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Frame {
    pub keyframe: bool,
    pub record: Record,
}

/// Parses a VP8 payload made by [`vp8_payload`] and verifies its record.
pub fn parse_vp8_payload(payload: &[u8]) -> Result<Vp8Frame, PayloadError> {
    let (&descriptor, rest) = payload.split_first().ok_or(PayloadError::TooShort)?;
    if descriptor & 0x80 != 0 {
        return Err(PayloadError::BadHeader(
            "unexpected VP8 descriptor extension",
        ));
    }
    if descriptor & 0x10 == 0 {
        return Err(PayloadError::BadHeader(
            "VP8 S bit not set on a one-packet frame",
        ));
    }
    if rest.len() < 3 {
        return Err(PayloadError::TooShort);
    }
    let keyframe = rest[0] & 0x01 == 0;
    let mut body = &rest[3..];
    if keyframe {
        if body.len() < 7 {
            return Err(PayloadError::TooShort);
        }
        if body[..3] != VP8_START_CODE {
            return Err(PayloadError::BadHeader("VP8 keyframe start code"));
        }
        body = &body[7..];
    }
    Ok(Vp8Frame {
        keyframe,
        record: verify_record(body)?,
    })
}

/// Parses an audio payload made by [`audio_payload`] and verifies its record.
pub fn parse_audio_payload(payload: &[u8]) -> Result<Record, PayloadError> {
    let (&toc, rest) = payload.split_first().ok_or(PayloadError::TooShort)?;
    if toc != OPUS_TOC {
        return Err(PayloadError::BadHeader("Opus TOC"));
    }
    verify_record(rest)
}

/// Audio level (0 = loudest .. 127 = silence, in -dBov) of packet `counter`: a slow
/// "speech" pattern so that every sender is sometimes loud.
pub fn audio_level(counter: u32) -> u8 {
    // 2 s loud (level 20), 1 s quieter (level 60), per 3 s.
    if counter % 150 < 100 { 20 } else { 60 }
}

/// Makes the RTP packets of one audio track (20 ms Opus-sized packets).
#[derive(Debug, Clone)]
pub struct AudioGenerator {
    pub ssrc: u32,
    pub payload_type: u8,
    sender_hash: u32,
    seq: u16,
    timestamp: u32,
    counter: u32,
}

impl AudioGenerator {
    pub fn new(ssrc: u32, payload_type: u8, sender_hash: u32) -> Self {
        Self {
            ssrc,
            payload_type,
            sender_hash,
            seq: ssrc as u16,
            timestamp: ssrc.rotate_left(7),
            counter: 0,
        }
    }

    /// Packets made so far.
    pub fn count(&self) -> u32 {
        self.counter
    }

    /// The next packet and its audio level.
    pub fn next_packet(&mut self) -> (rtp::Packet, u8) {
        let counter = self.counter;
        // 70..90 byte records: Opus at ~32 kbit/s.
        let payload = audio_payload(self.sender_hash, counter, 70 + (counter % 21) as usize);
        let pkt = rtp_packet(
            self.payload_type,
            self.seq,
            self.timestamp,
            self.ssrc,
            counter == 0,
            payload,
        );
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(AUDIO_TIMESTAMP_STEP);
        self.counter += 1;
        (pkt, audio_level(counter))
    }
}

/// Makes the RTP packets of one VP8 video track (one packet per frame, 30 fps).
#[derive(Debug, Clone)]
pub struct VideoGenerator {
    pub ssrc: u32,
    pub payload_type: u8,
    sender_hash: u32,
    seq: u16,
    timestamp: u32,
    counter: u32,
    since_keyframe: u32,
    keyframes: u32,
}

impl VideoGenerator {
    pub fn new(ssrc: u32, payload_type: u8, sender_hash: u32) -> Self {
        Self {
            ssrc,
            payload_type,
            sender_hash,
            seq: ssrc as u16,
            timestamp: ssrc.rotate_left(11),
            counter: 0,
            since_keyframe: 0,
            keyframes: 0,
        }
    }

    /// Frames made so far.
    pub fn count(&self) -> u32 {
        self.counter
    }

    /// Keyframes made so far.
    pub fn keyframes(&self) -> u32 {
        self.keyframes
    }

    /// The next frame's packet: a keyframe if `force_keyframe`, for the first frame, and
    /// every [`KEYFRAME_INTERVAL_FRAMES`] frames.
    pub fn next_packet(&mut self, force_keyframe: bool) -> rtp::Packet {
        let counter = self.counter;
        let keyframe =
            force_keyframe || counter == 0 || self.since_keyframe + 1 >= KEYFRAME_INTERVAL_FRAMES;
        // Keyframes ~1000 bytes, delta frames 400..~900 bytes: all below 1100.
        let record_len = if keyframe {
            980
        } else {
            400 + ((counter * 37) % 480) as usize
        };
        let payload = vp8_payload(keyframe, self.sender_hash, counter, record_len);
        let pkt = rtp_packet(
            self.payload_type,
            self.seq,
            self.timestamp,
            self.ssrc,
            true,
            payload,
        );
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(VIDEO_TIMESTAMP_STEP);
        self.counter += 1;
        if keyframe {
            self.since_keyframe = 0;
            self.keyframes += 1;
        } else {
            self.since_keyframe += 1;
        }
        pkt
    }
}

fn rtp_packet(
    payload_type: u8,
    seq: u16,
    timestamp: u32,
    ssrc: u32,
    marker: bool,
    payload: Vec<u8>,
) -> rtp::Packet {
    rtp::Packet {
        header: rtp::header::Header {
            version: 2,
            marker,
            payload_type,
            sequence_number: seq,
            timestamp,
            ssrc,
            ..Default::default()
        },
        payload: Bytes::from(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_corruption() {
        for len in [RECORD_OVERHEAD, 80, 1000] {
            let rec = build_record(0xdead_beef, 42, len);
            assert_eq!(rec.len(), len);
            assert_eq!(
                verify_record(&rec),
                Ok(Record {
                    sender_hash: 0xdead_beef,
                    counter: 42
                })
            );
            for i in 0..rec.len() {
                let mut bad = rec.clone();
                bad[i] ^= 0x01;
                assert!(
                    verify_record(&bad).is_err(),
                    "flip at byte {i} of {len} undetected"
                );
            }
            assert!(verify_record(&rec[..len - 1]).is_err());
        }
    }

    #[test]
    fn vp8_keyframe_bit_and_headers() {
        let key = vp8_payload(true, 7, 1, 900);
        assert_eq!(key[0], VP8_DESCRIPTOR);
        assert_eq!(key[1] & 1, 0, "keyframe has inverse key bit 0");
        assert_eq!(&key[4..7], &VP8_START_CODE);
        assert_eq!(u16::from_le_bytes([key[7], key[8]]), VIDEO_WIDTH);
        assert_eq!(u16::from_le_bytes([key[9], key[10]]), VIDEO_HEIGHT);
        assert_eq!(
            parse_vp8_payload(&key),
            Ok(Vp8Frame {
                keyframe: true,
                record: Record {
                    sender_hash: 7,
                    counter: 1
                }
            })
        );

        let delta = vp8_payload(false, 7, 2, 500);
        assert_eq!(delta[1] & 1, 1, "delta frame has inverse key bit 1");
        assert_eq!(delta.len(), 1 + 3 + 500);
        let frame = parse_vp8_payload(&delta).unwrap();
        assert!(!frame.keyframe);
        assert_eq!(frame.record.counter, 2);

        let mut bad = delta.clone();
        *bad.last_mut().unwrap() ^= 0xff;
        assert_eq!(parse_vp8_payload(&bad), Err(PayloadError::BadChecksum));
        let mut bad = key.clone();
        bad[5] = 0;
        assert!(matches!(
            parse_vp8_payload(&bad),
            Err(PayloadError::BadHeader(_))
        ));
    }

    #[test]
    fn audio_payload_round_trip() {
        let p = audio_payload(identity_hash("PA_1"), 9, 80);
        assert_eq!(p.len(), 81);
        assert_eq!(
            parse_audio_payload(&p),
            Ok(Record {
                sender_hash: identity_hash("PA_1"),
                counter: 9
            })
        );
        let mut bad = p.clone();
        bad[20] ^= 4;
        assert!(parse_audio_payload(&bad).is_err());
    }

    #[test]
    fn generators_make_well_formed_streams() {
        let mut v = VideoGenerator::new(1234, 96, 5);
        let pkts: Vec<_> = (0..61).map(|i| v.next_packet(i == 45)).collect();
        let keys: Vec<usize> = pkts
            .iter()
            .enumerate()
            .filter(|(_, p)| parse_vp8_payload(&p.payload).unwrap().keyframe)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(keys, vec![0, 30, 45]);
        for (i, p) in pkts.iter().enumerate() {
            assert!(p.header.marker);
            assert!(p.payload.len() < 1100 && p.payload.len() > 400);
            assert_eq!(
                p.header.timestamp.wrapping_sub(pkts[0].header.timestamp),
                i as u32 * VIDEO_TIMESTAMP_STEP
            );
            assert_eq!(
                p.header.sequence_number,
                pkts[0].header.sequence_number.wrapping_add(i as u16)
            );
        }
        let mut a = AudioGenerator::new(99, 111, 5);
        let (p0, _) = a.next_packet();
        let (p1, _) = a.next_packet();
        assert_eq!(
            p1.header.timestamp.wrapping_sub(p0.header.timestamp),
            AUDIO_TIMESTAMP_STEP
        );
        assert!((60..=100).contains(&p1.payload.len()));
        assert_eq!(parse_audio_payload(&p1.payload).unwrap().counter, 1);
    }
}
