//! External authentication (OIDC) for the admin surface: provider and mapping-rule data
//! (persisted in the admin overlay, or declared in YAML), issuer discovery with a JWKS cache,
//! the authorization-code flow with PKCE S256 + state + nonce, id_token validation,
//! auto-provisioning of IAM users for external identities and the mapping rules that add
//! them to groups (memberships are merged, never replaced).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use sha2::Digest as _;

use crate::error::ProxyError;
use crate::iam::{AdminOverlay, UserSpec};
use crate::state::AppState;

/// How long an authorization request (state, nonce, PKCE verifier) stays redeemable.
const PENDING_TTL: Duration = Duration::from_secs(600);
/// At most this many flows in flight; the oldest is dropped first (the authorize route is
/// public, so the map must not grow without bound).
const MAX_PENDING: usize = 1024;
/// Discovery documents and key sets are reused this long.
const ISSUER_TTL: Duration = Duration::from_secs(300);
/// An unknown `kid` refetches the keys at most this often per issuer (a flood of tokens
/// with made-up `kid`s must not become a flood of requests to the identity provider).
const MIN_REFETCH: Duration = Duration::from_secs(10);
/// Clock skew tolerated on `exp`/`nbf`/`iat`.
const LEEWAY_SECS: u64 = 60;
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

fn yes() -> bool {
    true
}

fn oidc_type() -> String {
    "oidc".into()
}

fn default_scopes() -> String {
    "openid email profile".into()
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// `scopes` as a space-separated string or a list of strings.
fn scopes_de<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        One(String),
        Many(Vec<String>),
    }
    Ok(match S::deserialize(d)? {
        S::One(s) => s,
        S::Many(v) => v.join(" "),
    })
}

/// One external identity provider (`access.auth_providers[]`, or `…/ext-auth/providers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderSpec {
    /// Admin-API id (0 in YAML; declarative providers are numbered by position).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: u64,
    pub name: String,
    #[serde(default = "oidc_type")]
    pub provider_type: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub display_name: Option<String>,
    pub client_id: String,
    /// Stored as written; never returned by the API or exports (null there).
    #[serde(default)]
    pub client_secret: Option<String>,
    pub issuer_url: String,
    #[serde(default = "default_scopes", deserialize_with = "scopes_de")]
    pub scopes: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchType {
    EmailDomain,
    EmailGlob,
    EmailRegex,
    ClaimValue,
}

/// A group mapping rule (`access.group_mapping_rules[]`, or `…/ext-auth/mappings`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MappingRule {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: u64,
    /// Provider name; `None` applies to every provider.
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub priority: i64,
    pub match_type: MatchType,
    /// The claim for `claim_value` (dots walk into objects: `realm_access.roles`).
    #[serde(default)]
    pub match_field: Option<String>,
    pub match_value: String,
    pub group: String,
}

/// A user of an external provider that has logged in, linked to the IAM user provisioned
/// for it (by access key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalIdentity {
    pub id: u64,
    pub provider: String,
    pub subject: String,
    pub user: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// The id_token claims of the last login (rules are re-evaluated over them by
    /// `sync-memberships`).
    #[serde(default)]
    pub claims: Value,
    pub created_at: String,
    pub last_login: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExtAuthError {
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("iam_declarative")]
    Declarative,
    #[error("unknown or disabled provider")]
    UnknownProvider,
    #[error("invalid_state")]
    InvalidState,
    #[error("identity provider: {0}")]
    Provider(String),
    #[error("invalid id_token: {0}")]
    Token(String),
    #[error("user_disabled")]
    Disabled,
    #[error("persist_failed: {0}")]
    Persist(#[from] ProxyError),
}

// ---------------------------------------------------------------------------------------
// Validation

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks one provider's own fields (names go into URL paths, hence the charset).
pub fn validate_provider(p: &ProviderSpec) -> Result<(), String> {
    if !valid_name(&p.name) {
        return Err(format!(
            "provider name {:?}: 1-64 characters of [A-Za-z0-9_.-]",
            p.name
        ));
    }
    if p.provider_type != "oidc" {
        return Err(format!(
            "provider {}: provider_type {:?} is not supported (oidc)",
            p.name, p.provider_type
        ));
    }
    if p.client_id.trim().is_empty() {
        return Err(format!("provider {}: client_id is required", p.name));
    }
    match url::Url::parse(&p.issuer_url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(format!(
            "provider {}: issuer_url {:?} is not an http(s) URL",
            p.name, p.issuer_url
        )),
    }
}

