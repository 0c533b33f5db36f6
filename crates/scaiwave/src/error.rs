//! The one error type of the crate, mapped once to the wire envelope
//! `{"error":{"code":"SW_…","message":"…"}}` with the spec's codes and statuses.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidToken(String),
    #[error("token has expired")]
    ExpiredToken,
    #[error("{0}")]
    Forbidden(String),
    #[error("you are not a member of this room")]
    NotMember,
    #[error("room not found")]
    RoomNotFound,
    #[error("{0}")]
    RoomForbidden(String),
    #[error("{0}")]
    RoomTypeInvariant(String),
    #[error("room is closed or archived")]
    RoomFrozen,
    #[error("event not found")]
    EventNotFound,
    #[error("the edit window has passed")]
    TooOldToEdit,
    #[error("{0}")]
    RedactForbidden(String),
    #[error("content is {0} bytes; the limit is {1} bytes")]
    ContentTooLarge(usize, usize),
    #[error("rate limit exceeded; retry in {0} ms")]
    RateLimited(u64),
    #[error("{0}")]
    Invalid(String),
    #[error("participant not found")]
    ParticipantNotFound,
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidToken(_) => "SW_AUTH_INVALID_TOKEN",
            ApiError::ExpiredToken => "SW_AUTH_EXPIRED_TOKEN",
            ApiError::Forbidden(_) => "SW_AUTH_INSUFFICIENT_PERMISSION",
            ApiError::NotMember => "SW_NOT_MEMBER",
            ApiError::RoomNotFound => "SW_ROOM_NOT_FOUND",
            ApiError::RoomForbidden(_) => "SW_ROOM_FORBIDDEN",
            ApiError::RoomTypeInvariant(_) => "SW_ROOM_TYPE_INVARIANT",
            ApiError::RoomFrozen => "SW_ROOM_FROZEN",
            ApiError::EventNotFound => "SW_EVENT_NOT_FOUND",
            ApiError::TooOldToEdit => "SW_EVENT_TOO_OLD_TO_EDIT",
            ApiError::RedactForbidden(_) => "SW_REDACT_FORBIDDEN",
            ApiError::ContentTooLarge(..) => "SW_CONTENT_TOO_LARGE",
            ApiError::RateLimited(_) => "SW_RATE_LIMIT_EXCEEDED",
            ApiError::Invalid(_) => "SW_INVALID_REQUEST",
            ApiError::ParticipantNotFound => "SW_PARTICIPANT_NOT_FOUND",
            ApiError::Unavailable(_) => "SW_SERVICE_UNAVAILABLE",
            ApiError::Internal(_) => "SW_INTERNAL_ERROR",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidToken(_) | ApiError::ExpiredToken => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_)
            | ApiError::NotMember
            | ApiError::RoomForbidden(_)
            | ApiError::RedactForbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RoomNotFound | ApiError::EventNotFound | ApiError::ParticipantNotFound => {
                StatusCode::NOT_FOUND
            }
            ApiError::RoomTypeInvariant(_) | ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::RoomFrozen | ApiError::TooOldToEdit => StatusCode::CONFLICT,
            ApiError::ContentTooLarge(..) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(format!("database: {e}"))
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        ApiError::Internal(format!("json: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error = %detail, "internal error");
        }
        let body = json!({"error": {"code": self.code(), "message": self.to_string()}});
        let mut resp = (self.status(), axum::Json(body)).into_response();
        if let ApiError::RateLimited(ms) = self {
            let secs = ms.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
