//! Sync (digest §11/§12): the per-tenant change log, devices and cursors, the changes feed
//! (with full-resync snapshots and retention), `apply` with conflict strategies, conflicts,
//! the sync download, chunk "have" dedup for uploads, and the WebSockets that nudge clients.

pub mod api;
pub mod apply;
pub mod changelog;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use scai_core::config::{self as env, ConfigError};

use crate::db::now;
use crate::AppState;

/// Sync settings, parsed once at start-up.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// `SCAIDRIVE_CHANGELOG_RETENTION_DAYS` (90), or `SCAIDRIVE_CHANGELOG_RETENTION` as a
    /// duration (e.g. `2s`, for tests) which wins when set.
    pub retention: Duration,
    /// `SCAIDRIVE_CHANGELOG_PURGE_INTERVAL` (1h): how often old change rows are purged.
    pub purge_interval: Duration,
    /// `SCAIDRIVE_WS_MAX_PER_USER` (20): sockets one user may hold on one process.
    pub ws_max_per_user: usize,
    /// `SCAIDRIVE_WS_MAX_CONNECTIONS` (10000): sockets one process accepts.
    pub ws_max_connections: usize,
    /// `SCAIDRIVE_WS_PING_INTERVAL` (30s): server pings; a peer silent for two intervals is dropped.
    pub ws_ping_interval: Duration,
}

impl SyncConfig {
    pub fn from_env() -> Result<SyncConfig, ConfigError> {
        let days: u64 = env::parse_or("SCAIDRIVE_CHANGELOG_RETENTION_DAYS", 90u64)?;
        let retention = env::duration_or(
            "SCAIDRIVE_CHANGELOG_RETENTION",
            Duration::from_secs(days * 86400),
        )?;
        Ok(SyncConfig {
            retention,
            purge_interval: env::duration_or(
                "SCAIDRIVE_CHANGELOG_PURGE_INTERVAL",
                Duration::from_secs(3600),
            )?,
            ws_max_per_user: env::parse_or("SCAIDRIVE_WS_MAX_PER_USER", 20usize)?,
            ws_max_connections: env::parse_or("SCAIDRIVE_WS_MAX_CONNECTIONS", 10_000usize)?,
            ws_ping_interval: env::duration_or(
                "SCAIDRIVE_WS_PING_INTERVAL",
                Duration::from_secs(30),
            )?,
        })
    }
}

/// Delete change rows older than the retention and remember, per tenant, the highest
/// position purged: a cursor below it can no longer be served (`SYNC_CURSOR_INVALID`).
pub async fn purge(state: &AppState) -> anyhow::Result<u64> {
    let cutoff = now() - state.cfg.sync.retention.as_secs() as i64;
    let tenants: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tenant_id, MAX(position) FROM change_log WHERE changed_at < ? GROUP BY tenant_id",
    )
    .bind(cutoff)
    .fetch_all(&state.db.pool)
    .await?;
    let mut n = 0;
    for (tenant, upto) in tenants {
        // Raise the mark first: a reader between the two statements gets 410 rather than a gap.
        sqlx::query("UPDATE change_counters SET purged_through = ? WHERE tenant_id = ? AND purged_through < ?")
            .bind(upto)
            .bind(&tenant)
            .bind(upto)
            .execute(&state.db.pool)
            .await?;
        n += sqlx::query("DELETE FROM change_log WHERE tenant_id = ? AND position <= ?")
            .bind(&tenant)
            .bind(upto)
            .execute(&state.db.pool)
            .await?
            .rows_affected();
    }
    if n > 0 {
        tracing::info!(event = "changelog_purged", rows = n);
    }
    Ok(n)
}

/// The periodic change-log purge (run by `serve` and `worker`).
pub async fn run_maintenance(state: Arc<AppState>) {
    loop {
        if let Err(e) = purge(&state).await {
            tracing::warn!(event = "changelog_purge_failed", error = %e);
        }
        tokio::time::sleep(state.cfg.sync.purge_interval).await;
    }
}
