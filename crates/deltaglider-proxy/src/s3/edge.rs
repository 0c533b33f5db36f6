//! The HTTP layer just in front of s3s, for what s3s does not route: `HEAD /` (a
//! reachability probe that s3s would answer 501) and the PostObject form-upload
//! pre/post-processing (see `post_object`), and the `<UserMetadata>` a ListObjectsV2 with
//! `metadata=true` adds to the XML s3s wrote (see `list_objects`), and the random
//! `x-amz-request-id` of every S3 response.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

use super::{list_objects, post_object};

pub async fn layer(req: Request, next: Next) -> Response {
    let mut resp = route(req, next).await;
    // Every S3 answer, errors included, carries a random UUID `x-amz-request-id`, as S3
    // does and the DeltaGlider digest requires; SDKs report it beside their errors.
    if let Ok(v) = http::HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        resp.headers_mut().insert("x-amz-request-id", v);
    }
    resp
}

async fn route(req: Request, next: Next) -> Response {
    if req.method() == http::Method::HEAD && req.uri().path() == "/" {
        // Clients (SDK health checks, load balancers) probe the endpoint with an unsigned
        // HEAD /: it carries no data, so it needs no credentials.
        return Response::new(axum::body::Body::empty());
    }
    if post_object::is_form_upload(req.method(), req.uri().path(), req.headers()) {
        return post_object::around(req, next).await;
    }
    let resp = next.run(req).await;
    match resp
        .extensions()
        .get::<list_objects::ListedMetadata>()
        .cloned()
    {
        Some(meta) => with_listed_metadata(resp, &meta).await,
        None => resp,
    }
}

/// Rewrites a listing body (at most 1000 keys, so buffering it is cheap).
async fn with_listed_metadata(resp: Response, meta: &list_objects::ListedMetadata) -> Response {
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 20).await else {
        return Response::from_parts(parts, axum::body::Body::empty());
    };
    let Ok(xml) = std::str::from_utf8(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    let out = list_objects::inject_metadata(xml, meta);
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(out))
}
