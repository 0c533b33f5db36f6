//! The file tree of a tenant: shares, folders and files (one `nodes` table), access checks,
//! keyset-paginated listing, rename/move/trash, and versions (each version is a manifest of
//! chunk hashes; committing one links rows and never copies bytes).

pub mod names;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use sqlx::AnyConnection;

use crate::auth::Caller;
use crate::db::{iso, now, placeholders, Db};
use crate::error::{is_unique_violation, ApiError, ApiResult};
use crate::sync::changelog as log;

pub const NODE_COLS: &str = "tenant_id, id, share_id, parent_id, kind, name, size, mime_type, checksum_sha256, version, version_id, owner_id, created_by, created_at, modified_by, modified_at, is_deleted";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Node {
    pub tenant_id: String,
    pub id: String,
    pub share_id: String,
    pub parent_id: Option<String>,
    pub kind: String,
    pub name: String,
    pub size: i64,
    pub mime_type: Option<String>,
    pub checksum_sha256: Option<String>,
    pub version: i64,
    pub version_id: Option<String>,
    pub owner_id: String,
    pub created_by: String,
    pub created_at: i64,
    pub modified_by: String,
    pub modified_at: i64,
    pub is_deleted: i64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Folder,
    File,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Folder => "folder",
            Kind::File => "file",
        }
    }
    fn noun(self) -> &'static str {
        match self {
            Kind::Folder => "folder",
            Kind::File => "file",
        }
    }
}

impl Node {
    pub fn is_folder(&self) -> bool {
        self.kind == "folder"
    }

    /// Wire form. `path` is computed by the caller (it needs the ancestors).
    pub fn to_json(&self, path: &str) -> Value {
        if self.is_folder() {
            json!({
                "id": self.id, "type": "folder", "tenant_id": self.tenant_id, "share_id": self.share_id,
                "parent_id": self.parent_id, "name": self.name, "path": path, "owner_id": self.owner_id,
                "created_by": self.created_by, "created_at": iso(self.created_at),
                "modified_by": self.modified_by, "modified_at": iso(self.modified_at),
                "is_deleted": self.is_deleted != 0,
            })
        } else {
            json!({
                "id": self.id, "type": "file", "tenant_id": self.tenant_id, "share_id": self.share_id,
                "folder_id": self.parent_id, "name": self.name, "path": path,
                "mime_type": self.mime_type, "size": self.size, "checksum_sha256": self.checksum_sha256,
                "version": self.version, "version_id": self.version_id, "owner_id": self.owner_id,
                "created_by": self.created_by, "created_at": iso(self.created_at),
                "modified_by": self.modified_by, "modified_at": iso(self.modified_at),
                "is_deleted": self.is_deleted != 0,
            })
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Share {
    pub tenant_id: String,
    pub id: String,
    pub name: String,
    pub share_type: String,
    pub owner_id: String,
    pub root_folder_id: String,
    pub quota_bytes: Option<i64>,
    pub created_at: i64,
}

impl Share {
    pub fn to_json(&self, role: &str) -> Value {
        json!({
            "id": self.id, "tenant_id": self.tenant_id, "name": self.name, "type": self.share_type,
            "share_type": self.share_type, "role": role, "owner_id": self.owner_id,
            "root_folder_id": self.root_folder_id, "quota_bytes": self.quota_bytes,
            "created_at": iso(self.created_at),
        })
    }
}

const SHARE_COLS: &str =
    "tenant_id, id, name, share_type, owner_id, root_folder_id, quota_bytes, created_at";

/// The caller's role on a share, `None` when the share is missing or not visible to them.
pub async fn share_role(db: &Db, c: &Caller, share_id: &str) -> ApiResult<Option<(Share, String)>> {
    let share: Option<Share> = sqlx::query_as(&format!(
        "SELECT {SHARE_COLS} FROM shares WHERE tenant_id = ? AND id = ?"
    ))
    .bind(&c.tenant_id)
    .bind(share_id)
    .fetch_optional(&db.pool)
    .await?;
    let Some(share) = share else { return Ok(None) };
    if c.is_admin {
        return Ok(Some((share, "admin".to_string())));
    }
    let role: Option<String> = sqlx::query_scalar(
        "SELECT role FROM share_members WHERE tenant_id = ? AND share_id = ? AND user_id = ?",
    )
    .bind(&c.tenant_id)
    .bind(share_id)
    .bind(&c.user_id)
    .fetch_optional(&db.pool)
    .await?;
    Ok(role.map(|r| (share, r)))
}

pub fn role_can_write(role: &str) -> bool {
    matches!(role, "owner" | "admin" | "contributor")
}

pub async fn get_share(db: &Db, c: &Caller, share_id: &str) -> ApiResult<(Share, String)> {
    share_role(db, c, share_id)
        .await?
        .ok_or(ApiError::NotFound("share"))
}

pub async fn my_shares(
    db: &Db,
    c: &Caller,
    limit: i64,
    offset: i64,
) -> ApiResult<(Vec<(Share, String)>, i64)> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT share_id, role FROM share_members WHERE tenant_id = ? AND user_id = ? ORDER BY share_id LIMIT ? OFFSET ?",
    )
    .bind(&c.tenant_id)
    .bind(&c.user_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(&db.pool)
    .await?;
    let total: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM share_members WHERE tenant_id = ? AND user_id = ?",
    )
    .bind(&c.tenant_id)
    .bind(&c.user_id)
    .fetch_one(&db.pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (sid, role) in rows {
        let s: Option<Share> = sqlx::query_as(&format!(
            "SELECT {SHARE_COLS} FROM shares WHERE tenant_id = ? AND id = ?"
        ))
        .bind(&c.tenant_id)
        .bind(&sid)
        .fetch_optional(&db.pool)
        .await?;
        if let Some(s) = s {
            out.push((s, role));
        }
    }
    Ok((out, total))
}

async fn load_node(db: &Db, tenant_id: &str, id: &str) -> ApiResult<Option<Node>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {NODE_COLS} FROM nodes WHERE tenant_id = ? AND id = ?"
    ))
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(&db.pool)
    .await?)
}

