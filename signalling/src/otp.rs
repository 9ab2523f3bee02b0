//! Login codes (one-time passwords sent by SMS) and everything that holds them against
//! guessing:
//!
//! - a code allows `code_max_attempts` tries, counted in the database *before* the
//!   comparison by one conditional `UPDATE ... WHERE attempts < max RETURNING`, so
//!   concurrent guesses cannot all be compared: exactly `max` are, on SQLite and
//!   PostgreSQL alike; the last wrong one burns the code;
//! - per client network (IPv4 address, IPv6 /64): `codes_per_ip_per_hour` code
//!   requests and `verifies_per_ip_per_hour` code checks;
//! - per number: one code per `code_cooldown`, `codes_per_number_per_day`, and a lock-out
//!   (`number_locked`) once `burnt_codes_before_lockout` codes were burnt within
//!   `lockout_window` - a guard that holds whatever addresses the guesses come from. A
//!   code counts as burnt when its last try was wrong, and also when it is replaced or
//!   expires after a wrong try, so at most `code_max_attempts` x
//!   `burnt_codes_before_lockout` wrong guesses reach a number per window.

use std::net::IpAddr;

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::{Tokens, random_token};
use crate::error::{ApiError, ApiResult};
use common::netaddr::limit_key as client_net;
use crate::sms::Sms;
use crate::{App, now_ms};

const DAY_MS: i64 = 24 * 3600 * 1000;

/// Counts a burnt code of `phone` towards its lock-out.
async fn record_burn(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    phone: &str,
    now: i64,
) -> ApiResult<()> {
    sqlx::query("INSERT INTO code_burns (phone, burnt_at) VALUES ($1, $2)")
        .bind(phone)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn code_hash(phone: &str, code: &str, salt: &str) -> String {
    hex::encode(Sha256::digest(format!("{salt}:{phone}:{code}").as_bytes()))
}

impl App {
    /// Sends a new code to `phone_in`. Only the latest code is valid.
    pub async fn request_code(&self, phone_in: &str, ip: IpAddr) -> ApiResult<serde_json::Value> {
        let phone = crate::phone::normalize(phone_in, &self.cfg.allowed_country_codes)?;
        if let Err(retry_after) = self.limits.codes_per_ip.check(&client_net(ip)) {
            self.metrics.codes_refused.inc();
            return Err(ApiError::RateLimited { retry_after });
        }
        let now = now_ms();
        if let Err(e) = self.check_locked(&phone, now).await {
            self.metrics.codes_refused.inc();
            return Err(e);
        }
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
        // The code this one replaces: if it was guessed at, it counts as burnt (else
        // guessing 4 times and asking for a new code would dodge the lock-out).
        let replaced: Option<i64> =
            sqlx::query_scalar("DELETE FROM login_codes WHERE phone = $1 RETURNING attempts")
                .bind(&phone)
                .fetch_optional(&mut *tx)
                .await?;
        if replaced.is_some_and(|a| a > 0) {
            record_burn(&mut tx, &phone, now).await?;
            if let Some(retry_after) = self.locked_for(&mut *tx, &phone, now).await? {
                tx.commit().await?;
                self.metrics.codes_refused.inc();
                return Err(ApiError::NumberLocked { retry_after });
            }
        }
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
        sqlx::query("DELETE FROM code_burns WHERE burnt_at < $1")
            .bind(now - self.cfg.lockout_window.as_millis() as i64)
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

    /// `number_locked` while `burnt_codes_before_lockout` codes of `phone` were burnt
    /// within `lockout_window`.
    async fn check_locked(&self, phone: &str, now: i64) -> ApiResult<()> {
        match self.locked_for(&self.db.pool, phone, now).await? {
            Some(retry_after) => Err(ApiError::NumberLocked { retry_after }),
            None => Ok(()),
        }
    }

    /// Seconds until `phone` is unlocked, if it is locked.
    async fn locked_for<'e>(
        &self,
        db: impl sqlx::Executor<'e, Database = sqlx::Any>,
        phone: &str,
        now: i64,
    ) -> ApiResult<Option<u64>> {
        let window = self.cfg.lockout_window.as_millis() as i64;
        let (burnt, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(burnt_at) FROM code_burns WHERE phone = $1 AND burnt_at > $2",
        )
        .bind(phone)
        .bind(now - window)
        .fetch_one(db)
        .await?;
        if burnt < self.cfg.burnt_codes_before_lockout.max(1) as i64 {
            return Ok(None);
        }
        let retry = oldest.map(|o| (o + window - now) / 1000 + 1).unwrap_or(1);
        Ok(Some(retry.max(1) as u64))
    }

    /// Checks a code sent from `ip` and opens a session for a new device.
    pub async fn verify_code(
        &self,
        phone_in: &str,
        code: &str,
        device_name: &str,
        ip: IpAddr,
    ) -> ApiResult<Tokens> {
        if let Err(retry_after) = self.limits.verifies_per_ip.check(&client_net(ip)) {
            return Err(ApiError::RateLimited { retry_after });
        }
        let phone = crate::phone::normalize(phone_in, &self.cfg.allowed_country_codes)?;
        let now = now_ms();
        self.check_locked(&phone, now).await?;
        let max = self.cfg.code_max_attempts.max(1) as i64;
        // Count the try before comparing, in one statement: of any number of concurrent
        // tries, exactly `max` get a row back and are compared.
        let row: Option<(String, i64)> = sqlx::query_as(
            "UPDATE login_codes SET attempts = attempts + 1 WHERE phone = $1 AND attempts < $2 AND expires_at >= $3 RETURNING code_hash, attempts",
        )
        .bind(&phone)
        .bind(max)
        .bind(now)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some((stored, attempts)) = row else {
            // None or expired (a used-up one is deleted as it burns). An expired code
            // that was guessed at counts as burnt.
            let mut tx = self.db.pool.begin().await?;
            let expired: Option<i64> = sqlx::query_scalar(
                "DELETE FROM login_codes WHERE phone = $1 AND expires_at < $2 RETURNING attempts",
            )
            .bind(&phone)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if expired.is_some_and(|a| a > 0) {
                record_burn(&mut tx, &phone, now).await?;
            }
            tx.commit().await?;
            return Err(ApiError::CodeExpired);
        };
        let (salt, hash) = stored.split_once('$').unwrap_or(("", ""));
        let given = code_hash(&phone, code.trim(), salt);
        let ok: bool = given.as_bytes().ct_eq(hash.as_bytes()).into();
        if !ok {
            self.metrics.codes_wrong.inc();
            if attempts >= max {
                // The last try was wrong: the code is burnt, and the burn counts towards
                // the number's lock-out. Only this request saw `attempts == max`.
                let mut tx = self.db.pool.begin().await?;
                sqlx::query("DELETE FROM login_codes WHERE phone = $1 AND code_hash = $2")
                    .bind(&phone)
                    .bind(&stored)
                    .execute(&mut *tx)
                    .await?;
                record_burn(&mut tx, &phone, now).await?;
                tx.commit().await?;
                tracing::info!(phone = %common::pii::Pii(&phone), "login code burnt by wrong tries");
                return Err(ApiError::CodeExpired);
            }
            return Err(ApiError::CodeWrong {
                remaining: (max - attempts) as u32,
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
        self.login_verified(&phone, device_name, now).await
    }
}
