//! `POST /api/v1/sync/apply`: a device pushes its local changes. File content travels first
//! through a resumable upload session; an item names the session and, for an edit, the
//! `base_version_id` it was made on. A base that is not the server's current version is a
//! conflict (by version, never by mtime), settled by the request's strategy:
//! `LAST_WRITER_WINS` / `CLIENT_WINS` (client content becomes the new version),
//! `SERVER_WINS` (client change dropped), `KEEP_BOTH` (client content saved beside it as
//! `name (conflict copy YYYY-MM-DD HHMM device).ext`) or `MANUAL` (a conflict record holds the
//! client content until resolved; only that resource is blocked). Conflicts and their
//! resolution (`/sync/conflicts`) live here too.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use crate::api::{ok, J, P, Q};
use crate::auth::Caller;
use crate::db::{iso, now};
use crate::error::{ApiError, ApiResult};
use crate::fs::{self, Kind, Node};
use crate::AppState;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Strategy {
    LastWriterWins,
    KeepBoth,
    Manual,
    ServerWins,
    ClientWins,
}

impl Strategy {
    pub(crate) fn parse(s: &str) -> ApiResult<Strategy> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "LAST_WRITER_WINS" => Strategy::LastWriterWins,
            "KEEP_BOTH" => Strategy::KeepBoth,
            "MANUAL" => Strategy::Manual,
            "SERVER_WINS" => Strategy::ServerWins,
            "CLIENT_WINS" => Strategy::ClientWins,
            _ => {
                return Err(ApiError::field(
                    "conflict_resolution",
                    "one of LAST_WRITER_WINS, KEEP_BOTH, MANUAL, SERVER_WINS, CLIENT_WINS",
                ))
            }
        })
    }
    pub(crate) fn name(self) -> &'static str {
        match self {
            Strategy::LastWriterWins => "LAST_WRITER_WINS",
            Strategy::KeepBoth => "KEEP_BOTH",
            Strategy::Manual => "MANUAL",
            Strategy::ServerWins => "SERVER_WINS",
            Strategy::ClientWins => "CLIENT_WINS",
        }
    }
}

#[derive(serde::Deserialize)]
pub struct ApplyBody {
    device_id: String,
    share_id: String,
    conflict_resolution: Option<String>,
    changes: Vec<ApplyChange>,
}

#[derive(serde::Deserialize, Default)]
pub struct ApplyChange {
    resource_type: String,
    #[serde(default)]
    resource_id: Option<String>,
    change_type: String,
    #[serde(default)]
    base_version_id: Option<String>,
    #[serde(default)]
    new_path: Option<String>,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    version_id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    old_path: Option<String>,
}

/// `name (conflict copy 2026-11-25 2315 laptop).ext`
pub fn conflict_name(name: &str, device: &str, ts: i64) -> String {
    let when = chrono::DateTime::from_timestamp(ts, 0)
        .map(|d| d.format("%Y-%m-%d %H%M").to_string())
        .unwrap_or_default();
    let device: String = device
        .chars()
        .filter(|c| !matches!(c, '/' | '\\' | '\0'))
        .take(40)
        .collect();
    let tag = format!(" (conflict copy {when} {device})");
    match name.rfind('.') {
        Some(i) if i > 0 => format!("{}{}{}", &name[..i], tag, &name[i..]),
        _ => format!("{name}{tag}"),
    }
}

fn split_path(p: &str) -> ApiResult<(Vec<String>, String)> {
    let parts: Vec<String> = p
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let Some((last, dirs)) = parts.split_last() else {
        return Err(ApiError::field(
            "new_path",
            "must name an item below the share root",
        ));
    };
    for s in &parts {
        fs::names::validate("new_path", s)?;
    }
    Ok((dirs.to_vec(), last.clone()))
}

async fn child(st: &AppState, c: &Caller, parent: &str, name: &str) -> ApiResult<Option<Node>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {} FROM nodes WHERE tenant_id = ? AND parent_id = ? AND live_name = ?",
        fs::NODE_COLS
    ))
    .bind(&c.tenant_id)
    .bind(parent)
    .bind(name)
    .fetch_optional(&st.db.pool)
    .await?)
}

