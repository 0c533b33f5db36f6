//! External authentication (OIDC) end to end: an identity provider on loopback (discovery,
//! /authorize, /token checking the PKCE verifier and client secret, RS256 id_tokens signed
//! with scai-testkit's JWKS fixture keys) and the real proxy binary, driven with reqwest with
//! redirects off. Provider and mapping-rule management, the full authorize → IdP → callback
//! flow (session cookie, provisioned user, mapped groups, whoami), refusals (bad or replayed
//! state, wrong nonce, wrong audience, tampered and HS256 tokens, non-admin users),
//! sync-memberships merging, migrate, and the declarative-mode guards and YAML validation.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::*;
use parking_lot::Mutex;
use reqwest::redirect::Policy;
use scai_testkit::jwks::JwksServer;
use serde_json::{json, Value};
use sha2::Digest as _;

const CLIENT_ID: &str = "dgp-client";
const CLIENT_SECRET: &str = "idp-client-secret";

/// How the IdP misbehaves on the next token request.
#[derive(Clone, Copy, PartialEq, Default)]
enum Fault {
    #[default]
    None,
    WrongNonce,
    WrongAudience,
    Tampered,
    Hs256,
}

struct Grant {
    challenge: String,
    nonce: String,
    redirect_uri: String,
    user: Value,
}

#[derive(Default)]
struct IdpState {
    /// Claims of whoever "logs in" at /authorize next (sub, email, extra claims).
    user: Value,
    fault: Fault,
    codes: HashMap<String, Grant>,
    token_requests: usize,
}

struct Idp {
    base: String,
    state: Arc<Mutex<IdpState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Ctx {
    base: String,
    keys: Arc<JwksServer>,
    state: Arc<Mutex<IdpState>>,
}

async fn discovery(State(c): State<Ctx>) -> Json<Value> {
    Json(json!({
        "issuer": c.base,
        "authorization_endpoint": format!("{}/authorize", c.base),
        "token_endpoint": format!("{}/token", c.base),
        "jwks_uri": format!("{}/jwks", c.keys.issuer()),
        "response_types_supported": ["code"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "code_challenge_methods_supported": ["S256"],
    }))
}

/// Logs the configured user in at once and sends the browser back with code + state.
async fn authorize(State(c): State<Ctx>, Query(q): Query<HashMap<String, String>>) -> Response {
    let need = [
        "response_type",
        "client_id",
        "redirect_uri",
        "state",
        "nonce",
        "code_challenge",
    ];
    if need.iter().any(|k| !q.contains_key(*k))
        || q["response_type"] != "code"
        || q.get("code_challenge_method").map(String::as_str) != Some("S256")
        || q["client_id"] != CLIENT_ID
        || !q
            .get("scope")
            .is_some_and(|s| s.split(' ').any(|x| x == "openid"))
    {
        return (StatusCode::BAD_REQUEST, "bad authorization request").into_response();
    }
    let code = hex::encode(rand::random::<[u8; 16]>());
    let mut s = c.state.lock();
    let user = s.user.clone();
    s.codes.insert(
        code.clone(),
        Grant {
            challenge: q["code_challenge"].clone(),
            nonce: q["nonce"].clone(),
            redirect_uri: q["redirect_uri"].clone(),
            user,
        },
    );
    let mut back = url::Url::parse(&q["redirect_uri"]).unwrap();
    back.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &q["state"]);
    (StatusCode::FOUND, [("location", back.to_string())]).into_response()
}

fn token_error(e: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": e}))).into_response()
}

/// The token endpoint: client authentication (Basic), the code, the redirect_uri and the
/// PKCE verifier are all checked, as a real IdP does.
async fn token(
    State(c): State<Ctx>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let mut s = c.state.lock();
    s.token_requests += 1;
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    if basic.as_deref() != Some(&format!("{CLIENT_ID}:{CLIENT_SECRET}")) {
        return token_error("invalid_client");
    }
    if f.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return token_error("unsupported_grant_type");
    }
    let Some(g) = f.get("code").and_then(|code| s.codes.remove(code)) else {
        return token_error("invalid_grant");
    };
    let verifier = f.get("code_verifier").cloned().unwrap_or_default();
    let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    if challenge != g.challenge || f.get("redirect_uri") != Some(&g.redirect_uri) {
        return token_error("invalid_grant");
    }
    let mut claims = g.user.clone();
    claims["iss"] = json!(c.base);
    claims["aud"] = json!(CLIENT_ID);
    claims["nonce"] = json!(g.nonce);
    match s.fault {
        Fault::WrongNonce => claims["nonce"] = json!("not-the-nonce"),
        Fault::WrongAudience => claims["aud"] = json!("another-client"),
        _ => {}
    }
    let mut id_token = c.keys.mint(claims.clone());
    match s.fault {
        Fault::Tampered => {
            // Same header and signature, payload changed (another subject and email).
            let parts: Vec<&str> = id_token.split('.').collect();
            let mut p: Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
            p["sub"] = json!("someone-else");
            p["email"] = json!("mallory@corp.example");
            let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&p).unwrap());
            id_token = format!("{}.{p}.{}", parts[0], parts[2]);
        }
        Fault::Hs256 => {
            let now = chrono::Utc::now().timestamp();
            claims["exp"] = json!(now + 600);
            claims["iat"] = json!(now);
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
            h.kid = Some("test-key-1".into());
            id_token = jsonwebtoken::encode(
                &h,
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(CLIENT_SECRET.as_bytes()),
            )
            .unwrap();
        }
        _ => {}
    }
    Json(json!({"access_token": "at", "token_type": "Bearer", "id_token": id_token}))
        .into_response()
}

