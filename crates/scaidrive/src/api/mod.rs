//! HTTP surface: the router (routes by resource in submodules), the extractors that turn
//! axum's rejections into the error envelope, and the success envelope helper that adds
//! `meta.request_id` to every JSON body.

mod admin;
mod avatars;
pub(crate) mod files;
mod folders;
mod system;
mod uploads;
mod users;

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::error::{envelope, ApiError};
use crate::AppState;

/// A JSON success body with `meta.request_id` added.
pub fn ok(status: StatusCode, mut body: Value) -> Response {
    if let Value::Object(m) = &mut body {
        m.insert(
            "meta".into(),
            json!({"request_id": scai_core::request_id::current_or_new()}),
        );
    }
    (status, axum::Json(body)).into_response()
}

/// `Json<T>` whose rejections are envelope errors: unparsable → 400, wrong shape/types → 422.
pub struct J<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for J<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(J(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::Validation {
                message: format!("invalid request body: {}", e.body_text()),
                details: json!({"reason": e.body_text()}),
            }),
            // axum reports an over-limit body as 400; it is a 413 to the client.
            Err(e)
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE
                    || e.body_text().contains("length limit exceeded") =>
            {
                Err(ApiError::PayloadTooLarge {
                    message: "request body too large".into(),
                    limit: 2 << 20,
                })
            }
            Err(e) => Err(ApiError::BadRequest {
                code: "VALIDATION_ERROR",
                message: format!("malformed request body: {}", e.body_text()),
                details: json!({"reason": e.body_text()}),
            }),
        }
    }
}

/// `Query<T>` with envelope rejections (400).
pub struct Q<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Q(q.0))
            .map_err(|e: QueryRejection| {
                ApiError::bad_request(
                    "VALIDATION_ERROR",
                    format!("invalid query: {}", e.body_text()),
                )
            })
    }
}

/// `Path<T>` with envelope rejections (400): e.g. a negative or non-numeric chunk index.
pub struct P<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for P<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| P(p.0))
            .map_err(|e: PathRejection| {
                ApiError::bad_request(
                    "VALIDATION_ERROR",
                    format!("invalid path: {}", e.body_text()),
                )
            })
    }
}

async fn fallback() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(envelope("NOT_FOUND", "no such endpoint", Value::Null)),
    )
        .into_response()
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(envelope(
            "METHOD_NOT_ALLOWED",
            "method not allowed on this endpoint",
            Value::Null,
        )),
    )
        .into_response()
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!(event = "handler_panicked");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(envelope("INTERNAL_ERROR", "internal error", Value::Null)),
    )
        .into_response()
}

pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/api/v1/health", get(system::health))
        .route("/api/v1/ready", get(system::ready))
        .route("/api/v1/config", get(system::config))
        .route("/api/v1/users/me", get(users::me))
        .route("/api/v1/users/me/shares", get(users::my_shares))
        .route(
            "/api/v1/users/me/avatar",
            put(avatars::put_mine).delete(avatars::delete_mine).layer(
                axum::extract::DefaultBodyLimit::max(avatars::MAX_AVATAR_BYTES + 1),
            ),
        )
        .route("/api/v1/users/{user_id}/avatar", get(avatars::get))
        .route("/api/v1/shares/{share_id}", get(users::share))
        .route("/api/v1/folders", post(folders::create))
        .route(
            "/api/v1/folders/{folder_id}",
            get(folders::get)
                .patch(folders::update)
                .delete(folders::delete),
        )
        .route(
            "/api/v1/folders/{folder_id}/children",
            get(folders::children),
        )
        .route(
            "/api/v1/files",
            post(files::upload).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/files/{file_id}",
            get(files::get).patch(files::update).delete(files::delete),
        )
        .route(
            "/api/v1/files/{file_id}/content",
            get(files::download)
                .post(files::upload_version)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/api/v1/files/{file_id}/versions", get(files::versions))
        .route(
            "/api/v1/files/{file_id}/versions/{version}/restore",
            post(files::restore),
        )
        .route("/api/v1/uploads", post(uploads::create))
        .route(
            "/api/v1/uploads/{session_id}",
            get(uploads::status).delete(uploads::abort),
        )
        .route(
            "/api/v1/uploads/{session_id}/chunks/{index}",
            put(uploads::put_chunk).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/uploads/{session_id}/complete",
            post(uploads::complete),
        )
        .route(
            "/api/v1/admin/tenant",
            get(admin::tenant).patch(admin::patch_tenant),
        )
        .route(
            "/api/v1/admin/users/{user_id}/activate",
            post(admin::activate),
        )
        .route(
            "/api/v1/admin/users/{user_id}/deactivate",
            post(admin::deactivate),
        )
        .merge(crate::sync::api::routes())
        .route("/metrics", get(scai_core::metrics::metrics_handler))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone());
    // Rate limiting sits inside the metrics layer so 429s are counted like any response.
    let api = api.layer(axum::middleware::from_fn_with_state(
        state,
        crate::ratelimit::layer,
    ));
    let names = scai_core::metrics::HttpMetricNames {
        requests_total: "scaidrive_requests_total",
        duration_seconds: "scaidrive_request_duration_seconds",
    };
    api.layer(axum::middleware::from_fn(move |req, next| {
        scai_core::metrics::http_layer(names, req, next)
    }))
    .layer(tower_http::catch_panic::CatchPanicLayer::custom(
        panic_response,
    ))
    .layer(axum::middleware::from_fn(scai_core::request_id::layer))
}
