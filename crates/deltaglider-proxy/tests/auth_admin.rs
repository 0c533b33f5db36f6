//! Authentication and authorization end to end: SigV4 failures (generic AccessDenied for
//! unknown keys, bad signature, clock skew), presigned URLs, IAM users/groups with Deny
//! winning and exact prefixes, disabled users, public prefixes with trailing-slash
//! semantics, per-bucket compression/alias, multipart cap, then the `/_/` surface: metrics
//! names, health, admin login, audit ring, config section, declarative-IAM guard.

mod common;

use std::time::{Duration, SystemTime};

use aws_sdk_s3::presigning::PresigningConfig;
use common::*;

const YAML: &str = r#"
access:
  iam_mode: declarative
  iam_users:
    - name: alice
      access_key_id: ALICEAK
      secret_access_key: ALICESECRET
      groups: [readers]
      permissions:
        - effect: Allow
          actions: [read, write, list]
          resources: ["team/alice/*"]
        - effect: Deny
          actions: [read]
          resources: ["team/alice/secret/*"]
    - name: bob
      access_key_id: BOBAK
      secret_access_key: BOBSECRET
      enabled: false
      permissions:
        - actions: ["*"]
          resources: ["*"]
  iam_groups:
    - name: readers
      permissions:
        - effect: Allow
          actions: [read, list]
          resources: ["team/shared/*"]
storage:
  buckets:
    releases:
      public_prefixes: ["builds/public/"]
    nocomp:
      compression: false
    virt:
      alias: real-bucket-name
"#;

