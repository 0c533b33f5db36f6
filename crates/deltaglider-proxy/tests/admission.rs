//! Admission blocks end to end through the real binary: deny by CIDR (v4 and v6, via
//! X-Forwarded-For with DGP_TRUST_PROXY_HEADERS), deny of signed requests before auth,
//! `continue` winning by order, reject with a custom status and message, allow-anonymous on a
//! path glob (GET/HEAD/LIST only, listing filtered), a config_flag switched live through the
//! section PUT, the synthesized public-prefix blocks, the trace endpoint (POST and GET), the
//! section validate dry run, the JSON Schema, the flat config view/update and the iam_mode
//! flip guard.

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

const YAML: &str = r#"
admission:
  flags:
    maintenance: false
  blocks:
    - name: office-continue
      match: {source_ip: 198.51.100.7, bucket: locked}
      action: continue
    - name: lock-bucket
      match: {bucket: locked}
      action: deny
    - name: bad-net
      match: {source_ip_list: ["203.0.113.0/24", "2001:db8::/32"]}
      action: deny
    - name: legal-hold
      match: {bucket: media, path_glob: "legal/*", method: [GET, HEAD]}
      action: {type: reject, status: 451, message: "Unavailable for legal reasons"}
    - name: media-thumbs
      match: {bucket: media, path_glob: "*/thumbs/*.png", authenticated: false}
      action: allow-anonymous
    - name: maintenance
      match: {config_flag: maintenance, method: [PUT, POST, DELETE]}
      action: {type: reject, status: 503, message: "maintenance window"}
storage:
  buckets:
    media:
      public_prefixes: ["legal/"]
    rel:
      public_prefixes: ["builds/public/"]
"#;

async fn start() -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg.yaml");
    std::fs::write(&cfg, YAML).unwrap();
    let hash = bcrypt::hash("pw", 4).unwrap();
    let p = start_proxy(
        None,
        &[
            ("DGP_CONFIG", cfg.to_str().unwrap().into()),
            ("DGP_BOOTSTRAP_PASSWORD_HASH", hash),
            ("DGP_SECURE_COOKIES", "false".into()),
            ("DGP_TRUST_PROXY_HEADERS", "true".into()),
        ],
    )
    .await;
    (p, dir)
}

