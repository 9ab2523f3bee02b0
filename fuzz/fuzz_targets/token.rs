//! Access-token verification (`common::Keys::verify`) of any string a client sends, and
//! of tokens signed with the server's key whose header and claims are anything: only a
//! well-formed, unexpired HS256 token of a session not revoked is accepted.
#![no_main]
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Keys, TokenError};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = &[7u8; 32];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let keys = Keys::from_secret(SECRET).unwrap();
    let (token, signed) = match mode % 3 {
        // Anything at all: never accepted without the key.
        0 => (String::from_utf8_lossy(rest).into_owned(), false),
        // Claims of any shape, signed: a standard header.
        1 => (sign(br#"{"alg":"HS256","typ":"JWT"}"#, rest), true),
        // Header and claims of any shape, signed.
        _ => {
            let mut parts = rest.splitn(2, |&b| b == 0);
            let (h, c) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            (sign(h, c), true)
        }
    };
    match keys.verify(&token) {
        Ok(claims) => {
            // Accepted only when signed with the key over exactly its first two parts.
            let parts: Vec<&str> = token.split('.').collect();
            assert!(parts.len() == 3, "{token:?}");
            let resigned = sign_encoded(&format!("{}.{}", parts[0], parts[1]));
            assert!(
                signed || resigned == token,
                "a token not signed with the key was accepted: {token:?}"
            );
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            assert!(
                claims.exp.saturating_add(5) >= now,
                "expired claims accepted"
            );
            // The same claims minted again verify to the same claims.
            assert_eq!(keys.verify(&keys.mint(&claims)), Ok(claims.clone()));
            if let Some(sid) = &claims.sid {
                keys.revocations().revoke(sid, now + 60);
                assert_eq!(keys.verify(&token), Err(TokenError::Revoked));
            }
        }
        Err(TokenError::Missing) => assert!(token.is_empty()),
        Err(TokenError::Invalid | TokenError::Expired) => {}
        Err(e) => panic!("verify said {e:?}"),
    }
});

/// `header.claims.signature` with the server's key over exactly these bytes.
fn sign(header: &[u8], claims: &[u8]) -> String {
    sign_encoded(&format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    ))
}

/// `msg.signature` with the server's key.
fn sign_encoded(msg: &str) -> String {
    let key = EncodingKey::from_secret(SECRET);
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &key, Algorithm::HS256).unwrap();
    format!("{msg}.{sig}")
}
