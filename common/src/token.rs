//! Access tokens: JWTs signed with HMAC-SHA256.
//!
//! Signalling mints them for accounts and calls, `maxd token` mints them for tests and
//! tools; the sfu and the relay only verify. A token names an identity (`sub`), an
//! optional room, the grants it carries and its expiry.

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::revoke::{Revocations, now_secs};

/// File in the data directory holding the dev-mode secret (hex), made on first use.
pub const DEV_SECRET_FILE: &str = "dev-secret.hex";

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The identity: a participant name for call tokens, a user id for account tokens.
    pub sub: String,
    /// Display name shown to others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The only room this token opens; `None` for account tokens that open no room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// What the bearer may do.
    #[serde(default)]
    pub grants: Grants,
    /// The device session an account token belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
}

/// Source kinds a publisher may be limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Camera,
    Microphone,
    ScreenShare,
    ScreenShareAudio,
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "camera" => Source::Camera,
            "microphone" => Source::Microphone,
            "screen_share" => Source::ScreenShare,
            "screen_share_audio" => Source::ScreenShareAudio,
            other => {
                return Err(format!(
                    "unknown source {other:?}: expected camera, microphone, screen_share or screen_share_audio"
                ));
            }
        })
    }
}

/// What a token allows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Grants {
    /// May publish tracks into the room.
    pub publish: bool,
    /// May receive the room's tracks.
    pub subscribe: bool,
    /// When not empty, the only sources this bearer may publish.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<Source>,
    /// May upload to and download from the file relay.
    pub files: bool,
    /// May use the chat API.
    pub chat: bool,
}

impl Grants {
    /// Parses a comma-separated list: `publish`, `subscribe`, `files`, `chat`, and
    /// `source:camera` style entries that limit publishing to those sources.
    pub fn parse_list(list: &str) -> Result<Grants, String> {
        let mut g = Grants::default();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item {
                "publish" => g.publish = true,
                "subscribe" => g.subscribe = true,
                "files" => g.files = true,
                "chat" => g.chat = true,
                other => match other.strip_prefix("source:") {
                    Some(src) => g.sources.push(src.parse()?),
                    None => {
                        return Err(format!(
                            "unknown grant {other:?}: expected publish, subscribe, files, chat or source:<kind>"
                        ));
                    }
                },
            }
        }
        Ok(g)
    }

    /// Whether publishing `source` is allowed.
    pub fn may_publish(&self, source: Source) -> bool {
        self.publish && (self.sources.is_empty() || self.sources.contains(&source))
    }
}

/// Why a token was refused. The `Display` text is safe to send to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no access token: pass one as `Authorization: Bearer TOKEN` or `?access_token=TOKEN`")]
    Missing,
    #[error("access token is malformed or its signature does not verify")]
    Invalid,
    #[error("access token has expired: get a new one")]
    Expired,
    #[error("access token is for another room")]
    WrongRoom,
    #[error("access token does not grant {0}")]
    NotGranted(&'static str),
    #[error("session was revoked: log in again")]
    Revoked,
}

impl TokenError {
    /// HTTP status to answer with: 401 when the bearer is not authenticated,
    /// 403 when it is but may not do this.
    pub fn http_status(&self) -> u16 {
        match self {
            TokenError::Missing | TokenError::Invalid | TokenError::Expired | TokenError::Revoked => 401,
            TokenError::WrongRoom | TokenError::NotGranted(_) => 403,
        }
    }
}

/// Why the signing keys could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("auth secret is {0} bytes; at least {MIN_SECRET_LEN} are required")]
    TooShort(usize),
    #[error(
        "no auth secret configured: set `auth.secret` (or MAXD_AUTH__SECRET) to at least {MIN_SECRET_LEN} random bytes, or enable `dev` mode"
    )]
    NoSecret,
    #[error("dev secret file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("no dev secret at {path}: the server makes it when it first runs with that data directory")]
    NoDevSecret { path: String },
}

