//! What simulated publishers send: real Opus packets encoded once from a voice-like
//! signal and looped, and synthetic VP8 frames (valid RFC 7741 payload descriptor and
//! VP8 frame header, keyframes marked as the SFU detects them, realistic sizes).
//!
//! Every RTP payload ends with a 16-byte [trailer](Trailer): the send time and a
//! per-stream counter, so receivers measure one-way delay. In Opus packets the trailer
//! sits in the packet's padding (code 3, RFC 6716 section 3.2.5), so the packets still
//! decode; in VP8 it is at the end of the partition data, which a decoder would reject
//! (the frames are synthetic anyway).

use std::f32::consts::PI;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};

/// Bytes of the trailer at the end of every payload.
pub const TRAILER_LEN: usize = 16;
const MAGIC: u32 = 0x4d58_4c54; // "MXLT"

/// Microseconds since the Unix epoch (the send-time base; sender and receiver share it
/// when they run on one machine or on synchronised clocks).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What every payload carries at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Send time, microseconds since the Unix epoch.
    pub sent_us: u64,
    /// Packet counter of the sending stream.
    pub counter: u32,
}

impl Trailer {
    pub fn write(&self, out: &mut [u8]) {
        let n = out.len();
        let t = &mut out[n - TRAILER_LEN..];
        t[..8].copy_from_slice(&self.sent_us.to_be_bytes());
        t[8..12].copy_from_slice(&self.counter.to_be_bytes());
        t[12..].copy_from_slice(&MAGIC.to_be_bytes());
    }

    pub fn read(payload: &[u8]) -> Option<Trailer> {
        let n = payload.len();
        if n < TRAILER_LEN {
            return None;
        }
        let t = &payload[n - TRAILER_LEN..];
        if u32::from_be_bytes(t[12..16].try_into().ok()?) != MAGIC {
            return None;
        }
        Some(Trailer {
            sent_us: u64::from_be_bytes(t[..8].try_into().ok()?),
            counter: u32::from_be_bytes(t[8..12].try_into().ok()?),
        })
    }
}

/// Opus packets of 20 ms, encoded once: a few seconds of voice and of silence.
pub struct OpusLoop {
    /// Voiced packets, each already padded so its last [`TRAILER_LEN`] bytes are padding.
    pub voice: Vec<Vec<u8>>,
    /// Packets of silence (what a non-DTX client sends while muted by its own VAD).
    pub silence: Vec<Vec<u8>>,
}

/// Samples per 20 ms at 48 kHz.
pub const OPUS_FRAME: usize = 960;

impl OpusLoop {
    /// Encodes `seconds` of a voice-like signal at `bitrate` bits/s (mono, 48 kHz).
    pub fn encode(bitrate: u32, seconds: u32) -> Result<OpusLoop> {
        let mut enc = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)
            .context("opus encoder")?;
        enc.set_bitrate(opus::Bitrate::Bits(bitrate as i32))
            .context("opus bitrate")?;
        enc.set_inband_fec(true).context("opus fec")?;
        let signal = voice_signal(48_000 * seconds as usize, 1);
        let mut voice = Vec::new();
        let mut buf = vec![0u8; 4000];
        for frame in signal.chunks_exact(OPUS_FRAME) {
            let n = enc.encode(frame, &mut buf).context("opus encode")?;
            voice.push(pad_for_trailer(&buf[..n])?);
        }
        let zeros = vec![0i16; OPUS_FRAME];
        let mut silence = Vec::new();
        for _ in 0..10 {
            let n = enc.encode(&zeros, &mut buf).context("opus encode")?;
            silence.push(pad_for_trailer(&buf[..n])?);
        }
        // The first frames after speech still carry its tail.
        silence.drain(..5);
        Ok(OpusLoop { voice, silence })
    }
}

/// Rewrites `packet` as a code-3 packet whose padding holds at least [`TRAILER_LEN`] bytes
/// at its end.
fn pad_for_trailer(packet: &[u8]) -> Result<Vec<u8>> {
    // Code 0 -> code 3 adds a frame-count byte and one padding-length byte.
    let mut out = vec![0u8; packet.len() + 2 + TRAILER_LEN + 2];
    out[..packet.len()].copy_from_slice(packet);
    // opus_packet_pad fills the whole buffer (it answers OPUS_OK, not a length).
    opus::packet::pad(&mut out, packet.len()).context("opus pad")?;
    Ok(out)
}

