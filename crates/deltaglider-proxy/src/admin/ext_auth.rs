//! External-authentication routes: OIDC provider and mapping-rule management
//! (`/_/api/admin/ext-auth/*`), `POST /_/api/admin/migrate`, and the public OAuth flow
//! (`/_/api/admin/oauth/authorize/{provider}`, `/_/api/admin/oauth/callback`). The domain
//! logic lives in [`crate::oidc`]; handlers here parse, authorize and map errors.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::iam::declarative_guard;
use super::{audit_iam_change, client_ip, err, Admin, Body, St};
use crate::iam::{Permission, UserSpec};
use crate::oidc::{self, ExtAuthError, MappingRule, ProviderSpec};
use crate::state::AppState;

const P: &str = "/_/api/admin/ext-auth";

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            &format!("{P}/providers"),
            get(list_providers).post(create_provider),
        )
        .route(
            &format!("{P}/providers/{{id}}"),
            put(update_provider).delete(delete_provider),
        )
        .route(&format!("{P}/providers/{{id}}/test"), post(test_provider))
        .route(&format!("{P}/mappings"), get(list_rules).post(create_rule))
        .route(&format!("{P}/mappings/preview"), post(preview))
        .route(
            &format!("{P}/mappings/{{id}}"),
            put(update_rule).delete(delete_rule),
        )
        .route(&format!("{P}/identities"), get(identities))
        .route(&format!("{P}/sync-memberships"), post(sync_memberships))
        .route("/_/api/admin/migrate", post(migrate))
        .route("/_/api/admin/oauth/authorize/{provider}", get(authorize))
        .route("/_/api/admin/oauth/callback", get(callback))
}

/// The one mapping of domain errors to the wire.
fn wire(e: ExtAuthError) -> Response {
    use ExtAuthError as E;
    let (status, msg) = match &e {
        E::NotFound(m) => (StatusCode::NOT_FOUND, m.to_string()),
        E::Conflict(m) => (StatusCode::CONFLICT, m.clone()),
        E::Invalid(m) => (StatusCode::UNPROCESSABLE_ENTITY, m.clone()),
        E::Declarative => (StatusCode::FORBIDDEN, "iam_declarative".into()),
        E::UnknownProvider => (StatusCode::NOT_FOUND, "unknown_provider".into()),
        E::InvalidState => (StatusCode::BAD_REQUEST, "invalid_state".into()),
        E::Provider(_) => (StatusCode::BAD_GATEWAY, e.to_string()),
        E::Token(_) => (StatusCode::UNAUTHORIZED, "invalid_id_token".into()),
        E::Disabled => (StatusCode::FORBIDDEN, "user_disabled".into()),
        E::Persist(p) => {
            tracing::error!(error = %p, "ext-auth change not persisted");
            (StatusCode::INTERNAL_SERVER_ERROR, "persist_failed".into())
        }
    };
    err(status, &msg)
}

async fn list_providers(_: Admin, State(st): St) -> Response {
    let v: Vec<Value> = oidc::providers(&st)
        .iter()
        .map(oidc::provider_view)
        .collect();
    Json(json!({ "providers": v })).into_response()
}

async fn create_provider(
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Body(p): Body<ProviderSpec>,
) -> Response {
    if let Err(r) = declarative_guard(&st) {
        return r;
    }
    match oidc::create_provider(&st, p) {
        Ok(p) => {
            audit_iam_change(&st, "ext_auth_provider_create", &p.name, &headers, &addr);
            (StatusCode::CREATED, Json(oidc::provider_view(&p))).into_response()
        }
        Err(e) => wire(e),
    }
}

async fn update_provider(
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(p): Body<ProviderSpec>,
) -> Response {
    if let Err(r) = declarative_guard(&st) {
        return r;
    }
    let Some(id) = find_provider(&st, &id).map(|p| p.id) else {
        return wire(ExtAuthError::NotFound("no such provider"));
    };
    match oidc::update_provider(&st, id, p) {
        Ok(p) => {
            audit_iam_change(&st, "ext_auth_provider_update", &p.name, &headers, &addr);
            Json(oidc::provider_view(&p)).into_response()
        }
        Err(e) => wire(e),
    }
}

/// A provider by path id: the numeric id, or the provider's name.
fn find_provider(st: &AppState, id: &str) -> Option<ProviderSpec> {
    let mut all = oidc::providers(st);
    let n = id.parse::<u64>().ok();
    let i = (all.iter().position(|p| Some(p.id) == n))
        .or_else(|| all.iter().position(|p| p.name == id))?;
    Some(all.swap_remove(i))
}

