//! Admin sessions: bootstrap-password login, login as an IAM user (`login-as`), logout, the
//! session probe, whoami, the per-session S3 credentials of the browser panel, the
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

use super::{client_ip, err, require_session, Body, St};
use crate::iam::UserSpec;
use crate::state::AppState;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/_/api/whoami", get(whoami))
        .route("/_/api/admin/login", post(login))
        .route("/_/api/admin/login-as", post(login_as))
        .route("/_/api/admin/logout", post(logout))
        .route("/_/api/admin/session", get(session))
        .route(
            "/_/api/admin/session/s3-credentials",
            get(s3_credentials_get)
                .put(s3_credentials_put)
                .delete(s3_credentials_delete),
        )
}

const COOKIE: &str = "dgp_session";
const MAX_SESSIONS: usize = 10;

/// Who a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Who {
    /// Logged in with the bootstrap password: always an admin.
    Bootstrap,
    /// Logged in with an IAM user's key pair (`login-as`), by user name: the user is looked
    /// up on every request, so a deleted or disabled user, or one that lost its admin
    /// rules, loses the admin routes at once (a key rotation keeps the session).
    User(String),
}

/// One session: bound to the client IP, with its expiry and the S3 key pair the browser
/// panel uses (`session/s3-credentials`).
#[derive(Debug, Clone)]
pub(super) struct Entry {
    ip: String,
    expires: Instant,
    pub(super) who: Who,
    s3: Option<(String, String)>,
}

/// Admin sessions: random token → [`Entry`]. At most ten; the oldest is evicted.
pub struct Sessions {
    inner: Mutex<HashMap<String, Entry>>,
    ttl: Duration,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Self {
        Sessions {
            inner: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    pub(super) fn create(&self, ip: &str, who: Who) -> String {
        let token = hex::encode(rand::random::<[u8; 32]>());
        let mut m = self.inner.lock();
        let now = Instant::now();
        m.retain(|_, e| e.expires > now);
        while m.len() >= MAX_SESSIONS {
            let oldest = m
                .iter()
                .min_by_key(|(_, e)| e.expires)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => m.remove(&k),
                None => break,
            };
        }
        m.insert(
            token.clone(),
            Entry {
                ip: ip.to_string(),
                expires: now + self.ttl,
                who,
                s3: None,
            },
        );
        token
    }

    /// The live session `token` from `ip`, if any.
    pub(super) fn get(&self, token: &str, ip: &str) -> Option<Entry> {
        self.inner
            .lock()
            .get(token)
            .filter(|e| e.ip == ip && e.expires > Instant::now())
            .cloned()
    }

    pub(super) fn remove(&self, token: &str) {
        self.inner.lock().remove(token);
    }

    /// Ends every session but `keep` (after a password change).
    pub(super) fn retain_only(&self, keep: &str) {
        self.inner.lock().retain(|t, _| t == keep);
    }

    fn set_s3(&self, token: &str, pair: Option<(String, String)>) {
        if let Some(e) = self.inner.lock().get_mut(token) {
            e.s3 = pair;
        }
    }
}

/// Recent failure times and the lockout end, per IP.
type Attempts = (Vec<Instant>, Option<Instant>);

/// Per-IP authentication failures (`DGP_RATE_LIMIT_MAX_ATTEMPTS` within
/// `DGP_RATE_LIMIT_WINDOW_SECS` lock the address out for `DGP_RATE_LIMIT_LOCKOUT_SECS`):
/// 429 SlowDown during a lockout. One instance for the admin endpoints that check a password
/// or key pair without a session (login, login-as, recover-db), one for SigV4.
pub struct LoginLimiter {
    inner: Mutex<HashMap<String, Attempts>>,
    /// What is locked, for the log line.
    what: &'static str,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::new("admin login")
    }
}

/// Addresses tracked before idle entries are swept (a scan from many addresses must not
/// grow the table without bound).
const SWEEP_ABOVE: usize = 10_000;

impl LoginLimiter {
    pub fn new(what: &'static str) -> Self {
        LoginLimiter {
            inner: Mutex::new(HashMap::new()),
            what,
        }
    }

    pub(crate) fn locked(&self, ip: &str) -> bool {
        matches!(self.inner.lock().get(ip), Some((_, Some(until))) if *until > Instant::now())
    }

