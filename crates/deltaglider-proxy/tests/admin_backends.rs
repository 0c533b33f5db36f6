//! Named backends over the admin API, against the real binary and a real upstream (s3s-fs):
//! list without secrets, the S3 check (`test-s3`), create with validation and a real
//! credentials call, persisted to the config file and usable at once (a bucket routed to it
//! by a section PUT stores upstream), delete refused for the default and in-use backends,
//! and the singleton refusal.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

fn names(list: &Value) -> Vec<String> {
    list["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn named_backends_create_route_delete_and_persist() {
    let Some(up) = S3sFs::start("admin_backends").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let main_dir = d.join("main");
    let cfg = d.join("cfg.yaml");
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  default_backend: main\n  backends:\n    - name: main\n      type: filesystem\n      path: {}\n",
            main_dir.display()
        ),
    )
    .unwrap();
    let hash = bcrypt::hash("pw", 4).unwrap();
    let env = [
        ("DGP_CONFIG", cfg.to_str().unwrap().to_string()),
        ("DGP_BOOTSTRAP_PASSWORD_HASH", hash),
        ("DGP_SECURE_COOKIES", "false".into()),
    ];
    let mut p = start_proxy_in(d, None, &env, None).await;
    let http = reqwest::Client::new();
    let base = p.url();
    let api = |path: &str| format!("{base}/_/api/admin/{path}");

    // Admin only.
    let r = http.get(api("backends")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let cookie = admin_login(&base, "pw").await;
    let (s, list) = admin_call(Method::GET, api("backends"), &cookie, None).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(names(&list), vec!["main"]);
    assert_eq!(list["default_backend"], "main");
    assert_eq!(list["backends"][0]["is_default"], true);

    // test-s3: a real call each time.
    let good = json!({"endpoint": up.url(), "access_key_id": UP_AK, "secret_access_key": UP_SK});
    let (s, v) = admin_call(Method::POST, api("test-s3"), &cookie, Some(good.clone())).await;
    assert_eq!((s, &v), (200, &json!({"ok": true})));
    let mut bad = good.clone();
    bad["secret_access_key"] = json!("wrong-secret");
    let (s, v) = admin_call(Method::POST, api("test-s3"), &cookie, Some(bad)).await;
    assert_eq!(s, 200);
    assert_eq!(v["ok"], false, "{v}");
    assert!(!v["error"].as_str().unwrap().is_empty(), "{v}");
    let dead = json!({"endpoint": format!("http://127.0.0.1:{}", scai_testkit::free_port()),
        "access_key_id": UP_AK, "secret_access_key": UP_SK});
    let (s, v) = admin_call(Method::POST, api("test-s3"), &cookie, Some(dead)).await;
    assert_eq!((s, v["ok"].clone()), (200, json!(false)), "{v}");
    let (s, v) = admin_call(
        Method::POST,
        api("test-s3"),
        &cookie,
        Some(json!({"endpoint": "ftp://x", "access_key_id": "a", "secret_access_key": "b"})),
    )
    .await;
    assert_eq!((s, v["ok"].clone()), (400, json!(false)), "{v}");

    // Create: validation before anything changes.
    let s3_spec = |name: &str, secret: &str| {
        json!({"name": name, "type": "s3", "endpoint": up.url(), "access_key_id": UP_AK,
            "secret_access_key": secret, "encryption": {"mode": "sse-s3"}})
    };
    for (body, want) in [
        (s3_spec("bad name!", UP_SK), "invalid backend name"),
        (
            json!({"name": "x", "type": "ftp"}),
            "type must be s3 or filesystem",
        ),
        (
            json!({"name": "rel", "type": "filesystem", "path": "relative/dir"}),
            "absolute path",
        ),
        (
            json!({"name": "fs-kms", "type": "filesystem", "path": d.join("k").to_str().unwrap(),
                "encryption": {"mode": "sse-kms"}}),
            "works only on S3 backends",
        ),
        (
            json!({"name": "nosecret", "type": "s3", "endpoint": up.url(), "access_key_id": UP_AK}),
            "secret_access_key",
        ),
        (
            s3_spec("wrong-creds", "not-the-secret"),
            "S3 credentials check failed",
        ),
    ] {
        let (s, v) = admin_call(Method::POST, api("backends"), &cookie, Some(body.clone())).await;
        assert_eq!(s, 400, "{body} -> {v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{body} -> {v}");
    }
    let (s, v) = admin_call(
        Method::POST,
        api("backends"),
        &cookie,
        Some(json!({"name": "main", "type": "filesystem", "path": d.join("m2").to_str().unwrap()})),
    )
    .await;
    assert_eq!(s, 409, "{v}");

    // A valid S3 backend: created, persisted (with its secret) and never shown with it.
    let (s, v) = admin_call(
        Method::POST,
        api("backends"),
        &cookie,
        Some(s3_spec("up-s3", UP_SK)),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["persisted"], true, "{v}");
    assert_eq!(v["requires_restart"], false, "{v}");
    let file = std::fs::read_to_string(&cfg).unwrap();
    assert!(file.contains("up-s3") && file.contains(UP_SK), "{file}");
    let (_, list) = admin_call(Method::GET, api("backends"), &cookie, None).await;
    assert_eq!(names(&list), vec!["main", "up-s3"]);
    assert!(!list.to_string().contains(UP_SK), "secret leaked: {list}");
    let up_s3 = &list["backends"][1];
    assert_eq!(up_s3["access_key_id"], UP_AK);
    assert_eq!(up_s3["encryption"]["mode"], "sse-s3");
    assert_eq!(up_s3["is_default"], false);
    // The same name again, or one that maps to the same DGP_BACKEND_<NAME>_* env vars.
    for dup in ["up-s3", "UP.S3"] {
        let (s, v) = admin_call(
            Method::POST,
            api("backends"),
            &cookie,
            Some(s3_spec(dup, UP_SK)),
        )
        .await;
        assert_eq!(s, 409, "{dup}: {v}");
    }

    // Usable at once: route a bucket to it with a section PUT, no restart.
    let (s, v) = admin_call(
        Method::PUT,
        api("config/section/storage"),
        &cookie,
        Some(json!({"buckets": {"remote": {"backend": "up-s3"}}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["requires_restart"].as_array().unwrap().is_empty(), "{v}");
    let c = p.client();
    c.create_bucket().bucket("remote").send().await.unwrap();
    put_bytes(&c, "remote", "k/obj.bin", b"stored upstream").await;
    let h = up
        .client()
        .head_object()
        .bucket("remote")
        .key("k/obj.bin")
        .send()
        .await
        .expect("the object is on the new backend's upstream");
    assert_eq!(
        h.metadata()
            .unwrap()
            .get("dg-encrypted-native")
            .map(String::as_str),
        Some("sse-s3")
    );
    assert!(!main_dir.join("deltaspaces/remote").exists());
    assert_eq!(
        get_bytes(&c, "remote", "k/obj.bin").await,
        b"stored upstream"
    );
    let (_, list) = admin_call(Method::GET, api("backends"), &cookie, None).await;
    assert_eq!(list["backends"][1]["buckets"], json!(["remote"]));

    // Delete: refused for the default and for a backend in use; 404 for an unknown name.
    let (s, v) = admin_call(Method::DELETE, api("backends/main"), &cookie, None).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("default"), "{v}");
    let (s, v) = admin_call(Method::DELETE, api("backends/up-s3"), &cookie, None).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("remote"), "{v}");
    let (s, _) = admin_call(Method::DELETE, api("backends/nope"), &cookie, None).await;
    assert_eq!(s, 404);

    // A filesystem backend created now survives a restart (it was persisted).
    let archive = d.join("archive");
    let (s, v) = admin_call(
        Method::POST,
        api("backends"),
        &cookie,
        Some(json!({"name": "archive", "type": "filesystem", "path": archive.to_str().unwrap()})),
    )
    .await;
    assert_eq!(s, 201, "{v}");

    // Re-route the bucket, then the delete goes through and is persisted.
    let (s, v) = admin_call(
        Method::PUT,
        api("config/section/storage"),
        &cookie,
        Some(json!({"buckets": {"remote": null}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = admin_call(Method::DELETE, api("backends/up-s3"), &cookie, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["persisted"], true);
    assert!(!std::fs::read_to_string(&cfg).unwrap().contains("up-s3"));

    p.proc.terminate(std::time::Duration::from_secs(10));
    drop(p);
    let p = start_proxy_in(d, None, &env, None).await;
    let base = p.url();
    let cookie = admin_login(&base, "pw").await;
    let (_, list) = admin_call(
        Method::GET,
        format!("{base}/_/api/admin/backends"),
        &cookie,
        None,
    )
    .await;
    assert_eq!(names(&list), vec!["main", "archive"]);
    // And the restarted proxy can route to it.
    let (s, v) = admin_call(
        Method::PUT,
        format!("{base}/_/api/admin/config/section/storage"),
        &cookie,
        Some(json!({"buckets": {"cold": {"backend": "archive"}}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let c = p.client();
    c.create_bucket().bucket("cold").send().await.unwrap();
    put_bytes(&c, "cold", "a.txt", b"archived").await;
    assert_eq!(
        std::fs::read(archive.join("deltaspaces/cold/a.txt")).unwrap(),
        b"archived"
    );
}

#[tokio::test]
async fn singleton_backend_refuses_named_additions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = d.join("cfg.yaml");
    std::fs::write(&cfg, "advanced:\n  max_delta_ratio: 0.5\n").unwrap();
    let hash = bcrypt::hash("pw", 4).unwrap();
    let p = start_proxy_in(
        d,
        None,
        &[
            ("DGP_CONFIG", cfg.to_str().unwrap().to_string()),
            ("DGP_BOOTSTRAP_PASSWORD_HASH", hash),
            ("DGP_SECURE_COOKIES", "false".into()),
        ],
        None,
    )
    .await;
    let http = reqwest::Client::new();
    let base = p.url();
    let cookie = admin_login(&base, "pw").await;
    let (s, list) = admin_call(
        Method::GET,
        format!("{base}/_/api/admin/backends"),
        &cookie,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(names(&list), vec!["default"]);
    assert_eq!(list["backends"][0]["singleton"], true);
    assert_eq!(list["backends"][0]["type"], "filesystem");
    let (s, v) = admin_call(
        Method::POST,
        format!("{base}/_/api/admin/backends"),
        &cookie,
        Some(json!({"name": "extra", "type": "filesystem", "path": d.join("x").to_str().unwrap()})),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("singleton"), "{v}");
    assert!(!std::fs::read_to_string(&cfg).unwrap().contains("extra"));
    let (s, _) = admin_call(
        Method::DELETE,
        format!("{base}/_/api/admin/backends/default"),
        &cookie,
        None,
    )
    .await;
    assert_eq!(s, 409);
    // Malformed JSON is a 400 with a JSON error, not a bare rejection.
    let r = http
        .post(format!("{base}/_/api/admin/backends"))
        .header("cookie", &cookie)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].is_string(), "{v}");
}
