//! Admin config API: section GET/PUT (RFC 7396 merge patch) and its validate dry run,
//! canonical export, whole-file validate and apply with live reload of the hot settings
//! (admission chain included), the JSON Schema, and the flat settings view/update.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{audit_iam_change, err, Admin, Body, St};
use crate::config_doc::SECTIONS;
use crate::state::AppState;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/_/api/admin/config/section/{name}",
            get(config_section).put(config_section_put),
        )
        .route(
            "/_/api/admin/config/section/{name}/validate",
            post(config_section_validate),
        )
        .route("/_/api/admin/config", get(config_flat).put(config_flat_put))
        .route("/_/api/admin/config/defaults", get(config_defaults))
        .route("/_/api/admin/config/apply", post(config_apply))
        .route("/_/api/admin/config/export", get(config_export))
        .route("/_/api/admin/config/validate", post(config_validate))
}

#[derive(Deserialize)]
struct Format {
    format: Option<String>,
}

/// The running file config with the live bucket policies.
pub(super) fn live_file(st: &AppState) -> crate::config::FileConfig {
    let mut fc = st.file.read().clone();
    fc.storage.buckets = st.engine.policies.read().clone();
    fc
}

/// One section as JSON, secrets redacted (serde skips backend and encryption secrets; user
/// secrets are blanked to "" as the spec's exports do). `None` for an unknown name.
pub(super) fn section_value(
    fc: &crate::config::FileConfig,
    name: &str,
) -> Option<serde_json::Value> {
    let v = match name {
        "storage" => serde_json::to_value(&fc.storage),
        "access" => {
            let mut a = fc.access.clone();
            for u in &mut a.iam_users {
                u.secret_access_key = String::new();
            }
            for p in &mut a.auth_providers {
                p.client_secret = None;
            }
            serde_json::to_value(&a)
        }
        "advanced" => serde_json::to_value(&fc.advanced),
        "admission" => serde_json::to_value(&fc.admission),
        _ => return None,
    };
    Some(v.unwrap_or_default())
}

#[derive(Deserialize)]
struct ExportQuery {
    section: Option<String>,
}

