//! Uploads. Every chunk is hashed and deduplicated within the tenant: one the tenant already
//! has is only referenced. The simple (multipart) upload stores new chunks at their content
//! address ([`ingest_chunk`]) and commits the version in one transaction. A resumable session
//! stores new chunks under `uploads/{session_id}/chunks/{index}` (the operator guide's layout,
//! so a bucket lifecycle rule on `uploads/` can reap abandoned uploads) and records
//! (session, index) → hash, `staged`. `complete` moves the staged chunks to their content
//! address (rename / server-side copy, a bounded number at a time), then links the version in
//! one transaction whose database cost does not grow with the chunk count.
//!
//! The bytes under one pending key never change once written (`put_new`, first writer wins):
//! a later PUT of that index with other bytes goes straight to its content address. So the
//! row's hash always names the bytes it points to, even with a client racing itself, and a
//! promoted chunk is never stored under a wrong hash.

pub mod hasher;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::db::{iso, now, Db};
use crate::error::{ApiError, ApiResult};
use crate::fs::{self, Content, Kind, Node, Target};
use crate::storage::{chunk_key, pending_key, pending_prefix};
use crate::AppState;

/// Hash `data`, make sure the chunk row exists (touching `last_seen` so GC leaves it alone),
/// then store the bytes durably unless the tenant already has them. Returns the hex hash.
pub async fn ingest_chunk(state: &AppState, tenant_id: &str, data: Bytes) -> ApiResult<String> {
    let (data, hash) = hash_chunk(data).await?;
    claim_chunk(state, tenant_id, &hash, data.len() as i64).await?;
    let key = chunk_key(tenant_id, &hash);
    let len = data.len() as u64;
    if state.store.exists(&key).await? {
        metrics::counter!("scaidrive_chunks_deduplicated_total", "tenant_id" => tenant_id.to_string()).increment(1);
    } else {
        state.store.put(&key, data).await?;
    }
    metrics::counter!("scaidrive_uploads_bytes_total", "tenant_id" => tenant_id.to_string())
        .increment(len);
    Ok(hash)
}

/// SHA-256 of a chunk (hex), off the async threads.
async fn hash_chunk(data: Bytes) -> ApiResult<(Bytes, String)> {
    tokio::task::spawn_blocking(move || {
        let h = hex::encode(Sha256::digest(&data));
        (data, h)
    })
    .await
    .map_err(ApiError::internal)
}

/// Store the bytes of part `index` (hash `hash`, its chunk row already claimed) and say whether
/// they wait under the pending key (`true`) or are at their content address (`false`): a chunk
/// the tenant already has is not stored again, and a pending key that already holds bytes
/// (a retry, or other bytes for the same index) is never overwritten.
async fn store_part(
    state: &AppState,
    tenant_id: &str,
    session_id: &str,
    index: i64,
    hash: &str,
    data: Bytes,
) -> ApiResult<bool> {
    let len = data.len() as u64;
    let key = chunk_key(tenant_id, hash);
    let staged = if state.store.exists(&key).await? {
        metrics::counter!("scaidrive_chunks_deduplicated_total", "tenant_id" => tenant_id.to_string()).increment(1);
        false
    } else if state
        .store
        .put_new(&pending_key(session_id, index), data.clone())
        .await?
    {
        true
    } else {
        state.store.put(&key, data).await?;
        false
    };
    metrics::counter!("scaidrive_uploads_bytes_total", "tenant_id" => tenant_id.to_string())
        .increment(len);
    Ok(staged)
}

