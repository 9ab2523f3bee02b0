//! Profiles, privacy settings and presence.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::{App, now_ms};

/// Who may see something: `everyone`, `contacts` (people you share a dialog with), `nobody`.
fn valid_privacy(s: &str) -> bool {
    matches!(s, "everyone" | "contacts" | "nobody")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilePatch {
    pub display_name: Option<String>,
    /// A file id from the relay; empty string removes the avatar.
    pub avatar: Option<String>,
    pub about: Option<String>,
    pub last_seen_privacy: Option<String>,
    pub phone_privacy: Option<String>,
}

type UserRow = (
    i64,
    Option<String>,
    String,
    Option<String>,
    String,
    String,
    String,
    i64,
    i64,
);

impl App {
    async fn user_row(&self, id: i64) -> ApiResult<UserRow> {
        sqlx::query_as(
            "SELECT id, phone, display_name, avatar, about, last_seen_privacy, phone_privacy, last_seen, is_bot FROM users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?
        .ok_or(ApiError::NotFound("user"))
    }

    pub async fn me(&self, c: &Caller) -> ApiResult<Value> {
        let (id, phone, name, avatar, about, lsp, pp, _, _) = self.user_row(c.user_id).await?;
        Ok(
            json!({"id": id, "phone": phone, "display_name": name, "avatar": avatar, "about": about,
            "privacy": {"last_seen": lsp, "phone": pp}}),
        )
    }

    pub async fn update_me(&self, c: &Caller, p: ProfilePatch) -> ApiResult<Value> {
        if let Some(n) = &p.display_name {
            if n.chars().count() > 64 {
                return Err(ApiError::BadRequest(
                    "display_name has at most 64 characters".into(),
                ));
            }
        }
        if p.about.as_ref().is_some_and(|a| a.chars().count() > 256) {
            return Err(ApiError::BadRequest(
                "about has at most 256 characters".into(),
            ));
        }
        if p.avatar.as_ref().is_some_and(|a| a.len() > 128) {
            return Err(ApiError::BadRequest(
                "avatar is a file id of at most 128 characters".into(),
            ));
        }
        for v in [&p.last_seen_privacy, &p.phone_privacy]
            .into_iter()
            .flatten()
        {
            if !valid_privacy(v) {
                return Err(ApiError::BadRequest(
                    "privacy is one of everyone, contacts, nobody".into(),
                ));
            }
        }
        let mut tx = self.db.pool.begin().await?;
        if let Some(v) = &p.display_name {
            sqlx::query("UPDATE users SET display_name = $1 WHERE id = $2")
                .bind(v.trim())
                .bind(c.user_id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(v) = &p.avatar {
            let v = if v.is_empty() { None } else { Some(v.as_str()) };
            sqlx::query("UPDATE users SET avatar = $1 WHERE id = $2")
                .bind(v)
                .bind(c.user_id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(v) = &p.about {
            sqlx::query("UPDATE users SET about = $1 WHERE id = $2")
                .bind(v)
                .bind(c.user_id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(v) = &p.last_seen_privacy {
            sqlx::query("UPDATE users SET last_seen_privacy = $1 WHERE id = $2")
                .bind(v)
                .bind(c.user_id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(v) = &p.phone_privacy {
            sqlx::query("UPDATE users SET phone_privacy = $1 WHERE id = $2")
                .bind(v)
                .bind(c.user_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.me(c).await
    }

    async fn are_contacts(&self, a: i64, b: i64) -> ApiResult<bool> {
        let key = format!("{}:{}", a.min(b), a.max(b));
        let x: Option<i64> = sqlx::query_scalar("SELECT id FROM chats WHERE dialog_key = $1")
            .bind(key)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(x.is_some())
    }

    async fn allowed(&self, setting: &str, viewer: i64, owner: i64) -> ApiResult<bool> {
        Ok(viewer == owner
            || match setting {
                "everyone" => true,
                "contacts" => self.are_contacts(viewer, owner).await?,
                _ => false,
            })
    }

    /// Another user's public profile, with presence as their privacy allows.
    pub async fn user_profile(&self, c: &Caller, id: i64) -> ApiResult<Value> {
        let (id, phone, name, avatar, about, lsp, pp, last_seen, is_bot) =
            self.user_row(id).await?;
        let mut v = json!({"id": id, "display_name": name, "avatar": avatar, "about": about, "bot": is_bot != 0});
        if self.allowed(&pp, c.user_id, id).await? {
            v["phone"] = json!(phone);
        }
        if self.allowed(&lsp, c.user_id, id).await? {
            v["online"] = json!(self.hub.is_online(id));
            v["last_seen"] = json!(last_seen);
            v["last_seen_hidden"] = json!(false);
        } else {
            // Absent rather than a string where the field is otherwise an integer.
            v["last_seen_hidden"] = json!(true);
        }
        Ok(v)
    }

    /// Finds a user by phone number, if their privacy setting allows it.
    pub async fn lookup_phone(&self, c: &Caller, phone: &str) -> ApiResult<Value> {
        let phone = crate::phone::normalize(phone, &self.cfg.allowed_country_codes)?;
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT id, phone_privacy FROM users WHERE phone = $1")
                .bind(&phone)
                .fetch_optional(&self.db.pool)
                .await?;
        match row {
            Some((id, pp)) if self.allowed(&pp, c.user_id, id).await? => {
                self.user_profile(c, id).await
            }
            _ => Err(ApiError::NotFound("user")),
        }
    }

    /// Tells the user's dialog peers that they came online or went offline.
    pub async fn presence_changed(&self, user_id: i64, online: bool) -> ApiResult<()> {
        let now = now_ms();
        if !online {
            sqlx::query("UPDATE users SET last_seen = $1 WHERE id = $2")
                .bind(now)
                .bind(user_id)
                .execute(&self.db.pool)
                .await?;
        }
        let lsp: Option<String> =
            sqlx::query_scalar("SELECT last_seen_privacy FROM users WHERE id = $1")
                .bind(user_id)
                .fetch_optional(&self.db.pool)
                .await?;
        if lsp.as_deref() == Some("nobody") || lsp.is_none() {
            return Ok(());
        }
        let peers: Vec<i64> = sqlx::query_scalar(
            "SELECT m2.user_id FROM members m1 JOIN chats c ON c.id = m1.chat_id AND c.kind = 'dialog' JOIN members m2 ON m2.chat_id = c.id AND m2.user_id <> m1.user_id WHERE m1.user_id = $1",
        )
        .bind(user_id)
        .fetch_all(&self.db.pool)
        .await?;
        let j = json!({"type": "presence", "user_id": user_id, "online": online, "last_seen": now});
        self.hub.send_ephemeral(&peers, j.to_string(), None);
        Ok(())
    }
}