/// The folder at `dirs` below the share root, created (with parents) when missing.
async fn ensure_dir(st: &AppState, c: &Caller, root: &Node, dirs: &[String]) -> ApiResult<Node> {
    let mut cur = root.clone();
    for d in dirs {
        cur = match child(st, c, &cur.id, d).await? {
            Some(n) if n.is_folder() => n,
            Some(_) => {
                return Err(ApiError::NameConflict(d.clone()));
            }
            None => match fs::create_folder(&st.db, c, &cur, d).await {
                Ok(n) => {
                    crate::pubsub::node_changed(st, &n, "created");
                    n
                }
                Err(ApiError::NameConflict(_)) => child(st, c, &cur.id, d)
                    .await?
                    .filter(Node::is_folder)
                    .ok_or_else(|| ApiError::NameConflict(d.clone()))?,
                Err(e) => return Err(e),
            },
        };
    }
    Ok(cur)
}

/// A free name in `folder` for a conflict copy of `name`.
async fn free_copy_name(
    st: &AppState,
    c: &Caller,
    folder: &Node,
    name: &str,
    device: &str,
) -> ApiResult<String> {
    let base = conflict_name(name, device, now());
    let mut cand = base.clone();
    let mut i = 2;
    while child(st, c, &folder.id, &cand).await?.is_some() {
        cand = match base.rfind('.') {
            Some(p) if p > 0 => format!("{} {i}{}", &base[..p], &base[p..]),
            _ => format!("{base} {i}"),
        };
        i += 1;
        if i > 100 {
            return Err(ApiError::NameConflict(name.to_string()));
        }
    }
    Ok(cand)
}

/// Where a session's content goes.
enum Dest {
    Version(String),
    New(Box<Node>, String),
}

/// Re-point a session (it may have been created for another target) and complete it.
async fn complete_as(st: &AppState, c: &Caller, session_id: &str, into: Dest) -> ApiResult<Node> {
    let s = crate::upload::load_session(st, c, session_id, false).await?;
    let (file_id, folder_id, name) = match &into {
        Dest::Version(fid) => {
            let (f, role) = fs::get_node(&st.db, c, fid, Kind::File, false).await?;
            fs::require_write_role(&role)?;
            (Some(f.id), f.parent_id.unwrap_or_default(), f.name)
        }
        Dest::New(folder, name) => (None, folder.id.clone(), name.clone()),
    };
    sqlx::query("UPDATE upload_sessions SET file_id = ?, folder_id = ?, file_name = ? WHERE tenant_id = ? AND id = ? AND status = 'active'")
        .bind(file_id.as_deref())
        .bind(&folder_id)
        .bind(&name)
        .bind(&c.tenant_id)
        .bind(&s.id)
        .execute(&st.db.pool)
        .await?;
    // The Redis cache still holds the session as it was: drop it so the reload below reads
    // the re-pointed row from the database.
    crate::upload::uncache_session(st, &c.tenant_id, &s.id).await;
    let s = crate::upload::load_session(st, c, session_id, false).await?;
    let node = crate::upload::complete(st, c, &s).await?;
    crate::pubsub::node_changed(
        st,
        &node,
        if node.version > 1 {
            "updated"
        } else {
            "created"
        },
    );
    Ok(node)
}

/// KEEP_BOTH: complete the client's session as a new file beside `file`, named as a conflict
/// copy (`name (conflict copy … device).ext`) that is free in the same folder.
async fn complete_as_copy(x: &Ctx<'_>, file: &Node, sid: &str) -> ApiResult<Node> {
    let (st, c) = (x.st, x.c);
    let (folder, _) = fs::get_node(
        &st.db,
        c,
        file.parent_id.as_deref().unwrap_or(""),
        Kind::Folder,
        false,
    )
    .await?;
    let name = free_copy_name(st, c, &folder, &file.name, &x.device_name).await?;
    complete_as(st, c, sid, Dest::New(Box::new(folder), name)).await
}

async fn abort_session(st: &AppState, c: &Caller, session_id: &str) -> ApiResult<()> {
    sqlx::query("UPDATE upload_sessions SET status = 'aborted', last_activity_at = ? WHERE tenant_id = ? AND id = ? AND status = 'active'")
        .bind(now()).bind(&c.tenant_id).bind(session_id)
        .execute(&st.db.pool).await?;
    // After the row changed, so no reader can re-cache the active session in between.
    crate::upload::uncache_session(st, &c.tenant_id, session_id).await;
    sqlx::query("DELETE FROM upload_parts WHERE tenant_id = ? AND session_id = ?")
        .bind(&c.tenant_id)
        .bind(session_id)
        .execute(&st.db.pool)
        .await?;
    st.hashers.reset(session_id);
    crate::upload::discard_pending(st, session_id).await;
    Ok(())
}

