//! The `/_/` surface on the S3 port: health, Prometheus metrics, stats, a minimal admin UI
//! page and the admin JSON API (bootstrap-password login with IP-bound cookie sessions,
//! whoami, IAM users and groups, audit ring, config sections: read, export, validate, merge-patch
//! PUT and whole-file apply with live reload of the hot settings).

// Handlers return early with a ready response; boxing it buys nothing here.
#![allow(clippy::result_large_err)]

mod backup;
mod iam;
mod password;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::state::AppState;

pub use session::{LoginLimiter, Sessions};

type St = State<Arc<AppState>>;

fn client_ip(st: &AppState, headers: &HeaderMap, addr: &SocketAddr) -> String {
    if st.cfg.trust_proxy_headers {
        if let Some(v) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            return v.split(',').next().unwrap_or("").trim().to_string();
        }
        if let Some(v) = headers.get("x-real-ip").and_then(|v| v.to_str().ok()) {
            return v.trim().to_string();
        }
    }
    addr.ip().to_string()
}

/// Record an IAM change made through the admin API in the audit ring.
fn audit_iam_change(
    st: &AppState,
    action: &str,
    target: &str,
    headers: &HeaderMap,
    addr: &SocketAddr,
) {
    st.audit.record(
        action,
        "admin",
        target,
        &client_ip(st, headers, addr),
        "",
        "",
        "",
    );
}

fn err(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({ "error": msg }))).into_response()
}

/// Admin gate: a valid session cookie bound to this client IP (401 otherwise) whose owner is
/// an admin: the bootstrap login or an admin IAM user (403 `admin_required` otherwise).
fn require_session(st: &AppState, headers: &HeaderMap, addr: &SocketAddr) -> Result<(), Response> {
    let (_, entry) = session::any_session(st, headers, addr)?;
    if !session::is_admin(st, &entry.who) {
        return Err(err(StatusCode::FORBIDDEN, "admin_required"));
    }
    Ok(())
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/_/", get(ui))
        .route("/_/health", get(health))
        .route("/_/metrics", get(metrics_text))
        .route("/_/stats", get(stats))
        .route("/_/api/admin/audit", get(audit))
        .route(
            "/_/api/admin/config/section/{name}",
            get(config_section).put(config_section_put),
        )
        .route("/_/api/admin/config/apply", post(config_apply))
        .route("/_/api/admin/config/export", get(config_export))
        .route("/_/api/admin/config/validate", post(config_validate))
        .merge(session::routes())
        .merge(iam::routes())
        .merge(password::routes())
        .merge(backup::routes())
        .with_state(state)
}

async fn ui() -> Html<&'static str> {
    Html(include_str!("ui.html"))
}

async fn health(State(st): St) -> Json<serde_json::Value> {
    let c = st.engine.cache.stats();
    Json(json!({
        "status": "healthy",
        "peak_rss_bytes": peak_rss_bytes(),
        "cache_size_bytes": c.size_bytes,
        "cache_entries": c.entries,
        "cache_max_bytes": c.max_bytes,
    }))
}

/// Peak resident set size from /proc (Linux), 0 elsewhere.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

async fn metrics_text(State(st): St) -> Response {
    // Gauges computed at scrape time.
    let c = st.engine.cache.stats();
    metrics::gauge!("deltaglider_cache_size_bytes").set(c.size_bytes as f64);
    metrics::gauge!("deltaglider_cache_entries").set(c.entries as f64);
    metrics::gauge!("deltaglider_cache_max_bytes").set(c.max_bytes as f64);
    metrics::gauge!("deltaglider_cache_utilization_ratio").set(if c.max_bytes == 0 {
        0.0
    } else {
        c.size_bytes as f64 / c.max_bytes as f64
    });
    let total = c.hits + c.misses;
    metrics::gauge!("deltaglider_cache_miss_rate_ratio").set(if total == 0 {
        0.0
    } else {
        c.misses as f64 / total as f64
    });
    metrics::gauge!("process_peak_rss_bytes").set(peak_rss_bytes() as f64);
    scai_core::metrics::metrics_handler().await
}

