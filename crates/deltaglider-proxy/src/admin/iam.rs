//! IAM administration: users, groups and the canned policy templates.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{audit_iam_change, err, Admin, Body, St};
use crate::iam::{AdminOverlay, GroupSpec, UserSpec};
use crate::state::AppState;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/_/api/admin/users", get(list_users).post(create_user))
        .route(
            "/_/api/admin/users/{id}",
            put(update_user).delete(delete_user),
        )
        .route("/_/api/admin/users/{id}/rotate-keys", post(rotate_keys))
        .route("/_/api/admin/groups", get(list_groups).post(create_group))
        .route(
            "/_/api/admin/groups/{name}",
            put(update_group).delete(delete_group),
        )
        .route("/_/api/admin/groups/{name}/members", post(add_member))
        .route(
            "/_/api/admin/groups/{name}/members/{user_id}",
            delete(remove_member),
        )
        .route("/_/api/admin/policies", get(policies))
}

pub(super) fn redacted(u: &UserSpec) -> serde_json::Value {
    json!({
        "id": u.access_key_id, "name": u.name, "access_key_id": u.access_key_id, "enabled": u.enabled,
        "groups": u.groups, "permissions": u.permissions,
    })
}

async fn list_users(_: Admin, State(st): St) -> Response {
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

/// A user or group name from the API: 422 when empty or starting with `$` (the synthetic
/// principals `$bootstrap`, `$anonymous` …).
fn check_name(name: &str) -> Result<(), Response> {
    let why = if name.is_empty() {
        "name must not be empty"
    } else if name.starts_with('$') {
        RESERVED
    } else {
        return Ok(());
    };
    Err(err(StatusCode::UNPROCESSABLE_ENTITY, why))
}

const RESERVED: &str = "names starting with $ are reserved";

/// 422 naming the first permission the evaluator could not honour exactly.
fn check_permissions(perms: &[crate::iam::Permission]) -> Result<(), Response> {
    crate::iam::validate_permissions("permissions", perms)
        .map_err(|e| err(StatusCode::UNPROCESSABLE_ENTITY, &e))
}

/// A user from the API: its name as [`check_name`], and an access key id to sign with (an
/// empty one could never sign; backup import skips such users too).
fn check_user(u: &UserSpec) -> Result<(), Response> {
    check_name(&u.name)?;
    check_permissions(&u.permissions)?;
    if u.access_key_id.trim().is_empty() {
        return Err(err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "access_key_id must not be empty",
        ));
    }
    Ok(())
}

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

pub(super) fn persist_failed(e: crate::error::ProxyError) -> Response {
    tracing::error!(error = %e, "admin IAM change not persisted");
    err(StatusCode::INTERNAL_SERVER_ERROR, "persist_failed")
}

/// Every IAM and ext-auth mutation (and backup import) passes here: 403 `iam_declarative` when the YAML
/// owns IAM, 409 `config_db_locked` while the config store does not open (see recover-db).
pub(super) fn declarative_guard(st: &AppState) -> Result<(), Response> {
    if st.cfg.iam_declarative {
        return Err(err(StatusCode::FORBIDDEN, "iam_declarative"));
    }
    if st.iam.admin_store.as_ref().is_some_and(|s| s.is_locked()) {
        return Err(err(StatusCode::CONFLICT, "config_db_locked"));
    }
    Ok(())
}

/// One durable write for a change touching several entities; a no-op without a store.
pub(super) fn persist_batch(
    st: &AppState,
    f: impl FnOnce(&mut AdminOverlay),
) -> Result<(), crate::error::ProxyError> {
    match &st.iam.admin_store {
        Some(s) => s.change(f),
        None => Ok(()),
    }
}