struct Ctx<'a> {
    st: &'a AppState,
    c: &'a Caller,
    share_id: &'a str,
    device_id: &'a str,
    device_name: String,
    strategy: Strategy,
    root: Node,
}

#[allow(clippy::too_many_arguments)]
async fn record_conflict(
    x: &Ctx<'_>,
    resource_type: &str,
    resource_id: &str,
    conflict_type: &'static str,
    path: Option<String>,
    base: Option<&str>,
    server_version: Option<&str>,
    session: Option<&str>,
    resolution: Option<&str>,
    copy_file_id: Option<&str>,
) -> ApiResult<String> {
    let id = scai_core::ids::new_id("cfl");
    let ts = now();
    sqlx::query("INSERT INTO sync_conflicts (tenant_id, id, share_id, device_id, user_id, resource_type, resource_id, conflict_type, strategy, path, base_version_id, server_version_id, client_session_id, resolution, copy_file_id, created_at, resolved_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        .bind(&x.c.tenant_id).bind(&id).bind(x.share_id).bind(x.device_id).bind(&x.c.user_id)
        .bind(resource_type).bind(resource_id).bind(conflict_type).bind(x.strategy.name())
        .bind(path.as_deref()).bind(base).bind(server_version).bind(session).bind(resolution).bind(copy_file_id)
        .bind(ts).bind(resolution.map(|_| ts))
        .execute(&x.st.db.pool).await?;
    metrics::counter!("scaidrive_sync_conflicts_total", "share_id" => x.share_id.to_string(), "type" => conflict_type).increment(1);
    tracing::info!(event = "sync_conflict", tenant_id = %x.c.tenant_id, share_id = %x.share_id, device_id = %x.device_id,
        resource_id = %resource_id, conflict_type, strategy = x.strategy.name(), resolution = resolution.unwrap_or("pending"));
    Ok(id)
}

async fn blocked(x: &Ctx<'_>, resource_id: &str) -> ApiResult<Option<String>> {
    Ok(sqlx::query_scalar("SELECT id FROM sync_conflicts WHERE tenant_id = ? AND resource_id = ? AND resolved_at IS NULL LIMIT 1")
        .bind(&x.c.tenant_id).bind(resource_id)
        .fetch_optional(&x.st.db.pool).await?)
}

/// The node a `moved`/`renamed`/`deleted` change is about (deleted ones included), with the
/// caller's role on it; a node of another share is not found.
async fn target_node<'c>(x: &Ctx<'_>, ch: &'c ApplyChange) -> ApiResult<(&'c str, Node, String)> {
    let rid = ch
        .resource_id
        .as_deref()
        .ok_or_else(|| ApiError::field("resource_id", "is required"))?;
    let kind = if ch.resource_type == "folder" {
        Kind::Folder
    } else {
        Kind::File
    };
    let (node, role) = fs::get_node(&x.st.db, x.c, rid, kind, true).await?;
    if node.share_id != x.share_id {
        return Err(ApiError::NotFound("resource"));
    }
    Ok((rid, node, role))
}

fn node_result(status: &str, n: &Node, path: String) -> Value {
    json!({"status": status, "resource_id": n.id, "resource_type": if n.is_folder() {"folder"} else {"file"},
        "version_id": n.version_id, "new_path": path})
}

