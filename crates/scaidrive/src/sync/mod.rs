//! Sync (digest §11/§12): the per-tenant change log, devices and cursors, the changes feed
//! (with full-resync snapshots and retention), `apply` with conflict strategies, conflicts,
//! the sync download, chunk "have" dedup for uploads, per-device sync preferences, and the
//! WebSockets (with their fan-out) that nudge clients. Also the per-tenant change-log
//! retention and its purge.

pub mod api;
pub mod apply;
pub mod changelog;
pub mod fanout;
pub mod preferences;
pub mod ws;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use scai_core::config::{self as env, ConfigError};

use crate::db::now;
use crate::error::ApiResult;
use crate::AppState;

/// Sync settings, parsed once at start-up.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// The default change-log retention of a tenant without its own
    /// `change_log_retention_days`: `SCAIDRIVE_CHANGELOG_RETENTION_DAYS` (90), or
    /// `SCAIDRIVE_CHANGELOG_RETENTION` as a duration (e.g. `2s`, for tests) which wins when set.
    pub retention: Duration,
    /// `SCAIDRIVE_CHANGELOG_RETENTION_DAYS` as given (what admin settings show as the default).
    pub retention_days: u64,
    /// `SCAIDRIVE_CHANGELOG_PURGE_INTERVAL` (1h): how often old change rows are purged.
    pub purge_interval: Duration,
    /// `SCAIDRIVE_WS_MAX_PER_USER` (20): sockets one user may hold on one process.
    pub ws_max_per_user: usize,
    /// `SCAIDRIVE_WS_MAX_CONNECTIONS` (10000): sockets one process accepts.
    pub ws_max_connections: usize,
    /// `SCAIDRIVE_WS_PING_INTERVAL` (30s): server pings; a peer silent for two intervals is dropped.
    pub ws_ping_interval: Duration,
    /// `SCAIDRIVE_WS_ACCESS_TTL` (5m): a socket re-resolves its readable shares at least this
    /// often (access events refresh it at once; this bounds a missed event).
    pub ws_access_ttl: Duration,
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
            retention_days: days,
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
            ws_access_ttl: env::duration_or("SCAIDRIVE_WS_ACCESS_TTL", Duration::from_secs(300))?,
        })
    }
}

/// A tenant's change-log retention: its `change_log_retention_days` setting, else the
/// process default ([`SyncConfig::retention`]).
pub async fn retention_of(state: &AppState, tenant_id: &str) -> ApiResult<Duration> {
    let days: Option<Option<i64>> =
        sqlx::query_scalar("SELECT change_log_retention_days FROM tenants WHERE id = ?")
            .bind(tenant_id)
            .fetch_optional(&state.db.pool)
            .await?;
    Ok(match days.flatten() {
        Some(d) => Duration::from_secs(d.max(0) as u64 * 86400),
        None => state.cfg.sync.retention,
    })
}

/// True when the entries right after `position` are older than the tenant's retention: the
/// purge may take them at any moment, so a cursor there can no longer be served reliably
/// (410 `SYNC_CURSOR_INVALID`) — whether or not the purge has run yet. Lowering a tenant's
/// retention therefore invalidates its stale cursors at once.
pub async fn cursor_expired(state: &AppState, tenant_id: &str, position: i64) -> ApiResult<bool> {
    let next: Option<i64> = sqlx::query_scalar(
        "SELECT changed_at FROM change_log WHERE tenant_id = ? AND position > ? ORDER BY position LIMIT 1",
    )
    .bind(tenant_id)
    .bind(position)
    .fetch_optional(&state.db.pool)
    .await?;
    let Some(at) = next else { return Ok(false) };
    let keep = retention_of(state, tenant_id).await?;
    Ok(at < now() - keep.as_secs() as i64)
}

/// Delete the rows of one tenant older than `cutoff` and raise its purge mark (a cursor below
/// it can no longer be served: `SYNC_CURSOR_INVALID`).
async fn purge_tenant(state: &AppState, tenant: &str, cutoff: i64) -> anyhow::Result<u64> {
    let upto: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(position) FROM change_log WHERE tenant_id = ? AND changed_at < ?",
    )
    .bind(tenant)
    .bind(cutoff)
    .fetch_one(&state.db.pool)
    .await?;
    let Some(upto) = upto else { return Ok(0) };
    // Raise the mark first: a reader between the two statements gets 410 rather than a gap.
    sqlx::query(
        "UPDATE change_counters SET purged_through = ? WHERE tenant_id = ? AND purged_through < ?",
    )
    .bind(upto)
    .bind(tenant)
    .bind(upto)
    .execute(&state.db.pool)
    .await?;
    let n = sqlx::query("DELETE FROM change_log WHERE tenant_id = ? AND position <= ?")
        .bind(tenant)
        .bind(upto)
        .execute(&state.db.pool)
        .await?
        .rows_affected();
    metrics::counter!("scaidrive_sync_changelog_purged_total").increment(n);
    Ok(n)
}

/// Delete change rows older than each tenant's retention (its setting, else the default).
pub async fn purge(state: &AppState) -> anyhow::Result<u64> {
    let ts = now();
    let own: Vec<(String, i64)> = sqlx::query_as(
        "SELECT id, change_log_retention_days FROM tenants WHERE change_log_retention_days IS NOT NULL",
    )
    .fetch_all(&state.db.pool)
    .await?;
    let own: HashMap<String, i64> = own.into_iter().collect();
    let default_cutoff = ts - state.cfg.sync.retention.as_secs() as i64;
    let old: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT tenant_id FROM change_log WHERE changed_at < ?")
            .bind(default_cutoff)
            .fetch_all(&state.db.pool)
            .await?;
    let mut n = 0;
    for tenant in old.iter().filter(|t| !own.contains_key(*t)) {
        n += purge_tenant(state, tenant, default_cutoff).await?;
    }
    for (tenant, days) in &own {
        n += purge_tenant(state, tenant, ts - days.max(&0) * 86400).await?;
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
