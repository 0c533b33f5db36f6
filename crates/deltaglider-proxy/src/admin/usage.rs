//! Admin usage API: `POST /_/api/admin/usage/scan` starts a background prefix-size scan,
//! `GET /_/api/admin/usage` reads the cached usage tree (see [`crate::usage`]).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{err, Admin, St};
use crate::error::ProxyError;
use crate::state::AppState;
use crate::usage::{Started, MAX_DEPTH};

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/_/api/admin/usage/scan", post(start_scan))
        .route("/_/api/admin/usage", get(read_usage))
}

#[derive(Deserialize)]
struct ScanBody {
    bucket: String,
    #[serde(default)]
    prefix: String,
}

/// Maps an engine error to the admin wire shape.
fn engine_err(e: ProxyError) -> Response {
    match e {
        ProxyError::NoSuchBucket => err(StatusCode::NOT_FOUND, "no_such_bucket"),
        e => {
            tracing::warn!(error = %e, "usage request failed");
            err(StatusCode::BAD_GATEWAY, &format!("backend: {e}"))
        }
    }
}

/// `POST /_/api/admin/usage/scan` `{bucket, prefix?}` → 202 `{scan_id, status, bucket,
/// prefix, already_running}`. A scan of the same bucket and prefix that is still running is
/// not started twice: its id is returned with `already_running: true`.
async fn start_scan(_: Admin, State(st): St, body: Bytes) -> Response {
    // Parsed by hand so that a bad body answers in the admin JSON error shape.
    let req: ScanBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return err(StatusCode::BAD_REQUEST, &format!("invalid body: {e}")),
    };
    if req.bucket.is_empty() {
        return err(StatusCode::BAD_REQUEST, "bucket_required");
    }
    let started = match st
        .usage
        .start(st.engine.clone(), &req.bucket, &req.prefix)
        .await
    {
        Ok(s) => s,
        Err(e) => return engine_err(e),
    };
    let (scan_id, already_running) = match started {
        Started::New(id) => (id, false),
        Started::AlreadyRunning(id) => (id, true),
    };
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "scan_id": scan_id,
            "status": "scanning",
            "bucket": req.bucket,
            "prefix": req.prefix,
            "already_running": already_running,
        })),
    )
        .into_response()
}

/// `GET /_/api/admin/usage?bucket=&prefix=&depth=` → the last finished scan's tree, trimmed
/// to `depth` levels of common prefixes (default 1, at most [`MAX_DEPTH`]), with `status`
/// `scanning` (a scan runs; `usage` is the previous result, if any), `done`, `failed`
/// (`error` says why) or `none` (never scanned).
async fn read_usage(_: Admin, State(st): St, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(bucket) = q.get("bucket").filter(|b| !b.is_empty()) else {
        return err(StatusCode::BAD_REQUEST, "bucket_required");
    };
    let prefix = q.get("prefix").map(String::as_str).unwrap_or("");
    let depth = match q.get("depth").map(|d| d.parse::<usize>()) {
        None => 1,
        Some(Ok(d)) => d.min(MAX_DEPTH),
        Some(Err(_)) => return err(StatusCode::BAD_REQUEST, "depth must be a whole number"),
    };
    let slot = st.usage.get(bucket, prefix);
    let (status, error) = match (&slot.running, &slot.last) {
        (Some(_), _) => ("scanning", None),
        (None, Some(f)) => match &f.result {
            Ok(_) => ("done", None),
            Err(e) => ("failed", Some(e.clone())),
        },
        (None, None) => ("none", None),
    };
    let scan_id = slot
        .running
        .clone()
        .or_else(|| slot.last.as_ref().map(|f| f.scan_id.clone()));
    let usage = slot
        .last
        .as_ref()
        .and_then(|f| f.result.as_ref().ok())
        .map(|n| n.trimmed(depth));
    Json(json!({
        "bucket": bucket,
        "prefix": prefix,
        "status": status,
        "scan_id": scan_id,
        "scanned_at": slot.last.as_ref().map(|f| crate::meta::format_rfc3339(f.scanned_at)),
        "depth": depth,
        "usage": usage,
        "error": error,
    }))
    .into_response()
}
