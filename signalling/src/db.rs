//! Storage: one code path over SQLite (WAL, the default) and PostgreSQL, through
//! `sqlx::Any`. SQL is written in the common subset of both (`$1` parameters, BIGINT
//! flags instead of booleans, ids chosen by the application).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

/// Versioned migrations, applied in order once each. Never edit a released one: add one.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE users (
    id BIGINT PRIMARY KEY,
    phone TEXT UNIQUE,
    display_name TEXT NOT NULL DEFAULT '',
    avatar TEXT,
    about TEXT NOT NULL DEFAULT '',
    last_seen_privacy TEXT NOT NULL DEFAULT 'everyone',
    phone_privacy TEXT NOT NULL DEFAULT 'everyone',
    last_seen BIGINT NOT NULL DEFAULT 0,
    is_bot BIGINT NOT NULL DEFAULT 0,
    bot_owner BIGINT,
    bot_token_hash TEXT UNIQUE,
    bot_webhook_url TEXT,
    bot_webhook_secret TEXT,
    bot_update_seq BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
CREATE TABLE login_codes (
    phone TEXT PRIMARY KEY,
    code_hash TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
CREATE TABLE code_sends (
    phone TEXT NOT NULL,
    sent_at BIGINT NOT NULL
);
CREATE INDEX code_sends_phone ON code_sends (phone, sent_at);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL,
    device_name TEXT NOT NULL,
    refresh_hash TEXT NOT NULL UNIQUE,
    refresh_expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE TABLE chats (
    id BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    dialog_key TEXT UNIQUE,
    last_seq BIGINT NOT NULL DEFAULT 0,
    member_count BIGINT NOT NULL DEFAULT 0,
    created_by BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE members (
    chat_id BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    role TEXT NOT NULL,
    joined_seq BIGINT NOT NULL,
    read_seq BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, user_id)
);
CREATE INDEX members_user ON members (user_id);
CREATE TABLE events (
    chat_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (chat_id, seq)
);
CREATE TABLE messages (
    chat_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    sender_id BIGINT NOT NULL,
    client_id TEXT NOT NULL,
    content TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    edited_at BIGINT,
    deleted BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, seq),
    UNIQUE (chat_id, sender_id, client_id)
);
CREATE TABLE hidden_messages (
    chat_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    PRIMARY KEY (chat_id, seq, user_id)
);
CREATE TABLE reactions (
    chat_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    emoji TEXT NOT NULL,
    PRIMARY KEY (chat_id, seq, user_id, emoji)
);
CREATE TABLE receipts (
    chat_id BIGINT NOT NULL,
    session_id TEXT NOT NULL,
    user_id BIGINT NOT NULL,
    delivered_seq BIGINT NOT NULL DEFAULT 0,
    read_seq BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, session_id)
);
CREATE TABLE bot_updates (
    bot_id BIGINT NOT NULL,
    update_id BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (bot_id, update_id)
)
"#,
    ),
    (
        2,
        r#"
CREATE TABLE code_burns (
    phone TEXT NOT NULL,
    burnt_at BIGINT NOT NULL
);
CREATE INDEX code_burns_phone ON code_burns (phone, burnt_at);
CREATE TABLE refresh_rotated (
    hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    rotated_at BIGINT NOT NULL
);
CREATE INDEX refresh_rotated_session ON refresh_rotated (session_id);
CREATE INDEX refresh_rotated_at ON refresh_rotated (rotated_at)
"#,
    ),
    (
        3,
        r#"
CREATE TABLE calls (
    id BIGINT PRIMARY KEY,
    chat_id BIGINT NOT NULL,
    kind TEXT NOT NULL,
    video BIGINT NOT NULL,
    caller_id BIGINT NOT NULL,
    state TEXT NOT NULL,
    mode TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    answered_at BIGINT,
    ended_at BIGINT,
    end_reason TEXT,
    duration_ms BIGINT
);
CREATE INDEX calls_chat ON calls (chat_id);
CREATE INDEX calls_state ON calls (state);
CREATE TABLE push_targets (
    session_id TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL,
    kind TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    p256dh TEXT NOT NULL DEFAULT '',
    auth TEXT NOT NULL DEFAULT '',
    app_id TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);
CREATE INDEX push_targets_user ON push_targets (user_id)
"#,
    ),
];

/// Which engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub engine: Engine,
}

impl Db {
    /// Opens PostgreSQL when `url` is set, else SQLite (WAL) at `data_dir/signalling.db`,
    /// and applies pending migrations.
    pub async fn open(url: &str, data_dir: &Path) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let (url, engine) = if url.is_empty() {
            let path = data_dir.join("signalling.db");
            (
                format!("sqlite://{}?mode=rwc", path.display()),
                Engine::Sqlite,
            )
        } else if url.starts_with("postgres") {
            (url.to_string(), Engine::Postgres)
        } else if url.starts_with("sqlite:") {
            (url.to_string(), Engine::Sqlite)
        } else {
            anyhow::bail!("signalling.database_url must start with postgres:// or sqlite:");
        };
        let opts = AnyConnectOptions::from_str(&url).context("parsing the database URL")?;
        let sqlite = engine == Engine::Sqlite;
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 16 })
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // WAL: readers never block the writer. synchronous=FULL: a
                        // committed message survives power loss too, not only kill -9.
                        conn.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=10000; PRAGMA foreign_keys=OFF")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .context("connecting to the database")?;
        let db = Db { pool, engine };
        db.migrate().await.context("applying migrations")?;
        Ok(db)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        self.pool
            .execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .await?;
        for (version, sql) in MIGRATIONS {
            let mut tx = self.pool.begin().await?;
            // Inside the transaction so two nodes starting together apply it once.
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                    .bind(*version)
                    .fetch_optional(&mut *tx)
                    .await?;
            if done.is_some() {
                continue;
            }
            for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(stmt)
                    .execute(&mut *tx)
                    .await
                    .with_context(|| format!("migration {version}"))?;
            }
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(*version)
                .bind(crate::now_ms())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(version, "applied database migration");
        }
        Ok(())
    }
}
