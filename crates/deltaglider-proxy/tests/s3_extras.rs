//! The S3 extras against the real proxy binary, on the filesystem backend and on the
//! upstream-S3 backend: PostObject browser uploads (policies made by botocore's
//! `generate_presigned_post`, posted as real multipart forms), per-bucket quotas, canned
//! ACL / NotImplemented stubs, `HEAD /`, recursive prefix delete, ListBuckets
//! prefix/max-buckets, GET response-header overrides and conditional PUT.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder;
use aws_sdk_s3::primitives::ByteStream;
use common::*;

const YAML: &str = r#"
access:
  iam_users:
    - name: uploader
      access_key_id: UPLOADERAK
      secret_access_key: UPLOADERSECRET
      permissions:
        - effect: Allow
          actions: [read, write, list]
          resources: ["posts/uploads/*"]
storage:
  buckets:
    quota-b:
      quota_bytes: 1000
    frozen:
      quota_bytes: 0
"#;

async fn start(up: Option<&S3sFs>) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("extras.yaml");
    std::fs::write(&cfg, YAML).unwrap();
    let data = dir.path().to_path_buf();
    start_proxy_in(
        &data,
        up,
        &[("DGP_CONFIG", cfg.to_str().unwrap().to_string())],
        Some(dir),
    )
    .await
}