/// A node the caller can see, with their role on its share. Missing, other tenant's, wrong
/// kind or not shared with the caller: all 404. In the trash: 410 unless `allow_deleted`.
pub async fn get_node(
    db: &Db,
    c: &Caller,
    id: &str,
    kind: Kind,
    allow_deleted: bool,
) -> ApiResult<(Node, String)> {
    let prefix = match kind {
        Kind::Folder => "fld",
        Kind::File => "fil",
    };
    if !scai_core::ids::has_prefix(id, prefix) {
        return Err(ApiError::NotFound(kind.noun()));
    }
    let node = load_node(db, &c.tenant_id, id)
        .await?
        .ok_or(ApiError::NotFound(kind.noun()))?;
    if node.kind != kind.as_str() {
        return Err(ApiError::NotFound(kind.noun()));
    }
    let (_, role) = share_role(db, c, &node.share_id)
        .await?
        .ok_or(ApiError::NotFound(kind.noun()))?;
    if node.is_deleted != 0 && !allow_deleted {
        return Err(ApiError::Deleted(kind.noun()));
    }
    Ok((node, role))
}

pub fn require_write_role(role: &str) -> ApiResult<()> {
    if role_can_write(role) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "Permission denied: WRITE needs contributor or higher (role {role})"
        )))
    }
}

/// `/a/b` path of a folder (root is `/`), walking up the parents.
pub async fn folder_path(db: &Db, tenant_id: &str, folder: &Node) -> ApiResult<String> {
    let mut parts = Vec::new();
    let mut cur = folder.clone();
    let mut guard = 0;
    while let Some(pid) = cur.parent_id.clone() {
        parts.push(cur.name.clone());
        guard += 1;
        if guard > 1000 {
            break;
        }
        match load_node(db, tenant_id, &pid).await? {
            Some(p) => cur = p,
            None => break,
        }
    }
    parts.reverse();
    Ok(format!("/{}", parts.join("/")))
}

pub fn join_path(parent: &str, name: &str) -> String {
    if parent.ends_with('/') {
        format!("{parent}{name}")
    } else {
        format!("{parent}/{name}")
    }
}

pub async fn node_path(db: &Db, node: &Node) -> ApiResult<String> {
    if node.is_folder() {
        return folder_path(db, &node.tenant_id, node).await;
    }
    let parent = match &node.parent_id {
        Some(pid) => match load_node(db, &node.tenant_id, pid).await? {
            Some(p) => folder_path(db, &node.tenant_id, &p).await?,
            None => "/".to_string(),
        },
        None => "/".to_string(),
    };
    Ok(join_path(&parent, &node.name))
}

