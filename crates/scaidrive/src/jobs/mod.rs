//! Background work on the `high`/`medium`/`low` queues of `scai-queue`: Redis-backed when
//! `SCAIDRIVE_REDIS_URL` is set (consumed by any number of `scaidrive worker` processes; a job
//! whose worker dies is redelivered when its lease runs out), in-process otherwise (`serve`
//! runs the worker loop itself).
//!
//! Tasks (all on `low`, all idempotent, all re-derivable from the database, so losing Redis
//! loses nothing: the scheduler enqueues them again next interval):
//! - `expire_upload_sessions`: sessions idle longer than `SCAIDRIVE_UPLOAD_SESSION_TTL` become
//!   `expired`, their parts are dropped (which lets GC take their chunks);
//! - `gc_chunks`: chunks with no reference, collected with the tombstone protocol below;
//! - `storage_metrics`: refresh `scaidrive_storage_bytes`.
//!
//! ## Chunk GC protocol (safe against a concurrent upload of the same chunk)
//! 1. *Tombstone*: a chunk row with `refcount <= 0`, `last_seen` older than
//!    `SCAIDRIVE_GC_GRACE` and no `upload_parts` row gets `deleting_since = now` in one
//!    conditional UPDATE (the row lock makes it atomic against an upload's upsert, which sets
//!    `last_seen = now` and so makes the condition false).
//! 2. *Delete bytes*, then *delete the row* (`WHERE deleting_since IS NOT NULL`).
//! 3. An upload that finds the row tombstoned (`ingest_chunk` checks after its upsert) waits
//!    until the row is gone and then inserts it afresh and writes the bytes, so its bytes are
//!    written after GC's delete and never removed by it.
//!
//! A worker killed between 1 and 2 leaves tombstones: the redelivered job (and every later
//! run) first finishes every tombstoned row, so a tombstone never outlives one GC run. Chunks
//! referenced by a version have `refcount > 0` and are never tombstoned; chunks of a pending
//! session are held by its `upload_parts`; the grace period covers the moment between a
//! simple (one-request) upload storing a chunk and committing the version.

use std::sync::Arc;
use std::time::Duration;

use scai_queue::{HandlerFn, JobError, JobQueue, NewJob, Worker, WorkerConfig, LOW};

use crate::db::now;
use crate::storage::chunk_key;
use crate::AppState;

pub const TASK_EXPIRE: &str = "expire_upload_sessions";
pub const TASK_GC: &str = "gc_chunks";
pub const TASK_STORAGE: &str = "storage_metrics";

