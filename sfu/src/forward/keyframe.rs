//! Keyframe detection from RTP payloads, per codec. Only the first bytes of the payload
//! descriptor are read; nothing is decoded. Malformed or short payloads are "not a
//! keyframe", never a panic.

/// Codecs the SFU forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Opus,
    Vp8,
    Vp9,
    H264,
    Av1,
    /// Anything else (forwarded only as a single layer, never switched).
    Other,
}

impl Codec {
    pub fn is_video(self) -> bool {
        matches!(self, Codec::Vp8 | Codec::Vp9 | Codec::H264 | Codec::Av1)
    }

    pub fn mime(self) -> &'static str {
        match self {
            Codec::Opus => "audio/opus",
            Codec::Vp8 => "video/VP8",
            Codec::Vp9 => "video/VP9",
            Codec::H264 => "video/H264",
            Codec::Av1 => "video/AV1",
            Codec::Other => "application/octet-stream",
        }
    }
}

/// Whether `payload` (RTP payload, no header) starts a keyframe. Audio is always "key".
pub fn is_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Opus | Codec::Other => true,
        Codec::Vp8 => vp8(payload),
        Codec::Vp9 => vp9(payload),
        Codec::H264 => h264(payload),
        Codec::Av1 => av1(payload),
    }
}

/// RFC 7741 payload descriptor, then the VP8 frame tag's P bit (0 = key frame), which is
/// only present in the first packet of partition 0.
fn vp8(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let start = b0 & 0x10 != 0;
    let pid = b0 & 0x07;
    if !start || pid != 0 {
        return false;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let Some(&x) = p.get(i) else { return false };
        i += 1;
        if x & 0x80 != 0 {
            // PictureID: 7 or 15 bits.
            let Some(&pic) = p.get(i) else { return false };
            i += if pic & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID/Y/KEYIDX
        }
    }
    matches!(p.get(i), Some(&tag) if tag & 0x01 == 0)
}

/// Draft-ietf-payload-vp9 descriptor: P (inter-picture predicted) clear and B (start of
/// frame) set, on the lowest spatial layer.
fn vp9(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let i_bit = b0 & 0x80 != 0;
    let p_bit = b0 & 0x40 != 0;
    let l_bit = b0 & 0x20 != 0;
    let b_bit = b0 & 0x08 != 0;
    if p_bit || !b_bit {
        return false;
    }
    if l_bit {
        let mut i = 1;
        if i_bit {
            let Some(&pic) = p.get(1) else { return false };
            i += if pic & 0x80 != 0 { 2 } else { 1 };
        }
        // Spatial layer id is bits 3..1 of the layer byte.
        let Some(&layer) = p.get(i) else { return false };
        return (layer >> 1) & 0x07 == 0;
    }
    true
}

/// RFC 6184: an IDR slice or SPS in a single NAL unit, STAP-A, or the first fragment of a
/// FU-A.
fn h264(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let key = |t: u8| t == 5 || t == 7;
    match b0 & 0x1f {
        t @ 1..=23 => key(t),
        24 => {
            let mut i = 1;
            while i + 2 < p.len() {
                let size = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
                if size == 0 {
                    return false;
                }
                if key(p[i + 2] & 0x1f) {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        28 => matches!(p.get(1), Some(&fu) if fu & 0x80 != 0 && key(fu & 0x1f)),
        _ => false,
    }
}

/// AV1 RTP aggregation header: N (new coded video sequence) marks a keyframe.
fn av1(p: &[u8]) -> bool {
    matches!(p.first(), Some(&b0) if b0 & 0x08 != 0 && b0 & 0x80 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_plain_and_extended_descriptors() {
        assert!(is_keyframe(Codec::Vp8, &[0x10, 0x50, 0x01, 0x00]));
        assert!(!is_keyframe(Codec::Vp8, &[0x10, 0x51, 0x01, 0x00]));
        // Not the start of partition 0.
        assert!(!is_keyframe(Codec::Vp8, &[0x00, 0x50]));
        // X + I with 15-bit picture id + L + T: tag at index 6.
        assert!(is_keyframe(Codec::Vp8, &[0x90, 0xe0, 0x80, 0x01, 0x05, 0x20, 0x10]));
        assert!(!is_keyframe(Codec::Vp8, &[0x90, 0xe0, 0x80, 0x01, 0x05, 0x20, 0x11]));
        // Truncated inputs are not keyframes and do not panic.
        for n in 0..7 {
            let _ = is_keyframe(Codec::Vp8, &[0x90, 0xe0, 0x80, 0x01, 0x05, 0x20, 0x10][..n]);
        }
    }

    #[test]
    fn h264_single_stap_fu() {
        assert!(is_keyframe(Codec::H264, &[0x65, 0x88]));
        assert!(!is_keyframe(Codec::H264, &[0x41, 0x9a]));
        // STAP-A with SPS first.
        assert!(is_keyframe(Codec::H264, &[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce]));
        // FU-A start of IDR, and a middle fragment of IDR.
        assert!(is_keyframe(Codec::H264, &[0x7c, 0x85, 0x00]));
        assert!(!is_keyframe(Codec::H264, &[0x7c, 0x05, 0x00]));
        // Zero-size STAP-A entry stops the walk.
        assert!(!is_keyframe(Codec::H264, &[0x78, 0x00, 0x00, 0x67]));
    }

    #[test]
    fn vp9_and_av1() {
        assert!(is_keyframe(Codec::Vp9, &[0x08]));
        assert!(!is_keyframe(Codec::Vp9, &[0x48]));
        assert!(!is_keyframe(Codec::Vp9, &[0x00]));
        assert!(is_keyframe(Codec::Av1, &[0x18]));
        assert!(!is_keyframe(Codec::Av1, &[0x10]));
        assert!(!is_keyframe(Codec::Av1, &[]));
    }
}
