//! Behaviours the digest and guide state in one line each, driven through the real binary:
//! internals cannot be deleted, directory markers, any region in the credential scope, the
//! debug headers only on request, the IAM-filtered LIST header, per-bucket
//! `max_delta_ratio`, If-Modified-Since, the `Secure` cookie default, and the start-up
//! refusals (`..` in the data dir, a non-http S3 endpoint, no credentials at all).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Headers of a presigned GET (the SDK hides the ones it does not model).
async fn get_headers(
    c: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> reqwest::header::HeaderMap {
    let url = presigned_get(c, bucket, key).await;
    let r = reqwest::get(url).await.unwrap();
    assert_eq!(r.status(), 200);
    r.headers().clone()
}

const YAML: &str = r#"
access:
  iam_mode: declarative
  iam_users:
    - name: scoped
      access_key_id: SCOPEDAK
      secret_access_key: SCOPEDSECRET
      permissions:
        - {actions: [read, list], resources: ["edge/mine/*"]}
storage:
  buckets:
    strict:
      max_delta_ratio: 0.0001
"#;

#[tokio::test]
async fn one_line_behaviours_of_the_s3_surface() {
    let p = start_proxy_with_yaml(YAML, &[]).await;
    let c = p.client();
    for b in ["edge", "strict"] {
        c.create_bucket().bucket(b).send().await.unwrap();
    }
    let v1 = bytes(21, 300_000);
    let v2 = mutate(&v1, 22);
    put_bytes(&c, "edge", "rel/app-1.zip", &v1).await;
    put_bytes(&c, "edge", "rel/app-2.zip", &v2).await;

    // Internals cannot be deleted through the API: a client deleting them would break every
    // delta of the deltaspace.
    for internal in ["rel/reference.bin", "rel/app-2.zip.delta"] {
        let e = c
            .delete_object()
            .bucket("edge")
            .key(internal)
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            code(&e.into_service_error()),
            "InvalidArgument",
            "{internal}"
        );
    }
    assert_eq!(get_bytes(&c, "edge", "rel/app-2.zip").await, v2);

    // A key segment longer than a file name can be is the client's error, not a 500.
    let long = format!("rel/{}.bin", "a".repeat(300));
    let e = c
        .put_object()
        .bucket("edge")
        .key(&long)
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(400));
    assert_eq!(code(&e.into_service_error()), "KeyTooLongError");

    // Debug headers (the test proxies run with DGP_DEBUG_HEADERS=true).
    let h = get_headers(&c, "edge", "rel/app-2.zip").await;
    assert_eq!(h["x-amz-storage-type"], "delta");
    assert!(h.contains_key("x-deltaglider-stored-size"));
    assert_eq!(
        get_headers(&c, "edge", "rel/app-1.zip").await["x-amz-storage-type"],
        "delta"
    );

    // Per-bucket max_delta_ratio: nothing is similar enough in `strict`.
    put_bytes(&c, "strict", "rel/app-1.zip", &v1).await;
    put_bytes(&c, "strict", "rel/app-2.zip", &v2).await;
    assert_eq!(
        get_headers(&c, "strict", "rel/app-2.zip").await["x-amz-storage-type"],
        "passthrough"
    );

    // Directory markers: a zero-byte key ending in `/`.
    c.put_object()
        .bucket("edge")
        .key("dir/")
        .body(Vec::new().into())
        .send()
        .await
        .unwrap();
    let head = c
        .head_object()
        .bucket("edge")
        .key("dir/")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("application/x-directory"));
    assert_eq!(head.content_length(), Some(0));

    // If-Modified-Since after the write: 304.
    let later = aws_smithy_types::DateTime::from_secs(
        (std::time::SystemTime::now() + Duration::from_secs(3600))
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
    );
    let e = c
        .get_object()
        .bucket("edge")
        .key("rel/app-1.zip")
        .if_modified_since(later)
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(304));

    // Any region in the credential scope is accepted.
    let eu = aws_sdk_s3::Client::from_conf(
        c.config()
            .to_builder()
            .region(aws_sdk_s3::config::Region::new("eu-central-1"))
            .build(),
    );
    assert_eq!(get_bytes(&eu, "edge", "rel/app-1.zip").await, v1);

    // A LIST filtered by IAM scope says so; an unfiltered one does not.
    put_bytes(&c, "edge", "mine/a.txt", b"a").await;
    let list = |client: aws_sdk_s3::Client| async move {
        let hdr = RawResponse::default();
        let out = client
            .list_objects_v2()
            .bucket("edge")
            .customize()
            .interceptor(hdr.clone())
            .send()
            .await
            .unwrap();
        let keys: Vec<String> = out
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect();
        let flag = hdr.header("x-amz-meta-dg-list-filtered");
        (keys, flag)
    };
    let (keys, flag) = list(p.client_as("SCOPEDAK", "SCOPEDSECRET")).await;
    assert_eq!(keys, ["mine/a.txt"]);
    assert_eq!(flag.as_deref(), Some("true"));
    let (keys, flag) = list(c.clone()).await;
    assert!(keys.len() > 1);
    assert_eq!(flag, None);

    // Without DGP_DEBUG_HEADERS the debug headers are absent.
    drop(p);
    let dir2 = tempfile::tempdir().unwrap();
    let q = start_proxy_in(
        dir2.path(),
        None,
        &[("DGP_DEBUG_HEADERS", "false".into())],
        None,
    )
    .await;
    let c2 = q.client();
    c2.create_bucket().bucket("plain").send().await.unwrap();
    put_bytes(&c2, "plain", "x.zip", &v1).await;
    let h = get_headers(&c2, "plain", "x.zip").await;
    assert!(!h.contains_key("x-amz-storage-type"), "{h:?}");
}

