//! Calls in storage: the `calls` row, and the call's two entries in the chat's history
//! (`call_started`, then a message whose content is the call's outcome), each committed
//! with the next per-chat sequence number like any chat event.

use serde_json::{Value, json};

use super::machine::{Call, Kind, Mode, Reason};
use crate::error::ApiResult;
use crate::{App, now_ms};

fn mode_str(m: Mode) -> &'static str {
    match m {
        Mode::P2p => "p2p",
        Mode::Sfu => "sfu",
    }
}

/// What the history shows of an ended call.
pub fn summary(
    call_id: i64,
    kind: &str,
    video: bool,
    reason: &str,
    by: Option<i64>,
    duration_ms: Option<u64>,
) -> Value {
    let mut v = json!({"call_id": call_id, "kind": kind, "video": video, "reason": reason});
    if let Some(b) = by {
        v["by"] = json!(b);
    }
    if let Some(d) = duration_ms {
        v["duration_ms"] = json!(d);
    }
    v
}

impl App {
    /// Stores a new call and its `call_started` event; returns the event's seq.
    pub(crate) async fn store_call_started(
        &self,
        c: &Call,
        participants: &[i64],
    ) -> ApiResult<i64> {
        let _g = self.chat_lock(c.chat_id).lock().await;
        let (mut tx, seq) = self.begin_event(c.chat_id).await?;
        sqlx::query("INSERT INTO calls (id, chat_id, kind, video, caller_id, state, mode, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(c.id)
            .bind(c.chat_id)
            .bind(c.kind.as_str())
            .bind(i64::from(c.video))
            .bind(c.caller)
            .bind("ringing")
            .bind(mode_str(c.mode))
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        let ev = json!({"type": "call_started", "call_id": c.id, "kind": c.kind.as_str(),
            "video": c.video, "by": c.caller, "participants": participants});
        self.finish_event(tx, c.chat_id, seq, ev, c.caller, &[], false)
            .await?;
        Ok(seq)
    }

    pub(crate) async fn store_call_answered(&self, c: &Call) -> ApiResult<()> {
        sqlx::query("UPDATE calls SET state = 'active', answered_at = $1, mode = $2 WHERE id = $3 AND state <> 'ended'")
            .bind(now_ms())
            .bind(mode_str(c.mode))
            .bind(c.id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    pub(crate) async fn store_call_mode(&self, c: &Call) -> ApiResult<()> {
        sqlx::query("UPDATE calls SET mode = $1 WHERE id = $2")
            .bind(mode_str(c.mode))
            .bind(c.id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Marks the call ended and puts its outcome in the chat's history (a message from
    /// the caller whose content is `{"call": summary}`), in one transaction. Returns the
    /// message's seq.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn store_call_ended(
        &self,
        call_id: i64,
        chat_id: i64,
        kind: Kind,
        caller: i64,
        video: bool,
        reason: Reason,
        by: Option<i64>,
        duration_ms: Option<u64>,
    ) -> ApiResult<i64> {
        let now = now_ms();
        let _g = self.chat_lock(chat_id).lock().await;
        let (mut tx, seq) = self.begin_event(chat_id).await?;
        let done = sqlx::query("UPDATE calls SET state = 'ended', ended_at = $1, end_reason = $2, duration_ms = $3 WHERE id = $4 AND state <> 'ended'")
            .bind(now)
            .bind(reason.as_str())
            .bind(duration_ms.map(|d| d as i64))
            .bind(call_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            // Already ended (by another path): nothing to add; the sequence rolls back.
            return Ok(0);
        }
        let call = summary(
            call_id,
            kind.as_str(),
            video,
            reason.as_str(),
            by,
            duration_ms,
        );
        let client_id = format!("call:{call_id}");
        let content = json!({"call": call});
        sqlx::query("INSERT INTO messages (chat_id, seq, sender_id, client_id, content, created_at, deleted) VALUES ($1, $2, $3, $4, $5, $6, 0)")
            .bind(chat_id)
            .bind(seq)
            .bind(caller)
            .bind(&client_id)
            .bind(content.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let msg = json!({"chat_id": chat_id, "seq": seq, "sender_id": caller, "client_id": client_id,
            "date": now, "call": call});
        let ev = json!({"type": "message", "message": msg});
        self.finish_event(tx, chat_id, seq, ev, caller, &[], false)
            .await?;
        Ok(seq)
    }

    /// At start-up: calls a previous run left ringing or active can no longer go on
    /// (their state was in that process). Each ends as `failed`, in its chat's history
    /// too, so none stays "ringing" forever. Returns how many.
    pub(crate) async fn fail_unfinished_calls(&self) -> ApiResult<usize> {
        let rows: Vec<(i64, i64, String, i64, i64)> = sqlx::query_as(
            "SELECT id, chat_id, kind, video, caller_id FROM calls WHERE state <> 'ended'",
        )
        .fetch_all(&self.db.pool)
        .await?;
        for (id, chat_id, kind, video, caller) in &rows {
            let kind = if kind == "group" {
                Kind::Group
            } else {
                Kind::Direct
            };
            self.store_call_ended(
                *id,
                *chat_id,
                kind,
                *caller,
                *video != 0,
                Reason::Failed,
                None,
                None,
            )
            .await?;
        }
        Ok(rows.len())
    }

    /// The stored state of a call that is no longer live: `(chat_id, kind, reason)`.
    pub(crate) async fn stored_call(
        &self,
        call_id: i64,
    ) -> ApiResult<Option<(i64, String, Option<String>)>> {
        Ok(
            sqlx::query_as("SELECT chat_id, kind, end_reason FROM calls WHERE id = $1")
                .bind(call_id)
                .fetch_optional(&self.db.pool)
                .await?,
        )
    }
}
