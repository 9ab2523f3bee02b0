//! WHIP/WHEP `PATCH` bodies (`application/trickle-ice-sdpfrag`): `SdpFrag::parse`, then
//! each candidate through str0m's parser as the engine does.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sfu::engine::SdpFrag;
use sfu::engine::fuzzing::client_text;
use str0m::Candidate;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let frag = match SdpFrag::parse(body) {
        Ok(f) => f,
        Err(e) => {
            assert!(
                e.starts_with("line ") && e.ends_with(" is not an SDP line"),
                "{e}"
            );
            return;
        }
    };
    assert!(frag.candidates.len() <= body.lines().count());
    for c in &frag.candidates {
        assert!(c.starts_with("candidate:"));
        match Candidate::from_sdp_string(c) {
            Ok(parsed) => {
                // str0m writes a candidate it reads back as the same candidate.
                let text = parsed.to_sdp_string();
                let text = text.strip_prefix("a=").unwrap_or(&text);
                let again =
                    Candidate::from_sdp_string(text).expect("str0m reads its own candidate");
                assert_eq!(again.to_sdp_string(), parsed.to_sdp_string());
            }
            Err(e) => {
                let t = client_text(e);
                assert!(!t.is_empty() && !t.contains('\n'));
            }
        }
    }
    // What was parsed, written again, parses to the same fragment.
    let mut again = String::new();
    if let Some(u) = &frag.ufrag {
        again.push_str(&format!("a=ice-ufrag:{u}\r\n"));
    }
    if let Some(p) = &frag.pwd {
        again.push_str(&format!("a=ice-pwd:{p}\r\n"));
    }
    for c in &frag.candidates {
        again.push_str(&format!("a={c}\r\n"));
    }
    assert_eq!(SdpFrag::parse(&again), Ok(frag));
});
