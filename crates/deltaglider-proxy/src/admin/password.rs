//! The bootstrap password at runtime: `PUT /_/api/admin/password` (change it, re-seal the
//! config store under the new hash as one crash-safe step, end the other sessions) and the
//! public `POST /_/api/admin/recover-db` (move a store that no longer opens aside).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::session::{any_session, slow_down};
use super::{audit_iam_change, client_ip, err, Admin, Body, St};
use crate::bootstrap::{hash_password, Source};
use crate::config_store;
use crate::state::AppState;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/_/api/admin/password", put(change_password))
        .route("/_/api/admin/recover-db", post(recover_db))
}

/// Shortest accepted new password.
const MIN_PASSWORD_LEN: usize = 8;

#[derive(Deserialize)]
struct PasswordChange {
    current_password: String,
    new_password: String,
}

/// `PUT /_/api/admin/password` `{current_password, new_password}`.
async fn change_password(
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Body(body): Body<PasswordChange>,
) -> Response {
    let Ok((token, _)) = any_session(&st, &headers, &addr) else {
        return err(StatusCode::UNAUTHORIZED, "not_authenticated");
    };
    let ip = client_ip(&st, &headers, &addr);
    if st.login_limiter.locked(&ip) {
        return slow_down();
    }
    if body.new_password.chars().count() < MIN_PASSWORD_LEN {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "new_password must be at least 8 characters",
        );
    }
    if !st.bootstrap.verify(body.current_password).await {
        st.login_limiter.failure(&st, &ip);
        return err(StatusCode::UNAUTHORIZED, "invalid_password");
    }
    if st.iam.admin_store.as_ref().is_some_and(|s| s.is_locked()) {
        return err(StatusCode::CONFLICT, "config_db_locked");
    }
    let new = body.new_password;
    let hash = match tokio::task::spawn_blocking(move || hash_password(&new)).await {
        Ok(Ok(h)) => h,
        _ => return err(StatusCode::INTERNAL_SERVER_ERROR, "hash_failed"),
    };
    // The hash file is the commit point of the re-key (see AdminStore::rekey).
    let file = st.bootstrap.file.clone();
    let write_hash = {
        let hash = hash.clone();
        move || -> Result<(), crate::error::ProxyError> {
            config_store::write_atomic(&file, hash.as_bytes())?;
            Ok(())
        }
    };
    let done = match &st.iam.admin_store {
        Some(store) => store.rekey(config_store::key_for(&hash), write_hash),
        None => write_hash(),
    };
    if let Err(e) = done {
        tracing::error!(error = %e, "bootstrap password change not persisted");
        return err(StatusCode::INTERNAL_SERVER_ERROR, "persist_failed");
    }
    st.bootstrap.set_hash(hash.clone());
    st.sessions.retain_only(&token);
    audit_iam_change(&st, "admin_password_change", "$bootstrap", &headers, &addr);
    let mut out = json!({"ok": true});
    note_env_pinned(&st, &hash, &mut out);
    Json(out).into_response()
}

/// After the bootstrap hash changed at runtime (password change, backup import): when it is
/// pinned by `DGP_BOOTSTRAP_PASSWORD_HASH` (or `advanced.bootstrap_password_hash`), adds
/// `warning` and the new `bootstrap_password_hash` to the answer. The pin wins over the
/// hash file at the next start: the operator must update it, or the store (sealed under the
/// new hash) will not open.
pub(super) fn note_env_pinned(st: &AppState, hash: &str, out: &mut serde_json::Value) {
    if st.bootstrap.source == Source::Env {
        out["warning"] = json!("DGP_BOOTSTRAP_PASSWORD_HASH is set and wins over the hash file at the next start: set it to bootstrap_password_hash");
        out["bootstrap_password_hash"] = json!(hash);
    }
}

#[derive(Deserialize)]
struct Recover {
    password: String,
}

/// `POST /_/api/admin/recover-db` `{password}` (no session; rate-limited like login): when
/// the config store does not open with the current bootstrap hash, it is renamed aside and
/// the store starts empty. The password must match the current hash, so a stranger cannot
/// throw the store away; 409 when the store opens fine (nothing to recover).
async fn recover_db(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Body(body): Body<Recover>,
) -> Response {
    let ip = client_ip(&st, &headers, &addr);
    if st.login_limiter.locked(&ip) {
        return slow_down();
    }
    if !st.bootstrap.verify(body.password).await {
        st.login_limiter.failure(&st, &ip);
        return err(StatusCode::UNAUTHORIZED, "invalid_password");
    }
    let Some(store) = st.iam.admin_store.as_ref().filter(|s| s.is_locked()) else {
        return err(StatusCode::CONFLICT, "config_db_ok");
    };
    match store.reset() {
        Ok(aside) => {
            st.audit.record(
                "config_db_recovered",
                "$bootstrap",
                &aside.display().to_string(),
                &ip,
                "",
                "",
                "",
            );
            tracing::warn!(moved_to = %aside.display(), "config store reset by recover-db");
            Json(json!({"ok": true, "moved_to": aside.display().to_string()})).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "recover-db failed");
            err(StatusCode::INTERNAL_SERVER_ERROR, "persist_failed")
        }
    }
}