async fn apply_one(x: &Ctx<'_>, ch: &ApplyChange) -> ApiResult<Value> {
    let (st, c) = (x.st, x.c);
    if let Some(rid) = &ch.resource_id {
        if let Some(cid) = blocked(x, rid).await? {
            return Ok(json!({"status": "blocked", "resource_id": rid, "conflict_id": cid}));
        }
    }
    match (ch.resource_type.as_str(), ch.change_type.as_str()) {
        ("folder", "created") => {
            let p = ch
                .new_path
                .as_deref()
                .ok_or_else(|| ApiError::field("new_path", "is required"))?;
            let (dirs, last) = split_path(p)?;
            let mut all = dirs;
            all.push(last);
            let f = ensure_dir(st, c, &x.root, &all).await?;
            let path = fs::node_path(&st.db, &f).await?;
            Ok(node_result("applied", &f, path))
        }
        ("file", "created") => {
            let p = ch
                .new_path
                .as_deref()
                .ok_or_else(|| ApiError::field("new_path", "is required"))?;
            let sid = ch
                .session_id
                .as_deref()
                .ok_or_else(|| ApiError::field("session_id", "is required"))?;
            let (dirs, name) = split_path(p)?;
            let folder = ensure_dir(st, c, &x.root, &dirs).await?;
            match child(st, c, &folder.id, &name).await? {
                None => {
                    let n = complete_as(st, c, sid, Dest::New(Box::new(folder), name)).await?;
                    let path = fs::node_path(&st.db, &n).await?;
                    Ok(node_result("applied", &n, path))
                }
                Some(existing) => settle(x, &existing, None, sid, "create_create").await,
            }
        }
        ("file", "updated") => {
            let rid = ch
                .resource_id
                .as_deref()
                .ok_or_else(|| ApiError::field("resource_id", "is required"))?;
            let sid = ch
                .session_id
                .as_deref()
                .ok_or_else(|| ApiError::field("session_id", "is required"))?;
            let (file, _) = fs::get_node(&st.db, c, rid, Kind::File, true).await?;
            if file.share_id != x.share_id {
                return Err(ApiError::NotFound("file"));
            }
            if file.is_deleted != 0 {
                // Edited here, deleted there: keep the edit as a new file where it was,
                // unless the server is meant to win or a person decides.
                let path = fs::node_path(&st.db, &file).await?;
                return match x.strategy {
                    Strategy::ServerWins => {
                        abort_session(st, c, sid).await?;
                        let cid = record_conflict(
                            x,
                            "file",
                            rid,
                            "edit_delete",
                            Some(path),
                            ch.base_version_id.as_deref(),
                            None,
                            Some(sid),
                            Some("SERVER_WINS"),
                            None,
                        )
                        .await?;
                        Ok(
                            json!({"status": "conflict", "resolution": "server_kept", "resource_id": rid, "conflict_id": cid}),
                        )
                    }
                    Strategy::Manual => {
                        let cid = record_conflict(
                            x,
                            "file",
                            rid,
                            "edit_delete",
                            Some(path),
                            ch.base_version_id.as_deref(),
                            None,
                            Some(sid),
                            None,
                            None,
                        )
                        .await?;
                        Ok(
                            json!({"status": "conflict", "resolution": "pending", "resource_id": rid, "conflict_id": cid}),
                        )
                    }
                    _ => {
                        let (dirs, name) = split_path(&path)?;
                        let folder = ensure_dir(st, c, &x.root, &dirs).await?;
                        let name = if child(st, c, &folder.id, &name).await?.is_some() {
                            free_copy_name(st, c, &folder, &name, &x.device_name).await?
                        } else {
                            name
                        };
                        let n = complete_as(st, c, sid, Dest::New(Box::new(folder), name)).await?;
                        let cid = record_conflict(
                            x,
                            "file",
                            rid,
                            "edit_delete",
                            Some(path),
                            ch.base_version_id.as_deref(),
                            None,
                            Some(sid),
                            Some("recreated"),
                            Some(&n.id),
                        )
                        .await?;
                        let p = fs::node_path(&st.db, &n).await?;
                        let mut r = node_result("conflict", &n, p);
                        r["resolution"] = json!("recreated");
                        r["conflict_id"] = json!(cid);
                        Ok(r)
                    }
                };
            }
            if ch.base_version_id.is_some() && ch.base_version_id == file.version_id {
                let n = complete_as(st, c, sid, Dest::Version(file.id.clone())).await?;
                let p = fs::node_path(&st.db, &n).await?;
                return Ok(node_result("applied", &n, p));
            }
            settle(x, &file, ch.base_version_id.as_deref(), sid, "edit_edit").await
        }
        (_, "moved") | (_, "renamed") => {
            let (rid, node, role) = target_node(x, ch).await?;
            let p = ch
                .new_path
                .as_deref()
                .ok_or_else(|| ApiError::field("new_path", "is required"))?;
            if node.is_deleted != 0 {
                return Ok(
                    json!({"status": "skipped", "reason": "deleted_on_server", "resource_id": rid}),
                );
            }
            fs::require_write_role(&role)?;
            let (dirs, mut name) = split_path(p)?;
            let folder = ensure_dir(st, c, &x.root, &dirs).await?;
            if let Some(other) = child(st, c, &folder.id, &name).await? {
                if other.id == node.id {
                    let path = fs::node_path(&st.db, &node).await?;
                    return Ok(node_result("applied", &node, path));
                }
                // Target name taken: the moved item gets a conflict-copy name (nothing is overwritten).
                name = free_copy_name(st, c, &folder, &name, &x.device_name).await?;
            }
            let parent = (Some(folder.id.clone()) != node.parent_id).then_some(folder.id.as_str());
            let n = fs::update_node(&st.db, c, &node, Some(&name), parent).await?;
            crate::pubsub::node_changed(
                st,
                &n,
                if n.parent_id != node.parent_id {
                    "moved"
                } else {
                    "renamed"
                },
            );
            let path = fs::node_path(&st.db, &n).await?;
            Ok(node_result("applied", &n, path))
        }
        (_, "deleted") => {
            let (rid, node, role) = target_node(x, ch).await?;
            if node.is_deleted != 0 {
                return Ok(json!({"status": "applied", "resource_id": rid, "already": true}));
            }
            fs::require_write_role(&role)?;
            if !node.is_folder()
                && ch.base_version_id.is_some()
                && ch.base_version_id != node.version_id
                && x.strategy != Strategy::ClientWins
            {
                // Deleted here, edited there: the edit survives (the client pulls it back).
                let path = fs::node_path(&st.db, &node).await?;
                let resolution = if x.strategy == Strategy::Manual {
                    None
                } else {
                    Some("server_kept")
                };
                let cid = record_conflict(
                    x,
                    "file",
                    rid,
                    "delete_edit",
                    Some(path),
                    ch.base_version_id.as_deref(),
                    node.version_id.as_deref(),
                    None,
                    resolution,
                    None,
                )
                .await?;
                return Ok(
                    json!({"status": "conflict", "resolution": resolution.unwrap_or("pending"), "resource_id": rid, "conflict_id": cid, "version_id": node.version_id}),
                );
            }
            fs::trash_node(&st.db, c, &node).await?;
            crate::pubsub::node_changed(st, &node, "deleted");
            Ok(json!({"status": "applied", "resource_id": rid}))
        }
        (rt, ct) => Err(ApiError::field(
            "changes",
            format!("unsupported change {rt}/{ct}"),
        )),
    }
}