/// Signing and verification keys, and the process's list of revoked sessions that
/// [`Keys::verify`] consults (clones share it).
#[derive(Clone)]
pub struct Keys {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
    revoked: Revocations,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    /// Keys from a shared secret.
    pub fn from_secret(secret: &[u8]) -> Result<Keys, KeyError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(KeyError::TooShort(secret.len()));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Keys {
            enc: EncodingKey::from_secret(secret),
            dec: DecodingKey::from_secret(secret),
            validation,
            revoked: Revocations::default(),
        })
    }

    /// The configured secret if there is one; otherwise, in dev mode, a secret generated
    /// once and kept in `data_dir/dev-secret.hex`. Outside dev mode a secret is required.
    /// For the server; tools that only mint use [`Keys::resolve_existing`].
    pub fn resolve(secret: Option<&str>, data_dir: &Path, dev: bool) -> Result<Keys, KeyError> {
        Self::resolve_inner(secret, data_dir, dev, true)
    }

    /// As [`Keys::resolve`], but never makes a dev secret: a tool run away from the
    /// server's data directory would otherwise sign with a secret the server never sees.
    pub fn resolve_existing(secret: Option<&str>, data_dir: &Path, dev: bool) -> Result<Keys, KeyError> {
        Self::resolve_inner(secret, data_dir, dev, false)
    }

    fn resolve_inner(secret: Option<&str>, data_dir: &Path, dev: bool, create: bool) -> Result<Keys, KeyError> {
        if let Some(s) = secret {
            return Keys::from_secret(s.as_bytes());
        }
        if !dev {
            return Err(KeyError::NoSecret);
        }
        let path = data_dir.join(DEV_SECRET_FILE);
        let io = |source| KeyError::Io { path: path.display().to_string(), source };
        match std::fs::read_to_string(&path) {
            Ok(hexed) => {
                let bytes = hex::decode(hexed.trim()).map_err(|e| {
                    io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
                })?;
                Keys::from_secret(&bytes)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => {
                Err(KeyError::NoDevSecret { path: path.display().to_string() })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes: [u8; 32] = rand::random();
                std::fs::create_dir_all(data_dir).map_err(io)?;
                write_private(&path, hex::encode(bytes).as_bytes()).map_err(io)?;
                Keys::from_secret(&bytes)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Signs `claims`.
    pub fn mint(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.enc)
            .expect("HS256 encoding of plain claims cannot fail")
    }

    /// Mints a token for `sub` valid for `ttl` from now.
    pub fn mint_for(
        &self,
        sub: &str,
        name: Option<&str>,
        room: Option<&str>,
        grants: Grants,
        ttl: Duration,
    ) -> String {
        let iat = now_secs();
        self.mint(&Claims {
            sub: sub.to_string(),
            name: name.map(str::to_string),
            room: room.map(str::to_string),
            grants,
            sid: None,
            iat,
            exp: iat + ttl.as_secs().max(1),
        })
    }

    /// The revocation list [`Keys::verify`] consults: signalling adds to it, planes
    /// holding long-lived connections listen to it.
    pub fn revocations(&self) -> &Revocations {
        &self.revoked
    }

    /// Verifies signature, expiry, and that the token's session (if any) is not revoked.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.dec, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        if claims.sid.as_deref().is_some_and(|sid| self.revoked.is_revoked(sid)) {
            return Err(TokenError::Revoked);
        }
        Ok(claims)
    }

    /// Verifies the token and that it opens `room`.
    pub fn verify_room(&self, token: &str, room: &str) -> Result<Claims, TokenError> {
        let c = self.verify(token)?;
        if c.room.as_deref() != Some(room) {
            return Err(TokenError::WrongRoom);
        }
        Ok(c)
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::from_secret(&[7u8; 32]).unwrap()
    }

    #[test]
    fn round_trip_and_room_check() {
        let k = keys();
        let g = Grants::parse_list("publish,subscribe").unwrap();
        let t = k.mint_for("alice", Some("Alice"), Some("r1"), g.clone(), Duration::from_secs(60));
        let c = k.verify_room(&t, "r1").unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(c.grants, g);
        assert_eq!(k.verify_room(&t, "r2"), Err(TokenError::WrongRoom));
    }

    #[test]
    fn refuses_other_secret_garbage_and_expired() {
        let k = keys();
        let other = Keys::from_secret(&[8u8; 32]).unwrap();
        let t = other.mint_for("a", None, None, Grants::default(), Duration::from_secs(60));
        assert_eq!(k.verify(&t), Err(TokenError::Invalid));
        assert_eq!(k.verify("not.a.jwt"), Err(TokenError::Invalid));
        assert_eq!(k.verify(""), Err(TokenError::Missing));
        let iat = now_secs() - 100;
        let t = k.mint(&Claims {
            sub: "a".into(),
            name: None,
            room: None,
            grants: Grants::default(),
            sid: None,
            iat,
            exp: iat + 10,
        });
        assert_eq!(k.verify(&t), Err(TokenError::Expired));
    }

    #[test]
    fn a_revoked_session_is_refused_by_every_clone() {
        let k = keys();
        let other_plane = k.clone();
        let iat = now_secs();
        let claims = |sid: &str| Claims {
            sub: "1".into(),
            name: None,
            room: None,
            grants: Grants::default(),
            sid: Some(sid.into()),
            iat,
            exp: iat + 60,
        };
        let (t1, t2) = (k.mint(&claims("s1")), k.mint(&claims("s2")));
        assert!(other_plane.verify(&t1).is_ok());
        k.revocations().revoke("s1", iat + 60);
        assert_eq!(other_plane.verify(&t1), Err(TokenError::Revoked));
        assert!(other_plane.verify(&t2).is_ok());
    }

    #[test]
    fn grants_list_parsing() {
        let g = Grants::parse_list("publish, source:camera,source:microphone").unwrap();
        assert!(g.may_publish(Source::Camera));
        assert!(!g.may_publish(Source::ScreenShare));
        assert!(Grants::parse_list("fly").unwrap_err().contains("fly"));
    }

    #[test]
    fn resolve_existing_reads_the_dev_secret_but_never_makes_one() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        assert!(matches!(Keys::resolve_existing(None, &data, true), Err(KeyError::NoDevSecret { .. })));
        assert!(!data.exists());
        let server = Keys::resolve(None, &data, true).unwrap();
        let tool = Keys::resolve_existing(None, &data, true).unwrap();
        let t = tool.mint_for("x", None, None, Grants::default(), Duration::from_secs(60));
        assert!(server.verify(&t).is_ok());
        assert!(Keys::resolve_existing(Some("0123456789abcdef0123456789abcdef"), &data, true).is_ok());
    }

    #[test]
    fn dev_secret_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Keys::resolve(None, dir.path(), true).unwrap();
        let b = Keys::resolve(None, dir.path(), true).unwrap();
        let t = a.mint_for("x", None, None, Grants::default(), Duration::from_secs(60));
        assert!(b.verify(&t).is_ok());
        assert!(matches!(Keys::resolve(None, dir.path(), false), Err(KeyError::NoSecret)));
        assert!(matches!(Keys::resolve(Some("short"), dir.path(), false), Err(KeyError::TooShort(5))));
    }
}