/// Checks a rule against the providers and groups it names.
pub fn validate_rule(
    r: &MappingRule,
    providers: &[ProviderSpec],
    groups: &BTreeSet<String>,
) -> Result<(), String> {
    if let Some(p) = &r.provider {
        if !providers.iter().any(|x| &x.name == p) {
            return Err(format!("mapping rule: unknown provider {p:?}"));
        }
    }
    if !groups.contains(&r.group) {
        return Err(format!("mapping rule: unknown group {:?}", r.group));
    }
    if r.match_value.is_empty() {
        return Err("mapping rule: match_value is required".into());
    }
    match r.match_type {
        MatchType::EmailRegex => {
            regex_lite::Regex::new(&r.match_value)
                .map_err(|e| format!("mapping rule: invalid email_regex: {e}"))?;
        }
        MatchType::ClaimValue if r.match_field.as_deref().is_none_or(str::is_empty) => {
            return Err("mapping rule: claim_value needs match_field".into());
        }
        _ => {}
    }
    Ok(())
}

/// Start-up / config-apply validation of `access.auth_providers` and
/// `access.group_mapping_rules` (declarative mode: groups are `access.iam_groups`).
pub fn validate_access(a: &crate::config::AccessSection) -> Result<(), ProxyError> {
    let bad = |m: String| ProxyError::Config(format!("access: {m}"));
    let mut names = BTreeSet::new();
    for p in &a.auth_providers {
        validate_provider(p).map_err(bad)?;
        if !names.insert(p.name.clone()) {
            return Err(bad(format!("duplicate provider name {:?}", p.name)));
        }
    }
    if a.iam_mode.as_deref() == Some("declarative") {
        let groups: BTreeSet<String> = a.iam_groups.iter().map(|g| g.name.clone()).collect();
        for r in &a.group_mapping_rules {
            validate_rule(r, &a.auth_providers, &groups).map_err(bad)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Mapping rules

/// The claim at a dotted path.
fn claim_at<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(claims, |v, k| v.get(k))
}

fn claim_has(v: &Value, want: &str) -> bool {
    match v {
        Value::String(s) => s == want,
        Value::Array(a) => a.iter().any(|x| claim_has(x, want)),
        Value::Bool(b) => b.to_string() == want,
        Value::Number(n) => n.to_string() == want,
        _ => false,
    }
}

/// Whether `rule` matches. `email` is None when the provider said it is not verified, so
/// email rules cannot be satisfied by an address the user merely typed in.
fn rule_matches(rule: &MappingRule, email: Option<&str>, claims: &Value) -> bool {
    let want = rule.match_value.as_str();
    match (rule.match_type, email) {
        (MatchType::EmailDomain, Some(e)) => e
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(want.trim_start_matches('@'))),
        (MatchType::EmailGlob, Some(e)) => {
            crate::iam::glob(&want.to_ascii_lowercase(), &e.to_ascii_lowercase())
        }
        (MatchType::EmailRegex, Some(e)) => {
            regex_lite::Regex::new(&format!("^(?:{want})$")).is_ok_and(|re| re.is_match(e))
        }
        (MatchType::ClaimValue, _) => rule
            .match_field
            .as_deref()
            .and_then(|f| claim_at(claims, f))
            .is_some_and(|v| claim_has(v, want)),
        _ => false,
    }
}

/// The verified email of a claim set (lower-cased), if any.
pub fn verified_email(claims: &Value) -> Option<String> {
    let verified = claims.get("email_verified").and_then(|v| {
        v.as_bool()
            .or_else(|| v.as_str().map(|s| s.eq_ignore_ascii_case("true")))
    });
    if verified == Some(false) {
        return None;
    }
    claims
        .get("email")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
}

/// Groups the rules give an identity of `provider` (None: rules of every provider apply,
/// for previews), in rule order, skipping groups that no longer exist.
pub fn groups_for(
    rules: &[MappingRule],
    provider: Option<&str>,
    email: Option<&str>,
    claims: &Value,
    known: &BTreeSet<String>,
) -> (Vec<String>, Vec<u64>) {
    let mut sorted: Vec<&MappingRule> = rules
        .iter()
        .filter(|r| match (&r.provider, provider) {
            (None, _) | (_, None) => true,
            (Some(rp), Some(p)) => rp == p,
        })
        .collect();
    sorted.sort_by_key(|r| (r.priority, r.id));
    let (mut groups, mut matched) = (Vec::new(), Vec::new());
    for r in sorted {
        if known.contains(&r.group) && rule_matches(r, email, claims) {
            matched.push(r.id);
            if !groups.contains(&r.group) {
                groups.push(r.group.clone());
            }
        }
    }
    (groups, matched)
}

// ---------------------------------------------------------------------------------------
// Data: the overlay (gui mode) or the YAML (declarative mode)

fn numbered<T: Clone>(items: &[T], set_id: impl Fn(&mut T, u64)) -> Vec<T> {
    items
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let mut x = x.clone();
            set_id(&mut x, i as u64 + 1);
            x
        })
        .collect()
}

