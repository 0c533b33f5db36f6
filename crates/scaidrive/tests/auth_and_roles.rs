//! Identity and process roles: ScaiKey tokens verified against a real JWKS endpoint
//! (scai-testkit's server) beside the embedded issuer; wrong issuer / expired / unknown key
//! refused with AUTH_TOKEN_INVALID; `api` refuses an unmigrated schema; `migrate` accepts the
//! operator guide's `mysql+asyncmy://` URL; expired upload sessions answer 410.

mod common;

use std::time::Duration;

use common::{assert_err, Backend, Srv};
use scai_testkit::jwks::JwksServer;
use serde_json::json;

#[tokio::test]
async fn scaikey_jwks_tokens_beside_embedded() {
    let jwks = JwksServer::start().await;
    let Some(s) = Srv::start(
        Backend::Sqlite,
        &[("SCAIDRIVE_SCAIKEY_URL", jwks.issuer().to_string())],
    )
    .await
    else {
        return;
    };
    let tok = jwks.mint_user("tnt_initech", "usr_peter", "files:read files:write");
    let (st, me) = s.get(&tok, "/api/v1/users/me").await;
    assert_eq!(st, 200, "{me}");
    assert_eq!(me["tenant_id"], "tnt_initech");
    assert_eq!(me["id"], "usr_peter");
    assert_eq!(me["is_admin"], false);
    let (_, root) = s.home(&tok).await;
    let (st, _) = s.upload(&tok, &root, "tps.txt", b"report").await;
    assert_eq!(st, 201);
    // Tenant-scoped issuer form.
    let t2 = jwks.mint(json!({"sub": "usr_peter", "tenant_id": "tnt_initech", "scope": "files:read", "iss": format!("{}/tenants/tnt_initech", jwks.issuer())}));
    let (st, b) = s.get(&t2, "/api/v1/users/me").await;
    assert_eq!(st, 200, "{b}");
    // Read-only scope cannot write.
    let (st, e) = s
        .post(
            &t2,
            "/api/v1/folders",
            json!({"parent_id": root, "name": "x"}),
        )
        .await;
    assert_err(st, &e, 403, "AUTHZ_PERMISSION_DENIED");
    // Embedded tokens are trusted alongside.
    let emb = s.token("initech", "peter", false);
    let (st, _) = s.get(&emb, "/api/v1/users/me").await;
    assert_eq!(st, 200);
    // Wrong issuer, expired, no tenant: refused.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for bad in [
        jwks.mint(json!({"sub": "usr_peter", "tenant_id": "tnt_initech", "iss": "https://scaikey-staging.example.com"})),
        jwks.mint(json!({"sub": "usr_peter", "tenant_id": "tnt_initech", "exp": now - 3600, "iat": now - 7200})),
        jwks.mint(json!({"sub": "usr_peter"})),
    ] {
        let (st, e) = s.get(&bad, "/api/v1/users/me").await;
        assert_err(st, &e, 401, "AUTH_TOKEN_INVALID");
    }
    // Key rotation: a token signed by a new key is accepted after the refetch on unknown kid.
    // (scai-auth refetches on an unknown kid at most once a second.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    jwks.rotate();
    let t3 = jwks.mint_user("tnt_initech", "usr_peter", "files:read");
    let (st, b) = s.get(&t3, "/api/v1/users/me").await;
    assert_eq!(st, 200, "{b}");
    let (st, ready) = s.get(&tok, "/api/v1/ready").await;
    assert_eq!(st, 200, "{ready}");
    assert_eq!(ready["checks"]["scaikey"], true);
}

#[tokio::test]
async fn api_role_refuses_unmigrated_schema_then_migrate() {
    let dir = tempfile::tempdir().unwrap();
    let port = scai_testkit::free_port();
    let envs = [
        ("SCAIDRIVE_DATA_DIR", dir.path().display().to_string()),
        ("SCAIDRIVE_BIND", format!("127.0.0.1:{port}")),
        ("SCAIDRIVE_EMBEDDED_AUTH", "true".to_string()),
    ];
    let out = std::process::Command::new(common::bin())
        .arg("api")
        .envs(envs.iter().cloned())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("scaidrive migrate"), "{err}");
    let out = std::process::Command::new(common::bin())
        .arg("worker")
        .envs(envs.iter().cloned())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("scaidrive migrate"));
    let out = std::process::Command::new(common::bin())
        .arg("migrate")
        .envs(envs.iter().cloned())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut p = scai_testkit::ServerProcess::start(common::bin(), &["api"], &envs);
    scai_testkit::wait_http_ok(
        &format!("http://127.0.0.1:{port}/api/v1/ready"),
        Duration::from_secs(20),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    p.kill9();
    // A bad value stops start-up naming the variable.
    let out = std::process::Command::new(common::bin())
        .arg("serve")
        .envs(envs.iter().cloned())
        .env("SCAIDRIVE_CHUNK_SIZE", "1000")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SCAIDRIVE_CHUNK_SIZE"));
}

