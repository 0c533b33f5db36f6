//! Sync HTTP routes: devices, status, the changes feed (cursor, snapshot on cursor 0,
//! retention → 410 `SYNC_CURSOR_INVALID`), cursor commits (only ever by the client), `apply`
//! with the five conflict strategies and stale-base detection by version id, conflicts and
//! their resolution, the sync download, and the chunk "have" check for uploads.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use super::changelog::{ChangeRow, CHANGE_COLS};
use crate::api::{ok, J, P, Q};
use crate::auth::{safe_id, Caller};
use crate::db::{iso, now, Db};
use crate::error::{ApiError, ApiResult};
use crate::fs::{self, Kind, Node};
use crate::AppState;

fn cursor_invalid(msg: impl Into<String>, purged_through: i64) -> ApiError {
    ApiError::Gone {
        code: "SYNC_CURSOR_INVALID",
        message: msg.into(),
        details: json!({"purged_through": purged_through, "resync_cursor": 0}),
    }
}

/// (head, purged_through) of a tenant's log.
pub async fn head(db: &Db, tenant_id: &str) -> ApiResult<(i64, i64)> {
    let r: Option<(i64, i64)> =
        sqlx::query_as("SELECT position, purged_through FROM change_counters WHERE tenant_id = ?")
            .bind(tenant_id)
            .fetch_optional(&db.pool)
            .await?;
    Ok(r.unwrap_or((0, 0)))
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct Device {
    id: String,
    user_id: String,
    device_name: String,
    platform: Option<String>,
    client_version: Option<String>,
    created_at: i64,
    last_seen_at: i64,
}

impl Device {
    fn to_json(&self) -> Value {
        json!({"device_id": self.id, "id": self.id, "user_id": self.user_id, "device_name": self.device_name,
            "platform": self.platform, "client_version": self.client_version,
            "created_at": iso(self.created_at), "last_seen_at": iso(self.last_seen_at)})
    }
}

async fn load_device(db: &Db, c: &Caller, device_id: &str) -> ApiResult<Option<Device>> {
    Ok(sqlx::query_as("SELECT id, user_id, device_name, platform, client_version, created_at, last_seen_at FROM sync_devices WHERE tenant_id = ? AND id = ?")
        .bind(&c.tenant_id)
        .bind(device_id)
        .fetch_optional(&db.pool)
        .await?)
}

/// The caller's registered device (404 when unknown or someone else's).
async fn my_device(db: &Db, c: &Caller, device_id: &str) -> ApiResult<Device> {
    match load_device(db, c, device_id).await? {
        Some(d) if d.user_id == c.user_id => Ok(d),
        _ => Err(ApiError::NotFound("device")),
    }
}

/// True when the device exists and belongs to `user_id` (the WebSocket check).
pub async fn device_of_user(db: &Db, c: &Caller, device_id: &str) -> ApiResult<bool> {
    Ok(load_device(db, c, device_id)
        .await?
        .is_some_and(|d| d.user_id == c.user_id))
}

#[derive(serde::Deserialize)]
pub struct RegisterDevice {
    device_id: String,
    device_name: Option<String>,
    platform: Option<String>,
    client_version: Option<String>,
}

/// `POST /api/v1/sync/devices`: 201 on first registration, 200 (refreshed) afterwards.
pub async fn register_device(
    State(st): State<Arc<AppState>>,
    c: Caller,
    J(b): J<RegisterDevice>,
) -> ApiResult<Response> {
    c.require_read()?;
    if !safe_id(&b.device_id) {
        return Err(ApiError::field(
            "device_id",
            "1-64 characters of A-Z a-z 0-9 _ -",
        ));
    }
    let name = b.device_name.unwrap_or_else(|| b.device_id.clone());
    if name.len() > 255 {
        return Err(ApiError::field("device_name", "at most 255 characters"));
    }
    let ts = now();
    let status = match load_device(&st.db, &c, &b.device_id).await? {
        Some(d) if d.user_id != c.user_id => {
            return Err(ApiError::Conflict {
                code: "DEVICE_ID_TAKEN",
                message: "device_id is registered to another user".into(),
                details: json!({"device_id": b.device_id}),
            })
        }
        Some(_) => {
            sqlx::query("UPDATE sync_devices SET device_name = ?, platform = ?, client_version = ?, last_seen_at = ? WHERE tenant_id = ? AND id = ?")
                .bind(&name).bind(b.platform.as_deref()).bind(b.client_version.as_deref()).bind(ts)
                .bind(&c.tenant_id).bind(&b.device_id)
                .execute(&st.db.pool).await?;
            StatusCode::OK
        }
        None => {
            let r = sqlx::query("INSERT INTO sync_devices (tenant_id, id, user_id, device_name, platform, client_version, created_at, last_seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
                .bind(&c.tenant_id).bind(&b.device_id).bind(&c.user_id).bind(&name)
                .bind(b.platform.as_deref()).bind(b.client_version.as_deref()).bind(ts).bind(ts)
                .execute(&st.db.pool).await;
            match r {
                Ok(_) => StatusCode::CREATED,
                Err(e) if crate::error::is_unique_violation(&e) => StatusCode::OK,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let d = my_device(&st.db, &c, &b.device_id).await?;
    tracing::info!(event = "sync_device_registered", tenant_id = %c.tenant_id, device_id = %d.id);
    Ok(ok(status, d.to_json()))
}

/// `GET /api/v1/sync/devices`: the caller's devices.
pub async fn list_devices(State(st): State<Arc<AppState>>, c: Caller) -> ApiResult<Response> {
    c.require_read()?;
    let rows: Vec<Device> = sqlx::query_as("SELECT id, user_id, device_name, platform, client_version, created_at, last_seen_at FROM sync_devices WHERE tenant_id = ? AND user_id = ? ORDER BY id")
        .bind(&c.tenant_id)
        .bind(&c.user_id)
        .fetch_all(&st.db.pool)
        .await?;
    let items: Vec<Value> = rows.iter().map(Device::to_json).collect();
    Ok(ok(
        StatusCode::OK,
        json!({"devices": items, "total": items.len()}),
    ))
}

async fn readable_share(db: &Db, c: &Caller, share_id: &str) -> ApiResult<String> {
    c.require_read()?;
    let (_, role) = fs::get_share(db, c, share_id).await?;
    Ok(role)
}

/// The device's cursor on a share, created at the head when absent.
async fn cursor_of(db: &Db, c: &Caller, device_id: &str, share_id: &str) -> ApiResult<(i64, i64)> {
    let row: Option<(i64, i64)> = sqlx::query_as("SELECT position, last_sync_at FROM sync_cursors WHERE tenant_id = ? AND device_id = ? AND share_id = ?")
        .bind(&c.tenant_id)
        .bind(device_id)
        .bind(share_id)
        .fetch_optional(&db.pool)
        .await?;
    if let Some(r) = row {
        return Ok(r);
    }
    let (h, _) = head(db, &c.tenant_id).await?;
    set_cursor(db, c, device_id, share_id, h).await?;
    Ok((h, now()))
}

async fn set_cursor(
    db: &Db,
    c: &Caller,
    device_id: &str,
    share_id: &str,
    pos: i64,
) -> ApiResult<()> {
    let ts = now();
    let n = sqlx::query("UPDATE sync_cursors SET position = ?, last_sync_at = ? WHERE tenant_id = ? AND device_id = ? AND share_id = ?")
        .bind(pos).bind(ts).bind(&c.tenant_id).bind(device_id).bind(share_id)
        .execute(&db.pool).await?.rows_affected();
    if n == 0 {
        let r = sqlx::query("INSERT INTO sync_cursors (tenant_id, device_id, share_id, position, last_sync_at) VALUES (?, ?, ?, ?, ?)")
            .bind(&c.tenant_id).bind(device_id).bind(share_id).bind(pos).bind(ts)
            .execute(&db.pool).await;
        match r {
            Ok(_) => {}
            // MariaDB reports 0 affected rows for an unchanged row: the row exists.
            Err(e) if crate::error::is_unique_violation(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[derive(serde::Deserialize)]
pub struct StatusQuery {
    share_id: String,
    device_id: String,
}

/// `GET /api/v1/sync/status?share_id=&device_id=`.
pub async fn status(
    State(st): State<Arc<AppState>>,
    c: Caller,
    Q(q): Q<StatusQuery>,
) -> ApiResult<Response> {
    readable_share(&st.db, &c, &q.share_id).await?;
    my_device(&st.db, &c, &q.device_id).await?;
    let (pos, last) = cursor_of(&st.db, &c, &q.device_id, &q.share_id).await?;
    let (h, purged) = head(&st.db, &c.tenant_id).await?;
    let pending: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM change_log WHERE tenant_id = ? AND share_id = ? AND position > ?",
    )
    .bind(&c.tenant_id)
    .bind(&q.share_id)
    .bind(pos)
    .fetch_one(&st.db.pool)
    .await?;
    let valid = pos >= purged && pos <= h && !super::cursor_expired(&st, &c.tenant_id, pos).await?;
    let conflicts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sync_conflicts WHERE tenant_id = ? AND share_id = ? AND device_id = ? AND resolved_at IS NULL")
        .bind(&c.tenant_id).bind(&q.share_id).bind(&q.device_id)
        .fetch_one(&st.db.pool).await?;
    Ok(ok(
        StatusCode::OK,
        json!({"share_id": q.share_id, "device_id": q.device_id, "cursor_position": pos,
            "last_sync_at": iso(last), "pending_changes": pending, "has_conflicts": conflicts > 0,
            "unresolved_conflicts": conflicts, "head_position": h, "cursor_valid": valid}),
    ))
}

#[derive(serde::Deserialize)]
pub struct ChangesQuery {
    share_id: String,
    cursor: Option<String>,
    limit: Option<i64>,
    device_id: Option<String>,
}

/// Where a changes request starts.
enum From {
    Log(i64),
    /// Full resync: nodes with id > `after`, then continue at `head`.
    Snapshot {
        head: i64,
        after: String,
    },
}

fn parse_cursor(s: &str) -> ApiResult<From> {
    if let Some(rest) = s.strip_prefix("snap.") {
        let (h, after) = rest.split_once('.').unwrap_or((rest, ""));
        let head = h
            .parse::<i64>()
            .map_err(|_| ApiError::field("cursor", "invalid cursor"))?;
        return Ok(From::Snapshot {
            head,
            after: after.to_string(),
        });
    }
    s.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .map(From::Log)
        .ok_or_else(|| {
            ApiError::field(
                "cursor",
                "must be a position (integer >= 0) or a cursor this API returned",
            )
        })
}

/// `GET /api/v1/sync/changes?share_id=&cursor=&limit=`: `{changes, cursor, has_more, share_id}`.
/// Cursor 0 is a full resync: the live tree as `created` changes, then the log from the head
/// taken when the snapshot started. A cursor older than the retention → 410.
pub async fn changes(
    State(st): State<Arc<AppState>>,
    c: Caller,
    Q(q): Q<ChangesQuery>,
) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(1000);
    if !(1..=5000).contains(&limit) {
        return Err(ApiError::field("limit", "must be between 1 and 5000"));
    }
    readable_share(&st.db, &c, &q.share_id).await?;
    let from = match (&q.cursor, &q.device_id) {
        (Some(s), _) => parse_cursor(s)?,
        (None, Some(d)) => {
            my_device(&st.db, &c, d).await?;
            From::Log(cursor_of(&st.db, &c, d, &q.share_id).await?.0)
        }
        (None, None) => From::Log(head(&st.db, &c.tenant_id).await?.0),
    };
    let (h, purged) = head(&st.db, &c.tenant_id).await?;
    let (changes, cursor, has_more) = match from {
        From::Log(0) => snapshot(&st, &c, &q.share_id, h, "", limit).await?,
        From::Snapshot { head: sh, after } => {
            if sh < purged || sh > h || super::cursor_expired(&st, &c.tenant_id, sh).await? {
                return Err(cursor_invalid(
                    "snapshot cursor is no longer valid; resync from cursor 0",
                    purged,
                ));
            }
            snapshot(&st, &c, &q.share_id, sh, &after, limit).await?
        }
        From::Log(pos) => {
            if pos < purged || super::cursor_expired(&st, &c.tenant_id, pos).await? {
                return Err(cursor_invalid(
                    format!(
                        "cursor {pos} is older than the change-log retention; resync from cursor 0"
                    ),
                    purged,
                ));
            }
            if pos > h {
                return Err(cursor_invalid(
                    format!("cursor {pos} is beyond the log head {h}; resync from cursor 0"),
                    purged,
                ));
            }
            let mut rows: Vec<ChangeRow> = sqlx::query_as(&format!(
                "SELECT {CHANGE_COLS} FROM change_log WHERE tenant_id = ? AND share_id = ? AND position > ? AND position <= ? ORDER BY position LIMIT ?"
            ))
            .bind(&c.tenant_id).bind(&q.share_id).bind(pos).bind(h).bind(limit + 1)
            .fetch_all(&st.db.pool)
            .await?;
            let more = rows.len() as i64 > limit;
            rows.truncate(limit as usize);
            // With nothing more for this share the cursor jumps to the head, past other
            // shares' positions.
            let cur = if more {
                rows.last().map(|r| r.position).unwrap_or(pos)
            } else {
                h
            };
            (
                rows.iter().map(ChangeRow::to_json).collect::<Vec<_>>(),
                cur.to_string(),
                more,
            )
        }
    };
    metrics::counter!("scaidrive_sync_changes_fetched_total", "share_id" => q.share_id.clone())
        .increment(changes.len() as u64);
    Ok(ok(
        StatusCode::OK,
        json!({"changes": changes, "cursor": cursor, "has_more": has_more, "share_id": q.share_id, "head_position": h}),
    ))
}

/// One page of the live tree of a share as `created` changes, keyset by node id.
async fn snapshot(
    st: &AppState,
    c: &Caller,
    share_id: &str,
    head: i64,
    after: &str,
    limit: i64,
) -> ApiResult<(Vec<Value>, String, bool)> {
    let mut nodes: Vec<Node> = sqlx::query_as(&format!(
        "SELECT {} FROM nodes WHERE tenant_id = ? AND share_id = ? AND is_deleted = 0 AND parent_id IS NOT NULL AND id > ? ORDER BY id LIMIT ?",
        fs::NODE_COLS
    ))
    .bind(&c.tenant_id).bind(share_id).bind(after).bind(limit + 1)
    .fetch_all(&st.db.pool)
    .await?;
    let more = nodes.len() as i64 > limit;
    nodes.truncate(limit as usize);
    // Paths from one read of the share's folders.
    let folders: Vec<(String, Option<String>, String)> = sqlx::query_as(
        "SELECT id, parent_id, name FROM nodes WHERE tenant_id = ? AND share_id = ? AND kind = 'folder' AND is_deleted = 0",
    )
    .bind(&c.tenant_id).bind(share_id)
    .fetch_all(&st.db.pool)
    .await?;
    let fmap: HashMap<String, (Option<String>, String)> =
        folders.into_iter().map(|(i, p, n)| (i, (p, n))).collect();
    let path_of = |parent: &Option<String>, name: &str| -> String {
        let mut parts = vec![name.to_string()];
        let mut cur = parent.clone();
        let mut guard = 0;
        while let Some(p) = cur {
            guard += 1;
            match fmap.get(&p) {
                Some((pp, n)) if pp.is_some() && guard < 1000 => {
                    parts.push(n.clone());
                    cur = pp.clone();
                }
                _ => cur = None,
            }
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    };
    let changes: Vec<Value> = nodes
        .iter()
        .map(|n| {
            let is_file = !n.is_folder();
            json!({"id": format!("chg_snapshot_{}", n.id), "position": head, "tenant_id": n.tenant_id,
                "share_id": n.share_id, "resource_type": if is_file {"file"} else {"folder"}, "resource_id": n.id,
                "change_type": "created", "changed_by": n.modified_by, "changed_at": iso(n.modified_at),
                "old_path": null, "new_path": path_of(&n.parent_id, &n.name),
                "version_id": if is_file { json!(n.version_id) } else { Value::Null },
                "metadata": {"size": if is_file { json!(n.size) } else { Value::Null }, "mime_type": n.mime_type, "checksum_sha256": n.checksum_sha256},
                "snapshot": true})
        })
        .collect();
    if more {
        let last = nodes.last().map(|n| n.id.clone()).unwrap_or_default();
        Ok((changes, format!("snap.{head}.{last}"), true))
    } else {
        let later: Option<i64> = sqlx::query_scalar("SELECT position FROM change_log WHERE tenant_id = ? AND share_id = ? AND position > ? LIMIT 1")
            .bind(&c.tenant_id).bind(share_id).bind(head)
            .fetch_optional(&st.db.pool).await?;
        Ok((changes, head.to_string(), later.is_some()))
    }
}

#[derive(serde::Deserialize)]
pub struct CursorQuery {
    share_id: String,
    device_id: String,
    position: Option<String>,
    cursor: Option<String>,
}

/// `POST /api/v1/sync/cursor?share_id=&device_id=&position=`: the only way a cursor moves.
pub async fn commit_cursor(
    State(st): State<Arc<AppState>>,
    c: Caller,
    Q(q): Q<CursorQuery>,
) -> ApiResult<Response> {
    readable_share(&st.db, &c, &q.share_id).await?;
    my_device(&st.db, &c, &q.device_id).await?;
    let raw = q
        .position
        .or(q.cursor)
        .ok_or_else(|| ApiError::field("position", "is required"))?;
    let pos = match parse_cursor(&raw)? {
        From::Log(p) => p,
        From::Snapshot { .. } => {
            return Err(ApiError::field("position", "a snapshot cursor cannot be committed; commit the position returned after the snapshot"))
        }
    };
    let (h, _) = head(&st.db, &c.tenant_id).await?;
    if pos > h {
        return Err(ApiError::field(
            "position",
            format!("is beyond the log head {h}"),
        ));
    }
    set_cursor(&st.db, &c, &q.device_id, &q.share_id, pos).await?;
    // Lag: age of the oldest change this device has not consumed yet.
    let oldest: Option<i64> = sqlx::query_scalar("SELECT MIN(changed_at) FROM change_log WHERE tenant_id = ? AND share_id = ? AND position > ?")
        .bind(&c.tenant_id).bind(&q.share_id).bind(pos)
        .fetch_one(&st.db.pool).await?;
    let lag = oldest.map(|t| (now() - t).max(0)).unwrap_or(0);
    metrics::gauge!("scaidrive_sync_cursor_lag_seconds", "device_id" => q.device_id.clone())
        .set(lag as f64);
    // Lag in positions: how far the committed cursor is behind the tenant's head.
    metrics::gauge!("scaidrive_sync_cursor_lag_positions", "device_id" => q.device_id.clone())
        .set((h - pos).max(0) as f64);
    sqlx::query("UPDATE sync_devices SET last_seen_at = ? WHERE tenant_id = ? AND id = ?")
        .bind(now())
        .bind(&c.tenant_id)
        .bind(&q.device_id)
        .execute(&st.db.pool)
        .await?;
    Ok(ok(
        StatusCode::OK,
        json!({"cursor_position": pos, "last_sync_at": iso(now()), "share_id": q.share_id, "device_id": q.device_id}),
    ))
}

#[derive(serde::Deserialize)]
pub struct DownloadQuery {
    range_start: Option<u64>,
    range_end: Option<u64>,
}

/// `GET /api/v1/sync/download/{file_id}`: the file content like `/files/{id}/content`, also
/// with `range_start`/`range_end`; `X-Version-Id` names the version served.
pub async fn download(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P(id): P<String>,
    Q(q): Q<DownloadQuery>,
    mut headers: HeaderMap,
) -> ApiResult<Response> {
    c.require_read()?;
    let (file, _) = fs::get_node(&st.db, &c, &id, Kind::File, false).await?;
    if q.range_start.is_some() || q.range_end.is_some() {
        let spec = format!(
            "bytes={}-{}",
            q.range_start.unwrap_or(0),
            q.range_end.map(|e| e.to_string()).unwrap_or_default()
        );
        if let Ok(v) = HeaderValue::from_str(&spec) {
            headers.insert(http::header::RANGE, v);
        }
    }
    let ver = file
        .version_id
        .clone()
        .unwrap_or_else(|| file.version.to_string());
    let mut resp = crate::api::files::download(
        State(st.clone()),
        c,
        P(id),
        Q(crate::api::files::VersionQuery {
            version: Some(ver.clone()),
        }),
        headers,
    )
    .await?;
    if let Ok(v) = HeaderValue::from_str(&ver) {
        resp.headers_mut().insert("x-version-id", v);
    }
    Ok(resp)
}

#[derive(serde::Deserialize)]
pub struct HaveBody {
    chunks: Vec<HaveChunk>,
}

#[derive(serde::Deserialize)]
pub struct HaveChunk {
    index: i64,
    sha256: String,
}

/// `POST /api/v1/uploads/{session}/chunks/have` `{chunks:[{index, sha256}]}`: a chunk this
/// session already received with that hash, or any chunk whose bytes this tenant already stores (referenced by a committed version, or seen in the
/// last GC grace period) is attached to the session without any bytes travelling; the answer
/// lists `missing` indexes to PUT. Only the caller's tenant is looked at, so nothing about
/// other tenants' content can be learnt.
pub async fn chunks_have(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P(id): P<String>,
    J(b): J<HaveBody>,
) -> ApiResult<Response> {
    c.require_write()?;
    let s = crate::upload::load_session(&st, &c, &id, false).await?;
    if b.chunks.len() > 100_000 {
        return Err(ApiError::field("chunks", "at most 100000 entries"));
    }
    let grace = now() - st.cfg.gc_grace.as_secs() as i64;
    // Parts this session already received (their bytes may still be pending under
    // `uploads/{session}/`, not yet at their content address): a resumed upload must not
    // send them again.
    let received: std::collections::HashMap<i64, String> = sqlx::query_as::<_, (i64, String)>(
        "SELECT idx, hash FROM upload_parts WHERE tenant_id = ? AND session_id = ?",
    )
    .bind(&c.tenant_id)
    .bind(&s.id)
    .fetch_all(&st.db.pool)
    .await?
    .into_iter()
    .collect();
    let mut have = Vec::new();
    let mut missing = Vec::new();
    for ch in &b.chunks {
        if ch.index < 0 || ch.index >= s.total_chunks {
            return Err(ApiError::BadRequest {
                code: "CHUNK_INDEX_OUT_OF_RANGE",
                message: format!("chunk index {} is outside 0..{}", ch.index, s.total_chunks),
                details: json!({"chunk_index": ch.index, "total_chunks": s.total_chunks}),
            });
        }
        if !crate::upload::valid_sha256_hex(&ch.sha256) {
            return Err(ApiError::field("sha256", "must be 64 hex digits"));
        }
        let hash = ch.sha256.to_ascii_lowercase();
        if received.get(&ch.index) == Some(&hash) {
            have.push(ch.index);
            continue;
        }
        let expected = s.expected_len(ch.index);
        let row: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT size, refcount, last_seen FROM chunks WHERE tenant_id = ? AND hash = ?",
        )
        .bind(&c.tenant_id)
        .bind(&hash)
        .fetch_optional(&st.db.pool)
        .await?;
        let usable = matches!(row, Some((size, rc, seen)) if size == expected && (rc > 0 || seen >= grace))
            && st
                .store
                .exists(&crate::storage::chunk_key(&c.tenant_id, &hash))
                .await?;
        if !usable {
            missing.push(ch.index);
            continue;
        }
        // Touch last_seen (GC keeps it until the session commits), then record the part.
        sqlx::query(st.db.upsert_chunk_sql())
            .bind(&c.tenant_id)
            .bind(&hash)
            .bind(expected)
            .bind(now())
            .execute(&st.db.pool)
            .await?;
        sqlx::query(st.db.upsert_part_sql())
            .bind(&c.tenant_id)
            .bind(&s.id)
            .bind(ch.index)
            .bind(&hash)
            .bind(expected)
            .bind(0i64) // at its content address
            .execute(&st.db.pool)
            .await?;
        metrics::counter!("scaidrive_chunks_deduplicated_total", "tenant_id" => c.tenant_id.clone()).increment(1);
        have.push(ch.index);
    }
    sqlx::query("UPDATE upload_sessions SET last_activity_at = ? WHERE tenant_id = ? AND id = ?")
        .bind(now())
        .bind(&c.tenant_id)
        .bind(&s.id)
        .execute(&st.db.pool)
        .await?;
    // A replaced chunk invalidates the running whole-file hash; start it again (it re-reads).
    st.hashers.reset(&s.id);
    Ok(ok(
        StatusCode::OK,
        json!({"session_id": s.id, "have": have, "missing": missing}),
    ))
}

/// The sync routes (merged into the main router).
pub fn routes() -> axum::Router<Arc<AppState>> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route(
            "/api/v1/sync/devices",
            post(register_device).get(list_devices),
        )
        .route("/api/v1/sync/status", get(status))
        .route("/api/v1/sync/changes", get(changes))
        .route("/api/v1/sync/cursor", post(commit_cursor))
        .route("/api/v1/sync/apply", post(super::apply::apply))
        .route("/api/v1/sync/conflicts", get(super::apply::list_conflicts))
        .route(
            "/api/v1/sync/conflicts/{conflict_id}/resolve",
            post(super::apply::resolve),
        )
        .route("/api/v1/sync/download/{file_id}", get(download))
        .route(
            "/api/v1/sync/preferences",
            get(super::preferences::get).put(super::preferences::put),
        )
        .route("/api/v1/sync/ws/{device_id}", get(super::ws::sync_ws))
        .route("/api/v1/realtime/ws", get(super::ws::realtime_ws))
        .route(
            "/api/v1/uploads/{session_id}/chunks/have",
            post(chunks_have),
        )
}
