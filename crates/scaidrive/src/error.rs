//! The crate's one error type and its single mapping to the wire envelope
//! `{"status":"error","error":{"code","message","details"},"detail","meta":{"request_id"}}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    TokenInvalid(String),
    #[error("user is suspended")]
    UserSuspended,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0} is in the trash")]
    Deleted(&'static str),
    #[error("upload session has expired")]
    SessionExpired,
    #[error("upload session not found")]
    SessionNotFound,
    #[error("an item named {0:?} already exists in this folder")]
    NameConflict(String),
    #[error("{message}")]
    PayloadTooLarge { message: String, limit: u64 },
    #[error("{message}")]
    ChecksumMismatch {
        message: String,
        expected: String,
        actual: String,
    },
    #[error("{message}")]
    Validation { message: String, details: Value },
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: String,
        details: Value,
    },
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        details: Value,
    },
    /// 410 with a specific code (e.g. `SYNC_CURSOR_INVALID`).
    #[error("{message}")]
    Gone {
        code: &'static str,
        message: String,
        details: Value,
    },
    #[error("requested range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    #[error("rate limit exceeded for {dimension}")]
    RateLimited {
        dimension: &'static str,
        retry_after: u64,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn validation(message: impl Into<String>) -> Self {
        ApiError::Validation {
            message: message.into(),
            details: Value::Null,
        }
    }
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError::Validation {
            details: json!({"field": field, "reason": message}),
            message: format!("{field}: {message}"),
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
            details: Value::Null,
        }
    }
    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::TokenInvalid(_) => StatusCode::UNAUTHORIZED,
            ApiError::UserSuspended | ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::SessionNotFound => StatusCode::NOT_FOUND,
            ApiError::Deleted(_) | ApiError::SessionExpired | ApiError::Gone { .. } => {
                StatusCode::GONE
            }
            ApiError::NameConflict(_) | ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::ChecksumMismatch { .. } | ApiError::Validation { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::TokenInvalid(_) => "AUTH_TOKEN_INVALID",
            ApiError::UserSuspended => "AUTHZ_USER_SUSPENDED",
            ApiError::Forbidden(_) => "AUTHZ_PERMISSION_DENIED",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::Deleted(_) => "RESOURCE_DELETED",
            ApiError::SessionExpired => "UPLOAD_SESSION_EXPIRED",
            ApiError::SessionNotFound => "UPLOAD_SESSION_NOT_FOUND",
            ApiError::NameConflict(_) => "NAME_CONFLICT",
            ApiError::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            ApiError::ChecksumMismatch { .. } => "CHECKSUM_MISMATCH",
            ApiError::Validation { .. } => "VALIDATION_ERROR",
            ApiError::BadRequest { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Gone { code, .. } => code,
            ApiError::RangeNotSatisfiable { .. } => "RANGE_NOT_SATISFIABLE",
            ApiError::RateLimited { .. } => "RATE_LIMITED",
            ApiError::Unavailable(_) => "SERVICE_UNAVAILABLE",
            ApiError::Internal(_) => "INTERNAL_ERROR",
        }
    }

    fn details(&self) -> Value {
        match self {
            ApiError::NameConflict(name) => json!({"name": name}),
            ApiError::PayloadTooLarge { limit, .. } => json!({"max_file_size_bytes": limit}),
            ApiError::ChecksumMismatch {
                expected, actual, ..
            } => {
                json!({"expected": expected, "actual": actual})
            }
            ApiError::Validation { details, .. }
            | ApiError::BadRequest { details, .. }
            | ApiError::Conflict { details, .. }
            | ApiError::Gone { details, .. } => details.clone(),
            ApiError::RangeNotSatisfiable { size } => json!({"size": size}),
            ApiError::RateLimited {
                dimension,
                retry_after,
            } => {
                json!({"dimension": dimension, "retry_after": retry_after})
            }
            _ => Value::Null,
        }
    }
}

/// The envelope for any error code/message (also used by rejections and the fallback).
pub fn envelope(code: &str, message: &str, details: Value) -> Value {
    json!({
        "status": "error",
        "error": {"code": code, "message": message, "details": details},
        "detail": message,
        "meta": {"request_id": scai_core::request_id::current_or_new()},
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // Internal details go to the log, never to the client.
        let message = match &self {
            ApiError::Internal(e) => {
                tracing::error!(event = "request_failed", error = %e, "internal error");
                "internal error".to_string()
            }
            other => other.to_string(),
        };
        let body = envelope(self.code(), &message, self.details());
        let mut resp = (status, axum::Json(body)).into_response();
        if let ApiError::RateLimited { retry_after, .. } = &self {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        if let ApiError::RangeNotSatisfiable { size } = self {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(http::header::CONTENT_RANGE, v);
            }
        }
        resp
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                ApiError::Unavailable(format!("database unavailable: {e}"))
            }
            _ => ApiError::Internal(format!("database: {e}")),
        }
    }
}

impl From<std::io::Error> for ApiError {
    /// Object-store failures (S3 down, disk gone) are a dependency outage: a clear 503
    /// `SERVICE_UNAVAILABLE`, never a bare 500. Nothing is committed after a failed write.
    fn from(e: std::io::Error) -> Self {
        tracing::warn!(event = "storage_unavailable", error = %e);
        ApiError::Unavailable("storage unavailable, retry later".into())
    }
}

/// True when the database refused a row because of a unique index (sibling-name collision).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}
