//! The database: one `sqlx::AnyPool` over SQLite (embedded) or MariaDB/MySQL (production),
//! `?` placeholders everywhere, and an idempotent schema per backend (`CREATE … IF NOT
//! EXISTS`, applied by `migrate` and at start-up).
//!
//! Stream positions: `sw_tenants.last_position` is the per-tenant counter. [`append_event`]
//! increments it with an `UPDATE` as the first statement of the transaction that stores the
//! event; the row lock (InnoDB) or the database write lock (SQLite) is held until commit, so
//! positions are strictly increasing and gap-free in commit order, however many replicas
//! write.

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row, Transaction};

use crate::error::ApiResult;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    MySql,
}

#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

pub type Tx = Transaction<'static, Any>;

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Db {
    pub async fn connect(url: &str) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::MySql
        };
        if backend == Backend::Sqlite {
            if let Some(path) = url
                .strip_prefix("sqlite://")
                .and_then(|p| p.split('?').next())
            {
                if let Some(dir) = std::path::Path::new(path).parent() {
                    if !dir.as_os_str().is_empty() {
                        std::fs::create_dir_all(dir)?;
                    }
                }
            }
        }
        let max = if backend == Backend::Sqlite { 4 } else { 16 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        use sqlx::Executor;
                        conn.execute("PRAGMA journal_mode=WAL; PRAGMA busy_timeout=10000; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF;").await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        Ok(Db { pool, backend })
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        for stmt in schema(self.backend) {
            sqlx::query(&stmt).execute(&self.pool).await?;
        }
        Ok(())
    }

    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    pub fn insert_ignore(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "INSERT OR IGNORE",
            Backend::MySql => "INSERT IGNORE",
        }
    }

    pub async fn begin(&self) -> ApiResult<Tx> {
        Ok(self.pool.begin().await?)
    }
}

fn schema(b: Backend) -> Vec<String> {
    let (id, text, big, tbl) = match b {
        Backend::Sqlite => ("TEXT", "TEXT", "INTEGER", ""),
        Backend::MySql => (
            "VARCHAR(80)",
            // Not `_bin`: sqlx's Any driver reads binary-collated TEXT as BLOB.
            "MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci",
            "BIGINT",
            " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
        ),
    };
    let s = |t: &str| {
        t.replace("{id}", id)
            .replace("{text}", text)
            .replace("{big}", big)
            .replace("{tbl}", tbl)
    };
    [
        "CREATE TABLE IF NOT EXISTS sw_tenants (id {id} NOT NULL PRIMARY KEY, last_position {big} NOT NULL DEFAULT 0, created_at {big} NOT NULL){tbl}",
        "CREATE TABLE IF NOT EXISTS sw_participants (tenant_id {id} NOT NULL, id {id} NOT NULL, local_id {id} NOT NULL, display_name {text} NULL, email {text} NULL, created_at {big} NOT NULL, PRIMARY KEY (tenant_id, id)){tbl}",
        "CREATE TABLE IF NOT EXISTS sw_rooms (tenant_id {id} NOT NULL, id {id} NOT NULL, room_type {id} NOT NULL, name {text} NULL, topic {text} NULL, creator_id {id} NOT NULL, state {id} NOT NULL, dm_key {id} NULL, created_at {big} NOT NULL, PRIMARY KEY (tenant_id, id)){tbl}",
        "CREATE INDEX IF NOT EXISTS sw_rooms_dm ON sw_rooms (tenant_id, dm_key)",
        "CREATE TABLE IF NOT EXISTS sw_members (tenant_id {id} NOT NULL, room_id {id} NOT NULL, participant_id {id} NOT NULL, membership {id} NOT NULL, power_level {big} NOT NULL, joined_at {big} NOT NULL, left_position {big} NULL, PRIMARY KEY (tenant_id, room_id, participant_id)){tbl}",
        "CREATE INDEX IF NOT EXISTS sw_members_by_participant ON sw_members (tenant_id, participant_id)",
        "CREATE TABLE IF NOT EXISTS sw_events (tenant_id {id} NOT NULL, stream_position {big} NOT NULL, id {id} NOT NULL, room_id {id} NOT NULL, sender_id {id} NOT NULL, event_type {id} NOT NULL, target_id {id} NULL, content {text} NOT NULL, original_content {text} NULL, event_uuid {id} NULL, origin_ts {big} NOT NULL, created_at {big} NOT NULL, edited_at {big} NULL, redacted_at {big} NULL, PRIMARY KEY (tenant_id, stream_position)){tbl}",
        "CREATE UNIQUE INDEX IF NOT EXISTS sw_events_id ON sw_events (tenant_id, id)",
        "CREATE INDEX IF NOT EXISTS sw_events_room ON sw_events (tenant_id, room_id, stream_position)",
        "CREATE UNIQUE INDEX IF NOT EXISTS sw_events_uuid ON sw_events (tenant_id, sender_id, event_uuid)",
        "CREATE TABLE IF NOT EXISTS sw_reactions (tenant_id {id} NOT NULL, event_id {id} NOT NULL, sender_id {id} NOT NULL, emoji VARCHAR(64) NOT NULL, created_at {big} NOT NULL, PRIMARY KEY (tenant_id, event_id, sender_id, emoji)){tbl}",
        "CREATE TABLE IF NOT EXISTS sw_read_markers (tenant_id {id} NOT NULL, room_id {id} NOT NULL, participant_id {id} NOT NULL, event_id {id} NOT NULL, stream_position {big} NOT NULL, PRIMARY KEY (tenant_id, room_id, participant_id)){tbl}",
    ]
    .iter()
    .map(|t| s(t))
    .collect()
}

