//! Admin sessions: the bootstrap-password login, logout, the session probe and whoami, the
//! cookie-session table and the per-IP login limiter.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;

use super::{client_ip, err, require_session, St};
use crate::state::AppState;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/_/api/whoami", get(whoami))
        .route("/_/api/admin/login", post(login))
        .route("/_/api/admin/logout", post(logout))
        .route("/_/api/admin/session", get(session))
}
const COOKIE: &str = "dgp_session";
const MAX_SESSIONS: usize = 10;

/// Admin sessions: random token → (client IP, expiry). At most ten; the oldest is evicted.
pub struct Sessions {
    inner: Mutex<HashMap<String, (String, Instant)>>,
    ttl: Duration,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Self {
        Sessions {
            inner: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    fn create(&self, ip: &str) -> String {
        let token = hex::encode(rand::random::<[u8; 32]>());
        let mut m = self.inner.lock();
        let now = Instant::now();
        m.retain(|_, (_, exp)| *exp > now);
        while m.len() >= MAX_SESSIONS {
            let oldest = m
                .iter()
                .min_by_key(|(_, (_, e))| *e)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => m.remove(&k),
                None => break,
            };
        }
        m.insert(token.clone(), (ip.to_string(), now + self.ttl));
        token
    }

    pub(super) fn valid(&self, token: &str, ip: &str) -> bool {
        matches!(self.inner.lock().get(token), Some((sip, exp)) if sip == ip && *exp > Instant::now())
    }

    fn remove(&self, token: &str) {
        self.inner.lock().remove(token);
    }
}

/// Recent failure times and the lockout end, per IP.
type Attempts = (Vec<Instant>, Option<Instant>);

/// Per-IP admin login failures: 429 SlowDown during a lockout.
#[derive(Default)]
pub struct LoginLimiter {
    inner: Mutex<HashMap<String, Attempts>>,
}

impl LoginLimiter {
    fn locked(&self, ip: &str) -> bool {
        matches!(self.inner.lock().get(ip), Some((_, Some(until))) if *until > Instant::now())
    }

    fn failure(&self, st: &AppState, ip: &str) {
        let now = Instant::now();
        let window = Duration::from_secs(st.cfg.rate_limit_window_secs);
        let mut m = self.inner.lock();
        let e = m.entry(ip.to_string()).or_default();
        e.0.retain(|t| now.duration_since(*t) < window);
        e.0.push(now);
        if e.0.len() as u32 >= st.cfg.rate_limit_max_attempts {
            e.1 = Some(now + Duration::from_secs(st.cfg.rate_limit_lockout_secs));
            e.0.clear();
            tracing::warn!(ip, "admin login locked out after repeated failures");
        }
    }
}

pub(super) fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == COOKIE).then(|| v.to_string())
        })
}

async fn whoami(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    let logged_in = require_session(&st, &headers, &addr).is_ok();
    Json(json!({
        "mode": if st.cfg.auth_none { "open" } else if st.iam.users.read().len() > 1 { "iam" } else { "bootstrap" },
        "version": env!("CARGO_PKG_VERSION"),
        "build_time": crate::config::BUILD_TIME,
        "user": if logged_in { json!({"name": "admin", "is_admin": true}) } else { serde_json::Value::Null },
        "external_providers": [],
    }))
}

#[derive(Deserialize)]
struct LoginBody {
    password: String,
}

async fn login(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<LoginBody>,
) -> Response {
    let ip = client_ip(&st, &headers, &addr);
    if st.login_limiter.locked(&ip) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"error": "SlowDown"})),
        )
            .into_response();
    }
    let Some(hash) = st.cfg.bootstrap_password_hash.clone() else {
        return err(
            StatusCode::FORBIDDEN,
            "no bootstrap password configured (DGP_BOOTSTRAP_PASSWORD_HASH)",
        );
    };
    // Accept the hash raw or base64-encoded.
    let hash = if hash.starts_with("$2") {
        hash
    } else {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(&hash)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or(hash)
    };
    let ok =
        tokio::task::spawn_blocking(move || bcrypt::verify(body.password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
    if !ok {
        st.login_limiter.failure(&st, &ip);
        metrics::counter!("deltaglider_auth_failures_total", "reason" => "invalid_password")
            .increment(1);
        st.audit
            .record("admin_login_failed", "$bootstrap", "login", &ip, "", "", "");
        return err(StatusCode::UNAUTHORIZED, "invalid_password");
    }
    let token = st.sessions.create(&ip);
    st.audit
        .record("admin_login", "$bootstrap", "login", &ip, "", "", "");
    let secure = if scai_core::config::bool_or("DGP_SECURE_COOKIES", true).unwrap_or(true) {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!("{COOKIE}={token}; Path=/_/; HttpOnly; SameSite=Strict{secure}");
    (
        [(http::header::SET_COOKIE, cookie)],
        Json(json!({"ok": true})),
    )
        .into_response()
}

async fn logout(State(st): St, headers: HeaderMap) -> Json<serde_json::Value> {
    if let Some(t) = cookie_token(&headers) {
        st.sessions.remove(&t);
    }
    Json(json!({"ok": true}))
}

async fn session(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    Json(json!({"valid": require_session(&st, &headers, &addr).is_ok()}))
}