async fn create_user(
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Body(mut u): Body<UserSpec>,
) -> Response {
    if let Err(r) = declarative_guard(&st) {
        return r;
    }
    if let Err(r) = check_user(&u) {
        return r;
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
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(mut u): Body<UserSpec>,
) -> Response {
    if let Err(r) = declarative_guard(&st) {
        return r;
    }
    let mut users = st.iam.users.write();
    let Some(old) = users.get(&id).cloned() else {
        return err(StatusCode::NOT_FOUND, "no such user");
    };
    if u.secret_access_key.is_empty() {
        u.secret_access_key = old.secret_access_key;
    }
    if let Err(r) = check_user(&u) {
        return r;
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
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = declarative_guard(&st) {
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

async fn list_groups(_: Admin, State(st): St) -> Response {
    let groups: Vec<_> = st.iam.groups.read().values().cloned().collect();
    Json(json!({ "groups": groups })).into_response()
}

async fn create_group(
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Body(g): Body<GroupSpec>,
) -> Response {
    if let Err(r) = declarative_guard(&st) {
        return r;
    }
    if let Err(r) = check_name(&g.name).and_then(|_| check_permissions(&g.permissions)) {
        return r;
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

/// Replaces a group; a changed `name` renames it and re-points its members, in one write.
async fn update_group(
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Body(g): Body<GroupSpec>,
) -> Response {
    if let Err(r) = declarative_guard(&st) {
        return r;
    }
    if let Err(r) = check_name(&g.name).and_then(|_| check_permissions(&g.permissions)) {
        return r;
    }
    {
        // Lock order users -> groups -> store, as everywhere.
        let mut users = st.iam.users.write();
        let mut groups = st.iam.groups.write();
        if !groups.contains_key(&name) {
            return err(StatusCode::NOT_FOUND, "no such group");
        }
        if g.name != name && groups.contains_key(&g.name) {
            return err(StatusCode::CONFLICT, "duplicate group name");
        }
        let renamed = (g.name != name).then_some(name.as_str());
        let members: Vec<UserSpec> = match renamed {
            Some(old) => users
                .values()
                .filter(|u| u.groups.iter().any(|x| x == old))
                .map(|u| {
                    let mut u = u.clone();
                    for x in &mut u.groups {
                        if x == old {
                            *x = g.name.clone();
                        }
                    }
                    u.groups.dedup();
                    u
                })
                .collect(),
            None => vec![],
        };
        if let Err(e) = persist_batch(&st, |o| {
            o.record_group(renamed, Some(&g));
            for u in &members {
                o.record_user(None, Some(u));
            }
        }) {
            return persist_failed(e);
        }
        groups.remove(&name);
        groups.insert(g.name.clone(), g.clone());
        for u in members {
            users.insert(u.access_key_id.clone(), u);
        }
    }
    audit_iam_change(&st, "group_update", &g.name, &headers, &addr);
    Json(g).into_response()
}

async fn delete_group(
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = declarative_guard(&st) {
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

/// `POST /_/api/admin/users/{id}/rotate-keys`: a new access key id and secret for the user;
/// the old pair stops working at once. Answers the new pair (shown once).
async fn rotate_keys(
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = declarative_guard(&st) {
        return r;
    }
    let mut users = st.iam.users.write();
    let Some(old) = users.get(&id).cloned() else {
        return err(StatusCode::NOT_FOUND, "no such user");
    };
    if old.name.starts_with('$') {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the bootstrap key pair is rotated through DGP_ACCESS_KEY_ID / DGP_SECRET_ACCESS_KEY",
        );
    }
    let mut u = old.clone();
    u.access_key_id = loop {
        let k = format!("DG{}", hex::encode_upper(rand::random::<[u8; 9]>()));
        if !users.contains_key(&k) {
            break k;
        }
    };
    u.secret_access_key = hex::encode(rand::random::<[u8; 20]>());
    if let Err(e) = st.iam.persist(Some(&id), Some(&u)) {
        return persist_failed(e);
    }
    users.remove(&id);
    users.insert(u.access_key_id.clone(), u.clone());
    drop(users);
    audit_iam_change(&st, "user_rotate_keys", &u.name, &headers, &addr);
    let mut v = redacted(&u);
    v["secret_access_key"] = json!(u.secret_access_key);
    Json(v).into_response()
}

#[derive(Deserialize)]
struct Member {
    user_id: String,
}

/// Adds or removes `group` on the user with access key `user_id`, durably.
fn set_membership(
    st: &AppState,
    group: &str,
    user_id: &str,
    member: bool,
) -> Result<UserSpec, Response> {
    let mut users = st.iam.users.write();
    if !st.iam.groups.read().contains_key(group) {
        return Err(err(StatusCode::NOT_FOUND, "no such group"));
    }
    let Some(mut u) = users.get(user_id).cloned() else {
        return Err(err(StatusCode::NOT_FOUND, "no such user"));
    };
    if u.name.starts_with('$') {
        return Err(err(StatusCode::UNPROCESSABLE_ENTITY, RESERVED));
    }
    let is_member = u.groups.iter().any(|g| g == group);
    match (member, is_member) {
        (true, true) => return Err(err(StatusCode::CONFLICT, "already a member")),
        (false, false) => return Err(err(StatusCode::NOT_FOUND, "not a member")),
        (true, false) => u.groups.push(group.to_string()),
        (false, true) => u.groups.retain(|g| g != group),
    }
    st.iam.persist(None, Some(&u)).map_err(persist_failed)?;
    users.insert(u.access_key_id.clone(), u.clone());
    Ok(u)
}

/// `POST /_/api/admin/groups/{name}/members` `{user_id}` (the user's access key id).
async fn add_member(
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Body(m): Body<Member>,
) -> Response {
    if let Err(r) = declarative_guard(&st) {
        return r;
    }
    match set_membership(&st, &name, &m.user_id, true) {
        Ok(u) => {
            audit_iam_change(
                &st,
                "group_member_add",
                &format!("{name}/{}", u.name),
                &headers,
                &addr,
            );
            Json(redacted(&u)).into_response()
        }
        Err(r) => r,
    }
}

/// `DELETE /_/api/admin/groups/{name}/members/{user_id}`.
async fn remove_member(
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((name, user_id)): Path<(String, String)>,
) -> Response {
    if let Err(r) = declarative_guard(&st) {
        return r;
    }
    match set_membership(&st, &name, &user_id, false) {
        Ok(u) => {
            audit_iam_change(
                &st,
                "group_member_remove",
                &format!("{name}/{}", u.name),
                &headers,
                &addr,
            );
            StatusCode::NO_CONTENT.into_response()
        }
        Err(r) => r,
    }
}
