//! User avatars: one small image per user, stored in the object store at
//! `avatars/{tenant_id}/{user_id}` (the deployment guide's layout: ids only, nothing
//! user-identifying). The content type is read back from the image's magic bytes, so no
//! column is needed; only PNG, JPEG, GIF and WebP are accepted.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::P;
use crate::auth::{safe_id, Caller};
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Largest avatar accepted.
pub const MAX_AVATAR_BYTES: usize = 2 << 20;

fn key(tenant_id: &str, user_id: &str) -> String {
    format!("avatars/{tenant_id}/{user_id}")
}

/// The image type of `data`, from its first bytes.
fn sniff(data: &[u8]) -> Option<&'static str> {
    if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if data.len() >= 12 && &data[0..4] == b"RIFF" && &data[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// `PUT /api/v1/users/me/avatar`: the raw image as the body.
pub async fn put_mine(
    State(st): State<Arc<AppState>>,
    c: Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    c.require_write()?;
    // The route's body limit is one byte over the maximum, so an over-long body is refused
    // here in the envelope rather than by axum's plain-text rejection.
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                message: format!("an avatar may be at most {MAX_AVATAR_BYTES} bytes"),
                limit: MAX_AVATAR_BYTES as u64,
            }
        } else {
            ApiError::bad_request(
                "VALIDATION_ERROR",
                format!("unreadable body: {}", e.body_text()),
            )
        }
    })?;
    if body.len() > MAX_AVATAR_BYTES {
        return Err(ApiError::PayloadTooLarge {
            message: format!("an avatar may be at most {MAX_AVATAR_BYTES} bytes"),
            limit: MAX_AVATAR_BYTES as u64,
        });
    }
    let Some(mime) = sniff(&body) else {
        return Err(ApiError::bad_request(
            "UNSUPPORTED_MEDIA_TYPE",
            "an avatar must be a PNG, JPEG, GIF or WebP image",
        ));
    };
    st.store.put(&key(&c.tenant_id, &c.user_id), body).await?;
    Ok(super::ok(
        StatusCode::OK,
        serde_json::json!({"user_id": c.user_id, "mime_type": mime}),
    ))
}

/// `DELETE /api/v1/users/me/avatar`.
pub async fn delete_mine(State(st): State<Arc<AppState>>, c: Caller) -> ApiResult<Response> {
    st.store.delete(&key(&c.tenant_id, &c.user_id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/v1/users/{user_id}/avatar`: any user of the caller's tenant; other tenants'
/// users are simply not found (the key carries the caller's tenant).
pub async fn get(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P(user_id): P<String>,
) -> ApiResult<Response> {
    c.require_read()?;
    let user_id = if user_id == "me" {
        c.user_id.clone()
    } else {
        user_id
    };
    if !safe_id(&user_id) {
        return Err(ApiError::NotFound("avatar"));
    }
    let k = key(&c.tenant_id, &user_id);
    if !st.store.exists(&k).await? {
        return Err(ApiError::NotFound("avatar"));
    }
    let data = st.store.read_all(&k).await?;
    let mime = sniff(&data).unwrap_or("application/octet-stream");
    Ok((
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "private, max-age=300"),
        ],
        data,
    )
        .into_response())
}