/// A TEXT column: MySQL reports TEXT as BLOB on the wire and the Any driver then refuses
/// `String`, so fall back to bytes (always UTF-8 here).
pub fn text<I>(r: &AnyRow, col: I) -> Result<Option<String>, sqlx::Error>
where
    I: sqlx::ColumnIndex<AnyRow> + Copy,
{
    match r.try_get::<Option<String>, _>(col) {
        Ok(v) => Ok(v),
        Err(_) => Ok(r
            .try_get::<Option<Vec<u8>>, _>(col)?
            .map(|b| String::from_utf8_lossy(&b).into_owned())),
    }
}

/// An event about to be stored.
#[derive(Clone, Debug)]
pub struct Draft {
    pub room_id: String,
    pub sender_id: String,
    pub event_type: &'static str,
    pub target_id: Option<String>,
    pub content: serde_json::Value,
    pub event_uuid: Option<String>,
}

/// A stored event row.
#[derive(Clone, Debug)]
pub struct EventRow {
    pub tenant_id: String,
    pub stream_position: i64,
    pub id: String,
    pub room_id: String,
    pub sender_id: String,
    pub event_type: String,
    pub target_id: Option<String>,
    pub content: String,
    pub original_content: Option<String>,
    pub event_uuid: Option<String>,
    pub origin_ts: i64,
    pub created_at: i64,
    pub edited_at: Option<i64>,
    pub redacted_at: Option<i64>,
}

pub const EVENT_COLS: &str = "e.tenant_id, e.stream_position, e.id, e.room_id, e.sender_id, e.event_type, e.target_id, e.content, e.original_content, e.event_uuid, e.origin_ts, e.created_at, e.edited_at, e.redacted_at";

impl EventRow {
    pub fn from_row(r: &AnyRow) -> Result<EventRow, sqlx::Error> {
        Ok(EventRow {
            tenant_id: r.try_get("tenant_id")?,
            stream_position: r.try_get("stream_position")?,
            id: r.try_get("id")?,
            room_id: r.try_get("room_id")?,
            sender_id: r.try_get("sender_id")?,
            event_type: r.try_get("event_type")?,
            target_id: r.try_get("target_id")?,
            content: text(r, "content")?.unwrap_or_default(),
            original_content: text(r, "original_content")?,
            event_uuid: r.try_get("event_uuid")?,
            origin_ts: r.try_get("origin_ts")?,
            created_at: r.try_get("created_at")?,
            edited_at: r.try_get("edited_at")?,
            redacted_at: r.try_get("redacted_at")?,
        })
    }
}

/// Store an event with the tenant's next stream position. Must be the first write of `tx`
/// (see the module doc).
pub async fn append_event(tx: &mut Tx, tenant: &str, d: &Draft) -> ApiResult<EventRow> {
    sqlx::query("UPDATE sw_tenants SET last_position = last_position + 1 WHERE id = ?")
        .bind(tenant)
        .execute(&mut **tx)
        .await?;
    let pos: i64 = sqlx::query("SELECT last_position FROM sw_tenants WHERE id = ?")
        .bind(tenant)
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?;
    let now = now_ms();
    let row = EventRow {
        tenant_id: tenant.to_string(),
        stream_position: pos,
        id: format!("evt-{}", uuid::Uuid::new_v4().simple()),
        room_id: d.room_id.clone(),
        sender_id: d.sender_id.clone(),
        event_type: d.event_type.to_string(),
        target_id: d.target_id.clone(),
        content: serde_json::to_string(&d.content)?,
        original_content: None,
        event_uuid: d.event_uuid.clone(),
        origin_ts: now / 1000,
        created_at: now,
        edited_at: None,
        redacted_at: None,
    };
    sqlx::query("INSERT INTO sw_events (tenant_id, stream_position, id, room_id, sender_id, event_type, target_id, content, event_uuid, origin_ts, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        .bind(&row.tenant_id)
        .bind(row.stream_position)
        .bind(&row.id)
        .bind(&row.room_id)
        .bind(&row.sender_id)
        .bind(&row.event_type)
        .bind(&row.target_id)
        .bind(&row.content)
        .bind(&row.event_uuid)
        .bind(row.origin_ts)
        .bind(row.created_at)
        .execute(&mut **tx)
        .await?;
    Ok(row)
}