/// Settle a stale edit (or a create onto an existing name) by the strategy.
async fn settle(
    x: &Ctx<'_>,
    file: &Node,
    base: Option<&str>,
    sid: &str,
    kind: &'static str,
) -> ApiResult<Value> {
    let (st, c) = (x.st, x.c);
    let path = fs::node_path(&st.db, file).await?;
    if file.is_folder() {
        // A file where a folder is: always keep both.
        let n = complete_as_copy(x, file, sid).await?;
        let cid = record_conflict(
            x,
            "file",
            &file.id,
            kind,
            Some(path),
            base,
            None,
            Some(sid),
            Some("KEEP_BOTH"),
            Some(&n.id),
        )
        .await?;
        let p = fs::node_path(&st.db, &n).await?;
        let mut r = node_result("conflict", &n, p);
        r["resolution"] = json!("keep_both");
        r["conflict_id"] = json!(cid);
        return Ok(r);
    }
    match x.strategy {
        Strategy::LastWriterWins | Strategy::ClientWins => {
            let n = complete_as(st, c, sid, Dest::Version(file.id.clone())).await?;
            let cid = record_conflict(
                x,
                "file",
                &file.id,
                kind,
                Some(path),
                base,
                file.version_id.as_deref(),
                Some(sid),
                Some(x.strategy.name()),
                None,
            )
            .await?;
            let p = fs::node_path(&st.db, &n).await?;
            let mut r = node_result("conflict", &n, p);
            r["resolution"] = json!("client_applied");
            r["conflict_id"] = json!(cid);
            Ok(r)
        }
        Strategy::ServerWins => {
            abort_session(st, c, sid).await?;
            let cid = record_conflict(
                x,
                "file",
                &file.id,
                kind,
                Some(path),
                base,
                file.version_id.as_deref(),
                Some(sid),
                Some("SERVER_WINS"),
                None,
            )
            .await?;
            Ok(
                json!({"status": "conflict", "resolution": "server_kept", "resource_id": file.id, "version_id": file.version_id, "conflict_id": cid}),
            )
        }
        Strategy::KeepBoth => {
            let n = complete_as_copy(x, file, sid).await?;
            let cid = record_conflict(
                x,
                "file",
                &file.id,
                kind,
                Some(path),
                base,
                file.version_id.as_deref(),
                Some(sid),
                Some("KEEP_BOTH"),
                Some(&n.id),
            )
            .await?;
            let p = fs::node_path(&st.db, &n).await?;
            let mut r = node_result("conflict", &n, p);
            r["resolution"] = json!("keep_both");
            r["conflict_id"] = json!(cid);
            r["server_resource_id"] = json!(file.id);
            r["server_version_id"] = json!(file.version_id);
            Ok(r)
        }
        Strategy::Manual => {
            let cid = record_conflict(
                x,
                "file",
                &file.id,
                kind,
                Some(path),
                base,
                file.version_id.as_deref(),
                Some(sid),
                None,
                None,
            )
            .await?;
            Ok(
                json!({"status": "conflict", "resolution": "pending", "resource_id": file.id, "version_id": file.version_id, "conflict_id": cid}),
            )
        }
    }
}