/// Move the staged chunks of a session to their content addresses, at most 16 at a time.
/// Idempotent: a chunk moved by an earlier attempt is found at its address.
async fn promote_staged(state: &AppState, s: &Session) -> ApiResult<()> {
    use futures::StreamExt;
    let staged: Vec<(i64, String)> = sqlx::query_as(
        "SELECT idx, hash FROM upload_parts WHERE tenant_id = ? AND session_id = ? AND staged = 1",
    )
    .bind(&s.tenant_id)
    .bind(&s.id)
    .fetch_all(&state.db.pool)
    .await?;
    let results: Vec<ApiResult<()>> = futures::stream::iter(staged)
        .map(|(idx, hash)| async move {
            let to = chunk_key(&s.tenant_id, &hash);
            if state.store.exists(&to).await? {
                return Ok(());
            }
            if state.store.promote(&pending_key(&s.id, idx), &to).await? {
                return Ok(());
            }
            // Neither pending nor at its address: the bytes are gone (an operator's lifecycle
            // rule, say). Forget the part so the client sends it again.
            sqlx::query(
                "DELETE FROM upload_parts WHERE tenant_id = ? AND session_id = ? AND idx = ?",
            )
            .bind(&s.tenant_id)
            .bind(&s.id)
            .bind(idx)
            .execute(&state.db.pool)
            .await?;
            state.hashers.reset(&s.id);
            Err(ApiError::Conflict {
                code: "UPLOAD_INCOMPLETE",
                message: format!("chunk {idx} is no longer stored; upload it again"),
                details: json!({"missing_chunks": [idx]}),
            })
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Drop the pending bytes of a session that completed, was aborted or expired. Best effort:
/// leftovers are harmless (never referenced) and a bucket lifecycle rule on `uploads/` or the
/// next cleanup removes them.
pub async fn discard_pending(state: &AppState, session_id: &str) {
    if let Err(e) = state.store.delete_prefix(&pending_prefix(session_id)).await {
        tracing::warn!(event = "upload_pending_cleanup_failed", session_id, error = %e);
    }
}

/// Read the bytes of one part, wherever they are (pending, or already promoted).
pub async fn read_part(
    state: &AppState,
    tenant_id: &str,
    session_id: &str,
    index: i64,
    hash: &str,
    staged: bool,
) -> ApiResult<Bytes> {
    if staged {
        match state.store.read_all(&pending_key(session_id, index)).await {
            Ok(b) => return Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(state.store.read_all(&chunk_key(tenant_id, hash)).await?)
}

/// Upsert the chunk row (refreshing `last_seen`), then make sure GC is not deleting it: a
/// tombstoned row (`deleting_since` set, see `jobs`) means GC may be removing the bytes right
/// now, so wait until GC has deleted the row and insert it afresh; the bytes written after
/// that are never touched by that GC run.
async fn claim_chunk(state: &AppState, tenant_id: &str, hash: &str, size: i64) -> ApiResult<()> {
    for _ in 0..100 {
        sqlx::query(state.db.upsert_chunk_sql())
            .bind(tenant_id)
            .bind(hash)
            .bind(size)
            .bind(now())
            .execute(&state.db.pool)
            .await?;
        let tomb: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT deleting_since FROM chunks WHERE tenant_id = ? AND hash = ?",
        )
        .bind(tenant_id)
        .bind(hash)
        .fetch_optional(&state.db.pool)
        .await?;
        if !matches!(tomb, Some(Some(_))) {
            return Ok(());
        }
        tracing::info!(event = "chunk_waits_for_gc", tenant_id, hash);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(ApiError::Unavailable(
        "chunk is being garbage-collected, retry".into(),
    ))
}

pub async fn tenant_max_file_size(db: &Db, tenant_id: &str) -> ApiResult<u64> {
    let v: Option<i64> = sqlx::query_scalar("SELECT max_file_size_bytes FROM tenants WHERE id = ?")
        .bind(tenant_id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(v.unwrap_or(i64::MAX).max(0) as u64)
}

pub fn too_large(size: u64, limit: u64) -> ApiError {
    ApiError::PayloadTooLarge {
        message: format!(
            "file of {size} bytes exceeds the tenant limit of {limit} bytes (max_file_size_bytes)"
        ),
        limit,
    }
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct Session {
    pub tenant_id: String,
    pub id: String,
    pub share_id: String,
    pub folder_id: String,
    pub file_id: Option<String>,
    pub file_name: String,
    pub file_size: i64,
    pub chunk_size: i64,
    pub total_chunks: i64,
    pub mime_type: String,
    pub checksum_sha256: Option<String>,
    pub status: String,
    pub result_file_id: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub last_activity_at: i64,
}

const SESSION_COLS: &str = "tenant_id, id, share_id, folder_id, file_id, file_name, file_size, chunk_size, total_chunks, mime_type, checksum_sha256, status, result_file_id, created_by, created_at, last_activity_at";

impl Session {
    /// Size chunk `i` must have: `chunk_size`, except the last one.
    pub fn expected_len(&self, i: i64) -> i64 {
        if i == self.total_chunks - 1 {
            self.file_size - self.chunk_size * (self.total_chunks - 1)
        } else {
            self.chunk_size
        }
    }

    fn expires_at(&self, ttl: i64) -> i64 {
        self.last_activity_at + ttl
    }
}

/// Body of `POST /api/v1/uploads`. Numbers are signed so a negative size gets a clear error.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    pub share_id: Option<String>,
    pub folder_id: Option<String>,
    /// Upload a new version of this file instead of a new file.
    pub file_id: Option<String>,
    pub file_name: Option<String>,
    pub file_size: i64,
    pub chunk_size: Option<i64>,
    pub mime_type: Option<String>,
    pub checksum_sha256: Option<String>,
}

pub fn valid_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub async fn create_session(
    state: &AppState,
    c: &Caller,
    req: CreateSession,
) -> ApiResult<Session> {
    if req.file_size < 0 {
        return Err(ApiError::field("file_size", "must not be negative"));
    }
    let chunk_size = req
        .chunk_size
        .unwrap_or(state.cfg.default_chunk_size as i64);
    if chunk_size < 64 * 1024
        || !(chunk_size as u64).is_power_of_two()
        || chunk_size as u64 > state.cfg.max_chunk_size
    {
        return Err(ApiError::field(
            "chunk_size",
            format!(
                "must be a power of two between 65536 and {}",
                state.cfg.max_chunk_size
            ),
        ));
    }
    let checksum = match req.checksum_sha256 {
        Some(s) if !valid_sha256_hex(&s) => {
            return Err(ApiError::field("checksum_sha256", "must be 64 hex digits"))
        }
        other => other.map(|s| s.to_ascii_lowercase()),
    };
    let limit = tenant_max_file_size(&state.db, &c.tenant_id).await?;
    // Resolve target before size so a wrong id answers 404 first.
    let (share_id, folder_id, file_id, name) = if let Some(fid) = &req.file_id {
        let (file, role) = fs::get_node(&state.db, c, fid, Kind::File, false).await?;
        fs::require_write_role(&role)?;
        let name = file.name.clone();
        (
            file.share_id,
            file.parent_id.unwrap_or_default(),
            Some(file.id),
            name,
        )
    } else {
        let name = req
            .file_name
            .clone()
            .ok_or_else(|| ApiError::field("file_name", "is required"))?;
        fs::names::validate("file_name", &name)?;
        let folder = fs::target_folder(
            &state.db,
            c,
            req.share_id.as_deref(),
            req.folder_id.as_deref(),
        )
        .await?;
        // Early answer for the common collision; the unique index decides at complete.
        let taken: Option<String> = sqlx::query_scalar(
            "SELECT id FROM nodes WHERE tenant_id = ? AND parent_id = ? AND live_name = ?",
        )
        .bind(&c.tenant_id)
        .bind(&folder.id)
        .bind(&name)
        .fetch_optional(&state.db.pool)
        .await?;
        if taken.is_some() {
            return Err(ApiError::NameConflict(name));
        }
        (folder.share_id, folder.id, None, name)
    };
    if req.file_size as u64 > limit {
        return Err(too_large(req.file_size as u64, limit));
    }
    let total_chunks = req.file_size / chunk_size + i64::from(req.file_size % chunk_size != 0);
    let mime = req
        .mime_type
        .unwrap_or_else(|| fs::names::mime_for(&name).to_string());
    let id = scai_core::ids::new_id("upl");
    let ts = now();
    sqlx::query(&format!(
        "INSERT INTO upload_sessions ({SESSION_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', NULL, ?, ?, ?)"
    ))
    .bind(&c.tenant_id)
    .bind(&id)
    .bind(&share_id)
    .bind(&folder_id)
    .bind(file_id.as_deref())
    .bind(&name)
    .bind(req.file_size)
    .bind(chunk_size)
    .bind(total_chunks)
    .bind(&mime)
    .bind(checksum.as_deref())
    .bind(&c.user_id)
    .bind(ts)
    .bind(ts)
    .execute(&state.db.pool)
    .await?;
    tracing::info!(event = "upload_session_created", session_id = %id, tenant_id = %c.tenant_id, file_size = req.file_size, total_chunks);
    load_session(state, c, &id, false).await
}

/// A session of the caller's tenant created by the caller (or seen by a tenant admin).
/// Unknown: 404 `UPLOAD_SESSION_NOT_FOUND`; inactive too long: 410 `UPLOAD_SESSION_EXPIRED`.
pub async fn load_session(
    state: &AppState,
    c: &Caller,
    id: &str,
    allow_completed: bool,
) -> ApiResult<Session> {
    let not_found = || ApiError::SessionNotFound;
    if !scai_core::ids::has_prefix(id, "upl") {
        return Err(not_found());
    }
    let ttl = state.cfg.upload_session_ttl.as_secs() as i64;
    // Redis answers only the positive case (active, not idle too long, the caller's own);
    // everything else is decided from the database, the source of truth.
    if let Some(cache) = &state.cache {
        if let Some(s) = cache
            .get::<Session>("upload", &format!("{}:{id}", c.tenant_id))
            .await
        {
            if s.status == "active"
                && now() <= s.expires_at(ttl)
                && s.tenant_id == c.tenant_id
                && (s.created_by == c.user_id || c.is_admin)
            {
                return Ok(s);
            }
        }
    }
    let s: Option<Session> = sqlx::query_as(&format!(
        "SELECT {SESSION_COLS} FROM upload_sessions WHERE tenant_id = ? AND id = ?"
    ))
    .bind(&c.tenant_id)
    .bind(id)
    .fetch_optional(&state.db.pool)
    .await?;
    let s = s.ok_or_else(not_found)?;
    if s.status == "active" {
        cache_session(state, &s).await;
    }
    if s.created_by != c.user_id && !c.is_admin {
        return Err(not_found());
    }
    match s.status.as_str() {
        "completed" if allow_completed => Ok(s),
        "completed" => Err(ApiError::Conflict {
            code: "UPLOAD_ALREADY_COMPLETED",
            message: "upload session is already completed".into(),
            details: json!({"file_id": s.result_file_id}),
        }),
        "active" if now() <= s.expires_at(ttl) => Ok(s),
        _ => Err(ApiError::SessionExpired),
    }
}

/// Write an active session to the Redis cache (no-op without Redis), expiring with it.
pub async fn cache_session(state: &AppState, s: &Session) {
    if let Some(cache) = &state.cache {
        cache
            .put(
                "upload",
                &format!("{}:{}", s.tenant_id, s.id),
                s,
                state.cfg.upload_session_ttl,
            )
            .await;
    }
}

/// Drop a session from the cache once it is completed, aborted or expired.
pub async fn uncache_session(state: &AppState, tenant_id: &str, id: &str) {
    if let Some(cache) = &state.cache {
        cache.del("upload", &format!("{tenant_id}:{id}")).await;
    }
}

pub async fn session_json(state: &AppState, s: &Session) -> ApiResult<Value> {
    let parts: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT idx, size FROM upload_parts WHERE tenant_id = ? AND session_id = ? ORDER BY idx",
    )
    .bind(&s.tenant_id)
    .bind(&s.id)
    .fetch_all(&state.db.pool)
    .await?;
    let received: Vec<i64> = parts.iter().map(|p| p.0).collect();
    let bytes: i64 = parts.iter().map(|p| p.1).sum();
    let mut missing = Vec::new();
    let mut it = received.iter().peekable();
    for i in 0..s.total_chunks {
        if it.peek() == Some(&&i) {
            it.next();
        } else {
            missing.push(i);
            // Bounded answer (and bounded work: a session may declare billions of chunks).
            if missing.len() >= 1000 {
                break;
            }
        }
    }
    let ttl = state.cfg.upload_session_ttl.as_secs() as i64;
    Ok(json!({
        "id": s.id, "session_id": s.id, "status": s.status, "share_id": s.share_id, "folder_id": s.folder_id,
        "file_id": s.result_file_id.clone().or(s.file_id.clone()), "file_name": s.file_name, "file_size": s.file_size,
        "chunk_size": s.chunk_size, "total_chunks": s.total_chunks, "mime_type": s.mime_type,
        "checksum_sha256": s.checksum_sha256, "received_chunks": received, "missing_chunks": missing,
        "bytes_received": bytes, "created_at": iso(s.created_at), "expires_at": iso(s.expires_at(ttl)),
    }))
}

/// Store chunk `index` of a session. Repeating a PUT is harmless (the row is replaced by the
/// same hash); chunks may arrive in any order and in parallel.
pub async fn put_chunk(
    state: &Arc<AppState>,
    c: &Caller,
    s: &Session,
    index: i64,
    data: Bytes,
    declared_sha: Option<&str>,
) -> ApiResult<Value> {
    let expected = s.expected_len(index);
    if data.len() as i64 != expected {
        return Err(ApiError::BadRequest {
            code: "CHUNK_SIZE_MISMATCH",
            message: format!("chunk {index} must be {expected} bytes, got {}", data.len()),
            details: json!({"chunk_index": index, "expected_size": expected, "actual_size": data.len()}),
        });
    }
    let size = data.len() as i64;
    let (data, hash) = hash_chunk(data).await?;
    // Checked before anything is stored, so a corrupt chunk leaves no trace.
    if let Some(d) = declared_sha {
        if !d.eq_ignore_ascii_case(&hash) {
            return Err(ApiError::ChecksumMismatch {
                message: format!("chunk {index} does not match its X-Chunk-Sha256"),
                expected: d.to_string(),
                actual: hash,
            });
        }
    }
    let previous: Option<String> = sqlx::query_scalar(
        "SELECT hash FROM upload_parts WHERE tenant_id = ? AND session_id = ? AND idx = ?",
    )
    .bind(&c.tenant_id)
    .bind(&s.id)
    .bind(index)
    .fetch_optional(&state.db.pool)
    .await?;
    claim_chunk(state, &c.tenant_id, &hash, size).await?;
    let staged = store_part(state, &c.tenant_id, &s.id, index, &hash, data.clone()).await?;
    // The part row is the commit point of the chunk: its bytes are already durable. One
    // transaction (one fsync) for the part and the session's activity time.
    let mut tx = state.db.pool.begin().await?;
    sqlx::query(state.db.upsert_part_sql())
        .bind(&c.tenant_id)
        .bind(&s.id)
        .bind(index)
        .bind(&hash)
        .bind(size)
        .bind(i64::from(staged))
        .execute(&mut *tx)
        .await?;
    let ts = now();
    sqlx::query("UPDATE upload_sessions SET last_activity_at = ? WHERE tenant_id = ? AND id = ?")
        .bind(ts)
        .bind(&c.tenant_id)
        .bind(&s.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    if state.cache.is_some() && ts > s.last_activity_at {
        // Keep the cached idle clock in step (the DB row was just refreshed).
        let mut fresh = s.clone();
        fresh.last_activity_at = ts;
        cache_session(state, &fresh).await;
    }
    if previous.as_deref().is_some_and(|p| p != hash)
        && state.hashers.consumed(&s.id).is_none_or(|n| n > index)
    {
        // A consumed chunk was replaced by different bytes: rehash from the start.
        state.hashers.reset(&s.id);
    }
    // The in-order chunk is hashed here from memory, so by the time the client has all its
    // PUT answers the whole-file hash is done and complete does not read the file.
    hasher::advance(
        state,
        &c.tenant_id,
        &s.id,
        s.total_chunks,
        Some((index, data)),
    )
    .await?;
    Ok(json!({"session_id": s.id, "chunk_index": index, "size": size, "sha256": hash}))
}

/// Finish a session: every chunk present, whole-file checksum right, then one transaction
/// links the manifest as a file (or new version) and closes the session.
pub async fn complete(state: &AppState, c: &Caller, s: &Session) -> ApiResult<Node> {
    if s.status == "completed" {
        let fid = s.result_file_id.clone().unwrap_or_default();
        return Ok(fs::get_node(&state.db, c, &fid, Kind::File, true).await?.0);
    }
    let parts: Vec<(i64, String, i64)> = sqlx::query_as("SELECT idx, hash, size FROM upload_parts WHERE tenant_id = ? AND session_id = ? ORDER BY idx")
        .bind(&c.tenant_id)
        .bind(&s.id)
        .fetch_all(&state.db.pool)
        .await?;
    if parts.len() as i64 != s.total_chunks {
        let have: std::collections::HashSet<i64> = parts.iter().map(|p| p.0).collect();
        let missing: Vec<i64> = (0..s.total_chunks)
            .filter(|i| !have.contains(i))
            .take(1000)
            .collect();
        return Err(ApiError::Conflict {
            code: "UPLOAD_INCOMPLETE",
            message: format!(
                "{} of {} chunks are missing",
                s.total_chunks - parts.len() as i64,
                s.total_chunks
            ),
            details: json!({"missing_chunks": missing}),
        });
    }
    let limit = tenant_max_file_size(&state.db, &c.tenant_id).await?;
    if s.file_size as u64 > limit {
        return Err(too_large(s.file_size as u64, limit));
    }
    let sha = hasher::finish(state, &c.tenant_id, &s.id, s.total_chunks).await?;
    if let Some(expected) = &s.checksum_sha256 {
        if *expected != sha {
            tracing::info!(event = "upload_checksum_mismatch", session_id = %s.id);
            return Err(ApiError::ChecksumMismatch {
                message: "the uploaded bytes do not match checksum_sha256".into(),
                expected: expected.clone(),
                actual: sha,
            });
        }
    }
    let mut hashes = Vec::with_capacity(parts.len());
    for (_, h, _) in &parts {
        let mut b = [0u8; 32];
        hex::decode_to_slice(h, &mut b).map_err(ApiError::internal)?;
        hashes.push(b);
    }
    let target = match &s.file_id {
        Some(fid) => Target::Version {
            file_id: fid.clone(),
        },
        None => {
            let (folder, role) =
                fs::get_node(&state.db, c, &s.folder_id, Kind::Folder, false).await?;
            fs::require_write_role(&role)?;
            Target::New {
                folder: Box::new(folder),
                name: s.file_name.clone(),
                mime_type: s.mime_type.clone(),
            }
        }
    };
    let content = Content {
        hashes,
        size: s.file_size,
        chunk_size: s.chunk_size,
        sha256: sha,
    };
    // Bytes at their content address before the version that references them commits.
    promote_staged(state, s).await?;
    let mut tx = state.db.pool.begin().await?;
    // Claim the session first (a write, so SQLite takes its lock now) — a concurrent complete
    // of the same session sees 0 rows and loses.
    let claimed = sqlx::query("UPDATE upload_sessions SET status = 'completed', last_activity_at = ? WHERE tenant_id = ? AND id = ? AND status = 'active'")
        .bind(now())
        .bind(&c.tenant_id)
        .bind(&s.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if claimed == 0 {
        return Err(ApiError::Conflict {
            code: "UPLOAD_ALREADY_COMPLETED",
            message: "upload session is already completed".into(),
            details: Value::Null,
        });
    }
    let file_id = fs::commit_content(&mut tx, c, &target, &content).await?;
    sqlx::query("UPDATE upload_sessions SET result_file_id = ? WHERE tenant_id = ? AND id = ?")
        .bind(&file_id)
        .bind(&c.tenant_id)
        .bind(&s.id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM upload_parts WHERE tenant_id = ? AND session_id = ?")
        .bind(&c.tenant_id)
        .bind(&s.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    state.hashers.reset(&s.id);
    uncache_session(state, &c.tenant_id, &s.id).await;
    discard_pending(state, &s.id).await;
    tracing::info!(event = "upload_completed", session_id = %s.id, file_id = %file_id, size = s.file_size);
    Ok(fs::get_node(&state.db, c, &file_id, Kind::File, false)
        .await?
        .0)
}

/// Cut a byte stream into chunks, ingest each, and return the content (no commit yet).
pub struct StreamIngest {
    chunk_size: usize,
    limit: u64,
    buf: BytesMut,
    sha: Sha256,
    hashes: Vec<[u8; 32]>,
    size: u64,
}

impl StreamIngest {
    pub fn new(chunk_size: usize, limit: u64) -> Self {
        StreamIngest {
            chunk_size,
            limit,
            buf: BytesMut::with_capacity(chunk_size),
            sha: Sha256::new(),
            hashes: Vec::new(),
            size: 0,
        }
    }

    pub async fn push(
        &mut self,
        state: &AppState,
        tenant_id: &str,
        mut data: Bytes,
    ) -> ApiResult<()> {
        self.size += data.len() as u64;
        if self.size > self.limit {
            return Err(too_large(self.size, self.limit));
        }
        while !data.is_empty() {
            let room = self.chunk_size - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data.split_to(take));
            if self.buf.len() == self.chunk_size {
                self.flush(state, tenant_id).await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self, state: &AppState, tenant_id: &str) -> ApiResult<()> {
        let chunk =
            std::mem::replace(&mut self.buf, BytesMut::with_capacity(self.chunk_size)).freeze();
        let sha = std::mem::take(&mut self.sha);
        let c2 = chunk.clone();
        self.sha = tokio::task::spawn_blocking(move || {
            let mut sha = sha;
            sha.update(&c2);
            sha
        })
        .await
        .map_err(ApiError::internal)?;
        let h = ingest_chunk(state, tenant_id, chunk).await?;
        let mut b = [0u8; 32];
        hex::decode_to_slice(&h, &mut b).map_err(ApiError::internal)?;
        self.hashes.push(b);
        Ok(())
    }

    pub async fn finish(mut self, state: &AppState, tenant_id: &str) -> ApiResult<Content> {
        if !self.buf.is_empty() {
            self.flush(state, tenant_id).await?;
        }
        Ok(Content {
            hashes: self.hashes,
            size: self.size as i64,
            chunk_size: self.chunk_size as i64,
            sha256: hex::encode(self.sha.finalize()),
        })
    }
}