/// `GET /_/api/admin/config/export[?section=]`: canonical YAML, secrets redacted.
async fn config_export(_: Admin, State(st): St, Query(q): Query<ExportQuery>) -> Response {
    let fc = live_file(&st);
    let names: Vec<&str> = match q.section.as_deref() {
        Some(n) if SECTIONS.contains(&n) => vec![n],
        Some(_) => return err(StatusCode::NOT_FOUND, "unknown section"),
        None => SECTIONS.to_vec(),
    };
    let mut doc = serde_json::Map::new();
    for n in names {
        if let Some(v) = section_value(&fc, n).and_then(|v| crate::config_doc::prune_defaults(n, v))
        {
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
async fn config_validate(_: Admin, Body(body): Body<ValidateBody>) -> Response {
    let parsed = crate::config_doc::parse(&body.yaml, false).map_err(|e| e.to_string());
    let result = parsed.and_then(|(fc, mut shape)| {
        crate::config::validate_file(&fc)
            .map(|_| {
                shape.extend(crate::config::lint_file(&fc));
                shape
            })
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
    _: Admin,
    State(st): St,
    Path(name): Path<String>,
    Query(f): Query<Format>,
) -> Response {
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

const SECRET_KEYS: [&str; 4] = ["secret_access_key", "key", "legacy_key", "client_secret"];

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
pub(super) fn file_doc(st: &AppState) -> Result<(std::path::PathBuf, serde_json::Value), String> {
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
    let doc = if doc.is_null() { json!({}) } else { doc };
    // A flat-shaped file is rewritten sectioned, so a section patch never mixes the shapes.
    let (doc, _) =
        crate::config_doc::normalize(doc).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((path, doc))
}

/// Write-temp-then-rename, so a crash never leaves a half-written config file.
pub(super) fn write_atomic(path: &std::path::Path, doc: &serde_json::Value) -> Result<(), String> {
    let y = serde_yaml::to_string(doc).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, y).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Which changed keys of `new` (versus the running config) apply live and which need a
/// restart; shared by the apply path and the validate dry runs.
struct Plan {
    hot: Vec<String>,
    restart: Vec<String>,
    warnings: Vec<String>,
}

fn plan(st: &AppState, new: &crate::config::FileConfig) -> Plan {
    let old = live_file(st);
    let secs = |fc: &crate::config::FileConfig| -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for n in SECTIONS {
            m.insert(n.into(), section_value(fc, n).unwrap_or_default());
        }
        serde_json::Value::Object(m)
    };
    let (ov, nv) = (secs(&old), secs(new));
    let mut changed = vec![];
    for n in SECTIONS {
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
    let mut p = Plan {
        hot: vec![],
        restart: vec![],
        warnings: vec![],
    };
    for key in changed {
        let env_wins = match key.as_str() {
            "advanced.max_delta_ratio" => Some("DGP_MAX_DELTA_RATIO"),
            "advanced.max_object_size" => Some("DGP_MAX_OBJECT_SIZE"),
            _ => None,
        };
        match key.as_str() {
            "advanced.max_delta_ratio" | "advanced.max_object_size" => {
                let var = env_wins.unwrap_or_default();
                if std::env::var_os(var).is_some() {
                    p.warnings.push(format!("{var} is set and wins over {key}"));
                    p.restart.push(key);
                } else {
                    p.hot.push(key);
                }
            }
            // The admission chain is rebuilt from the new file and bucket policies.
            "admission.blocks" | "admission.flags" | "storage.buckets" => p.hot.push(key),
            // Read live by the OAuth flow and the ext-auth routes.
            "access.auth_providers" | "access.group_mapping_rules" => p.hot.push(key),
            // Reconciled live while the proxy runs declarative (see reconcile.rs).
            "access.iam_users" | "access.iam_groups"
                if st.cfg.iam_declarative && iam_mode(new) == "declarative" =>
            {
                p.hot.push(key)
            }
            _ => p.restart.push(key),
        }
    }
    if let Some(line) = super::reconcile::preview(&old, new) {
        p.warnings.push(line);
    }
    p
}

/// Applies what is hot-reloadable in `new` versus the running file config, records the new
/// config as current, and lists the changed keys that only take effect after a restart.
fn apply_live(
    st: &AppState,
    new: crate::config::FileConfig,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let Plan {
        hot,
        restart,
        mut warnings,
    } = plan(st, &new);
    for key in &hot {
        match key.as_str() {
            "advanced.max_delta_ratio" => st
                .engine
                .set_max_delta_ratio(new.advanced.max_delta_ratio.unwrap_or(0.75)),
            "advanced.max_object_size" => st
                .engine
                .set_max_object_size(new.advanced.max_object_size.unwrap_or(104_857_600)),
            "storage.buckets" => *st.engine.policies.write() = new.storage.buckets.clone(),
            _ => {}
        }
    }
    let old = st.file.read().clone();
    super::reconcile::apply(st, &old, &new);
    log_iam_mode_change(&old, &new);
    *st.file.write() = new;
    if let Err(e) = st.rebuild_admission() {
        warnings.push(format!("admission chain not rebuilt: {e}"));
    }
    (hot, restart, warnings)
}

fn iam_mode(fc: &crate::config::FileConfig) -> &str {
    fc.access.iam_mode.as_deref().unwrap_or("gui")
}

/// The spec's mode guard: flipping gui → declarative with no users and no groups would lock
/// every IAM user out, so it is refused (422) by both the section PUT and apply.
fn iam_flip_guard(
    cur: &crate::config::FileConfig,
    new: &crate::config::FileConfig,
) -> Result<(), Response> {
    if iam_mode(cur) != "declarative"
        && iam_mode(new) == "declarative"
        && new.access.iam_users.is_empty()
        && new.access.iam_groups.is_empty()
    {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "ok": false,
                "error": "iam_mode gui -> declarative with empty iam_users and iam_groups would remove every IAM identity; declare them first",
                "errors": ["access.iam_mode: gui -> declarative refused: iam_users and iam_groups are both empty"],
            })),
        )
            .into_response());
    }
    Ok(())
}

fn log_iam_mode_change(old: &crate::config::FileConfig, new: &crate::config::FileConfig) {
    if iam_mode(old) != iam_mode(new) {
        tracing::warn!(
            target: "deltaglider_proxy::config",
            from = iam_mode(old),
            to = iam_mode(new),
            "iam_mode changed (takes effect after a restart)"
        );
    }
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

/// A section merge patch applied to the running config and checked (but not applied).
struct Merged {
    new: crate::config::FileConfig,
    /// The patch without placeholder secrets, as merged into the file text.
    clean: serde_json::Value,
    warnings: Vec<String>,
}

/// Merges `patch` into section `name` of the running config and validates the result:
/// 404 unknown section, 400 invalid, 422 a refused iam_mode flip.
fn merge_section(st: &AppState, name: &str, patch: &serde_json::Value) -> Result<Merged, Response> {
    if !SECTIONS.contains(&name) {
        return Err(err(StatusCode::NOT_FOUND, "unknown section"));
    }
    if !patch.is_object() {
        return Err(bad_config("a merge patch must be a JSON object".into()));
    }
    let mut clean = patch.clone();
    strip_placeholders(&mut clean);
    // Live: merge into the running (redacted) section, then restore its secrets.
    let cur = live_file(st);
    let mut full = serde_json::to_value(&cur).unwrap_or_default();
    merge_patch(&mut full[name], &clean);
    let mut new: crate::config::FileConfig = match serde_json::from_value(full) {
        Ok(f) => f,
        Err(e) => return Err(bad_config(format!("{name}: {e}"))),
    };
    restore_struct_secrets(&mut new, &cur, &json!({ name: clean.clone() }));
    let warnings = check_live(&new).map_err(bad_config)?;
    super::reconcile::check_key_reuse(&cur.access, &new.access).map_err(bad_config)?;
    iam_flip_guard(&cur, &new)?;
    Ok(Merged {
        new,
        clean,
        warnings,
    })
}

/// Leaf-level differences between two JSON documents: `[{path, before, after}]`.
fn diff(
    path: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    out: &mut Vec<serde_json::Value>,
) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (va, vb) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                diff(&format!("{path}.{k}"), va, vb, out);
            }
        }
        _ if a != b => out.push(json!({"path": path, "before": a, "after": b})),
        _ => {}
    }
}

