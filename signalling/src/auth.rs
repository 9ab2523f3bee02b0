//! Accounts: SMS one-time codes, device sessions (refresh tokens), access JWTs.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::{App, now_ms};

/// The caller, from a verified access token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: i64,
    pub session_id: String,
}

/// Margin added to an access token's expiry when deciding how long a revocation must be
/// remembered: the 5 s leeway of `Keys::verify`, and clock steps between mint and store.
const ACCESS_MARGIN_SECS: u64 = 10;

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub(crate) fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill(&mut b[..]);
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

pub fn new_id() -> i64 {
    // Positive, below 2^53 so JavaScript clients keep it exact.
    rand::rng().random_range(1..(1i64 << 53))
}

#[derive(Debug, Serialize)]
pub struct Tokens {
    pub user_id: i64,
    pub session_id: String,
    pub access_token: String,
    pub refresh_token: String,
    pub access_expires_in: u64,
    pub new_user: bool,
}

impl App {
    /// Logs in `phone`, whose code was just verified: the user (created on first login)
    /// gets a new device session; the user's other devices are told.
    pub(crate) async fn login_verified(
        &self,
        phone: &str,
        device_name: &str,
        now: i64,
    ) -> ApiResult<Tokens> {
        let existing: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE phone = $1")
            .bind(phone)
            .fetch_optional(&self.db.pool)
            .await?;
        let (user_id, new_user) = match existing {
            Some(id) => (id, false),
            None => {
                let id = new_id();
                sqlx::query("INSERT INTO users (id, phone, created_at) VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(phone)
                    .bind(now)
                    .execute(&self.db.pool)
                    .await?;
                (id, true)
            }
        };
        let device = device_name.chars().take(64).collect::<String>();
        let device = if device.trim().is_empty() {
            "unknown device".to_string()
        } else {
            device
        };
        let tokens = self.open_session(user_id, &device, new_user).await?;
        if !new_user {
            self.hub.send_user_except(
                user_id,
                &tokens.session_id,
                serde_json::json!({"type": "new_login", "session_id": tokens.session_id, "device_name": device, "at": now})
                    .to_string(),
            );
        }
        self.metrics.logins.inc();
        Ok(tokens)
    }

    pub async fn open_session(
        &self,
        user_id: i64,
        device: &str,
        new_user: bool,
    ) -> ApiResult<Tokens> {
        let now = now_ms();
        let sid = random_token(12);
        let refresh = format!("{sid}.{}", random_token(32));
        sqlx::query(
            "INSERT INTO sessions (id, user_id, device_name, refresh_hash, refresh_expires_at, created_at, last_used_at, revoked) VALUES ($1, $2, $3, $4, $5, $6, $6, 0)",
        )
        .bind(&sid)
        .bind(user_id)
        .bind(device)
        .bind(hash_secret(&refresh))
        .bind(now + self.cfg.refresh_ttl.as_millis() as i64)
        .bind(now)
        .execute(&self.db.pool)
        .await?;
        Ok(Tokens {
            user_id,
            access_token: self.mint_access(user_id, &sid),
            session_id: sid,
            refresh_token: refresh,
            access_expires_in: self.cfg.access_ttl.as_secs(),
            new_user,
        })
    }

    pub fn mint_access(&self, user_id: i64, sid: &str) -> String {
        let iat = now_ms() as u64 / 1000;
        self.ctx.keys.mint(&common::Claims {
            sub: user_id.to_string(),
            name: None,
            room: None,
            grants: common::Grants {
                chat: true,
                files: true,
                ..Default::default()
            },
            sid: Some(sid.to_string()),
            iat,
            exp: iat + self.cfg.access_ttl.as_secs().max(1),
        })
    }

    /// Rotates a refresh token: the old one stops working. Presenting a refresh token
    /// that was already rotated means two parties hold the session's tokens (one of them
    /// stole them): the whole session is revoked and the answer is `refresh_reused`
    /// (OAuth 2.0 Security BCP, refresh token rotation).
    pub async fn refresh(&self, refresh: &str) -> ApiResult<Tokens> {
        let now = now_ms();
        let old = hash_secret(refresh);
        let row: Option<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT id, user_id, refresh_expires_at, revoked FROM sessions WHERE refresh_hash = $1",
        )
        .bind(&old)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some((sid, user_id, exp, revoked)) = row else {
            let family: Option<String> =
                sqlx::query_scalar("SELECT session_id FROM refresh_rotated WHERE hash = $1")
                    .bind(&old)
                    .fetch_optional(&self.db.pool)
                    .await?;
            return Err(match family {
                Some(sid) => self.revoke_reused(&sid).await?,
                None => ApiError::RefreshInvalid,
            });
        };
        if revoked != 0 || exp < now {
            return Err(ApiError::RefreshInvalid);
        }
        let new = format!("{sid}.{}", random_token(32));
        let mut tx = self.db.pool.begin().await?;
        let upd = sqlx::query(
            "UPDATE sessions SET refresh_hash = $1, refresh_expires_at = $2, last_used_at = $3 WHERE id = $4 AND refresh_hash = $5 AND revoked = 0",
        )
        .bind(hash_secret(&new))
        .bind(now + self.cfg.refresh_ttl.as_millis() as i64)
        .bind(now)
        .bind(&sid)
        .bind(&old)
        .execute(&mut *tx)
        .await?;
        if upd.rows_affected() != 1 {
            drop(tx);
            // Another request rotated this very token first: it was used twice.
            let revoked: Option<i64> =
                sqlx::query_scalar("SELECT revoked FROM sessions WHERE id = $1")
                    .bind(&sid)
                    .fetch_optional(&self.db.pool)
                    .await?;
            return Err(match revoked {
                Some(0) => self.revoke_reused(&sid).await?,
                _ => ApiError::RefreshInvalid,
            });
        }
        // Kept while the rotated token could otherwise still be valid, to recognise reuse.
        sqlx::query(
            "INSERT INTO refresh_rotated (hash, session_id, rotated_at) VALUES ($1, $2, $3)",
        )
        .bind(&old)
        .bind(&sid)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Tokens {
            user_id,
            access_token: self.mint_access(user_id, &sid),
            session_id: sid,
            refresh_token: new,
            access_expires_in: self.cfg.access_ttl.as_secs(),
            new_user: false,
        })
    }

    /// Revokes session `sid` whose rotated refresh token came back; the error to answer.
    async fn revoke_reused(&self, sid: &str) -> ApiResult<ApiError> {
        let user: Option<i64> = sqlx::query_scalar(
            "UPDATE sessions SET revoked = 1 WHERE id = $1 AND revoked = 0 RETURNING user_id",
        )
        .bind(sid)
        .fetch_optional(&self.db.pool)
        .await?;
        if let Some(user_id) = user {
            tracing::info!(user_id, "rotated refresh token used again: session revoked");
            self.revoked_now(&[sid.to_string()]).await?;
        }
        Ok(ApiError::RefreshReused)
    }

    /// Seconds since the epoch after which no access token minted for a session whose
    /// last token was minted at `last_mint_ms` can be valid (expiry plus the leeway
    /// `Keys::verify` allows, plus a margin).
    pub(crate) fn tokens_dead_after(&self, last_mint_ms: i64) -> u64 {
        (last_mint_ms.max(0) / 1000) as u64 + self.cfg.access_ttl.as_secs() + ACCESS_MARGIN_SECS
    }

    /// Publishes sessions just marked revoked in storage: every plane of this process
    /// refuses their tokens from now on and closes their live connections (through the
    /// listener registered at start); their rotated refresh tokens are forgotten.
    async fn revoked_now(&self, sids: &[String]) -> ApiResult<()> {
        let until = self.tokens_dead_after(now_ms());
        for sid in sids {
            self.ctx.keys.revocations().revoke(sid, until);
            sqlx::query("DELETE FROM refresh_rotated WHERE session_id = $1")
                .bind(sid)
                .execute(&self.db.pool)
                .await?;
        }
        // A revoked device is woken for no call.
        self.forget_push_targets(sids).await?;
        Ok(())
    }

    pub async fn list_sessions(&self, c: &Caller) -> ApiResult<Vec<SessionInfo>> {
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT id, device_name, created_at, last_used_at FROM sessions WHERE user_id = $1 AND revoked = 0 ORDER BY created_at",
        )
        .bind(c.user_id)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, device_name, created_at, last_used_at)| SessionInfo {
                current: id == c.session_id,
                id,
                device_name,
                created_at,
                last_used_at,
            })
            .collect())
    }

    /// Revokes one session (`Some`) or every session of the user (`None`).
    pub async fn revoke(&self, c: &Caller, sid: Option<&str>) -> ApiResult<u64> {
        let ids: Vec<String> = match sid {
            Some(sid) => sqlx::query_scalar(
                "UPDATE sessions SET revoked = 1 WHERE id = $1 AND user_id = $2 AND revoked = 0 RETURNING id",
            )
            .bind(sid)
            .bind(c.user_id)
            .fetch_all(&self.db.pool)
            .await?,
            None => sqlx::query_scalar(
                "UPDATE sessions SET revoked = 1 WHERE user_id = $1 AND revoked = 0 RETURNING id",
            )
            .bind(c.user_id)
            .fetch_all(&self.db.pool)
            .await?,
        };
        if sid.is_some() && ids.is_empty() {
            return Err(ApiError::NotFound("session"));
        }
        self.revoked_now(&ids).await?;
        Ok(ids.len() as u64)
    }

    /// Verifies an access token: signature, expiry, grant, and that its session is not
    /// revoked (the process-wide list every plane consults).
    pub fn authenticate(&self, token: &str) -> ApiResult<Caller> {
        let claims = self.ctx.keys.verify(token)?;
        if !claims.grants.chat {
            return Err(ApiError::Token(common::TokenError::NotGranted("chat")));
        }
        let user_id: i64 = claims
            .sub
            .parse()
            .map_err(|_| ApiError::Token(common::TokenError::Invalid))?;
        let sid = claims
            .sid
            .ok_or(ApiError::Token(common::TokenError::Invalid))?;
        Ok(Caller {
            user_id,
            session_id: sid,
        })
    }
}

#[derive(Debug, Serialize)]
pub struct SessionInfo {
    pub id: String,
    pub device_name: String,
    pub created_at: i64,
    pub last_used_at: i64,
    pub current: bool,
}

#[derive(Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

/// Extracts the caller from `Authorization: Bearer` or `?access_token=`.
impl FromRequestParts<std::sync::Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &std::sync::Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let token = match header {
            Some(t) => t,
            None => {
                let q: TokenQuery = parts
                    .uri
                    .query()
                    .and_then(serde_urlencoded_lite)
                    .unwrap_or(TokenQuery { access_token: None });
                q.access_token.unwrap_or_default()
            }
        };
        app.authenticate(&token)
    }
}

fn serde_urlencoded_lite(q: &str) -> Option<TokenQuery> {
    for pair in q.split('&') {
        if let Some(v) = pair.strip_prefix("access_token=") {
            return Some(TokenQuery {
                access_token: Some(v.to_string()),
            });
        }
    }
    None
}