/// The queue backend of this configuration.
pub fn open_queue(cfg: &crate::config::Config) -> anyhow::Result<Arc<dyn JobQueue>> {
    match &cfg.redis_url {
        Some(url) => {
            let opts = scai_queue::RedisQueueOptions {
                key_prefix: format!("{}:q", cfg.redis_prefix),
                ..Default::default()
            };
            Ok(Arc::new(scai_queue::RedisQueue::new(url, opts).map_err(
                |e| anyhow::anyhow!("SCAIDRIVE_REDIS_URL: job queue: {e}"),
            )?))
        }
        None => Ok(Arc::new(scai_queue::MemoryQueue::new())),
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub sessions_expired: u64,
    pub chunks_collected: u64,
}

/// One maintenance pass run inline (tests, bench): expiry, GC, storage gauge.
pub async fn sweep(state: &AppState) -> anyhow::Result<SweepReport> {
    let report = SweepReport {
        sessions_expired: expire_sessions(state).await?,
        chunks_collected: gc_chunks(state).await?,
    };
    record_storage_bytes(state).await?;
    Ok(report)
}

/// Expire idle sessions; drop the parts of sessions that can no longer complete.
pub async fn expire_sessions(state: &AppState) -> anyhow::Result<u64> {
    let ts = now();
    let cutoff = ts - state.cfg.upload_session_ttl.as_secs() as i64;
    let expired: Vec<(String, String)> =
        sqlx::query_as("SELECT tenant_id, id FROM upload_sessions WHERE status = 'active' AND last_activity_at < ? LIMIT 1000")
            .bind(cutoff)
            .fetch_all(&state.db.pool)
            .await?;
    let mut n = 0;
    for (tenant, id) in expired {
        sqlx::query("UPDATE upload_sessions SET status = 'expired' WHERE tenant_id = ? AND id = ? AND status = 'active' AND last_activity_at < ?")
            .bind(&tenant)
            .bind(&id)
            .bind(cutoff)
            .execute(&state.db.pool)
            .await?;
        sqlx::query("DELETE FROM upload_parts WHERE tenant_id = ? AND session_id = ?")
            .bind(&tenant)
            .bind(&id)
            .execute(&state.db.pool)
            .await?;
        if let Some(c) = &state.cache {
            c.del("upload", &format!("{tenant}:{id}")).await;
        }
        state.hashers.reset(&id);
        crate::upload::discard_pending(state, &id).await;
        n += 1;
    }
    // A chunk PUT that raced with an abort/expiry on another replica may have left a part
    // behind a closed session: drop those so they do not pin chunks forever.
    sqlx::query(
        "DELETE FROM upload_parts WHERE EXISTS (SELECT 1 FROM upload_sessions s WHERE s.tenant_id = upload_parts.tenant_id \
         AND s.id = upload_parts.session_id AND s.status IN ('expired', 'aborted') AND s.last_activity_at < ?)",
    )
    .bind(cutoff)
    .execute(&state.db.pool)
    .await?;
    if n > 0 {
        tracing::info!(event = "upload_sessions_expired", count = n);
    }
    Ok(n)
}

/// The tombstone-and-delete GC of the module docs. Returns the chunks collected.
pub async fn gc_chunks(state: &AppState) -> anyhow::Result<u64> {
    let ts = now();
    let grace_cutoff = ts - state.cfg.gc_grace.as_secs() as i64;
    let batch = state.cfg.gc_batch.max(1);
    let candidates: Vec<(String, String)> = sqlx::query_as(
        "SELECT tenant_id, hash FROM chunks WHERE refcount <= 0 AND last_seen < ? AND deleting_since IS NULL LIMIT ?",
    )
    .bind(grace_cutoff)
    .bind(batch)
    .fetch_all(&state.db.pool)
    .await?;
    for (tenant, hash) in candidates {
        sqlx::query(
            "UPDATE chunks SET deleting_since = ? WHERE tenant_id = ? AND hash = ? AND refcount <= 0 AND last_seen < ? \
             AND deleting_since IS NULL \
             AND NOT EXISTS (SELECT 1 FROM upload_parts WHERE upload_parts.tenant_id = ? AND upload_parts.hash = ?)",
        )
        .bind(ts)
        .bind(&tenant)
        .bind(&hash)
        .bind(grace_cutoff)
        .bind(&tenant)
        .bind(&hash)
        .execute(&state.db.pool)
        .await?;
    }
    // Every tombstone, including those a killed worker left behind.
    let mut collected = 0;
    loop {
        let doomed: Vec<(String, String)> = sqlx::query_as(
            "SELECT tenant_id, hash FROM chunks WHERE deleting_since IS NOT NULL LIMIT ?",
        )
        .bind(batch)
        .fetch_all(&state.db.pool)
        .await?;
        if doomed.is_empty() {
            break;
        }
        for (tenant, hash) in doomed {
            match state.store.delete(&chunk_key(&tenant, &hash)).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(anyhow::anyhow!("deleting chunk {hash}: {e}")),
            }
            sqlx::query(
                "DELETE FROM chunks WHERE tenant_id = ? AND hash = ? AND deleting_since IS NOT NULL",
            )
            .bind(&tenant)
            .bind(&hash)
            .execute(&state.db.pool)
            .await?;
            collected += 1;
            tracing::debug!(event = "chunk_collected", tenant_id = %tenant, hash = %hash);
            if !state.cfg.gc_delete_pause.is_zero() {
                tokio::time::sleep(state.cfg.gc_delete_pause).await;
            }
        }
    }
    if collected > 0 {
        tracing::info!(event = "chunks_collected", count = collected);
    }
    Ok(collected)
}