async fn stats(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = require_session(&st, &headers, &addr) {
        return r;
    }
    let mut total_objects = 0u64;
    let mut original = 0u64;
    let mut stored = 0u64;
    let mut truncated = false;
    let buckets = st.engine.list_buckets().await.unwrap_or_default();
    'outer: for (b, _) in buckets {
        let (be, real) = st.engine.route(&b);
        for o in be.list(&real, "", true).await.unwrap_or_default() {
            if total_objects >= 1000 {
                truncated = true;
                break 'outer;
            }
            stored += o.size;
            if o.key.ends_with(crate::meta::REFERENCE_NAME) {
                continue;
            }
            total_objects += 1;
            original += o.meta.as_ref().map(|m| m.file_size).unwrap_or(o.size);
        }
    }
    let savings = if original == 0 {
        0.0
    } else {
        100.0 * (1.0 - stored as f64 / original as f64)
    };
    Json(json!({
        "total_objects": total_objects,
        "total_original_size": original,
        "total_stored_size": stored,
        "savings_percentage": savings,
        "truncated": truncated,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn audit(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<Limit>,
) -> Response {
    if let Err(r) = require_session(&st, &headers, &addr) {
        return r;
    }
    Json(json!({ "entries": st.audit.recent(q.limit.unwrap_or(100).min(10_000)) })).into_response()
}

#[derive(Deserialize)]
struct Format {
    format: Option<String>,
}

/// The running file config with the live bucket policies.
fn live_file(st: &AppState) -> crate::config::FileConfig {
    let mut fc = st.file.read().clone();
    fc.storage.buckets = st.engine.policies.read().clone();
    fc
}

/// One section as JSON, secrets redacted (serde skips backend and encryption secrets; user
/// secrets are blanked to "" as the spec's exports do). `None` for an unknown name.
fn section_value(fc: &crate::config::FileConfig, name: &str) -> Option<serde_json::Value> {
    let v = match name {
        "storage" => serde_json::to_value(&fc.storage),
        "access" => {
            let mut a = fc.access.clone();
            for u in &mut a.iam_users {
                u.secret_access_key = String::new();
            }
            serde_json::to_value(&a)
        }
        "advanced" => serde_json::to_value(&fc.advanced),
        "admission" => Ok(json!({"blocks": []})),
        _ => return None,
    };
    Some(v.unwrap_or_default())
}

/// Canonical form: nulls, empty lists and empty maps are left out (they are the defaults).
fn prune(v: serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::Value;
    match v {
        Value::Null => None,
        Value::Array(a) => {
            let a: Vec<Value> = a.into_iter().filter_map(prune).collect();
            (!a.is_empty()).then_some(Value::Array(a))
        }
        Value::Object(m) => {
            let m: serde_json::Map<String, Value> = m
                .into_iter()
                .filter_map(|(k, v)| prune(v).map(|v| (k, v)))
                .collect();
            (!m.is_empty()).then_some(Value::Object(m))
        }
        other => Some(other),
    }
}

#[derive(Deserialize)]
struct ExportQuery {
    section: Option<String>,
}

const SECTIONS: [&str; 4] = ["admission", "access", "storage", "advanced"];

/// `GET /_/api/admin/config/export[?section=]`: canonical YAML, secrets redacted.
async fn config_export(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<ExportQuery>,
) -> Response {
    if let Err(r) = require_session(&st, &headers, &addr) {
        return r;
    }
    let fc = live_file(&st);
    let names: Vec<&str> = match q.section.as_deref() {
        Some(n) if SECTIONS.contains(&n) => vec![n],
        Some(_) => return err(StatusCode::NOT_FOUND, "unknown section"),
        None => SECTIONS.to_vec(),
    };
    let mut doc = serde_json::Map::new();
    for n in names {
        if let Some(v) = section_value(&fc, n).and_then(prune) {
            doc.insert(n.to_string(), v);
        }
    }
    let y = serde_yaml::to_string(&serde_json::Value::Object(doc)).unwrap_or_default();
    ([(http::header::CONTENT_TYPE, "application/yaml")], y).into_response()
}

#[derive(Deserialize)]
struct ValidateBody {
    yaml: String,
}

/// `POST /_/api/admin/config/validate` `{yaml}`: full dry run (parse + the start-up
/// validation), nothing is applied. Always 200 with `{ok, errors[], warnings[],
/// requires_restart}`: this proxy reads its file at start only.
async fn config_validate(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<ValidateBody>,
) -> Response {
    if let Err(r) = require_session(&st, &headers, &addr) {
        return r;
    }
    let parsed: Result<crate::config::FileConfig, String> =
        serde_yaml::from_str(&body.yaml).map_err(|e| e.to_string());
    let result = parsed.and_then(|fc| {
        crate::config::validate_file(&fc)
            .map(|_| crate::config::lint_file(&fc))
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(warnings) => Json(json!({
            "ok": true, "errors": [], "warnings": warnings, "requires_restart": true
        })),
        Err(e) => Json(json!({
            "ok": false, "errors": [e], "warnings": [], "requires_restart": false
        })),
    }
    .into_response()
}

async fn config_section(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(f): Query<Format>,
) -> Response {
    if let Err(r) = require_session(&st, &headers, &addr) {
        return r;
    }
    let Some(value) = section_value(&live_file(&st), &name) else {
        return err(StatusCode::NOT_FOUND, "unknown section");
    };
    if f.format.as_deref() == Some("yaml") {
        let y = serde_yaml::to_string(&value).unwrap_or_default();
        return ([(http::header::CONTENT_TYPE, "application/yaml")], y).into_response();
    }
    Json(value).into_response()
}

/// Placeholders a redacted read shows for a secret; a patch carrying one keeps the stored value.
fn is_placeholder(v: &serde_json::Value) -> bool {
    matches!(v.as_str(), Some("" | "***" | "<redacted>"))
}

const SECRET_KEYS: [&str; 3] = ["secret_access_key", "key", "legacy_key"];

/// RFC 7396 merge patch: objects merge key by key, `null` deletes, anything else replaces.
fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Puts the stored secret back wherever `new` carries a placeholder (or, for array items matched
/// by `name` / `access_key_id`, omits the secret): redacted reads round-trip unchanged.
fn restore_secrets(new: &mut serde_json::Value, old: &serde_json::Value) {
    use serde_json::Value;
    match (new, old) {
        (Value::Object(n), Value::Object(o)) => {
            for k in SECRET_KEYS {
                let keep = n.get(k).is_none_or(is_placeholder);
                if keep {
                    match o.get(k) {
                        Some(ov) if !is_placeholder(ov) => {
                            n.insert(k.to_string(), ov.clone());
                        }
                        _ => {}
                    }
                }
            }
            for (k, nv) in n.iter_mut() {
                if let Some(ov) = o.get(k) {
                    restore_secrets(nv, ov);
                }
            }
        }
        (Value::Array(n), Value::Array(o)) => {
            for item in n.iter_mut() {
                let id = |v: &Value| {
                    v.get("access_key_id")
                        .or_else(|| v.get("name"))
                        .cloned()
                        .filter(|x| !x.is_null())
                };
                let Some(nid) = id(item) else { continue };
                if let Some(oi) = o.iter().find(|oi| id(oi).as_ref() == Some(&nid)) {
                    restore_secrets(item, oi);
                }
            }
        }
        _ => {}
    }
}

/// Removes placeholder secrets from a patch so that merging it cannot blank a stored secret.
fn strip_placeholders(v: &mut serde_json::Value) {
    if let serde_json::Value::Object(m) = v {
        m.retain(|k, x| !(SECRET_KEYS.contains(&k.as_str()) && is_placeholder(x)));
        for x in m.values_mut() {
            strip_placeholders(x);
        }
    }
}

/// The YAML file in use as JSON, or why it cannot be rewritten.
fn file_doc(st: &AppState) -> Result<(std::path::PathBuf, serde_json::Value), String> {
    let Some(path) = st.cfg.config_path.clone() else {
        return Err(
            "no configuration file in use (set DGP_CONFIG): change is not persisted".into(),
        );
    };
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
    {
        return Err(format!(
            "{} is TOML: not rewritten, convert it to YAML",
            path.display()
        ));
    }
    let doc = match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().is_empty() => json!({}),
        Ok(t) => serde_yaml::from_str(&t).map_err(|e| format!("{}: {e}", path.display()))?,
        // A named file that does not exist is not "in use": nothing is created behind the
        // operator's back.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "{} does not exist: change is not persisted",
                path.display()
            ))
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    Ok((path, if doc.is_null() { json!({}) } else { doc }))
}

/// Write-temp-then-rename, so a crash never leaves a half-written config file.
fn write_atomic(path: &std::path::Path, doc: &serde_json::Value) -> Result<(), String> {
    let y = serde_yaml::to_string(doc).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, y).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Applies what is hot-reloadable in `new` versus the running file config, records the new
/// config as current, and lists the changed keys that only take effect after a restart.
fn apply_live(
    st: &AppState,
    new: crate::config::FileConfig,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let old = st.file.read().clone();
    let (mut applied, mut restart, mut warnings) = (vec![], vec![], vec![]);
    let secs = |fc: &crate::config::FileConfig| -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for n in ["access", "storage", "advanced"] {
            m.insert(n.into(), section_value(fc, n).unwrap_or_default());
        }
        serde_json::Value::Object(m)
    };
    let mut live_old = old.clone();
    live_old.storage.buckets = st.engine.policies.read().clone();
    let (ov, nv) = (secs(&live_old), secs(&new));
    let mut changed = vec![];
    for n in ["access", "storage", "advanced"] {
        let (o, nn) = (&ov[n], &nv[n]);
        let keys: std::collections::BTreeSet<&String> = o
            .as_object()
            .into_iter()
            .chain(nn.as_object())
            .flat_map(|m| m.keys())
            .collect();
        for k in keys {
            if o.get(k) != nn.get(k) {
                changed.push(format!("{n}.{k}"));
            }
        }
    }
    // Secrets are not in the redacted comparison; a changed one needs a restart to be used.
    if old.access.secret_access_key != new.access.secret_access_key
        && !changed.contains(&"access.secret_access_key".to_string())
    {
        changed.push("access.secret_access_key".into());
    }
    for key in changed {
        match key.as_str() {
            "advanced.max_delta_ratio" => {
                if std::env::var_os("DGP_MAX_DELTA_RATIO").is_some() {
                    warnings.push(
                        "DGP_MAX_DELTA_RATIO is set and wins over advanced.max_delta_ratio".into(),
                    );
                    restart.push(key);
                } else {
                    st.engine
                        .set_max_delta_ratio(new.advanced.max_delta_ratio.unwrap_or(0.75));
                    applied.push(key);
                }
            }
            "advanced.max_object_size" => {
                if std::env::var_os("DGP_MAX_OBJECT_SIZE").is_some() {
                    warnings.push(
                        "DGP_MAX_OBJECT_SIZE is set and wins over advanced.max_object_size".into(),
                    );
                    restart.push(key);
                } else {
                    st.engine
                        .set_max_object_size(new.advanced.max_object_size.unwrap_or(104_857_600));
                    applied.push(key);
                }
            }
            "storage.buckets" => {
                *st.engine.policies.write() = new.storage.buckets.clone();
                applied.push(key);
            }
            _ => restart.push(key),
        }
    }
    *st.file.write() = new;
    (applied, restart, warnings)
}

fn check_live(fc: &crate::config::FileConfig) -> Result<Vec<String>, String> {
    crate::config::validate_file(fc).map_err(|e| e.to_string())?;
    if fc
        .advanced
        .max_delta_ratio
        .is_some_and(|r| !(0.0..=1.0).contains(&r))
    {
        return Err("advanced.max_delta_ratio must be within 0..1".into());
    }
    Ok(crate::config::lint_file(fc))
}

fn bad_config(e: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"ok": false, "errors": [e], "applied": [], "persisted": false})),
    )
        .into_response()
}

