//! IAM administration: users, groups and the canned policy templates.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::json;

use super::{audit_iam_change, err, require_session, St};
use crate::iam::{GroupSpec, UserSpec};
use crate::state::AppState;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/_/api/admin/users", get(list_users).post(create_user))
        .route(
            "/_/api/admin/users/{id}",
            put(update_user).delete(delete_user),
        )
        .route("/_/api/admin/groups", get(list_groups).post(create_group))
        .route(
            "/_/api/admin/groups/{name}",
            put(update_group).delete(delete_group),
        )
        .route("/_/api/admin/policies", get(policies))
}

fn redacted(u: &UserSpec) -> serde_json::Value {
    json!({
        "id": u.access_key_id, "name": u.name, "access_key_id": u.access_key_id, "enabled": u.enabled,
        "groups": u.groups, "permissions": u.permissions,
    })
}

async fn list_users(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = require_session(&st, &headers, &addr) {
        return r;
    }
    let users: Vec<_> = st
        .iam
        .users
        .read()
        .values()
        .filter(|u| !u.name.starts_with('$'))
        .map(redacted)
        .collect();
    Json(json!({ "users": users })).into_response()
}

/// The IAM store could not be written: the change is not applied.
/// Delete `key` from an IAM map, persisting the deletion first (under the write lock, so no
/// other change interleaves): 404 `missing` when absent, 500 when the persist fails.
fn remove_persisted<T>(
    map: &parking_lot::RwLock<std::collections::BTreeMap<String, T>>,
    key: &str,
    missing: &str,
    persist: impl FnOnce() -> Result<(), crate::error::ProxyError>,
) -> Result<(), Response> {
    let mut m = map.write();
    if !m.contains_key(key) {
        return Err(err(StatusCode::NOT_FOUND, missing));
    }
    persist().map_err(persist_failed)?;
    m.remove(key);
    Ok(())
}

fn persist_failed(e: crate::error::ProxyError) -> Response {
    tracing::error!(error = %e, "admin IAM change not persisted");
    err(StatusCode::INTERNAL_SERVER_ERROR, "persist_failed")
}

fn declarative_guard(st: &AppState) -> Result<(), Response> {
    if st.cfg.iam_declarative {
        return Err(err(StatusCode::FORBIDDEN, "iam_declarative"));
    }
    Ok(())
}

async fn create_user(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(mut u): Json<UserSpec>,
) -> Response {
    if let Err(r) = require_session(&st, &headers, &addr).and_then(|_| declarative_guard(&st)) {
        return r;
    }
    if u.name.starts_with('$') || u.name.is_empty() {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "names starting with $ are reserved",
        );
    }
    if u.secret_access_key.is_empty() {
        u.secret_access_key = hex::encode(rand::random::<[u8; 20]>());
    }
    {
        let mut users = st.iam.users.write();
        if users.contains_key(&u.access_key_id) || users.values().any(|x| x.name == u.name) {
            return err(StatusCode::CONFLICT, "duplicate user name or access key");
        }
        // Durable first: a user is only usable once it will survive a restart.
        if let Err(e) = st.iam.persist(None, Some(&u)) {
            return persist_failed(e);
        }
        users.insert(u.access_key_id.clone(), u.clone());
    }
    audit_iam_change(&st, "user_create", &u.name, &headers, &addr);
    let mut v = redacted(&u);
    v["secret_access_key"] = json!(u.secret_access_key);
    (StatusCode::CREATED, Json(v)).into_response()
}

async fn update_user(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(mut u): Json<UserSpec>,
) -> Response {
    if let Err(r) = require_session(&st, &headers, &addr).and_then(|_| declarative_guard(&st)) {
        return r;
    }
    let mut users = st.iam.users.write();
    let Some(old) = users.get(&id).cloned() else {
        return err(StatusCode::NOT_FOUND, "no such user");
    };
    if u.secret_access_key.is_empty() {
        u.secret_access_key = old.secret_access_key;
    }
    if u.name.starts_with('$') || u.name.is_empty() {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "names starting with $ are reserved",
        );
    }
    // A new key or name must not take over another user.
    if users
        .iter()
        .any(|(k, x)| k != &id && (k == &u.access_key_id || x.name == u.name))
    {
        return err(StatusCode::CONFLICT, "duplicate user name or access key");
    }
    let renamed = (u.access_key_id != id).then_some(id.as_str());
    if let Err(e) = st.iam.persist(renamed, Some(&u)) {
        return persist_failed(e);
    }
    users.remove(&id);
    users.insert(u.access_key_id.clone(), u.clone());
    drop(users);
    audit_iam_change(&st, "user_update", &u.name, &headers, &addr);
    Json(redacted(&u)).into_response()
}