/// The configured providers, sorted by priority (lower first) then name.
pub fn providers(st: &AppState) -> Vec<ProviderSpec> {
    let mut v = if st.cfg.iam_declarative {
        numbered(&st.file.read().access.auth_providers, |p, i| p.id = i)
    } else {
        st.iam
            .admin_store
            .as_ref()
            .map(|s| s.overlay().auth_providers)
            .unwrap_or_default()
    };
    v.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
    v
}

pub fn rules(st: &AppState) -> Vec<MappingRule> {
    let mut v = if st.cfg.iam_declarative {
        numbered(&st.file.read().access.group_mapping_rules, |r, i| r.id = i)
    } else {
        st.iam
            .admin_store
            .as_ref()
            .map(|s| s.overlay().mapping_rules)
            .unwrap_or_default()
    };
    v.sort_by_key(|r| (r.priority, r.id));
    v
}

pub fn identities(st: &AppState) -> Vec<ExternalIdentity> {
    match &st.iam.admin_store {
        Some(s) if !st.cfg.iam_declarative => s.overlay().external_identities,
        _ => st.oidc.memory_identities.lock().clone(),
    }
}

/// The providers a login page offers (`whoami.external_providers`).
pub fn public_providers(st: &AppState) -> Value {
    let v: Vec<Value> = providers(st)
        .into_iter()
        .filter(|p| p.enabled)
        .map(|p| {
            json!({"name": p.name, "display_name": p.display_name.clone().unwrap_or(p.name.clone()),
                   "provider_type": p.provider_type})
        })
        .collect();
    Value::Array(v)
}

/// Runs `f` over the admin overlay and persists the result durably (gui mode only).
fn change<T>(
    st: &AppState,
    f: impl FnOnce(&mut AdminOverlay) -> Result<T, ExtAuthError>,
) -> Result<T, ExtAuthError> {
    if st.cfg.iam_declarative {
        return Err(ExtAuthError::Declarative);
    }
    match &st.iam.admin_store {
        Some(s) => s.change_ext_auth(f),
        None => Err(ExtAuthError::Declarative),
    }
}

fn next_id<T>(items: &[T], id: impl Fn(&T) -> u64) -> u64 {
    items.iter().map(id).max().unwrap_or(0) + 1
}

fn group_names(st: &AppState) -> BTreeSet<String> {
    st.iam.groups.read().keys().cloned().collect()
}

pub fn create_provider(st: &AppState, mut p: ProviderSpec) -> Result<ProviderSpec, ExtAuthError> {
    validate_provider(&p).map_err(ExtAuthError::Invalid)?;
    change(st, |ov| {
        if ov.auth_providers.iter().any(|x| x.name == p.name) {
            return Err(ExtAuthError::Conflict("duplicate provider name".into()));
        }
        p.id = next_id(&ov.auth_providers, |x| x.id);
        p.client_secret = p.client_secret.take().filter(|s| !is_placeholder(s));
        ov.auth_providers.push(p.clone());
        Ok(p)
    })
}

fn is_placeholder(s: &str) -> bool {
    matches!(s, "" | "***" | "<redacted>")
}

/// Replaces provider `id`; a missing or placeholder `client_secret` keeps the stored one. A
/// rename carries the provider's rules and identities along.
pub fn update_provider(
    st: &AppState,
    id: u64,
    mut p: ProviderSpec,
) -> Result<ProviderSpec, ExtAuthError> {
    validate_provider(&p).map_err(ExtAuthError::Invalid)?;
    change(st, |ov| {
        let Some(i) = ov.auth_providers.iter().position(|x| x.id == id) else {
            return Err(ExtAuthError::NotFound("no such provider"));
        };
        let old = ov.auth_providers[i].clone();
        if ov
            .auth_providers
            .iter()
            .any(|x| x.id != id && x.name == p.name)
        {
            return Err(ExtAuthError::Conflict("duplicate provider name".into()));
        }
        p.id = id;
        if p.client_secret.as_deref().is_none_or(is_placeholder) {
            p.client_secret = old.client_secret.clone();
        }
        if old.name != p.name {
            for r in &mut ov.mapping_rules {
                if r.provider.as_deref() == Some(&old.name) {
                    r.provider = Some(p.name.clone());
                }
            }
            for x in &mut ov.external_identities {
                if x.provider == old.name {
                    x.provider = p.name.clone();
                }
            }
        }
        ov.auth_providers[i] = p.clone();
        Ok(p)
    })
}