fn answer(
    applied: Vec<String>,
    restart: Vec<String>,
    warnings: Vec<String>,
    persist: Result<Option<std::path::PathBuf>, String>,
) -> Response {
    let (persisted, path) = match persist {
        Ok(Some(p)) => (true, Some(p.display().to_string())),
        Ok(None) => (false, None),
        Err(e) => {
            // A failed write of an existing file is a server error (the spec's HTTP 500).
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(
                    json!({"applied": applied, "persisted": false, "requires_restart": restart,
                    "warnings": warnings, "errors": [e]}),
                ),
            )
                .into_response();
        }
    };
    Json(
        json!({"applied": applied, "persisted": persisted, "requires_restart": restart,
        "warnings": warnings, "persisted_path": path}),
    )
    .into_response()
}

/// `PUT /_/api/admin/config/section/:name`: RFC 7396 merge patch on one section.
async fn config_section_put(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(patch): Json<serde_json::Value>,
) -> Response {
    if let Err(r) = require_session(&st, &headers, &addr) {
        return r;
    }
    if !SECTIONS.contains(&name.as_str()) {
        return err(StatusCode::NOT_FOUND, "unknown section");
    }
    if !patch.is_object() {
        return bad_config("a merge patch must be a JSON object".into());
    }
    if name == "admission" {
        return bad_config("admission blocks are not implemented".into());
    }
    let mut clean = patch.clone();
    strip_placeholders(&mut clean);
    // Live: merge into the running (redacted) section, then restore its secrets.
    let cur = live_file(&st);
    let mut full = serde_json::to_value(&cur).unwrap_or_default();
    merge_patch(&mut full[name.as_str()], &clean);
    let mut new: crate::config::FileConfig = match serde_json::from_value(full) {
        Ok(f) => f,
        Err(e) => return bad_config(format!("{name}: {e}")),
    };
    restore_struct_secrets(&mut new, &cur, &json!({ name.as_str(): clean.clone() }));
    let mut warnings = match check_live(&new) {
        Ok(w) => w,
        Err(e) => return bad_config(e),
    };
    // Persist: the same patch merged into the file text, which holds the real secrets.
    let persist = match file_doc(&st) {
        Ok((path, mut doc)) => {
            let old_sec = doc.get(name.as_str()).cloned().unwrap_or(json!({}));
            merge_patch(&mut doc[name.as_str()], &clean);
            restore_secrets(&mut doc[name.as_str()], &old_sec);
            write_atomic(&path, &doc).map(|_| Some(path))
        }
        Err(w) => {
            warnings.push(w);
            Ok(None)
        }
    };
    if persist.is_err() {
        // The file could not be written: change nothing, so file and runtime stay in step.
        return answer(vec![], vec![], warnings, persist);
    }
    let (applied, restart, w2) = apply_live(&st, new);
    warnings.extend(w2);
    audit_iam_change(&st, "config.section", &name, &headers, &addr);
    answer(applied, restart, warnings, persist)
}

