//! Backup and IAM export end to end against the real binary: the backup zip's parts and
//! manifest checksums, import on a second instance (users sign there with aws-sdk-s3),
//! skip-not-overwrite on re-import, a tampered part refused before any change, the pre-0.8.4
//! JSON import, the bootstrap password restored from `secrets.json` (with the hash from the
//! hash file and pinned by env; a failed commit leaves nothing imported), the declarative
//! IAM export (loaded by a third instance as its YAML), and the `iam_declarative` guard on
//! every IAM mutation route.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

async fn import(base: &str, cookie: &str, body: Vec<u8>) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/_/api/admin/backup"))
        .header("cookie", cookie)
        .header("content-type", "application/zip")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn user_names(base: &str, cookie: &str) -> Vec<String> {
    let v: Value = reqwest::Client::new()
        .get(format!("{base}/_/api/admin/users"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut n: Vec<String> = v["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

fn unzip(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut za = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut out = BTreeMap::new();
    for i in 0..za.len() {
        let mut f = za.by_index(i).unwrap();
        let mut b = Vec::new();
        f.read_to_end(&mut b).unwrap();
        out.insert(f.name().unwrap().to_string(), b);
    }
    out
}

fn rezip(parts: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (n, b) in parts {
        zw.start_file(n.as_str(), opts).unwrap();
        zw.write_all(b).unwrap();
    }
    zw.finish().unwrap().into_inner()
}

#[tokio::test]
async fn backup_exports_and_imports_between_instances() {
    let a = start_proxy(None, &bootstrap_env("pw-a")).await;
    let ca = admin_login(&a.url(), "pw-a").await;
    let (s, _) = admin_call(
        Method::POST,
        format!("{}/_/api/admin/groups", a.url()),
        &ca,
        Some(json!({"name": "readers", "permissions": [{"actions": ["read", "list"], "resources": ["bkt/*"]}]})),
    )
    .await;
    assert_eq!(s, 201);
    let ursula = json!({"name": "ursula", "access_key_id": "URSAK", "groups": ["readers"]});
    let ursula_sk = create_user(&a.url(), &ca, ursula).await;
    let victor = json!({"name": "victor", "access_key_id": "VICAK", "secret_access_key": "victor-secret-1234",
                        "permissions": [{"actions": ["*"], "resources": ["*"]}]});
    create_user(&a.url(), &ca, victor).await;

    // Export: four parts, checksums in the manifest, secrets only in secrets.json.
    let r = admin_get(format!("{}/_/api/admin/backup", a.url()), &ca).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/zip");
    let zip_bytes = r.bytes().await.unwrap().to_vec();
    let parts = unzip(&zip_bytes);
    let names: Vec<&str> = parts.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        vec!["config.yaml", "iam.json", "manifest.json", "secrets.json"]
    );
    let manifest: Value = serde_json::from_slice(&parts["manifest.json"]).unwrap();
    assert!(manifest["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(manifest["version"], 1);
    for n in ["config.yaml", "iam.json", "secrets.json"] {
        assert_eq!(
            manifest["files"][n].as_str().unwrap(),
            hex::encode(Sha256::digest(&parts[n])),
            "{n}"
        );
    }
    let iam: Value = serde_json::from_slice(&parts["iam.json"]).unwrap();
    assert!(!String::from_utf8_lossy(&parts["iam.json"]).contains(&ursula_sk));
    assert_eq!(
        iam["memberships"],
        json!([{"user": "ursula", "group": "readers"}])
    );
    let secrets: Value = serde_json::from_slice(&parts["secrets.json"]).unwrap();
    assert_eq!(secrets["user_secrets"]["URSAK"], ursula_sk.as_str());
    assert!(secrets["bootstrap_password_hash"]
        .as_str()
        .unwrap()
        .starts_with("$2"));

    // A tampered part is refused before anything changes.
    let b_env = bootstrap_env("pw-b");
    let b = start_proxy(None, &b_env).await;
    let cb = admin_login(&b.url(), "pw-b").await;
    let mut bad = parts.clone();
    let mut bad_iam = iam.clone();
    bad_iam["users"][0]["permissions"] = json!([{"actions": ["*"], "resources": ["*"]}]);
    bad.insert("iam.json".into(), serde_json::to_vec(&bad_iam).unwrap());
    let (s, v) = import(&b.url(), &cb, rezip(&bad)).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("SHA-256"), "{v}");
    let mut missing = parts.clone();
    missing.remove("secrets.json");
    let (s, _) = import(&b.url(), &cb, rezip(&missing)).await;
    assert_eq!(s, 400);
    let (s, _) = import(&b.url(), &cb, b"PK\x03\x04garbage".to_vec()).await;
    assert_eq!(s, 400);
    assert!(user_names(&b.url(), &cb).await.is_empty());

    // The real zip: everything created, and the users sign on B. B's hash is pinned by
    // DGP_BOOTSTRAP_PASSWORD_HASH: A's hash is adopted anyway (as PUT /password does) and the
    // answer says to update the variable.
    let a_hash = secrets["bootstrap_password_hash"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = import(&b.url(), &cb, zip_bytes.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["warning"]
            .as_str()
            .unwrap()
            .contains("DGP_BOOTSTRAP_PASSWORD_HASH"),
        "{v}"
    );
    assert_eq!(
        v,
        json!({"users_created": 2, "users_skipped": 0, "groups_created": 1, "groups_skipped": 0,
               "memberships_created": 1, "external_identities_created": 0,
               "external_identities_skipped": 0, "bootstrap_password_restored": true,
               "warning": v["warning"], "bootstrap_password_hash": a_hash})
    );
    assert_eq!(admin_login_response(&b.url(), "pw-b").await.status(), 401);
    assert_eq!(admin_login_response(&b.url(), "pw-a").await.status(), 200);
    b.client()
        .create_bucket()
        .bucket("bkt")
        .send()
        .await
        .unwrap();
    put_bytes(&b.client(), "bkt", "f.txt", b"restored").await;
    assert_eq!(
        get_bytes(&b.client_as("URSAK", &ursula_sk), "bkt", "f.txt").await,
        b"restored"
    );
    assert!(b
        .client_as("URSAK", &ursula_sk)
        .put_object()
        .bucket("bkt")
        .key("g.txt")
        .body(b"x".to_vec().into())
        .send()
        .await
        .is_err());
    assert_eq!(
        get_bytes(&b.client_as("VICAK", "victor-secret-1234"), "bkt", "f.txt").await,
        b"restored"
    );

    // Re-import: existing names are skipped, not overwritten.
    let (s, _) = admin_call(
        Method::POST,
        format!("{}/_/api/admin/users/VICAK/rotate-keys", b.url()),
        &cb,
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = import(&b.url(), &cb, zip_bytes).await;
    assert_eq!(s, 200);
    assert_eq!(v["bootstrap_password_restored"], false, "{v}");
    assert!(v.get("warning").is_none(), "{v}");
    assert_eq!(v["users_created"], 0);
    assert_eq!(v["users_skipped"], 2);
    assert_eq!(v["groups_skipped"], 1);
    assert!(b
        .client_as("VICAK", "victor-secret-1234")
        .list_buckets()
        .send()
        .await
        .is_err());

    // The pre-0.8.4 JSON import.
    let legacy = json!({
        "users": [{"name": "wendy", "access_key_id": "WENAK", "secret_access_key": "wendy-secret-5678",
                   "permissions": [{"actions": ["read", "list"], "resources": ["bkt/*"]}]},
                  {"name": "ursula", "access_key_id": "OTHERAK", "secret_access_key": "x"}],
        "groups": [{"name": "writers", "permissions": []}, {"name": "readers"}]
    });
    let (s, v) = import(&b.url(), &cb, serde_json::to_vec(&legacy).unwrap()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            &v["users_created"],
            &v["users_skipped"],
            &v["groups_created"],
            &v["groups_skipped"]
        ),
        (&json!(1), &json!(1), &json!(1), &json!(1))
    );
    assert_eq!(v["bootstrap_password_restored"], false, "{v}");
    assert_eq!(
        get_bytes(&b.client_as("WENAK", "wendy-secret-5678"), "bkt", "f.txt").await,
        b"restored"
    );
    let (s, _) = import(&b.url(), &cb, b"{not json".to_vec()).await;
    assert_eq!(s, 400);

    // Imported users survive a restart of B (they are in its store, sealed under A's hash)
    // once the pinned variable holds the adopted hash.
    let data = b.data.clone();
    let mut b = b;
    let keep = b.keep.take();
    drop(b);
    let b2_env = vec![
        ("DGP_BOOTSTRAP_PASSWORD_HASH", a_hash),
        ("DGP_SECURE_COOKIES", "false".to_string()),
    ];
    let b2 = start_proxy_in(&data, None, &b2_env, keep).await;
    assert_eq!(admin_login_response(&b2.url(), "pw-a").await.status(), 200);
    assert_eq!(
        get_bytes(&b2.client_as("URSAK", &ursula_sk), "bkt", "f.txt").await,
        b"restored"
    );

    // Declarative IAM export: an `access:` fragment with blanked secrets, which a new
    // instance loads as its YAML once the secrets are filled in.
    let r = reqwest::Client::new()
        .get(format!(
            "{}/_/api/admin/config/declarative-iam-export",
            a.url()
        ))
        .header("cookie", &ca)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(doc["access"]["iam_mode"], "declarative");
    let users = doc["access"]["iam_users"].as_sequence_mut().unwrap();
    assert_eq!(users.len(), 2, "{text}");
    for u in users.iter_mut() {
        assert_eq!(u["secret_access_key"], "", "{text}");
        if u["name"] == "ursula" {
            u["secret_access_key"] = ursula_sk.clone().into();
        }
    }
    assert_eq!(doc["access"]["iam_groups"][0]["name"], "readers");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    let yaml = serde_yaml::to_string(&doc).unwrap();
    std::fs::write(&cfg, &yaml).unwrap();
    let c = start_proxy(None, &[("DGP_CONFIG", cfg.to_str().unwrap().to_string())]).await;
    c.client()
        .create_bucket()
        .bucket("bkt")
        .send()
        .await
        .unwrap();
    put_bytes(&c.client(), "bkt", "f.txt", b"declared").await;
    let got = c
        .client_as("URSAK", &ursula_sk)
        .get_object()
        .bucket("bkt")
        .key("f.txt")
        .send()
        .await;
    assert!(got.is_ok(), "{got:?}\n{yaml}\n{}", c.proc.logs());
}

/// The zip with its `secrets.json` changed by `f` and the manifest checksum updated.
fn with_secrets(parts: &BTreeMap<String, Vec<u8>>, f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut parts = parts.clone();
    let mut secrets: Value = serde_json::from_slice(&parts["secrets.json"]).unwrap();
    f(&mut secrets);
    let body = serde_json::to_vec_pretty(&secrets).unwrap();
    let mut manifest: Value = serde_json::from_slice(&parts["manifest.json"]).unwrap();
    manifest["files"]["secrets.json"] = json!(hex::encode(Sha256::digest(&body)));
    parts.insert("secrets.json".into(), body);
    parts.insert(
        "manifest.json".into(),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    );
    rezip(&parts)
}

/// The troubleshooting guide's restore: a fresh instance B (its own password in the hash
/// file) imports A's zip and takes A's bootstrap password with its users, across a restart.
#[tokio::test]
async fn import_restores_the_bootstrap_password() {
    let a = start_proxy(None, &bootstrap_env("pw-a")).await;
    let ca = admin_login(&a.url(), "pw-a").await;
    let yara = json!({"name": "yara", "access_key_id": "YARAK", "secret_access_key": "yara-secret-1234",
                      "permissions": [{"actions": ["*"], "resources": ["*"]}]});
    create_user(&a.url(), &ca, yara).await;
    let zip_bytes = admin_get(format!("{}/_/api/admin/backup", a.url()), &ca)
        .await
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let parts = unzip(&zip_bytes);
    let secrets: Value = serde_json::from_slice(&parts["secrets.json"]).unwrap();
    let a_hash = secrets["bootstrap_password_hash"]
        .as_str()
        .unwrap()
        .to_string();

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let hash_file = data.join(".deltaglider_bootstrap_hash");
    let b_hash = bcrypt::hash("pw-b", 4).unwrap();
    std::fs::write(&hash_file, &b_hash).unwrap();
    let env = vec![("DGP_SECURE_COOKIES", "false".to_string())];
    let b = start_proxy_in(&data, None, &env, Some(dir)).await;
    let cb = admin_login(&b.url(), "pw-b").await;
    let other = admin_login(&b.url(), "pw-b").await;

    // A hash that is not bcrypt is refused with the other validation, before any change.
    let bad = with_secrets(&parts, |s| {
        s["bootstrap_password_hash"] = json!("not-a-hash")
    });
    let (s, v) = import(&b.url(), &cb, bad).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("bootstrap_password_hash"),
        "{v}"
    );
    assert!(user_names(&b.url(), &cb).await.is_empty());
    assert_eq!(admin_login_response(&b.url(), "pw-b").await.status(), 200);

    // The hash file cannot be written (a directory stands in its place): the commit point
    // fails, so nothing of the import is applied and the old password and store stay.
    std::fs::remove_file(&hash_file).unwrap();
    std::fs::create_dir(&hash_file).unwrap();
    std::fs::write(hash_file.join("blocker"), b"x").unwrap();
    let (s, v) = import(&b.url(), &cb, zip_bytes.clone()).await;
    assert_eq!((s, &v), (500, &json!({"error": "persist_failed"})));
    assert!(user_names(&b.url(), &cb).await.is_empty());
    assert_eq!(admin_login_response(&b.url(), "pw-a").await.status(), 401);
    assert!(
        !files_under(&data).iter().any(|f| f.contains(".rekey")),
        "{:?}",
        files_under(&data)
    );
    assert!(b
        .client_as("YARAK", "yara-secret-1234")
        .list_buckets()
        .send()
        .await
        .is_err());
    std::fs::remove_dir_all(&hash_file).unwrap();
    std::fs::write(&hash_file, &b_hash).unwrap();

    // The import adopts A's hash: A's password logs in, B's no longer; the caller's session
    // stays, the other ends (as after PUT /password); the hash file holds A's hash.
    let (s, v) = import(&b.url(), &cb, zip_bytes.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"users_created": 1, "users_skipped": 0, "groups_created": 0, "groups_skipped": 0,
               "memberships_created": 0, "external_identities_created": 0,
               "external_identities_skipped": 0, "bootstrap_password_restored": true})
    );
    assert_eq!(admin_login_response(&b.url(), "pw-a").await.status(), 200);
    assert_eq!(admin_login_response(&b.url(), "pw-b").await.status(), 401);
    assert_eq!(user_names(&b.url(), &cb).await, vec!["yara".to_string()]);
    let r = reqwest::Client::new()
        .get(format!("{}/_/api/admin/users", b.url()))
        .header("cookie", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(std::fs::read_to_string(&hash_file).unwrap(), a_hash);
    let (_, audit) = admin_call(
        Method::GET,
        format!("{}/_/api/admin/audit", b.url()),
        &cb,
        None,
    )
    .await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.to_string().contains("admin_password_restore")
                && e.to_string().contains("$bootstrap")),
        "{audit}"
    );
    b.client()
        .create_bucket()
        .bucket("bkt")
        .send()
        .await
        .unwrap();
    put_bytes(&b.client(), "bkt", "f.txt", b"restored").await;
    assert_eq!(
        get_bytes(&b.client_as("YARAK", "yara-secret-1234"), "bkt", "f.txt").await,
        b"restored"
    );

    // After a restart: still A's password (from the hash file), the store opens under it
    // and the imported user still signs.
    let mut b = b;
    let keep = b.keep.take();
    drop(b);
    let b2 = start_proxy_in(&data, None, &env, keep).await;
    assert_eq!(admin_login_response(&b2.url(), "pw-b").await.status(), 401);
    let c2 = admin_login(&b2.url(), "pw-a").await;
    assert_eq!(
        get_bytes(&b2.client_as("YARAK", "yara-secret-1234"), "bkt", "f.txt").await,
        b"restored"
    );
    assert!(!b2.proc.logs().contains("invalid passphrase"));

    // The same zip again: its hash is the running one, nothing to restore.
    let (s, v) = import(&b2.url(), &c2, zip_bytes).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["bootstrap_password_restored"], false, "{v}");
    assert_eq!(v["users_skipped"], 1, "{v}");
    assert_eq!(admin_login_response(&b2.url(), "pw-a").await.status(), 200);
}