impl Idp {
    async fn start() -> Idp {
        let keys = Arc::new(JwksServer::start().await);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let base = format!("http://{addr}");
        let state = Arc::new(Mutex::new(IdpState::default()));
        let ctx = Ctx {
            base: base.clone(),
            keys: keys.clone(),
            state: state.clone(),
        };
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(ctx);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Idp { base, state, task }
    }

    fn login_as(&self, sub: &str, email: &str, extra: Value) {
        let mut u = json!({"sub": sub, "email": email, "email_verified": true, "name": sub});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            u[k] = v;
        }
        let mut s = self.state.lock();
        s.user = u;
        s.fault = Fault::None;
    }

    fn fault(&self, f: Fault) {
        self.state.lock().fault = f;
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Drives authorize → IdP → callback like a browser; returns the callback response.
async fn browser_login(base: &str, provider: &str) -> reqwest::Response {
    let c = http();
    let r = c
        .get(format!("{base}/_/api/admin/oauth/authorize/{provider}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "authorize: {:?}", r.text().await);
    let to_idp = location(&r);
    let r = c.get(&to_idp).send().await.unwrap();
    assert_eq!(r.status(), 302, "IdP authorize refused {to_idp}");
    let back = location(&r);
    assert!(
        back.starts_with(&format!("{base}/_/api/admin/oauth/callback?")),
        "{back}"
    );
    c.get(&back).send().await.unwrap()
}

struct Admin {
    base: String,
    cookie: String,
}

impl Admin {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = http()
            .request(method, format!("{}{path}", self.base))
            .header("cookie", &self.cookie);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(json!(text)))
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, b: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(b)).await
    }
    async fn put(&self, path: &str, b: Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, Some(b)).await
    }
    async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }
}

fn user_named<'a>(users: &'a Value, name: &str) -> Option<&'a Value> {
    users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
}

fn admin_env() -> Vec<(&'static str, String)> {
    // One hash for the whole run: the config store is sealed under a key derived from it,
    // so a restart with a fresh salt would (rightly) find the store locked.
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let hash = HASH.get_or_init(|| bcrypt::hash("s3cret-admin", 4).unwrap());
    vec![
        ("DGP_BOOTSTRAP_PASSWORD_HASH", hash.clone()),
        ("DGP_SECURE_COOKIES", "false".into()),
    ]
}