#[tokio::test]
async fn auth_iam_public_prefixes_and_admin_surface() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), YAML).unwrap();
    let hash = bcrypt::hash("s3cret-admin", 4).unwrap();
    let p = start_proxy_in(
        dir.path(),
        None,
        &[
            (
                "DGP_CONFIG",
                dir.path().join("config.yaml").to_str().unwrap().to_string(),
            ),
            ("DGP_BOOTSTRAP_PASSWORD_HASH", hash),
            ("DGP_SECURE_COOKIES", "false".into()),
            ("DGP_MAX_MULTIPART_UPLOADS", "2".into()),
            ("DGP_MAX_TOTAL_MULTIPART_BYTES", "100000".into()),
        ],
        None,
    )
    .await;
    let admin = p.client();
    for b in ["team", "releases", "nocomp", "virt"] {
        admin.create_bucket().bucket(b).send().await.unwrap();
    }
    put_bytes(&admin, "team", "alice/secret/s.txt", b"secret").await;
    put_bytes(&admin, "team", "shared/doc.txt", b"shared").await;
    put_bytes(&admin, "team", "other/o.txt", b"other").await;

    // SigV4 failures.
    let e = p
        .client_as("NOSUCHKEY", "whatever")
        .list_buckets()
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "AccessDenied");
    let e = p
        .client_as(AK, "wrong-secret")
        .list_buckets()
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "SignatureDoesNotMatch");
    let skewed = {
        let conf = p
            .client()
            .config()
            .to_builder()
            .time_source(aws_smithy_async::time::StaticTimeSource::new(
                SystemTime::now() - Duration::from_secs(3600),
            ))
            // The SDK corrects its clock from the server's Date header when it retries.
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    };
    let e = skewed.list_buckets().send().await.unwrap_err();
    assert_eq!(code(&e.into_service_error()), "RequestTimeTooSkewed");

    // Presigned URLs.
    let http = reqwest::Client::new();
    let pre = admin
        .get_object()
        .bucket("team")
        .key("shared/doc.txt")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).unwrap())
        .await
        .unwrap();
    let r = http.get(pre.uri()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "shared");
    let uri = pre.uri().to_string();
    let at = uri.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let flipped = if &uri[at..at + 1] == "0" { "1" } else { "0" };
    let tampered = format!("{}{}{}", &uri[..at], flipped, &uri[at + 1..]);
    assert_eq!(http.get(tampered).send().await.unwrap().status(), 403);

    // IAM: own prefix, Deny wins, group grant, no access elsewhere, disabled user.
    let alice = p.client_as("ALICEAK", "ALICESECRET");
    put_bytes(&alice, "team", "alice/a.zip", &bytes(3, 1000)).await;
    assert_eq!(
        get_bytes(&alice, "team", "alice/a.zip").await,
        bytes(3, 1000)
    );
    let e = alice
        .get_object()
        .bucket("team")
        .key("alice/secret/s.txt")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "AccessDenied");
    assert_eq!(get_bytes(&alice, "team", "shared/doc.txt").await, b"shared");
    let e = alice
        .get_object()
        .bucket("team")
        .key("other/o.txt")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "AccessDenied");
    let e = alice
        .put_object()
        .bucket("team")
        .key("shared/x.txt")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "AccessDenied");
    let listed: Vec<String> = alice
        .list_objects_v2()
        .bucket("team")
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .map(|o| o.key().unwrap().to_string())
        .collect();
    // Listing is filtered by read-or-list: the read Deny on secret/ does not hide the key.
    assert_eq!(
        listed,
        vec!["alice/a.zip", "alice/secret/s.txt", "shared/doc.txt"]
    );
    let e = p
        .client_as("BOBAK", "BOBSECRET")
        .list_objects_v2()
        .bucket("team")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "AccessDenied");

    // Public prefixes: anonymous GET/LIST only under `builds/public/` (trailing slash matters).
    put_bytes(&admin, "releases", "builds/public/app.zip", b"public bytes").await;
    put_bytes(
        &admin,
        "releases",
        "builds/publicish/app.zip",
        b"not public",
    )
    .await;
    let base = p.url();
    let r = http
        .get(format!("{base}/releases/builds/public/app.zip"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "public bytes");
    let r = http
        .get(format!("{base}/releases/builds/publicish/app.zip"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("<Code>AccessDenied</Code>"));
    assert_eq!(
        http.head(format!("{base}/releases/builds/public/app.zip"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.put(format!("{base}/releases/builds/public/new.zip"))
            .body("x")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let r = http
        .get(format!("{base}/releases?list-type=2&prefix=builds/public/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("<Key>builds/public/app.zip</Key>") && !body.contains("publicish"),
        "{body}"
    );
    assert_eq!(
        http.get(format!("{base}/team/shared/doc.txt"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );

    // compression: false stores everything passthrough; alias renames the real bucket.
    let v1 = bytes(4, 50_000);
    put_bytes(&admin, "nocomp", "r/a.zip", &v1).await;
    put_bytes(&admin, "nocomp", "r/b.zip", &mutate(&v1, 5)).await;
    assert_eq!(
        files_under(&p.bucket_dir("nocomp")),
        vec!["r/a.zip", "r/b.zip"]
    );
    put_bytes(&admin, "virt", "k/v.txt", b"aliased").await;
    assert_eq!(
        files_under(&p.bucket_dir("real-bucket-name")),
        vec!["k/v.txt"]
    );
    assert_eq!(get_bytes(&admin, "virt", "k/v.txt").await, b"aliased");
    let names: Vec<String> = admin
        .list_buckets()
        .send()
        .await
        .unwrap()
        .buckets()
        .iter()
        .filter_map(|b| b.name().map(str::to_string))
        .collect();
    assert!(
        names.contains(&"virt".to_string()) && !names.contains(&"real-bucket-name".to_string()),
        "{names:?}"
    );

    // At most DGP_MAX_MULTIPART_UPLOADS in flight.
    let mut ids = Vec::new();
    for i in 0..2 {
        let c = admin
            .create_multipart_upload()
            .bucket("team")
            .key(format!("mp{i}.bin"))
            .send()
            .await
            .unwrap();
        ids.push(c.upload_id().unwrap().to_string());
    }
    let e = admin
        .create_multipart_upload()
        .bucket("team")
        .key("mp3.bin")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "SlowDown");

    // At most DGP_MAX_TOTAL_MULTIPART_BYTES staged across them: 60 kB fits, 60 kB more does
    // not (SlowDown), and re-sending the same part number replaces rather than adds.
    let part = |i: usize, n: i32| {
        admin
            .upload_part()
            .bucket("team")
            .key(format!("mp{i}.bin"))
            .upload_id(ids[i].clone())
            .part_number(n)
            .body(aws_sdk_s3::primitives::ByteStream::from(vec![7u8; 60_000]))
            .send()
    };
    part(0, 1).await.unwrap();
    let e = part(1, 1).await.unwrap_err();
    assert_eq!(code(&e.into_service_error()), "SlowDown");
    part(0, 1).await.unwrap();

    // Metrics: the spec's names.
    let m = http
        .get(format!("{base}/_/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "deltaglider_delta_decisions_total{decision=\"passthrough\"}",
        "deltaglider_auth_failures_total{reason=\"invalid_signature\"}",
        "deltaglider_auth_failures_total{reason=\"missing_header\"}",
        "deltaglider_auth_attempts_total{result=\"success\"}",
        "deltaglider_codec_semaphore_available",
        "deltaglider_cache_miss_rate_ratio",
        "deltaglider_cache_max_bytes",
        "deltaglider_build_info",
        "operation=\"put_object\"",
        "deltaglider_http_request_duration_seconds_bucket",
        // The reference's buckets: 5 ms–10 s for requests, 1K–100M for sizes (histograms,
        // not summaries).
        "deltaglider_http_request_duration_seconds_bucket{method=\"GET\",operation=\"get_object\",le=\"0.005\"}",
        "deltaglider_http_request_size_bytes_bucket{method=\"PUT\",le=\"1024\"}",
        "deltaglider_http_response_size_bytes_bucket{method=\"GET\",le=\"104857600\"}",
        // The standard process gauges, on Linux.
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
        "process_max_fds ",
        "process_threads ",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
    assert!(
        !m.contains("deltaglider_http_request_duration_seconds_bucket{method=\"GET\",operation=\"get_object\",le=\"0.0005\"}"),
        "request duration keeps the platform default buckets"
    );
    assert!(p.proc.logs().contains(
        "[cache] In-memory reference cache is only 64 MB — recommend ≥1024 MB for production"
    ));

    // Health and admin API.
    let h: serde_json::Value = http
        .get(format!("{base}/_/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "healthy");
    assert_eq!(
        http.get(format!("{base}/_/api/admin/audit"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(admin_login_response(&base, "nope").await.status(), 401);
    let cookie = admin_login(&base, "s3cret-admin").await;
    let (_, audit) = admin_call(
        reqwest::Method::GET,
        format!("{base}/_/api/admin/audit?limit=500"),
        &cookie,
        None,
    )
    .await;
    let entries = audit["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["user"] == "alice"
            && e["action"] == "access_denied"
            && e["bucket"] == "team"
            && e["path"] == "alice/secret/s.txt"),
        "{audit}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["user"] == "$anonymous" && e["path"] == "builds/publicish/app.zip"),
        "{audit}"
    );
    // Admitted anonymous reads are audited too.
    assert!(
        entries.iter().any(|e| e["user"] == "$anonymous"
            && e["action"] == "anonymous_access"
            && e["path"] == "builds/public/app.zip"),
        "{audit}"
    );
    let storage: serde_json::Value = http
        .get(format!("{base}/_/api/admin/config/section/storage"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        storage["buckets"]["releases"]["public_prefixes"][0],
        "builds/public/"
    );
    let users: serde_json::Value = http
        .get(format!("{base}/_/api/admin/users"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(users["users"].as_array().unwrap().len(), 2, "{users}");
    assert!(!users.to_string().contains("ALICESECRET"));
    let r = http
        .post(format!("{base}/_/api/admin/users"))
        .header("cookie", &cookie)
        .json(&serde_json::json!({"name": "carol", "access_key_id": "CAROLAK"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"error": "iam_declarative"})
    );
    let ui = http
        .get(format!("{base}/_/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(ui.contains("DeltaGlider Proxy"));
    // The guide's deep link to the audit view serves the same page, which loads the ring.
    let deep = http
        .get(format!("{base}/_/admin/diagnostics/audit"))
        .send()
        .await
        .unwrap();
    assert_eq!(deep.status(), 200);
    let deep = deep.text().await.unwrap();
    assert!(deep.contains("DeltaGlider Proxy") && deep.contains("/diagnostics/audit"));
    // Other `/_/` paths are the admin surface's: a JSON 404, not an S3 error.
    let r = http
        .get(format!("{base}/_/api/admin/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "not_found");
    let stats = || async {
        let (_, v) = admin_call(
            reqwest::Method::GET,
            format!("{base}/_/stats"),
            &cookie,
            None,
        )
        .await;
        v
    };
    let first = stats().await;
    assert!(first["total_objects"].as_u64().unwrap() >= 5, "{first}");
    // Cached 10 s: an object written now shows only after that.
    put_bytes(&admin, "team", "shared/new-after-stats.txt", b"n").await;
    assert_eq!(stats().await, first);
}

#[tokio::test]
async fn gui_mode_admin_creates_users_that_can_sign() {
    let hash = bcrypt::hash("pw", 4).unwrap();
    let p = start_proxy(
        None,
        &[
            ("DGP_BOOTSTRAP_PASSWORD_HASH", hash),
            ("DGP_SECURE_COOKIES", "false".into()),
            ("DGP_RATE_LIMIT_MAX_ATTEMPTS", "3".into()),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let base = p.url();
    let cookie = admin_login(&base, "pw").await;
    // Bad bodies answer in the admin envelope with axum's status; without a session the
    // gate answers first, whatever the body.
    let raw = |path: &str, cookie: Option<&str>, body: &'static str| {
        let mut rq = http
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(c) = cookie {
            rq = rq.header("cookie", c);
        }
        async move {
            let r = rq.send().await.unwrap();
            let s = r.status().as_u16();
            let t = r.text().await.unwrap();
            let v: serde_json::Value =
                serde_json::from_str(&t).unwrap_or_else(|_| panic!("not JSON: {s} {t}"));
            (s, v)
        }
    };
    let (s, v) = raw("/_/api/admin/users", None, "{not json").await;
    assert_eq!((s, v["error"].as_str()), (401, Some("not_authenticated")));
    let (s, v) = raw("/_/api/admin/users", Some(&cookie), "{not json").await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].is_string(), "{v}");
    let (s, v) = raw("/_/api/admin/users", Some(&cookie), r#"{"name": 5}"#).await;
    assert_eq!(s, 422, "{v}");
    assert!(v["error"].is_string(), "{v}");
    // Names: empty and `$`-prefixed are refused with a message saying which.
    for (path, body, want) in [
        (
            "/_/api/admin/users",
            r#"{"name": "", "access_key_id": "EMPTYAK"}"#,
            "name must not be empty",
        ),
        (
            "/_/api/admin/users",
            r#"{"name": "$root", "access_key_id": "ROOTAK"}"#,
            "names starting with $ are reserved",
        ),
        (
            "/_/api/admin/groups",
            r#"{"name": "$all"}"#,
            "names starting with $ are reserved",
        ),
        (
            "/_/api/admin/groups",
            r#"{"name": ""}"#,
            "name must not be empty",
        ),
        (
            "/_/api/admin/users",
            r#"{"name": "nokey", "access_key_id": " "}"#,
            "access_key_id must not be empty",
        ),
    ] {
        let (s, v) = raw(path, Some(&cookie), body).await;
        assert_eq!((s, v["error"].as_str()), (422, Some(want)), "{body}");
    }
    let (s, v) = raw("/_/api/admin/login", None, "{}").await;
    assert_eq!(s, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("password"), "{v}");
    let dave = serde_json::json!({"name": "dave", "access_key_id": "DAVEAK", "permissions": [{"effect": "Allow", "actions": ["read", "list"], "resources": ["pub/*"]}]});
    let secret = create_user(&base, &cookie, dave).await;
    p.client()
        .create_bucket()
        .bucket("pub")
        .send()
        .await
        .unwrap();
    put_bytes(&p.client(), "pub", "f.txt", b"hi").await;
    let dave = p.client_as("DAVEAK", &secret);
    assert_eq!(get_bytes(&dave, "pub", "f.txt").await, b"hi");
    assert!(dave
        .put_object()
        .bucket("pub")
        .key("g.txt")
        .body(b"x".to_vec().into())
        .send()
        .await
        .is_err());
    // Delete the user: its key stops working with the same generic AccessDenied.
    assert_eq!(
        http.delete(format!("{base}/_/api/admin/users/DAVEAK"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let e = dave
        .get_object()
        .bucket("pub")
        .key("f.txt")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "AccessDenied");
    // Rate limiter: after DGP_RATE_LIMIT_MAX_ATTEMPTS failures even the right password gets 429.
    for _ in 0..3 {
        assert_eq!(admin_login_response(&base, "bad").await.status(), 401);
    }
    assert_eq!(admin_login_response(&base, "pw").await.status(), 429);
}