/// Deletes provider `id` with its mapping rules and identity links (the IAM users that were
/// provisioned stay: they may own permissions or groups an operator gave them).
pub fn delete_provider(st: &AppState, id: u64) -> Result<String, ExtAuthError> {
    change(st, |ov| {
        let Some(i) = ov.auth_providers.iter().position(|x| x.id == id) else {
            return Err(ExtAuthError::NotFound("no such provider"));
        };
        let name = ov.auth_providers.remove(i).name;
        ov.mapping_rules
            .retain(|r| r.provider.as_deref() != Some(&name));
        ov.external_identities.retain(|x| x.provider != name);
        Ok(name)
    })
}

pub fn create_rule(st: &AppState, mut r: MappingRule) -> Result<MappingRule, ExtAuthError> {
    let groups = group_names(st);
    change(st, |ov| {
        validate_rule(&r, &ov.auth_providers, &groups).map_err(ExtAuthError::Invalid)?;
        r.id = next_id(&ov.mapping_rules, |x| x.id);
        ov.mapping_rules.push(r.clone());
        Ok(r)
    })
}

pub fn update_rule(
    st: &AppState,
    id: u64,
    mut r: MappingRule,
) -> Result<MappingRule, ExtAuthError> {
    let groups = group_names(st);
    change(st, |ov| {
        let Some(i) = ov.mapping_rules.iter().position(|x| x.id == id) else {
            return Err(ExtAuthError::NotFound("no such mapping rule"));
        };
        validate_rule(&r, &ov.auth_providers, &groups).map_err(ExtAuthError::Invalid)?;
        r.id = id;
        ov.mapping_rules[i] = r.clone();
        Ok(r)
    })
}

pub fn delete_rule(st: &AppState, id: u64) -> Result<(), ExtAuthError> {
    change(st, |ov| {
        let before = ov.mapping_rules.len();
        ov.mapping_rules.retain(|x| x.id != id);
        if ov.mapping_rules.len() == before {
            return Err(ExtAuthError::NotFound("no such mapping rule"));
        }
        Ok(())
    })
}

/// What `sync-memberships` did.
#[derive(Debug, Default, Serialize)]
pub struct SyncReport {
    pub identities: usize,
    pub users_updated: usize,
    pub memberships_added: usize,
}

/// Re-applies the mapping rules to every known identity: groups they now give are added to
/// the linked users; memberships are never removed.
pub fn sync_memberships(st: &AppState) -> Result<SyncReport, ExtAuthError> {
    let rules = rules(st);
    let known = group_names(st);
    let mut users = st.iam.users.write();
    let mut report = SyncReport::default();
    let mut changed: Vec<UserSpec> = Vec::new();
    for x in identities(st) {
        report.identities += 1;
        let Some(u) = users.get(&x.user) else {
            continue;
        };
        let email = verified_email(&x.claims).or_else(|| {
            // Identities stored before a claim set was recorded still carry their email.
            x.claims.is_null().then(|| x.email.clone()).flatten()
        });
        let (want, _) = groups_for(
            &rules,
            Some(&x.provider),
            email.as_deref(),
            &x.claims,
            &known,
        );
        let mut u = changed
            .iter()
            .find(|c| c.access_key_id == u.access_key_id)
            .cloned()
            .unwrap_or_else(|| u.clone());
        let added = merge_groups(&mut u, &want);
        if added > 0 {
            report.memberships_added += added;
            changed.retain(|c| c.access_key_id != u.access_key_id);
            changed.push(u);
        }
    }
    report.users_updated = changed.len();
    if changed.is_empty() {
        return Ok(report);
    }
    // Durable first (gui mode), then in memory.
    if !st.cfg.iam_declarative {
        if let Some(s) = &st.iam.admin_store {
            s.change_ext_auth(|ov| {
                for u in &changed {
                    ov.deleted.retain(|d| d != &u.access_key_id);
                    ov.users.insert(u.access_key_id.clone(), u.clone());
                }
                Ok::<_, ExtAuthError>(())
            })?;
        }
    }
    for u in changed {
        users.insert(u.access_key_id.clone(), u);
    }
    Ok(report)
}