/// `scaidrive_storage_bytes{tenant_id,type}`: logical bytes of live files, of older versions
/// and of files in the trash (before deduplication).
async fn record_storage_bytes(state: &AppState) -> anyhow::Result<()> {
    let queries = [
        ("files", "SELECT tenant_id, CAST(SUM(size) AS SIGNED) FROM nodes WHERE kind = 'file' AND is_deleted = 0 GROUP BY tenant_id"),
        ("trash", "SELECT tenant_id, CAST(SUM(size) AS SIGNED) FROM nodes WHERE kind = 'file' AND is_deleted = 1 GROUP BY tenant_id"),
        (
            "versions",
            "SELECT v.tenant_id, CAST(SUM(v.size) AS SIGNED) FROM versions v JOIN nodes n ON n.tenant_id = v.tenant_id AND n.id = v.file_id \
             WHERE v.id <> n.version_id GROUP BY v.tenant_id",
        ),
    ];
    for (kind, sql) in queries {
        let rows: Vec<(String, Option<i64>)> =
            sqlx::query_as(sql).fetch_all(&state.db.pool).await?;
        for (tenant, bytes) in rows {
            metrics::gauge!("scaidrive_storage_bytes", "tenant_id" => tenant, "type" => kind)
                .set(bytes.unwrap_or(0) as f64);
        }
    }
    Ok(())
}

/// Run one job (the worker's handler).
pub async fn handle(state: &AppState, task: &str) -> Result<(), JobError> {
    let r = match task {
        TASK_EXPIRE => expire_sessions(state).await.map(|_| ()),
        TASK_GC => gc_chunks(state).await.map(|_| ()),
        TASK_STORAGE => record_storage_bytes(state).await,
        other => return Err(JobError::Fatal(format!("unknown task {other}"))),
    };
    r.map_err(|e| JobError::Retry(e.to_string()))
}

/// Enqueue the maintenance tasks every `gc_interval` (and once at start). With Redis, one
/// process per interval wins a `SET NX` claim, so N workers do not enqueue N sweeps.
pub async fn run_scheduler(state: Arc<AppState>) {
    let every = state.cfg.gc_interval.max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let slot = (now_ms() / every.as_millis().max(1) as u64).to_string();
        if let Some(c) = &state.cache {
            if !c.claim(&format!("maintenance:{slot}"), every).await {
                continue;
            }
        }
        for task in [TASK_EXPIRE, TASK_GC, TASK_STORAGE] {
            let job = NewJob::new(task, serde_json::json!({})).max_attempts(5);
            if let Err(e) = state.jobs.enqueue(LOW, job).await {
                // Re-derived next interval: nothing is lost.
                tracing::warn!(event = "maintenance_enqueue_failed", task, error = %e);
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The worker loop over every queue until `shutdown`.
pub async fn run_worker(
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let cfg = WorkerConfig {
        concurrency: state.cfg.worker_concurrency.max(1),
        lease: state.cfg.job_lease.max(Duration::from_secs(1)),
        poll_interval: Duration::from_millis(200),
        metric_prefix: "scaidrive".into(),
        ..Default::default()
    };
    let st = state.clone();
    let handler = Arc::new(HandlerFn(move |job: scai_queue::Job, attempt: u32| {
        let st = st.clone();
        async move {
            tracing::debug!(event = "job_started", task = %job.task, attempt);
            handle(&st, &job.task).await
        }
    }));
    Worker::new(state.jobs.clone(), cfg)
        .run(handler, shutdown)
        .await;
}

/// The worker's small HTTP surface: `/api/v1/health` (liveness) and `/metrics` (queue depth,
/// processed jobs, job durations).
pub fn worker_router() -> axum::Router {
    axum::Router::new()
        .route(
            "/api/v1/health",
            axum::routing::get(|| async {
                axum::Json(serde_json::json!({"status": "healthy", "version": env!("CARGO_PKG_VERSION"), "role": "worker"}))
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(scai_core::metrics::metrics_handler),
        )
}
