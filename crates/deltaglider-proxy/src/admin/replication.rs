//! Replication over the admin API: rule status, run-now (409 while paused), pause, resume
//! (answered once durable in the state file), and each rule's run history and failures
//! (newest first).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{audit_iam_change, err, Admin};
use crate::replication::{PauseError, RunError};
use crate::state::AppState;

/// Default and maximum `limit` of the history and failures lists.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/_/api/admin/replication", get(status))
        .route(
            "/_/api/admin/replication/rules/{name}/run-now",
            post(run_now),
        )
        .route("/_/api/admin/replication/rules/{name}/pause", post(pause))
        .route("/_/api/admin/replication/rules/{name}/resume", post(resume))
        .route(
            "/_/api/admin/replication/rules/{name}/history",
            get(history),
        )
        .route(
            "/_/api/admin/replication/rules/{name}/failures",
            get(failures),
        )
}

fn no_rule(name: &str) -> Response {
    err(
        StatusCode::NOT_FOUND,
        &format!("no replication rule named {name:?}"),
    )
}

/// `GET /_/api/admin/replication`.
async fn status(_: Admin, State(st): State<Arc<AppState>>) -> Response {
    Json(json!({ "rules": st.replication.status() })).into_response()
}

/// `POST …/rules/{name}/run-now`: runs the rule to completion and answers its run record.
async fn run_now(
    _: Admin,
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    match st.replication.run(&name, "manual").await {
        Ok(rec) => {
            audit_iam_change(&st, "replication_run_now", &name, &headers, &addr);
            Json(rec).into_response()
        }
        Err(RunError::NoSuchRule) => no_rule(&name),
        Err(RunError::Paused) => err(
            StatusCode::CONFLICT,
            &format!("replication rule {name:?} is paused; resume it first"),
        ),
    }
}

async fn set_paused(
    st: &AppState,
    headers: &HeaderMap,
    addr: &SocketAddr,
    name: &str,
    paused: bool,
) -> Response {
    match st.replication.set_paused(name, paused).await {
        Ok(()) => {}
        Err(PauseError::NoSuchRule) => return no_rule(name),
        Err(PauseError::Persist(e)) => {
            return err(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("replication rule {name:?}: state not saved, nothing changed: {e}"),
            )
        }
    }
    let action = if paused {
        "replication_pause"
    } else {
        "replication_resume"
    };
    audit_iam_change(st, action, name, headers, addr);
    Json(json!({ "name": name, "paused": paused })).into_response()
}

/// `POST …/rules/{name}/pause`.
async fn pause(
    _: Admin,
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    set_paused(&st, &headers, &addr, &name, true).await
}

/// `POST …/rules/{name}/resume`.
async fn resume(
    _: Admin,
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    set_paused(&st, &headers, &addr, &name, false).await
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

impl Limit {
    fn get(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
    }
}

/// A rule's newest-first list (`history` or `failures`) as `{<key>: [...]}`; 404 for an
/// unknown rule, 400 for a `limit` that is not a positive integer.
fn listing<T: serde::Serialize>(
    name: &str,
    q: Result<Query<Limit>, QueryRejection>,
    key: &str,
    get: impl FnOnce(usize) -> Option<Vec<T>>,
) -> Response {
    let Ok(Query(q)) = q else {
        return err(StatusCode::BAD_REQUEST, "limit must be a positive integer");
    };
    match get(q.get()) {
        Some(v) => Json(json!({ key: v })).into_response(),
        None => no_rule(name),
    }
}

/// `GET …/rules/{name}/history?limit=N`.
async fn history(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    q: Result<Query<Limit>, QueryRejection>,
) -> Response {
    listing(&name, q, "history", |n| st.replication.history(&name, n))
}

/// `GET …/rules/{name}/failures?limit=N`.
async fn failures(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    q: Result<Query<Limit>, QueryRejection>,
) -> Response {
    listing(&name, q, "failures", |n| st.replication.failures(&name, n))
}
