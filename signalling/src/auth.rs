//! Accounts: SMS one-time codes, device sessions (refresh tokens), access JWTs.

use std::net::IpAddr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ApiResult};
use crate::sms::Sms;
use crate::{App, now_ms};

const DAY_MS: i64 = 24 * 3600 * 1000;

/// The caller, from a verified access token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: i64,
    pub session_id: String,
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill(&mut b[..]);
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

pub fn new_id() -> i64 {
    // Positive, below 2^53 so JavaScript clients keep it exact.
    rand::rng().random_range(1..(1i64 << 53))
}

fn code_hash(phone: &str, code: &str, salt: &str) -> String {
    hex::encode(Sha256::digest(format!("{salt}:{phone}:{code}").as_bytes()))
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
    /// Sends a new code to `phone_in`. Only the latest code is valid.
    pub async fn request_code(&self, phone_in: &str, ip: IpAddr) -> ApiResult<serde_json::Value> {
        let phone = crate::phone::normalize(phone_in, &self.cfg.allowed_country_codes)?;
        self.ip_limit(ip)?;
        let now = now_ms();
        let cooldown = self.cfg.code_cooldown.as_millis() as i64;
        let last: Option<i64> =
            sqlx::query_scalar("SELECT MAX(sent_at) FROM code_sends WHERE phone = $1")
                .bind(&phone)
                .fetch_one(&self.db.pool)
                .await?;
        if let Some(last) = last {
            if now - last < cooldown {
                self.metrics.codes_refused.inc();
                return Err(ApiError::RateLimited {
                    retry_after: ((cooldown - (now - last)) / 1000 + 1) as u64,
                });
            }
        }
        let sent_today: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM code_sends WHERE phone = $1 AND sent_at > $2")
                .bind(&phone)
                .bind(now - DAY_MS)
                .fetch_one(&self.db.pool)
                .await?;
        if sent_today >= self.cfg.codes_per_number_per_day as i64 {
            self.metrics.codes_refused.inc();
            let oldest: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(sent_at) FROM code_sends WHERE phone = $1 AND sent_at > $2",
            )
            .bind(&phone)
            .bind(now - DAY_MS)
            .fetch_one(&self.db.pool)
            .await?;
            let retry = oldest
                .map(|o| (o + DAY_MS - now) / 1000 + 1)
                .unwrap_or(3600);
            return Err(ApiError::RateLimited {
                retry_after: retry.max(1) as u64,
            });
        }
        // ThreadRng is a CSPRNG (ChaCha, seeded and reseeded from the OS).
        let code = format!("{:06}", rand::rng().random_range(0..1_000_000u32));
        let salt = random_token(12);
        let stored = format!("{salt}${}", code_hash(&phone, &code, &salt));
        let mut tx = self.db.pool.begin().await?;
        sqlx::query("DELETE FROM login_codes WHERE phone = $1")
            .bind(&phone)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO login_codes (phone, code_hash, expires_at, attempts, created_at) VALUES ($1, $2, $3, 0, $4)")
            .bind(&phone)
            .bind(&stored)
            .bind(now + self.cfg.code_ttl.as_millis() as i64)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO code_sends (phone, sent_at) VALUES ($1, $2)")
            .bind(&phone)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM code_sends WHERE sent_at < $1")
            .bind(now - 2 * DAY_MS)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let text = crate::sms::login_text(&code, &self.cfg.sms_domain);
        if let Err(e) = self
            .sms
            .send(Sms {
                to: &phone,
                text: &text,
                code: &code,
            })
            .await
        {
            tracing::warn!(phone = %common::pii::Pii(&phone), error = %e, "SMS not sent");
            // Undo: no code, and the failed send does not count against the limits.
            sqlx::query("DELETE FROM login_codes WHERE phone = $1")
                .bind(&phone)
                .execute(&self.db.pool)
                .await?;
            sqlx::query("DELETE FROM code_sends WHERE phone = $1 AND sent_at = $2")
                .bind(&phone)
                .bind(now)
                .execute(&self.db.pool)
                .await?;
            return Err(ApiError::SmsUnavailable);
        }
        self.metrics.codes_sent.inc();
        tracing::info!(phone = %common::pii::Pii(&phone), "login code sent");
        Ok(serde_json::json!({
            "phone": phone,
            "expires_in": self.cfg.code_ttl.as_secs(),
            "retry_after": self.cfg.code_cooldown.as_secs(),
        }))
    }

    fn ip_limit(&self, ip: IpAddr) -> ApiResult<()> {
        let now = now_ms();
        let mut map = self.ip_codes.lock();
        if map.len() > 100_000 {
            map.retain(|_, (start, _)| now - *start < 3_600_000);
        }
        let e = map.entry(ip).or_insert((now, 0));
        if now - e.0 >= 3_600_000 {
            *e = (now, 0);
        }
        if e.1 >= self.cfg.codes_per_ip_per_hour {
            self.metrics.codes_refused.inc();
            return Err(ApiError::RateLimited {
                retry_after: ((e.0 + 3_600_000 - now) / 1000 + 1) as u64,
            });
        }
        e.1 += 1;
        Ok(())
    }

    /// Checks a code and opens a session for a new device.
    pub async fn verify_code(
        &self,
        phone_in: &str,
        code: &str,
        device_name: &str,
    ) -> ApiResult<Tokens> {
        let phone = crate::phone::normalize(phone_in, &self.cfg.allowed_country_codes)?;
        let now = now_ms();
        let row: Option<(String, i64, i64)> = sqlx::query_as(
            "SELECT code_hash, expires_at, attempts FROM login_codes WHERE phone = $1",
        )
        .bind(&phone)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some((stored, expires_at, attempts)) = row else {
            return Err(ApiError::CodeExpired);
        };
        if expires_at < now || attempts >= self.cfg.code_max_attempts as i64 {
            sqlx::query("DELETE FROM login_codes WHERE phone = $1")
                .bind(&phone)
                .execute(&self.db.pool)
                .await?;
            return Err(ApiError::CodeExpired);
        }
        let (salt, hash) = stored.split_once('$').unwrap_or(("", ""));
        let given = code_hash(&phone, code.trim(), salt);
        let ok: bool = given.as_bytes().ct_eq(hash.as_bytes()).into();
        if !ok {
            self.metrics.codes_wrong.inc();
            // Count the try atomically against this very code row.
            sqlx::query("UPDATE login_codes SET attempts = attempts + 1 WHERE phone = $1 AND code_hash = $2")
                .bind(&phone)
                .bind(&stored)
                .execute(&self.db.pool)
                .await?;
            let used = attempts + 1;
            let max = self.cfg.code_max_attempts as i64;
            if used >= max {
                sqlx::query("DELETE FROM login_codes WHERE phone = $1 AND code_hash = $2")
                    .bind(&phone)
                    .bind(&stored)
                    .execute(&self.db.pool)
                    .await?;
                return Err(ApiError::CodeExpired);
            }
            return Err(ApiError::CodeWrong {
                remaining: (max - used) as u32,
            });
        }
        // Single use: only the request that deletes the row wins.
        let del = sqlx::query("DELETE FROM login_codes WHERE phone = $1 AND code_hash = $2")
            .bind(&phone)
            .bind(&stored)
            .execute(&self.db.pool)
            .await?;
        if del.rows_affected() != 1 {
            return Err(ApiError::CodeExpired);
        }
        let existing: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE phone = $1")
            .bind(&phone)
            .fetch_optional(&self.db.pool)
            .await?;
        let (user_id, new_user) = match existing {
            Some(id) => (id, false),
            None => {
                let id = new_id();
                sqlx::query("INSERT INTO users (id, phone, created_at) VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(&phone)
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

    /// Rotates a refresh token: the old one stops working.
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
            return Err(ApiError::RefreshInvalid);
        };
        if revoked != 0 || exp < now {
            return Err(ApiError::RefreshInvalid);
        }
        let new = format!("{sid}.{}", random_token(32));
        let upd = sqlx::query(
            "UPDATE sessions SET refresh_hash = $1, refresh_expires_at = $2, last_used_at = $3 WHERE id = $4 AND refresh_hash = $5 AND revoked = 0",
        )
        .bind(hash_secret(&new))
        .bind(now + self.cfg.refresh_ttl.as_millis() as i64)
        .bind(now)
        .bind(&sid)
        .bind(&old)
        .execute(&self.db.pool)
        .await?;
        if upd.rows_affected() != 1 {
            return Err(ApiError::RefreshInvalid);
        }
        Ok(Tokens {
            user_id,
            access_token: self.mint_access(user_id, &sid),
            session_id: sid,
            refresh_token: new,
            access_expires_in: self.cfg.access_ttl.as_secs(),
            new_user: false,
        })
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
        let n = match sid {
            Some(sid) => {
                let r = sqlx::query("UPDATE sessions SET revoked = 1 WHERE id = $1 AND user_id = $2 AND revoked = 0")
                    .bind(sid)
                    .bind(c.user_id)
                    .execute(&self.db.pool)
                    .await?;
                if r.rows_affected() == 0 {
                    return Err(ApiError::NotFound("session"));
                }
                self.revoked.lock().insert(sid.to_string());
                self.hub.kick_session(c.user_id, sid);
                r.rows_affected()
            }
            None => {
                let ids: Vec<String> = sqlx::query_scalar(
                    "SELECT id FROM sessions WHERE user_id = $1 AND revoked = 0",
                )
                .bind(c.user_id)
                .fetch_all(&self.db.pool)
                .await?;
                sqlx::query("UPDATE sessions SET revoked = 1 WHERE user_id = $1")
                    .bind(c.user_id)
                    .execute(&self.db.pool)
                    .await?;
                let mut rv = self.revoked.lock();
                for id in &ids {
                    rv.insert(id.clone());
                    self.hub.kick_session(c.user_id, id);
                }
                ids.len() as u64
            }
        };
        Ok(n)
    }

    /// Verifies an access token and that its session is not revoked.
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
        if self.revoked.lock().contains(&sid) {
            return Err(ApiError::SessionRevoked);
        }
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
