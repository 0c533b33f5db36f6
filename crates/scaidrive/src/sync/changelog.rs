//! The per-tenant append-only change log: [`append`] writes one row inside the caller's
//! transaction (the same one that changes the tree), taking the next position from the
//! tenant's counter row. The `UPDATE` of that row holds its lock until commit, so two writers
//! of one tenant (also on two replicas over MariaDB) queue there: positions are strictly
//! increasing, commit in position order (a reader never sees 7 before 6) and are never
//! reused — purging old rows leaves the counter alone.

use serde_json::{json, Value};
use sqlx::AnyConnection;

use crate::db::{iso, now};
use crate::error::{is_unique_violation, ApiResult};

/// One change about to be logged.
#[derive(Debug, Clone, Default)]
pub struct NewChange {
    pub share_id: String,
    pub resource_type: &'static str,
    pub resource_id: String,
    pub change_type: &'static str,
    pub changed_by: String,
    pub old_path: Option<String>,
    pub new_path: Option<String>,
    pub version_id: Option<String>,
    pub size: Option<i64>,
    pub mime_type: Option<String>,
    pub checksum_sha256: Option<String>,
}

/// A logged change as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChangeRow {
    pub tenant_id: String,
    pub position: i64,
    pub id: String,
    pub share_id: String,
    pub resource_type: String,
    pub resource_id: String,
    pub change_type: String,
    pub changed_by: String,
    pub changed_at: i64,
    pub old_path: Option<String>,
    pub new_path: Option<String>,
    pub version_id: Option<String>,
    pub size: Option<i64>,
    pub mime_type: Option<String>,
    pub checksum_sha256: Option<String>,
}

pub const CHANGE_COLS: &str = "tenant_id, position, id, share_id, resource_type, resource_id, change_type, changed_by, changed_at, old_path, new_path, version_id, size, mime_type, checksum_sha256";

impl ChangeRow {
    /// Wire form (digest §11 change object, plus `position`).
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "position": self.position, "tenant_id": self.tenant_id, "share_id": self.share_id,
            "resource_type": self.resource_type, "resource_id": self.resource_id, "change_type": self.change_type,
            "changed_by": self.changed_by, "changed_at": iso(self.changed_at),
            "old_path": self.old_path, "new_path": self.new_path, "version_id": self.version_id,
            "metadata": {"size": self.size, "mime_type": self.mime_type, "checksum_sha256": self.checksum_sha256},
        })
    }
}

/// Make the transaction a writer before it reads (SQLite would otherwise fail to upgrade a
/// read snapshot when another writer committed meanwhile); on MariaDB it takes the counter
/// row lock early, which the change's append takes anyway.
pub async fn begin_write(conn: &mut AnyConnection, tenant_id: &str) -> ApiResult<()> {
    sqlx::query("UPDATE change_counters SET position = position WHERE tenant_id = ?")
        .bind(tenant_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Take the tenant's next position (row lock held until the transaction ends).
async fn next_position(conn: &mut AnyConnection, tenant_id: &str) -> ApiResult<i64> {
    for _ in 0..3 {
        let n =
            sqlx::query("UPDATE change_counters SET position = position + 1 WHERE tenant_id = ?")
                .bind(tenant_id)
                .execute(&mut *conn)
                .await?
                .rows_affected();
        if n == 0 {
            // First change of the tenant. A concurrent first insert makes this one fail on
            // the primary key; the UPDATE then finds the row.
            match sqlx::query(
                "INSERT INTO change_counters (tenant_id, position, purged_through) VALUES (?, 1, 0)",
            )
            .bind(tenant_id)
            .execute(&mut *conn)
            .await
            {
                Ok(_) => return Ok(1),
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let p: i64 = sqlx::query_scalar("SELECT position FROM change_counters WHERE tenant_id = ?")
            .bind(tenant_id)
            .fetch_one(&mut *conn)
            .await?;
        return Ok(p);
    }
    Err(crate::error::ApiError::internal(
        "change counter: could not take a position",
    ))
}

/// Append `ch` to the tenant's log inside the caller's transaction. Returns the position.
pub async fn append(conn: &mut AnyConnection, tenant_id: &str, ch: NewChange) -> ApiResult<i64> {
    let position = next_position(conn, tenant_id).await?;
    sqlx::query(&format!(
        "INSERT INTO change_log ({CHANGE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(tenant_id)
    .bind(position)
    .bind(scai_core::ids::new_id("chg"))
    .bind(&ch.share_id)
    .bind(ch.resource_type)
    .bind(&ch.resource_id)
    .bind(ch.change_type)
    .bind(&ch.changed_by)
    .bind(now())
    .bind(ch.old_path.as_deref())
    .bind(ch.new_path.as_deref())
    .bind(ch.version_id.as_deref())
    .bind(ch.size)
    .bind(ch.mime_type.as_deref())
    .bind(ch.checksum_sha256.as_deref())
    .execute(&mut *conn)
    .await?;
    // Counted at append: a transaction rolled back afterwards (rare) leaves these one ahead.
    metrics::counter!("scaidrive_sync_changelog_appends_total").increment(1);
    metrics::gauge!("scaidrive_sync_changelog_head_position", "tenant_id" => tenant_id.to_string())
        .set(position as f64);
    Ok(position)
}

/// `/a/b/c` path of a node read through `conn` (so it sees the transaction's own writes).
pub async fn path_in(
    conn: &mut AnyConnection,
    tenant_id: &str,
    node_id: &str,
) -> ApiResult<String> {
    let mut parts = Vec::new();
    let mut cur = Some(node_id.to_string());
    let mut guard = 0;
    while let Some(id) = cur {
        guard += 1;
        if guard > 1000 {
            break;
        }
        let row: Option<(Option<String>, String)> =
            sqlx::query_as("SELECT parent_id, name FROM nodes WHERE tenant_id = ? AND id = ?")
                .bind(tenant_id)
                .bind(&id)
                .fetch_optional(&mut *conn)
                .await?;
        match row {
            Some((Some(parent), name)) => {
                parts.push(name);
                cur = Some(parent);
            }
            _ => cur = None,
        }
    }
    parts.reverse();
    Ok(format!("/{}", parts.join("/")))
}

/// Log a change of a node (file or folder) whose row is already written in this transaction.
#[allow(clippy::too_many_arguments)]
pub async fn node_change(
    conn: &mut AnyConnection,
    node: &crate::fs::Node,
    change_type: &'static str,
    changed_by: &str,
    old_path: Option<String>,
    new_path: Option<String>,
) -> ApiResult<i64> {
    let is_file = !node.is_folder();
    append(
        conn,
        &node.tenant_id,
        NewChange {
            share_id: node.share_id.clone(),
            resource_type: if is_file { "file" } else { "folder" },
            resource_id: node.id.clone(),
            change_type,
            changed_by: changed_by.to_string(),
            old_path,
            new_path,
            version_id: if is_file {
                node.version_id.clone()
            } else {
                None
            },
            size: if is_file { Some(node.size) } else { None },
            mime_type: if is_file {
                node.mime_type.clone()
            } else {
                None
            },
            checksum_sha256: if is_file {
                node.checksum_sha256.clone()
            } else {
                None
            },
        },
    )
    .await
}

/// Load a node row through `conn`.
pub async fn load_in(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
) -> ApiResult<Option<crate::fs::Node>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {} FROM nodes WHERE tenant_id = ? AND id = ?",
        crate::fs::NODE_COLS
    ))
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?)
}
