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

mod usage;

use crate::iam::{GroupSpec, UserSpec};
use crate::state::AppState;

mod admission;
mod config;
mod ext_auth;

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
        .merge(config::routes())
        .merge(admission::routes())
        .merge(usage::routes())
        .merge(ext_auth::routes())
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
        "external_providers": crate::oidc::public_providers(&st),
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