/// `POST /_/api/admin/config/section/:name/validate`: the section PUT as a dry run →
/// `{ok, warnings[], diff[], requires_restart, restart_keys[], hot_keys[]}`; nothing is
/// written or applied. A refused patch answers like the PUT would (400/404/422).
async fn config_section_validate(
    _: Admin,
    State(st): St,
    Path(name): Path<String>,
    Body(patch): Body<serde_json::Value>,
) -> Response {
    let m = match merge_section(&st, &name, &patch) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let p = plan(&st, &m.new);
    let before = section_value(&live_file(&st), &name).unwrap_or_default();
    let after = section_value(&m.new, &name).unwrap_or_default();
    let mut d = vec![];
    diff(&name, &before, &after, &mut d);
    let mut warnings = m.warnings;
    warnings.extend(p.warnings);
    Json(json!({
        "ok": true,
        "warnings": warnings,
        "diff": d,
        "requires_restart": !p.restart.is_empty(),
        "restart_keys": p.restart,
        "hot_keys": p.hot,
    }))
    .into_response()
}

/// `PUT /_/api/admin/config/section/:name`: RFC 7396 merge patch on one section.
async fn config_section_put(
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Body(patch): Body<serde_json::Value>,
) -> Response {
    let m = match merge_section(&st, &name, &patch) {
        Ok(m) => m,
        Err(r) => return r,
    };
    commit_section(&st, &name, m, &headers, &addr)
}

