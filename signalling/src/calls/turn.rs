//! TURN credentials by the TURN REST API scheme (draft-uberti-behave-turn-rest, what
//! coturn's `use-auth-secret` checks): `username = "<expiry unix seconds>:<user id>"`,
//! `credential = base64(HMAC-SHA1(secret, username))`. The TURN server shares only the
//! secret with `maxd` and refuses a username whose expiry has passed.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Serialize;

/// One entry of `RTCConfiguration.iceServers`, as a browser takes it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The password coturn derives for `username` from the shared `secret`.
pub fn password(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Credentials for `user` valid until `expires_at` (unix seconds) on every `urls`.
pub fn credentials(secret: &str, urls: &[String], user: i64, expires_at: u64) -> IceServer {
    let username = format!("{expires_at}:{user}");
    IceServer {
        urls: urls.to_vec(),
        credential: Some(password(secret, &username)),
        username: Some(username),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_base64_hmac_sha1_of_the_username() {
        // HMAC-SHA1("key", "The quick brown fox jumps over the lazy dog") from RFC 2202's
        // companion examples: de7c9b85b8b78aa6bc8a7a36f70a90701c9db4d9.
        assert_eq!(
            password("key", "The quick brown fox jumps over the lazy dog"),
            "3nybhbi3iqa8ino29wqQcBydtNk="
        );
        let s = credentials("s3cret", &["turn:127.0.0.1:3478".into()], 42, 1_800_000_000);
        assert_eq!(s.username.as_deref(), Some("1800000000:42"));
        assert_eq!(s.credential, Some(password("s3cret", "1800000000:42")));
    }
}