async fn delete_provider(
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = declarative_guard(&st) {
        return r;
    }
    let Some(id) = find_provider(&st, &id).map(|p| p.id) else {
        return wire(ExtAuthError::NotFound("no such provider"));
    };
    match oidc::delete_provider(&st, id) {
        Ok(name) => {
            audit_iam_change(&st, "ext_auth_provider_delete", &name, &headers, &addr);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => wire(e),
    }
}

/// `POST …/providers/{id}/test`: fetch discovery and JWKS now; `{ok, error?}`. Allowed in
/// declarative mode (it changes nothing).
async fn test_provider(_: Admin, State(st): St, Path(id): Path<String>) -> Response {
    let Some(p) = find_provider(&st, &id) else {
        return wire(ExtAuthError::NotFound("no such provider"));
    };
    Json(st.oidc.test_provider(&p).await).into_response()
}

async fn list_rules(_: Admin, State(st): St) -> Response {
    let rules: Vec<Value> = oidc::rules(&st).iter().map(rule_view).collect();
    Json(json!({ "mappings": rules })).into_response()
}

fn rule_view(r: &MappingRule) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    v["id"] = json!(r.id);
    v
}

async fn create_rule(
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Body(r): Body<MappingRule>,
) -> Response {
    if let Err(r) = declarative_guard(&st) {
        return r;
    }
    match oidc::create_rule(&st, r) {
        Ok(r) => {
            audit_iam_change(&st, "ext_auth_mapping_create", &r.group, &headers, &addr);
            (StatusCode::CREATED, Json(rule_view(&r))).into_response()
        }
        Err(e) => wire(e),
    }
}

async fn update_rule(
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Body(r): Body<MappingRule>,
) -> Response {
    if let Err(r) = declarative_guard(&st) {
        return r;
    }
    match oidc::update_rule(&st, id, r) {
        Ok(r) => {
            audit_iam_change(&st, "ext_auth_mapping_update", &r.group, &headers, &addr);
            Json(rule_view(&r)).into_response()
        }
        Err(e) => wire(e),
    }
}

async fn delete_rule(
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    if let Err(r) = declarative_guard(&st) {
        return r;
    }
    match oidc::delete_rule(&st, id) {
        Ok(()) => {
            audit_iam_change(
                &st,
                "ext_auth_mapping_delete",
                &id.to_string(),
                &headers,
                &addr,
            );
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => wire(e),
    }
}

#[derive(Deserialize)]
struct PreviewBody {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    claims: Value,
    /// Only this provider's rules (and the all-provider ones); absent: every rule.
    #[serde(default)]
    provider: Option<String>,
}

/// `POST …/mappings/preview` `{email, claims, provider?}` → the groups the rules would add.
/// `email` wins over `claims.email`; `claims.email_verified: false` disables email rules,
/// as at login.
async fn preview(_: Admin, State(st): St, Body(b): Body<PreviewBody>) -> Response {
    let mut claims = if b.claims.is_object() {
        b.claims
    } else {
        json!({})
    };
    if let Some(e) = b.email {
        claims["email"] = json!(e);
    }
    let email = oidc::verified_email(&claims);
    let known = st.iam.groups.read().keys().cloned().collect();
    let (groups, matched) = oidc::groups_for(
        &oidc::rules(&st),
        b.provider.as_deref(),
        email.as_deref(),
        &claims,
        &known,
    );
    Json(json!({"groups": groups, "matched_rules": matched})).into_response()
}

async fn identities(_: Admin, State(st): St) -> Response {
    let users = st.iam.users.read();
    let v: Vec<Value> = oidc::identities(&st)
        .into_iter()
        .map(|x| {
            let name = users.get(&x.user).map(|u| u.name.clone());
            let mut v = serde_json::to_value(&x).unwrap_or_default();
            v["user_name"] = json!(name);
            v
        })
        .collect();
    Json(json!({ "identities": v })).into_response()
}

/// `POST …/ext-auth/sync-memberships`: re-applies the rules to every known identity.
/// Allowed in declarative mode too: it only adds memberships the declared rules give.
async fn sync_memberships(
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    match oidc::sync_memberships(&st) {
        Ok(rep) => {
            audit_iam_change(&st, "ext_auth_sync_memberships", "", &headers, &addr);
            Json(rep).into_response()
        }
        Err(e) => wire(e),
    }
}

const LEGACY_ADMIN: &str = "legacy-admin";

/// `POST /_/api/admin/migrate`: moves the deployment from the shared bootstrap pair to IAM
/// (spec §4 Modes: "the bootstrap pair is migrated to a legacy-admin user"). Creates the
/// IAM user `legacy-admin` with full permissions and a fresh key pair, returned once. The
/// bootstrap pair keeps working until the operator unsets it (it is configuration, which
/// the API does not rewrite), so clients can move over without an outage. 409 when
/// `legacy-admin` already exists; 403 `iam_declarative` in declarative mode.
async fn migrate(
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = declarative_guard(&st) {
        return r;
    }
    let u = UserSpec {
        name: LEGACY_ADMIN.into(),
        access_key_id: format!("DGL{}", hex::encode_upper(rand::random::<[u8; 9]>())),
        secret_access_key: hex::encode(rand::random::<[u8; 20]>()),
        enabled: true,
        groups: vec![],
        permissions: vec![Permission {
            effect: "Allow".into(),
            actions: vec!["*".into()],
            resources: vec!["*".into()],
            conditions: None,
        }],
    };
    {
        let mut users = st.iam.users.write();
        if users.values().any(|x| x.name == LEGACY_ADMIN) {
            return err(
                StatusCode::CONFLICT,
                "already migrated (legacy-admin exists)",
            );
        }
        if let Err(e) = st.iam.persist(None, Some(&u)) {
            return wire(ExtAuthError::Persist(e));
        }
        users.insert(u.access_key_id.clone(), u.clone());
    }
    audit_iam_change(&st, "iam_migrate", LEGACY_ADMIN, &headers, &addr);
    (
        StatusCode::CREATED,
        Json(json!({
            "migrated": true, "user": LEGACY_ADMIN,
            "access_key_id": u.access_key_id, "secret_access_key": u.secret_access_key,
            "bootstrap_still_active": st.cfg.access_key_id.is_some(),
        })),
    )
        .into_response()
}

/// The callback URL the IdP must redirect to: this request's own origin (scheme from TLS or,
/// behind a trusted proxy, `X-Forwarded-Proto`/`-Host`). Register it at the IdP.
fn redirect_uri(st: &AppState, headers: &HeaderMap) -> Option<String> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let trusted = st.cfg.trust_proxy_headers;
    let host = trusted
        .then(|| h("x-forwarded-host"))
        .flatten()
        .or_else(|| h("host"))?;
    // A Host header with a path or userinfo would bend the URL: refuse it.
    if host.contains(['/', '@', '\\', ' ']) || host.is_empty() {
        return None;
    }
    let scheme = trusted
        .then(|| h("x-forwarded-proto"))
        .flatten()
        .filter(|p| matches!(*p, "http" | "https"))
        .unwrap_or(if st.cfg.tls.is_some() {
            "https"
        } else {
            "http"
        });
    Some(format!("{scheme}://{host}/_/api/admin/oauth/callback"))
}

