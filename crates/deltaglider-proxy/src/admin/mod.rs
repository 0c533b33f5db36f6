//! The `/_/` surface on the S3 port: health, Prometheus metrics, stats, a minimal admin UI
//! page and the admin JSON API (bootstrap-password login with IP-bound cookie sessions,
//! whoami, IAM users and groups, audit ring, config sections: read, export, validate, merge-patch
//! PUT and whole-file apply with live reload of the hot settings).

// Handlers return early with a ready response; boxing it buys nothing here.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;

use crate::iam::{GroupSpec, UserSpec};
use crate::state::AppState;

mod backends;
mod replication;

const COOKIE: &str = "dgp_session";
const MAX_SESSIONS: usize = 10;

/// Admin sessions: random token → (client IP, expiry). At most ten; the oldest is evicted.
pub struct Sessions {
    inner: Mutex<HashMap<String, (String, Instant)>>,
    ttl: Duration,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Self {
        Sessions {
            inner: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    fn create(&self, ip: &str) -> String {
        let token = hex::encode(rand::random::<[u8; 32]>());
        let mut m = self.inner.lock();
        let now = Instant::now();
        m.retain(|_, (_, exp)| *exp > now);
        while m.len() >= MAX_SESSIONS {
            let oldest = m
                .iter()
                .min_by_key(|(_, (_, e))| *e)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => m.remove(&k),
                None => break,
            };
        }
        m.insert(token.clone(), (ip.to_string(), now + self.ttl));
        token
    }

    fn valid(&self, token: &str, ip: &str) -> bool {
        matches!(self.inner.lock().get(token), Some((sip, exp)) if sip == ip && *exp > Instant::now())
    }

    fn remove(&self, token: &str) {
        self.inner.lock().remove(token);
    }
}

/// Recent failure times and the lockout end, per IP.
type Attempts = (Vec<Instant>, Option<Instant>);

/// Per-IP admin login failures: 429 SlowDown during a lockout.
#[derive(Default)]
pub struct LoginLimiter {
    inner: Mutex<HashMap<String, Attempts>>,
}

impl LoginLimiter {
    fn locked(&self, ip: &str) -> bool {
        matches!(self.inner.lock().get(ip), Some((_, Some(until))) if *until > Instant::now())
    }

    fn failure(&self, st: &AppState, ip: &str) {
        let now = Instant::now();
        let window = Duration::from_secs(st.cfg.rate_limit_window_secs);
        let mut m = self.inner.lock();
        let e = m.entry(ip.to_string()).or_default();
        e.0.retain(|t| now.duration_since(*t) < window);
        e.0.push(now);
        if e.0.len() as u32 >= st.cfg.rate_limit_max_attempts {
            e.1 = Some(now + Duration::from_secs(st.cfg.rate_limit_lockout_secs));
            e.0.clear();
            tracing::warn!(ip, "admin login locked out after repeated failures");
        }
    }
}

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

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == COOKIE).then(|| v.to_string())
        })
}

fn err(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({ "error": msg }))).into_response()
}

/// Admin gate: a valid session cookie bound to this client IP.
fn require_session(st: &AppState, headers: &HeaderMap, addr: &SocketAddr) -> Result<(), Response> {
    let ip = client_ip(st, headers, addr);
    match cookie_token(headers) {
        Some(t) if st.sessions.valid(&t, &ip) => Ok(()),
        _ => Err(err(StatusCode::UNAUTHORIZED, "not_authenticated")),
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/_/", get(ui))
        .route("/_/health", get(health))
        .route("/_/metrics", get(metrics_text))
        .route("/_/stats", get(stats))
        .route("/_/api/whoami", get(whoami))
        .route("/_/api/admin/login", post(login))
        .route("/_/api/admin/logout", post(logout))
        .route("/_/api/admin/session", get(session))
        .route("/_/api/admin/audit", get(audit))
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
        .route(
            "/_/api/admin/config/section/{name}",
            get(config_section).put(config_section_put),
        )
        .route("/_/api/admin/config/apply", post(config_apply))
        .route("/_/api/admin/config/export", get(config_export))
        .route("/_/api/admin/config/validate", post(config_validate))
        .merge(backends::routes())
        .merge(replication::routes())
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

async fn whoami(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    let logged_in = require_session(&st, &headers, &addr).is_ok();
    Json(json!({
        "mode": if st.cfg.auth_none { "open" } else if st.iam.users.read().len() > 1 { "iam" } else { "bootstrap" },
        "version": env!("CARGO_PKG_VERSION"),
        "build_time": crate::config::BUILD_TIME,
        "user": if logged_in { json!({"name": "admin", "is_admin": true}) } else { serde_json::Value::Null },
        "external_providers": [],
    }))
}

#[derive(Deserialize)]
struct LoginBody {
    password: String,
}

async fn login(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<LoginBody>,
) -> Response {
    let ip = client_ip(&st, &headers, &addr);
    if st.login_limiter.locked(&ip) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"error": "SlowDown"})),
        )
            .into_response();
    }
    let Some(hash) = st.cfg.bootstrap_password_hash.clone() else {
        return err(
            StatusCode::FORBIDDEN,
            "no bootstrap password configured (DGP_BOOTSTRAP_PASSWORD_HASH)",
        );
    };
    // Accept the hash raw or base64-encoded.
    let hash = if hash.starts_with("$2") {
        hash
    } else {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(&hash)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or(hash)
    };
    let ok =
        tokio::task::spawn_blocking(move || bcrypt::verify(body.password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
    if !ok {
        st.login_limiter.failure(&st, &ip);
        metrics::counter!("deltaglider_auth_failures_total", "reason" => "invalid_password")
            .increment(1);
        st.audit
            .record("admin_login_failed", "$bootstrap", "login", &ip, "", "", "");
        return err(StatusCode::UNAUTHORIZED, "invalid_password");
    }
    let token = st.sessions.create(&ip);
    st.audit
        .record("admin_login", "$bootstrap", "login", &ip, "", "", "");
    let secure = if scai_core::config::bool_or("DGP_SECURE_COOKIES", true).unwrap_or(true) {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!("{COOKIE}={token}; Path=/_/; HttpOnly; SameSite=Strict{secure}");
    (
        [(http::header::SET_COOKIE, cookie)],
        Json(json!({"ok": true})),
    )
        .into_response()
}

async fn logout(State(st): St, headers: HeaderMap) -> Json<serde_json::Value> {
    if let Some(t) = cookie_token(&headers) {
        st.sessions.remove(&t);
    }
    Json(json!({"ok": true}))
}

async fn session(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    Json(json!({"valid": require_session(&st, &headers, &addr).is_ok()}))
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