pub async fn node_json(db: &Db, node: &Node) -> ApiResult<Value> {
    Ok(node.to_json(&node_path(db, node).await?))
}

fn map_conflict(e: sqlx::Error, name: &str) -> ApiError {
    if is_unique_violation(&e) {
        ApiError::NameConflict(name.to_string())
    } else {
        e.into()
    }
}

/// Resolve the folder to create something in: `folder_id`, else the share's root. Checks the
/// caller may write there.
pub async fn target_folder(
    db: &Db,
    c: &Caller,
    share_id: Option<&str>,
    folder_id: Option<&str>,
) -> ApiResult<Node> {
    let folder_id = match (folder_id, share_id) {
        (Some(f), _) => f.to_string(),
        (None, Some(s)) => {
            let (share, _) = get_share(db, c, s).await?;
            share.root_folder_id
        }
        (None, None) => {
            return Err(ApiError::field(
                "share_id",
                "share_id or folder_id is required",
            ))
        }
    };
    let (folder, role) = get_node(db, c, &folder_id, Kind::Folder, false).await?;
    if let Some(s) = share_id {
        if s != folder.share_id {
            return Err(ApiError::field(
                "folder_id",
                "folder is not in the given share",
            ));
        }
    }
    require_write_role(&role)?;
    Ok(folder)
}

pub async fn create_folder(db: &Db, c: &Caller, parent: &Node, name: &str) -> ApiResult<Node> {
    names::validate("name", name)?;
    let id = scai_core::ids::new_id("fld");
    let ts = now();
    let mut tx = db.pool.begin().await?;
    sqlx::query(
        "INSERT INTO nodes (tenant_id, id, share_id, parent_id, kind, name, live_name, owner_id, created_by, created_at, modified_by, modified_at) VALUES (?, ?, ?, ?, 'folder', ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&c.tenant_id)
    .bind(&id)
    .bind(&parent.share_id)
    .bind(&parent.id)
    .bind(name)
    .bind(name)
    .bind(&c.user_id)
    .bind(&c.user_id)
    .bind(ts)
    .bind(&c.user_id)
    .bind(ts)
    .execute(&mut *tx)
    .await
    .map_err(|e| map_conflict(e, name))?;
    // The change-log row commits with the folder (sync).
    let node = log::load_in(&mut tx, &c.tenant_id, &id)
        .await?
        .ok_or(ApiError::NotFound("folder"))?;
    let path = log::path_in(&mut tx, &c.tenant_id, &id).await?;
    log::node_change(&mut tx, &node, "created", &c.user_id, None, Some(path)).await?;
    tx.commit().await?;
    Ok(node)
}

/// Rename and/or move a node. Moving a folder under itself or a descendant is refused; moves
/// stay inside one share.
pub async fn update_node(
    db: &Db,
    c: &Caller,
    node: &Node,
    new_name: Option<&str>,
    new_parent: Option<&str>,
) -> ApiResult<Node> {
    if node.parent_id.is_none() {
        return Err(ApiError::field(
            "id",
            "a share's root folder cannot be renamed or moved",
        ));
    }
    let name = new_name.unwrap_or(&node.name).to_string();
    names::validate("name", &name)?;
    let mut parent_id = node.parent_id.clone().unwrap_or_default();
    if let Some(p) = new_parent {
        let (dest, role) = get_node(db, c, p, Kind::Folder, false).await?;
        require_write_role(&role)?;
        if dest.share_id != node.share_id {
            return Err(ApiError::field(
                "parent_id",
                "moving between shares is not supported",
            ));
        }
        if node.is_folder() {
            // Walk up from the destination: meeting the node means a cycle.
            let mut cur = Some(dest.clone());
            while let Some(n) = cur {
                if n.id == node.id {
                    return Err(ApiError::field(
                        "parent_id",
                        "a folder cannot be moved into itself or its descendants",
                    ));
                }
                cur = match n.parent_id {
                    Some(pid) => load_node(db, &c.tenant_id, &pid).await?,
                    None => None,
                };
            }
        }
        parent_id = dest.id;
    }
    let mut tx = db.pool.begin().await?;
    log::begin_write(&mut tx, &c.tenant_id).await?;
    let old_path = log::path_in(&mut tx, &c.tenant_id, &node.id).await?;
    sqlx::query("UPDATE nodes SET name = ?, live_name = ?, parent_id = ?, modified_by = ?, modified_at = ? WHERE tenant_id = ? AND id = ? AND is_deleted = 0")
        .bind(&name)
        .bind(&name)
        .bind(&parent_id)
        .bind(&c.user_id)
        .bind(now())
        .bind(&c.tenant_id)
        .bind(&node.id)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_conflict(e, &name))?;
    let updated =
        log::load_in(&mut tx, &c.tenant_id, &node.id)
            .await?
            .ok_or(ApiError::NotFound(if node.is_folder() {
                "folder"
            } else {
                "file"
            }))?;
    let new_path = log::path_in(&mut tx, &c.tenant_id, &node.id).await?;
    let change = if updated.parent_id != node.parent_id {
        "moved"
    } else {
        "renamed"
    };
    log::node_change(
        &mut tx,
        &updated,
        change,
        &c.user_id,
        Some(old_path),
        Some(new_path),
    )
    .await?;
    tx.commit().await?;
    Ok(updated)
}