    pub(crate) fn failure(&self, st: &AppState, ip: &str) {
        let now = Instant::now();
        let window = Duration::from_secs(st.cfg.rate_limit_window_secs);
        let mut m = self.inner.lock();
        if m.len() > SWEEP_ABOVE {
            m.retain(|_, (times, until)| {
                until.is_some_and(|u| u > now)
                    || times
                        .last()
                        .is_some_and(|t| now.duration_since(*t) < window)
            });
        }
        let e = m.entry(ip.to_string()).or_default();
        e.0.retain(|t| now.duration_since(*t) < window);
        e.0.push(now);
        if e.0.len() as u32 >= st.cfg.rate_limit_max_attempts {
            e.1 = Some(now + Duration::from_secs(st.cfg.rate_limit_lockout_secs));
            e.0.clear();
            tracing::warn!(
                ip,
                what = self.what,
                "{} locked out after repeated failures",
                self.what
            );
        }
    }
}

pub(super) fn slow_down() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        Json(json!({"error": "SlowDown"})),
    )
        .into_response()
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

/// The caller's live session (admin or not) with its token; 401 without one. A session of
/// an IAM user that no longer exists or is disabled is ended here.
pub(super) fn any_session(
    st: &AppState,
    headers: &HeaderMap,
    addr: &SocketAddr,
) -> Result<(String, Entry), Response> {
    let ip = client_ip(st, headers, addr);
    let unauth = || err(StatusCode::UNAUTHORIZED, "not_authenticated");
    let token = cookie_token(headers).ok_or_else(unauth)?;
    let entry = st.sessions.get(&token, &ip).ok_or_else(unauth)?;
    if let Who::User(name) = &entry.who {
        if session_user(st, name).is_none() {
            st.sessions.remove(&token);
            return Err(unauth());
        }
    }
    Ok((token, entry))
}

/// The enabled IAM user named `name`.
fn session_user(st: &AppState, name: &str) -> Option<UserSpec> {
    st.iam
        .users
        .read()
        .values()
        .find(|u| u.name == name && u.enabled)
        .cloned()
}

/// Whether the session may use the admin routes: the bootstrap login, or an IAM user that is
/// an admin (see [`crate::iam::Iam::is_admin`]).
pub(super) fn is_admin(st: &AppState, who: &Who) -> bool {
    match who {
        Who::Bootstrap => true,
        Who::User(name) => session_user(st, name).is_some_and(|u| st.iam.is_admin(&u)),
    }
}

pub(super) fn session_cookie(token: &str) -> String {
    let secure = if scai_core::config::bool_or("DGP_SECURE_COOKIES", true).unwrap_or(true) {
        "; Secure"
    } else {
        ""
    };
    format!("{COOKIE}={token}; Path=/_/; HttpOnly; SameSite=Strict{secure}")
}

fn logged_in(token: &str, body: serde_json::Value) -> Response {
    (
        [(http::header::SET_COOKIE, session_cookie(token))],
        Json(body),
    )
        .into_response()
}

