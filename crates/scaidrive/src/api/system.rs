//! Liveness, readiness (database, storage, ScaiKey; Redis only when configured) and the
//! public client configuration.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use scai_core::health::{self, Check};
use serde_json::json;

use super::ok;
use crate::AppState;

pub async fn health() -> Response {
    ok(
        StatusCode::OK,
        json!({"status": "healthy", "version": env!("CARGO_PKG_VERSION")}),
    )
}

pub async fn ready(State(st): State<Arc<AppState>>) -> Response {
    let db = st.db.clone();
    let store = st.store.clone();
    let verifier = st.verifier.clone();
    let mut checks = vec![
        Check::new("database", async move { db.ping().await }),
        Check::new("storage", async move { store.ready().await }),
        Check::new("scaikey", async move { verifier.scaikey_ready().await }),
    ];
    if let Some(cache) = st.cache.clone() {
        checks.push(Check::new("redis", async move { cache.ping().await }));
    }
    let (all, results) = health::run(checks, Duration::from_secs(3)).await;
    let status = if all {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    ok(
        status,
        json!({"status": if all { "ready" } else { "not_ready" }, "checks": results}),
    )
}

pub async fn config(State(st): State<Arc<AppState>>) -> Response {
    ok(
        StatusCode::OK,
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "features": {"semantic_search": false, "external_sharing": false, "smb_connector": false, "sharepoint_connector": false},
            "limits": {
                "max_file_size_bytes": st.cfg.default_max_file_size,
                "max_upload_chunk_size_bytes": st.cfg.max_chunk_size,
                "default_upload_chunk_size_bytes": st.cfg.default_chunk_size,
            },
        }),
    )
}