/// Adds the missing `groups` to the user; returns how many were added.
fn merge_groups(u: &mut UserSpec, groups: &[String]) -> usize {
    let mut n = 0;
    for g in groups {
        if !u.groups.contains(g) {
            u.groups.push(g.clone());
            n += 1;
        }
    }
    n
}

// ---------------------------------------------------------------------------------------
// The OAuth flow

/// The parts of an issuer's discovery document the flow uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

struct IssuerEntry {
    disc: Discovery,
    keys: JwkSet,
    fetched: Instant,
}

/// An authorization request waiting for its callback.
struct Pending {
    provider: String,
    verifier: String,
    nonce: String,
    redirect_uri: String,
    /// The browser's IP: the callback must come from the same client (login CSRF).
    ip: String,
    expires: Instant,
}

/// Runtime state of external authentication (in [`AppState`]).
pub struct Oidc {
    http: reqwest::Client,
    pending: Mutex<HashMap<String, Pending>>,
    issuers: Mutex<HashMap<String, std::sync::Arc<IssuerEntry>>>,
    /// Identities in declarative mode, where nothing is persisted by the API: they last
    /// until restart and are re-created at the next login.
    memory_identities: Mutex<Vec<ExternalIdentity>>,
}

impl Default for Oidc {
    fn default() -> Self {
        Self::new()
    }
}

fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

fn provider_err(e: impl std::fmt::Display) -> ExtAuthError {
    ExtAuthError::Provider(e.to_string())
}

