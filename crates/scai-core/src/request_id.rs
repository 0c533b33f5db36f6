//! Request ids: accepted from `X-Request-Id` (when it is short and printable) or generated,
//! echoed on the response, attached to the request's tracing span, and readable from anywhere
//! in the handler's task through [`current`], so error envelopes can carry `meta.request_id`
//! without every handler threading it through.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served by this task, if any.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(|id| id.clone()).ok()
}

/// The id of the request being served, or a fresh one (for code that also runs outside requests).
pub fn current_or_new() -> String {
    current().unwrap_or_else(generate)
}

pub fn generate() -> String {
    format!("req_{}", uuid::Uuid::new_v4().simple())
}

/// Client-supplied ids are echoed only when safe to log and to put in a header.
fn acceptable(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
}

/// Axum middleware: `Router::layer(axum::middleware::from_fn(scai_core::request_id::layer))`.
/// It opens the `request` span that every log line of the request is nested in.
pub async fn layer(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_string)
        .unwrap_or_else(generate);
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let mut resp = REQUEST_ID
        .scope(id.clone(), next.run(req))
        .instrument(span)
        .await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(HEADER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{body::Body, routing::get, Router};
    use tower::ServiceExt;

    #[tokio::test]
    async fn echoes_or_generates() {
        let app = Router::new()
            .route("/", get(|| async { current().unwrap_or_default() }))
            .layer(axum::middleware::from_fn(layer));
        let resp = app
            .clone()
            .oneshot(
                Request::builder()
                    .uri("/")
                    .header(HEADER, "abc-123")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.headers()[HEADER], "abc-123");
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"abc-123");

        let resp = app
            .oneshot(
                Request::builder()
                    .uri("/")
                    .header(HEADER, "has space")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert!(resp.headers()[HEADER].to_str().unwrap().starts_with("req_"));
    }
}