/// An anonymous request from `ip` (through X-Forwarded-For); (status, body).
async fn anon(
    http: &reqwest::Client,
    method: Method,
    url: String,
    ip: Option<&str>,
) -> (u16, String) {
    let mut rq = http.request(method, url);
    if let Some(ip) = ip {
        rq = rq.header("x-forwarded-for", ip);
    }
    let r = rq.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn admission_blocks_enforced_on_s3_requests() {
    let (p, _d) = start().await;
    // No SDK retries: the 503 of the maintenance block must surface at once.
    let c = p.client_no_retry();
    let http = reqwest::Client::new();
    let base = p.url();
    let anon_get = |path: &str| anon(&http, Method::GET, format!("{base}{path}"), None);
    let thumb = format!("{base}/media/a/thumbs/x.png");

    // deny applies to signed requests too (before auth); `continue` placed first exempts the
    // office address, which then takes normal SigV4 auth.
    let e = c.create_bucket().bucket("locked").send().await.unwrap_err();
    assert_eq!(code(&e.into_service_error()), "AccessDenied");
    c.create_bucket()
        .bucket("locked")
        .customize()
        .mutate_request(|r| {
            r.headers_mut().insert("x-forwarded-for", "198.51.100.7");
        })
        .send()
        .await
        .expect("continue block lets the office create the bucket");
    let e = c
        .put_object()
        .bucket("locked")
        .key("k")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "AccessDenied");

    for b in ["media", "rel"] {
        c.create_bucket().bucket(b).send().await.unwrap();
    }
    put_bytes(&c, "media", "a/thumbs/x.png", b"png bytes").await;
    put_bytes(&c, "media", "a/thumbs/x.jpg", b"jpg bytes").await;
    put_bytes(&c, "media", "legal/doc.txt", b"held").await;
    put_bytes(&c, "rel", "builds/public/app.zip", b"public app").await;
    put_bytes(&c, "rel", "builds/publicish/app.zip", b"not public").await;

    // allow-anonymous on a path glob: GET and HEAD of matching keys only.
    let (s, body) = anon_get("/media/a/thumbs/x.png").await;
    assert_eq!((s, body.as_str()), (200, "png bytes"));
    let (s, _) = anon(&http, Method::HEAD, thumb.clone(), None).await;
    assert_eq!(s, 200);
    let (s, body) = anon_get("/media/a/thumbs/x.jpg").await;
    assert_eq!(s, 403, "{body}");
    let (s, _) = anon(
        &http,
        Method::PUT,
        format!("{base}/media/a/thumbs/new.png"),
        None,
    )
    .await;
    assert_eq!(s, 403, "anonymous writes are never admitted");
    // Anonymous LIST under the glob, filtered to the keys it admits.
    let (s, body) = anon_get("/media?list-type=2&prefix=a/thumbs/").await;
    assert_eq!(s, 200, "{body}");
    assert!(
        body.contains("<Key>a/thumbs/x.png</Key>") && !body.contains("x.jpg"),
        "{body}"
    );
    // A deny/reject path_glob matches a LIST only when the prefix itself matches: the bucket
    // root still lists (filtered), `legal/` does not.
    let (s, body) = anon_get("/media?list-type=2").await;
    assert_eq!(s, 200, "{body}");
    assert!(
        !body.contains("legal/doc.txt") && body.contains("a/thumbs/x.png"),
        "{body}"
    );
    let (s, _) = anon_get("/media?list-type=2&prefix=legal/").await;
    assert_eq!(s, 451);

    // deny by CIDR (v4 and v6) wins over the later allow-anonymous block.
    for ip in ["203.0.113.9", "2001:db8::5"] {
        let (s, body) = anon(&http, Method::GET, thumb.clone(), Some(ip)).await;
        assert_eq!(s, 403, "{ip}");
        assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");
    }
    let (s, _) = anon(&http, Method::GET, thumb.clone(), Some("198.51.100.1")).await;
    assert_eq!(s, 200, "an address outside the CIDRs is not denied");

    // reject with a custom status and message, for anonymous and signed requests alike; it
    // comes before the synthesized public-prefix block of `legal/`.
    let (s, body) = anon_get("/media/legal/doc.txt").await;
    assert_eq!(s, 451, "{body}");
    assert!(body.contains("Unavailable for legal reasons"), "{body}");
    let e = c
        .get_object()
        .bucket("media")
        .key("legal/doc.txt")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(451));

    // The synthesized public-prefix block keeps the trailing-slash semantics.
    let (s, body) = anon_get("/rel/builds/public/app.zip").await;
    assert_eq!((s, body.as_str()), (200, "public app"));
    let (s, _) = anon_get("/rel/builds/publicish/app.zip").await;
    assert_eq!(s, 403);

    // config_flag: turned on live through the admission section PUT.
    let ck = admin_login(&base, "pw").await;
    let section = format!("{base}/_/api/admin/config/section/admission");
    let maintenance = |on: bool| {
        let body = json!({"flags": {"maintenance": on}});
        admin_call(Method::PUT, section.clone(), &ck, Some(body))
    };
    put_bytes(&c, "media", "b/file.txt", b"before").await;
    let (s, v) = maintenance(true).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["applied"]
            .as_array()
            .unwrap()
            .contains(&json!("admission.flags")),
        "{v}"
    );
    let e = c
        .put_object()
        .bucket("media")
        .key("b/file.txt")
        .body(b"during".to_vec().into())
        .send()
        .await
        .unwrap_err();
    let raw = e.raw_response().unwrap();
    assert_eq!(raw.status().as_u16(), 503);
    assert_eq!(get_bytes(&c, "media", "b/file.txt").await, b"before");
    // The section read shows the blocks as configured (no synthesized ones).
    let (_, sec) = admin_call(Method::GET, section.clone(), &ck, None).await;
    assert_eq!(sec["blocks"].as_array().unwrap().len(), 6, "{sec}");
    assert_eq!(sec["flags"]["maintenance"], true);
    let (s, _) = maintenance(false).await;
    assert_eq!(s, 200);
    put_bytes(&c, "media", "b/file.txt", b"after").await;

    // The admission denials are audited.
    let (_, audit) = admin_call(Method::GET, format!("{base}/_/api/admin/audit"), &ck, None).await;
    assert!(audit.to_string().contains("admission_denied"), "{audit}");
}

