//! Token verification: signature (RS256 or ES256, key chosen by `kid`), `exp`/`nbf`, and the
//! issuer rule of the scaikey-tokens digest (`iss` is the ScaiKey base URL, the tenant-scoped
//! `{base}/tenants/{tenant_id}`, or the explicitly configured issuer). `aud` is not checked.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::embedded::EmbeddedIssuer;
use crate::jwks::{FetchError, JwksCache};
use crate::Claims;

#[derive(Clone)]
pub struct VerifierConfig {
    /// ScaiKey base URL (or a full discovery URL). `None`: only the embedded issuer is trusted.
    pub scaikey_url: Option<String>,
    /// Explicit JWKS URL, skipping discovery.
    pub jwks_url: Option<String>,
    /// An explicit issuer that tokens may carry besides the base-URL forms.
    pub issuer: Option<String>,
    /// How long fetched keys are trusted before a refetch (5 minutes in production).
    pub jwks_ttl: Duration,
    /// Clock tolerance for `exp` and `nbf`.
    pub leeway: Duration,
    pub embedded: Option<Arc<EmbeddedIssuer>>,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        VerifierConfig {
            scaikey_url: None,
            jwks_url: None,
            issuer: None,
            jwks_ttl: Duration::from_secs(300),
            leeway: Duration::from_secs(30),
            embedded: None,
        }
    }
}

/// Why a token was refused. Everything but `KeysUnavailable` is the caller's fault (401).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token algorithm {0:?} is not accepted (RS256 or ES256)")]
    Algorithm(Algorithm),
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token is signed by an unknown key")]
    UnknownKey,
    #[error("token issuer {0:?} is not trusted")]
    WrongIssuer(String),
    #[error("token has no tenant_id")]
    MissingTenant,
    /// ScaiKey could not be reached to fetch keys: a dependency failure, not the caller's.
    #[error("{0}")]
    KeysUnavailable(String),
}

impl AuthError {
    /// Short machine-readable reason, for logs and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::Algorithm(_) => "algorithm",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::BadSignature => "bad_signature",
            AuthError::UnknownKey => "unknown_key",
            AuthError::WrongIssuer(_) => "wrong_issuer",
            AuthError::MissingTenant => "missing_tenant",
            AuthError::KeysUnavailable(_) => "keys_unavailable",
        }
    }
}

pub struct Verifier {
    cfg: VerifierConfig,
    jwks: Option<JwksCache>,
}

impl Verifier {
    pub fn new(cfg: VerifierConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let jwks = cfg
            .scaikey_url
            .as_ref()
            .map(|u| JwksCache::new(u, cfg.jwks_url.clone(), cfg.jwks_ttl, http));
        Verifier { cfg, jwks }
    }

    pub fn embedded(&self) -> Option<&Arc<EmbeddedIssuer>> {
        self.cfg.embedded.as_ref()
    }

    /// Readiness of the identity dependency: true when no ScaiKey is configured.
    pub async fn scaikey_ready(&self) -> bool {
        match &self.jwks {
            Some(j) => j.reachable().await,
            None => true,
        }
    }

    /// Verify `token` and return its claims. Tokens must carry `tenant_id`.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(AuthError::Algorithm(header.alg));
        }
        let kid = header.kid.as_deref();

        if let Some(emb) = &self.cfg.embedded {
            if kid == Some(emb.kid()) {
                let claims = self.decode(token, header.alg, emb.decoding_key())?;
                if claims.iss != emb.issuer() {
                    return Err(AuthError::WrongIssuer(claims.iss));
                }
                return require_tenant(claims);
            }
        }

        let Some(jwks) = &self.jwks else {
            return Err(AuthError::UnknownKey);
        };
        let keys = jwks.keys_for(kid).await.map_err(|e| match e {
            FetchError::Unreachable(m) | FetchError::Invalid(m) => AuthError::KeysUnavailable(m),
        })?;
        if keys.is_empty() {
            return Err(AuthError::UnknownKey);
        }
        let mut last = AuthError::UnknownKey;
        for k in keys
            .iter()
            .filter(|k| k.alg.is_none_or(|a| a == header.alg))
        {
            match self.decode(token, header.alg, &k.key) {
                Ok(claims) => {
                    self.check_issuer(&claims)?;
                    return require_tenant(claims);
                }
                Err(
                    e @ (AuthError::Expired | AuthError::NotYetValid | AuthError::Malformed(_)),
                ) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn decode(&self, token: &str, alg: Algorithm, key: &DecodingKey) -> Result<Claims, AuthError> {
        let mut v = Validation::new(alg);
        v.leeway = self.cfg.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = false;
        v.set_required_spec_claims(&["exp"]);
        jsonwebtoken::decode::<Claims>(token, key, &v)
            .map(|d| d.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::ExpiredSignature => AuthError::Expired,
                    K::ImmatureSignature => AuthError::NotYetValid,
                    K::InvalidSignature
                    | K::InvalidEcdsaKey
                    | K::InvalidRsaKey(_)
                    | K::InvalidAlgorithm => AuthError::BadSignature,
                    _ => AuthError::Malformed(e.to_string()),
                }
            })
    }

    fn check_issuer(&self, claims: &Claims) -> Result<(), AuthError> {
        let iss = claims.iss.trim_end_matches('/');
        if let Some(explicit) = &self.cfg.issuer {
            if iss == explicit.trim_end_matches('/') {
                return Ok(());
            }
        }
        if let Some(base) = &self.cfg.scaikey_url {
            let base = base.trim_end_matches('/');
            if iss == base {
                return Ok(());
            }
            if let Some(t) = &claims.tenant_id {
                if iss == format!("{base}/tenants/{t}") {
                    return Ok(());
                }
            }
        }
        Err(AuthError::WrongIssuer(claims.iss.clone()))
    }
}

fn require_tenant(claims: Claims) -> Result<Claims, AuthError> {
    match &claims.tenant_id {
        Some(t) if !t.trim().is_empty() => Ok(claims),
        _ => Err(AuthError::MissingTenant),
    }
}