/// Move a node (and, for a folder, everything under it) to the trash. The node's name is
/// freed (`live_name` NULL) so a new item may take it.
pub async fn trash_node(db: &Db, c: &Caller, node: &Node) -> ApiResult<()> {
    if node.parent_id.is_none() {
        return Err(ApiError::field(
            "id",
            "a share's root folder cannot be deleted",
        ));
    }
    let ts = now();
    let mut tx = db.pool.begin().await?;
    log::begin_write(&mut tx, &c.tenant_id).await?;
    let old_path = log::path_in(&mut tx, &c.tenant_id, &node.id).await?;
    sqlx::query("UPDATE nodes SET is_deleted = 1, deleted_at = ?, live_name = NULL, modified_by = ?, modified_at = ? WHERE tenant_id = ? AND id = ?")
        .bind(ts)
        .bind(&c.user_id)
        .bind(ts)
        .bind(&c.tenant_id)
        .bind(&node.id)
        .execute(&mut *tx)
        .await?;
    if node.is_folder() {
        let mut frontier = vec![node.id.clone()];
        while let Some(fid) = frontier.pop() {
            let kids: Vec<(String, String)> = sqlx::query_as("SELECT id, kind FROM nodes WHERE tenant_id = ? AND parent_id = ? AND is_deleted = 0")
                .bind(&c.tenant_id)
                .bind(&fid)
                .fetch_all(&mut *tx)
                .await?;
            sqlx::query("UPDATE nodes SET is_deleted = 1, deleted_at = ? WHERE tenant_id = ? AND parent_id = ? AND is_deleted = 0")
                .bind(ts)
                .bind(&c.tenant_id)
                .bind(&fid)
                .execute(&mut *tx)
                .await?;
            frontier.extend(
                kids.into_iter()
                    .filter(|(_, k)| k == "folder")
                    .map(|(id, _)| id),
            );
        }
    }
    // One `deleted` row for the top node: a client removes the subtree with it.
    log::node_change(&mut tx, node, "deleted", &c.user_id, Some(old_path), None).await?;
    tx.commit().await?;
    Ok(())
}

/// One page of a folder's children, ordered by (name, id), after the keyset `cursor`.
pub struct Page {
    pub items: Vec<Node>,
    pub next_cursor: Option<String>,
    pub total: i64,
}

pub fn encode_cursor(name: &str, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&(name, id)).unwrap_or_default())
}

pub fn decode_cursor(cursor: &str) -> ApiResult<(String, String)> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| serde_json::from_slice::<(String, String)>(&b).ok())
        .ok_or_else(|| ApiError::field("cursor", "invalid cursor"))
}

