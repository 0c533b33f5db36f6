//! Declarative IAM reconciler: a running `iam_mode: declarative` proxy takes a changed
//! `access` section live (users created, updated and deleted by name, groups replaced), the
//! dry run shows the spec's preview line, every change is audited as `iam_reconcile_*`, and
//! invalid declarations (unknown group, duplicate key, `$` names) are refused before any write.

mod common;

use common::*;
use serde_json::json;

const YAML: &str = r#"
access:
  iam_mode: declarative
  iam_users:
    - name: alice
      access_key_id: ALICEAK
      secret_access_key: ALICESECRET
      groups: [readers]
    - name: bob
      access_key_id: BOBAK
      secret_access_key: BOBSECRET
      permissions:
        - actions: ["*"]
          resources: ["*"]
  iam_groups:
    - name: readers
      permissions:
        - actions: [read, list]
          resources: ["bkt/*"]
"#;

async fn can_list(p: &Proxy, ak: &str, sk: &str) -> bool {
    p.client_as(ak, sk)
        .list_objects_v2()
        .bucket("bkt")
        .send()
        .await
        .is_ok()
}

#[tokio::test]
async fn access_section_put_reconciles_live_and_audits() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, YAML).unwrap();
    let env = vec![
        (
            "DGP_BOOTSTRAP_PASSWORD_HASH",
            bcrypt::hash("pw-r", 4).unwrap(),
        ),
        ("DGP_SECURE_COOKIES", "false".into()),
        ("DGP_CONFIG", cfg.to_str().unwrap().to_string()),
    ];
    let p = start_proxy(None, &env).await;
    let base = p.url();
    let c = admin_login(&base, "pw-r").await;
    p.client_as("BOBAK", "BOBSECRET")
        .create_bucket()
        .bucket("bkt")
        .send()
        .await
        .unwrap();
    assert!(can_list(&p, "ALICEAK", "ALICESECRET").await);

    // New state: alice removed, bob's permissions narrowed (update), carol created.
    let patch = json!({
        "iam_users": [
            {"name": "bob", "access_key_id": "BOBAK", "secret_access_key": "BOBSECRET",
             "permissions": [{"actions": ["*"], "resources": ["*"]}], "groups": ["readers"]},
            {"name": "carol", "access_key_id": "CAROLAK", "secret_access_key": "CAROLSECRET",
             "groups": ["readers"]}
        ]
    });
    let (s, v) = admin_call(
        reqwest::Method::POST,
        format!("{base}/_/api/admin/config/section/access/validate"),
        &c,
        Some(patch.clone()),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains("declarative IAM preview: users(+1/~1/-1) groups(+0/~0/-0) providers(+0/~0/-0) mapping_rules=keep"),
        "{v}"
    );
    // The dry run changed nothing.
    assert!(can_list(&p, "ALICEAK", "ALICESECRET").await);
    assert!(!can_list(&p, "CAROLAK", "CAROLSECRET").await);

    let (s, v) = admin_call(
        reqwest::Method::PUT,
        format!("{base}/_/api/admin/config/section/access"),
        &c,
        Some(patch),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        !can_list(&p, "ALICEAK", "ALICESECRET").await,
        "deleted user refused at once"
    );
    assert!(
        can_list(&p, "CAROLAK", "CAROLSECRET").await,
        "created user works at once"
    );
    assert!(can_list(&p, "BOBAK", "BOBSECRET").await);

    let (_, audit) = admin_call(
        reqwest::Method::GET,
        format!("{base}/_/api/admin/audit?limit=50"),
        &c,
        None,
    )
    .await;
    let actions: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("").to_string(),
                e["target"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for want in [
        ("iam_reconcile_user_create", "carol"),
        ("iam_reconcile_user_update", "bob"),
        ("iam_reconcile_user_delete", "alice"),
    ] {
        assert!(
            actions.iter().any(|(a, t)| a == want.0 && t == want.1),
            "{want:?} not in {actions:?}"
        );
    }

    // Invalid declarations are refused and change nothing.
    for bad in [
        json!({"iam_users": [{"name": "dan", "access_key_id": "DANAK", "secret_access_key": "x", "groups": ["nope"]}]}),
        json!({"iam_users": [{"name": "$dan", "access_key_id": "DANAK", "secret_access_key": "x"}]}),
        json!({"iam_users": [
            {"name": "d1", "access_key_id": "SAMEAK", "secret_access_key": "x"},
            {"name": "d2", "access_key_id": "SAMEAK", "secret_access_key": "y"}]}),
        // eve would take bob's key while bob is deleted.
        json!({"iam_users": [
            {"name": "eve", "access_key_id": "BOBAK", "secret_access_key": "EVESECRET"},
            {"name": "carol", "access_key_id": "CAROLAK", "secret_access_key": "CAROLSECRET",
             "groups": ["readers"]}]}),
        // A condition the evaluator cannot honour.
        json!({"iam_users": [{"name": "dan", "access_key_id": "DANAK", "secret_access_key": "x",
            "permissions": [{"actions": ["read"], "resources": ["b/*"],
                             "conditions": {"Bool": {"aws:SecureTransport": "true"}}}]}]}),
    ] {
        let (s, v) = admin_call(
            reqwest::Method::PUT,
            format!("{base}/_/api/admin/config/section/access"),
            &c,
            Some(bad.clone()),
        )
        .await;
        assert!(s == 400 || s == 422, "{bad} -> {s} {v}");
        let why = v.to_string();
        if bad.to_string().contains("eve") {
            assert!(
                why.contains("takes access key") && why.contains("BOBAK"),
                "{why}"
            );
        }
        if bad.to_string().contains("SecureTransport") {
            assert!(why.contains("unsupported condition operator"), "{why}");
        }
        assert!(
            can_list(&p, "CAROLAK", "CAROLSECRET").await,
            "{bad} changed IAM"
        );
    }
}
