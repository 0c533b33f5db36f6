//! Config-file formats and build stamp through the real binary: a TOML file is still read
//! (same sections as the YAML) with a deprecation warning that `DGP_SILENCE_TOML_DEPRECATION`
//! silences; `DGP_BUILD_TIME` (compile-time) shows in whoami and `deltaglider_build_info`.

mod common;

use common::*;

const TOML: &str = r#"
[storage.buckets.tomlpub]
public = true
"#;

/// Starts a proxy on a TOML file making `tomlpub` public; returns it after checking that an
/// anonymous GET is admitted (the file was applied) and a signed PUT landed first.
async fn start_with_toml(extra: &[(&str, String)]) -> (Proxy, tempfile::TempDir) {
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("deltaglider_proxy.toml");
    std::fs::write(&cfg, TOML).unwrap();
    let mut env = vec![("DGP_CONFIG", cfg.to_str().unwrap().to_string())];
    env.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    let p = start_proxy(None, &env).await;
    let c = p.client();
    c.create_bucket().bucket("tomlpub").send().await.unwrap();
    put_bytes(&c, "tomlpub", "x/readme.txt", b"public bytes").await;
    let r = reqwest::get(format!("{}/tomlpub/x/readme.txt", p.url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the TOML bucket policy is applied");
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"public bytes");
    (p, cfg_dir)
}

#[tokio::test]
async fn toml_config_is_read_with_a_deprecation_warning_that_can_be_silenced() {
    let (p, _d) = start_with_toml(&[]).await;
    assert!(
        p.proc.logs().contains("TOML configuration is deprecated"),
        "{}",
        p.proc.logs()
    );
    let (q, _d2) = start_with_toml(&[("DGP_SILENCE_TOML_DEPRECATION", "true".into())]).await;
    assert!(
        !q.proc.logs().contains("TOML configuration is deprecated"),
        "{}",
        q.proc.logs()
    );
    // Without the file the bucket is private: the anonymous GET above proved the file.
    let r = start_proxy(None, &[]).await;
    let c = r.client();
    c.create_bucket().bucket("tomlpub").send().await.unwrap();
    put_bytes(&c, "tomlpub", "x/readme.txt", b"private").await;
    let g = reqwest::get(format!("{}/tomlpub/x/readme.txt", r.url()))
        .await
        .unwrap();
    assert_eq!(g.status(), 403);
}

#[tokio::test]
async fn build_time_is_reported_by_whoami_metrics_and_the_start_log() {
    // The value the build stamped (the test is compiled by the same cargo invocation).
    let expected = option_env!("DGP_BUILD_TIME").unwrap_or("unknown");
    let p = start_proxy(None, &[]).await;
    let who: serde_json::Value = reqwest::get(format!("{}/_/api/whoami", p.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(who["build_time"], expected, "{who}");
    let m = p.metrics().await;
    let line = m
        .lines()
        .find(|l| l.starts_with("deltaglider_build_info{"))
        .unwrap_or_else(|| panic!("{m}"));
    assert!(
        line.contains(&format!("build_time=\"{expected}\"")),
        "{line}"
    );
    assert!(p.proc.logs().contains("deltaglider-proxy starting"));
}

#[tokio::test]
async fn admin_config_export_section_and_validate() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg.yaml");
    std::fs::write(
        &cfg,
        r#"
access:
  iam_users:
    - name: ci
      access_key_id: CIKEY
      secret_access_key: CI-SUPER-SECRET
      permissions: [{effect: Allow, actions: ["*"], resources: ["*"]}]
storage:
  buckets:
    releases:
      public_prefixes: [builds/public/]
"#,
    )
    .unwrap();
    let hash = bcrypt::hash("pw", 4).unwrap();
    let p = start_proxy(
        None,
        &[
            ("DGP_CONFIG", cfg.to_str().unwrap().into()),
            ("DGP_BOOTSTRAP_PASSWORD_HASH", hash),
            ("DGP_SECURE_COOKIES", "false".into()),
        ],
    )
    .await;
    let base = p.url();
    let http = reqwest::Client::new();
    // Session required.
    let r = http
        .get(format!("{base}/_/api/admin/config/export"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let cookie = admin_login(&base, "pw").await;
    let get = |path: String| {
        let http = http.clone();
        let cookie = cookie.clone();
        let base = base.clone();
        async move {
            http.get(format!("{base}{path}"))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
        }
    };

    // Export: canonical YAML, secrets redacted, defaults (empty/null) left out.
    let r = get("/_/api/admin/config/export".into()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/yaml");
    let y = r.text().await.unwrap();
    assert!(!y.contains("CI-SUPER-SECRET"), "{y}");
    let doc: serde_yaml::Value = serde_yaml::from_str(&y).unwrap();
    assert_eq!(
        doc["storage"]["buckets"]["releases"]["public_prefixes"][0],
        "builds/public/"
    );
    assert_eq!(doc["access"]["iam_users"][0]["access_key_id"], "CIKEY");
    assert_eq!(doc["access"]["iam_users"][0]["secret_access_key"], "");
    assert!(
        doc.get("admission").is_none(),
        "empty sections are left out: {y}"
    );
    assert!(!y.contains("null"), "{y}");
    // One section only; unknown section → 404.
    let y = get("/_/api/admin/config/export?section=storage".into())
        .await
        .text()
        .await
        .unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&y).unwrap();
    assert!(
        doc.get("storage").is_some() && doc.get("access").is_none(),
        "{y}"
    );
    assert_eq!(
        get("/_/api/admin/config/export?section=nope".into())
            .await
            .status(),
        404
    );
    // Section endpoint: JSON and YAML; other names 404.
    let s: serde_json::Value = get("/_/api/admin/config/section/storage".into())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        s["buckets"]["releases"]["public_prefixes"][0],
        "builds/public/"
    );
    let r = get("/_/api/admin/config/section/access?format=yaml".into()).await;
    assert_eq!(r.headers()["content-type"], "application/yaml");
    assert!(!r.text().await.unwrap().contains("CI-SUPER-SECRET"));
    assert_eq!(
        get("/_/api/admin/config/section/secrets".into())
            .await
            .status(),
        404
    );

    // Validate: a dry run with warnings, an invalid document, and nothing applied.
    let validate = |yaml: &str| {
        let http = http.clone();
        let cookie = cookie.clone();
        let yaml = yaml.to_string();
        let base = base.clone();
        async move {
            let r = http
                .post(format!("{base}/_/api/admin/config/validate"))
                .header("cookie", cookie)
                .json(&serde_json::json!({ "yaml": yaml }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    let v = validate(
        "storage:\n  buckets:\n    open:\n      public_prefixes: [\"\"]\n      backend: nowhere\n",
    )
    .await;
    assert_eq!(v["ok"], true, "{v}");
    let w = v["warnings"].to_string();
    assert!(
        w.contains("whole bucket public") && w.contains("unknown backend"),
        "{v}"
    );
    let v =
        validate("storage:\n  buckets:\n    b:\n      public: true\n      public_prefixes: [x/]\n")
            .await;
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["errors"][0].as_str().unwrap().contains("not both"), "{v}");
    let v = validate("storage: [not, a, map]").await;
    assert_eq!(v["ok"], false, "{v}");
    let s: serde_json::Value = get("/_/api/admin/config/section/storage".into())
        .await
        .json()
        .await
        .unwrap();
    assert!(
        s["buckets"].get("open").is_none(),
        "validate applies nothing: {s}"
    );
}

#[tokio::test]
async fn admin_config_section_put_and_apply() {
    use reqwest::Method;
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg.yaml");
    std::fs::write(
        &cfg,
        r#"
access:
  iam_users:
    - name: ci
      access_key_id: CIKEY
      secret_access_key: CI-SUPER-SECRET
      permissions: [{effect: Allow, actions: ["*"], resources: ["*"]}]
advanced:
  cache_size_mb: 2048
  max_delta_ratio: 0.75
"#,
    )
    .unwrap();
    let hash = bcrypt::hash("pw", 4).unwrap();
    let p = start_proxy(
        None,
        &[
            ("DGP_CONFIG", cfg.to_str().unwrap().into()),
            ("DGP_BOOTSTRAP_PASSWORD_HASH", hash),
            ("DGP_SECURE_COOKIES", "false".into()),
        ],
    )
    .await;
    let base = p.url();
    let http = reqwest::Client::new();
    let sec = |n: &str| format!("{base}/_/api/admin/config/section/{n}");
    // Session required for the PUT.
    let r = http
        .put(sec("advanced"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let cookie = admin_login(&base, "pw").await;

    // Merge patch: max_delta_ratio 0 is applied live; cache_size_mb (not in the patch) is kept.
    let (s, a) = admin_call(
        Method::PUT,
        sec("advanced"),
        &cookie,
        Some(json!({"max_delta_ratio": 0.0})),
    )
    .await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["applied"], json!(["advanced.max_delta_ratio"]), "{a}");
    assert_eq!(a["requires_restart"], json!([]), "{a}");
    assert_eq!(a["persisted"], true, "{a}");
    let (_, g) = admin_call(Method::GET, sec("advanced"), &cookie, None).await;
    assert_eq!(g["max_delta_ratio"], 0.0, "{g}");
    assert_eq!(g["cache_size_mb"], 2048, "{g}");
    // Truly live: with ratio 0 a near-identical second version is stored whole, not as a delta.
    let c = p.client();
    c.create_bucket().bucket("live").send().await.unwrap();
    let v1 = bytes(7, 200_000);
    put_bytes(&c, "live", "r/app-1.zip", &v1).await;
    put_bytes(&c, "live", "r/app-2.zip", &mutate(&v1, 8)).await;
    let files = files_under(&p.bucket_dir("live"));
    assert!(
        !files.iter().any(|f| f.ends_with("app-2.zip.delta")),
        "ratio 0 forbids deltas: {files:?}"
    );
    assert_eq!(get_bytes(&c, "live", "r/app-2.zip").await, mutate(&v1, 8));
    // Persisted to the file in use, other keys intact.
    let disk: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    assert_eq!(disk["advanced"]["max_delta_ratio"].as_f64(), Some(0.0));
    assert_eq!(disk["advanced"]["cache_size_mb"].as_u64(), Some(2048));

    // null deletes; a key that is only read at start is reported as needing a restart.
    let (s, a) = admin_call(
        Method::PUT,
        sec("advanced"),
        &cookie,
        Some(json!({"cache_size_mb": null})),
    )
    .await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["applied"], json!([]), "{a}");
    assert_eq!(
        a["requires_restart"],
        json!(["advanced.cache_size_mb"]),
        "{a}"
    );
    let (_, g) = admin_call(Method::GET, sec("advanced"), &cookie, None).await;
    assert!(g["cache_size_mb"].is_null(), "{g}");
    assert_eq!(g["max_delta_ratio"], 0.0, "{g}");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(!text.contains("cache_size_mb"), "{text}");

    // Secrets survive a round trip: PUT back the redacted section (secret shown as "").
    let (_, acc) = admin_call(Method::GET, sec("access"), &cookie, None).await;
    assert_eq!(acc["iam_users"][0]["secret_access_key"], "", "{acc}");
    let (s, a) = admin_call(Method::PUT, sec("access"), &cookie, Some(acc.clone())).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["requires_restart"], json!([]), "unchanged: {a}");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("CI-SUPER-SECRET"), "{text}");
    let (_, acc2) = admin_call(Method::GET, sec("access"), &cookie, None).await;
    assert_eq!(acc, acc2);

    // Unknown section → 404; an invalid patch → 400 and nothing changes.
    let (s, _) = admin_call(Method::PUT, sec("secrets"), &cookie, Some(json!({}))).await;
    assert_eq!(s, 404);
    let (s, a) = admin_call(
        Method::PUT,
        sec("advanced"),
        &cookie,
        Some(json!({"max_delta_ratio": 3.0})),
    )
    .await;
    assert_eq!(s, 400, "{a}");
    assert_eq!(a["ok"], false, "{a}");
    let (_, g) = admin_call(Method::GET, sec("advanced"), &cookie, None).await;
    assert_eq!(g["max_delta_ratio"], 0.0, "{g}");

    // Apply: invalid YAML and a failing validation are 400 {ok:false}, nothing applied.
    let apply = format!("{base}/_/api/admin/config/apply");
    let (s, a) = admin_call(
        Method::POST,
        apply.clone(),
        &cookie,
        Some(json!({"yaml": "storage: [not, a, map]"})),
    )
    .await;
    assert_eq!((s, &a["ok"]), (400, &json!(false)), "{a}");
    let (s, a) = admin_call(
        Method::POST,
        apply.clone(),
        &cookie,
        Some(json!({"yaml": "storage:\n  buckets:\n    live:\n      public: true\n      public_prefixes: [x/]\n"})),
    )
    .await;
    assert_eq!(s, 400, "{a}");
    assert!(a["errors"][0].as_str().unwrap().contains("not both"), "{a}");
    let anon = format!("{base}/live/r/app-1.zip");
    assert_eq!(reqwest::get(&anon).await.unwrap().status(), 403);
    // A valid document: the bucket policy applies live; the redacted user secret is kept.
    let yaml = "access:\n  iam_users:\n    - name: ci\n      access_key_id: CIKEY\n      secret_access_key: ''\n      permissions: [{effect: Allow, actions: ['*'], resources: ['*']}]\nstorage:\n  buckets:\n    live:\n      public_prefixes: [r/]\nadvanced:\n  max_delta_ratio: 0.5\n";
    let (s, a) = admin_call(Method::POST, apply, &cookie, Some(json!({"yaml": yaml}))).await;
    assert_eq!(s, 200, "{a}");
    let applied = a["applied"].to_string();
    assert!(
        applied.contains("storage.buckets") && applied.contains("advanced.max_delta_ratio"),
        "{a}"
    );
    assert_eq!(a["persisted"], true, "{a}");
    assert_eq!(reqwest::get(&anon).await.unwrap().status(), 200);
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        text.contains("CI-SUPER-SECRET") && text.contains("r/"),
        "{text}"
    );
}

#[tokio::test]
async fn admin_config_put_without_a_file_is_live_only() {
    let hash = bcrypt::hash("pw", 4).unwrap();
    let p = start_proxy(
        None,
        &[
            ("DGP_BOOTSTRAP_PASSWORD_HASH", hash),
            ("DGP_SECURE_COOKIES", "false".into()),
        ],
    )
    .await;
    let base = p.url();
    let cookie = admin_login(&base, "pw").await;
    let url = format!("{base}/_/api/admin/config/section/advanced");
    let (s, a) = admin_call(
        reqwest::Method::PUT,
        url.clone(),
        &cookie,
        Some(serde_json::json!({"max_object_size": 1234})),
    )
    .await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["persisted"], false, "{a}");
    assert_eq!(a["applied"][0], "advanced.max_object_size", "{a}");
    assert!(a["warnings"].to_string().contains("not persisted"), "{a}");
    let (_, g) = admin_call(reqwest::Method::GET, url, &cookie, None).await;
    assert_eq!(g["max_object_size"], 1234, "{g}");
}

/// The canonical `storage.backend: {type: filesystem, path}` is the data directory when
/// `DGP_DATA_DIR` is unset, and `advanced.bootstrap_password_hash` is the admin password's
/// hash when `DGP_BOOTSTRAP_PASSWORD_HASH` is (`advanced.blocking_threads` is accepted).
#[tokio::test]
async fn canonical_backend_path_and_file_bootstrap_hash_are_used() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let hash = bcrypt::hash("pw-from-file", 4).unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  backend: {{type: filesystem, path: {}}}\nadvanced:\n  bootstrap_password_hash: \"{hash}\"\n  blocking_threads: 8\n",
            store.display()
        ),
    )
    .unwrap();
    let p = start_proxy_in(
        dir.path(),
        None,
        &[
            ("DGP_CONFIG", cfg.to_str().unwrap().to_string()),
            ("DGP_DATA_DIR", String::new()),
            ("DGP_SECURE_COOKIES", "false".into()),
        ],
        None,
    )
    .await;
    let c = p.client();
    c.create_bucket().bucket("canon").send().await.unwrap();
    put_bytes(&c, "canon", "docs/readme.txt", b"canonical").await;
    assert!(
        files_under(&store)
            .iter()
            .any(|f| f.ends_with("readme.txt")),
        "{:?}",
        files_under(&store)
    );
    admin_login(&p.url(), "pw-from-file").await;
    // The hash is a secret: exports leave it out.
    let cookie = admin_login(&p.url(), "pw-from-file").await;
    let (_, export) = admin_call(
        reqwest::Method::GET,
        format!("{}/_/api/admin/config/section/advanced", p.url()),
        &cookie,
        None,
    )
    .await;
    assert!(!export.to_string().contains(&hash), "{export}");
}
