//! The `/_/` surface on the S3 port: health, Prometheus metrics, stats, a minimal admin UI
//! page and the admin JSON API (bootstrap-password login with IP-bound cookie sessions,
//! whoami, IAM users and groups, audit ring, config sections: read, export, validate, merge-patch
//! PUT and whole-file apply with live reload of the hot settings).

// Handlers return early with a ready response; boxing it buys nothing here.
#![allow(clippy::result_large_err)]

mod admission;
mod backup;
mod config;
mod ext_auth;
mod iam;
mod password;
mod reconcile;
mod session;
mod usage;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::state::AppState;

mod backends;
mod replication;

pub use session::{LoginLimiter, Sessions};

type St = State<Arc<AppState>>;

fn client_ip(st: &AppState, headers: &HeaderMap, addr: &SocketAddr) -> String {
    // One rule for every surface (admission, audit, sessions): see admission::source_ip.
    crate::admission::source_ip(st.cfg.trust_proxy_headers, headers, Some(addr.ip()))
        .map(|ip| ip.to_string())
        .unwrap_or_default()
}

/// Record an IAM change made through the admin API in the audit ring, under the session's
/// principal (`$bootstrap` for a bootstrap-password login, the user's name after
/// `login-as`) and the caller's user agent, as logins are.
fn audit_iam_change(
    st: &AppState,
    action: &str,
    target: &str,
    headers: &HeaderMap,
    addr: &SocketAddr,
) {
    let user = match session::any_session(st, headers, addr) {
        Ok((_, e)) => match e.who {
            session::Who::Bootstrap => "$bootstrap".to_string(),
            session::Who::User(name) => name,
        },
        Err(_) => "$unknown".to_string(),
    };
    let ua = headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    st.audit.record(
        action,
        &user,
        target,
        &client_ip(st, headers, addr),
        ua,
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

/// The admin gate as an extractor: a handler lists `_: Admin` before its body, so a caller
/// without an admin session is answered 401/403 (see [`require_session`]) before anything
/// else is read or checked.
pub(super) struct Admin;

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> Result<Self, Response> {
        let ConnectInfo(addr) = ConnectInfo::<SocketAddr>::from_request_parts(parts, st)
            .await
            .map_err(IntoResponse::into_response)?;
        require_session(st, &parts.headers, &addr).map(|()| Admin)
    }
}

/// A JSON request body whose rejection (missing content type, malformed JSON, wrong field
/// types; axum's status for each) answers in the admin envelope `{"error": ...}` rather
/// than axum's plain-text body.
pub(super) struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Response;

    async fn from_request(req: Request, st: &S) -> Result<Self, Response> {
        match Json::<T>::from_request(req, st).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(r) => Err(err(r.status(), &r.body_text())),
        }
    }
}

/// Query parameters whose rejection (a missing or mistyped field) answers 400 in the admin
/// envelope, as [`Body`] does for JSON bodies.
pub(super) struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &S) -> Result<Self, Response> {
        match Query::<T>::from_request_parts(parts, st).await {
            Ok(Query(v)) => Ok(Params(v)),
            Err(r) => Err(err(r.status(), &r.body_text())),
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/_/", get(ui))
        // Deep links into the UI (the guide's `/_/admin/diagnostics/audit`): the same page,
        // which opens the view its path names.
        .route("/_/admin/{*view}", get(ui))
        // Any other `/_/` path is the admin surface's, never a bucket (`_` is not a valid
        // bucket name): a JSON 404 rather than S3's InvalidBucketName.
        .route("/_/{*rest}", axum::routing::any(not_found))
        .route("/_/health", get(health))
        .route("/_/metrics", get(metrics_text))
        .route("/_/stats", get(stats))
        .route("/_/api/admin/audit", get(audit))
        .merge(session::routes())
        .merge(iam::routes())
        .merge(password::routes())
        .merge(backup::routes())
        .merge(config::routes())
        .merge(admission::routes())
        .merge(usage::routes())
        .merge(ext_auth::routes())
        .merge(backends::routes())
        .merge(replication::routes())
        .with_state(state)
}

async fn not_found() -> Response {
    err(StatusCode::NOT_FOUND, "not_found")
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
    scai_core::metrics::record_process_metrics();
    scai_core::metrics::metrics_handler().await
}

/// How long a `/_/stats` answer is served again: the walk lists every bucket (up to 1000
/// objects), too much to repeat for each dashboard refresh.
const STATS_TTL: std::time::Duration = std::time::Duration::from_secs(10);

async fn stats(_: Admin, State(st): St) -> Response {
    if let Some((at, v)) = st.stats_cache.lock().as_ref() {
        if at.elapsed() < STATS_TTL {
            return Json(v.clone()).into_response();
        }
    }
    let v = compute_stats(&st).await;
    *st.stats_cache.lock() = Some((std::time::Instant::now(), v.clone()));
    Json(v).into_response()
}

async fn compute_stats(st: &AppState) -> serde_json::Value {
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
    json!({
        "total_objects": total_objects,
        "total_original_size": original,
        "total_stored_size": stored,
        "savings_percentage": savings,
        "truncated": truncated,
    })
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn audit(_: Admin, State(st): St, Params(q): Params<Limit>) -> Response {
    Json(json!({ "entries": st.audit.recent(q.limit.unwrap_or(100).min(10_000)) })).into_response()
}
