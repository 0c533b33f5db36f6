//! Verification against the embedded issuer and against a real JWKS/discovery server.

use std::sync::Arc;
use std::time::Duration;

use scai_auth::{AuthError, EmbeddedIssuer, MintOptions, Verifier, VerifierConfig};
use scai_testkit::jwks::JwksServer;

fn embedded_verifier(dir: &std::path::Path) -> (Arc<EmbeddedIssuer>, Verifier) {
    let emb = Arc::new(EmbeddedIssuer::load_or_create(dir, "urn:scai:test").unwrap());
    let v = Verifier::new(VerifierConfig {
        embedded: Some(emb.clone()),
        leeway: Duration::from_secs(0),
        ..Default::default()
    });
    (emb, v)
}

#[tokio::test]
async fn embedded_token_round_trip_and_key_persists() {
    let dir = tempfile::tempdir().unwrap();
    let (emb, v) = embedded_verifier(dir.path());
    let mut opts = MintOptions::new("acme", "alice");
    opts.admin = true;
    let claims = v.verify(&emb.mint(&opts)).await.unwrap();
    assert_eq!(claims.sub, "usr_alice");
    assert_eq!(claims.tenant_id.as_deref(), Some("tnt_acme"));
    assert_eq!(claims.role.as_deref(), Some("tenant_admin"));
    assert!(claims.has_scope("tenant:admin"));

    // A second load of the same directory (the `token` subcommand) signs tokens the first accepts.
    let again = EmbeddedIssuer::load_or_create(dir.path(), "urn:scai:test").unwrap();
    assert_eq!(again.kid(), emb.kid());
    assert!(v
        .verify(&again.mint(&MintOptions::new("acme", "bob")))
        .await
        .is_ok());

    // A key from another directory is unknown.
    let other_dir = tempfile::tempdir().unwrap();
    let other = EmbeddedIssuer::load_or_create(other_dir.path(), "urn:scai:test").unwrap();
    assert!(matches!(
        v.verify(&other.mint(&MintOptions::new("acme", "eve")))
            .await,
        Err(AuthError::UnknownKey)
    ));
}

#[tokio::test]
async fn embedded_rejects_expired_tampered_and_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let (emb, v) = embedded_verifier(dir.path());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expired = emb.sign(&serde_json::json!({"sub": "usr_a", "tenant_id": "tnt_a", "iss": "urn:scai:test", "exp": now - 10}));
    assert!(matches!(v.verify(&expired).await, Err(AuthError::Expired)));
    let future = emb.sign(&serde_json::json!({"sub": "usr_a", "tenant_id": "tnt_a", "iss": "urn:scai:test", "exp": now + 100, "nbf": now + 50}));
    assert!(matches!(
        v.verify(&future).await,
        Err(AuthError::NotYetValid)
    ));
    let wrong_iss = emb.sign(&serde_json::json!({"sub": "usr_a", "tenant_id": "tnt_a", "iss": "https://evil", "exp": now + 100}));
    assert!(matches!(
        v.verify(&wrong_iss).await,
        Err(AuthError::WrongIssuer(_))
    ));
    let no_tenant =
        emb.sign(&serde_json::json!({"sub": "usr_a", "iss": "urn:scai:test", "exp": now + 100}));
    assert!(matches!(
        v.verify(&no_tenant).await,
        Err(AuthError::MissingTenant)
    ));

    let good = emb.mint(&MintOptions::new("acme", "alice"));
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[1] = parts[1].chars().rev().collect();
    assert!(v.verify(&parts.join(".")).await.is_err());
    assert!(matches!(
        v.verify("not a jwt").await,
        Err(AuthError::Malformed(_))
    ));
}

#[tokio::test]
async fn scaikey_jwks_discovery_issuer_forms_and_rotation() {
    let idp = JwksServer::start().await;
    let v = Verifier::new(VerifierConfig {
        scaikey_url: Some(idp.issuer().to_string()),
        leeway: Duration::from_secs(0),
        ..Default::default()
    });

    // Base-URL issuer.
    let t = idp.mint_user("tnt_acme", "usr_alice", "files:read");
    let c = v.verify(&t).await.unwrap();
    assert_eq!(c.sub, "usr_alice");
    // Tenant-scoped issuer.
    let t = idp.mint(serde_json::json!({"sub": "usr_bob", "tenant_id": "tnt_acme", "iss": format!("{}/tenants/tnt_acme", idp.issuer())}));
    assert!(v.verify(&t).await.is_ok());
    // Tenant-scoped issuer of another tenant: refused.
    let t = idp.mint(serde_json::json!({"sub": "usr_bob", "tenant_id": "tnt_acme", "iss": format!("{}/tenants/tnt_other", idp.issuer())}));
    assert!(matches!(v.verify(&t).await, Err(AuthError::WrongIssuer(_))));
    // Expired.
    let t = idp.mint(serde_json::json!({"sub": "usr_bob", "tenant_id": "tnt_acme", "exp": 1000}));
    assert!(matches!(v.verify(&t).await, Err(AuthError::Expired)));

    // Keys are cached: many verifications, one JWKS fetch.
    let fetched = idp.jwks_requests();
    for _ in 0..5 {
        v.verify(&idp.mint_user("tnt_acme", "usr_alice", ""))
            .await
            .unwrap();
    }
    assert_eq!(idp.jwks_requests(), fetched);

    // Rotation: a new kid triggers a refetch and is accepted.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    idp.rotate();
    let t = idp.mint_user("tnt_acme", "usr_alice", "");
    assert!(v.verify(&t).await.is_ok());
    assert_eq!(idp.jwks_requests(), fetched + 1);
    assert!(v.scaikey_ready().await);
}

#[tokio::test]
async fn explicit_issuer_and_unreachable_idp() {
    let idp = JwksServer::start().await;
    let v = Verifier::new(VerifierConfig {
        scaikey_url: Some(idp.issuer().to_string()),
        issuer: Some("https://scaikey.example.com".into()),
        ..Default::default()
    });
    let t = idp.mint(serde_json::json!({"sub": "usr_a", "tenant_id": "tnt_a", "iss": "https://scaikey.example.com"}));
    assert!(v.verify(&t).await.is_ok());

    let port = scai_testkit::free_port();
    let down = Verifier::new(VerifierConfig {
        scaikey_url: Some(format!("http://127.0.0.1:{port}")),
        ..Default::default()
    });
    assert!(matches!(
        down.verify(&t).await,
        Err(AuthError::KeysUnavailable(_))
    ));
    assert!(!down.scaikey_ready().await);
}