/// A voice-like signal: a glottal pulse train (pitch gliding 100-220 Hz) through three
/// formant-like resonances that move, in syllables of ~200 ms separated by pauses, with
/// a little breath noise. Deterministic for `seed`.
pub fn voice_signal(samples: usize, seed: u64) -> Vec<i16> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let sr = 48_000.0f32;
    let mut out = Vec::with_capacity(samples);
    let mut phase = 0.0f32;
    // Two-pole resonators: state per formant.
    let mut st = [[0.0f32; 2]; 3];
    let mut syllable_left = 0usize;
    let mut gap_left = 0usize;
    let mut formants = [500.0f32, 1500.0, 2500.0];
    let mut pitch = 140.0f32;
    for i in 0..samples {
        if syllable_left == 0 && gap_left == 0 {
            syllable_left = rng.random_range(6_000..14_000);
            gap_left = rng.random_range(1_000..8_000);
            formants = [
                rng.random_range(300.0..900.0),
                rng.random_range(900.0..2200.0),
                rng.random_range(2200.0..3200.0),
            ];
            pitch = rng.random_range(100.0..220.0);
        }
        let env = if syllable_left > 0 {
            syllable_left -= 1;
            let x = syllable_left as f32 / 10_000.0;
            (x * PI).sin().abs().min(1.0)
        } else {
            gap_left -= 1;
            0.0
        };
        let f0 = pitch * (1.0 + 0.05 * (2.0 * PI * 5.0 * i as f32 / sr).sin());
        phase += f0 / sr;
        let pulse = if phase >= 1.0 {
            phase -= 1.0;
            1.0
        } else {
            0.0
        };
        let noise: f32 = rng.random_range(-0.02..0.02);
        let excitation = pulse * env + noise * (0.3 + env);
        let mut y = 0.0;
        for (k, f) in formants.iter().enumerate() {
            let r = 0.97f32;
            let w = 2.0 * PI * f / sr;
            let v = excitation + 2.0 * r * w.cos() * st[k][0] - r * r * st[k][1];
            st[k][1] = st[k][0];
            st[k][0] = v;
            y += v / (k as f32 + 1.0);
        }
        out.push((y * 1500.0).clamp(-32_000.0, 32_000.0) as i16);
    }
    out
}

/// One simulcast layer of the synthetic VP8 source.
#[derive(Debug, Clone)]
pub struct Vp8Layer {
    pub rid: Option<&'static str>,
    pub width: u16,
    pub height: u16,
    pub bitrate: u32,
}

/// Layers for a top bitrate: one layer, or three (q, h, f) at 1/10, 3/10 and all of it.
pub fn vp8_layers(top_bitrate: u32, simulcast: bool) -> Vec<Vp8Layer> {
    if !simulcast {
        return vec![Vp8Layer {
            rid: None,
            width: 1280,
            height: 720,
            bitrate: top_bitrate,
        }];
    }
    vec![
        Vp8Layer {
            rid: Some("q"),
            width: 320,
            height: 180,
            bitrate: top_bitrate / 10,
        },
        Vp8Layer {
            rid: Some("h"),
            width: 640,
            height: 360,
            bitrate: top_bitrate * 3 / 10,
        },
        Vp8Layer {
            rid: Some("f"),
            width: 1280,
            height: 720,
            bitrate: top_bitrate,
        },
    ]
}

/// Largest RTP payload we make (leaves room for RTP header, extensions, SRTP tag).
pub const MAX_PAYLOAD: usize = 1100;

/// Frame sizes of one layer: keyframes about five times an inter frame, the mean
/// matching the bitrate, +-25 % per frame.
pub struct Vp8Source {
    pub layer: Vp8Layer,
    fps: u32,
    gop: u32,
    picture_id: u16,
    rng: rand::rngs::StdRng,
    filler: std::sync::Arc<[u8]>,
}

/// Bytes of pseudo-random filler shared by every source (payload bytes are copied out
/// of it at a random offset).
pub fn filler() -> std::sync::Arc<[u8]> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    (0..256 * 1024)
        .map(|_| rng.random::<u8>())
        .collect::<Vec<u8>>()
        .into()
}

impl Vp8Source {
    pub fn new(
        layer: Vp8Layer,
        fps: u32,
        gop: u32,
        seed: u64,
        filler: std::sync::Arc<[u8]>,
    ) -> Self {
        Vp8Source {
            layer,
            fps: fps.max(1),
            gop: gop.max(1),
            picture_id: (seed as u16) & 0x7fff,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            filler,
        }
    }

    /// Size in bytes of the next frame's data.
    fn frame_size(&mut self, key: bool) -> usize {
        let mean = self.layer.bitrate as f64 / 8.0 / self.fps as f64;
        let g = self.gop as f64;
        let inter = mean * g / (g + 4.0);
        let base = if key { inter * 5.0 } else { inter };
        let jitter = self.rng.random_range(0.75..1.25);
        ((base * jitter) as usize).max(40)
    }

