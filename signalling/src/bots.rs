//! Bots: a user creates a bot and gets its token (`<bot id>:<secret>`, Telegram's
//! layout); the bot reads updates by long polling (offset-acknowledged, like
//! Telegram's getUpdates) or by webhook, and sends messages to chats it belongs to.
//! The Telegram shapes of the API are in [`crate::telegram`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::auth::{Caller, hash_secret, new_id};
use crate::error::{ApiError, ApiResult};
use crate::{App, now_ms};

/// Header carrying the webhook secret on every webhook request.
pub const WEBHOOK_SECRET_HEADER: &str = "x-maxd-bot-api-secret-token";
/// The same secret under Telegram's name, which bot libraries check.
pub const TELEGRAM_SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

impl App {
    pub async fn create_bot(&self, c: &Caller, name: &str) -> ApiResult<Value> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 64 {
            return Err(ApiError::BadRequest(
                "bot name must be 1 to 64 characters".into(),
            ));
        }
        let id = new_id();
        let secret = {
            use rand::Rng;
            let mut b = [0u8; 24];
            rand::rng().fill(&mut b);
            hex::encode(b)
        };
        let token = format!("{id}:{secret}");
        sqlx::query("INSERT INTO users (id, display_name, is_bot, bot_owner, bot_token_hash, created_at) VALUES ($1, $2, 1, $3, $4, $5)")
            .bind(id)
            .bind(name)
            .bind(c.user_id)
            .bind(hash_secret(&token))
            .bind(now_ms())
            .execute(&self.db.pool)
            .await?;
        Ok(json!({"bot_id": id, "name": name, "token": token}))
    }

    /// The bot a token belongs to, as a caller (bots have no device session).
    pub async fn bot_caller(&self, token: &str) -> ApiResult<Caller> {
        let id: i64 = token
            .split(':')
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or(ApiError::Token(common::TokenError::Invalid))?;
        let h: Option<Option<String>> =
            sqlx::query_scalar("SELECT bot_token_hash FROM users WHERE id = $1 AND is_bot = 1")
                .bind(id)
                .fetch_optional(&self.db.pool)
                .await?;
        let Some(Some(stored)) = h else {
            return Err(ApiError::Token(common::TokenError::Invalid));
        };
        if !bool::from(hash_secret(token).as_bytes().ct_eq(stored.as_bytes())) {
            return Err(ApiError::Token(common::TokenError::Invalid));
        }
        Ok(Caller {
            user_id: id,
            session_id: format!("bot:{id}"),
        })
    }

    /// Acknowledges updates below `offset`, then returns those from `offset` on (id and
    /// chat event), waiting up to `timeout` for one when there is none.
    pub async fn get_updates(
        &self,
        bot: &Caller,
        offset: i64,
        limit: i64,
        timeout: Duration,
    ) -> ApiResult<Vec<(i64, Value)>> {
        let hook: Option<Option<String>> =
            sqlx::query_scalar("SELECT bot_webhook_url FROM users WHERE id = $1")
                .bind(bot.user_id)
                .fetch_optional(&self.db.pool)
                .await?;
        if hook.flatten().is_some() {
            return Err(ApiError::Conflict(
                "a webhook is set: delete it before using getUpdates".into(),
            ));
        }
        if offset > 0 {
            sqlx::query("DELETE FROM bot_updates WHERE bot_id = $1 AND update_id < $2")
                .bind(bot.user_id)
                .bind(offset)
                .execute(&self.db.pool)
                .await?;
        }
        let deadline = tokio::time::Instant::now() + timeout.min(Duration::from_secs(50));
        let waker = self.hub.bot_waker(bot.user_id);
        loop {
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let rows: Vec<(i64, String)> =
                sqlx::query_as("SELECT update_id, body FROM bot_updates WHERE bot_id = $1 AND update_id >= $2 ORDER BY update_id LIMIT $3")
                    .bind(bot.user_id)
                    .bind(offset)
                    .bind(limit.clamp(1, 100))
                    .fetch_all(&self.db.pool)
                    .await?;
            if !rows.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(rows
                    .into_iter()
                    .map(|(id, body)| {
                        (
                            id,
                            serde_json::from_str::<Value>(&body).unwrap_or(Value::Null),
                        )
                    })
                    .collect());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                continue;
            }
        }
    }

    /// Sets (or, with no `url`, removes) the webhook; `drop_pending` forgets the
    /// updates not yet acknowledged, in the same transaction.
    pub async fn set_webhook(
        &self,
        bot: &Caller,
        url: Option<&str>,
        secret: Option<&str>,
        drop_pending: bool,
    ) -> ApiResult<()> {
        if let Some(u) = url {
            let parsed: hyper::Uri = u
                .parse()
                .map_err(|_| ApiError::BadRequest("webhook url is not a URL".into()))?;
            if parsed.scheme_str() != Some("http") && parsed.scheme_str() != Some("https") {
                return Err(ApiError::BadRequest("webhook url must be http(s)".into()));
            }
        }
        if secret.is_some_and(|s| {
            s.len() > 256
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        }) {
            return Err(ApiError::BadRequest(
                "secret_token is 1-256 characters A-Z, a-z, 0-9, _ and -".into(),
            ));
        }
        let mut tx = self.db.pool.begin().await?;
        sqlx::query("UPDATE users SET bot_webhook_url = $1, bot_webhook_secret = $2 WHERE id = $3")
            .bind(url)
            .bind(secret)
            .bind(bot.user_id)
            .execute(&mut *tx)
            .await?;
        if drop_pending {
            sqlx::query("DELETE FROM bot_updates WHERE bot_id = $1")
                .bind(bot.user_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        if url.is_some() {
            self.webhook_kick(bot.user_id);
        }
        Ok(())
    }

    /// Telegram's `WebhookInfo`: the URL (empty when none) and the updates waiting.
    pub async fn webhook_info(&self, bot: &Caller) -> ApiResult<Value> {
        let url: Option<Option<String>> =
            sqlx::query_scalar("SELECT bot_webhook_url FROM users WHERE id = $1")
                .bind(bot.user_id)
                .fetch_optional(&self.db.pool)
                .await?;
        let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM bot_updates WHERE bot_id = $1")
            .bind(bot.user_id)
            .fetch_one(&self.db.pool)
            .await?;
        Ok(json!({
            "url": url.flatten().unwrap_or_default(),
            "has_custom_certificate": false,
            "pending_update_count": pending,
        }))
    }

    /// Starts the webhook delivery task of a bot if it has a webhook and none runs.
    pub fn webhook_kick(&self, bot_id: i64) {
        let Some(me) = self.me_weak.get().and_then(|w| w.upgrade()) else {
            return;
        };
        if !self.webhooks_running.lock().insert(bot_id) {
            // Already running: it re-reads the table before it stops.
            self.hub.bot_waker(bot_id).notify_waiters();
            return;
        }
        tokio::spawn(async move {
            let r = me.deliver_webhook(bot_id).await;
            if let Err(e) = r {
                tracing::warn!(bot_id, error = %e, "webhook delivery stopped");
            }
            me.webhooks_running.lock().remove(&bot_id);
        });
    }

    async fn deliver_webhook(self: &Arc<Self>, bot_id: i64) -> ApiResult<()> {
        let mut backoff = Duration::from_millis(200);
        let waker = self.hub.bot_waker(bot_id);
        loop {
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let hook: Option<(Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT bot_webhook_url, bot_webhook_secret FROM users WHERE id = $1",
            )
            .bind(bot_id)
            .fetch_optional(&self.db.pool)
            .await?;
            let Some((Some(url), secret)) = hook else {
                return Ok(());
            };
            let rows: Vec<(i64, String)> =
                sqlx::query_as("SELECT update_id, body FROM bot_updates WHERE bot_id = $1 ORDER BY update_id LIMIT 100")
                    .bind(bot_id)
                    .fetch_all(&self.db.pool)
                    .await?;
            if rows.is_empty() {
                // Idle: wait a little for more, then stop.
                if tokio::time::timeout(Duration::from_secs(30), notified)
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                continue;
            }
            for (id, body) in rows {
                let event = serde_json::from_str::<Value>(&body).unwrap_or(Value::Null);
                let payload = self.tg_update(id, event).await.to_string();
                let Ok(uri) = url.parse::<hyper::Uri>() else {
                    return Ok(());
                };
                let mut headers = vec![("content-type", "application/json")];
                if let Some(s) = secret.as_deref() {
                    headers.push((WEBHOOK_SECRET_HEADER, s));
                    headers.push((TELEGRAM_SECRET_HEADER, s));
                }
                // https:// through rustls with the roots push uses (Mozilla's and
                // `push_ca_file`'s).
                let ok = crate::outbound::post(
                    &uri,
                    &headers,
                    bytes::Bytes::from(payload),
                    Duration::from_secs(10),
                    Some(&self.pusher.tls),
                )
                .await
                .is_ok_and(|(s, _)| s.is_success());
                if ok {
                    sqlx::query("DELETE FROM bot_updates WHERE bot_id = $1 AND update_id = $2")
                        .bind(bot_id)
                        .bind(id)
                        .execute(&self.db.pool)
                        .await?;
                    backoff = Duration::from_millis(200);
                } else {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    break;
                }
            }
        }
    }
}