/// Keys a plain (admin) listing shows under `prefix`.
async fn keys(c: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    c.list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .map(|o| o.key().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------
// PostObject

/// Python with botocore (installed with awscli, which CI installs).
fn python() -> Option<PathBuf> {
    if scai_testkit::services::skip("s3_extras post_object") {
        return None;
    }
    let py = scai_testkit::services::program("DGP_TEST_PYTHON", "python3")
        .expect("python3 not found (or set SCAI_TEST_SKIP_SERVICES=1)");
    let ok = Command::new(&py)
        .args(["-c", "import botocore"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{}: botocore is missing (pip install awscli), or set SCAI_TEST_SKIP_SERVICES=1",
        py.display()
    );
    Some(py)
}

/// botocore's `generate_presigned_post` for each (name, key, fields, conditions) spec:
/// {name: {url, fields}}.
fn presigned_posts(
    py: &Path,
    p: &Proxy,
    ak: &str,
    sk: &str,
    bucket: &str,
    specs: serde_json::Value,
) -> serde_json::Value {
    const SCRIPT: &str = r#"
import json, sys, botocore.session
endpoint, ak, sk, bucket, specs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
s = botocore.session.get_session()
c = s.create_client("s3", region_name="us-east-1", endpoint_url=endpoint,
                    aws_access_key_id=ak, aws_secret_access_key=sk,
                    config=botocore.config.Config(s3={"addressing_style": "path"}, signature_version="s3v4"))
out = {}
for name, spec in specs.items():
    out[name] = c.generate_presigned_post(bucket, spec["key"], Fields=spec.get("fields"),
                                          Conditions=spec.get("conditions"), ExpiresIn=600)
print(json.dumps(out))
"#;
    let out = Command::new(py)
        .args(["-c", SCRIPT, &p.url(), ak, sk, bucket, &specs.to_string()])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "generate_presigned_post failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// POSTs the form the way a browser does: the policy's fields, then the file part last.
async fn post_form(
    post: &serde_json::Value,
    overrides: &[(&str, &str)],
    filename: &str,
    data: Vec<u8>,
) -> (u16, http::HeaderMap, String) {
    let mut form = reqwest::multipart::Form::new();
    let fields = post["fields"].as_object().unwrap();
    for (k, v) in fields {
        let v = overrides
            .iter()
            .find(|(ok, _)| ok == k)
            .map(|(_, ov)| ov.to_string())
            .unwrap_or_else(|| v.as_str().unwrap().to_string());
        form = form.text(k.clone(), v);
    }
    form = form.part(
        "file",
        reqwest::multipart::Part::bytes(data)
            .file_name(filename.to_string())
            .mime_str("application/octet-stream")
            .unwrap(),
    );
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(post["url"].as_str().unwrap())
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

fn xml_code(body: &str) -> &str {
    body.split_once("<Code>")
        .and_then(|(_, r)| r.split_once("</Code>"))
        .map(|(c, _)| c)
        .unwrap_or("")
}

async fn post_object_suite(p: &Proxy, py: &Path) {
    let c = p.client();
    c.create_bucket().bucket("posts").send().await.unwrap();
    let conds = serde_json::json!([
        {"Content-Type": "application/zip"},
        {"x-amz-meta-origin": "browser"},
        {"success_action_status": "201"},
        ["content-length-range", 1, 300000],
    ]);
    let fields = serde_json::json!({
        "Content-Type": "application/zip",
        "x-amz-meta-origin": "browser",
        "success_action_status": "201",
    });
    let posts = presigned_posts(
        py,
        p,
        AK,
        SK,
        "posts",
        serde_json::json!({
            "upload": {"key": "uploads/${filename}", "fields": fields, "conditions": conds},
            "small": {"key": "uploads/${filename}", "conditions": [["content-length-range", 1, 100]]},
            "redirect": {"key": "uploads/r.txt",
                         "fields": {"success_action_redirect": "http://example.invalid/done"},
                         "conditions": [{"success_action_redirect": "http://example.invalid/done"}]},
        }),
    );

    // A browser upload: ${filename} is substituted, 201 answers a PostResponse, and the
    // object stored through the engine reads back byte-identical through aws-sdk-s3.
    let v1 = bytes(71, 200_000);
    let (s, _, body) = post_form(&posts["upload"], &[], "app-1.zip", v1.clone()).await;
    assert_eq!(s, 201, "{body}");
    assert!(body.contains("<Key>uploads/app-1.zip</Key>"), "{body}");
    assert!(body.contains("<Bucket>posts</Bucket>"), "{body}");
    assert_eq!(get_bytes(&c, "posts", "uploads/app-1.zip").await, v1);
    let h = c
        .head_object()
        .bucket("posts")
        .key("uploads/app-1.zip")
        .send()
        .await
        .unwrap();
    assert_eq!(h.content_type(), Some("application/zip"));
    assert_eq!(
        h.metadata().unwrap().get("origin").map(String::as_str),
        Some("browser")
    );
    // Same engine path as PutObject: the next version of an artifact becomes a delta.
    let v2 = mutate(&v1, 72);
    let (s, _, body) = post_form(&posts["upload"], &[], "app-2.zip", v2.clone()).await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(get_bytes(&c, "posts", "uploads/app-2.zip").await, v2);
    let stored: u64 = c
        .head_object()
        .bucket("posts")
        .key("uploads/app-2.zip")
        .send()
        .await
        .unwrap()
        .metadata()
        .and_then(|m| m.get("dg-note").cloned())
        .map(|n| (n == "delta") as u64)
        .unwrap_or(0);
    assert_eq!(stored, 1, "the second version is stored as a delta");

    // A tampered policy (a bigger size range, same signature) fails the signature check.
    let policy = posts["upload"]["fields"]["policy"].as_str().unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let json = String::from_utf8(b64.decode(policy).unwrap()).unwrap();
    let forged = b64.encode(json.replace("300000", "900000000"));
    let (s, _, body) = post_form(
        &posts["upload"],
        &[("policy", &forged)],
        "x.zip",
        v1.clone(),
    )
    .await;
    assert_eq!(
        (s, xml_code(&body)),
        (403, "SignatureDoesNotMatch"),
        "{body}"
    );
    // A field that breaks a condition: AWS's 403 "Invalid according to Policy".
    let (s, _, body) = post_form(
        &posts["upload"],
        &[("Content-Type", "text/html")],
        "x.zip",
        v1.clone(),
    )
    .await;
    assert_eq!((s, xml_code(&body)), (403, "AccessDenied"), "{body}");
    assert!(body.contains("Invalid according to Policy"), "{body}");
    // Over content-length-range: EntityTooLarge, and nothing stored.
    let (s, _, body) = post_form(&posts["small"], &[], "big.bin", vec![7u8; 1000]).await;
    assert_eq!((s, xml_code(&body)), (400, "EntityTooLarge"), "{body}");
    assert!(!keys(&c, "posts", "uploads/big")
        .await
        .iter()
        .any(|k| k == "uploads/big.bin"));
    // success_action_redirect: 303 to the URL with bucket, key and etag.
    let (s, h, body) = post_form(&posts["redirect"], &[], "r.txt", b"hello".to_vec()).await;
    assert_eq!(s, 303, "{body}");
    let loc = h.get("location").unwrap().to_str().unwrap();
    assert!(
        loc.starts_with("http://example.invalid/done?") && loc.contains("key=uploads%2Fr.txt"),
        "{loc}"
    );
    assert_eq!(get_bytes(&c, "posts", "uploads/r.txt").await, b"hello");
    // Default success status: 204.
    let (s, _, body) = post_form(&posts["small"], &[], "tiny.txt", b"tiny".to_vec()).await;
    assert_eq!(s, 204, "{body}");

    // IAM on the final key: "uploader" may write posts/uploads/* only.
    let posts_u = presigned_posts(
        py,
        p,
        "UPLOADERAK",
        "UPLOADERSECRET",
        "posts",
        serde_json::json!({
            "inside": {"key": "uploads/${filename}"},
            "outside": {"key": "elsewhere/${filename}"},
        }),
    );
    let (s, _, body) = post_form(&posts_u["inside"], &[], "u.txt", b"mine".to_vec()).await;
    assert_eq!(s, 204, "{body}");
    assert_eq!(get_bytes(&c, "posts", "uploads/u.txt").await, b"mine");
    let (s, _, body) = post_form(&posts_u["outside"], &[], "u.txt", b"nope".to_vec()).await;
    assert_eq!((s, xml_code(&body)), (403, "AccessDenied"), "{body}");
    assert!(keys(&c, "posts", "elsewhere/").await.is_empty());

    // The quota applies to browser uploads too.
    c.create_bucket().bucket("frozen").send().await.unwrap();
    let frozen = presigned_posts(
        py,
        p,
        AK,
        SK,
        "frozen",
        serde_json::json!({"f": {"key": "f.txt"}}),
    );
    let (s, _, body) = post_form(&frozen["f"], &[], "f.txt", b"x".to_vec()).await;
    assert_eq!((s, xml_code(&body)), (403, "QuotaExceeded"), "{body}");

    // Metrics count it under operation="post_object".
    let m = p.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("deltaglider_http_requests_total")
                && l.contains("operation=\"post_object\"")
                && l.contains("method=\"POST\"")),
        "no post_object series in metrics"
    );
}

#[tokio::test]
async fn post_object_on_filesystem_backend() {
    let Some(py) = python() else { return };
    let p = start(None).await;
    post_object_suite(&p, &py).await;
}

#[tokio::test]
async fn post_object_on_s3_backend() {
    let Some(py) = python() else { return };
    let Some(up) = S3sFs::start("post_object_on_s3_backend").await else {
        return;
    };
    let p = start(Some(&up)).await;
    post_object_suite(&p, &py).await;
}

// ---------------------------------------------------------------------------------------
// Quotas

/// A CompleteMultipartUpload body naming part 1 with this ETag.
fn part_one(etag: &str) -> aws_sdk_s3::types::CompletedMultipartUpload {
    aws_sdk_s3::types::CompletedMultipartUpload::builder()
        .parts(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(1)
                .e_tag(etag)
                .build(),
        )
        .build()
}

async fn quota_suite(p: &Proxy) {
    let c = p.client();
    c.create_bucket().bucket("quota-b").send().await.unwrap();
    c.create_bucket().bucket("frozen").send().await.unwrap();
    c.create_bucket().bucket("free").send().await.unwrap();
    put_bytes(&c, "free", "src.bin", &bytes(1, 700)).await;

    // quota_bytes: 0 freezes the bucket.
    let e = c
        .put_object()
        .bucket("frozen")
        .key("a.txt")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    let se = e.into_service_error();
    assert_eq!(code(&se), "QuotaExceeded");
    assert!(se.message().unwrap_or("").contains("quota"), "{se:?}");

    // 1000-byte soft quota: 600 + 600 both land (the check is before the write), then the
    // bucket is over and every kind of write is refused.
    put_bytes(&c, "quota-b", "a.bin", &bytes(2, 600)).await;
    put_bytes(&c, "quota-b", "b.bin", &bytes(3, 600)).await;
    let refused = |e: String| assert!(e.contains("QuotaExceeded"), "{e}");
    refused(format!(
        "{:?}",
        c.put_object()
            .bucket("quota-b")
            .key("c.bin")
            .body(b"x".to_vec().into())
            .send()
            .await
            .unwrap_err()
    ));
    refused(format!(
        "{:?}",
        c.copy_object()
            .bucket("quota-b")
            .key("c.bin")
            .copy_source("free/src.bin")
            .send()
            .await
            .unwrap_err()
    ));
    let mpu = c
        .create_multipart_upload()
        .bucket("quota-b")
        .key("m.bin")
        .send()
        .await
        .unwrap();
    let id = mpu.upload_id().unwrap();
    refused(format!(
        "{:?}",
        c.upload_part()
            .bucket("quota-b")
            .key("m.bin")
            .upload_id(id)
            .part_number(1)
            .body(ByteStream::from(b"part".to_vec()))
            .send()
            .await
            .unwrap_err()
    ));
    refused(format!(
        "{:?}",
        c.complete_multipart_upload()
            .bucket("quota-b")
            .key("m.bin")
            .upload_id(id)
            .multipart_upload(part_one("\"0123456789abcdef0123456789abcdef\""))
            .send()
            .await
            .unwrap_err()
    ));
    assert_eq!(keys(&c, "quota-b", "").await, vec!["a.bin", "b.bin"]);

    // Deletes give the room back (usage is adjusted, not rescanned), including a
    // recursive prefix delete.
    c.delete_object()
        .bucket("quota-b")
        .key("b.bin")
        .send()
        .await
        .unwrap();
    put_bytes(&c, "quota-b", "dir/c.bin", &bytes(4, 300)).await;
    c.copy_object()
        .bucket("quota-b")
        .key("dir/d.bin")
        .copy_source("free/src.bin")
        .send()
        .await
        .unwrap();
    refused(format!(
        "{:?}",
        c.put_object()
            .bucket("quota-b")
            .key("e.bin")
            .body(b"x".to_vec().into())
            .send()
            .await
            .unwrap_err()
    ));
    c.delete_object()
        .bucket("quota-b")
        .key("dir/")
        .send()
        .await
        .unwrap();
    // 600 bytes left: an overwrite of a.bin replaces its size rather than adding to it.
    put_bytes(&c, "quota-b", "a.bin", &bytes(5, 900)).await;
    put_bytes(&c, "quota-b", "a.bin", &bytes(6, 950)).await;
    // A conditional overwrite (which resolves the key for its precondition) replaces the
    // size too: were it added, the multipart below would be refused.
    c.put_object()
        .bucket("quota-b")
        .key("a.bin")
        .if_match("*")
        .body(bytes(8, 950).into())
        .send()
        .await
        .unwrap();
    // Multipart completes once there is room (usage 950 < 1000).
    let mpu = c
        .create_multipart_upload()
        .bucket("quota-b")
        .key("m.bin")
        .send()
        .await
        .unwrap();
    let id = mpu.upload_id().unwrap();
    let part = c
        .upload_part()
        .bucket("quota-b")
        .key("m.bin")
        .upload_id(id)
        .part_number(1)
        .body(ByteStream::from(b"part".to_vec()))
        .send()
        .await
        .unwrap();
    c.complete_multipart_upload()
        .bucket("quota-b")
        .key("m.bin")
        .upload_id(id)
        .multipart_upload(part_one(part.e_tag().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(get_bytes(&c, "quota-b", "m.bin").await, b"part");
    // 954 bytes: still under, one more lands, then refused.
    put_bytes(&c, "quota-b", "f.bin", &bytes(7, 100)).await;
    refused(format!(
        "{:?}",
        c.put_object()
            .bucket("quota-b")
            .key("g.bin")
            .body(b"x".to_vec().into())
            .send()
            .await
            .unwrap_err()
    ));
    // Buckets without a quota are unaffected.
    put_bytes(&c, "free", "big.bin", &bytes(8, 5000)).await;
}

#[tokio::test]
async fn quota_on_filesystem_backend() {
    let p = start(None).await;
    quota_suite(&p).await;
}

#[tokio::test]
async fn quota_on_s3_backend() {
    let Some(up) = S3sFs::start("quota_on_s3_backend").await else {
        return;
    };
    let p = start(Some(&up)).await;
    quota_suite(&p).await;
}

#[tokio::test]
async fn quota_usage_is_scanned_from_existing_objects_after_a_restart() {
    let mut p = start(None).await;
    let c = p.client();
    c.create_bucket().bucket("quota-b").send().await.unwrap();
    put_bytes(&c, "quota-b", "x/a.zip", &bytes(9, 1200)).await;
    let data = p.data.clone();
    let keep = p.keep.take();
    drop(p);
    let p = start_proxy_in(
        &data,
        None,
        &[(
            "DGP_CONFIG",
            data.join("extras.yaml").to_str().unwrap().to_string(),
        )],
        keep,
    )
    .await;
    let e = p
        .client()
        .put_object()
        .bucket("quota-b")
        .key("y.bin")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "QuotaExceeded");
}

// ---------------------------------------------------------------------------------------
// Stubs, HEAD /, prefix delete, ListBuckets, overrides, conditional PUT

async fn misc_suite(p: &Proxy, up: Option<&S3sFs>) {
    let c = p.client();
    c.create_bucket().bucket("misc").send().await.unwrap();
    put_bytes(&c, "misc", "o.txt", b"object").await;

    // HEAD / answers 200 (client probes), signed or not.
    let r = reqwest::Client::new()
        .head(format!("{}/", p.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Canned private ACL after an existence check.
    let acl = c.get_bucket_acl().bucket("misc").send().await.unwrap();
    assert_eq!(acl.owner().and_then(|o| o.id()), Some("deltaglider"));
    let g = acl.grants();
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].permission().map(|p| p.as_str()), Some("FULL_CONTROL"));
    assert_eq!(g[0].grantee().and_then(|g| g.id()), Some("deltaglider"));
    let e = c
        .get_bucket_acl()
        .bucket("no-such-misc")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "NoSuchBucket");
    let oacl = c
        .get_object_acl()
        .bucket("misc")
        .key("o.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(
        oacl.grants()[0].permission().map(|p| p.as_str()),
        Some("FULL_CONTROL")
    );
    let e = c
        .get_object_acl()
        .bucket("misc")
        .key("missing.txt")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "NoSuchKey");

    // ACL writes and tagging: explicit 501 NotImplemented.
    let ni = |e: String| assert!(e.contains("NotImplemented"), "{e}");
    let tagging = aws_sdk_s3::types::Tagging::builder()
        .tag_set(
            aws_sdk_s3::types::Tag::builder()
                .key("k")
                .value("v")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    ni(format!(
        "{:?}",
        c.put_bucket_acl()
            .bucket("misc")
            .acl("private".into())
            .send()
            .await
            .unwrap_err()
    ));
    ni(format!(
        "{:?}",
        c.put_object_acl()
            .bucket("misc")
            .key("o.txt")
            .acl("private".into())
            .send()
            .await
            .unwrap_err()
    ));
    ni(format!(
        "{:?}",
        c.get_bucket_tagging()
            .bucket("misc")
            .send()
            .await
            .unwrap_err()
    ));
    ni(format!(
        "{:?}",
        c.put_bucket_tagging()
            .bucket("misc")
            .tagging(tagging.clone())
            .send()
            .await
            .unwrap_err()
    ));
    ni(format!(
        "{:?}",
        c.get_object_tagging()
            .bucket("misc")
            .key("o.txt")
            .send()
            .await
            .unwrap_err()
    ));
    ni(format!(
        "{:?}",
        c.put_object_tagging()
            .bucket("misc")
            .key("o.txt")
            .tagging(tagging)
            .send()
            .await
            .unwrap_err()
    ));
    ni(format!(
        "{:?}",
        c.delete_object_tagging()
            .bucket("misc")
            .key("o.txt")
            .send()
            .await
            .unwrap_err()
    ));
    let raw = reqwest::Client::new()
        .get(format!("{}/misc/o.txt?tagging", p.url()))
        .send()
        .await
        .unwrap();
    assert_ne!(raw.status(), 200, "anonymous tagging call is not answered");

    // DeleteObject of "dir/" removes everything under it through the engine (deltas and
    // their reference included); neighbours stay; a missing key is a success.
    let v1 = bytes(11, 150_000);
    put_bytes(&c, "misc", "dir/a-1.zip", &v1).await;
    put_bytes(&c, "misc", "dir/a-2.zip", &mutate(&v1, 12)).await;
    put_bytes(&c, "misc", "dir/sub/n.txt", b"nested").await;
    c.put_object()
        .bucket("misc")
        .key("dir/sub/")
        .body(Vec::new().into())
        .send()
        .await
        .unwrap();
    put_bytes(&c, "misc", "dirx/keep.txt", b"keep").await;
    put_bytes(&c, "misc", "other/keep.txt", b"keep").await;
    let h = c
        .head_object()
        .bucket("misc")
        .key("dir/a-2.zip")
        .send()
        .await
        .unwrap();
    assert_eq!(
        h.metadata().unwrap().get("dg-note").map(String::as_str),
        Some("delta")
    );
    c.delete_object()
        .bucket("misc")
        .key("dir/")
        .send()
        .await
        .unwrap();
    assert_eq!(
        keys(&c, "misc", "").await,
        vec!["dirx/keep.txt", "o.txt", "other/keep.txt"]
    );
    c.delete_object()
        .bucket("misc")
        .key("never/was.txt")
        .send()
        .await
        .unwrap();
    let raw = signed_delete_status(p, "misc", "never/was.txt").await;
    assert_eq!(raw, 204);
    // The deltaspace is gone from storage too (no orphaned reference.bin).
    let stored: Vec<String> = match up {
        None => files_under(&p.bucket_dir("misc")),
        Some(u) => u
            .client()
            .list_objects_v2()
            .bucket("misc")
            .send()
            .await
            .unwrap()
            .contents()
            .iter()
            .map(|o| o.key().unwrap().to_string())
            .collect(),
    };
    assert!(!stored.iter().any(|k| k.starts_with("dir/")), "{stored:?}");
    assert!(stored.iter().any(|k| k.starts_with("dirx/")), "{stored:?}");

    // ListBuckets: prefix, max-buckets with a continuation token.
    for b in ["lb-a1", "lb-a2", "lb-a3", "lb-b1", "posts"] {
        c.create_bucket().bucket(b).send().await.unwrap();
    }
    let names = |o: &aws_sdk_s3::operation::list_buckets::ListBucketsOutput| -> Vec<String> {
        o.buckets()
            .iter()
            .map(|b| b.name().unwrap().to_string())
            .collect()
    };
    let all = c.list_buckets().prefix("lb-a").send().await.unwrap();
    assert_eq!(names(&all), vec!["lb-a1", "lb-a2", "lb-a3"]);
    let p1 = c
        .list_buckets()
        .prefix("lb-")
        .max_buckets(2)
        .send()
        .await
        .unwrap();
    assert_eq!(names(&p1), vec!["lb-a1", "lb-a2"]);
    let tok = p1.continuation_token().expect("truncated page has a token");
    let p2 = c
        .list_buckets()
        .prefix("lb-")
        .max_buckets(2)
        .continuation_token(tok)
        .send()
        .await
        .unwrap();
    assert_eq!(names(&p2), vec!["lb-a3", "lb-b1"]);
    assert_eq!(p2.continuation_token(), None);
    // IAM-filtered: "uploader" may list only inside posts/.
    let u = p.client_as("UPLOADERAK", "UPLOADERSECRET");
    let ub = u.list_buckets().send().await.unwrap();
    assert_eq!(names(&ub), vec!["posts"]);

    // GET response-header overrides.
    let out = c
        .get_object()
        .bucket("misc")
        .key("o.txt")
        .response_content_type("application/x-test")
        .response_content_disposition("attachment; filename=\"o.txt\"")
        .response_cache_control("no-store")
        .response_content_language("de")
        .response_content_encoding("identity")
        .response_expires(aws_smithy_types::DateTime::from_secs(1_900_000_000))
        .send()
        .await
        .unwrap();
    assert_eq!(out.content_type(), Some("application/x-test"));
    assert_eq!(
        out.content_disposition(),
        Some("attachment; filename=\"o.txt\"")
    );
    assert_eq!(out.cache_control(), Some("no-store"));
    assert_eq!(out.content_language(), Some("de"));
    assert_eq!(out.content_encoding(), Some("identity"));
    assert_eq!(out.expires_string(), Some("Sun, 17 Mar 2030 17:46:40 GMT"));
    assert_eq!(
        out.body.collect().await.unwrap().into_bytes().as_ref(),
        b"object"
    );
    // Without overrides the stored values come back.
    let plain = c
        .get_object()
        .bucket("misc")
        .key("o.txt")
        .send()
        .await
        .unwrap();
    assert_ne!(plain.content_type(), Some("application/x-test"));
    assert_eq!(plain.cache_control(), None);

    // Conditional PUT: If-None-Match: * refuses an overwrite, If-Match needs the ETag.
    let put = |key: &str, body: &[u8]| {
        c.put_object()
            .bucket("misc")
            .key(key)
            .body(body.to_vec().into())
    };
    let refused = |rq: PutObjectFluentBuilder| async move {
        let e = rq.send().await.unwrap_err();
        assert_eq!(code(&e.into_service_error()), "PreconditionFailed");
    };
    refused(put("o.txt", b"new").if_none_match("*")).await;
    put("fresh.txt", b"fresh")
        .if_none_match("*")
        .send()
        .await
        .unwrap();
    refused(put("o.txt", b"new").if_match("\"0123456789abcdef0123456789abcdef\"")).await;
    refused(put("absent.txt", b"new").if_match("*")).await;
    let cur = c
        .head_object()
        .bucket("misc")
        .key("o.txt")
        .send()
        .await
        .unwrap();
    let etag = cur.e_tag().unwrap();
    put("o.txt", b"new").if_match(etag).send().await.unwrap();
    assert_eq!(get_bytes(&c, "misc", "o.txt").await, b"new");
}

/// Status of a DeleteObject, read raw (the SDK hides 200 vs 204).
async fn signed_delete_status(p: &Proxy, bucket: &str, key: &str) -> u16 {
    use aws_sdk_s3::presigning::PresigningConfig;
    let req = p
        .client()
        .delete_object()
        .bucket(bucket)
        .key(key)
        .presigned(PresigningConfig::expires_in(std::time::Duration::from_secs(60)).unwrap())
        .await
        .unwrap();
    reqwest::Client::new()
        .delete(req.uri())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn misc_on_filesystem_backend() {
    let p = start(None).await;
    misc_suite(&p, None).await;
}

#[tokio::test]
async fn misc_on_s3_backend() {
    let Some(up) = S3sFs::start("misc_on_s3_backend").await else {
        return;
    };
    let p = start(Some(&up)).await;
    misc_suite(&p, Some(&up)).await;
}