/// Secrets are never serialized, so the merged struct lacks them: take them from the running
/// config unless the patch set a real value (or null, which deletes).
fn restore_struct_secrets(
    new: &mut crate::config::FileConfig,
    cur: &crate::config::FileConfig,
    patch: &serde_json::Value,
) {
    // Given = set to a real value or to null (delete); a placeholder is not a value.
    let given = |sec: &str, k: &str| {
        patch
            .get(sec)
            .and_then(|s| s.get(k))
            .is_some_and(|v| !is_placeholder(v))
    };
    if !given("access", "secret_access_key") {
        new.access.secret_access_key = cur.access.secret_access_key.clone();
    }
    if !given("storage", "secret_access_key") {
        new.storage.secret_access_key = cur.storage.secret_access_key.clone();
    }
    for u in &mut new.access.iam_users {
        if u.secret_access_key.is_empty() || u.secret_access_key == "***" {
            if let Some(o) = cur
                .access
                .iam_users
                .iter()
                .find(|o| o.access_key_id == u.access_key_id)
            {
                u.secret_access_key = o.secret_access_key.clone();
            }
        }
    }
    let fix = |b: &mut crate::config::BackendSpec, o: &crate::config::BackendSpec| {
        if b.secret_access_key.is_none() {
            b.secret_access_key = o.secret_access_key.clone();
        }
        if let (Some(e), Some(oe)) = (b.encryption.as_mut(), o.encryption.as_ref()) {
            e.key = e.key.take().or(oe.key.clone());
            e.legacy_key = e.legacy_key.take().or(oe.legacy_key.clone());
        }
    };
    if let (Some(b), Some(o)) = (new.storage.backend.as_mut(), cur.storage.backend.as_ref()) {
        fix(b, o);
    }
    for b in &mut new.storage.backends {
        if let Some(o) = cur.storage.backends.iter().find(|o| o.name == b.name) {
            fix(b, o);
        }
    }
    if let (Some(e), Some(oe)) = (
        new.storage.backend_encryption.as_mut(),
        cur.storage.backend_encryption.as_ref(),
    ) {
        e.key = e.key.take().or(oe.key.clone());
        e.legacy_key = e.legacy_key.take().or(oe.legacy_key.clone());
    }
}