/// `POST /api/v1/sync/apply`. 200 with per-change `results`; with `MANUAL`, a change that
/// conflicted makes it 409 `SYNC_CONFLICT` (details carry the same `results`).
pub async fn apply(
    State(st): State<Arc<AppState>>,
    c: Caller,
    J(b): J<ApplyBody>,
) -> ApiResult<Response> {
    c.require_write()?;
    // No strategy named: the device's preferred one (sync preferences), else the default.
    let preferred = match &b.conflict_resolution {
        Some(_) => None,
        None => super::preferences::default_strategy(&st.db, &c, &b.device_id).await?,
    };
    let strategy = Strategy::parse(
        b.conflict_resolution
            .as_deref()
            .or(preferred.as_deref())
            .unwrap_or("LAST_WRITER_WINS"),
    )?;
    if b.changes.len() > 1000 {
        return Err(ApiError::field("changes", "at most 1000 per request"));
    }
    let (share, role) = fs::get_share(&st.db, &c, &b.share_id).await?;
    fs::require_write_role(&role)?;
    let dev: Option<(String, String)> = sqlx::query_as(
        "SELECT user_id, device_name FROM sync_devices WHERE tenant_id = ? AND id = ?",
    )
    .bind(&c.tenant_id)
    .bind(&b.device_id)
    .fetch_optional(&st.db.pool)
    .await?;
    let device_name = match dev {
        Some((u, n)) if u == c.user_id => n,
        _ => return Err(ApiError::NotFound("device")),
    };
    let root = fs::get_node(&st.db, &c, &share.root_folder_id, Kind::Folder, false)
        .await?
        .0;
    let x = Ctx {
        st: &st,
        c: &c,
        share_id: &b.share_id,
        device_id: &b.device_id,
        device_name,
        strategy,
        root,
    };
    let mut results = Vec::with_capacity(b.changes.len());
    let mut conflicted = false;
    for (i, ch) in b.changes.iter().enumerate() {
        let mut r = match apply_one(&x, ch).await {
            Ok(v) => v,
            Err(ApiError::Internal(e)) => return Err(ApiError::Internal(e)),
            Err(e) => json!({"status": "error", "resource_id": ch.resource_id,
                "error": {"code": e.code(), "message": e.to_string()}}),
        };
        conflicted |= r["status"] == "conflict";
        r["index"] = json!(i);
        results.push(r);
    }
    let body = json!({"share_id": b.share_id, "device_id": b.device_id, "conflict_resolution": strategy.name(), "results": results});
    if conflicted && strategy == Strategy::Manual {
        return Err(ApiError::Conflict {
            code: "SYNC_CONFLICT",
            message: "a change conflicts with the server version (base_version_id is not current); resolve it via /api/v1/sync/conflicts".into(),
            details: body,
        });
    }
    Ok(ok(StatusCode::OK, body))
}