async fn delete_user(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = require_session(&st, &headers, &addr).and_then(|_| declarative_guard(&st)) {
        return r;
    }
    if let Err(r) = remove_persisted(&st.iam.users, &id, "no such user", || {
        st.iam.persist(Some(&id), None)
    }) {
        return r;
    }
    audit_iam_change(&st, "user_delete", &id, &headers, &addr);
    StatusCode::NO_CONTENT.into_response()
}

async fn list_groups(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = require_session(&st, &headers, &addr) {
        return r;
    }
    let groups: Vec<_> = st.iam.groups.read().values().cloned().collect();
    Json(json!({ "groups": groups })).into_response()
}

async fn create_group(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(g): Json<GroupSpec>,
) -> Response {
    if let Err(r) = require_session(&st, &headers, &addr).and_then(|_| declarative_guard(&st)) {
        return r;
    }
    if g.name.starts_with('$') || g.name.is_empty() {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "names starting with $ are reserved",
        );
    }
    {
        let mut groups = st.iam.groups.write();
        if groups.contains_key(&g.name) {
            return err(StatusCode::CONFLICT, "duplicate group name");
        }
        if let Err(e) = st.iam.persist_group(None, Some(&g)) {
            return persist_failed(e);
        }
        groups.insert(g.name.clone(), g.clone());
    }
    audit_iam_change(&st, "group_create", &g.name, &headers, &addr);
    (StatusCode::CREATED, Json(g)).into_response()
}

/// Replaces a group (a changed `name` renames it; members keep the old name and so lose
/// its rules until they are updated).
async fn update_group(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(g): Json<GroupSpec>,
) -> Response {
    if let Err(r) = require_session(&st, &headers, &addr).and_then(|_| declarative_guard(&st)) {
        return r;
    }
    if g.name.starts_with('$') || g.name.is_empty() {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "names starting with $ are reserved",
        );
    }
    {
        let mut groups = st.iam.groups.write();
        if !groups.contains_key(&name) {
            return err(StatusCode::NOT_FOUND, "no such group");
        }
        if g.name != name && groups.contains_key(&g.name) {
            return err(StatusCode::CONFLICT, "duplicate group name");
        }
        let renamed = (g.name != name).then_some(name.as_str());
        if let Err(e) = st.iam.persist_group(renamed, Some(&g)) {
            return persist_failed(e);
        }
        groups.remove(&name);
        groups.insert(g.name.clone(), g.clone());
    }
    audit_iam_change(&st, "group_update", &g.name, &headers, &addr);
    Json(g).into_response()
}

async fn delete_group(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = require_session(&st, &headers, &addr).and_then(|_| declarative_guard(&st)) {
        return r;
    }
    if let Err(r) = remove_persisted(&st.iam.groups, &name, "no such group", || {
        st.iam.persist_group(Some(&name), None)
    }) {
        return r;
    }
    audit_iam_change(&st, "group_delete", &name, &headers, &addr);
    StatusCode::NO_CONTENT.into_response()
}

async fn policies() -> Json<serde_json::Value> {
    Json(json!({ "policies": [
        {"name": "read-only", "permissions": [{"effect": "Allow", "actions": ["read", "list"], "resources": ["*"]}]},
        {"name": "read-write", "permissions": [{"effect": "Allow", "actions": ["read", "write", "delete", "list"], "resources": ["*"]}]},
        {"name": "admin", "permissions": [{"effect": "Allow", "actions": ["*"], "resources": ["*"]}]},
    ]}))
}