pub async fn list_children(
    db: &Db,
    c: &Caller,
    folder: &Node,
    cursor: Option<&str>,
    limit: i64,
    include_deleted: bool,
) -> ApiResult<Page> {
    let deleted_filter = if include_deleted {
        ""
    } else {
        " AND is_deleted = 0"
    };
    let after = cursor.map(decode_cursor).transpose()?;
    let mut sql = format!(
        "SELECT {NODE_COLS} FROM nodes WHERE tenant_id = ? AND parent_id = ?{deleted_filter}"
    );
    if after.is_some() {
        // `name >= ?` is the index range on both engines; the rest trims equal names.
        sql.push_str(" AND name >= ? AND (name > ? OR id > ?)");
    }
    sql.push_str(" ORDER BY name, id LIMIT ?");
    let mut q = sqlx::query_as::<_, Node>(&sql)
        .bind(&c.tenant_id)
        .bind(&folder.id);
    if let Some((n, i)) = &after {
        q = q.bind(n.clone()).bind(n.clone()).bind(i.clone());
    }
    let count_sql =
        format!("SELECT COUNT(*) FROM nodes WHERE tenant_id = ? AND parent_id = ?{deleted_filter}");
    let count = sqlx::query_scalar::<_, i64>(&count_sql)
        .bind(&c.tenant_id)
        .bind(&folder.id)
        .fetch_one(&db.pool);
    // The page and the (index-only) count run on two connections at once.
    let (mut items, total) = futures::try_join!(q.bind(limit + 1).fetch_all(&db.pool), count)?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|n| encode_cursor(&n.name, &n.id))
    } else {
        None
    };
    Ok(Page {
        items,
        next_cursor,
        total,
    })
}

/// What a committed upload becomes.
pub enum Target {
    /// A new file named `name` in `folder`.
    New {
        folder: Box<Node>,
        name: String,
        mime_type: String,
    },
    /// A new version of an existing file.
    Version { file_id: String },
}

/// The content of a version: chunk hashes in order, total size, chunk size, whole-file SHA-256.
pub struct Content {
    pub hashes: Vec<[u8; 32]>,
    pub size: i64,
    pub chunk_size: i64,
    pub sha256: String,
}

