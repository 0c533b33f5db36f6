//! Replication rules against the real binary: run-now copies through the engine (the
//! destination stores a reference and deltas), a second run skips objects whose destination
//! ETag matches, a changed source object is copied again, pause makes run-now 409 until
//! resume, history and failures are kept newest first, and a rule on its interval runs by
//! itself. Pause state and history survive a restart (kill -9) on the same data dir and a
//! corrupt state file is not a start failure; `replicate_deletes` removes the destination
//! copy of a deleted source object and nothing else, while the default leaves it.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const YAML: &str = r#"
storage:
  replication:
    rules:
      - name: mirror
        source: {bucket: src, prefix: "builds/"}
        destination: {bucket: dst, prefix: "mirror/"}
        interval_secs: 86400
      - name: broken
        source: {bucket: src, prefix: "builds/"}
        destination: {bucket: missing-bucket, prefix: ""}
        interval_secs: 86400
        enabled: false
      - name: auto
        source: {bucket: src, prefix: "auto/"}
        destination: {bucket: dst, prefix: "auto-copy/"}
        interval_secs: 1
"#;

#[tokio::test]
async fn replication_rules_copy_skip_pause_and_record() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg.yaml");
    std::fs::write(&cfg, YAML).unwrap();
    let hash = bcrypt::hash("pw", 4).unwrap();
    let p = start_proxy_in(
        dir.path(),
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
    let rule = |name: &str, op: &str| format!("{base}/_/api/admin/replication/rules/{name}/{op}");
    let r = http
        .get(format!("{base}/_/api/admin/replication"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let cookie = admin_login(&base, "pw").await;

    let c = p.client();
    for b in ["src", "dst"] {
        c.create_bucket().bucket(b).send().await.unwrap();
    }
    let v1 = bytes(91, 300_000);
    let v2 = mutate(&v1, 92);
    let plain = bytes(93, 50_000);
    put_bytes(&c, "src", "builds/app-1.zip", &v1).await;
    put_bytes(&c, "src", "builds/app-2.zip", &v2).await;
    put_bytes(&c, "src", "builds/notes.bin", &plain).await;
    put_bytes(&c, "src", "other/ignored.bin", b"outside the prefix").await;

    let (s, st) = admin_call(
        Method::GET,
        format!("{base}/_/api/admin/replication"),
        &cookie,
        None,
    )
    .await;
    assert_eq!(s, 200, "{st}");
    let names: Vec<&str> = st["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["auto", "broken", "mirror"]);

    // First run copies the three objects under the prefix, through the engine.
    let (s, run) = admin_call(Method::POST, rule("mirror", "run-now"), &cookie, None).await;
    assert_eq!(s, 200, "{run}");
    assert_eq!(
        (
            &run["scanned"],
            &run["copied"],
            &run["skipped"],
            &run["failed"]
        ),
        (&json!(3), &json!(3), &json!(0), &json!(0)),
        "{run}"
    );
    assert_eq!(get_bytes(&c, "dst", "mirror/app-1.zip").await, v1);
    assert_eq!(get_bytes(&c, "dst", "mirror/app-2.zip").await, v2);
    assert_eq!(get_bytes(&c, "dst", "mirror/notes.bin").await, plain);
    let stored = files_under(&p.bucket_dir("dst"));
    assert_eq!(
        stored,
        vec![
            "mirror/app-1.zip.delta",
            "mirror/app-2.zip.delta",
            "mirror/notes.bin",
            "mirror/reference.bin"
        ],
        "the destination stores deltas"
    );
    let delta = std::fs::metadata(p.bucket_dir("dst").join("mirror/app-2.zip.delta")).unwrap();
    assert!(delta.len() < v2.len() as u64 / 10);

    // Second run: destination ETags match, nothing copied.
    let (_, run) = admin_call(Method::POST, rule("mirror", "run-now"), &cookie, None).await;
    assert_eq!(
        (&run["copied"], &run["skipped"]),
        (&json!(0), &json!(3)),
        "{run}"
    );
    // A changed source object is copied again.
    let v3 = mutate(&v2, 94);
    put_bytes(&c, "src", "builds/app-2.zip", &v3).await;
    let (_, run) = admin_call(Method::POST, rule("mirror", "run-now"), &cookie, None).await;
    assert_eq!(
        (&run["copied"], &run["skipped"]),
        (&json!(1), &json!(2)),
        "{run}"
    );
    assert_eq!(get_bytes(&c, "dst", "mirror/app-2.zip").await, v3);

    // Pause: run-now is 409 until resume.
    let (s, v) = admin_call(Method::POST, rule("mirror", "pause"), &cookie, None).await;
    assert_eq!((s, &v["paused"]), (200, &json!(true)), "{v}");
    let (s, v) = admin_call(Method::POST, rule("mirror", "run-now"), &cookie, None).await;
    assert_eq!(s, 409, "{v}");
    let (_, st) = admin_call(
        Method::GET,
        format!("{base}/_/api/admin/replication"),
        &cookie,
        None,
    )
    .await;
    let mirror = st["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "mirror")
        .unwrap()
        .clone();
    assert_eq!(mirror["paused"], true, "{mirror}");
    assert_eq!(mirror["last_run"]["copied"], 1, "{mirror}");
    let (s, _) = admin_call(Method::POST, rule("mirror", "resume"), &cookie, None).await;
    assert_eq!(s, 200);
    let (s, _) = admin_call(Method::POST, rule("mirror", "run-now"), &cookie, None).await;
    assert_eq!(s, 200);

    // History: newest first, limited.
    let (s, h) = admin_call(
        Method::GET,
        format!("{}?limit=2", rule("mirror", "history")),
        &cookie,
        None,
    )
    .await;
    assert_eq!(s, 200, "{h}");
    let h = h["history"].as_array().unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!((&h[0]["skipped"], &h[1]["copied"]), (&json!(3), &json!(1)));
    assert_eq!(h[0]["trigger"], "manual");

    // Failures: a destination bucket that does not exist.
    let (s, run) = admin_call(Method::POST, rule("broken", "run-now"), &cookie, None).await;
    assert_eq!(s, 200, "{run}");
    assert_eq!(
        (&run["failed"], &run["copied"]),
        (&json!(3), &json!(0)),
        "{run}"
    );
    let (s, f) = admin_call(
        Method::GET,
        format!("{}?limit=2", rule("broken", "failures")),
        &cookie,
        None,
    )
    .await;
    assert_eq!(s, 200, "{f}");
    let f = f["failures"].as_array().unwrap();
    assert_eq!(f.len(), 2);
    assert!(f[0]["error"].as_str().unwrap().contains("bucket"), "{f:?}");
    let (s, _) = admin_call(Method::POST, rule("nope", "run-now"), &cookie, None).await;
    assert_eq!(s, 404);
    let (s, _) = admin_call(Method::GET, rule("nope", "history"), &cookie, None).await;
    assert_eq!(s, 404);

    // The interval rule copies by itself (waits for a scheduled run, bounded).
    put_bytes(&c, "src", "auto/a.bin", b"scheduled copy").await;
    let mut copied = false;
    for _ in 0..120 {
        let (_, h) = admin_call(Method::GET, rule("auto", "history"), &cookie, None).await;
        if h["history"].as_array().is_some_and(|h| {
            h.iter()
                .any(|r| r["trigger"] == "schedule" && r["copied"] == 1)
        }) {
            copied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        copied,
        "no scheduled run copied the object:\n{}",
        p.proc.logs()
    );
    assert_eq!(
        get_bytes(&c, "dst", "auto-copy/a.bin").await,
        b"scheduled copy"
    );
}

const YAML_DELETES: &str = r#"
storage:
  replication:
    rules:
      - name: mirror
        source: {bucket: src, prefix: "builds/"}
        destination: {bucket: dst, prefix: "mirror/"}
        interval_secs: 86400
        replicate_deletes: true
      - name: keep
        source: {bucket: src, prefix: "builds/"}
        destination: {bucket: dst, prefix: "keep/"}
        interval_secs: 86400
"#;

/// Starts the proxy on `dir` (same config, same bootstrap hash: the config store is sealed
/// with a key derived from it).
async fn start_on(dir: &std::path::Path, hash: &str) -> Proxy {
    let cfg = dir.join("cfg.yaml");
    std::fs::write(&cfg, YAML_DELETES).unwrap();
    start_proxy_in(
        dir,
        None,
        &[
            ("DGP_CONFIG", cfg.to_str().unwrap().to_string()),
            ("DGP_BOOTSTRAP_PASSWORD_HASH", hash.to_string()),
            ("DGP_SECURE_COOKIES", "false".into()),
        ],
        None,
    )
    .await
}

async fn rule_status(base: &str, cookie: &str, name: &str) -> Value {
    let (s, st) = admin_call(
        Method::GET,
        format!("{base}/_/api/admin/replication"),
        cookie,
        None,
    )
    .await;
    assert_eq!(s, 200, "{st}");
    st["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no rule {name}: {st}"))
        .clone()
}

/// `POST …/replication/rules/{name}/run-now`: the status and the run record (or error).
async fn run_now(base: &str, cookie: &str, name: &str) -> (u16, Value) {
    let url = format!("{base}/_/api/admin/replication/rules/{name}/run-now");
    admin_call(Method::POST, url, cookie, None).await
}

async fn delete(c: &aws_sdk_s3::Client, bucket: &str, key: &str) {
    c.delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
}

async fn exists(c: &aws_sdk_s3::Client, bucket: &str, key: &str) -> bool {
    match c.head_object().bucket(bucket).key(key).send().await {
        Ok(_) => true,
        Err(e) => {
            let status = e.raw_response().map(|r| r.status().as_u16());
            assert_eq!(status, Some(404), "HEAD {bucket}/{key}: {e:?}");
            false
        }
    }
}

#[tokio::test]
async fn replication_deletes_and_state_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("pw", 4).unwrap();
    let p = start_on(dir.path(), &hash).await;
    let http = reqwest::Client::new();
    let base = p.url();
    let rule = |base: &str, name: &str, op: &str| {
        format!("{base}/_/api/admin/replication/rules/{name}/{op}")
    };
    let cookie = admin_login(&base, "pw").await;
    let c = p.client();
    for b in ["src", "dst"] {
        c.create_bucket().bucket(b).send().await.unwrap();
    }
    let v1 = bytes(101, 200_000);
    let v2 = mutate(&v1, 102);
    put_bytes(&c, "src", "builds/a.zip", &v1).await;
    put_bytes(&c, "src", "builds/b.zip", &v2).await;
    // Destination objects the rule must never touch: outside its prefix, and beside it.
    put_bytes(&c, "dst", "other/outside.bin", b"not replicated").await;
    put_bytes(&c, "dst", "mirrored.bin", b"prefix-alike, outside").await;

    assert_eq!(
        rule_status(&base, &cookie, "mirror").await["replicate_deletes"],
        true
    );
    assert_eq!(
        rule_status(&base, &cookie, "keep").await["replicate_deletes"],
        false
    );
    // The config dry run checks the field's type (an unknown field would be ignored), and the
    // export carries it.
    for (yaml, ok) in [
        (YAML_DELETES.to_string(), true),
        (
            YAML_DELETES.replace("replicate_deletes: true", "replicate_deletes: sure"),
            false,
        ),
    ] {
        let r = http
            .post(format!("{base}/_/api/admin/config/validate"))
            .header("cookie", &cookie)
            .json(&json!({ "yaml": yaml }))
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["ok"], ok, "{v}");
    }
    let export = admin_get(
        format!("{base}/_/api/admin/config/export?section=storage"),
        &cookie,
    )
    .await
    .text()
    .await
    .unwrap();
    assert_eq!(
        export.matches("replicate_deletes: true").count(),
        1,
        "{export}"
    );
    // `false` is the default, and defaults are left out of canonical exports.
    assert_eq!(
        export.matches("replicate_deletes: false").count(),
        0,
        "{export}"
    );
    for name in ["mirror", "keep"] {
        let (s, run) = run_now(&base, &cookie, name).await;
        assert_eq!(s, 200, "{run}");
        assert_eq!(
            (&run["copied"], &run["deleted"], &run["failed"]),
            (&json!(2), &json!(0), &json!(0)),
            "{run}"
        );
    }

    // A source delete: the opted-in rule removes its copy, the default rule keeps it.
    delete(&c, "src", "builds/a.zip").await;
    let (s, run) = run_now(&base, &cookie, "mirror").await;
    assert_eq!(s, 200, "{run}");
    assert_eq!(
        (
            &run["scanned"],
            &run["skipped"],
            &run["deleted"],
            &run["failed"]
        ),
        (&json!(1), &json!(1), &json!(1), &json!(0)),
        "{run}"
    );
    assert!(run.get("error").is_none(), "{run}");
    assert!(!exists(&c, "dst", "mirror/a.zip").await);
    assert_eq!(get_bytes(&c, "dst", "mirror/b.zip").await, v2);
    assert_eq!(
        get_bytes(&c, "dst", "other/outside.bin").await,
        b"not replicated"
    );
    assert_eq!(
        get_bytes(&c, "dst", "mirrored.bin").await,
        b"prefix-alike, outside"
    );
    let (s, run) = run_now(&base, &cookie, "keep").await;
    assert_eq!(s, 200, "{run}");
    assert_eq!(
        (&run["scanned"], &run["deleted"]),
        (&json!(1), &json!(0)),
        "{run}"
    );
    assert_eq!(get_bytes(&c, "dst", "keep/a.zip").await, v1);

    // Deleting the last source object goes through the engine: the destination deltaspace
    // loses its reference too.
    delete(&c, "src", "builds/b.zip").await;
    let (_, run) = run_now(&base, &cookie, "mirror").await;
    assert_eq!(
        (&run["scanned"], &run["deleted"]),
        (&json!(0), &json!(1)),
        "{run}"
    );
    let stored = files_under(&p.bucket_dir("dst"));
    assert!(
        !stored.iter().any(|f| f.starts_with("mirror/")),
        "{stored:?}"
    );
    assert!(
        stored.contains(&"other/outside.bin".to_string()),
        "{stored:?}"
    );
    assert!(
        stored.iter().any(|f| f.starts_with("keep/a.zip")),
        "{stored:?}"
    );

    // Pause, then kill -9 and restart on the same data dir: still paused, history kept.
    let (s, v) = admin_call(Method::POST, rule(&base, "mirror", "pause"), &cookie, None).await;
    assert_eq!((s, &v["paused"]), (200, &json!(true)), "{v}");
    drop(p);
    let p = start_on(dir.path(), &hash).await;
    let base = p.url();
    let cookie = admin_login(&base, "pw").await;
    let mirror = rule_status(&base, &cookie, "mirror").await;
    assert_eq!(mirror["paused"], true, "{mirror}");
    assert_eq!(mirror["last_run"]["deleted"], 1, "{mirror}");
    assert_eq!(rule_status(&base, &cookie, "keep").await["paused"], false);
    let (s, v) = run_now(&base, &cookie, "mirror").await;
    assert_eq!(s, 409, "{v}");
    let (s, h) = admin_call(Method::GET, rule(&base, "mirror", "history"), &cookie, None).await;
    assert_eq!(s, 200, "{h}");
    let deleted: Vec<&Value> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["deleted"])
        .collect();
    assert_eq!(deleted, vec![&json!(1), &json!(1), &json!(0)], "{h}");
    let (_, h) = admin_call(Method::GET, rule(&base, "keep", "history"), &cookie, None).await;
    assert_eq!(h["history"].as_array().unwrap().len(), 2, "{h}");

    // Resume is durable too.
    let (s, _) = admin_call(Method::POST, rule(&base, "mirror", "resume"), &cookie, None).await;
    assert_eq!(s, 200);
    drop(p);
    let p = start_on(dir.path(), &hash).await;
    let base = p.url();
    let cookie = admin_login(&base, "pw").await;
    assert_eq!(rule_status(&base, &cookie, "mirror").await["paused"], false);
    let (s, run) = run_now(&base, &cookie, "mirror").await;
    assert_eq!((s, &run["deleted"]), (200, &json!(0)), "{run}");

    // A corrupt state file is a warning and an empty state, never a start failure.
    let (s, _) = admin_call(Method::POST, rule(&base, "mirror", "pause"), &cookie, None).await;
    assert_eq!(s, 200);
    drop(p);
    let state = dir.path().join("replication_state.json");
    assert!(state.exists());
    std::fs::write(&state, b"{ not json").unwrap();
    let p = start_on(dir.path(), &hash).await;
    let base = p.url();
    let cookie = admin_login(&base, "pw").await;
    let mirror = rule_status(&base, &cookie, "mirror").await;
    assert_eq!(
        (&mirror["paused"], &mirror["last_run"]),
        (&json!(false), &Value::Null),
        "{mirror}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("replication_state.json.corrupt")).unwrap(),
        b"{ not json"
    );
    assert!(
        p.proc.logs().contains("replication state corrupt"),
        "{}",
        p.proc.logs()
    );
}
