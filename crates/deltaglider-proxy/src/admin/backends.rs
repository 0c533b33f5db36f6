//! Named backends over the admin API: list (secrets never shown), create (validated, S3
//! credentials checked with a real call, persisted to the config file, routable at once),
//! delete (refused for the default backend or one a bucket routes to), and the standalone
//! S3 endpoint/credentials check.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::config::{file_doc, write_atomic};
use super::{audit_iam_change, err, Admin};
use crate::backend::build::{self, BuildCtx};
use crate::backend::s3::{check_credentials, S3BackendConfig};
use crate::config::BackendSpec;
use crate::state::AppState;

/// Creates and deletes run one at a time: each reads the config file, edits it and writes it
/// back, then changes the running registry.
static MUTATION: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/_/api/admin/backends",
            get(list_backends).post(create_backend),
        )
        .route("/_/api/admin/backends/{name}", delete(delete_backend))
        .route("/_/api/admin/test-s3", post(test_s3))
}

/// A backend as the API shows it: the config entry without secrets (serde skips them), plus
/// whether it is the default and which buckets route to it.
fn view(st: &AppState, b: &BackendSpec, default: &str) -> serde_json::Value {
    let mut v = serde_json::to_value(b).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.retain(|_, x| !x.is_null());
        m.insert("is_default".into(), json!(b.name == default));
        m.insert("buckets".into(), json!(routed_buckets(st, &b.name)));
    }
    v
}

/// Buckets whose live policy routes to `name` explicitly (unrouted buckets use the default).
fn routed_buckets(st: &AppState, name: &str) -> Vec<String> {
    st.engine
        .policies
        .read()
        .iter()
        .filter(|(_, p)| p.backend.as_deref() == Some(name))
        .map(|(k, _)| k.clone())
        .collect()
}

/// `GET /_/api/admin/backends`: the named backends, or the singleton as `default` with
/// `singleton: true` when the config declares none.
async fn list_backends(_: Admin, State(st): State<Arc<AppState>>) -> Response {
    let default = st.engine.default_backend().to_string();
    let named = st.file.read().storage.backends.clone();
    let backends: Vec<serde_json::Value> = if named.is_empty() {
        vec![singleton_view(&st, &default)]
    } else {
        named.iter().map(|b| view(&st, b, &default)).collect()
    };
    Json(json!({ "default_backend": default, "backends": backends })).into_response()
}

/// The singleton backend (configured by `DGP_S3_ENDPOINT` / `DGP_DATA_DIR` or the file's
/// shorthands), described without credentials' secrets.
fn singleton_view(st: &AppState, default: &str) -> serde_json::Value {
    let mut v = json!({
        "name": default,
        "type": st.engine.backend_kind(),
        "singleton": true,
        "is_default": true,
        "buckets": routed_buckets(st, default),
    });
    match st.cfg.default_s3() {
        Ok(Some(s3)) => {
            v["endpoint"] = json!(s3.endpoint);
            v["region"] = json!(s3.region);
            v["force_path_style"] = json!(s3.path_style);
            v["access_key_id"] = json!(s3.access_key_id);
        }
        _ => v["path"] = json!(st.cfg.data_dir.display().to_string()),
    }
    if let Some(e) = &st.file.read().storage.backend_encryption {
        v["encryption"] = serde_json::to_value(e).unwrap_or_default();
    }
    v
}

fn bad_request(msg: &str) -> Response {
    err(StatusCode::BAD_REQUEST, msg)
}

/// Field checks that need no network: name, type, the type's required fields, encryption.
fn validate_spec(b: &BackendSpec) -> Result<(), Response> {
    if !crate::config::valid_backend_name(&b.name) {
        return Err(bad_request(
            "invalid backend name: 1-64 characters [A-Za-z0-9_.-], starting with a letter or digit",
        ));
    }
    match b.kind.as_str() {
        "filesystem" => {
            // A relative path would resolve against whatever directory the proxy runs in.
            let ok = b
                .path
                .as_deref()
                .is_some_and(|p| std::path::Path::new(p).is_absolute() && !p.contains(".."));
            if !ok {
                return Err(bad_request(
                    "a filesystem backend needs an absolute path without ..",
                ));
            }
        }
        "s3" => {
            let blank = |v: &Option<String>| v.as_deref().is_none_or(|s| s.trim().is_empty());
            if blank(&b.access_key_id) || blank(&b.secret_access_key) {
                return Err(bad_request(
                    "an S3 backend needs access_key_id and secret_access_key",
                ));
            }
            build::s3_config(b).map_err(|e| bad_request(&e.to_string()))?;
        }
        _ => return Err(bad_request("type must be s3 or filesystem")),
    }
    if let Some(e) = &b.encryption {
        crate::config::validate_encryption(&b.name, &b.kind, e)
            .map_err(|e| bad_request(&e.to_string()))?;
    }
    Ok(())
}