/// Only asymmetric algorithms: with `HS*` anyone knowing the client secret (or a key
/// confusion with a public key) could mint tokens.
fn asymmetric(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

impl Oidc {
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .unwrap_or_default();
        Oidc {
            http,
            pending: Mutex::new(HashMap::new()),
            issuers: Mutex::new(HashMap::new()),
            memory_identities: Mutex::new(Vec::new()),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, ExtAuthError> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| provider_err(format!("{url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(provider_err(format!("{url}: HTTP {}", resp.status())));
        }
        resp.json()
            .await
            .map_err(|e| provider_err(format!("{url}: {e}")))
    }

    /// Fetches the discovery document (its `issuer` must equal the configured issuer URL,
    /// OIDC Discovery §4.3) and the key set.
    async fn fetch_issuer(&self, issuer_url: &str) -> Result<IssuerEntry, ExtAuthError> {
        let base = issuer_url.trim_end_matches('/');
        let disc: Discovery = self
            .get_json(&format!("{base}/.well-known/openid-configuration"))
            .await?;
        if disc.issuer.trim_end_matches('/') != base {
            return Err(provider_err(format!(
                "discovery issuer {:?} does not match issuer_url {issuer_url:?}",
                disc.issuer
            )));
        }
        let keys: JwkSet = self.get_json(&disc.jwks_uri).await?;
        Ok(IssuerEntry {
            disc,
            keys,
            fetched: Instant::now(),
        })
    }

    /// The cached issuer entry, refetched when stale or when `force` (and the last fetch is
    /// old enough).
    async fn issuer(
        &self,
        issuer_url: &str,
        force: bool,
    ) -> Result<std::sync::Arc<IssuerEntry>, ExtAuthError> {
        let cached = self.issuers.lock().get(issuer_url).cloned();
        if let Some(e) = &cached {
            let age = e.fetched.elapsed();
            if age < ISSUER_TTL && (!force || age < MIN_REFETCH) {
                return Ok(e.clone());
            }
        }
        let fresh = std::sync::Arc::new(self.fetch_issuer(issuer_url).await?);
        self.issuers
            .lock()
            .insert(issuer_url.to_string(), fresh.clone());
        Ok(fresh)
    }

    /// `POST …/providers/{id}/test`: discovery and JWKS fetched now, bypassing the cache.
    pub async fn test_provider(&self, p: &ProviderSpec) -> Value {
        match self.fetch_issuer(&p.issuer_url).await {
            Ok(e) => {
                let n = e.keys.keys.len();
                let mut out = json!({"ok": n > 0, "issuer": e.disc.issuer,
                    "authorization_endpoint": e.disc.authorization_endpoint,
                    "token_endpoint": e.disc.token_endpoint, "jwks_keys": n});
                if n == 0 {
                    out["error"] = json!("the JWKS holds no keys");
                }
                self.issuers
                    .lock()
                    .insert(p.issuer_url.clone(), std::sync::Arc::new(e));
                out
            }
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        }
    }

    /// Starts a login: the IdP authorization URL to redirect the browser to.
    pub async fn begin(
        &self,
        st: &AppState,
        provider: &str,
        redirect_uri: String,
        ip: &str,
    ) -> Result<String, ExtAuthError> {
        let p = providers(st)
            .into_iter()
            .find(|p| p.name == provider && p.enabled)
            .ok_or(ExtAuthError::UnknownProvider)?;
        let issuer = self.issuer(&p.issuer_url, false).await?;
        let (state, nonce, verifier) = (random_token(), random_token(), random_token());
        let mut scopes: Vec<&str> = p.scopes.split_whitespace().collect();
        if !scopes.contains(&"openid") {
            scopes.insert(0, "openid");
        }
        let mut url = url::Url::parse(&issuer.disc.authorization_endpoint)
            .map_err(|e| provider_err(format!("authorization_endpoint: {e}")))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &p.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", &scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &pkce_challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        let mut m = self.pending.lock();
        let now = Instant::now();
        m.retain(|_, x| x.expires > now);
        while m.len() >= MAX_PENDING {
            let oldest = m
                .iter()
                .min_by_key(|(_, x)| x.expires)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => m.remove(&k),
                None => break,
            };
        }
        m.insert(
            state,
            Pending {
                provider: p.name,
                verifier,
                nonce,
                redirect_uri,
                ip: ip.to_string(),
                expires: now + PENDING_TTL,
            },
        );
        Ok(url.to_string())
    }

    /// Completes a login: redeems `state` (single use), exchanges `code`, validates the
    /// id_token, provisions or updates the IAM user and applies the mapping rules.
    pub async fn finish(
        &self,
        st: &AppState,
        code: &str,
        state: &str,
        ip: &str,
    ) -> Result<(UserSpec, String), ExtAuthError> {
        let pending = {
            let mut m = self.pending.lock();
            match m.remove(state) {
                Some(p) if p.expires > Instant::now() && p.ip == ip => p,
                _ => return Err(ExtAuthError::InvalidState),
            }
        };
        let p = providers(st)
            .into_iter()
            .find(|p| p.name == pending.provider && p.enabled)
            .ok_or(ExtAuthError::UnknownProvider)?;
        let issuer = self.issuer(&p.issuer_url, false).await?;
        let id_token = self.exchange(&p, &issuer.disc, code, &pending).await?;
        let claims = match self.validate(&p, &issuer, &id_token, &pending.nonce) {
            Err(ExtAuthError::Token(m)) if m == "unknown kid" => {
                let fresh = self.issuer(&p.issuer_url, true).await?;
                self.validate(&p, &fresh, &id_token, &pending.nonce)?
            }
            other => other?,
        };
        let user = provision(st, &p, &claims)?;
        Ok((user, p.name))
    }

    /// The token request (authorization_code grant with the PKCE verifier); client
    /// authentication by HTTP Basic unless the IdP only advertises `client_secret_post`.
    async fn exchange(
        &self,
        p: &ProviderSpec,
        disc: &Discovery,
        code: &str,
        pending: &Pending,
    ) -> Result<String, ExtAuthError> {
        let mut form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.to_string()),
            ("redirect_uri", pending.redirect_uri.clone()),
            ("code_verifier", pending.verifier.clone()),
            ("client_id", p.client_id.clone()),
        ];
        let mut req = self.http.post(&disc.token_endpoint);
        if let Some(secret) = p.client_secret.as_deref().filter(|s| !s.is_empty()) {
            let methods = disc
                .token_endpoint_auth_methods_supported
                .as_deref()
                .unwrap_or_default();
            let post_only = methods.iter().any(|m| m == "client_secret_post")
                && !methods.iter().any(|m| m == "client_secret_basic");
            if post_only {
                form.push(("client_secret", secret.to_string()));
            } else {
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                req = req.basic_auth(enc(&p.client_id), Some(enc(secret)));
            }
        }
        let resp = req
            .form(&form)
            .send()
            .await
            .map_err(|e| provider_err(format!("token endpoint: {e}")))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let why = body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no error code");
            return Err(provider_err(format!(
                "token endpoint: HTTP {status}: {why}"
            )));
        }
        body.get("id_token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| provider_err("token endpoint returned no id_token"))
    }

    /// id_token checks: asymmetric algorithm from the header, key by `kid`, signature,
    /// `iss`, `aud` = client_id (and `azp` when several audiences), `exp`, `nonce`.
    fn validate(
        &self,
        p: &ProviderSpec,
        issuer: &IssuerEntry,
        token: &str,
        nonce: &str,
    ) -> Result<Value, ExtAuthError> {
        let bad = |m: &str| ExtAuthError::Token(m.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(|e| bad(&e.to_string()))?;
        if !asymmetric(header.alg) {
            return Err(bad("symmetric algorithms are not accepted"));
        }
        let jwk = match &header.kid {
            Some(kid) => issuer.keys.find(kid),
            None if issuer.keys.keys.len() == 1 => issuer.keys.keys.first(),
            None => None,
        }
        .ok_or_else(|| bad("unknown kid"))?;
        if let Some(ka) = jwk.common.key_algorithm {
            if ka.to_string().parse::<Algorithm>().ok() != Some(header.alg) {
                return Err(bad("algorithm does not match the key"));
            }
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(&e.to_string()))?;
        let mut v = Validation::new(header.alg);
        v.leeway = LEEWAY_SECS;
        v.set_audience(&[&p.client_id]);
        v.set_issuer(&[&issuer.disc.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Value>(token, &key, &v)
            .map_err(|e| bad(&e.to_string()))?
            .claims;
        if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
            return Err(bad("nonce mismatch"));
        }
        if let Some(aud) = claims.get("aud").and_then(Value::as_array) {
            if aud.len() > 1 {
                if let Some(azp) = claims.get("azp").and_then(Value::as_str) {
                    if azp != p.client_id {
                        return Err(bad("azp is not this client"));
                    }
                }
            }
        }
        Ok(claims)
    }
}

/// Finds or creates the IAM user of an external identity and merges the groups the rules
/// give it. A new user gets a random key pair and no permissions of its own.
fn provision(st: &AppState, p: &ProviderSpec, claims: &Value) -> Result<UserSpec, ExtAuthError> {
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ExtAuthError::Token("no sub".into()))?
        .to_string();
    let email = verified_email(claims);
    let (want, _) = groups_for(
        &rules(st),
        Some(&p.name),
        email.as_deref(),
        claims,
        &group_names(st),
    );
    let now = chrono::Utc::now().to_rfc3339();
    let display = claims
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_string);
    // Lock order users -> store, as the admin handlers take them.
    let mut users = st.iam.users.write();
    let link = |idents: &mut Vec<ExternalIdentity>| -> Result<UserSpec, ExtAuthError> {
        let existing = idents
            .iter()
            .position(|x| x.provider == p.name && x.subject == sub);
        let linked = existing.and_then(|i| users.get(&idents[i].user).cloned());
        let mut user = match linked {
            Some(u) if !u.enabled => return Err(ExtAuthError::Disabled),
            Some(u) => u,
            None => new_user(&users, &p.name, &sub, email.as_deref()),
        };
        merge_groups(&mut user, &want);
        match existing {
            Some(i) => {
                let x = &mut idents[i];
                x.user = user.access_key_id.clone();
                x.email = email.clone();
                x.name = display.clone();
                x.claims = claims.clone();
                x.last_login = now.clone();
            }
            None => {
                let id = next_id(idents, |x| x.id);
                idents.push(ExternalIdentity {
                    id,
                    provider: p.name.clone(),
                    subject: sub.clone(),
                    user: user.access_key_id.clone(),
                    email: email.clone(),
                    name: display.clone(),
                    claims: claims.clone(),
                    created_at: now.clone(),
                    last_login: now.clone(),
                });
            }
        }
        Ok(user)
    };
    let user = match &st.iam.admin_store {
        Some(s) if !st.cfg.iam_declarative => s.change_ext_auth(|ov| {
            let u = link(&mut ov.external_identities)?;
            ov.deleted.retain(|d| d != &u.access_key_id);
            ov.users.insert(u.access_key_id.clone(), u.clone());
            Ok::<_, ExtAuthError>(u)
        })?,
        _ => link(&mut st.oidc.memory_identities.lock())?,
    };
    users.insert(user.access_key_id.clone(), user.clone());
    Ok(user)
}