/// Link `content` as a new file or a new version, inside the caller's transaction: the node
/// row, the version row (manifest) and the chunk reference counts. No bytes move.
pub async fn commit_content(
    conn: &mut AnyConnection,
    c: &Caller,
    target: &Target,
    content: &Content,
) -> ApiResult<String> {
    let ts = now();
    let ver_id = scai_core::ids::new_id("ver");
    let (file_id, number) = match target {
        Target::New {
            folder,
            name,
            mime_type,
        } => {
            let file_id = scai_core::ids::new_id("fil");
            sqlx::query(
                "INSERT INTO nodes (tenant_id, id, share_id, parent_id, kind, name, live_name, size, mime_type, checksum_sha256, version, version_id, owner_id, created_by, created_at, modified_by, modified_at) VALUES (?, ?, ?, ?, 'file', ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&c.tenant_id)
            .bind(&file_id)
            .bind(&folder.share_id)
            .bind(&folder.id)
            .bind(name)
            .bind(name)
            .bind(content.size)
            .bind(mime_type)
            .bind(&content.sha256)
            .bind(&ver_id)
            .bind(&c.user_id)
            .bind(&c.user_id)
            .bind(ts)
            .bind(&c.user_id)
            .bind(ts)
            .execute(&mut *conn)
            .await
            .map_err(|e| map_conflict(e, name))?;
            (file_id, 1i64)
        }
        Target::Version { file_id } => {
            // Write first: on SQLite the transaction takes the write lock here, not after a read.
            let n = sqlx::query("UPDATE nodes SET version = version + 1, version_id = ?, size = ?, checksum_sha256 = ?, modified_by = ?, modified_at = ? WHERE tenant_id = ? AND id = ? AND kind = 'file' AND is_deleted = 0")
                .bind(&ver_id)
                .bind(content.size)
                .bind(&content.sha256)
                .bind(&c.user_id)
                .bind(ts)
                .bind(&c.tenant_id)
                .bind(file_id)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(ApiError::NotFound("file"));
            }
            let v: i64 =
                sqlx::query_scalar("SELECT version FROM nodes WHERE tenant_id = ? AND id = ?")
                    .bind(&c.tenant_id)
                    .bind(file_id)
                    .fetch_one(&mut *conn)
                    .await?;
            (file_id.clone(), v)
        }
    };
    let manifest: Vec<u8> = content
        .hashes
        .iter()
        .flat_map(|h| h.iter().copied())
        .collect();
    sqlx::query("INSERT INTO versions (tenant_id, id, file_id, version_number, size, checksum_sha256, chunk_size, manifest, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        .bind(&c.tenant_id)
        .bind(&ver_id)
        .bind(&file_id)
        .bind(number)
        .bind(content.size)
        .bind(&content.sha256)
        .bind(content.chunk_size)
        .bind(manifest)
        .bind(&c.user_id)
        .bind(ts)
        .execute(&mut *conn)
        .await?;
    add_refs(conn, &c.tenant_id, &content.hashes, 1).await?;
    let node = log::load_in(conn, &c.tenant_id, &file_id)
        .await?
        .ok_or(ApiError::NotFound("file"))?;
    let path = log::path_in(conn, &c.tenant_id, &file_id).await?;
    let change = if number > 1 { "updated" } else { "created" };
    log::node_change(conn, &node, change, &c.user_id, None, Some(path)).await?;
    Ok(file_id)
}

/// Adjust the reference count of each distinct chunk by `delta`, in batched statements.
pub async fn add_refs(
    conn: &mut AnyConnection,
    tenant_id: &str,
    hashes: &[[u8; 32]],
    delta: i64,
) -> ApiResult<()> {
    let mut distinct: Vec<String> = hashes.iter().map(hex::encode).collect();
    distinct.sort();
    distinct.dedup();
    for batch in distinct.chunks(500) {
        let sql = format!(
            "UPDATE chunks SET refcount = refcount + ? WHERE tenant_id = ? AND hash IN ({})",
            placeholders(batch.len())
        );
        let mut q = sqlx::query(&sql).bind(delta).bind(tenant_id);
        for h in batch {
            q = q.bind(h.clone());
        }
        let n = q.execute(&mut *conn).await?.rows_affected();
        if n != batch.len() as u64 {
            return Err(ApiError::internal(format!(
                "chunk rows missing: {} of {}",
                batch.len() as u64 - n,
                batch.len()
            )));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Version {
    pub id: String,
    pub file_id: String,
    pub version_number: i64,
    pub size: i64,
    pub checksum_sha256: String,
    pub chunk_size: i64,
    pub manifest: Vec<u8>,
    pub created_by: String,
    pub created_at: i64,
}

impl Version {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "file_id": self.file_id, "version_number": self.version_number, "size": self.size,
            "checksum_sha256": self.checksum_sha256, "created_by": self.created_by, "created_at": iso(self.created_at),
        })
    }
    pub fn hashes(&self) -> Vec<[u8; 32]> {
        self.manifest
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect()
    }
}

const VERSION_COLS: &str = "id, file_id, version_number, size, checksum_sha256, chunk_size, manifest, created_by, created_at";

pub async fn list_versions(db: &Db, c: &Caller, file: &Node) -> ApiResult<Vec<Version>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {VERSION_COLS} FROM versions WHERE tenant_id = ? AND file_id = ? ORDER BY version_number DESC"
    ))
    .bind(&c.tenant_id)
    .bind(&file.id)
    .fetch_all(&db.pool)
    .await?)
}

/// A version by number (`3`) or id (`ver_…`); `None` means the current one.
pub async fn get_version(
    db: &Db,
    c: &Caller,
    file: &Node,
    which: Option<&str>,
) -> ApiResult<Version> {
    let which = which
        .map(str::to_string)
        .unwrap_or_else(|| file.version.to_string());
    let by_number = format!("SELECT {VERSION_COLS} FROM versions WHERE tenant_id = ? AND file_id = ? AND version_number = ?");
    let by_id = format!(
        "SELECT {VERSION_COLS} FROM versions WHERE tenant_id = ? AND file_id = ? AND id = ?"
    );
    let q = if let Ok(n) = which.parse::<i64>() {
        sqlx::query_as(&by_number)
            .bind(&c.tenant_id)
            .bind(&file.id)
            .bind(n)
    } else if scai_core::ids::has_prefix(&which, "ver") {
        sqlx::query_as(&by_id)
            .bind(&c.tenant_id)
            .bind(&file.id)
            .bind(which.clone())
    } else {
        return Err(ApiError::field(
            "version",
            "expected a version number or a ver_ id",
        ));
    };
    q.fetch_optional(&db.pool)
        .await?
        .ok_or(ApiError::NotFound("version"))
}
