//! The client's state: one SQLite file `DIR/.scaidrive/state.db`. `kv` holds settings and
//! the cursor; `entries` is the last state both sides agreed on, per share path (the base of
//! every three-way decision); `uploads` remembers open upload sessions so an interrupted
//! upload resumes after a restart. Rows are written only after the file-system step they
//! describe, so a crash leaves the state behind the disk, never ahead of it.

use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::SqlitePool;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Entry {
    pub path: String,
    pub resource_id: String,
    pub kind: String,
    pub version_id: Option<String>,
    pub sha256: Option<String>,
    pub size: i64,
    pub mtime: i64,
}

impl Entry {
    pub fn is_folder(&self) -> bool {
        self.kind == "folder"
    }
}

#[derive(Clone)]
pub struct State {
    pool: SqlitePool,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS entries (path TEXT PRIMARY KEY, resource_id TEXT NOT NULL, kind TEXT NOT NULL, version_id TEXT, sha256 TEXT, size INTEGER NOT NULL DEFAULT 0, mtime INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS entries_id ON entries (resource_id)",
    "CREATE TABLE IF NOT EXISTS uploads (path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, session_id TEXT NOT NULL)",
];

const ENTRY_COLS: &str = "path, resource_id, kind, version_id, sha256, size, mtime";

impl State {
    pub async fn open(dir: &Path) -> anyhow::Result<State> {
        let sd = dir.join(crate::STATE_DIR);
        std::fs::create_dir_all(sd.join("tmp"))?;
        let opts =
            SqliteConnectOptions::from_str(&format!("sqlite://{}", sd.join("state.db").display()))?
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                // WAL + NORMAL: a commit survives a crash of the client; a power cut may lose
                // the last commits, which only leaves the state behind the disk (reconciled by
                // content hash on the next scan), never ahead of it. FULL would fsync per file.
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?;
        for s in SCHEMA {
            sqlx::query(s).execute(&pool).await?;
        }
        Ok(State { pool })
    }

    pub async fn get(&self, key: &str) -> anyhow::Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT value FROM kv WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn set(&self, key: &str, value: &str) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
            .bind(key).bind(value).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn require(&self, key: &str) -> anyhow::Result<String> {
        self.get(key).await?.ok_or_else(|| {
            anyhow::anyhow!("not initialised ({key} missing): run `scaidrive-sync init` first")
        })
    }

    pub async fn entries(&self) -> anyhow::Result<Vec<Entry>> {
        Ok(
            sqlx::query_as(&format!("SELECT {ENTRY_COLS} FROM entries ORDER BY path"))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn by_path(&self, path: &str) -> anyhow::Result<Option<Entry>> {
        Ok(
            sqlx::query_as(&format!("SELECT {ENTRY_COLS} FROM entries WHERE path = ?"))
                .bind(path)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn by_id(&self, id: &str) -> anyhow::Result<Option<Entry>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {ENTRY_COLS} FROM entries WHERE resource_id = ? LIMIT 1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn put(&self, e: &Entry) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM entries WHERE resource_id = ? AND path <> ?")
            .bind(&e.resource_id)
            .bind(&e.path)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("INSERT INTO entries ({ENTRY_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET resource_id = excluded.resource_id, kind = excluded.kind, version_id = excluded.version_id, sha256 = excluded.sha256, size = excluded.size, mtime = excluded.mtime"))
            .bind(&e.path).bind(&e.resource_id).bind(&e.kind).bind(&e.version_id).bind(&e.sha256).bind(e.size).bind(e.mtime)
            .execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn remove(&self, path: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM entries WHERE path = ?")
            .bind(path)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Remove `path` and everything below it.
    pub async fn remove_tree(&self, path: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM entries WHERE path = ? OR substr(path, 1, ?) = ?")
            .bind(path)
            .bind(path.len() as i64 + 1)
            .bind(format!("{path}/"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Entries strictly below `path`.
    pub async fn under(&self, path: &str) -> anyhow::Result<Vec<Entry>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {ENTRY_COLS} FROM entries WHERE substr(path, 1, ?) = ? ORDER BY path DESC"
        ))
        .bind(path.len() as i64 + 1)
        .bind(format!("{path}/"))
        .fetch_all(&self.pool)
        .await?)
    }

    /// A move of `from` (and, for a folder, everything below it) to `to`.
    pub async fn rename_tree(&self, from: &str, to: &str) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM entries WHERE path = ? OR substr(path, 1, ?) = ?")
            .bind(to)
            .bind(to.len() as i64 + 1)
            .bind(format!("{to}/"))
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE entries SET path = ? || substr(path, ?) WHERE path = ? OR substr(path, 1, ?) = ?")
            .bind(to).bind(from.len() as i64 + 1).bind(from).bind(from.len() as i64 + 1).bind(format!("{from}/"))
            .execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn upload_for(&self, path: &str) -> anyhow::Result<Option<(String, String)>> {
        Ok(
            sqlx::query_as("SELECT sha256, session_id FROM uploads WHERE path = ?")
                .bind(path)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn set_upload(&self, path: &str, sha: &str, session: &str) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO uploads (path, sha256, session_id) VALUES (?, ?, ?) ON CONFLICT(path) DO UPDATE SET sha256 = excluded.sha256, session_id = excluded.session_id")
            .bind(path).bind(sha).bind(session).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn clear_upload(&self, path: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM uploads WHERE path = ?")
            .bind(path)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn pending_uploads(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM uploads")
            .fetch_one(&self.pool)
            .await?)
    }
}
