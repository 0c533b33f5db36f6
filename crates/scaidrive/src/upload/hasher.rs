//! Whole-file SHA-256 of a resumable upload, computed while chunks arrive, so `complete` never
//! reads the file. Chunks may come in any order: the chunk PUT that is next in index order is
//! hashed from its in-memory bytes right away; one that arrives early is kept in memory (within
//! a global budget) until the gap before it is filled, and beyond the budget it is re-read from
//! the store later. After a restart, or on another replica, the hasher simply starts again from
//! chunk 0 and reads what it is missing from the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Bytes of early chunks all sessions together may hold in memory.
const STASH_BUDGET: usize = 256 << 20;

struct Running {
    next: i64,
    sha: Sha256,
    early: BTreeMap<i64, Bytes>,
    early_bytes: usize,
    budget: Arc<AtomicUsize>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.early_bytes, Ordering::Relaxed);
    }
}

impl Running {
    fn take_early(&mut self, i: i64) -> Option<Bytes> {
        let d = self.early.remove(&i)?;
        self.early_bytes -= d.len();
        self.budget.fetch_sub(d.len(), Ordering::Relaxed);
        Some(d)
    }

    fn stash(&mut self, i: i64, data: Bytes) {
        if let Some(old) = self.take_early(i) {
            drop(old);
        }
        let len = data.len();
        let used = self.budget.fetch_add(len, Ordering::Relaxed);
        if used + len > STASH_BUDGET {
            // Over budget: forget it; it will be read back from the store.
            self.budget.fetch_sub(len, Ordering::Relaxed);
            return;
        }
        self.early_bytes += len;
        self.early.insert(i, data);
    }

    async fn consume(&mut self, data: Bytes) -> ApiResult<()> {
        let sha = std::mem::take(&mut self.sha);
        self.sha = tokio::task::spawn_blocking(move || {
            let mut sha = sha;
            sha.update(&data);
            sha
        })
        .await
        .map_err(ApiError::internal)?;
        self.next += 1;
        Ok(())
    }
}

#[derive(Default)]
pub struct Hashers {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Running>>>>,
    budget: Arc<AtomicUsize>,
}

impl Hashers {
    fn entry(&self, session_id: &str) -> Arc<tokio::sync::Mutex<Running>> {
        let budget = self.budget.clone();
        self.map
            .lock()
            .entry(session_id.to_string())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Running {
                    next: 0,
                    sha: Sha256::new(),
                    early: BTreeMap::new(),
                    early_bytes: 0,
                    budget,
                }))
            })
            .clone()
    }

    /// Forget a session's progress (it completed, expired, or a consumed chunk was replaced).
    pub fn reset(&self, session_id: &str) {
        self.map.lock().remove(session_id);
    }

    /// How far the hasher has consumed (chunks `0..n` are in the running hash); `None` when
    /// unknown or busy.
    pub fn consumed(&self, session_id: &str) -> Option<i64> {
        let e = self.map.lock().get(session_id).cloned()?;
        e.try_lock().ok().map(|r| r.next)
    }
}

/// Feed chunk `index` (just stored, its part row written) and consume every contiguous chunk
/// available. Returns the next index still missing.
pub async fn advance(
    state: &AppState,
    tenant_id: &str,
    session_id: &str,
    total: i64,
    arrived: Option<(i64, Bytes)>,
) -> ApiResult<i64> {
    let entry = state.hashers.entry(session_id);
    let mut run = entry.lock().await;
    if let Some((i, data)) = arrived {
        if i == run.next {
            run.consume(data).await?;
        } else if i > run.next {
            run.stash(i, data);
        }
    }
    while run.next < total {
        let i = run.next;
        if let Some(d) = run.take_early(i) {
            run.consume(d).await?;
            continue;
        }
        let part: Option<(String, i64)> = sqlx::query_as(
            "SELECT hash, staged FROM upload_parts WHERE tenant_id = ? AND session_id = ? AND idx = ?",
        )
        .bind(tenant_id)
        .bind(session_id)
        .bind(i)
        .fetch_optional(&state.db.pool)
        .await?;
        let Some((hash, staged)) = part else { break };
        let data = super::read_part(state, tenant_id, session_id, i, &hash, staged != 0).await?;
        run.consume(data).await?;
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
    let next = advance(state, tenant_id, session_id, total, None).await?;
    if next < total {
        return Err(ApiError::internal(format!(
            "hasher stopped at chunk {next} of {total}"
        )));
    }
    let entry = state.hashers.entry(session_id);
    let run = entry.lock().await;
    Ok(hex::encode(run.sha.clone().finalize()))
}
