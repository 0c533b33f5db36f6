//! The HTTP layer just in front of s3s, for what s3s does not route: `HEAD /` (a
//! reachability probe that s3s would answer 501) and the PostObject form-upload
//! pre/post-processing (see `post_object`).

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

use super::post_object;

pub async fn layer(req: Request, next: Next) -> Response {
    if req.method() == http::Method::HEAD && req.uri().path() == "/" {
        // Clients (SDK health checks, load balancers) probe the endpoint with an unsigned
        // HEAD /: it carries no data, so it needs no credentials.
        return Response::new(axum::body::Body::empty());
    }
    if post_object::is_form_upload(req.method(), req.uri().path(), req.headers()) {
        return post_object::around(req, next).await;
    }
    next.run(req).await
}
