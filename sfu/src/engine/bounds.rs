//! What one client's signalling may cost the media thread, and what it may be told.
//!
//! Every input handled on the media thread is bounded before it is parsed: an SDP may
//! carry at most [`MAX_MLINES`] media sections and [`MAX_SDP_CANDIDATES`] candidates, a
//! connection accepts at most [`MAX_REMOTE_CANDIDATES`] trickled ones per ICE credential
//! generation. Errors from the WebRTC stack are passed through [`client_text`] before a
//! client sees them, so no internal detail (parser positions, pointers) leaks.

/// Media sections (m-lines) one SDP may have. str0m keeps every m-line a connection ever
/// negotiated, so this also bounds a publisher connection's size.
pub const MAX_MLINES: usize = 32;
/// Candidates one SDP may list.
pub const MAX_SDP_CANDIDATES: usize = 32;
/// Trickled candidates a connection accepts per ICE credential generation.
pub const MAX_REMOTE_CANDIDATES: usize = 32;

/// Refuses an SDP that would cost more than a bounded amount to handle; the error says
/// which limit.
pub fn check_sdp(sdp: &str) -> Result<(), String> {
    let (mut mlines, mut candidates) = (0usize, 0usize);
    for line in sdp.lines() {
        if line.starts_with("m=") {
            mlines += 1;
        } else if line.starts_with("a=candidate:") {
            candidates += 1;
        }
    }
    if mlines > MAX_MLINES {
        return Err(format!("too many media sections: {mlines} (at most {MAX_MLINES})"));
    }
    if candidates > MAX_SDP_CANDIDATES {
        return Err(format!("too many candidates: {candidates} (at most {MAX_SDP_CANDIDATES})"));
    }
    Ok(())
}

/// An error of the WebRTC stack, fit for a client: on one line, without parser
/// internals such as `PointerOffset(0x7f..)` or other hexadecimal addresses, and short.
pub fn client_text(e: impl std::fmt::Display) -> String {
    let raw = e.to_string();
    let mut out = String::with_capacity(raw.len().min(200));
    for word in raw.split([' ', '\n', '\r']).filter(|w| !w.is_empty()) {
        let internal = word.contains("PointerOffset")
            || word.trim_start_matches(|c: char| !c.is_ascii_alphanumeric()).starts_with("0x");
        if internal {
            // "Parse error at PointerOffset(..)": the position means nothing to a client.
            if let Some(cut) = out.strip_suffix(" at").map(str::len) {
                out.truncate(cut);
            }
            if !out.is_empty() && !out.ends_with(';') {
                out.push(';');
            }
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
        if out.len() > 200 {
            // At a character boundary: the text may quote the client's own non-ASCII input.
            let cut = (0..=200).rev().find(|&i| out.is_char_boundary(i)).unwrap_or(0);
            out.truncate(cut);
            out.push('…');
            break;
        }
    }
    let out = out.trim_end_matches([' ', ':', ',', ';']).to_string();
    if out.is_empty() { "the SDP could not be parsed".to_string() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdp_bounds() {
        let mut sdp = String::from("v=0\r\n");
        for _ in 0..MAX_MLINES {
            sdp.push_str("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n");
        }
        assert!(check_sdp(&sdp).is_ok());
        sdp.push_str("m=video 9 UDP/TLS/RTP/SAVPF 96\r\n");
        assert!(check_sdp(&sdp).unwrap_err().contains("media sections"));
        let cands = "a=candidate:1 1 udp 1 10.0.0.1 5000 typ host\r\n".repeat(MAX_SDP_CANDIDATES + 1);
        assert!(check_sdp(&cands).unwrap_err().contains("candidates"));
    }

    #[test]
    fn no_internals_reach_the_client() {
        let e = "Parse error at PointerOffset(0x7f3a2c001234)\nUnexpected `x`";
        let t = client_text(e);
        assert!(!t.contains("0x") && !t.contains("Pointer"), "{t}");
        assert_eq!(t, "Parse error; Unexpected `x`");
        assert_eq!(client_text("remote fingerprint no match"), "remote fingerprint no match");
        assert_eq!(client_text("PointerOffset(0x1)"), "the SDP could not be parsed");
        assert!(client_text("x".repeat(5000)).chars().count() <= 202);
    }
}
