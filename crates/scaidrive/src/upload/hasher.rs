//! Whole-file SHA-256 of a resumable upload, computed while chunks arrive: chunks may come in
//! any order, so a per-session hasher consumes them in index order as soon as they are
//! contiguous (re-reading each from the store, where it is still in the page cache). By the
//! time the client calls complete, the hash is (nearly) done, so complete does not read the
//! file. After a restart, or on another replica, the hasher simply starts again from chunk 0.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::storage::chunk_key;
use crate::AppState;

struct Running {
    next: i64,
    sha: Sha256,
}

#[derive(Default)]
pub struct Hashers {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Running>>>>,
}

impl Hashers {
    fn entry(&self, session_id: &str) -> Arc<tokio::sync::Mutex<Running>> {
        self.map
            .lock()
            .entry(session_id.to_string())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Running {
                    next: 0,
                    sha: Sha256::new(),
                }))
            })
            .clone()
    }

    /// Forget a session's progress (it completed, expired, or a consumed chunk was replaced).
    pub fn reset(&self, session_id: &str) {
        self.map.lock().remove(session_id);
    }

    /// How far the hasher has consumed (chunks `0..n` are in the running hash).
    pub fn consumed(&self, session_id: &str) -> Option<i64> {
        let e = self.map.lock().get(session_id).cloned()?;
        e.try_lock().ok().map(|r| r.next)
    }
}

/// Consume every contiguous chunk that has arrived. Returns the next index still missing.
pub async fn advance(
    state: &AppState,
    tenant_id: &str,
    session_id: &str,
    total: i64,
) -> ApiResult<i64> {
    let entry = state.hashers.entry(session_id);
    let mut run = entry.lock().await;
    while run.next < total {
        let hash: Option<String> = sqlx::query_scalar(
            "SELECT hash FROM upload_parts WHERE tenant_id = ? AND session_id = ? AND idx = ?",
        )
        .bind(tenant_id)
        .bind(session_id)
        .bind(run.next)
        .fetch_optional(&state.db.pool)
        .await?;
        let Some(hash) = hash else { break };
        let data = state.store.read_all(&chunk_key(tenant_id, &hash)).await?;
        let sha = std::mem::take(&mut run.sha);
        run.sha = tokio::task::spawn_blocking(move || {
            let mut sha = sha;
            sha.update(&data);
            sha
        })
        .await
        .map_err(ApiError::internal)?;
        run.next += 1;
    }
    Ok(run.next)
}

/// The whole-file hash once every chunk is consumed.
pub async fn finish(
    state: &AppState,
    tenant_id: &str,
    session_id: &str,
    total: i64,
) -> ApiResult<String> {
    let next = advance(state, tenant_id, session_id, total).await?;
    if next < total {
        return Err(ApiError::internal(format!(
            "hasher stopped at chunk {next} of {total}"
        )));
    }
    let entry = state.hashers.entry(session_id);
    let run = entry.lock().await;
    Ok(hex::encode(run.sha.clone().finalize()))
}

/// Run [`advance`] in the background after a chunk lands.
pub fn spawn_advance(state: Arc<AppState>, tenant_id: String, session_id: String, total: i64) {
    tokio::spawn(async move {
        if let Err(e) = advance(&state, &tenant_id, &session_id, total).await {
            tracing::warn!(event = "upload_hash_deferred", session_id = %session_id, error = %e);
        }
    });
}