#[tokio::test]
async fn trace_validate_schema_and_flat_config() {
    let (p, dir) = start().await;
    let base = p.url();
    let trace_url = format!("{base}/_/api/admin/config/trace");
    let (s, _) = admin_call(
        Method::POST,
        trace_url.clone(),
        "",
        Some(json!({"method": "GET", "path": "/a/b"})),
    )
    .await;
    assert_eq!(s, 401, "trace needs a session");
    let ck = admin_login(&base, "pw").await;

    let cases = [
        (
            json!({"method": "GET", "path": "/rel/builds/public/a.zip"}),
            "allow-anonymous",
            Some("public-prefix:rel"),
        ),
        (
            json!({"method": "GET", "path": "/rel/builds/publicish/a.zip"}),
            "continue",
            None,
        ),
        (
            json!({"method": "GET", "path": "/rel/x", "source_ip": "203.0.113.1"}),
            "deny",
            Some("bad-net"),
        ),
        (
            json!({"method": "GET", "path": "/media/legal/d"}),
            "reject",
            Some("legal-hold"),
        ),
        (
            json!({"method": "PUT", "path": "/locked/k", "source_ip": "198.51.100.7", "authenticated": true}),
            "continue",
            Some("office-continue"),
        ),
        (
            json!({"method": "GET", "path": "/media", "query": "list-type=2&prefix=z/thumbs/"}),
            "allow-anonymous",
            Some("media-thumbs"),
        ),
    ];
    for (body, decision, block) in cases {
        let (s, v) = admin_call(Method::POST, trace_url.clone(), &ck, Some(body.clone())).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["decision"], decision, "{body} -> {v}");
        assert_eq!(v["matched_block"], json!(block), "{body} -> {v}");
        assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
    }
    let (s, v) = admin_call(
        Method::GET,
        format!("{trace_url}?method=GET&path=/media/q/thumbs/a.png&authenticated=false"),
        &ck,
        None,
    )
    .await;
    assert_eq!(
        (s, v["decision"].clone()),
        (200, json!("allow-anonymous")),
        "{v}"
    );
    // A query missing a field, or mistyped, answers 400 in the admin envelope.
    for q in ["path=/a", "method=GET&path=/a&authenticated=maybe"] {
        let (s, v) = admin_call(Method::GET, format!("{trace_url}?{q}"), &ck, None).await;
        assert_eq!(s, 400, "{q} -> {v}");
        assert!(v["error"].is_string(), "{q} -> {v}");
    }
    let (s, v) = admin_call(
        Method::GET,
        format!("{base}/_/api/admin/audit?limit=many"),
        &ck,
        None,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].is_string(), "{v}");
    let (s, _) = admin_call(
        Method::POST,
        trace_url.clone(),
        &ck,
        Some(json!({"method": "GET", "path": "/a", "source_ip": "nope"})),
    )
    .await;
    assert_eq!(s, 400);

    // Validation errors name the block; nothing is applied.
    let (s, v) = admin_call(
        Method::PUT,
        format!("{base}/_/api/admin/config/section/admission"),
        &ck,
        Some(json!({"blocks": [{"name": "public-prefix:x", "action": "deny"}]})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("public-prefix:x"), "{v}");
    let (s, v) = admin_call(
        Method::POST,
        format!("{base}/_/api/admin/config/section/admission/validate"),
        &ck,
        Some(json!({"blocks": [{"name": "dup", "action": "deny"}, {"name": "dup", "action": "deny"}]})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("'dup'"), "{v}");

    // Section validate: a dry run with a diff.
    let (s, v) = admin_call(
        Method::POST,
        format!("{base}/_/api/admin/config/section/advanced/validate"),
        &ck,
        Some(json!({"max_delta_ratio": 0.5, "cache_size_mb": 4096})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ok"], true);
    assert_eq!(
        v["requires_restart"], true,
        "cache size needs a restart: {v}"
    );
    let paths: Vec<&str> = v["diff"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"advanced.max_delta_ratio") && paths.contains(&"advanced.cache_size_mb"),
        "{v}"
    );
    let (_, flat) = admin_call(Method::GET, format!("{base}/_/api/admin/config"), &ck, None).await;
    assert_eq!(
        flat["max_delta_ratio"], 0.75,
        "validate applied nothing: {flat}"
    );
    assert_eq!(flat["secret_access_key"], "***", "{flat}");
    assert_eq!(flat["bootstrap_password_hash"], "***", "{flat}");
    assert!(!flat.to_string().contains(SK), "{flat}");

    // Flat PUT: hot keys apply, the others wait for a restart; both persist.
    let (s, v) = admin_call(
        Method::PUT,
        format!("{base}/_/api/admin/config"),
        &ck,
        Some(json!({"max_delta_ratio": 0.4, "cache_size_mb": 2048})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["applied"], json!(["advanced.max_delta_ratio"]), "{v}");
    assert_eq!(
        v["requires_restart"],
        json!(["advanced.cache_size_mb"]),
        "{v}"
    );
    let (_, flat) = admin_call(Method::GET, format!("{base}/_/api/admin/config"), &ck, None).await;
    assert_eq!(flat["max_delta_ratio"], 0.4, "{flat}");
    let file = std::fs::read_to_string(dir.path().join("cfg.yaml")).unwrap();
    assert!(
        file.contains("cache_size_mb: 2048") && file.contains("legal-hold"),
        "{file}"
    );
    let (s, _) = admin_call(
        Method::PUT,
        format!("{base}/_/api/admin/config"),
        &ck,
        Some(json!({"data_dir": "/x"})),
    )
    .await;
    assert_eq!(s, 400, "read-only settings are refused");
    let (s, _) = admin_call(
        Method::PUT,
        format!("{base}/_/api/admin/config"),
        &ck,
        Some(json!({"max_delta_ratio": 7})),
    )
    .await;
    assert_eq!(s, 400);

    // JSON Schema.
    let (s, v) = admin_call(
        Method::GET,
        format!("{base}/_/api/admin/config/defaults"),
        &ck,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        v["properties"]["advanced"]["properties"]["max_delta_ratio"]["default"], 0.75,
        "{v}"
    );
    let (s, v) = admin_call(
        Method::GET,
        format!("{base}/_/api/admin/config/defaults?section=admission"),
        &ck,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        v["properties"]["blocks"]["items"]["properties"]["action"].is_object(),
        "{v}"
    );
    let (s, _) = admin_call(
        Method::GET,
        format!("{base}/_/api/admin/config/defaults?section=bogus"),
        &ck,
        None,
    )
    .await;
    assert_eq!(s, 404);

    // gui -> declarative with no users and no groups is refused (section PUT and apply).
    let (s, v) = admin_call(
        Method::PUT,
        format!("{base}/_/api/admin/config/section/access"),
        &ck,
        Some(json!({"iam_mode": "declarative"})),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    let (s, _) = admin_call(
        Method::POST,
        format!("{base}/_/api/admin/config/apply"),
        &ck,
        Some(json!({"yaml": "access:\n  iam_mode: declarative\n"})),
    )
    .await;
    assert_eq!(s, 422);
    // With a user it goes through, and the change is logged at warn.
    let (s, v) = admin_call(
        Method::PUT,
        format!("{base}/_/api/admin/config/section/access"),
        &ck,
        Some(json!({"iam_mode": "declarative", "iam_users": [{"name": "ci", "access_key_id": "CIK", "secret_access_key": "CIS"}]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let logs = p.proc.logs();
    assert!(
        logs.lines().any(|l| l.contains("WARN")
            && l.contains("deltaglider_proxy::config")
            && l.contains("iam_mode changed")),
        "{logs}"
    );
}