/// A fresh IAM user for an external identity: named by its verified email when that name is
/// free, else `provider:subject`.
fn new_user(
    users: &BTreeMap<String, UserSpec>,
    provider: &str,
    sub: &str,
    email: Option<&str>,
) -> UserSpec {
    let taken = |n: &str| users.values().any(|u| u.name == n);
    let mut name = match email {
        Some(e) if !e.starts_with('$') && !taken(e) => e.to_string(),
        _ => format!("{provider}:{sub}"),
    };
    if taken(&name) {
        name = format!("{name}#{}", hex::encode(rand::random::<[u8; 3]>()));
    }
    let key = loop {
        let k = format!("DGX{}", hex::encode_upper(rand::random::<[u8; 9]>()));
        if !users.contains_key(&k) {
            break k;
        }
    };
    UserSpec {
        name,
        access_key_id: key,
        secret_access_key: hex::encode(rand::random::<[u8; 20]>()),
        enabled: true,
        groups: vec![],
        permissions: vec![],
    }
}

/// The JSON view of a provider: the secret is never returned.
pub fn provider_view(p: &ProviderSpec) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or_default();
    v["id"] = json!(p.id);
    v["client_secret"] = Value::Null;
    v["has_client_secret"] = json!(p.client_secret.as_deref().is_some_and(|s| !s.is_empty()));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(t: MatchType, field: Option<&str>, value: &str, group: &str) -> MappingRule {
        MappingRule {
            id: 1,
            provider: None,
            priority: 0,
            match_type: t,
            match_field: field.map(str::to_string),
            match_value: value.into(),
            group: group.into(),
        }
    }

    #[test]
    fn match_types() {
        let c = json!({"email": "Ann@Corp.example", "groups": ["ops", "dev"], "realm": {"role": "admin"}});
        let e = verified_email(&c);
        let e = e.as_deref();
        assert!(rule_matches(
            &rule(MatchType::EmailDomain, None, "corp.example", "g"),
            e,
            &c
        ));
        assert!(rule_matches(
            &rule(MatchType::EmailDomain, None, "@CORP.example", "g"),
            e,
            &c
        ));
        assert!(!rule_matches(
            &rule(MatchType::EmailDomain, None, "example", "g"),
            e,
            &c
        ));
        assert!(rule_matches(
            &rule(MatchType::EmailGlob, None, "*@corp.*", "g"),
            e,
            &c
        ));
        assert!(rule_matches(
            &rule(MatchType::EmailRegex, None, r"[a-z]+@corp\.example", "g"),
            e,
            &c
        ));
        // Anchored: a partial match is not a match.
        assert!(!rule_matches(
            &rule(MatchType::EmailRegex, None, "ann", "g"),
            e,
            &c
        ));
        assert!(rule_matches(
            &rule(MatchType::ClaimValue, Some("groups"), "ops", "g"),
            e,
            &c
        ));
        assert!(rule_matches(
            &rule(MatchType::ClaimValue, Some("realm.role"), "admin", "g"),
            e,
            &c
        ));
        assert!(!rule_matches(
            &rule(MatchType::ClaimValue, Some("groups"), "op", "g"),
            e,
            &c
        ));
        let unverified = json!({"email": "ann@corp.example", "email_verified": false});
        assert!(verified_email(&unverified).is_none());
    }

    #[test]
    fn groups_merge_and_filter_by_provider() {
        let mut a = rule(MatchType::EmailDomain, None, "corp.example", "staff");
        a.provider = Some("other".into());
        let b = rule(MatchType::EmailDomain, None, "corp.example", "all");
        let known: BTreeSet<String> = ["staff", "all"].iter().map(|s| s.to_string()).collect();
        let c = json!({});
        let (g, _) = groups_for(
            &[a.clone(), b.clone()],
            Some("idp"),
            Some("x@corp.example"),
            &c,
            &known,
        );
        assert_eq!(g, vec!["all".to_string()]);
        let (g, _) = groups_for(&[a, b], None, Some("x@corp.example"), &c, &known);
        assert_eq!(g.len(), 2);
        let mut u = new_user(&BTreeMap::new(), "idp", "s", Some("x@corp.example"));
        u.groups = vec!["manual".into()];
        assert_eq!(merge_groups(&mut u, &g), 2);
        assert_eq!(merge_groups(&mut u, &g), 0);
        assert!(u.groups.contains(&"manual".to_string()));
    }

    #[test]
    fn pkce_s256_is_unpadded_base64url_sha256() {
        // Expected value computed independently (Python hashlib + base64.urlsafe_b64encode).
        assert_eq!(
            pkce_challenge("verifier-for-a-test-0123456789-abcdefghijk"),
            "P-LsPOOLO0W0jHKCa1WwbH79zmf0aueJU5a_sUe3Ynw"
        );
    }
}