/// The entry as written to the config file: the API view plus the secrets it carries.
fn file_entry(b: &BackendSpec) -> serde_json::Value {
    let mut v = serde_json::to_value(b).unwrap_or_default();
    if let Some(s) = &b.secret_access_key {
        v["secret_access_key"] = json!(s);
    }
    if let Some(e) = &b.encryption {
        if let Some(k) = &e.key {
            v["encryption"]["key"] = json!(k);
        }
        if let Some(k) = &e.legacy_key {
            v["encryption"]["legacy_key"] = json!(k);
        }
    }
    crate::config_doc::prune(v).unwrap_or_default()
}

/// Applies `edit` to `storage.backends` of the config file in use and writes it back.
/// `Ok(None)`: no writable file is in use (the change is live only, with a warning).
fn persist_backends(
    st: &AppState,
    warnings: &mut Vec<String>,
    edit: impl FnOnce(&mut Vec<serde_json::Value>),
) -> Result<Option<std::path::PathBuf>, String> {
    let (path, mut doc) = match file_doc(st) {
        Ok(x) => x,
        Err(w) => {
            warnings.push(w);
            return Ok(None);
        }
    };
    if !doc["storage"].is_object() {
        doc["storage"] = json!({});
    }
    let mut list: Vec<serde_json::Value> = doc["storage"]["backends"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    edit(&mut list);
    doc["storage"]["backends"] = serde_json::Value::Array(list);
    write_atomic(&path, &doc).map(|_| Some(path))
}

fn persist_failed(e: String) -> Response {
    tracing::error!(error = %e, "backend change not persisted");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": format!("config file not written, nothing changed: {e}"), "persisted": false })),
    )
        .into_response()
}

/// `POST /_/api/admin/backends`: `{name, type: s3|filesystem, endpoint, region,
/// force_path_style, access_key_id, secret_access_key | path, encryption?}`. Usable at once:
/// buckets can be routed to it by a `storage` section PUT or config apply.
async fn create_backend(
    _: Admin,
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<BackendSpec>, JsonRejection>,
) -> Response {
    let mut spec = match body {
        Ok(Json(b)) => b,
        Err(e) => return bad_request(&format!("invalid backend: {}", e.body_text())),
    };
    spec.name = spec.name.trim().to_string();
    if let Err(r) = validate_spec(&spec) {
        return r;
    }
    let _guard = MUTATION.lock().await;
    let existing = st.file.read().storage.backends.clone();
    if existing.is_empty() {
        // `storage.backends` replaces the singleton when non-empty: persisting one entry would
        // silently move every unrouted bucket to it on the next start.
        return err(
            StatusCode::CONFLICT,
            "this proxy runs on the singleton storage backend; declare it under storage.backends (with default_backend) and restart before adding named backends",
        );
    }
    if let Some(b) = existing
        .iter()
        .find(|b| b.name == spec.name || build::env_infix(&b.name) == build::env_infix(&spec.name))
    {
        return err(
            StatusCode::CONFLICT,
            &format!(
                "backend {:?} already exists (names equal after DGP_BACKEND_<NAME>_* mapping count as the same)",
                b.name
            ),
        );
    }
    if st.engine.has_backend(&spec.name) {
        return err(StatusCode::CONFLICT, "a backend with this name is running");
    }
    if spec.kind == "s3" {
        let cfg: S3BackendConfig = match build::s3_config(&spec) {
            Ok(c) => c,
            Err(e) => return bad_request(&e.to_string()),
        };
        if let Err(e) = check_credentials(&cfg, None).await {
            return bad_request(&format!("S3 credentials check failed: {e}"));
        }
    }
    let mut pins = match build::pins_of(&existing) {
        Ok(p) => p,
        Err(e) => return err(StatusCode::CONFLICT, &e.to_string()),
    };
    let ctx = BuildCtx::from_config(&st.cfg);
    let be = match build::build_named(&spec, &ctx, &mut pins) {
        Ok(be) => be,
        Err(e @ crate::error::ProxyError::Config(_)) => {
            return err(StatusCode::CONFLICT, &e.to_string())
        }
        Err(e) => return bad_request(&e.to_string()),
    };
    // Durable first: a backend is only usable once it will survive a restart.
    let mut warnings = vec![];
    let entry = file_entry(&spec);
    let persisted = match persist_backends(&st, &mut warnings, |l| l.push(entry)) {
        Ok(p) => p,
        Err(e) => return persist_failed(e),
    };
    st.engine.add_backend(&spec.name, be);
    st.file.write().storage.backends.push(spec.clone());
    audit_iam_change(&st, "backend_create", &spec.name, &headers, &addr);
    let default = st.engine.default_backend().to_string();
    let mut v = view(&st, &spec, &default);
    v["persisted"] = json!(persisted.is_some());
    v["persisted_path"] = json!(persisted.map(|p| p.display().to_string()));
    v["requires_restart"] = json!(false);
    v["warnings"] = json!(warnings);
    (StatusCode::CREATED, Json(v)).into_response()
}

