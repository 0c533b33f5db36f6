//! Schema migrations for both backends, embedded in the binary. `scaidrive migrate` (and
//! `serve`) applies the missing ones; `api` and `worker` refuse to start unless the schema is
//! exactly current. Kept as a small runner of our own so SQLite and MariaDB share one code
//! path over `AnyPool`.

use super::{now, Backend, Db};

pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sqlite: &'static str,
    pub mysql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sqlite: include_str!("../../migrations/sqlite/0001_init.sql"),
        mysql: include_str!("../../migrations/mysql/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "gc_tombstones",
        sqlite: include_str!("../../migrations/sqlite/0002_gc_tombstones.sql"),
        mysql: include_str!("../../migrations/mysql/0002_gc_tombstones.sql"),
    },
    Migration {
        version: 3,
        name: "sync",
        sqlite: include_str!("../../migrations/sqlite/0003_sync.sql"),
        mysql: include_str!("../../migrations/mysql/0003_sync.sql"),
    },
    Migration {
        version: 4,
        name: "sync_settings",
        sqlite: include_str!("../../migrations/sqlite/0004_sync_settings.sql"),
        mysql: include_str!("../../migrations/mysql/0004_sync_settings.sql"),
    },
    Migration {
        version: 5,
        name: "pending_chunks",
        sqlite: include_str!("../../migrations/sqlite/0005_pending_chunks.sql"),
        mysql: include_str!("../../migrations/mysql/0005_pending_chunks.sql"),
    },
];

/// Why `migrate` refused to run.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("database schema is at version {have}, newer than this binary knows ({known}): refusing to touch it (run a newer scaidrive)")]
    NewerSchema { have: i64, known: i64 },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

pub fn latest() -> i64 {
    MIGRATIONS.last().map(|m| m.version).unwrap_or(0)
}

/// Statements of a migration file: split on `;` at line ends, comments dropped.
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in sql.lines() {
        let t = line.trim();
        if t.starts_with("--") || t.is_empty() {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
        if t.ends_with(';') {
            out.push(cur.trim().trim_end_matches(';').to_string());
            cur.clear();
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

async fn ensure_table(db: &Db) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS scaidrive_migrations (version BIGINT NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// The highest applied version (0 for an empty database).
pub async fn current(db: &Db) -> Result<i64, sqlx::Error> {
    ensure_table(db).await?;
    let v: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM scaidrive_migrations")
        .fetch_one(&db.pool)
        .await?;
    Ok(v.unwrap_or(0))
}

/// Apply every migration newer than the database's version. Returns how many ran.
pub async fn migrate(db: &Db) -> Result<usize, MigrateError> {
    let have = current(db).await?;
    if have > latest() {
        return Err(MigrateError::NewerSchema {
            have,
            known: latest(),
        });
    }
    let mut ran = 0;
    for m in MIGRATIONS.iter().filter(|m| m.version > have) {
        let sql = match db.backend {
            Backend::Sqlite => m.sqlite,
            Backend::MySql => m.mysql,
        };
        // MySQL DDL is not transactional anyway; on SQLite a transaction keeps a half-applied
        // migration from being recorded.
        let mut tx = db.pool.begin().await?;
        for stmt in statements(sql) {
            sqlx::query(&stmt).execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO scaidrive_migrations (version, name, applied_at) VALUES (?, ?, ?)",
        )
        .bind(m.version)
        .bind(m.name)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(
            event = "migration_applied",
            version = m.version,
            name = m.name
        );
        ran += 1;
    }
    Ok(ran)
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_backends_have_the_same_tables() {
        for m in super::MIGRATIONS {
            let tables = |sql: &str| {
                let mut t: Vec<String> = super::statements(sql)
                    .iter()
                    .filter_map(|s| {
                        s.strip_prefix("CREATE ")
                            .map(|r| r.split('(').next().unwrap_or("").trim().to_string())
                    })
                    .collect();
                t.sort();
                t
            };
            assert_eq!(tables(m.sqlite), tables(m.mysql));
        }
    }
}