fn found(location: &str) -> Response {
    (
        StatusCode::FOUND,
        [(http::header::LOCATION, location.to_string())],
    )
        .into_response()
}

/// `GET /_/api/admin/oauth/authorize/{provider}`: 302 to the IdP (public).
async fn authorize(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(provider): Path<String>,
) -> Response {
    let Some(redirect) = redirect_uri(&st, &headers) else {
        return err(StatusCode::BAD_REQUEST, "missing or invalid Host header");
    };
    let ip = client_ip(&st, &headers, &addr);
    match st.oidc.begin(&st, &provider, redirect, &ip).await {
        Ok(url) => found(&url),
        Err(e) => wire(e),
    }
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /_/api/admin/oauth/callback?code&state`: completes the login; an admin session
/// cookie and a 302 to `/_/` when the user (through its groups) holds the `admin`
/// permission on `*`, else 403 `not_authorized` (the user is still provisioned, so an
/// operator can grant it).
async fn callback(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let ip = client_ip(&st, &headers, &addr);
    let fail = |reason: &str, detail: &str| {
        metrics::counter!("deltaglider_auth_failures_total", "reason" => "oauth").increment(1);
        st.audit
            .record("oauth_login_failed", "", reason, &ip, "", "", "");
        tracing::warn!(ip = %ip, reason, detail, "OAuth login refused");
    };
    if let Some(e) = q.error {
        fail("idp_error", &e);
        return err(StatusCode::UNAUTHORIZED, "idp_denied");
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        fail("bad_request", "code and state are required");
        return err(StatusCode::BAD_REQUEST, "code and state are required");
    };
    let (user, provider) = match st.oidc.finish(&st, &code, &state, &ip).await {
        Ok(x) => x,
        Err(e) => {
            fail("rejected", &e.to_string());
            return wire(e);
        }
    };
    if !st.iam.is_admin(&user) {
        fail("not_authorized", &user.name);
        return err(StatusCode::FORBIDDEN, "not_authorized");
    }
    // A session as that user (`login-as` semantics): looked up on every request, so losing
    // admin rights later ends its admin access.
    let token = st
        .sessions
        .create(&ip, super::session::Who::User(user.name.clone()));
    st.audit
        .record("oauth_login", &user.name, &provider, &ip, "", "", "");
    let cookie = super::session::session_cookie(&token);
    (
        StatusCode::FOUND,
        [
            (http::header::SET_COOKIE, cookie),
            (http::header::LOCATION, "/_/".to_string()),
        ],
    )
        .into_response()
}
