//! The ScaiKey key cache: discovery document -> `jwks_uri` -> keys by `kid`, kept for the
//! configured TTL (5 minutes by default) and refetched early when a token names a `kid` we do
//! not know (ScaiKey rotates keys on a schedule).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::Mutex;

/// A usable key: the decoding key and the algorithm the JWK pins, if any.
#[derive(Clone)]
pub struct Key {
    pub key: DecodingKey,
    pub alg: Option<Algorithm>,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, Key>,
    /// Keys without a `kid`, tried in turn for tokens that carry none.
    anonymous: Vec<Key>,
    fetched_at: Option<Instant>,
    jwks_uri: Option<String>,
}

pub struct JwksCache {
    base_url: String,
    jwks_url: Option<String>,
    ttl: Duration,
    /// The least time between two refetches caused by unknown `kid`s, so a flood of tokens
    /// with made-up `kid`s cannot turn into a flood of requests to ScaiKey.
    min_refetch: Duration,
    http: reqwest::Client,
    state: Mutex<State>,
    /// Serialises fetches so concurrent misses cause one request.
    fetch_lock: tokio::sync::Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("identity provider unreachable: {0}")]
    Unreachable(String),
    #[error("identity provider answered with an unusable document: {0}")]
    Invalid(String),
}

impl JwksCache {
    pub fn new(
        base_url: &str,
        jwks_url: Option<String>,
        ttl: Duration,
        http: reqwest::Client,
    ) -> Self {
        JwksCache {
            base_url: base_url.trim_end_matches('/').to_string(),
            jwks_url,
            ttl,
            min_refetch: Duration::from_secs(1),
            http,
            state: Mutex::new(State::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The key for `kid` (or the key-less keys when the token names none), fetching when
    /// the cache is stale or does not know the `kid`.
    pub async fn keys_for(&self, kid: Option<&str>) -> Result<Vec<Key>, FetchError> {
        if let Some(found) = self.lookup(kid, false) {
            return Ok(found);
        }
        let _guard = self.fetch_lock.lock().await;
        // Another task may have refreshed while we waited.
        if let Some(found) = self.lookup(kid, false) {
            return Ok(found);
        }
        let recently = {
            let st = self.state.lock();
            st.fetched_at
                .is_some_and(|t| t.elapsed() < self.min_refetch)
        };
        if !recently {
            self.refresh().await?;
        }
        Ok(self.lookup(kid, true).unwrap_or_default())
    }

    /// Cached keys when fresh (or, with `allow_stale`, whatever we have).
    fn lookup(&self, kid: Option<&str>, allow_stale: bool) -> Option<Vec<Key>> {
        let st = self.state.lock();
        let fresh = st.fetched_at.is_some_and(|t| t.elapsed() < self.ttl);
        if !fresh && !allow_stale {
            return None;
        }
        match kid {
            Some(kid) => st.keys.get(kid).map(|k| vec![k.clone()]),
            None => {
                let all: Vec<Key> = st
                    .anonymous
                    .iter()
                    .chain(st.keys.values())
                    .cloned()
                    .collect();
                (!all.is_empty()).then_some(all)
            }
        }
    }

    /// Whether ScaiKey answers its discovery/JWKS endpoint now (readiness).
    pub async fn reachable(&self) -> bool {
        let _guard = self.fetch_lock.lock().await;
        self.refresh().await.is_ok()
    }

    async fn refresh(&self) -> Result<(), FetchError> {
        let jwks_uri = match self
            .jwks_url
            .clone()
            .or_else(|| self.state.lock().jwks_uri.clone())
        {
            Some(u) => u,
            None => self.discover().await?,
        };
        let resp = self
            .http
            .get(&jwks_uri)
            .send()
            .await
            .map_err(|e| FetchError::Unreachable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(FetchError::Unreachable(format!(
                "{jwks_uri}: HTTP {}",
                resp.status()
            )));
        }
        let set: JwkSet = resp
            .json()
            .await
            .map_err(|e| FetchError::Invalid(e.to_string()))?;
        let mut keys = HashMap::new();
        let mut anonymous = Vec::new();
        for jwk in &set.keys {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                tracing::warn!(kid = ?jwk.common.key_id, "jwks: skipping a key that cannot be used");
                continue;
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            let k = Key { key, alg };
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.insert(kid.clone(), k);
                }
                None => anonymous.push(k),
            }
        }
        tracing::debug!(count = keys.len() + anonymous.len(), "jwks refreshed");
        let mut st = self.state.lock();
        st.keys = keys;
        st.anonymous = anonymous;
        st.fetched_at = Some(Instant::now());
        st.jwks_uri = Some(jwks_uri);
        Ok(())
    }

    /// Find `jwks_uri` in the discovery document: the URL itself when it is a discovery URL,
    /// else the base URL's, else the platform flavour's (scaikey-tokens digest §2).
    async fn discover(&self) -> Result<String, FetchError> {
        let candidates = if self.base_url.ends_with("openid-configuration") {
            vec![self.base_url.clone()]
        } else {
            vec![
                format!("{}/.well-known/openid-configuration", self.base_url),
                format!(
                    "{}/api/v1/platform/oauth/.well-known/openid-configuration",
                    self.base_url
                ),
            ]
        };
        let mut last = String::new();
        for url in candidates {
            match self.http.get(&url).send().await {
                Ok(resp) if resp.status().is_success() => {
                    let doc: serde_json::Value = resp
                        .json()
                        .await
                        .map_err(|e| FetchError::Invalid(e.to_string()))?;
                    return doc
                        .get("jwks_uri")
                        .and_then(|v| v.as_str())
                        .map(str::to_string)
                        .ok_or_else(|| FetchError::Invalid(format!("{url}: no jwks_uri")));
                }
                Ok(resp) => last = format!("{url}: HTTP {}", resp.status()),
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(FetchError::Unreachable(last))
    }
}