    /// Payloads of the next frame, trailer space included (to be filled by the sender).
    /// The first packet carries the VP8 frame tag (and, for a keyframe, the start code
    /// and dimensions).
    pub fn next_frame(&mut self, key: bool) -> Vec<Vec<u8>> {
        let size = self.frame_size(key);
        let pid = self.picture_id;
        self.picture_id = (self.picture_id + 1) & 0x7fff;
        // Frame data: tag (+ keyframe header) then filler.
        let mut data = Vec::with_capacity(size + 10);
        let first_part = (size.min(0x7ffff) as u32) << 5;
        let tag = first_part | 0x10 | if key { 0 } else { 1 }; // show_frame, P bit
        data.extend_from_slice(&tag.to_le_bytes()[..3]);
        if key {
            data.extend_from_slice(&[0x9d, 0x01, 0x2a]);
            data.extend_from_slice(&(self.layer.width & 0x3fff).to_le_bytes());
            data.extend_from_slice(&(self.layer.height & 0x3fff).to_le_bytes());
        }
        let need = size.saturating_sub(data.len());
        let off = self
            .rng
            .random_range(0..self.filler.len() - need.min(self.filler.len() - 1));
        let end = (off + need).min(self.filler.len());
        data.extend_from_slice(&self.filler[off..end]);
        // Packetise: 4-byte descriptor (X, S on the first, I with a 15-bit PictureID).
        let per = MAX_PAYLOAD - 4 - TRAILER_LEN;
        let mut out = Vec::with_capacity(data.len() / per + 1);
        for (i, chunk) in data.chunks(per).enumerate() {
            let mut p = Vec::with_capacity(4 + chunk.len() + TRAILER_LEN);
            p.push(0x80 | if i == 0 { 0x10 } else { 0 });
            p.push(0x80);
            p.push(0x80 | (pid >> 8) as u8);
            p.push(pid as u8);
            p.extend_from_slice(chunk);
            p.extend_from_slice(&[0u8; TRAILER_LEN]);
            out.push(p);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SFU's own keyframe rule: what it must recognise in the simulator's frames.
    fn vp8_is_keyframe(p: &[u8]) -> bool {
        sfu::forward::is_keyframe(sfu::forward::Codec::Vp8, p)
    }

    #[test]
    fn opus_packets_with_trailer_still_decode() {
        let lp = OpusLoop::encode(32_000, 2).unwrap();
        assert_eq!(lp.voice.len(), 100);
        let mut dec = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
        let mut pcm = vec![0i16; OPUS_FRAME];
        let mut bytes = 0;
        for (i, p) in lp.voice.iter().enumerate() {
            let mut p = p.clone();
            Trailer {
                sent_us: 1234 + i as u64,
                counter: i as u32,
            }
            .write(&mut p);
            assert_eq!(dec.decode(&p, &mut pcm, false).unwrap(), OPUS_FRAME);
            let t = Trailer::read(&p).unwrap();
            assert_eq!((t.sent_us, t.counter), (1234 + i as u64, i as u32));
            bytes += p.len();
        }
        // Around 32 kbit/s: 80 bytes per 20 ms, plus the trailer.
        let avg = bytes / lp.voice.len();
        assert!((50..140).contains(&avg), "average packet {avg} bytes");
        let sizes: Vec<usize> = lp.silence.iter().map(Vec::len).collect();
        assert!(sizes.iter().all(|&n| n < 60), "{sizes:?}");
    }

    #[test]
    fn vp8_frames_are_marked_and_sized() {
        let layer = vp8_layers(1_500_000, false).remove(0);
        let mut src = Vp8Source::new(layer, 30, 90, 1, filler());
        let key = src.next_frame(true);
        assert!(vp8_is_keyframe(&key[0]));
        assert!(key[1..].iter().all(|p| !vp8_is_keyframe(p)));
        assert_eq!(&key[0][7..10], &[0x9d, 0x01, 0x2a]);
        let mut total = key.iter().map(Vec::len).sum::<usize>();
        for _ in 1..90 {
            let f = src.next_frame(false);
            assert!(!vp8_is_keyframe(&f[0]));
            assert!(f.iter().all(|p| p.len() <= MAX_PAYLOAD));
            total += f.iter().map(Vec::len).sum::<usize>();
        }
        let kbps = total as f64 * 8.0 / 3.0 / 1000.0;
        assert!((1200.0..1900.0).contains(&kbps), "{kbps} kbit/s");
    }
}