/// `DELETE /_/api/admin/backends/{name}`: 409 for the default backend or one a bucket
/// routes to (re-route those buckets first), 404 for an unknown name.
async fn delete_backend(
    _: Admin,
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let _guard = MUTATION.lock().await;
    let default = st.engine.default_backend().to_string();
    if name == default {
        return err(
            StatusCode::CONFLICT,
            &format!("backend {name:?} is the default backend and cannot be deleted; change storage.default_backend first"),
        );
    }
    if !st
        .file
        .read()
        .storage
        .backends
        .iter()
        .any(|b| b.name == name)
    {
        return err(StatusCode::NOT_FOUND, &format!("no backend named {name:?}"));
    }
    let routed = routed_buckets(&st, &name);
    if !routed.is_empty() {
        return err(
            StatusCode::CONFLICT,
            &format!(
                "backend {name:?} is in use by bucket(s) {}; route them elsewhere first",
                routed.join(", ")
            ),
        );
    }
    let mut warnings = vec![];
    let persisted = match persist_backends(&st, &mut warnings, |l| {
        l.retain(|b| b.get("name").and_then(|n| n.as_str()) != Some(name.as_str()))
    }) {
        Ok(p) => p,
        Err(e) => return persist_failed(e),
    };
    st.engine.remove_backend(&name);
    st.file.write().storage.backends.retain(|b| b.name != name);
    audit_iam_change(&st, "backend_delete", &name, &headers, &addr);
    Json(json!({
        "deleted": name,
        "persisted": persisted.is_some(),
        "persisted_path": persisted.map(|p| p.display().to_string()),
        "warnings": warnings,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct TestS3 {
    endpoint: String,
    region: Option<String>,
    force_path_style: Option<bool>,
    access_key_id: String,
    secret_access_key: String,
    /// When given, the check is a HeadBucket on it (credentials scoped to one bucket may not
    /// list buckets); otherwise ListBuckets.
    bucket: Option<String>,
}

/// `POST /_/api/admin/test-s3`: `{ok: true}` or `{ok: false, error}` from one real call.
async fn test_s3(_: Admin, body: Result<Json<TestS3>, JsonRejection>) -> Response {
    let t = match body {
        Ok(Json(t)) => t,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"ok": false, "error": e.body_text()})),
            )
                .into_response()
        }
    };
    if !(t.endpoint.starts_with("http://") || t.endpoint.starts_with("https://")) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"ok": false, "error": "endpoint must start with http:// or https://"})),
        )
            .into_response();
    }
    let cfg = S3BackendConfig {
        endpoint: t.endpoint,
        region: t.region.unwrap_or_else(|| "us-east-1".into()),
        path_style: t.force_path_style.unwrap_or(true),
        access_key_id: t.access_key_id,
        secret_access_key: t.secret_access_key,
    };
    match check_credentials(&cfg, t.bucket.as_deref()).await {
        Ok(()) => Json(json!({"ok": true})),
        Err(e) => Json(json!({"ok": false, "error": e})),
    }
    .into_response()
}
