//! Chats, members and messages: every change is a chat event with the next per-chat
//! sequence number, committed before anyone is told, then fanned out under the chat's
//! lock so connections see one chat's events in order.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use sqlx::{Any, Transaction};

use crate::auth::{Caller, new_id};
use crate::error::{ApiError, ApiResult};
use crate::model::*;
use crate::{App, now_ms};

/// Members of a chat as the fan-out needs them.
pub struct Members {
    pub users: Vec<i64>,
    pub bots: Vec<i64>,
}

type Row = (i64, i64, i64, String, String, i64, Option<i64>, i64);
const MSG_COLS: &str =
    "chat_id, seq, sender_id, client_id, content, created_at, edited_at, deleted";

fn row_to_message(r: Row) -> Message {
    let (chat_id, seq, sender_id, client_id, content, date, edited_at, deleted) = r;
    let content: Content = if deleted != 0 {
        Content::default()
    } else {
        serde_json::from_str(&content).unwrap_or_default()
    };
    Message {
        chat_id,
        seq,
        sender_id,
        client_id,
        date,
        content,
        edited_at,
        deleted: deleted != 0,
        reactions: BTreeMap::new(),
    }
}

impl App {
    pub(crate) fn chat_lock(&self, chat_id: i64) -> &tokio::sync::Mutex<()> {
        &self.locks[(chat_id as u64 % self.locks.len() as u64) as usize]
    }

