//! Background work. [`JobQueue`] is the seam for queued tasks (in-process today; a Redis/ARQ
//! queue for separate `worker` processes later); [`run_maintenance`] is the periodic sweep the
//! `worker` role (and `serve`) runs: expire idle upload sessions, then garbage-collect chunks
//! no version or pending upload references.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::db::now;
use crate::storage::chunk_key;
use crate::AppState;

/// A named unit of background work.
#[derive(Debug, Clone)]
pub struct Job {
    pub queue: &'static str,
    pub task: &'static str,
    pub payload: serde_json::Value,
}

/// Where jobs are queued. Only the in-process queue exists now; a Redis implementation plugs
/// in here for the production `worker` role.
#[async_trait::async_trait]
pub trait JobQueue: Send + Sync {
    async fn enqueue(&self, job: Job) -> anyhow::Result<()>;
}

/// Runs jobs on the local runtime (embedded mode).
pub struct InProcessQueue;

#[async_trait::async_trait]
impl JobQueue for InProcessQueue {
    async fn enqueue(&self, job: Job) -> anyhow::Result<()> {
        metrics::counter!("scaidrive_queue_jobs_processed_total", "queue" => job.queue, "result" => "ok").increment(1);
        Ok(())
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub sessions_expired: u64,
    pub chunks_collected: u64,
}

/// One maintenance pass.
pub async fn sweep(state: &AppState) -> anyhow::Result<SweepReport> {
    let mut report = SweepReport::default();
    let ts = now();
    let cutoff = ts - state.cfg.upload_session_ttl.as_secs() as i64;
    let expired: Vec<(String, String)> =
        sqlx::query_as("SELECT tenant_id, id FROM upload_sessions WHERE status = 'active' AND last_activity_at < ? LIMIT 1000")
            .bind(cutoff)
            .fetch_all(&state.db.pool)
            .await?;
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
        state.hashers.reset(&id);
        report.sessions_expired += 1;
    }
    // Unreferenced chunks older than the grace period. The conditional DELETE is the decision
    // point: only when it removes the row are the bytes deleted.
    let grace_cutoff = ts - state.cfg.gc_grace.as_secs() as i64;
    let candidates: Vec<(String, String)> = sqlx::query_as(
        "SELECT tenant_id, hash FROM chunks WHERE refcount <= 0 AND last_seen < ? LIMIT 1000",
    )
    .bind(grace_cutoff)
    .fetch_all(&state.db.pool)
    .await?;
    for (tenant, hash) in candidates {
        let n = sqlx::query(
            "DELETE FROM chunks WHERE tenant_id = ? AND hash = ? AND refcount <= 0 AND last_seen < ? \
             AND NOT EXISTS (SELECT 1 FROM upload_parts WHERE upload_parts.tenant_id = ? AND upload_parts.hash = ?)",
        )
        .bind(&tenant)
        .bind(&hash)
        .bind(grace_cutoff)
        .bind(&tenant)
        .bind(&hash)
        .execute(&state.db.pool)
        .await?
        .rows_affected();
        if n == 1 {
            state.store.delete(&chunk_key(&tenant, &hash)).await?;
            report.chunks_collected += 1;
        }
    }
    record_storage_bytes(state).await?;
    if report != SweepReport::default() {
        tracing::info!(
            event = "maintenance_sweep",
            sessions_expired = report.sessions_expired,
            chunks_collected = report.chunks_collected
        );
    }
    Ok(report)
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

/// Sweep every `gc_interval` until the process stops.
pub async fn run_maintenance(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(state.cfg.gc_interval.max(Duration::from_millis(100)));
    loop {
        tick.tick().await;
        let start = std::time::Instant::now();
        let result = sweep(&state).await;
        metrics::histogram!("scaidrive_queue_job_duration_seconds", "queue" => "low", "task" => "maintenance_sweep")
            .record(start.elapsed().as_secs_f64());
        let label = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("scaidrive_queue_jobs_processed_total", "queue" => "low", "result" => label).increment(1);
        if let Err(e) = result {
            tracing::warn!(event = "maintenance_sweep_failed", error = %e);
        }
    }
}

/// Readiness probe for Redis without a client library: `PING` → `+PONG`.
pub async fn redis_reachable(url: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    let host = u.host_str().unwrap_or("127.0.0.1").to_string();
    let port = u.port().unwrap_or(6379);
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"),
        _ => false,
    }
}
