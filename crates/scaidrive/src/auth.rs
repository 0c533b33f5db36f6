//! Identity glue: the `Caller` extractor verifies the bearer token with `scai-auth`, provisions
//! the tenant, the user and the user's personal share on first sight, and refuses suspended
//! users. Domain code receives the caller explicitly; there is no ambient tenant.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use scai_auth::{AuthError, Claims};

use crate::db::now;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant_id: String,
    pub user_id: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub groups: Vec<String>,
    pub scopes: Vec<String>,
    pub partner_id: Option<String>,
    /// Tenant admin: by token (role/scope) or by the database flag.
    pub is_admin: bool,
}

const APP_SCOPES: &[&str] = &[
    "files:read",
    "files:write",
    "tenant:admin",
    "partner:admin",
    "admin:*",
    "*",
];

impl Caller {
    fn has(&self, s: &str) -> bool {
        self.scopes.iter().any(|x| x == s)
    }
    /// A token with no application scope at all is treated as `tenant:admin` (the digest:
    /// ScaiKey is assumed to be the gatekeeper).
    fn no_app_scopes(&self) -> bool {
        !self.scopes.iter().any(|s| APP_SCOPES.contains(&s.as_str()))
    }
    pub fn can_read(&self) -> bool {
        self.is_admin || self.no_app_scopes() || self.has("files:read") || self.has("files:write")
    }
    pub fn can_write(&self) -> bool {
        self.is_admin || self.no_app_scopes() || self.has("files:write")
    }
    pub fn require_read(&self) -> ApiResult<()> {
        if self.can_read() {
            Ok(())
        } else {
            Err(ApiError::Forbidden("token lacks scope files:read".into()))
        }
    }
    pub fn require_write(&self) -> ApiResult<()> {
        if self.can_write() {
            Ok(())
        } else {
            Err(ApiError::Forbidden("token lacks scope files:write".into()))
        }
    }
    pub fn require_admin(&self) -> ApiResult<()> {
        if self.is_admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden("tenant:admin required".into()))
        }
    }
}

/// Ids from tokens end up in storage keys and log lines: accept only a safe alphabet.
pub fn safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn token_error(e: AuthError) -> ApiError {
    match e {
        AuthError::KeysUnavailable(m) => {
            ApiError::Unavailable(format!("identity provider unavailable: {m}"))
        }
        other => ApiError::TokenInvalid(other.to_string()),
    }
}

fn claims_admin(c: &Claims) -> bool {
    c.role
        .as_deref()
        .is_some_and(|r| r == "tenant_admin" || r == "super_admin")
        || c.has_scope("tenant:admin")
        || c.has_scope("admin:*")
        || c.has_scope("*")
        || !c.scopes().iter().any(|s| APP_SCOPES.contains(s))
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let token = scai_auth::bearer_token(&parts.headers)
            .ok_or_else(|| ApiError::TokenInvalid("missing bearer token".into()))?;
        let verified = parts
            .extensions
            .get::<crate::ratelimit::VerifiedClaims>()
            .map(|v| v.0.clone());
        caller_from_token(state, token, verified).await
    }
}

/// Verify a token (unless the rate-limit middleware already did: `verified`) and provision its
/// user. The WebSockets authenticate with this too.
pub async fn caller_from_token(
    state: &AppState,
    token: &str,
    verified: Option<scai_auth::Claims>,
) -> Result<Caller, ApiError> {
    {
        let claims = match verified {
            Some(c) => c,
            None => state.verifier.verify(token).await.map_err(|e| {
                tracing::info!(event = "auth_failed", reason = e.reason());
                token_error(e)
            })?,
        };
        let tenant_id = claims.tenant_id.clone().unwrap_or_default();
        if !safe_id(&tenant_id) || !safe_id(&claims.sub) {
            return Err(ApiError::TokenInvalid(
                "token carries a malformed tenant_id or sub".into(),
            ));
        }
        let mut caller = Caller {
            tenant_id,
            user_id: claims.sub.clone(),
            email: claims.email.clone(),
            name: claims.display_name().map(str::to_string),
            groups: claims.groups.clone(),
            scopes: claims.scopes().iter().map(|s| s.to_string()).collect(),
            partner_id: claims.partner_id.clone(),
            is_admin: claims_admin(&claims),
        };
        let (active, db_admin) = provision(state, &caller).await?;
        if !active {
            return Err(ApiError::UserSuspended);
        }
        caller.is_admin |= db_admin;
        // Rate limiting happens before this, in `ratelimit::layer` (it needs the route class).
        Ok(caller)
    }
}

