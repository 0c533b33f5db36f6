//! Resumable upload routes: create a session, PUT chunks (any order, in parallel, repeatable),
//! session status, complete, abort.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::BytesMut;
use futures::StreamExt;
use serde_json::json;

use super::{ok, J, P};
use crate::auth::Caller;
use crate::db::now;
use crate::error::{ApiError, ApiResult};
use crate::fs;
use crate::upload::{self, CreateSession};
use crate::AppState;

pub async fn create(
    State(st): State<Arc<AppState>>,
    c: Caller,
    J(b): J<CreateSession>,
) -> ApiResult<Response> {
    c.require_write()?;
    let s = upload::create_session(&st, &c, b).await?;
    Ok(ok(
        StatusCode::CREATED,
        upload::session_json(&st, &s).await?,
    ))
}

pub async fn status(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P(id): P<String>,
) -> ApiResult<Response> {
    c.require_read()?;
    let s = upload::load_session(&st, &c, &id, true).await?;
    Ok(ok(StatusCode::OK, upload::session_json(&st, &s).await?))
}

pub async fn abort(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P(id): P<String>,
) -> ApiResult<Response> {
    c.require_write()?;
    let s = upload::load_session(&st, &c, &id, false).await?;
    sqlx::query("UPDATE upload_sessions SET status = 'aborted', last_activity_at = ? WHERE tenant_id = ? AND id = ? AND status = 'active'")
        .bind(now())
        .bind(&c.tenant_id)
        .bind(&s.id)
        .execute(&st.db.pool)
        .await?;
    sqlx::query("DELETE FROM upload_parts WHERE tenant_id = ? AND session_id = ?")
        .bind(&c.tenant_id)
        .bind(&s.id)
        .execute(&st.db.pool)
        .await?;
    st.hashers.reset(&s.id);
    upload::uncache_session(&st, &c.tenant_id, &s.id).await;
    upload::discard_pending(&st, &s.id).await;
    Ok(ok(
        StatusCode::OK,
        json!({"session_id": s.id, "status": "aborted"}),
    ))
}

pub async fn put_chunk(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P((id, index)): P<(String, i64)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    c.require_write()?;
    let s = upload::load_session(&st, &c, &id, false).await?;
    if index < 0 || index >= s.total_chunks {
        return Err(ApiError::BadRequest {
            code: "CHUNK_INDEX_OUT_OF_RANGE",
            message: format!("chunk index {index} is outside 0..{}", s.total_chunks),
            details: json!({"chunk_index": index, "total_chunks": s.total_chunks}),
        });
    }
    let expected = s.expected_len(index) as usize;
    // Read at most the declared size (+1 to detect an oversized chunk); memory stays bounded
    // by the chunk size whatever the client sends.
    let mut buf = BytesMut::with_capacity(expected);
    let mut stream = body.into_data_stream();
    while let Some(part) = stream.next().await {
        let part = part.map_err(|e| {
            ApiError::bad_request("VALIDATION_ERROR", format!("reading chunk body: {e}"))
        })?;
        if buf.len() + part.len() > expected {
            return Err(ApiError::BadRequest {
                code: "CHUNK_SIZE_MISMATCH",
                message: format!("chunk {index} is larger than the declared {expected} bytes"),
                details: json!({"chunk_index": index, "expected_size": expected}),
            });
        }
        buf.extend_from_slice(&part);
    }
    let declared = headers
        .get("x-chunk-sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let out = upload::put_chunk(&st, &c, &s, index, buf.freeze(), declared.as_deref()).await?;
    Ok(ok(StatusCode::OK, out))
}

pub async fn complete(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P(id): P<String>,
) -> ApiResult<Response> {
    c.require_write()?;
    let s = upload::load_session(&st, &c, &id, true).await?;
    let node = upload::complete(&st, &c, &s).await?;
    let change = if node.version > 1 {
        "updated"
    } else {
        "created"
    };
    crate::pubsub::node_changed(&st, &node, change);
    let mut body = fs::node_json(&st.db, &node).await?;
    body["file_id"] = json!(node.id);
    body["session_id"] = json!(s.id);
    Ok(ok(StatusCode::OK, body))
}