#[tokio::test]
async fn admin_cookies_are_secure_by_default() {
    let hash = bcrypt::hash("pw-secure", 4).unwrap();
    let p = start_proxy(None, &[("DGP_BOOTSTRAP_PASSWORD_HASH", hash)]).await;
    let r = admin_login_response(&p.url(), "pw-secure").await;
    assert_eq!(r.status(), 200);
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("dgp_session="))
        .unwrap()
        .to_string();
    assert!(
        cookie.contains("Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
}

/// Runs the binary with `env` (and nothing inherited that would configure it) until it
/// exits; returns its exit success and stderr.
fn start_and_fail(env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(proxy_bin());
    cmd.current_dir(dir.path())
        .env_remove("DGP_CONFIG")
        .env_remove("DGP_ACCESS_KEY_ID")
        .env_remove("DGP_SECRET_ACCESS_KEY")
        .env_remove("DGP_AUTHENTICATION")
        .env_remove("DGP_S3_ENDPOINT")
        .env(
            "DGP_LISTEN_ADDR",
            format!("127.0.0.1:{}", scai_testkit::free_port()),
        )
        .env("DGP_DATA_DIR", dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read as _;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.success(), err);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the proxy kept running with {env:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn start_up_refuses_unsafe_or_incomplete_configuration() {
    let creds = [("DGP_ACCESS_KEY_ID", "AK"), ("DGP_SECRET_ACCESS_KEY", "SK")];
    let (ok, err) = start_and_fail(&[creds[0], creds[1], ("DGP_DATA_DIR", "/tmp/x/../y")]);
    assert!(!ok && err.contains(".."), "{err}");
    let (ok, err) = start_and_fail(&[creds[0], creds[1], ("DGP_S3_ENDPOINT", "ftp://host:21")]);
    assert!(!ok && err.contains("http://"), "{err}");
    // Neither credentials nor DGP_AUTHENTICATION=none: refusing beats running open.
    let (ok, err) = start_and_fail(&[]);
    assert!(!ok && err.contains("DGP_AUTHENTICATION"), "{err}");
}

/// The operator knobs the guide names, each changing what it says: the audit ring's size,
/// the clock-skew tolerance, the codec slots gauge, and the warning for an encryption key
/// kept in the YAML.
#[tokio::test]
async fn operator_knobs_take_effect() {
    let key = "ab".repeat(32);
    let pw = "knobs-pw";
    let mut env = bootstrap_env(pw);
    env.extend([
        ("DGP_AUDIT_RING_SIZE", "3".into()),
        ("DGP_CLOCK_SKEW_SECONDS", "7200".into()),
        ("DGP_CODEC_CONCURRENCY", "3".into()),
    ]);
    let p = start_proxy_with_yaml(
        &format!("storage:\n  backend_encryption: {{mode: aes256-gcm-proxy, key: \"{key}\"}}\n"),
        &env,
    )
    .await;
    assert!(
        p.proc
            .logs()
            .contains("encryption key was loaded from config file (not DGP_*_ENCRYPTION_KEY)"),
        "{}",
        p.proc.logs()
    );
    // A client an hour off is inside a two-hour tolerance.
    let skewed = aws_sdk_s3::Client::from_conf(
        p.client()
            .config()
            .to_builder()
            .time_source(aws_smithy_async::time::StaticTimeSource::new(
                std::time::SystemTime::now() - Duration::from_secs(3600),
            ))
            .build(),
    );
    skewed.list_buckets().send().await.unwrap();
    // Five denials, a ring of three.
    for _ in 0..5 {
        let _ = reqwest::get(format!("{}/nobucket/x", p.url()))
            .await
            .unwrap();
    }
    let cookie = admin_login(&p.url(), pw).await;
    let (_, audit) = admin_call(
        reqwest::Method::GET,
        format!("{}/_/api/admin/audit?limit=100", p.url()),
        &cookie,
        None,
    )
    .await;
    assert_eq!(
        audit["entries"].as_array().map(Vec::len),
        Some(3),
        "{audit}"
    );
    let m = p.metrics().await;
    assert!(
        m.lines()
            .any(|l| l == "deltaglider_codec_semaphore_available 3"),
        "{m}"
    );
}
