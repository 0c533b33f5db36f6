//! IAM permission conditions through the S3 API: `aws:SourceIp` (the admission chain's
//! client address, so a trusted X-Forwarded-For counts) and `s3:prefix` on listings, a
//! conditional Deny of listing, and refusal of conditions the evaluator cannot honour
//! (`config lint`, and the admin API's 422).

mod common;

use common::*;

const YAML: &str = r#"
access:
  iam_mode: declarative
  iam_users:
    - name: office
      access_key_id: OFFICEAK
      secret_access_key: OFFICESECRET
      permissions:
        - actions: ["*"]
          resources: ["logs/*"]
          conditions: {IpAddress: {"aws:SourceIp": ["127.0.0.0/8", "::1"]}}
    - name: branch
      access_key_id: BRANCHAK
      secret_access_key: BRANCHSECRET
      permissions:
        - actions: ["*"]
          resources: ["logs/*"]
          conditions: {IpAddress: {"aws:SourceIp": "10.20.0.0/16"}}
    - name: lister
      access_key_id: LISTERAK
      secret_access_key: LISTERSECRET
      permissions:
        - actions: [list]
          resources: ["logs/*"]
          conditions: {StringLike: {"s3:prefix": "alice/*"}}
    - name: nolist
      access_key_id: NOLISTAK
      secret_access_key: NOLISTSECRET
      permissions:
        - actions: ["*"]
          resources: ["logs/*"]
        - effect: Deny
          actions: [list]
          resources: ["logs/*"]
          conditions: {NotIpAddress: {"aws:SourceIp": "10.20.0.0/16"}}
"#;

/// Keys of a ListObjectsV2 as `ak`, or the error code.
async fn list(p: &Proxy, ak: &str, sk: &str, prefix: Option<&str>) -> Result<Vec<String>, String> {
    p.client_as(ak, sk)
        .list_objects_v2()
        .bucket("logs")
        .set_prefix(prefix.map(str::to_string))
        .send()
        .await
        .map(|o| {
            o.contents()
                .iter()
                .filter_map(|c| c.key().map(str::to_string))
                .collect()
        })
        .map_err(|e| code(&e.into_service_error()))
}

#[tokio::test]
async fn conditions_gate_requests_by_source_address_and_list_prefix() {
    let p = start_proxy_with_yaml(YAML, &[("DGP_TRUST_PROXY_HEADERS", "true".into())]).await;
    let admin = p.client();
    admin.create_bucket().bucket("logs").send().await.unwrap();
    put_bytes(&admin, "logs", "alice/a.txt", b"a").await;
    put_bytes(&admin, "logs", "bob/b.txt", b"b").await;

    // aws:SourceIp: the office network (loopback here) may write and read; the branch
    // network's user may not from here.
    let office = p.client_as("OFFICEAK", "OFFICESECRET");
    office
        .put_object()
        .bucket("logs")
        .key("office.txt")
        .body(b"o".to_vec().into())
        .send()
        .await
        .unwrap();
    assert_eq!(get_bytes(&office, "logs", "alice/a.txt").await, b"a");
    let e = p
        .client_as("BRANCHAK", "BRANCHSECRET")
        .get_object()
        .bucket("logs")
        .key("alice/a.txt")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "AccessDenied");

    // Behind a trusted proxy the forwarded address is the one conditions see: a presigned
    // GET sent with X-Forwarded-For from the branch network flips both users.
    let http = reqwest::Client::new();
    let presigned = |ak: &'static str, sk: &'static str| {
        let c = p.client_as(ak, sk);
        async move { presigned_get(&c, "logs", "alice/a.txt").await }
    };
    let via_branch = |url: String| {
        let http = http.clone();
        async move {
            http.get(url)
                .header("X-Forwarded-For", "10.20.3.4")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        via_branch(presigned("BRANCHAK", "BRANCHSECRET").await).await,
        200
    );
    assert_eq!(
        via_branch(presigned("OFFICEAK", "OFFICESECRET").await).await,
        403
    );

    // s3:prefix: listing is allowed under alice/ only; no prefix at all does not match.
    assert_eq!(
        list(&p, "LISTERAK", "LISTERSECRET", Some("alice/")).await,
        Ok(vec!["alice/a.txt".to_string()])
    );
    assert_eq!(
        list(&p, "LISTERAK", "LISTERSECRET", Some("bob/")).await,
        Err("AccessDenied".to_string())
    );
    assert_eq!(
        list(&p, "LISTERAK", "LISTERSECRET", None).await,
        Err("AccessDenied".to_string())
    );
    // The condition is on listing, not on the object: a GET is not what it allows.
    let e = p
        .client_as("LISTERAK", "LISTERSECRET")
        .get_object()
        .bucket("logs")
        .key("alice/a.txt")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "AccessDenied");

    // A conditional Deny of listing the bucket: AccessDenied from outside 10.20/16, while
    // the user's unconditional rights still work.
    assert_eq!(
        list(&p, "NOLISTAK", "NOLISTSECRET", None).await,
        Err("AccessDenied".to_string())
    );
    let nolist = p.client_as("NOLISTAK", "NOLISTSECRET");
    assert_eq!(get_bytes(&nolist, "logs", "bob/b.txt").await, b"b");
    // From inside 10.20/16 (forwarded), the Deny does not apply and the listing runs.
    let keys: Vec<String> = nolist
        .list_objects_v2()
        .bucket("logs")
        .customize()
        .mutate_request(|r| {
            r.headers_mut().insert("x-forwarded-for", "10.20.9.9");
        })
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|c| c.key().map(str::to_string))
        .collect();
    assert_eq!(keys, ["alice/a.txt", "bob/b.txt", "office.txt"]);
}

