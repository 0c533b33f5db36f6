//! Admin identity end to end against the real binary: the generated bootstrap password and
//! its hash file, `--set-bootstrap-password`, `PUT /_/api/admin/password` (re-sealed config
//! store, other sessions ended), a store sealed under another hash (locked) and
//! `recover-db`, migration of a plaintext `iam.json`, `login-as` with admin gating, the
//! per-session S3 credentials, key rotation and group membership (aws-sdk-s3 proves which
//! keys work).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

async fn can_list(p: &Proxy, ak: &str, sk: &str, bucket: &str) -> bool {
    p.client_as(ak, sk)
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .is_ok()
}

fn set_password_cli(data: &std::path::Path, pw: &str) -> std::process::Output {
    let mut child = Command::new(proxy_bin())
        .arg("--set-bootstrap-password")
        .env("DGP_DATA_DIR", data)
        .env_remove("DGP_BOOTSTRAP_PASSWORD_HASH")
        .env_remove("DGP_ADMIN_PASSWORD_HASH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{pw}").unwrap();
    child.wait_with_output().unwrap()
}

fn hash_file(data: &std::path::Path) -> String {
    std::fs::read_to_string(data.join(".deltaglider_bootstrap_hash")).unwrap()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

const ADMIN_RULES: &str = r#"[{"effect": "Allow", "actions": ["*"], "resources": ["*"]}]"#;

#[tokio::test]
async fn generated_password_cli_reset_and_password_change() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let base_env = vec![("DGP_SECURE_COOKIES", "false".to_string())];

    // First run without a configured hash: one is generated and saved, the plaintext is not
    // logged (stderr is not a terminal), and a restart reuses it.
    let p = start_proxy_in(&data, None, &base_env, None).await;
    let first = hash_file(&data);
    assert!(first.starts_with("$2"), "{first}");
    assert!(
        p.proc.logs().contains("stderr is not a terminal"),
        "{}",
        p.proc.logs()
    );
    assert_eq!(admin_login_response(&p.url(), "").await.status(), 401);
    drop(p);
    let p = start_proxy_in(&data, None, &base_env, None).await;
    assert_eq!(hash_file(&data), first);
    drop(p);

    // --set-bootstrap-password: the hash of stdin's line is stored.
    let out = set_password_cli(&data, "cli-password-1");
    assert!(out.status.success(), "{out:?}");
    assert!(bcrypt::verify("cli-password-1", hash_file(&data).trim()).unwrap());
    let out = set_password_cli(&data, "");
    assert!(!out.status.success(), "an empty password is refused");

    // Log in with it and create a user: the store is sealed (no secret in the file).
    let p = start_proxy_in(&data, None, &base_env, None).await;
    let base = p.url();
    let cookie = admin_login(&base, "cli-password-1").await;
    p.client()
        .create_bucket()
        .bucket("bkt")
        .send()
        .await
        .unwrap();
    let rules: Value = serde_json::from_str(ADMIN_RULES).unwrap();
    let erin_sk = create_user(
        &base,
        &cookie,
        json!({"name": "erin", "access_key_id": "ERINAK", "permissions": rules}),
    )
    .await;
    assert!(can_list(&p, "ERINAK", &erin_sk, "bkt").await);
    let sealed = std::fs::read(data.join("deltaglider_config.db")).unwrap();
    assert!(!contains(&sealed, &erin_sk) && !contains(&sealed, "ERINAK"));
    drop(p);

    // Running the CLI again wipes the store: erin is gone after the restart.
    let out = set_password_cli(&data, "cli-password-2");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("config store wiped"));
    assert!(!data.join("deltaglider_config.db").exists());
    let mut p = start_proxy_in(&data, None, &base_env, None).await;
    let base = p.url();
    assert!(!can_list(&p, "ERINAK", &erin_sk, "bkt").await);
    assert_eq!(
        admin_login_response(&base, "cli-password-1").await.status(),
        401
    );

    // PUT /password: wrong current password, too short, then the real change.
    let mine = admin_login(&base, "cli-password-2").await;
    let other = admin_login(&base, "cli-password-2").await;
    let frank_sk = create_user(
        &base,
        &mine,
        json!({"name": "frank", "access_key_id": "FRANKAK", "permissions": rules}),
    )
    .await;
    let change = |current: &str, new: &str| {
        let body = json!({"current_password": current, "new_password": new});
        admin_call(
            Method::PUT,
            format!("{base}/_/api/admin/password"),
            &mine,
            Some(body),
        )
    };
    let (s, _) = change("wrong", "new-password-3").await;
    assert_eq!(s, 401);
    let (s, _) = change("cli-password-2", "short").await;
    assert_eq!(s, 422);
    let (s, v) = change("cli-password-2", "new-password-3").await;
    assert_eq!(s, 200, "{v}");
    assert!(bcrypt::verify("new-password-3", hash_file(&data).trim()).unwrap());
    // The other session ended; this one lives on.
    let users = format!("{base}/_/api/admin/users");
    let (s, _) = admin_call(Method::GET, users.clone(), &other, None).await;
    assert_eq!(s, 401);
    let (s, _) = admin_call(Method::GET, users, &mine, None).await;
    assert_eq!(s, 200);
    assert_eq!(
        admin_login_response(&base, "cli-password-2").await.status(),
        401
    );
    assert_eq!(
        admin_login_response(&base, "new-password-3").await.status(),
        200
    );

    // The store was re-sealed under the new hash: after a restart frank still signs.
    let keep = p.keep.take();
    drop(p);
    let p = start_proxy_in(&data, None, &base_env, keep).await;
    assert!(can_list(&p, "FRANKAK", &frank_sk, "bkt").await);
    assert!(!p.proc.logs().contains("invalid passphrase"));
    drop(dir);
}

