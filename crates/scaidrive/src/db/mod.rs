//! Database access: one `sqlx::AnyPool` over SQLite (embedded) or MariaDB/MySQL (production),
//! portable SQL with `?` placeholders, the schema migrations of both backends, and the few
//! statements whose syntax differs between them (upserts), isolated in helper functions.

pub mod migrations;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    MySql,
}

#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

/// Seconds since the Unix epoch: every timestamp column holds this (portable across backends).
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// ISO-8601 UTC rendering of a stored timestamp.
pub fn iso(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

impl Db {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::MySql
        };
        if backend == Backend::Sqlite {
            // sqlx creates the file (mode=rwc) but not its directory.
            let path = url
                .trim_start_matches("sqlite://")
                .split('?')
                .next()
                .unwrap_or("");
            if let Some(parent) = std::path::Path::new(path).parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent)?;
                }
            }
        }
        let opts = AnyConnectOptions::from_str(url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the writer; FULL fsyncs each commit so a
                        // committed row survives power loss; writers queue instead of failing.
                        conn.execute("PRAGMA journal_mode=WAL").await?;
                        conn.execute("PRAGMA synchronous=FULL").await?;
                        conn.execute("PRAGMA busy_timeout=10000").await?;
                    } else {
                        conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await?;
        Ok(Db { pool, backend })
    }

    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// `INSERT IGNORE` / `INSERT OR IGNORE`: insert unless a unique key already holds the row.
    pub fn insert_ignore(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "INSERT OR IGNORE",
            Backend::MySql => "INSERT IGNORE",
        }
    }

    /// Upsert of a chunk row: create it with refcount 0, or refresh `last_seen` (which keeps
    /// GC away from a chunk an upload is about to reference).
    pub fn upsert_chunk_sql(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => {
                "INSERT INTO chunks (tenant_id, hash, size, refcount, last_seen) VALUES (?, ?, ?, 0, ?) \
                 ON CONFLICT (tenant_id, hash) DO UPDATE SET last_seen = excluded.last_seen"
            }
            Backend::MySql => {
                "INSERT INTO chunks (tenant_id, hash, size, refcount, last_seen) VALUES (?, ?, ?, 0, ?) \
                 ON DUPLICATE KEY UPDATE last_seen = VALUES(last_seen)"
            }
        }
    }

    /// Upsert of an upload part (binds: tenant, session, index, hash, size, staged): a repeated
    /// PUT of the same index replaces the earlier one. `staged` = 1 when the bytes wait under
    /// `uploads/{session}/chunks/{index}`, 0 when they are at their content address.
    pub fn upsert_part_sql(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => {
                "INSERT INTO upload_parts (tenant_id, session_id, idx, hash, size, staged) VALUES (?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (tenant_id, session_id, idx) DO UPDATE SET hash = excluded.hash, size = excluded.size, staged = excluded.staged"
            }
            Backend::MySql => {
                "INSERT INTO upload_parts (tenant_id, session_id, idx, hash, size, staged) VALUES (?, ?, ?, ?, ?, ?) \
                 ON DUPLICATE KEY UPDATE hash = VALUES(hash), size = VALUES(size), staged = VALUES(staged)"
            }
        }
    }
}

/// `?, ?, ?` for an IN list of `n` values.
pub fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}