/// `POST /_/api/admin/config/apply` `{yaml}`: the whole file. Parsed and validated like
/// `config/validate` (an invalid document is HTTP 400 `{ok:false, errors}` and changes
/// nothing), then applied live where possible and written to the file in use.
async fn config_apply(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<ValidateBody>,
) -> Response {
    if let Err(r) = require_session(&st, &headers, &addr) {
        return r;
    }
    let mut new: crate::config::FileConfig = match serde_yaml::from_str(&body.yaml) {
        Ok(f) => f,
        Err(e) => return bad_config(e.to_string()),
    };
    let doc: serde_json::Value = serde_yaml::from_str(&body.yaml).unwrap_or(json!({}));
    let cur = live_file(&st);
    restore_struct_secrets(&mut new, &cur, &doc);
    let mut warnings = match check_live(&new) {
        Ok(w) => w,
        Err(e) => return bad_config(e),
    };
    let persist = match file_doc(&st) {
        Ok((path, old)) => {
            let mut doc = if doc.is_null() { json!({}) } else { doc };
            restore_secrets(&mut doc, &old);
            write_atomic(&path, &doc).map(|_| Some(path))
        }
        Err(w) => {
            warnings.push(w);
            Ok(None)
        }
    };
    if persist.is_err() {
        // The file could not be written: change nothing, so file and runtime stay in step.
        return answer(vec![], vec![], warnings, persist);
    }
    let (applied, restart, w2) = apply_live(&st, new);
    warnings.extend(w2);
    audit_iam_change(&st, "config.apply", "", &headers, &addr);
    answer(applied, restart, warnings, persist)
}
