//! Tenant administration: tenant settings (`max_file_size_bytes`) and user activation.

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

async fn tenant_json(st: &AppState, c: &Caller) -> ApiResult<serde_json::Value> {
    let row: Option<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT id, name, max_file_size_bytes, created_at FROM tenants WHERE id = ?",
    )
    .bind(&c.tenant_id)
    .fetch_optional(&st.db.pool)
    .await?;
    let (id, name, max, created) = row.ok_or(ApiError::NotFound("tenant"))?;
    Ok(json!({
        "id": id, "partner_id": c.partner_id, "name": name, "display_name": name, "status": "active",
        "created_at": iso(created), "settings": {"max_file_size_bytes": max},
    }))
}

pub async fn tenant(State(st): State<Arc<AppState>>, c: Caller) -> ApiResult<Response> {
    c.require_admin()?;
    Ok(ok(StatusCode::OK, tenant_json(&st, &c).await?))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    settings: Option<Settings>,
    max_file_size_bytes: Option<i64>,
}

#[derive(serde::Deserialize)]
pub struct Settings {
    max_file_size_bytes: Option<i64>,
}

pub async fn patch_tenant(
    State(st): State<Arc<AppState>>,
    c: Caller,
    J(p): J<TenantPatch>,
) -> ApiResult<Response> {
    c.require_admin()?;
    if let Some(max) = p
        .max_file_size_bytes
        .or(p.settings.and_then(|s| s.max_file_size_bytes))
    {
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