/// The user's (is_active, is_admin), creating tenant, user, personal share and its root folder
/// the first time this user is seen.
async fn provision(state: &AppState, c: &Caller) -> ApiResult<(bool, bool)> {
    let db = &state.db;
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT is_active, is_admin FROM users WHERE tenant_id = ? AND id = ?")
            .bind(&c.tenant_id)
            .bind(&c.user_id)
            .fetch_optional(&db.pool)
            .await?;
    if let Some((active, admin)) = row {
        return Ok((active != 0, admin != 0));
    }
    let ts = now();
    let mut tx = db.pool.begin().await?;
    sqlx::query(&format!(
        "{} INTO tenants (id, name, max_file_size_bytes, created_at) VALUES (?, ?, ?, ?)",
        db.insert_ignore()
    ))
    .bind(&c.tenant_id)
    .bind(&c.tenant_id)
    .bind(state.cfg.default_max_file_size as i64)
    .bind(ts)
    .execute(&mut *tx)
    .await?;
    let inserted = sqlx::query(&format!(
        "{} INTO users (tenant_id, id, email, name, is_active, is_admin, created_at) VALUES (?, ?, ?, ?, 1, 0, ?)",
        db.insert_ignore()
    ))
    .bind(&c.tenant_id)
    .bind(&c.user_id)
    .bind(c.email.as_deref())
    .bind(c.name.as_deref())
    .bind(ts)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        let share_id = scai_core::ids::new_id("shr");
        let root_id = scai_core::ids::new_id("fld");
        let share_name = c.name.clone().unwrap_or_else(|| c.user_id.clone());
        sqlx::query(
            "INSERT INTO shares (tenant_id, id, name, share_type, owner_id, root_folder_id, quota_bytes, created_at) VALUES (?, ?, ?, 'personal', ?, ?, NULL, ?)",
        )
        .bind(&c.tenant_id)
        .bind(&share_id)
        .bind(&share_name)
        .bind(&c.user_id)
        .bind(&root_id)
        .bind(ts)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO nodes (tenant_id, id, share_id, parent_id, kind, name, live_name, owner_id, created_by, created_at, modified_by, modified_at) VALUES (?, ?, ?, NULL, 'folder', '', '', ?, ?, ?, ?, ?)",
        )
        .bind(&c.tenant_id)
        .bind(&root_id)
        .bind(&share_id)
        .bind(&c.user_id)
        .bind(&c.user_id)
        .bind(ts)
        .bind(&c.user_id)
        .bind(ts)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO share_members (tenant_id, share_id, user_id, role, created_at) VALUES (?, ?, ?, 'owner', ?)")
            .bind(&c.tenant_id)
            .bind(&share_id)
            .bind(&c.user_id)
            .bind(ts)
            .execute(&mut *tx)
            .await?;
        crate::sync::changelog::append(
            &mut tx,
            &c.tenant_id,
            crate::sync::changelog::NewChange {
                share_id: share_id.clone(),
                resource_type: "share",
                resource_id: share_id.clone(),
                change_type: "created",
                changed_by: c.user_id.clone(),
                new_path: Some("/".into()),
                ..Default::default()
            },
        )
        .await?;
        tracing::info!(event = "user_provisioned", tenant_id = %c.tenant_id, user_id = %c.user_id, share_id = %share_id);
    }
    tx.commit().await?;
    Ok((true, false))
}
