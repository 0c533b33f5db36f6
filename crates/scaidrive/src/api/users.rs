//! The caller (`/users/me`), their shares, and a share by id (with its `root_folder_id`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::{ok, P, Q};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::fs;
use crate::AppState;

pub async fn me(c: Caller) -> ApiResult<Response> {
    Ok(ok(
        StatusCode::OK,
        json!({
            "id": c.user_id, "email": c.email, "name": c.name, "display_name": c.name, "tenant_id": c.tenant_id,
            "partner_id": c.partner_id, "groups": c.groups, "scopes": c.scopes, "is_admin": c.is_admin,
            "admin_role": if c.is_admin { Some("tenant_admin") } else { None },
        }),
    ))
}

#[derive(serde::Deserialize)]
pub struct Paging {
    limit: Option<i64>,
    offset: Option<i64>,
}

pub async fn my_shares(
    State(st): State<Arc<AppState>>,
    c: Caller,
    Q(p): Q<Paging>,
) -> ApiResult<Response> {
    c.require_read()?;
    let limit = p.limit.unwrap_or(50);
    let offset = p.offset.unwrap_or(0);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::field("limit", "must be between 1 and 100"));
    }
    if offset < 0 {
        return Err(ApiError::field("offset", "must not be negative"));
    }
    let (shares, total) = fs::my_shares(&st.db, &c, limit, offset).await?;
    let items: Vec<_> = shares.iter().map(|(s, r)| s.to_json(r)).collect();
    Ok(ok(StatusCode::OK, json!({"shares": items, "total": total})))
}

pub async fn share(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P(id): P<String>,
) -> ApiResult<Response> {
    c.require_read()?;
    let (s, role) = fs::get_share(&st.db, &c, &id).await?;
    Ok(ok(StatusCode::OK, s.to_json(&role)))
}
