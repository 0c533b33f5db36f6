//! Admin admission API: `POST/GET /_/api/admin/config/trace` runs a synthetic request through
//! the live admission chain and answers `{decision, matched_block, reason}`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::{err, Admin, Body, Params, St};
use crate::state::AppState;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/_/api/admin/config/trace", get(trace_get).post(trace_post))
}

/// The synthetic request: `path` is `/bucket/key` (a `?query` suffix is accepted too).
#[derive(Deserialize)]
pub(super) struct TraceRequest {
    method: String,
    path: String,
    source_ip: Option<String>,
    #[serde(default)]
    authenticated: Option<bool>,
    query: Option<String>,
}

/// Runs `t` through the chain; 400 on a malformed method, path or IP.
fn trace(st: &AppState, t: TraceRequest) -> Response {
    if t.method.is_empty() || !t.method.chars().all(|c| c.is_ascii_alphabetic()) {
        return err(
            StatusCode::BAD_REQUEST,
            "method must be an HTTP method name",
        );
    }
    let (path, inline_query) = match t.path.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (t.path.clone(), None),
    };
    if !path.starts_with('/') {
        return err(
            StatusCode::BAD_REQUEST,
            "path must start with / (/bucket/key)",
        );
    }
    let ip = match t.source_ip.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => match s.parse::<std::net::IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => return err(StatusCode::BAD_REQUEST, "source_ip is not an IP address"),
        },
        None => None,
    };
    let query = t.query.or(inline_query);
    let facts = crate::admission::facts_of(
        &t.method,
        &path,
        query.as_deref(),
        ip,
        t.authenticated.unwrap_or(false),
    );
    Json(st.admission.read().evaluate(&facts)).into_response()
}

async fn trace_post(_: Admin, State(st): St, Body(t): Body<TraceRequest>) -> Response {
    trace(&st, t)
}

async fn trace_get(_: Admin, State(st): St, Params(t): Params<TraceRequest>) -> Response {
    trace(&st, t)
}