#[test]
fn conditions_the_evaluator_cannot_honour_are_refused() {
    let d = tempfile::tempdir().unwrap();
    for (name, cond) in [
        (
            "op",
            r#"{DateGreaterThan: {"aws:CurrentTime": "2020-01-01T00:00:00Z"}}"#,
        ),
        ("key", r#"{StringEquals: {"aws:username": bob}}"#),
        ("cidr", r#"{IpAddress: {"aws:SourceIp": 10.0.0.0/40}}"#),
        ("mismatch", r#"{StringLike: {"aws:SourceIp": "10.*"}}"#),
    ] {
        let path = d.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "access:\n  iam_users:\n    - name: u\n      access_key_id: UAK\n      secret_access_key: US\n      permissions:\n        - actions: [read]\n          resources: [\"b/*\"]\n          conditions: {cond}\n"
            ),
        )
        .unwrap();
        let o = std::process::Command::new(proxy_bin())
            .args(["config", "lint", path.to_str().unwrap()])
            .current_dir(d.path())
            .env_remove("DGP_CONFIG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(6), "{name}: {err}");
        assert!(
            err.contains("user \"u\": permissions[0]") && err.contains("condition"),
            "{name}: {err}"
        );
    }
}

#[tokio::test]
async fn admin_api_refuses_a_user_with_an_unsupported_condition() {
    let pw = "cond-admin-pw";
    let p = start_proxy(None, &bootstrap_env(pw)).await;
    let base = p.url();
    let cookie = admin_login(&base, pw).await;
    // Creates carol with one read permission under `conditions`.
    let create = |conditions: serde_json::Value| {
        let (base, cookie) = (base.clone(), cookie.clone());
        async move {
            admin_call(
                reqwest::Method::POST,
                format!("{base}/_/api/admin/users"),
                &cookie,
                Some(serde_json::json!({
                    "name": "carol", "access_key_id": "CAROLAK", "secret_access_key": "CAROLSECRET",
                    "permissions": [{"actions": ["read"], "resources": ["b/*"], "conditions": conditions}]
                })),
            )
            .await
        }
    };
    let (status, body) = create(serde_json::json!({"Bool": {"aws:SecureTransport": "true"}})).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("unsupported condition operator \"Bool\"")),
        "{body}"
    );
    // The same user with a supported condition is created, and its condition is kept.
    let (status, body) =
        create(serde_json::json!({"IpAddress": {"aws:SourceIp": "127.0.0.1"}})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["permissions"][0]["conditions"]["IpAddress"]["aws:SourceIp"], "127.0.0.1",
        "{body}"
    );
}