#[derive(Debug, sqlx::FromRow)]
struct Conflict {
    id: String,
    share_id: String,
    device_id: String,
    resource_type: String,
    resource_id: String,
    conflict_type: String,
    strategy: String,
    path: Option<String>,
    base_version_id: Option<String>,
    server_version_id: Option<String>,
    client_session_id: Option<String>,
    resolution: Option<String>,
    copy_file_id: Option<String>,
    created_at: i64,
    resolved_at: Option<i64>,
}

impl Conflict {
    fn to_json(&self) -> Value {
        json!({"id": self.id, "share_id": self.share_id, "device_id": self.device_id, "resource_type": self.resource_type,
            "resource_id": self.resource_id, "type": self.conflict_type, "conflict_type": self.conflict_type,
            "strategy": self.strategy, "path": self.path, "base_version_id": self.base_version_id,
            "server_version_id": self.server_version_id, "client_session_id": self.client_session_id,
            "resolution": self.resolution, "copy_file_id": self.copy_file_id, "created_at": iso(self.created_at),
            "resolved_at": self.resolved_at.map(iso), "is_resolved": self.resolved_at.is_some()})
    }
}

const CONFLICT_COLS: &str = "id, share_id, device_id, resource_type, resource_id, conflict_type, strategy, path, base_version_id, server_version_id, client_session_id, resolution, copy_file_id, created_at, resolved_at";

#[derive(serde::Deserialize)]
pub struct ConflictsQuery {
    device_id: Option<String>,
    share_id: Option<String>,
    include_resolved: Option<bool>,
}

/// `GET /api/v1/sync/conflicts?device_id=&share_id=&include_resolved=`: the caller's conflicts.
pub async fn list_conflicts(
    State(st): State<Arc<AppState>>,
    c: Caller,
    Q(q): Q<ConflictsQuery>,
) -> ApiResult<Response> {
    c.require_read()?;
    let mut sql =
        format!("SELECT {CONFLICT_COLS} FROM sync_conflicts WHERE tenant_id = ? AND user_id = ?");
    if q.device_id.is_some() {
        sql.push_str(" AND device_id = ?");
    }
    if q.share_id.is_some() {
        sql.push_str(" AND share_id = ?");
    }
    if !q.include_resolved.unwrap_or(false) {
        sql.push_str(" AND resolved_at IS NULL");
    }
    sql.push_str(" ORDER BY created_at, id LIMIT 1000");
    let mut qq = sqlx::query_as::<_, Conflict>(&sql)
        .bind(&c.tenant_id)
        .bind(&c.user_id);
    if let Some(d) = &q.device_id {
        qq = qq.bind(d.clone());
    }
    if let Some(s) = &q.share_id {
        qq = qq.bind(s.clone());
    }
    let rows = qq.fetch_all(&st.db.pool).await?;
    let items: Vec<Value> = rows.iter().map(Conflict::to_json).collect();
    Ok(ok(
        StatusCode::OK,
        json!({"conflicts": items, "total": items.len()}),
    ))
}

#[derive(serde::Deserialize)]
pub struct ResolveBody {
    resolution: String,
}

