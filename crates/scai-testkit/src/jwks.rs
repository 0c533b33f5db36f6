//! A real OIDC discovery + JWKS endpoint on loopback, signing RS256 tokens with fixture keys.
//! Products under test get its base URL as their ScaiKey URL, so discovery, JWKS caching,
//! `kid` rotation and issuer checks run exactly as against ScaiKey.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;

const KEYS: [(&str, &str, &str); 2] = [
    (
        "test-key-1",
        include_str!("../fixtures/rsa1.pem"),
        include_str!("../fixtures/rsa1.modulus.hex"),
    ),
    (
        "test-key-2",
        include_str!("../fixtures/rsa2.pem"),
        include_str!("../fixtures/rsa2.modulus.hex"),
    ),
];

struct State {
    /// Index into KEYS of the key used for signing.
    active: usize,
    /// Which keys the JWKS publishes.
    published: Vec<usize>,
    jwks_requests: u64,
}

pub struct JwksServer {
    base: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

fn jwk(i: usize) -> serde_json::Value {
    let (kid, _, modulus) = KEYS[i];
    let n = hex::decode(modulus.trim()).expect("fixture modulus is hex");
    serde_json::json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
        "n": URL_SAFE_NO_PAD.encode(n), "e": "AQAB"})
}

impl JwksServer {
    /// Serve `/.well-known/openid-configuration` and `/jwks` on a free port, publishing key 1.
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State {
            active: 0,
            published: vec![0],
            jwks_requests: 0,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind jwks server");
        let addr: SocketAddr = listener.local_addr().expect("local addr");
        let base = format!("http://{addr}");
        let b = base.clone();
        let st = state.clone();
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || {
                    let b = b.clone();
                    async move {
                        Json(serde_json::json!({
                            "issuer": b, "jwks_uri": format!("{b}/jwks"),
                            "token_endpoint": format!("{b}/oauth/token"),
                            "id_token_signing_alg_values_supported": ["RS256", "ES256"]
                        }))
                    }
                }),
            )
            .route(
                "/jwks",
                get(move || {
                    let st = st.clone();
                    async move {
                        let mut s = st.lock();
                        s.jwks_requests += 1;
                        let keys: Vec<_> = s.published.iter().map(|i| jwk(*i)).collect();
                        Json(serde_json::json!({ "keys": keys }))
                    }
                }),
            );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer { base, state, task }
    }

    /// The base URL, which is also the issuer of the tokens it mints.
    pub fn issuer(&self) -> &str {
        &self.base
    }

    /// How many times the JWKS was fetched (to test caching).
    pub fn jwks_requests(&self) -> u64 {
        self.state.lock().jwks_requests
    }

    /// Rotate: publish key 2 beside key 1 and sign with key 2 from now on.
    pub fn rotate(&self) {
        let mut s = self.state.lock();
        s.active = 1;
        s.published = vec![0, 1];
    }

    /// Sign `claims` with the active key. `iss` defaults to the base URL, `iat` to now and
    /// `exp` to an hour from now; set them in `claims` to override.
    pub fn mint(&self, claims: serde_json::Value) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut c = serde_json::json!({"iss": self.base, "iat": now, "exp": now + 3600});
        if let (Some(obj), Some(extra)) = (c.as_object_mut(), claims.as_object()) {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        let active = self.state.lock().active;
        let (kid, pem, _) = KEYS[active];
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_string());
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("fixture key is valid");
        jsonwebtoken::encode(&header, &c, &key).expect("sign test token")
    }

    /// A user token for `tenant`/`user` (ids used verbatim) with the given scopes.
    pub fn mint_user(&self, tenant: &str, user: &str, scope: &str) -> String {
        self.mint(serde_json::json!({
            "sub": user, "tenant_id": tenant, "scope": scope,
            "email": format!("{user}@example.test"), "name": user,
        }))
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