async fn whoami(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    let user = match any_session(&st, &headers, &addr) {
        Ok((_, e)) => match &e.who {
            Who::Bootstrap => json!({"name": "admin", "is_admin": true, "kind": "bootstrap"}),
            Who::User(name) => {
                let u = session_user(&st, name);
                json!({
                    "name": name,
                    "access_key_id": u.as_ref().map(|u| u.access_key_id.clone()),
                    "is_admin": is_admin(&st, &e.who),
                    "kind": "iam",
                })
            }
        },
        Err(_) => serde_json::Value::Null,
    };
    Json(json!({
        "mode": if st.cfg.auth_none { "open" } else if st.iam.users.read().len() > 1 { "iam" } else { "bootstrap" },
        "version": env!("CARGO_PKG_VERSION"),
        "build_time": crate::config::BUILD_TIME,
        "user": user,
        "external_providers": crate::oidc::public_providers(&st),
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
    Body(body): Body<LoginBody>,
) -> Response {
    let ip = client_ip(&st, &headers, &addr);
    if st.login_limiter.locked(&ip) {
        return slow_down();
    }
    if !st.bootstrap.verify(body.password).await {
        st.login_limiter.failure(&st, &ip);
        metrics::counter!("deltaglider_auth_failures_total", "reason" => "invalid_password")
            .increment(1);
        st.audit
            .record("admin_login_failed", "$bootstrap", "login", &ip, "", "", "");
        return err(StatusCode::UNAUTHORIZED, "invalid_password");
    }
    let token = st.sessions.create(&ip, Who::Bootstrap);
    st.audit
        .record("admin_login", "$bootstrap", "login", &ip, "", "", "");
    logged_in(&token, json!({"ok": true}))
}

#[derive(Deserialize)]
struct KeyPair {
    access_key_id: String,
    secret_access_key: String,
}

/// The enabled user whose key pair this is (constant-time secret comparison).
fn user_for_pair(st: &AppState, pair: &KeyPair) -> Option<UserSpec> {
    let u = st.iam.user_by_key(&pair.access_key_id)?;
    let same = u.secret_access_key.len() == pair.secret_access_key.len()
        && u.secret_access_key
            .bytes()
            .zip(pair.secret_access_key.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    (same && u.enabled).then_some(u)
}

/// `POST /_/api/admin/login-as` `{access_key_id, secret_access_key}`: a session as that IAM
/// user (the bootstrap key pair logs in as `$bootstrap`). Rate-limited like login. The
/// session's S3 credentials are preset to the same pair.
async fn login_as(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Body(pair): Body<KeyPair>,
) -> Response {
    let ip = client_ip(&st, &headers, &addr);
    if st.login_limiter.locked(&ip) {
        return slow_down();
    }
    let Some(user) = user_for_pair(&st, &pair) else {
        st.login_limiter.failure(&st, &ip);
        metrics::counter!("deltaglider_auth_failures_total", "reason" => "invalid_credentials")
            .increment(1);
        st.audit.record(
            "admin_login_failed",
            &pair.access_key_id,
            "login-as",
            &ip,
            "",
            "",
            "",
        );
        return err(StatusCode::UNAUTHORIZED, "invalid_credentials");
    };
    let who = Who::User(user.name.clone());
    let admin = is_admin(&st, &who);
    let token = st.sessions.create(&ip, who);
    st.sessions.set_s3(
        &token,
        Some((pair.access_key_id.clone(), pair.secret_access_key.clone())),
    );
    st.audit
        .record("admin_login", &user.name, "login-as", &ip, "", "", "");
    logged_in(
        &token,
        json!({"ok": true, "user": {"name": user.name, "access_key_id": user.access_key_id, "is_admin": admin}}),
    )
}

async fn logout(State(st): St, headers: HeaderMap) -> Json<serde_json::Value> {
    if let Some(t) = cookie_token(&headers) {
        st.sessions.remove(&t);
    }
    Json(json!({"ok": true}))
}

/// `{valid}`: whether the caller may use the admin routes (a non-admin IAM session is not).
async fn session(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    Json(json!({"valid": require_session(&st, &headers, &addr).is_ok()}))
}

/// `GET …/session/s3-credentials`: the pair bound to this session, 404 when none is.
async fn s3_credentials_get(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let (_, entry) = match any_session(&st, &headers, &addr) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match entry.s3 {
        Some((ak, sk)) => {
            Json(json!({"access_key_id": ak, "secret_access_key": sk})).into_response()
        }
        None => err(StatusCode::NOT_FOUND, "no_s3_credentials"),
    }
}

/// `PUT …/session/s3-credentials` `{access_key_id, secret_access_key}`: binds the pair to
/// this session after checking it is a valid IAM (or bootstrap) pair; 422 otherwise.
async fn s3_credentials_put(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Body(pair): Body<KeyPair>,
) -> Response {
    let (token, _) = match any_session(&st, &headers, &addr) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(user) = user_for_pair(&st, &pair) else {
        return err(StatusCode::UNPROCESSABLE_ENTITY, "invalid_s3_credentials");
    };
    st.sessions.set_s3(
        &token,
        Some((pair.access_key_id.clone(), pair.secret_access_key)),
    );
    Json(json!({"ok": true, "access_key_id": pair.access_key_id, "user": user.name}))
        .into_response()
}

/// `DELETE …/session/s3-credentials`: forgets the pair (204).
async fn s3_credentials_delete(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let (token, _) = match any_session(&st, &headers, &addr) {
        Ok(s) => s,
        Err(r) => return r,
    };
    st.sessions.set_s3(&token, None);
    StatusCode::NO_CONTENT.into_response()
}