    /// Members of a chat (cached; the cache is dropped on every membership change).
    pub async fn members(&self, chat_id: i64) -> ApiResult<Arc<Members>> {
        if let Some(m) = self.members_cache.read().get(&chat_id) {
            return Ok(m.clone());
        }
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT m.user_id, u.is_bot FROM members m JOIN users u ON u.id = m.user_id WHERE m.chat_id = $1",
        )
        .bind(chat_id)
        .fetch_all(&self.db.pool)
        .await?;
        let m = Arc::new(Members {
            users: rows.iter().map(|r| r.0).collect(),
            bots: rows.iter().filter(|r| r.1 != 0).map(|r| r.0).collect(),
        });
        self.members_cache.write().insert(chat_id, m.clone());
        Ok(m)
    }

    fn forget_members(&self, chat_id: i64) {
        self.members_cache.write().remove(&chat_id);
    }

    /// The caller's role and the chat's kind; `NotFound` / `NotMember` otherwise.
    pub async fn membership(&self, chat_id: i64, user_id: i64) -> ApiResult<(ChatKind, Role, i64)> {
        let row: Option<(String, Option<String>, Option<i64>)> = sqlx::query_as(
            "SELECT c.kind, m.role, m.joined_seq FROM chats c LEFT JOIN members m ON m.chat_id = c.id AND m.user_id = $2 WHERE c.id = $1",
        )
        .bind(chat_id)
        .bind(user_id)
        .fetch_optional(&self.db.pool)
        .await?;
        match row {
            None => Err(ApiError::NotFound("chat")),
            Some((_, None, _)) => Err(ApiError::NotMember),
            Some((kind, Some(role), joined)) => Ok((
                ChatKind::parse(&kind),
                Role::parse(&role),
                joined.unwrap_or(0),
            )),
        }
    }

    pub(crate) async fn begin_event(
        &self,
        chat_id: i64,
    ) -> ApiResult<(Transaction<'static, Any>, i64)> {
        let mut tx = self.db.pool.begin().await?;
        let seq: Option<i64> = sqlx::query_scalar(
            "UPDATE chats SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq",
        )
        .bind(chat_id)
        .fetch_optional(&mut *tx)
        .await?;
        Ok((tx, seq.ok_or(ApiError::NotFound("chat"))?))
    }

    /// Stores the event, commits, then fans it out (caller holds the chat lock).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn finish_event(
        &self,
        mut tx: Transaction<'static, Any>,
        chat_id: i64,
        seq: i64,
        mut ev: Value,
        actor: i64,
        also: &[i64],
        reload: bool,
    ) -> ApiResult<Arc<str>> {
        ev["chat_id"] = json!(chat_id);
        ev["seq"] = json!(seq);
        let body = ev.to_string();
        sqlx::query("INSERT INTO events (chat_id, seq, body) VALUES ($1, $2, $3)")
            .bind(chat_id)
            .bind(seq)
            .bind(&body)
            .execute(&mut *tx)
            .await?;
        // Bots of the chat as this transaction sees them (the cache is only filled from
        // committed state, after commit).
        let cached = self
            .members_cache
            .read()
            .get(&chat_id)
            .map(|m| m.bots.clone());
        let bots = match cached {
            Some(b) if !reload => b,
            _ => sqlx::query_scalar("SELECT m.user_id FROM members m JOIN users u ON u.id = m.user_id WHERE m.chat_id = $1 AND u.is_bot = 1")
                .bind(chat_id)
                .fetch_all(&mut *tx)
                .await?,
        };
        let mut woke = Vec::new();
        for &bot in bots.iter().chain(also.iter()) {
            if bot == actor || (also.contains(&bot) && !self.is_bot(bot).await?) {
                continue;
            }
            let id: i64 = sqlx::query_scalar("UPDATE users SET bot_update_seq = bot_update_seq + 1 WHERE id = $1 RETURNING bot_update_seq")
                .bind(bot)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO bot_updates (bot_id, update_id, body) VALUES ($1, $2, $3)")
                .bind(bot)
                .bind(id)
                .bind(&body)
                .execute(&mut *tx)
                .await?;
            woke.push(bot);
        }
        tx.commit().await?;
        if reload {
            self.forget_members(chat_id);
        }
        let members = self.members(chat_id).await?;
        self.metrics.events.inc();
        let json: Arc<str> = body.into();
        let n = self
            .hub
            .publish_chat(&members.users, chat_id, seq, json.clone());
        if !also.is_empty() {
            self.hub.publish_chat(also, chat_id, seq, json.clone());
        }
        self.metrics.deliveries.inc_by(n as u64);
        for b in woke {
            self.hub.bot_waker(b).notify_waiters();
            self.webhook_kick(b);
        }
        Ok(json)
    }

    async fn is_bot(&self, user_id: i64) -> ApiResult<bool> {
        let b: Option<i64> = sqlx::query_scalar("SELECT is_bot FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(b.unwrap_or(0) != 0)
    }

    async fn user_exists(&self, user_id: i64) -> ApiResult<()> {
        let x: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&self.db.pool)
            .await?;
        x.map(|_| ()).ok_or(ApiError::NotFound("user"))
    }

    /// Opens (or returns) the 1:1 dialog with `peer`.
    pub async fn open_dialog(&self, c: &Caller, peer: i64) -> ApiResult<ChatInfo> {
        if peer == c.user_id {
            return Err(ApiError::BadRequest("a dialog needs another user".into()));
        }
        self.user_exists(peer).await?;
        let key = format!("{}:{}", c.user_id.min(peer), c.user_id.max(peer));
        let existing: Option<i64> =
            sqlx::query_scalar("SELECT id FROM chats WHERE dialog_key = $1")
                .bind(&key)
                .fetch_optional(&self.db.pool)
                .await?;
        if let Some(id) = existing {
            return self.chat_info(c.user_id, id).await;
        }
        let id = self
            .create_chat_rows(c.user_id, ChatKind::Dialog, "", Some(&key), &[peer])
            .await?;
        self.chat_info(c.user_id, id).await
    }

    /// Creates a group or channel with the caller as owner.
    pub async fn create_chat(
        &self,
        c: &Caller,
        kind: ChatKind,
        title: &str,
        members: &[i64],
    ) -> ApiResult<ChatInfo> {
        if kind == ChatKind::Dialog {
            return Err(ApiError::BadRequest(
                "use POST /api/dialogs to open a dialog".into(),
            ));
        }
        let title = title.trim();
        if title.is_empty() || title.chars().count() > 128 {
            return Err(ApiError::BadRequest(
                "title must be 1 to 128 characters".into(),
            ));
        }
        let limit = self.limit(kind);
        if members.len() + 1 > limit as usize {
            return Err(ApiError::TooLarge(format!(
                "a {} has at most {limit} members",
                kind.as_str()
            )));
        }
        for &m in members {
            self.user_exists(m).await?;
        }
        let id = self
            .create_chat_rows(c.user_id, kind, title, None, members)
            .await?;
        self.chat_info(c.user_id, id).await
    }

    fn limit(&self, kind: ChatKind) -> u32 {
        match kind {
            ChatKind::Dialog => 2,
            ChatKind::Group => self.cfg.max_group_members,
            ChatKind::Channel => self.cfg.max_channel_members,
        }
    }

    async fn create_chat_rows(
        &self,
        owner: i64,
        kind: ChatKind,
        title: &str,
        key: Option<&str>,
        others: &[i64],
    ) -> ApiResult<i64> {
        let id = new_id();
        let now = now_ms();
        let mut all: Vec<i64> = vec![owner];
        for &o in others {
            if !all.contains(&o) {
                all.push(o);
            }
        }
        let _g = self.chat_lock(id).lock().await;
        let mut tx = self.db.pool.begin().await?;
        let r = sqlx::query(
            "INSERT INTO chats (id, kind, title, dialog_key, last_seq, member_count, created_by, created_at) VALUES ($1, $2, $3, $4, 1, $5, $6, $7)",
        )
        .bind(id)
        .bind(kind.as_str())
        .bind(title)
        .bind(key)
        .bind(all.len() as i64)
        .bind(owner)
        .bind(now)
        .execute(&mut *tx)
        .await;
        if let Err(e) = r {
            // Two users opening the same dialog at once: the other one won.
            if key.is_some() {
                drop(tx);
                let existing: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM chats WHERE dialog_key = $1")
                        .bind(key)
                        .fetch_optional(&self.db.pool)
                        .await?;
                if let Some(x) = existing {
                    return Ok(x);
                }
            }
            return Err(e.into());
        }
        for &u in &all {
            let role = if kind == ChatKind::Dialog {
                Role::Member
            } else if u == owner {
                Role::Owner
            } else {
                Role::Member
            };
            sqlx::query("INSERT INTO members (chat_id, user_id, role, joined_seq, read_seq) VALUES ($1, $2, $3, 1, 0)")
                .bind(id)
                .bind(u)
                .bind(role.as_str())
                .execute(&mut *tx)
                .await?;
        }
        self.forget_members(id);
        let ev = json!({"type": "chat_created", "kind": kind.as_str(), "title": title, "by": owner, "members": all});
        self.finish_event(tx, id, 1, ev, owner, &[], true).await?;
        Ok(id)
    }

    pub async fn chat_info(&self, user_id: i64, chat_id: i64) -> ApiResult<ChatInfo> {
        let row: Option<(i64, String, String, i64, i64, String, i64)> = sqlx::query_as(
            "SELECT c.id, c.kind, c.title, c.last_seq, c.member_count, m.role, m.read_seq FROM chats c JOIN members m ON m.chat_id = c.id AND m.user_id = $2 WHERE c.id = $1",
        )
        .bind(chat_id)
        .bind(user_id)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(r) = row else {
            self.membership(chat_id, user_id).await?;
            return Err(ApiError::NotMember);
        };
        self.to_info(user_id, r).await
    }

    async fn to_info(
        &self,
        user_id: i64,
        r: (i64, String, String, i64, i64, String, i64),
    ) -> ApiResult<ChatInfo> {
        let (id, kind, title, last_seq, member_count, role, read_seq) = r;
        let unread: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM messages WHERE chat_id = $1 AND seq > $2 AND sender_id <> $3 AND deleted = 0",
        )
        .bind(id)
        .bind(read_seq)
        .bind(user_id)
        .fetch_one(&self.db.pool)
        .await?;
        Ok(ChatInfo {
            id,
            kind: ChatKind::parse(&kind),
            title,
            last_seq,
            member_count,
            role: Role::parse(&role),
            read_seq,
            unread,
        })
    }

    pub async fn list_chats(&self, c: &Caller) -> ApiResult<Vec<ChatInfo>> {
        let rows: Vec<(i64, String, String, i64, i64, String, i64)> = sqlx::query_as(
            "SELECT c.id, c.kind, c.title, c.last_seq, c.member_count, m.role, m.read_seq FROM members m JOIN chats c ON c.id = m.chat_id WHERE m.user_id = $1 ORDER BY c.id",
        )
        .bind(c.user_id)
        .fetch_all(&self.db.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(self.to_info(c.user_id, r).await?);
        }
        Ok(out)
    }

    /// Members and their roles; in dialogs and groups also how far each has read
    /// (`read_seq`) and received on any device (`delivered_seq`), so a client shows its
    /// delivery and read ticks after a reload, not only from live receipts.
    pub async fn list_members(&self, c: &Caller, chat_id: i64) -> ApiResult<Vec<Value>> {
        let (kind, _, _) = self.membership(chat_id, c.user_id).await?;
        let rows: Vec<(i64, String, i64, i64)> = sqlx::query_as(
            "SELECT m.user_id, m.role, m.read_seq, COALESCE((SELECT MAX(r.delivered_seq) FROM receipts r WHERE r.chat_id = m.chat_id AND r.user_id = m.user_id), 0) FROM members m WHERE m.chat_id = $1 ORDER BY m.user_id",
        )
        .bind(chat_id)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(u, r, read, delivered)| {
                if kind == ChatKind::Channel {
                    json!({"user_id": u, "role": r})
                } else {
                    json!({"user_id": u, "role": r, "read_seq": read, "delivered_seq": delivered.max(read)})
                }
            })
            .collect())
    }

    pub async fn rename(&self, c: &Caller, chat_id: i64, title: &str) -> ApiResult<i64> {
        let (kind, role, _) = self.membership(chat_id, c.user_id).await?;
        let title = title.trim();
        if kind == ChatKind::Dialog {
            return Err(ApiError::Forbidden("a dialog has no title".into()));
        }
        if role < Role::Admin {
            return Err(ApiError::Forbidden(
                "only admins and the owner rename a chat".into(),
            ));
        }
        if title.is_empty() || title.chars().count() > 128 {
            return Err(ApiError::BadRequest(
                "title must be 1 to 128 characters".into(),
            ));
        }
        let _g = self.chat_lock(chat_id).lock().await;
        let (mut tx, seq) = self.begin_event(chat_id).await?;
        sqlx::query("UPDATE chats SET title = $1 WHERE id = $2")
            .bind(title)
            .bind(chat_id)
            .execute(&mut *tx)
            .await?;
        self.finish_event(
            tx,
            chat_id,
            seq,
            json!({"type": "chat_renamed", "title": title, "by": c.user_id}),
            c.user_id,
            &[],
            false,
        )
        .await?;
        Ok(seq)
    }

    /// Adds a member (groups: admins and owner; channels: admins, or anyone subscribing themselves).
    pub async fn add_member(&self, c: &Caller, chat_id: i64, user_id: i64) -> ApiResult<i64> {
        let kind = match self.membership(chat_id, c.user_id).await {
            Ok((kind, role, _)) => {
                if kind == ChatKind::Dialog {
                    return Err(ApiError::Forbidden(
                        "a dialog has exactly two members".into(),
                    ));
                }
                if role < Role::Admin {
                    return Err(ApiError::Forbidden(
                        "only admins and the owner add members".into(),
                    ));
                }
                kind
            }
            Err(ApiError::NotMember) if user_id == c.user_id => {
                let (kind,): (String,) = sqlx::query_as("SELECT kind FROM chats WHERE id = $1")
                    .bind(chat_id)
                    .fetch_one(&self.db.pool)
                    .await?;
                if ChatKind::parse(&kind) != ChatKind::Channel {
                    return Err(ApiError::NotMember);
                }
                ChatKind::Channel
            }
            Err(e) => return Err(e),
        };
        self.user_exists(user_id).await?;
        let _g = self.chat_lock(chat_id).lock().await;
        let exists: Option<String> =
            sqlx::query_scalar("SELECT role FROM members WHERE chat_id = $1 AND user_id = $2")
                .bind(chat_id)
                .bind(user_id)
                .fetch_optional(&self.db.pool)
                .await?;
        if exists.is_some() {
            return Err(ApiError::Conflict("already a member".into()));
        }
        let (mut tx, seq) = self.begin_event(chat_id).await?;
        let count: i64 = sqlx::query_scalar(
            "UPDATE chats SET member_count = member_count + 1 WHERE id = $1 RETURNING member_count",
        )
        .bind(chat_id)
        .fetch_one(&mut *tx)
        .await?;
        if count > self.limit(kind) as i64 {
            return Err(ApiError::TooLarge(format!(
                "a {} has at most {} members",
                kind.as_str(),
                self.limit(kind)
            )));
        }
        sqlx::query("INSERT INTO members (chat_id, user_id, role, joined_seq, read_seq) VALUES ($1, $2, 'member', $3, $4)")
            .bind(chat_id)
            .bind(user_id)
            .bind(seq)
            .bind(seq - 1)
            .execute(&mut *tx)
            .await?;
        self.forget_members(chat_id);
        let ev =
            json!({"type": "member_added", "user_id": user_id, "role": "member", "by": c.user_id});
        let r = self
            .finish_event(tx, chat_id, seq, ev, c.user_id, &[], true)
            .await;
        self.forget_members(chat_id);
        r?;
        Ok(seq)
    }

    /// Removes a member (admins remove members, the owner removes anyone; anyone may leave).
    pub async fn remove_member(&self, c: &Caller, chat_id: i64, user_id: i64) -> ApiResult<i64> {
        let (kind, role, _) = self.membership(chat_id, c.user_id).await?;
        if kind == ChatKind::Dialog {
            return Err(ApiError::Forbidden(
                "a dialog cannot be left; delete for me instead".into(),
            ));
        }
        let _g = self.chat_lock(chat_id).lock().await;
        let target: Option<String> =
            sqlx::query_scalar("SELECT role FROM members WHERE chat_id = $1 AND user_id = $2")
                .bind(chat_id)
                .bind(user_id)
                .fetch_optional(&self.db.pool)
                .await?;
        let Some(target) = target.map(|r| Role::parse(&r)) else {
            return Err(ApiError::NotFound("member"));
        };
        let leaving = user_id == c.user_id;
        if !leaving && (role < Role::Admin || target >= role) {
            return Err(ApiError::Forbidden(
                "admins remove members; only the owner removes admins".into(),
            ));
        }
        let (mut tx, seq) = self.begin_event(chat_id).await?;
        sqlx::query("DELETE FROM members WHERE chat_id = $1 AND user_id = $2")
            .bind(chat_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE chats SET member_count = member_count - 1 WHERE id = $1")
            .bind(chat_id)
            .execute(&mut *tx)
            .await?;
        let mut promoted = None;
        if target == Role::Owner {
            // The owner left: the longest-standing admin, else member, takes over.
            let next: Option<(i64,)> = sqlx::query_as(
                "SELECT user_id FROM members WHERE chat_id = $1 ORDER BY CASE role WHEN 'admin' THEN 0 ELSE 1 END, joined_seq, user_id LIMIT 1",
            )
            .bind(chat_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((n,)) = next {
                sqlx::query(
                    "UPDATE members SET role = 'owner' WHERE chat_id = $1 AND user_id = $2",
                )
                .bind(chat_id)
                .bind(n)
                .execute(&mut *tx)
                .await?;
                promoted = Some(n);
            }
        }
        self.forget_members(chat_id);
        let ev = if leaving {
            json!({"type": "member_left", "user_id": user_id, "new_owner": promoted})
        } else {
            json!({"type": "member_removed", "user_id": user_id, "by": c.user_id})
        };
        let r = self
            .finish_event(tx, chat_id, seq, ev, c.user_id, &[user_id], true)
            .await;
        self.forget_members(chat_id);
        r?;
        Ok(seq)
    }

    pub async fn set_role(
        &self,
        c: &Caller,
        chat_id: i64,
        user_id: i64,
        new_role: Role,
    ) -> ApiResult<i64> {
        let (kind, role, _) = self.membership(chat_id, c.user_id).await?;
        if kind == ChatKind::Dialog || role != Role::Owner {
            return Err(ApiError::Forbidden("only the owner changes roles".into()));
        }
        if new_role == Role::Owner || user_id == c.user_id {
            return Err(ApiError::BadRequest(
                "role must be admin or member, of another member".into(),
            ));
        }
        let _g = self.chat_lock(chat_id).lock().await;
        let (mut tx, seq) = self.begin_event(chat_id).await?;
        let r = sqlx::query("UPDATE members SET role = $1 WHERE chat_id = $2 AND user_id = $3")
            .bind(new_role.as_str())
            .bind(chat_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() != 1 {
            return Err(ApiError::NotFound("member"));
        }
        let ev = json!({"type": "role_changed", "user_id": user_id, "role": new_role.as_str(), "by": c.user_id});
        self.finish_event(tx, chat_id, seq, ev, c.user_id, &[], false)
            .await?;
        Ok(seq)
    }

    fn check_rate(&self, user_id: i64) -> ApiResult<()> {
        self.limits.messages.check(&user_id).map_err(|retry_after| {
            self.metrics.rate_limited.inc();
            ApiError::RateLimited { retry_after }
        })
    }

    /// Sends a message. Answers only once it is committed.
    pub async fn send_message(&self, c: &Caller, chat_id: i64, m: NewMessage) -> ApiResult<Ack> {
        validate_content(&m, self.cfg.max_text_chars)?;
        let (kind, role, _) = self.membership(chat_id, c.user_id).await?;
        if kind == ChatKind::Channel && role < Role::Admin {
            return Err(ApiError::Forbidden("only admins post in a channel".into()));
        }
        if let Some(ack) = self.existing_ack(chat_id, c.user_id, &m.client_id).await? {
            return Ok(ack);
        }
        self.check_rate(c.user_id)?;
        let mut content = Content {
            text: m.text,
            sticker: m.sticker,
            attachments: m.attachments,
            reply_to: m.reply_to,
            forwarded: None,
            call: None,
        };
        if let Some(f) = &m.forward_from {
            self.membership(f.chat_id, c.user_id).await?;
            let src = self.get_message(f.chat_id, f.seq).await?;
            if src.deleted {
                return Err(ApiError::NotFound("message"));
            }
            if src.content.call.is_some() {
                return Err(ApiError::BadRequest("a call cannot be forwarded".into()));
            }
            let fwd = src.content.forwarded.clone().unwrap_or(Forwarded {
                chat_id: f.chat_id,
                seq: f.seq,
                sender_id: src.sender_id,
            });
            content = Content {
                forwarded: Some(fwd),
                reply_to: content.reply_to,
                ..src.content
            };
        }
        if let Some(r) = content.reply_to {
            let ok: Option<i64> =
                sqlx::query_scalar("SELECT seq FROM messages WHERE chat_id = $1 AND seq = $2")
                    .bind(chat_id)
                    .bind(r)
                    .fetch_optional(&self.db.pool)
                    .await?;
            if ok.is_none() {
                return Err(ApiError::NotFound("message replied to"));
            }
        }
        let _g = self.chat_lock(chat_id).lock().await;
        if let Some(ack) = self.existing_ack(chat_id, c.user_id, &m.client_id).await? {
            return Ok(ack);
        }
        let now = now_ms();
        let (mut tx, seq) = self.begin_event(chat_id).await?;
        let content_json =
            serde_json::to_string(&content).map_err(|e| ApiError::Internal(e.into()))?;
        sqlx::query("INSERT INTO messages (chat_id, seq, sender_id, client_id, content, created_at, deleted) VALUES ($1, $2, $3, $4, $5, $6, 0)")
            .bind(chat_id)
            .bind(seq)
            .bind(c.user_id)
            .bind(&m.client_id)
            .bind(&content_json)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let msg = Message {
            chat_id,
            seq,
            sender_id: c.user_id,
            client_id: m.client_id.clone(),
            date: now,
            content,
            edited_at: None,
            deleted: false,
            reactions: BTreeMap::new(),
        };
        let ev = json!({"type": "message", "message": msg});
        self.finish_event(tx, chat_id, seq, ev, c.user_id, &[], false)
            .await?;
        self.metrics.messages.inc();
        Ok(Ack {
            chat_id,
            seq,
            client_id: m.client_id,
            date: now,
            duplicate: false,
        })
    }

    async fn existing_ack(
        &self,
        chat_id: i64,
        sender: i64,
        client_id: &str,
    ) -> ApiResult<Option<Ack>> {
        let r: Option<(i64, i64)> = sqlx::query_as(
            "SELECT seq, created_at FROM messages WHERE chat_id = $1 AND sender_id = $2 AND client_id = $3",
        )
        .bind(chat_id)
        .bind(sender)
        .bind(client_id)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(r.map(|(seq, date)| Ack {
            chat_id,
            seq,
            client_id: client_id.to_string(),
            date,
            duplicate: true,
        }))
    }

    pub async fn get_message(&self, chat_id: i64, seq: i64) -> ApiResult<Message> {
        let r: Option<Row> = sqlx::query_as(&format!(
            "SELECT {MSG_COLS} FROM messages WHERE chat_id = $1 AND seq = $2"
        ))
        .bind(chat_id)
        .bind(seq)
        .fetch_optional(&self.db.pool)
        .await?;
        r.map(row_to_message).ok_or(ApiError::NotFound("message"))
    }

    pub async fn edit_message(
        &self,
        c: &Caller,
        chat_id: i64,
        seq: i64,
        text: String,
    ) -> ApiResult<i64> {
        self.membership(chat_id, c.user_id).await?;
        let n = text.chars().count();
        if n > self.cfg.max_text_chars || text.trim().is_empty() {
            return Err(ApiError::BadRequest(format!(
                "text must be 1 to {} characters",
                self.cfg.max_text_chars
            )));
        }
        let _g = self.chat_lock(chat_id).lock().await;
        let mut msg = self.get_message(chat_id, seq).await?;
        if msg.sender_id != c.user_id {
            return Err(ApiError::Forbidden(
                "only the sender edits a message".into(),
            ));
        }
        if msg.deleted {
            return Err(ApiError::NotFound("message"));
        }
        if msg.content.call.is_some() {
            return Err(ApiError::Forbidden(
                "a call in the history cannot be edited".into(),
            ));
        }
        msg.content.text = Some(text);
        let now = now_ms();
        let (mut tx, ev_seq) = self.begin_event(chat_id).await?;
        sqlx::query(
            "UPDATE messages SET content = $1, edited_at = $2 WHERE chat_id = $3 AND seq = $4",
        )
        .bind(serde_json::to_string(&msg.content).map_err(|e| ApiError::Internal(e.into()))?)
        .bind(now)
        .bind(chat_id)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        msg.edited_at = Some(now);
        let ev = json!({"type": "message_edited", "message": msg});
        self.finish_event(tx, chat_id, ev_seq, ev, c.user_id, &[], false)
            .await?;
        Ok(ev_seq)
    }

    /// Deletes a message for everyone (sender, or admins of groups and channels) or hides
    /// it for the caller only.
    pub async fn delete_message(
        &self,
        c: &Caller,
        chat_id: i64,
        seq: i64,
        for_everyone: bool,
    ) -> ApiResult<Option<i64>> {
        let (kind, role, _) = self.membership(chat_id, c.user_id).await?;
        let msg = self.get_message(chat_id, seq).await?;
        if !for_everyone {
            let r = sqlx::query("INSERT INTO hidden_messages (chat_id, seq, user_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(chat_id)
                .bind(seq)
                .bind(c.user_id)
                .execute(&self.db.pool)
                .await?;
            let _ = r;
            self.hub.send_ephemeral(
                &[c.user_id],
                json!({"type": "message_hidden", "chat_id": chat_id, "message_seq": seq})
                    .to_string(),
                Some(&c.session_id),
            );
            return Ok(None);
        }
        if msg.sender_id != c.user_id && !(kind != ChatKind::Dialog && role >= Role::Admin) {
            return Err(ApiError::Forbidden(
                "only the sender or an admin deletes a message for everyone".into(),
            ));
        }
        if msg.deleted {
            return Err(ApiError::NotFound("message"));
        }
        let _g = self.chat_lock(chat_id).lock().await;
        let (mut tx, ev_seq) = self.begin_event(chat_id).await?;
        sqlx::query(
            "UPDATE messages SET deleted = 1, content = '{}' WHERE chat_id = $1 AND seq = $2",
        )
        .bind(chat_id)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        // The text leaves the event log too: resuming clients see the deletion only.
        let redacted = json!({"type": "message", "chat_id": chat_id, "seq": seq, "message": {
            "chat_id": chat_id, "seq": seq, "sender_id": msg.sender_id, "client_id": msg.client_id, "date": msg.date, "deleted": true}})
        .to_string();
        sqlx::query("UPDATE events SET body = $1 WHERE chat_id = $2 AND seq = $3")
            .bind(redacted)
            .bind(chat_id)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM reactions WHERE chat_id = $1 AND seq = $2")
            .bind(chat_id)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        let ev = json!({"type": "message_deleted", "message_seq": seq, "by": c.user_id});
        self.finish_event(tx, chat_id, ev_seq, ev, c.user_id, &[], false)
            .await?;
        Ok(Some(ev_seq))
    }

    pub async fn react(
        &self,
        c: &Caller,
        chat_id: i64,
        seq: i64,
        emoji: &str,
        add: bool,
    ) -> ApiResult<i64> {
        self.membership(chat_id, c.user_id).await?;
        if emoji.is_empty()
            || emoji.chars().count() > 8
            || emoji
                .chars()
                .any(|ch| ch.is_ascii_alphanumeric() || ch.is_whitespace())
        {
            return Err(ApiError::BadRequest("emoji must be one emoji".into()));
        }
        let msg = self.get_message(chat_id, seq).await?;
        if msg.deleted {
            return Err(ApiError::NotFound("message"));
        }
        let _g = self.chat_lock(chat_id).lock().await;
        let (mut tx, ev_seq) = self.begin_event(chat_id).await?;
        let r = if add {
            sqlx::query("INSERT INTO reactions (chat_id, seq, user_id, emoji) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
        } else {
            sqlx::query("DELETE FROM reactions WHERE chat_id = $1 AND seq = $2 AND user_id = $3 AND emoji = $4")
        }
        .bind(chat_id)
        .bind(seq)
        .bind(c.user_id)
        .bind(emoji)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            // Nothing changed: no event (the transaction rolls back the sequence).
            return Ok(0);
        }
        let ev = json!({"type": "reaction", "message_seq": seq, "user_id": c.user_id, "emoji": emoji, "added": add});
        self.finish_event(tx, chat_id, ev_seq, ev, c.user_id, &[], false)
            .await?;
        Ok(ev_seq)
    }

    /// A page of history, newest first, before `before` (exclusive; none = latest).
    pub async fn history(
        &self,
        c: &Caller,
        chat_id: i64,
        before: Option<i64>,
        limit: i64,
    ) -> ApiResult<(Vec<Message>, Option<i64>)> {
        self.membership(chat_id, c.user_id).await?;
        let limit = limit.clamp(1, 200);
        let before = before.unwrap_or(i64::MAX);
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {MSG_COLS} FROM messages m WHERE chat_id = $1 AND seq < $2 AND NOT EXISTS (SELECT 1 FROM hidden_messages h WHERE h.chat_id = m.chat_id AND h.seq = m.seq AND h.user_id = $3) ORDER BY seq DESC LIMIT $4"
        ))
        .bind(chat_id)
        .bind(before)
        .bind(c.user_id)
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        let mut msgs: Vec<Message> = rows.into_iter().map(row_to_message).collect();
        if let (Some(first), Some(last)) = (msgs.last().map(|m| m.seq), msgs.first().map(|m| m.seq))
        {
            let rs: Vec<(i64, String, i64)> = sqlx::query_as(
                "SELECT seq, emoji, COUNT(*) FROM reactions WHERE chat_id = $1 AND seq >= $2 AND seq <= $3 GROUP BY seq, emoji",
            )
            .bind(chat_id)
            .bind(first)
            .bind(last)
            .fetch_all(&self.db.pool)
            .await?;
            for (seq, emoji, n) in rs {
                if let Some(m) = msgs.iter_mut().find(|m| m.seq == seq) {
                    m.reactions.insert(emoji, n);
                }
            }
        }
        let next = if msgs.len() as i64 == limit {
            msgs.last().map(|m| m.seq)
        } else {
            None
        };
        Ok((msgs, next))
    }

    /// Stored events of a chat after `after`, up to `limit`, from the caller's join on.
    pub async fn events_after(
        &self,
        chat_id: i64,
        after: i64,
        joined: i64,
        limit: i64,
    ) -> ApiResult<Vec<(i64, String)>> {
        Ok(sqlx::query_as("SELECT seq, body FROM events WHERE chat_id = $1 AND seq > $2 AND seq >= $3 ORDER BY seq LIMIT $4")
            .bind(chat_id)
            .bind(after)
            .bind(joined)
            .bind(limit)
            .fetch_all(&self.db.pool)
            .await?)
    }

    /// Delivery or read receipt of one device; a read also moves the unread counter.
    pub async fn receipt(&self, c: &Caller, chat_id: i64, seq: i64, read: bool) -> ApiResult<()> {
        let (kind, _, _) = self.membership(chat_id, c.user_id).await?;
        let (col, ev) = if read {
            ("read_seq", "read")
        } else {
            ("delivered_seq", "delivered")
        };
        sqlx::query(&format!(
            "INSERT INTO receipts (chat_id, session_id, user_id, {col}) VALUES ($1, $2, $3, $4) ON CONFLICT (chat_id, session_id) DO UPDATE SET {col} = CASE WHEN receipts.{col} < $4 THEN $4 ELSE receipts.{col} END"
        ))
        .bind(chat_id)
        .bind(&c.session_id)
        .bind(c.user_id)
        .bind(seq)
        .execute(&self.db.pool)
        .await?;
        if read {
            sqlx::query("UPDATE members SET read_seq = $1 WHERE chat_id = $2 AND user_id = $3 AND read_seq < $1")
                .bind(seq)
                .bind(chat_id)
                .bind(c.user_id)
                .execute(&self.db.pool)
                .await?;
        }
        if kind != ChatKind::Channel {
            let m = self.members(chat_id).await?;
            let j = json!({"type": "receipt", "kind": ev, "chat_id": chat_id, "seq": seq, "user_id": c.user_id, "session_id": c.session_id});
            self.hub
                .send_ephemeral(&m.users, j.to_string(), Some(&c.session_id));
        }
        Ok(())
    }

    pub async fn typing(&self, c: &Caller, chat_id: i64) -> ApiResult<()> {
        let (kind, _, _) = self.membership(chat_id, c.user_id).await?;
        if kind != ChatKind::Channel {
            let m = self.members(chat_id).await?;
            let j = json!({"type": "typing", "chat_id": chat_id, "user_id": c.user_id});
            self.hub
                .send_ephemeral(&m.users, j.to_string(), Some(&c.session_id));
        }
        Ok(())
    }

    /// Chat ids and join positions of a user.
    pub async fn user_chats(&self, user_id: i64) -> ApiResult<Vec<(i64, i64, i64)>> {
        Ok(sqlx::query_as("SELECT m.chat_id, m.joined_seq, c.last_seq FROM members m JOIN chats c ON c.id = m.chat_id WHERE m.user_id = $1")
            .bind(user_id)
            .fetch_all(&self.db.pool)
            .await?)
    }
}

/// Checks what a message to send may carry, before any storage is read. Bounds every
/// field a client sets; `max_text_chars` is `chat.max_text_chars`.
#[doc(hidden)]
pub fn validate_content(m: &NewMessage, max_text_chars: usize) -> ApiResult<()> {
    if m.client_id.is_empty() || m.client_id.len() > 64 {
        return Err(ApiError::BadRequest(
            "client_id must be 1 to 64 characters".into(),
        ));
    }
    if let Some(t) = &m.text {
        let n = t.chars().count();
        if n > max_text_chars {
            return Err(ApiError::TooLarge(format!(
                "text is {n} characters; at most {} are allowed",
                max_text_chars
            )));
        }
    }
    if m.attachments.len() > 10 {
        return Err(ApiError::TooLarge(
            "at most 10 attachments per message".into(),
        ));
    }
    for a in &m.attachments {
        if a.file_id.is_empty() || a.file_id.len() > 128 || a.name.len() > 256 || a.mime.len() > 128
        {
            return Err(ApiError::BadRequest(
                "attachment needs a file_id (up to 128), a name (up to 256) and a mime type".into(),
            ));
        }
        if a.waveform.as_ref().is_some_and(|w| w.len() > 128) {
            return Err(ApiError::TooLarge(
                "waveform has at most 128 samples".into(),
            ));
        }
        if a.waveform.is_some() && a.duration_ms.is_none() {
            return Err(ApiError::BadRequest(
                "a voice message needs duration_ms".into(),
            ));
        }
    }
    let empty_text = m.text.as_deref().is_none_or(|t| t.trim().is_empty());
    if empty_text && m.sticker.is_none() && m.attachments.is_empty() && m.forward_from.is_none() {
        return Err(ApiError::BadRequest(
            "a message needs text, a sticker, an attachment or forward_from".into(),
        ));
    }
    Ok(())
}
