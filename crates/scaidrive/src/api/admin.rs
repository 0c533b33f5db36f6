//! Tenant administration: tenant settings (`max_file_size_bytes`, `change_log_retention_days`)
//! and user activation (which tells the user's open sockets to re-check their access).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::{ok, J, P};
use crate::auth::Caller;
use crate::db::iso;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Upper bound of `change_log_retention_days` (ten years).
const MAX_RETENTION_DAYS: i64 = 3650;

async fn tenant_json(st: &AppState, c: &Caller) -> ApiResult<serde_json::Value> {
    let row: Option<(String, String, i64, i64, Option<i64>)> = sqlx::query_as(
        "SELECT id, name, max_file_size_bytes, created_at, change_log_retention_days FROM tenants WHERE id = ?",
    )
    .bind(&c.tenant_id)
    .fetch_optional(&st.db.pool)
    .await?;
    let (id, name, max, created, retention) = row.ok_or(ApiError::NotFound("tenant"))?;
    let default_days = st.cfg.sync.retention_days;
    Ok(json!({
        "id": id, "partner_id": c.partner_id, "name": name, "display_name": name, "status": "active",
        "created_at": iso(created), "settings": {"max_file_size_bytes": max,
            "change_log_retention_days": retention.unwrap_or(default_days as i64),
            "change_log_retention_is_default": retention.is_none()},
    }))
}

pub async fn tenant(State(st): State<Arc<AppState>>, c: Caller) -> ApiResult<Response> {
    c.require_admin()?;
    Ok(ok(StatusCode::OK, tenant_json(&st, &c).await?))
}

/// `Some(None)` for an explicit `null` (back to the default), `None` when absent.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    Ok(Some(serde::Deserialize::deserialize(d)?))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    settings: Option<Settings>,
    max_file_size_bytes: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    change_log_retention_days: Option<Option<i64>>,
}

#[derive(serde::Deserialize)]
pub struct Settings {
    max_file_size_bytes: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    change_log_retention_days: Option<Option<i64>>,
}

/// `PATCH /api/v1/admin/tenant`: any subset of the settings, at the top level or under
/// `settings`. `change_log_retention_days`: 0..=3650, or `null` for the process default; it
/// takes effect at once for cursor validity (410 `SYNC_CURSOR_INVALID`) and at the next purge
/// for deletion.
pub async fn patch_tenant(
    State(st): State<Arc<AppState>>,
    c: Caller,
    J(p): J<TenantPatch>,
) -> ApiResult<Response> {
    c.require_admin()?;
    let (s_max, s_ret) = match p.settings {
        Some(s) => (s.max_file_size_bytes, s.change_log_retention_days),
        None => (None, None),
    };
    let retention = p.change_log_retention_days.or(s_ret);
    if let Some(Some(days)) = retention {
        if !(0..=MAX_RETENTION_DAYS).contains(&days) {
            return Err(ApiError::field(
                "change_log_retention_days",
                format!("must be between 0 and {MAX_RETENTION_DAYS} (or null for the default)"),
            ));
        }
    }
    if let Some(max) = p.max_file_size_bytes.or(s_max) {
        if max < 0 {
            return Err(ApiError::field(
                "max_file_size_bytes",
                "must not be negative",
            ));
        }
        sqlx::query("UPDATE tenants SET max_file_size_bytes = ? WHERE id = ?")
            .bind(max)
            .bind(&c.tenant_id)
            .execute(&st.db.pool)
            .await?;
    }
    if let Some(days) = retention {
        sqlx::query("UPDATE tenants SET change_log_retention_days = ? WHERE id = ?")
            .bind(days)
            .bind(&c.tenant_id)
            .execute(&st.db.pool)
            .await?;
        tracing::info!(event = "tenant_changelog_retention_set", tenant_id = %c.tenant_id, days = ?days, by = %c.user_id);
    }
    Ok(ok(StatusCode::OK, tenant_json(&st, &c).await?))
}

async fn set_active(st: &AppState, c: &Caller, user_id: &str, active: bool) -> ApiResult<Response> {
    c.require_admin()?;
    let n = sqlx::query("UPDATE users SET is_active = ? WHERE tenant_id = ? AND id = ?")
        .bind(active as i64)
        .bind(&c.tenant_id)
        .bind(user_id)
        .execute(&st.db.pool)
        .await?
        .rows_affected();
    let exists: Option<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT id, email, name FROM users WHERE tenant_id = ? AND id = ?")
            .bind(&c.tenant_id)
            .bind(user_id)
            .fetch_optional(&st.db.pool)
            .await?;
    let Some((id, email, name)) = exists else {
        return Err(ApiError::NotFound("user"));
    };
    let _ = n;
    // Open sockets of the user re-check now: a suspended user's are closed with 4403.
    st.hub.control(crate::pubsub::Control::AccessChanged {
        tenant_id: c.tenant_id.clone(),
        user_id: id.clone(),
    });
    tracing::info!(event = if active { "user_activated" } else { "user_deactivated" }, tenant_id = %c.tenant_id, user_id = %id, by = %c.user_id);
    Ok(ok(
        StatusCode::OK,
        json!({"id": id, "email": email, "name": name, "is_active": active, "status": if active { "active" } else { "suspended" }}),
    ))
}

pub async fn activate(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P(user_id): P<String>,
) -> ApiResult<Response> {
    set_active(&st, &c, &user_id, true).await
}

pub async fn deactivate(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P(user_id): P<String>,
) -> ApiResult<Response> {
    if user_id == c.user_id {
        return Err(ApiError::field("user_id", "you cannot deactivate yourself"));
    }
    set_active(&st, &c, &user_id, false).await
}