/// Writes a merged section patch into the file in use (which holds the real secrets), then
/// applies it live; nothing changes when the file cannot be written.
fn commit_section(
    st: &AppState,
    name: &str,
    m: Merged,
    headers: &HeaderMap,
    addr: &SocketAddr,
) -> Response {
    let Merged {
        new,
        clean,
        mut warnings,
    } = m;
    let persist = match file_doc(st) {
        Ok((path, mut doc)) => {
            let old_sec = doc.get(name).cloned().unwrap_or(json!({}));
            merge_patch(&mut doc[name], &clean);
            restore_secrets(&mut doc[name], &old_sec);
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
    let (applied, restart, w2) = apply_live(st, new);
    warnings.extend(w2);
    audit_iam_change(st, "config.section", name, headers, addr);
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
    for p in &mut new.access.auth_providers {
        if p.client_secret
            .as_deref()
            .is_none_or(|s| s.is_empty() || s == "***")
        {
            if let Some(o) = cur.access.auth_providers.iter().find(|o| o.name == p.name) {
                p.client_secret = o.client_secret.clone();
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
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Body(body): Body<ValidateBody>,
) -> Response {
    // Either shape; the flat one is normalized into sections (and persisted that way).
    let doc = match crate::config_doc::parse_tree(&body.yaml, false)
        .and_then(crate::config_doc::normalize)
    {
        Ok((d, _)) => d,
        Err(e) => return bad_config(e.0),
    };
    let mut new: crate::config::FileConfig = match serde_json::from_value(doc.clone()) {
        Ok(f) => f,
        Err(e) => return bad_config(e.to_string()),
    };
    let cur = live_file(&st);
    restore_struct_secrets(&mut new, &cur, &doc);
    let mut warnings = match check_live(&new) {
        Ok(w) => w,
        Err(e) => return bad_config(e),
    };
    if let Err(e) = super::reconcile::check_key_reuse(&cur.access, &new.access) {
        return bad_config(e);
    }
    if let Err(r) = iam_flip_guard(&cur, &new) {
        return r;
    }
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

/// `GET /_/api/admin/config/defaults[?section=]`: the JSON Schema (with defaults) of the
/// config or of one section.
async fn config_defaults(_: Admin, Query(q): Query<ExportQuery>) -> Response {
    match crate::config_doc::schema(q.section.as_deref()) {
        Some(s) => Json(s).into_response(),
        None => err(StatusCode::NOT_FOUND, "unknown section"),
    }
}

/// Flat settings that `PUT /_/api/admin/config` accepts, and their `advanced` key.
const FLAT_SETTABLE: [&str; 6] = [
    "max_delta_ratio",
    "max_object_size",
    "cache_size_mb",
    "metadata_cache_mb",
    "codec_concurrency",
    "listen_addr",
];

/// `GET /_/api/admin/config`: the effective settings as one flat JSON object (live values
/// for the hot-reloadable ones; secrets shown as "***" when set).
async fn config_flat(_: Admin, State(st): St) -> Response {
    let c = &st.cfg;
    let fc = live_file(&st);
    let redact = |v: &Option<String>| v.as_ref().map(|_| "***");
    Json(json!({
        "listen_addr": c.listen_addr,
        "data_dir": c.data_dir.display().to_string(),
        "backend_type": st.engine.backend_kind(),
        "max_delta_ratio": st.engine.max_delta_ratio(),
        "max_object_size": st.engine.max_object_size(),
        "cache_size_mb": c.cache_mb,
        "metadata_cache_mb": c.metadata_cache_mb,
        "codec_concurrency": c.codec_concurrency,
        "codec_timeout_secs": c.codec_timeout_secs,
        "request_timeout_secs": c.request_timeout_secs,
        "max_concurrent_requests": c.max_concurrent_requests,
        "max_multipart_uploads": c.max_multipart_uploads,
        "max_total_multipart_bytes": c.max_total_multipart_bytes,
        "audit_ring_size": c.audit_ring_size,
        "debug_headers": c.debug_headers,
        "cors_permissive": c.cors_permissive,
        "trust_proxy_headers": c.trust_proxy_headers,
        "session_ttl_hours": c.session_ttl_hours,
        "clock_skew_seconds": c.clock_skew_seconds,
        "replay_window_secs": c.replay_window_secs,
        "authentication": if c.auth_none { "none" } else { "sigv4" },
        "access_key_id": c.access_key_id,
        "secret_access_key": redact(&c.secret_access_key),
        "bootstrap_password_hash": redact(&c.bootstrap_password_hash),
        "iam_mode": iam_mode(&fc),
        "log_level": std::env::var("DGP_LOG_LEVEL").ok(),
        "tls_enabled": c.tls.is_some(),
        "config_path": c.config_path.as_ref().map(|p| p.display().to_string()),
        "config_sync_bucket": c.config_sync_bucket,
        "admission_blocks": fc.admission.blocks.len(),
    }))
    .into_response()
}

/// `PUT /_/api/admin/config`: partial update of the flat settings in [`FLAT_SETTABLE`]
/// (an `advanced` section patch underneath: persisted to the file in use, applied live when
/// hot-reloadable) → `{applied, requires_restart, warnings, persisted, persisted_path}`.
async fn config_flat_put(
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Body(body): Body<serde_json::Value>,
) -> Response {
    let Some(obj) = body.as_object() else {
        return bad_config("the body must be a JSON object of settings".into());
    };
    if let Some(k) = obj.keys().find(|k| !FLAT_SETTABLE.contains(&k.as_str())) {
        return bad_config(format!(
            "{k:?} cannot be set here (settable: {})",
            FLAT_SETTABLE.join(", ")
        ));
    }
    let m = match merge_section(&st, "advanced", &body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    commit_section(&st, "advanced", m, &headers, &addr)
}
