//! Folder routes: create, get, rename/move (PATCH), delete to trash, and the keyset-paginated
//! children listing.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::{ok, J, P, Q};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::fs::{self, Kind};
use crate::AppState;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateFolder {
    share_id: Option<String>,
    parent_id: Option<String>,
    name: String,
}

pub async fn create(
    State(st): State<Arc<AppState>>,
    c: Caller,
    J(b): J<CreateFolder>,
) -> ApiResult<Response> {
    c.require_write()?;
    fs::names::validate("name", &b.name)?;
    let parent =
        fs::target_folder(&st.db, &c, b.share_id.as_deref(), b.parent_id.as_deref()).await?;
    let folder = fs::create_folder(&st.db, &c, &parent, &b.name).await?;
    crate::pubsub::node_changed(&st, &folder, "created");
    tracing::info!(event = "folder_created", tenant_id = %c.tenant_id, folder_id = %folder.id);
    Ok(ok(
        StatusCode::CREATED,
        fs::node_json(&st.db, &folder).await?,
    ))
}

pub async fn get(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P(id): P<String>,
) -> ApiResult<Response> {
    c.require_read()?;
    let (folder, _) = fs::get_node(&st.db, &c, &id, Kind::Folder, false).await?;
    Ok(ok(StatusCode::OK, fs::node_json(&st.db, &folder).await?))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateFolder {
    name: Option<String>,
    parent_id: Option<String>,
}

pub async fn update(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P(id): P<String>,
    J(b): J<UpdateFolder>,
) -> ApiResult<Response> {
    c.require_write()?;
    let (folder, role) = fs::get_node(&st.db, &c, &id, Kind::Folder, false).await?;
    fs::require_write_role(&role)?;
    let updated = fs::update_node(
        &st.db,
        &c,
        &folder,
        b.name.as_deref(),
        b.parent_id.as_deref(),
    )
    .await?;
    crate::pubsub::node_changed(
        &st,
        &updated,
        if updated.parent_id != folder.parent_id {
            "moved"
        } else {
            "renamed"
        },
    );
    Ok(ok(StatusCode::OK, fs::node_json(&st.db, &updated).await?))
}

pub async fn delete(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P(id): P<String>,
) -> ApiResult<Response> {
    c.require_write()?;
    let (folder, role) = fs::get_node(&st.db, &c, &id, Kind::Folder, false).await?;
    fs::require_write_role(&role)?;
    fs::trash_node(&st.db, &c, &folder).await?;
    crate::pubsub::node_changed(&st, &folder, "deleted");
    tracing::info!(event = "folder_deleted", tenant_id = %c.tenant_id, folder_id = %folder.id);
    Ok(ok(
        StatusCode::OK,
        json!({"id": folder.id, "is_deleted": true}),
    ))
}

#[derive(serde::Deserialize)]
pub struct ChildrenQuery {
    share_id: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
    include_deleted: Option<bool>,
}

pub async fn children(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P(id): P<String>,
    Q(q): Q<ChildrenQuery>,
) -> ApiResult<Response> {
    c.require_read()?;
    let limit = q.limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::field("limit", "must be between 1 and 1000"));
    }
    let (folder, _) = fs::get_node(&st.db, &c, &id, Kind::Folder, false).await?;
    if let Some(s) = &q.share_id {
        if *s != folder.share_id {
            return Err(ApiError::NotFound("folder"));
        }
    }
    let path = fs::folder_path(&st.db, &c.tenant_id, &folder).await?;
    let page = fs::list_children(
        &st.db,
        &c,
        &folder,
        q.cursor.as_deref(),
        limit,
        q.include_deleted.unwrap_or(false),
    )
    .await?;
    let items: Vec<_> = page
        .items
        .iter()
        .map(|n| n.to_json(&fs::join_path(&path, &n.name)))
        .collect();
    Ok(ok(
        StatusCode::OK,
        json!({"items": items, "path": path, "total": page.total, "next_cursor": page.next_cursor, "has_more": page.next_cursor.is_some()}),
    ))
}
