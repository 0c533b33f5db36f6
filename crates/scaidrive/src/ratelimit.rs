//! Rate limiting (api §18): a middleware that verifies the bearer token once (the `Caller`
//! extractor reuses the verified claims), charges the endpoint's cost class against three
//! sliding windows at once (per token, user and tenant) with `scai-ratelimit`, puts
//! `X-RateLimit-Limit/-Remaining/-Reset` on the response and answers 429 `RATE_LIMITED`
//! (with `Retry-After`, `error.retry_after` and `error.details{dimension,limit,window_seconds}`)
//! when a window is full. Counters live in Redis when `SCAIDRIVE_REDIS_URL` is set (shared by
//! every API replica) and in process otherwise. A Redis outage fails open (the limiter's
//! documented behaviour): the API keeps serving, unlimited, until Redis is back.
//!
//! Requests without a bearer token (health, ready, config, metrics, and requests about to be
//! refused with 401) carry no rate-limit headers: there is no token to count against.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use scai_auth::Claims;
use scai_ratelimit::{CostClass, Decision, Dimension, Limiter, LimiterConfig};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::AppState;

/// Claims the rate-limit middleware already verified for this request.
#[derive(Clone)]
pub struct VerifiedClaims(pub Claims);

/// The configured limiter (or none when limiting is off).
pub struct RateLimit {
    limiter: Option<Limiter>,
    token_limit: u64,
    user_limit: u64,
    tenant_limit: u64,
    window_secs: u64,
}

impl RateLimit {
    pub fn from_config(cfg: &Config) -> anyhow::Result<RateLimit> {
        let lc = LimiterConfig {
            window: cfg.rate_limit_window,
            metric_prefix: "scaidrive".into(),
        };
        let limiter = if !cfg.rate_limit_enabled {
            None
        } else if let Some(url) = &cfg.redis_url {
            let opts = scai_ratelimit::RedisOptions {
                key_prefix: format!("{}:rl", cfg.redis_prefix),
                ..Default::default()
            };
            Some(
                Limiter::redis(url, opts, lc)
                    .map_err(|e| anyhow::anyhow!("SCAIDRIVE_REDIS_URL: rate limiter: {e}"))?,
            )
        } else {
            Some(Limiter::in_memory(lc))
        };
        // 0 turns one dimension off.
        let lim = |v: u64| if v == 0 { 1 << 50 } else { v };
        Ok(RateLimit {
            limiter,
            token_limit: lim(cfg.rate_limit_token),
            user_limit: lim(cfg.rate_limit_user),
            tenant_limit: lim(cfg.rate_limit_tenant),
            window_secs: cfg.rate_limit_window.as_secs().max(1),
        })
    }

    pub fn disabled() -> RateLimit {
        RateLimit {
            limiter: None,
            token_limit: 0,
            user_limit: 0,
            tenant_limit: 0,
            window_secs: 60,
        }
    }

    /// `memory`, `redis` or `off`.
    pub fn backend_name(&self) -> &'static str {
        self.limiter.as_ref().map_or("off", |l| l.backend_name())
    }
}

/// The cost class of a route (api §18): content transfer 5, listing 2, other reads 1,
/// writes 2.
pub fn cost_class(method: &Method, path: &str) -> CostClass {
    let transfer = path.ends_with("/content")
        || (path.starts_with("/api/v1/uploads/") && path.contains("/chunks/"))
        || (method == Method::POST && path == "/api/v1/files")
        || path.starts_with("/api/v1/sync/download");
    if transfer {
        CostClass::Transfer
    } else if path.starts_with("/api/v1/search/semantic")
        || path.starts_with("/api/v1/search/context")
    {
        CostClass::Semantic
    } else if path.starts_with("/api/v1/search") {
        CostClass::Search
    } else if method == Method::GET || method == Method::HEAD {
        if path.ends_with("/children") || path.ends_with("/versions") || path.ends_with("/shares") {
            CostClass::List
        } else {
            CostClass::Metadata
        }
    } else {
        CostClass::Write
    }
}

/// Tokens have no `jti`; a truncated SHA-256 of the token identifies it without keeping the
/// credential in Redis.
fn token_key(token: &str) -> String {
    hex::encode(&Sha256::digest(token.as_bytes())[..16])
}

fn set_headers(resp: &mut Response, d: &Decision) {
    for (name, value) in d.headers() {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            resp.headers_mut().insert(n, v);
        }
    }
}

/// The 429 body of the rate-limiting page.
fn rejected(d: &Decision, window_secs: u64) -> Response {
    let dim = d.dimension_hit.map_or("token", Dimension::as_str);
    let message = format!(
        "rate limit exceeded for {dim}: retry in {} s",
        d.retry_after_secs
    );
    let mut body = crate::error::envelope(
        "RATE_LIMITED",
        &message,
        serde_json::json!({"dimension": dim, "limit": d.limit, "window_seconds": window_secs}),
    );
    body["error"]["retry_after"] = serde_json::json!(d.retry_after_secs);
    tracing::info!(event = "rate_limited", dimension = dim, limit = d.limit);
    let mut resp = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    set_headers(&mut resp, d);
    resp
}

/// The middleware (see the module docs).
pub async fn layer(State(st): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let rl = &st.rate_limiter;
    let Some(limiter) = rl.limiter.as_ref() else {
        return next.run(req).await;
    };
    let path = req.uri().path().to_string();
    if !path.starts_with("/api/v1/")
        || matches!(
            path.as_str(),
            "/api/v1/health" | "/api/v1/ready" | "/api/v1/config"
        )
    {
        return next.run(req).await;
    }
    let Some(token) = scai_auth::bearer_token(req.headers()).map(str::to_string) else {
        return next.run(req).await;
    };
    // An invalid token is left to the Caller extractor, which answers 401/503 itself.
    let Ok(claims) = st.verifier.verify(&token).await else {
        return next.run(req).await;
    };
    let tenant = claims.tenant_id.clone().unwrap_or_default();
    let user = format!("{tenant}/{}", claims.sub);
    let tkey = token_key(&token);
    let cost = cost_class(req.method(), &path).cost();
    let d = limiter
        .check(
            &[
                (Dimension::Token, tkey.as_str(), rl.token_limit),
                (Dimension::User, user.as_str(), rl.user_limit),
                (Dimension::Tenant, tenant.as_str(), rl.tenant_limit),
            ],
            cost,
        )
        .await;
    if !d.allowed {
        return rejected(&d, rl.window_secs);
    }
    req.extensions_mut().insert(VerifiedClaims(claims));
    let mut resp = next.run(req).await;
    set_headers(&mut resp, &d);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let g = Method::GET;
        assert_eq!(cost_class(&g, "/api/v1/files/f1"), CostClass::Metadata);
        assert_eq!(
            cost_class(&g, "/api/v1/files/f1/content"),
            CostClass::Transfer
        );
        assert_eq!(
            cost_class(&g, "/api/v1/folders/x/children"),
            CostClass::List
        );
        assert_eq!(
            cost_class(&Method::PUT, "/api/v1/uploads/u/chunks/3"),
            CostClass::Transfer
        );
        assert_eq!(
            cost_class(&Method::PATCH, "/api/v1/files/f1"),
            CostClass::Write
        );
        assert_eq!(
            cost_class(&Method::POST, "/api/v1/files"),
            CostClass::Transfer
        );
    }
}