#[tokio::test]
async fn declarative_mode_refuses_every_iam_mutation() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        r#"
access:
  iam_mode: declarative
  iam_users:
    - name: alice
      access_key_id: ALICEAK
      secret_access_key: ALICESECRET
      groups: [readers]
      permissions:
        - actions: ["*"]
          resources: ["*"]
  iam_groups:
    - name: readers
      permissions:
        - actions: [read]
          resources: ["bkt/*"]
"#,
    )
    .unwrap();
    let mut env = bootstrap_env("pw-d");
    env.push(("DGP_CONFIG", cfg.to_str().unwrap().to_string()));
    let p = start_proxy(None, &env).await;
    let base = p.url();
    let c = admin_login(&base, "pw-d").await;
    let http = reqwest::Client::new();
    let zip = http
        .get(format!("{base}/_/api/admin/backup"))
        .header("cookie", &c)
        .send()
        .await
        .unwrap();
    assert_eq!(zip.status(), 200);
    let zip = zip.bytes().await.unwrap().to_vec();
    let user = json!({"name": "x", "access_key_id": "XAK"});
    let group = json!({"name": "g"});
    let member = json!({"user_id": "ALICEAK"});
    let cases: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::POST, "/_/api/admin/users", Some(user.clone())),
        (Method::PUT, "/_/api/admin/users/ALICEAK", Some(user)),
        (Method::DELETE, "/_/api/admin/users/ALICEAK", None),
        (Method::POST, "/_/api/admin/users/ALICEAK/rotate-keys", None),
        (Method::POST, "/_/api/admin/groups", Some(group.clone())),
        (Method::PUT, "/_/api/admin/groups/readers", Some(group)),
        (Method::DELETE, "/_/api/admin/groups/readers", None),
        (
            Method::POST,
            "/_/api/admin/groups/readers/members",
            Some(member),
        ),
        (
            Method::DELETE,
            "/_/api/admin/groups/readers/members/ALICEAK",
            None,
        ),
    ];
    for (m, path, body) in cases {
        let (s, v) = admin_call(m.clone(), format!("{base}{path}"), &c, body).await;
        assert_eq!(s, 403, "{m} {path}");
        assert_eq!(v, json!({"error": "iam_declarative"}), "{m} {path}");
    }
    let (s, v) = import(&base, &c, zip).await;
    assert_eq!((s, v), (403, json!({"error": "iam_declarative"})));
    // Nothing changed: alice still signs with her key.
    p.client()
        .create_bucket()
        .bucket("bkt")
        .send()
        .await
        .unwrap();
    assert!(p
        .client_as("ALICEAK", "ALICESECRET")
        .list_objects_v2()
        .bucket("bkt")
        .send()
        .await
        .is_ok());
}