#[tokio::test]
async fn stale_hash_locks_the_store_until_recover_db() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let first_env = bootstrap_env("first-pass");
    let second_env = bootstrap_env("second-pass");
    let p = start_proxy_in(&data, None, &first_env, None).await;
    let cookie = admin_login(&p.url(), "first-pass").await;
    p.client()
        .create_bucket()
        .bucket("bkt")
        .send()
        .await
        .unwrap();
    let rules: Value = serde_json::from_str(ADMIN_RULES).unwrap();
    let sk = create_user(
        &p.url(),
        &cookie,
        json!({"name": "carol", "access_key_id": "CAROLAK", "permissions": rules}),
    )
    .await;
    assert!(can_list(&p, "CAROLAK", &sk, "bkt").await);
    drop(p);

    // Restarted with another hash: the store does not open; it is kept, but locked.
    let p = start_proxy_in(&data, None, &second_env, None).await;
    let base = p.url();
    assert!(p
        .proc
        .logs()
        .contains("Failed to open config DB: invalid passphrase"));
    assert!(!can_list(&p, "CAROLAK", &sk, "bkt").await);
    let cookie = admin_login(&base, "second-pass").await;
    let (s, v) = admin_call(
        Method::POST,
        format!("{base}/_/api/admin/users"),
        &cookie,
        Some(json!({"name": "dan", "access_key_id": "DANAK"})),
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (409, Some("config_db_locked")));
    // The ext-auth mutations and migrate pass the same guard (they answered 500 here).
    for (path, body) in [
        (
            "/_/api/admin/ext-auth/providers",
            json!({"name": "corp", "client_id": "x", "issuer_url": "https://sso.example.com"}),
        ),
        ("/_/api/admin/migrate", json!({})),
    ] {
        let (s, v) = admin_call(
            reqwest::Method::POST,
            format!("{base}{path}"),
            &cookie,
            Some(body),
        )
        .await;
        assert_eq!(
            (s, v["error"].as_str()),
            (409, Some("config_db_locked")),
            "{path}"
        );
    }
    let recover = |pw: &str| {
        reqwest::Client::new()
            .post(format!("{base}/_/api/admin/recover-db"))
            .json(&json!({ "password": pw }))
            .send()
    };
    assert_eq!(recover("first-pass").await.unwrap().status(), 401);
    let r = recover("second-pass").await.unwrap();
    assert_eq!(r.status(), 200);
    let moved = r.json::<Value>().await.unwrap()["moved_to"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(std::path::Path::new(&moved).exists(), "{moved}");
    assert!(!data.join("deltaglider_config.db").exists());
    // Nothing left to recover.
    assert_eq!(recover("second-pass").await.unwrap().status(), 409);
    // Changes work again, and survive a restart under this hash.
    let dan_sk = create_user(
        &base,
        &cookie,
        json!({"name": "dan", "access_key_id": "DANAK", "permissions": rules}),
    )
    .await;
    drop(p);
    let p = start_proxy_in(&data, None, &second_env, None).await;
    assert!(can_list(&p, "DANAK", &dan_sk, "bkt").await);
    drop(dir);
}

#[tokio::test]
async fn plaintext_iam_json_is_migrated_into_the_sealed_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let legacy = json!({
        "version": 1,
        "users": {"OLDAK": {
            "name": "old", "access_key_id": "OLDAK", "secret_access_key": "old-secret-key-123",
            "permissions": [{"actions": ["*"], "resources": ["*"]}]
        }},
        "deleted": [], "groups": {}, "deleted_groups": []
    });
    std::fs::write(data.join("iam.json"), legacy.to_string()).unwrap();
    let env = bootstrap_env("pw-migrate");
    let p = start_proxy_in(&data, None, &env, None).await;
    p.client()
        .create_bucket()
        .bucket("bkt")
        .send()
        .await
        .unwrap();
    assert!(can_list(&p, "OLDAK", "old-secret-key-123", "bkt").await);
    assert!(!data.join("iam.json").exists());
    let sealed = std::fs::read(data.join("deltaglider_config.db")).unwrap();
    assert!(!contains(&sealed, "old-secret-key-123"));
    drop(p);
    let p = start_proxy_in(&data, None, &env, None).await;
    assert!(can_list(&p, "OLDAK", "old-secret-key-123", "bkt").await);
    drop(dir);
}

