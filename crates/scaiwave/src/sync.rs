//! `GET /v1/sync?since=&limit=&timeout=`: catch-up and long-poll over the same visibility
//! rules as the stream. Returns at once when visible events after `since` exist; otherwise
//! waits on the hub's release of new positions for the tenant (fed by the broker, so a write
//! on any replica wakes it) until `timeout` milliseconds pass.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;

use crate::app::{ok, AppState, Ctx};
use crate::error::{ApiError, ApiResult};
use crate::events::{visible_after, wire};

pub const SYNC_DEFAULT_LIMIT: i64 = 100;
pub const SYNC_MAX_LIMIT: i64 = 500;
pub const SYNC_DEFAULT_TIMEOUT_MS: u64 = 30_000;
pub const SYNC_MAX_TIMEOUT_MS: u64 = 120_000;

#[derive(Deserialize)]
pub struct SyncQuery {
    since: Option<String>,
    limit: Option<String>,
    timeout: Option<String>,
}

fn num<T: std::str::FromStr>(name: &str, v: &Option<String>) -> ApiResult<Option<T>> {
    match v.as_deref().filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s
            .parse::<T>()
            .map(Some)
            .map_err(|_| ApiError::Invalid(format!("{name} must be a non-negative integer"))),
    }
}

pub async fn sync(
    State(app): State<AppState>,
    ctx: Ctx,
    Query(q): Query<SyncQuery>,
) -> ApiResult<Response> {
    let since: i64 = num::<u64>("since", &q.since)?
        .unwrap_or(0)
        .min(i64::MAX as u64) as i64;
    let limit = num::<i64>("limit", &q.limit)?.unwrap_or(SYNC_DEFAULT_LIMIT);
    if !(1..=SYNC_MAX_LIMIT).contains(&limit) {
        return Err(ApiError::Invalid(format!(
            "limit must be between 1 and {SYNC_MAX_LIMIT}"
        )));
    }
    let timeout = num::<u64>("timeout", &q.timeout)?.unwrap_or(SYNC_DEFAULT_TIMEOUT_MS);
    if timeout > SYNC_MAX_TIMEOUT_MS {
        return Err(ApiError::Invalid(format!(
            "timeout is in milliseconds, at most {SYNC_MAX_TIMEOUT_MS}"
        )));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout);
    let mut watch = app.hub.watch(&ctx.tenant);
    loop {
        watch.borrow_and_update();
        // Read the committed head first: every position up to it is committed, so when the
        // query below finds nothing more, the cursor may skip to it (past events the caller
        // cannot see) without losing any.
        let head: i64 = match sqlx::query("SELECT last_position FROM sw_tenants WHERE id = ?")
            .bind(&ctx.tenant)
            .fetch_optional(&app.db.pool)
            .await?
        {
            Some(r) => r.try_get(0)?,
            None => 0,
        };
        let rows = visible_after(&app.db, &ctx.tenant, &ctx.user, since, limit + 1).await?;
        let has_more = rows.len() as i64 > limit;
        let events: Vec<Value> = rows.iter().take(limit as usize).map(wire).collect();
        let last = rows
            .get(events.len().wrapping_sub(1))
            .map(|e| e.stream_position);
        let now = tokio::time::Instant::now();
        if !events.is_empty() || now >= deadline {
            let next = match (last, has_more) {
                (Some(l), true) => l,
                (Some(l), false) => l.max(head),
                (None, _) => since.max(head),
            };
            return Ok(ok(
                json!({"events": events, "next_cursor": next, "has_more": has_more}),
            ));
        }
        if tokio::time::timeout_at(deadline, watch.changed())
            .await
            .is_err()
        {
            return Ok(ok(
                json!({"events": [], "next_cursor": since.max(head), "has_more": false}),
            ));
        }
    }
}