#[tokio::test]
async fn migrate_accepts_asyncmy_url_on_mariadb() {
    if scai_testkit::services::skip("migrate_accepts_asyncmy_url_on_mariadb") {
        return;
    }
    let db = scai_testkit::mariadb::TempDatabase::create().await.unwrap();
    let url = db.url().replacen("mysql://", "mysql+asyncmy://", 1);
    let dir = tempfile::tempdir().unwrap();
    let run = |cmd: &str| {
        std::process::Command::new(common::bin())
            .arg(cmd)
            .env("SCAIDRIVE_DATABASE_URL", &url)
            .env("SCAIDRIVE_DATA_DIR", dir.path())
            .env(
                "SCAIDRIVE_BIND",
                format!("127.0.0.1:{}", scai_testkit::free_port()),
            )
            .output()
            .unwrap()
    };
    let out = run("migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let so = String::from_utf8_lossy(&out.stdout);
    // Every migration this binary knows, whatever their number.
    let all = format!("applied {}", scaidrive::db::migrations::latest());
    assert!(
        so.contains(&all),
        "stdout {so:?} stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run("migrate");
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied 0"));
}

#[tokio::test]
async fn expired_session_is_gone() {
    let Some(s) = Srv::start(
        Backend::Sqlite,
        &[("SCAIDRIVE_UPLOAD_SESSION_TTL", "1s".to_string())],
    )
    .await
    else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let (share, _) = s.home(&tok).await;
    let (st, sess) = s
        .post(
            &tok,
            "/api/v1/uploads",
            json!({"share_id": share, "file_name": "late.bin", "file_size": 10}),
        )
        .await;
    assert_eq!(st, 201);
    let sid = sess["session_id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (st, e) = s.put_chunk(&tok, sid, 0, vec![0; 10]).await;
    assert_err(st, &e, 410, "UPLOAD_SESSION_EXPIRED");
    let (st, e) = s
        .post(&tok, &format!("/api/v1/uploads/{sid}/complete"), json!({}))
        .await;
    assert_err(st, &e, 410, "UPLOAD_SESSION_EXPIRED");
}

#[tokio::test]
async fn worker_sweep_collects_abandoned_chunks_and_reports_storage() {
    let Some(s) = Srv::start(
        Backend::Sqlite,
        &[
            ("SCAIDRIVE_GC_GRACE", "0s".to_string()),
            ("SCAIDRIVE_GC_INTERVAL", "200ms".to_string()),
        ],
    )
    .await
    else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let (share, root) = s.home(&tok).await;
    let (st, _) = s
        .upload(&tok, &root, "kept.bin", &common::data(70_000, 1))
        .await;
    assert_eq!(st, 201);
    let kept = s.stored_bytes();
    let (_, sess) = s.post(&tok, "/api/v1/uploads", json!({"share_id": share, "file_name": "abandoned.bin", "file_size": 100_000, "chunk_size": 65536})).await;
    let sid = sess["session_id"].as_str().unwrap();
    let (st, _) = s.put_chunk(&tok, sid, 0, common::data(65536, 9)).await;
    assert_eq!(st, 200);
    // While the session holds it, the chunk stays even with a zero grace period.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(s.stored_bytes(), kept + 65536);
    let (st, _) = s.delete(&tok, &format!("/api/v1/uploads/{sid}")).await;
    assert_eq!(st, 200);
    let mut collected = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if s.stored_bytes() == kept {
            collected = true;
            break;
        }
    }
    assert!(
        collected,
        "abandoned chunk not collected: {} bytes stored",
        s.stored_bytes()
    );
    let r = s.download(&tok, "/api/v1/health", None).await;
    assert_eq!(r.status(), 200);
    let m = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("scaidrive_storage_bytes{tenant_id=\"tnt_acme\",type=\"files\"} 70000"),
        "{m}"
    );
}

#[tokio::test]
async fn rate_limited_per_user() {
    let Some(s) = Srv::start(
        Backend::Sqlite,
        &[("SCAIDRIVE_RATE_LIMIT_USER_PER_MINUTE", "5".to_string())],
    )
    .await
    else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let other = s.token("acme", "bob", false);
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let r = s
            .http
            .get(s.url("/api/v1/users/me"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            let retry: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&retry));
            let (st, e) = common::json_of(r).await;
            assert_err(st, &e, 429, "RATE_LIMITED");
            assert_eq!(e["error"]["details"]["dimension"], "user");
        }
    }
    // A window can roll over mid-test; then the count restarts, so at least 5 pass.
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 5,
        "{statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    // Another user is not affected; unauthenticated health is never limited.
    let (st, _) = s.get(&other, "/api/v1/users/me").await;
    assert_eq!(st, 200);
    let (st, _) = s.get(&tok, "/api/v1/health").await;
    assert_eq!(st, 200);
    let m = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("scaidrive_rate_limit_rejections_total{dimension=\"user\"}"),
        "{m}"
    );
}
