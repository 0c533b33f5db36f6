//! The embedded issuer: an ES256 key pair kept in the server's data directory. The server
//! trusts it alongside any configured ScaiKey, and the `token` subcommand signs with it, so a
//! fresh install works with no identity provider.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use sha2::{Digest, Sha256};

use crate::Claims;

const KEY_FILE: &str = "jwt-signing-key.pem";

/// What to put in a minted token.
#[derive(Debug, Clone)]
pub struct MintOptions {
    /// Tenant id; a bare name such as `acme` becomes `tnt_acme`.
    pub tenant: String,
    /// User id; a bare name such as `alice` becomes `usr_alice`.
    pub user: String,
    /// A tenant admin: `role: tenant_admin` and the `tenant:admin` scope.
    pub admin: bool,
    pub ttl: Duration,
    pub email: Option<String>,
    pub name: Option<String>,
    pub groups: Vec<String>,
    /// Overrides the default scopes when set.
    pub scopes: Option<Vec<String>>,
}

impl MintOptions {
    pub fn new(tenant: &str, user: &str) -> Self {
        MintOptions {
            tenant: tenant.to_string(),
            user: user.to_string(),
            admin: false,
            ttl: Duration::from_secs(3600),
            email: None,
            name: None,
            groups: Vec::new(),
            scopes: None,
        }
    }
}

/// Prefix a bare id (`acme` -> `tnt_acme`); ids that already carry the prefix are kept.
pub fn with_prefix(prefix: &str, id: &str) -> String {
    if id.starts_with(&format!("{prefix}_")) {
        id.to_string()
    } else {
        format!("{prefix}_{id}")
    }
}

pub struct EmbeddedIssuer {
    issuer: String,
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: serde_json::Value,
}

impl std::fmt::Debug for EmbeddedIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish()
    }
}

impl EmbeddedIssuer {
    /// Load the key from `dir`, creating it (mode 0600) on first use. Two processes starting
    /// at once agree on one key: creation uses `create_new`, and the loser reads the winner's.
    pub fn load_or_create(dir: &Path, issuer: &str) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(KEY_FILE);
        let pem = match std::fs::read_to_string(&path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == io::ErrorKind::NotFound => create_key(&path)?,
            Err(e) => return Err(e),
        };
        Self::from_pem(&pem, issuer)
    }

    pub fn from_pem(pem: &str, issuer: &str) -> io::Result<Self> {
        let bad = |e: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("embedded signing key: {e}"),
            )
        };
        let secret = p256::SecretKey::from_pkcs8_pem(pem).map_err(|e| bad(e.to_string()))?;
        let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
            &secret.public_key(),
            false,
        );
        let (x, y) = match (point.x(), point.y()) {
            (Some(x), Some(y)) => (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y)),
            _ => return Err(bad("public key has no coordinates".into())),
        };
        let kid = format!(
            "embedded-{}",
            &hex::encode(Sha256::digest(point.as_bytes()))[..16]
        );
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|e| bad(e.to_string()))?;
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid, "x": x, "y": y});
        Ok(EmbeddedIssuer {
            issuer: issuer.to_string(),
            kid,
            encoding,
            decoding,
            jwk,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// The public key as a JWKS document, for servers that want to publish it.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.jwk.clone()] })
    }

    /// Sign arbitrary claims with the embedded key.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        // Serialising a JSON value with a valid EC key cannot fail.
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap_or_default()
    }

    /// A token for `opts`, accepted by a verifier that trusts this issuer.
    pub fn mint(&self, opts: &MintOptions) -> String {
        let now = crate::now_secs();
        let tenant = with_prefix("tnt", &opts.tenant);
        let user = with_prefix("usr", &opts.user);
        let bare_user = user.trim_start_matches("usr_").to_string();
        let bare_tenant = tenant.trim_start_matches("tnt_").to_string();
        let scopes = opts.scopes.clone().unwrap_or_else(|| {
            let mut s = vec!["files:read".to_string(), "files:write".to_string()];
            if opts.admin {
                s.insert(0, "tenant:admin".to_string());
            }
            s
        });
        let claims = Claims {
            sub: user,
            tenant_id: Some(tenant),
            partner_id: None,
            email: Some(
                opts.email
                    .clone()
                    .unwrap_or_else(|| format!("{bare_user}@{bare_tenant}.example")),
            ),
            name: Some(opts.name.clone().unwrap_or(bare_user)),
            preferred_username: None,
            groups: opts.groups.clone(),
            scope: scopes.join(" "),
            iss: self.issuer.clone(),
            exp: now + opts.ttl.as_secs() as i64,
            nbf: None,
            iat: Some(now),
            role: opts.admin.then(|| "tenant_admin".to_string()),
            token_type: None,
            client_id: None,
            act: None,
        };
        self.sign(&serde_json::to_value(&claims).unwrap_or_default())
    }
}

fn create_key(path: &PathBuf) -> io::Result<String> {
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| io::Error::other(e.to_string()))?
        .to_string();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    match opts.open(path) {
        Ok(mut f) => {
            use std::io::Write;
            f.write_all(pem.as_bytes())?;
            f.sync_all()?;
            Ok(pem)
        }
        // Another process created it between our read and our create: use theirs. It may
        // still be writing, so retry the read briefly.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            for _ in 0..50 {
                let existing = std::fs::read_to_string(path)?;
                if existing.contains("END PRIVATE KEY") {
                    return Ok(existing);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "embedded signing key file is incomplete",
            ))
        }
        Err(e) => Err(e),
    }
}