/// `POST /api/v1/sync/conflicts/{id}/resolve` `{resolution: KEEP_SERVER|KEEP_CLIENT|KEEP_BOTH}`
/// (`SERVER_WINS`/`CLIENT_WINS` accepted as synonyms). Unblocks the resource.
pub async fn resolve(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P(id): P<String>,
    J(b): J<ResolveBody>,
) -> ApiResult<Response> {
    c.require_write()?;
    let cf: Conflict = sqlx::query_as(&format!(
        "SELECT {CONFLICT_COLS} FROM sync_conflicts WHERE tenant_id = ? AND id = ? AND user_id = ?"
    ))
    .bind(&c.tenant_id)
    .bind(&id)
    .bind(&c.user_id)
    .fetch_optional(&st.db.pool)
    .await?
    .ok_or(ApiError::NotFound("conflict"))?;
    if cf.resolved_at.is_some() {
        return Err(ApiError::Conflict {
            code: "CONFLICT_ALREADY_RESOLVED",
            message: "conflict is already resolved".into(),
            details: json!({"resolution": cf.resolution}),
        });
    }
    let how = match b.resolution.to_ascii_uppercase().as_str() {
        "KEEP_SERVER" | "SERVER_WINS" => "KEEP_SERVER",
        "KEEP_CLIENT" | "CLIENT_WINS" => "KEEP_CLIENT",
        "KEEP_BOTH" => "KEEP_BOTH",
        _ => {
            return Err(ApiError::field(
                "resolution",
                "one of KEEP_SERVER, KEEP_CLIENT, KEEP_BOTH",
            ))
        }
    };
    let mut copy = None;
    let mut result_node = None;
    if let Some(sid) = &cf.client_session_id {
        match how {
            "KEEP_SERVER" => abort_session(&st, &c, sid).await?,
            "KEEP_CLIENT" => {
                let (file, _) = fs::get_node(&st.db, &c, &cf.resource_id, Kind::File, true).await?;
                let n = if file.is_deleted != 0 {
                    let folder = fs::get_node(
                        &st.db,
                        &c,
                        file.parent_id.as_deref().unwrap_or(""),
                        Kind::Folder,
                        true,
                    )
                    .await?
                    .0;
                    complete_as(&st, &c, sid, Dest::New(Box::new(folder), file.name.clone()))
                        .await?
                } else {
                    complete_as(&st, &c, sid, Dest::Version(file.id.clone())).await?
                };
                result_node = Some(n);
            }
            _ => {
                let (file, _) = fs::get_node(&st.db, &c, &cf.resource_id, Kind::File, true).await?;
                let folder = fs::get_node(
                    &st.db,
                    &c,
                    file.parent_id.as_deref().unwrap_or(""),
                    Kind::Folder,
                    false,
                )
                .await?
                .0;
                let device: Option<String> = sqlx::query_scalar(
                    "SELECT device_name FROM sync_devices WHERE tenant_id = ? AND id = ?",
                )
                .bind(&c.tenant_id)
                .bind(&cf.device_id)
                .fetch_optional(&st.db.pool)
                .await?;
                let name = free_copy_name(
                    &st,
                    &c,
                    &folder,
                    &file.name,
                    device.as_deref().unwrap_or(&cf.device_id),
                )
                .await?;
                let n = complete_as(&st, &c, sid, Dest::New(Box::new(folder), name)).await?;
                copy = Some(n.id.clone());
                result_node = Some(n);
            }
        }
    }
    let n = sqlx::query("UPDATE sync_conflicts SET resolution = ?, copy_file_id = COALESCE(?, copy_file_id), resolved_at = ? WHERE tenant_id = ? AND id = ? AND resolved_at IS NULL")
        .bind(how).bind(copy.as_deref()).bind(now()).bind(&c.tenant_id).bind(&id)
        .execute(&st.db.pool).await?.rows_affected();
    if n == 0 {
        return Err(ApiError::Conflict {
            code: "CONFLICT_ALREADY_RESOLVED",
            message: "conflict is already resolved".into(),
            details: Value::Null,
        });
    }
    tracing::info!(event = "sync_conflict_resolved", tenant_id = %c.tenant_id, conflict_id = %id, resolution = how);
    let cf: Conflict = sqlx::query_as(&format!(
        "SELECT {CONFLICT_COLS} FROM sync_conflicts WHERE tenant_id = ? AND id = ?"
    ))
    .bind(&c.tenant_id)
    .bind(&id)
    .fetch_one(&st.db.pool)
    .await?;
    let mut body = cf.to_json();
    if let Some(n) = result_node {
        body["file"] = fs::node_json(&st.db, &n).await?;
    }
    Ok(ok(StatusCode::OK, body))
}

#[cfg(test)]
mod tests {
    #[test]
    fn conflict_names() {
        let ts = 1_764_112_500; // 2025-11-25 23:15 UTC
        assert_eq!(
            super::conflict_name("report.docx", "laptop", ts),
            "report (conflict copy 2025-11-25 2315 laptop).docx"
        );
        assert_eq!(
            super::conflict_name("Makefile", "pc", ts),
            "Makefile (conflict copy 2025-11-25 2315 pc)"
        );
        assert_eq!(
            super::conflict_name(".env", "pc", ts),
            ".env (conflict copy 2025-11-25 2315 pc)"
        );
    }
}