#[tokio::test]
async fn oidc_login_provisions_maps_and_refuses_bad_tokens() {
    let idp = Idp::start().await;
    let p = start_proxy(None, &admin_env()).await;
    let base = p.url();
    let admin = Admin {
        base: base.clone(),
        cookie: admin_login(&base, "s3cret-admin").await,
    };

    // Groups the rules map to.
    for (name, actions) in [
        ("ops-admins", json!(["*"])),
        ("readers", json!(["read", "list"])),
        ("manual", json!(["read"])),
    ] {
        let (s, _) = admin
            .post("/_/api/admin/groups", json!({"name": name, "permissions": [{"effect": "Allow", "actions": actions, "resources": ["*"]}]}))
            .await;
        assert_eq!(s, 201);
    }

    // Providers: the secret is accepted but never returned.
    let (s, prov) = admin
        .post(
            "/_/api/admin/ext-auth/providers",
            json!({"name": "testidp", "provider_type": "oidc", "display_name": "Test IdP",
                   "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                   "issuer_url": idp.base, "scopes": "openid email profile"}),
        )
        .await;
    assert_eq!(s, 201, "{prov}");
    assert!(prov["client_secret"].is_null());
    let id = prov["id"].as_u64().unwrap();
    let (s, _) = admin
        .post(
            "/_/api/admin/ext-auth/providers",
            json!({"name": "testidp", "client_id": "x", "issuer_url": idp.base}),
        )
        .await;
    assert_eq!(s, 409, "duplicate name");
    let (s, _) = admin
        .post("/_/api/admin/ext-auth/providers", json!({"name": "bad", "provider_type": "saml", "client_id": "x", "issuer_url": idp.base}))
        .await;
    assert_eq!(s, 422, "only oidc");
    let (_, list) = admin.get("/_/api/admin/ext-auth/providers").await;
    assert_eq!(list["providers"].as_array().unwrap().len(), 1);
    assert!(list["providers"][0]["client_secret"].is_null());
    assert!(!list.to_string().contains(CLIENT_SECRET));

    // The provider test fetches discovery + JWKS for real; a dead issuer reports the error.
    let (s, t) = admin
        .post(
            &format!("/_/api/admin/ext-auth/providers/{id}/test"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(t["ok"], true, "{t}");
    let dead = format!("http://127.0.0.1:{}", scai_testkit::free_port());
    let (_, dp) = admin
        .post(
            "/_/api/admin/ext-auth/providers",
            json!({"name": "dead", "client_id": "x", "issuer_url": dead, "enabled": false}),
        )
        .await;
    let (_, t) = admin
        .post(
            &format!("/_/api/admin/ext-auth/providers/{}/test", dp["id"]),
            json!({}),
        )
        .await;
    assert_eq!(t["ok"], false);
    assert!(t["error"].as_str().is_some_and(|e| !e.is_empty()), "{t}");

    // Mapping rules: references are checked.
    let (s, r1) = admin
        .post("/_/api/admin/ext-auth/mappings", json!({"provider": "testidp", "priority": 1, "match_type": "email_domain", "match_value": "corp.example", "group": "ops-admins"}))
        .await;
    assert_eq!(s, 201, "{r1}");
    let (s, _) = admin
        .post("/_/api/admin/ext-auth/mappings", json!({"provider": null, "priority": 2, "match_type": "claim_value", "match_field": "groups", "match_value": "readers", "group": "readers"}))
        .await;
    assert_eq!(s, 201);
    for bad in [
        json!({"match_type": "email_domain", "match_value": "x.example", "group": "nope"}),
        json!({"provider": "ghost", "match_type": "email_domain", "match_value": "x.example", "group": "readers"}),
        json!({"match_type": "email_regex", "match_value": "(", "group": "readers"}),
        json!({"match_type": "claim_value", "match_value": "x", "group": "readers"}),
        json!({"match_type": "nonsense", "match_value": "x", "group": "readers"}),
    ] {
        let (s, b) = admin
            .post("/_/api/admin/ext-auth/mappings", bad.clone())
            .await;
        assert_eq!(s, 422, "{bad} -> {b}");
        assert!(b["error"].is_string());
    }
    let (s, pv) = admin
        .post(
            "/_/api/admin/ext-auth/mappings/preview",
            json!({"email": "ann@corp.example", "claims": {"groups": ["readers"]}}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(pv["groups"], json!(["ops-admins", "readers"]));
    let (_, pv) = admin
        .post(
            "/_/api/admin/ext-auth/mappings/preview",
            json!({"email": "ann@corp.example", "claims": {"email_verified": false}}),
        )
        .await;
    assert_eq!(
        pv["groups"],
        json!([]),
        "unverified email matches no email rule"
    );

    // whoami offers enabled providers only, to anyone.
    let who: Value = http()
        .get(format!("{base}/_/api/whoami"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        who["external_providers"],
        json!([{"name": "testidp", "display_name": "Test IdP", "provider_type": "oidc"}])
    );

    // The authorization request carries PKCE S256, state and nonce.
    let r = http()
        .get(format!("{base}/_/api/admin/oauth/authorize/testidp"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let u = url::Url::parse(&location(&r)).unwrap();
    assert!(u.as_str().starts_with(&format!("{}/authorize?", idp.base)));
    let q: HashMap<String, String> = u.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(
        q["redirect_uri"],
        format!("{base}/_/api/admin/oauth/callback")
    );
    assert!(q["state"].len() >= 32 && q["nonce"].len() >= 32 && q["code_challenge"].len() == 43);
    let (s, _) = admin.get("/_/api/admin/oauth/authorize/dead").await;
    assert_eq!(s, 404, "disabled provider");

    // A full login: new user provisioned, mapped to both groups, admin session works.
    idp.login_as(
        "ann-sub",
        "Ann@Corp.example",
        json!({"groups": ["readers"]}),
    );
    let r = browser_login(&base, "testidp").await;
    assert_eq!(r.status(), 302);
    assert_eq!(location(&r), "/_/");
    let cookie = session_cookie(&r).expect("session cookie");
    let ann = Admin {
        base: base.clone(),
        cookie,
    };
    let (s, users) = ann.get("/_/api/admin/users").await;
    assert_eq!(s, 200, "the OAuth session opens admin routes");
    let u = user_named(&users, "ann@corp.example").expect("provisioned");
    assert_eq!(u["groups"], json!(["ops-admins", "readers"]));
    assert_eq!(u["permissions"], json!([]));
    let ann_key = u["access_key_id"].as_str().unwrap().to_string();
    let (_, ids) = admin.get("/_/api/admin/ext-auth/identities").await;
    let ids = ids["identities"].as_array().unwrap().clone();
    assert_eq!(ids.len(), 1);
    assert_eq!(ids[0]["provider"], "testidp");
    assert_eq!(ids[0]["subject"], "ann-sub");
    assert_eq!(ids[0]["user"], ann_key);
    let (_, sess) = ann.get("/_/api/admin/session").await;
    assert_eq!(sess["valid"], true);

    // A second login of the same identity reuses the user (no duplicate).
    let r = browser_login(&base, "testidp").await;
    assert_eq!(r.status(), 302);
    let (_, users) = admin.get("/_/api/admin/users").await;
    assert_eq!(
        users["users"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|u| u["name"] == "ann@corp.example")
            .count(),
        1
    );

    // Refusals: none of them yields a session.
    let r = http()
        .get(format!(
            "{base}/_/api/admin/oauth/callback?code=abc&state=forged"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(session_cookie(&r).is_none());
    let r = http()
        .get(format!("{base}/_/api/admin/oauth/callback?state=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // A state is single-use: replaying a real callback URL fails.
    let c = http();
    let r = c
        .get(format!("{base}/_/api/admin/oauth/authorize/testidp"))
        .send()
        .await
        .unwrap();
    let r = c.get(location(&r)).send().await.unwrap();
    let back = location(&r);
    let first = c.get(&back).send().await.unwrap();
    assert_eq!(first.status(), 302);
    let again = c.get(&back).send().await.unwrap();
    assert_eq!(again.status(), 400);
    assert!(session_cookie(&again).is_none());

    for (fault, what) in [
        (Fault::WrongNonce, "wrong nonce"),
        (Fault::WrongAudience, "wrong audience"),
        (Fault::Tampered, "tampered payload"),
        (Fault::Hs256, "HS256 signed with the client secret"),
    ] {
        idp.login_as("ann-sub", "ann@corp.example", json!({}));
        idp.fault(fault);
        let before = idp.state.lock().token_requests;
        let r = browser_login(&base, "testidp").await;
        assert_eq!(r.status(), 401, "{what}");
        assert!(session_cookie(&r).is_none(), "{what}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_id_token", "{what}");
        assert_eq!(
            idp.state.lock().token_requests,
            before + 1,
            "{what}: the code was exchanged"
        );
    }
    let (_, users) = admin.get("/_/api/admin/users").await;
    assert!(user_named(&users, "mallory@corp.example").is_none());
    let (_, ids) = admin.get("/_/api/admin/ext-auth/identities").await;
    assert_eq!(ids["identities"].as_array().unwrap().len(), 1);

    // A user no rule makes an admin is provisioned but gets no session.
    idp.login_as("bob-sub", "bob@elsewhere.example", json!({}));
    let r = browser_login(&base, "testidp").await;
    assert_eq!(r.status(), 403);
    assert!(session_cookie(&r).is_none());
    let (_, users) = admin.get("/_/api/admin/users").await;
    let bob = user_named(&users, "bob@elsewhere.example")
        .expect("bob provisioned")
        .clone();
    assert_eq!(bob["groups"], json!([]));

    // sync-memberships applies new rules to known identities and merges: ann keeps a group
    // an operator gave her by hand.
    let mut ann_u = user_named(&users, "ann@corp.example").unwrap().clone();
    ann_u["groups"] = json!(["ops-admins", "readers", "manual"]);
    let (s, _) = admin
        .put(&format!("/_/api/admin/users/{ann_key}"), ann_u)
        .await;
    assert_eq!(s, 200);
    let (s, _) = admin
        .post("/_/api/admin/ext-auth/mappings", json!({"match_type": "email_glob", "match_value": "*@elsewhere.example", "group": "ops-admins"}))
        .await;
    assert_eq!(s, 201);
    let (s, rep) = admin
        .post("/_/api/admin/ext-auth/sync-memberships", json!({}))
        .await;
    assert_eq!(s, 200, "{rep}");
    assert_eq!(rep["identities"], 2);
    assert_eq!(rep["users_updated"], 1);
    assert_eq!(rep["memberships_added"], 1);
    let (_, users) = admin.get("/_/api/admin/users").await;
    assert_eq!(
        user_named(&users, "bob@elsewhere.example").unwrap()["groups"],
        json!(["ops-admins"])
    );
    assert_eq!(
        user_named(&users, "ann@corp.example").unwrap()["groups"],
        json!(["ops-admins", "readers", "manual"])
    );
    // bob is an admin now.
    idp.login_as("bob-sub", "bob@elsewhere.example", json!({}));
    let r = browser_login(&base, "testidp").await;
    assert_eq!(r.status(), 302);

    // Rule update / delete.
    let rid = r1["id"].as_u64().unwrap();
    let (s, up) = admin
        .put(&format!("/_/api/admin/ext-auth/mappings/{rid}"), json!({"provider": "testidp", "priority": 5, "match_type": "email_domain", "match_value": "corp.example", "group": "readers"}))
        .await;
    assert_eq!(s, 200, "{up}");
    assert_eq!(up["group"], "readers");
    let mapping = format!("/_/api/admin/ext-auth/mappings/{rid}");
    let (s, _) = admin.delete(&mapping).await;
    assert_eq!(s, 204);
    let (s, _) = admin.delete(&mapping).await;
    assert_eq!(s, 404);

    // Provider update without a secret keeps the stored one (the login still works).
    let (s, up) = admin
        .put(&format!("/_/api/admin/ext-auth/providers/{id}"), json!({"name": "testidp", "display_name": "Renamed", "client_id": CLIENT_ID, "issuer_url": idp.base}))
        .await;
    assert_eq!(s, 200, "{up}");
    assert!(up["client_secret"].is_null());
    idp.login_as("ann-sub", "ann@corp.example", json!({}));
    assert_eq!(browser_login(&base, "testidp").await.status(), 302);

    // migrate: bootstrap pair -> legacy-admin IAM user, once.
    let (s, m) = admin.post("/_/api/admin/migrate", json!({})).await;
    assert_eq!(s, 201, "{m}");
    let legacy = p.client_as(
        m["access_key_id"].as_str().unwrap(),
        m["secret_access_key"].as_str().unwrap(),
    );
    legacy
        .create_bucket()
        .bucket("migrated")
        .send()
        .await
        .expect("legacy-admin has full access");
    let (s, _) = admin.post("/_/api/admin/migrate", json!({})).await;
    assert_eq!(s, 409);

    // Ext-auth routes need a session.
    let r = http()
        .get(format!("{base}/_/api/admin/ext-auth/providers"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Everything survives a restart (persisted in iam.json), secret included.
    drop(ann);
    let data = p.data.clone();
    let keep = {
        let mut p = p;
        p.keep.take()
    };
    let p2 = start_proxy_in(&data, None, &admin_env(), keep).await;
    let admin2 = Admin {
        base: p2.url(),
        cookie: admin_login(&p2.url(), "s3cret-admin").await,
    };
    let (_, ids) = admin2.get("/_/api/admin/ext-auth/identities").await;
    assert_eq!(ids["identities"].as_array().unwrap().len(), 2);
    let (_, list) = admin2.get("/_/api/admin/ext-auth/providers").await;
    assert_eq!(list["providers"].as_array().unwrap().len(), 2);
    idp.login_as("ann-sub", "ann@corp.example", json!({}));
    let r = browser_login(&p2.url(), "testidp").await;
    assert_eq!(r.status(), 302, "stored client secret still authenticates");
    let (_, users) = admin2.get("/_/api/admin/users").await;
    assert_eq!(
        user_named(&users, "ann@corp.example").unwrap()["access_key_id"],
        ann_key.as_str()
    );

    // Delete cascades to rules and identity links.
    let (s, _) = admin2
        .delete(&format!("/_/api/admin/ext-auth/providers/{id}"))
        .await;
    assert_eq!(s, 204);
    let (_, ids) = admin2.get("/_/api/admin/ext-auth/identities").await;
    assert_eq!(ids["identities"], json!([]));
}

#[tokio::test]
async fn declarative_providers_and_guards() {
    let idp = Idp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
access:
  iam_mode: declarative
  iam_groups:
    - name: admins
      permissions:
        - actions: ["*"]
          resources: ["*"]
  auth_providers:
    - name: corp
      provider_type: oidc
      display_name: Corp SSO
      client_id: {CLIENT_ID}
      client_secret: {CLIENT_SECRET}
      issuer_url: {}
      scopes: [openid, email]
  group_mapping_rules:
    - provider: corp
      match_type: email_domain
      match_value: corp.example
      group: admins
"#,
        idp.base
    );
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let mut env = admin_env();
    env.push(("DGP_CONFIG", cfg.to_str().unwrap().to_string()));
    let p = start_proxy_in(dir.path(), None, &env, None).await;
    let base = p.url();
    let admin = Admin {
        base: base.clone(),
        cookie: admin_login(&base, "s3cret-admin").await,
    };

    let (_, list) = admin.get("/_/api/admin/ext-auth/providers").await;
    assert_eq!(list["providers"][0]["name"], "corp");
    assert!(list["providers"][0]["client_secret"].is_null());
    let who: Value = http()
        .get(format!("{base}/_/api/whoami"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(who["external_providers"][0]["display_name"], "Corp SSO");

    // Mutations are refused with the spec's body.
    for (m, path, body) in [
        (
            reqwest::Method::POST,
            "/_/api/admin/ext-auth/providers",
            json!({"name": "x", "client_id": "x", "issuer_url": idp.base}),
        ),
        (
            reqwest::Method::PUT,
            "/_/api/admin/ext-auth/providers/1",
            json!({"name": "corp", "client_id": "x", "issuer_url": idp.base}),
        ),
        (
            reqwest::Method::DELETE,
            "/_/api/admin/ext-auth/providers/1",
            json!({}),
        ),
        (
            reqwest::Method::POST,
            "/_/api/admin/ext-auth/mappings",
            json!({"match_type": "email_domain", "match_value": "x", "group": "admins"}),
        ),
        (
            reqwest::Method::PUT,
            "/_/api/admin/ext-auth/mappings/1",
            json!({"match_type": "email_domain", "match_value": "x", "group": "admins"}),
        ),
        (
            reqwest::Method::DELETE,
            "/_/api/admin/ext-auth/mappings/1",
            json!({}),
        ),
        (reqwest::Method::POST, "/_/api/admin/migrate", json!({})),
    ] {
        let (s, b) = admin.send(m.clone(), path, Some(body)).await;
        assert_eq!(
            (s, b.clone()),
            (403, json!({"error": "iam_declarative"})),
            "{m} {path}"
        );
    }

    // The declared provider and rule work: login, mapped to the declared group.
    idp.login_as("carol-sub", "carol@corp.example", json!({}));
    let r = browser_login(&base, "corp").await;
    assert_eq!(r.status(), 302);
    let carol = Admin {
        base: base.clone(),
        cookie: session_cookie(&r).unwrap(),
    };
    let (s, users) = carol.get("/_/api/admin/users").await;
    assert_eq!(s, 200);
    assert_eq!(
        user_named(&users, "carol@corp.example").unwrap()["groups"],
        json!(["admins"])
    );

    // Exports blank client_secret (to null, which canonical export leaves out).
    let r = http()
        .get(format!("{base}/_/api/admin/config/export?section=access"))
        .header("cookie", &admin.cookie)
        .send()
        .await
        .unwrap();
    let y = r.text().await.unwrap();
    assert!(y.contains("auth_providers") && y.contains("corp"), "{y}");
    assert!(!y.contains(CLIENT_SECRET), "{y}");
    let (_, sec) = admin.get("/_/api/admin/config/section/access").await;
    assert!(sec["auth_providers"][0]["client_secret"].is_null(), "{sec}");

    // Validation rejects unknown group and provider references.
    for (bad, what) in [
        (
            yaml.replace("group: admins", "group: nobody"),
            "unknown group",
        ),
        (
            yaml.replace("- provider: corp", "- provider: ghost"),
            "unknown provider",
        ),
        (
            yaml.replace("provider_type: oidc", "provider_type: saml"),
            "provider type",
        ),
    ] {
        let (s, v) = admin
            .post("/_/api/admin/config/validate", json!({"yaml": bad}))
            .await;
        assert_eq!(s, 200);
        assert_eq!(v["ok"], false, "{what}: {v}");
    }
    let (_, v) = admin
        .post("/_/api/admin/config/validate", json!({"yaml": yaml}))
        .await;
    assert_eq!(v["ok"], true, "{v}");
    // And a file with a bad reference stops start-up.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad_cfg = bad_dir.path().join("config.yaml");
    std::fs::write(&bad_cfg, yaml.replace("group: admins", "group: nobody")).unwrap();
    let out = std::process::Command::new(proxy_bin())
        .env("DGP_CONFIG", &bad_cfg)
        .env("DGP_DATA_DIR", bad_dir.path())
        .env(
            "DGP_LISTEN_ADDR",
            format!("127.0.0.1:{}", scai_testkit::free_port()),
        )
        .env("DGP_ACCESS_KEY_ID", AK)
        .env("DGP_SECRET_ACCESS_KEY", SK)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("unknown group"), "{text}");
}