#[tokio::test]
async fn login_as_gating_s3_credentials_rotation_and_membership() {
    let p = start_proxy(None, &bootstrap_env("boot-pass")).await;
    let base = p.url();
    let boot = admin_login(&base, "boot-pass").await;
    p.client()
        .create_bucket()
        .bucket("bkt")
        .send()
        .await
        .unwrap();
    put_bytes(&p.client(), "bkt", "f.txt", b"hello").await;
    let rules: Value = serde_json::from_str(ADMIN_RULES).unwrap();
    let ops_sk = create_user(
        &base,
        &boot,
        json!({"name": "ops", "access_key_id": "OPSAK", "permissions": rules}),
    )
    .await;
    let viewer_sk = create_user(
        &base,
        &boot,
        json!({"name": "viewer", "access_key_id": "VIEWAK",
               "permissions": [{"actions": ["read", "list"], "resources": ["bkt/*"]}]}),
    )
    .await;
    let http = reqwest::Client::new();
    let login_as = |ak: &str, sk: &str| {
        http.post(format!("{base}/_/api/admin/login-as"))
            .json(&json!({"access_key_id": ak, "secret_access_key": sk}))
            .send()
    };

    // Wrong secret: 401, no session.
    assert_eq!(login_as("VIEWAK", "nope").await.unwrap().status(), 401);
    // A non-admin user gets a session, but not the admin routes.
    let r = login_as("VIEWAK", &viewer_sk).await.unwrap();
    assert_eq!(r.status(), 200);
    let viewer = cookie_of(&r);
    let get = |c: String, path: &str| {
        let url = format!("{base}{path}");
        async move { admin_call(Method::GET, url, &c, None).await }
    };
    let (_, who) = get(viewer.clone(), "/_/api/whoami").await;
    assert_eq!(who["user"]["name"], "viewer");
    assert_eq!(who["user"]["is_admin"], false);
    let (s, v) = get(viewer.clone(), "/_/api/admin/users").await;
    assert_eq!((s, v["error"].as_str()), (403, Some("admin_required")));
    let (s, _) = get(viewer.clone(), "/_/api/admin/backup").await;
    assert_eq!(s, 403);
    let (_, v) = get(viewer.clone(), "/_/api/admin/session").await;
    assert_eq!(v["valid"], false);

    // Per-session S3 credentials: preset to the login pair, cleared, refused when invalid,
    // replaced by another valid pair.
    let creds = format!("{base}/_/api/admin/session/s3-credentials");
    let (s, v) = get(viewer.clone(), "/_/api/admin/session/s3-credentials").await;
    assert_eq!(s, 200);
    assert_eq!(v["access_key_id"], "VIEWAK");
    assert_eq!(v["secret_access_key"], viewer_sk.as_str());
    let (s, _) = admin_call(Method::DELETE, creds.clone(), &viewer, None).await;
    assert_eq!(s, 204);
    let (s, _) = get(viewer.clone(), "/_/api/admin/session/s3-credentials").await;
    assert_eq!(s, 404);
    let (s, _) = admin_call(
        Method::PUT,
        creds.clone(),
        &viewer,
        Some(json!({"access_key_id": "OPSAK", "secret_access_key": "wrong"})),
    )
    .await;
    assert_eq!(s, 422);
    let (s, _) = admin_call(
        Method::PUT,
        creds.clone(),
        &viewer,
        Some(json!({"access_key_id": AK, "secret_access_key": SK})),
    )
    .await;
    assert_eq!(s, 200);
    let (_, v) = get(viewer.clone(), "/_/api/admin/session/s3-credentials").await;
    assert_eq!(v["access_key_id"], AK);
    // Without a session: 401.
    let (s, _) = admin_call(Method::GET, creds.clone(), "dgp_session=x", None).await;
    assert_eq!(s, 401);

    // An admin IAM user may use the admin routes.
    let r = login_as("OPSAK", &ops_sk).await.unwrap();
    let ops = cookie_of(&r);
    let (s, _) = get(ops.clone(), "/_/api/admin/users").await;
    assert_eq!(s, 200);
    let (_, who) = get(ops.clone(), "/_/api/whoami").await;
    assert_eq!(who["user"]["is_admin"], true);

    // Rotation: the old pair stops working at once, the new one works; the viewer's
    // session (by user name) survives it.
    assert_eq!(
        get_bytes(&p.client_as("VIEWAK", &viewer_sk), "bkt", "f.txt").await,
        b"hello"
    );
    let (s, v) = admin_call(
        Method::POST,
        format!("{base}/_/api/admin/users/VIEWAK/rotate-keys"),
        &ops,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let new_ak = v["access_key_id"].as_str().unwrap().to_string();
    let new_sk = v["secret_access_key"].as_str().unwrap().to_string();
    assert_ne!(new_ak, "VIEWAK");
    let e = p
        .client_as("VIEWAK", &viewer_sk)
        .get_object()
        .bucket("bkt")
        .key("f.txt")
        .send()
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("AccessDenied"), "{e:?}");
    assert_eq!(
        get_bytes(&p.client_as(&new_ak, &new_sk), "bkt", "f.txt").await,
        b"hello"
    );
    let (_, who) = get(viewer.clone(), "/_/api/whoami").await;
    assert_eq!(who["user"]["access_key_id"], new_ak.as_str());
    // The audit credits the change to the IAM admin who made it, not to "admin".
    let (_, audit) = get(ops.clone(), "/_/api/admin/audit?limit=500").await;
    let entries = audit["entries"].as_array().cloned().unwrap_or_default();
    assert!(
        entries.iter().any(|e| e["action"] == "user_rotate_keys"
            && e["user"] == "ops"
            && e["target"] == "viewer"),
        "{audit}"
    );
    let (s, _) = admin_call(
        Method::POST,
        format!("{base}/_/api/admin/users/NOSUCH/rotate-keys"),
        &ops,
        None,
    )
    .await;
    assert_eq!(s, 404);

    // Membership: a user without rules reads through a group only while a member, and a
    // group rename keeps its members.
    let nobody_sk = create_user(
        &base,
        &boot,
        json!({"name": "nobody", "access_key_id": "NOBODYAK"}),
    )
    .await;
    let (s, _) = admin_call(
        Method::POST,
        format!("{base}/_/api/admin/groups"),
        &boot,
        Some(json!({"name": "readers", "permissions": [{"actions": ["read", "list"], "resources": ["bkt/*"]}]})),
    )
    .await;
    assert_eq!(s, 201);
    let nobody = p.client_as("NOBODYAK", &nobody_sk);
    let reads = || {
        let c = nobody.clone();
        async move {
            c.get_object()
                .bucket("bkt")
                .key("f.txt")
                .send()
                .await
                .is_ok()
        }
    };
    assert!(!reads().await);
    let members = format!("{base}/_/api/admin/groups/readers/members");
    let add_nobody = |url: String| {
        admin_call(
            Method::POST,
            url,
            &boot,
            Some(json!({"user_id": "NOBODYAK"})),
        )
    };
    let (s, v) = add_nobody(members.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["groups"], json!(["readers"]));
    let (s, _) = add_nobody(members).await;
    assert_eq!(s, 409);
    let (s, _) = add_nobody(format!("{base}/_/api/admin/groups/missing/members")).await;
    assert_eq!(s, 404);
    assert!(reads().await);
    let (s, _) = admin_call(
        Method::PUT,
        format!("{base}/_/api/admin/groups/readers"),
        &boot,
        Some(json!({"name": "readers2", "permissions": [{"actions": ["read", "list"], "resources": ["bkt/*"]}]})),
    )
    .await;
    assert_eq!(s, 200);
    assert!(reads().await);
    let (_, users) = get(boot.clone(), "/_/api/admin/users").await;
    let nb = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "nobody")
        .unwrap()
        .clone();
    assert_eq!(nb["groups"], json!(["readers2"]));
    let del = format!("{base}/_/api/admin/groups/readers2/members/NOBODYAK");
    let (s, _) = admin_call(Method::DELETE, del.clone(), &boot, None).await;
    assert_eq!(s, 204);
    assert!(!reads().await);
    let (s, _) = admin_call(Method::DELETE, del, &boot, None).await;
    assert_eq!(s, 404);

    // Deleting the viewer ends its session; demoting ops takes the admin routes away.
    let (s, _) = admin_call(
        Method::DELETE,
        format!("{base}/_/api/admin/users/{new_ak}"),
        &boot,
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (_, who) = get(viewer.clone(), "/_/api/whoami").await;
    assert_eq!(who["user"], Value::Null);
    let (s, _) = admin_call(
        Method::PUT,
        format!("{base}/_/api/admin/users/OPSAK"),
        &boot,
        Some(json!({"name": "ops", "access_key_id": "OPSAK",
                    "permissions": [{"actions": ["read"], "resources": ["bkt/*"]}]})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = get(ops.clone(), "/_/api/admin/users").await;
    assert_eq!(s, 403);
}
