//! SigV4 limits on the real binary: a presigned URL may live at most 7 days (a longer
//! X-Amz-Expires is refused even with a valid signature), a user whose secret is empty
//! cannot sign (else anyone knowing the access key id could), and repeated authentication
//! failures lock the client address out with 429 SlowDown (IAM denials do not count).

mod common;

use common::*;
use sha2::{Digest, Sha256};

/// A presigned GET URL for `path` with any `X-Amz-Expires` (the SDK refuses to make one
/// over 7 days, which is what this test needs).
fn presign_get(port: u16, path: &str, expires: u64) -> String {
    let now = chrono::Utc::now();
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let day = now.format("%Y%m%d").to_string();
    let host = format!("127.0.0.1:{port}");
    let scope = format!("{day}/us-east-1/s3/aws4_request");
    // Already in canonical (sorted, encoded) order.
    let query = format!(
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={AK}%2F{}&X-Amz-Date={amz_date}&X-Amz-Expires={expires}&X-Amz-SignedHeaders=host",
        scope.replace('/', "%2F")
    );
    let canonical = format!("GET\n{path}\n{query}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let sig = sigv4_signature(&day, &to_sign);
    format!("http://{host}{path}?{query}&X-Amz-Signature={sig}")
}

#[tokio::test]
async fn presigned_urls_live_at_most_seven_days() {
    let p = start_proxy(None, &[]).await;
    let c = p.client();
    c.create_bucket().bucket("pre").send().await.unwrap();
    put_bytes(&c, "pre", "a.txt", b"hello").await;
    let http = reqwest::Client::new();
    let week = 7 * 24 * 3600;
    let ok = http
        .get(presign_get(p.port, "/pre/a.txt", week))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.bytes().await.unwrap().as_ref(), b"hello");
    let long = http
        .get(presign_get(p.port, "/pre/a.txt", week + 1))
        .send()
        .await
        .unwrap();
    assert_eq!(long.status(), 400);
    let body = long.text().await.unwrap();
    assert!(
        body.contains("<Code>InvalidArgument</Code>") && body.contains("604800"),
        "{body}"
    );
}

#[tokio::test]
async fn a_user_with_an_empty_secret_cannot_sign() {
    let p = start_proxy_with_yaml(
        "access:\n  iam_mode: declarative\n  iam_users:\n    - name: blank\n      access_key_id: BLANKAK\n      secret_access_key: \"\"\n      permissions: [{actions: [\"*\"], resources: [\"*\"]}]\n",
        &[],
    )
    .await;
    let e = p
        .client_as("BLANKAK", "")
        .list_buckets()
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        e.into_service_error().meta().code(),
        Some("AccessDenied"),
        "an empty secret must not sign"
    );
    // The bootstrap pair still works on the same proxy.
    p.client().list_buckets().send().await.unwrap();
}

#[tokio::test]
async fn repeated_sigv4_failures_lock_the_address_out() {
    let p = start_proxy_with_yaml(
        "access:\n  iam_mode: declarative\n  iam_users:\n    - name: narrow\n      access_key_id: NARROWAK\n      secret_access_key: NARROWSECRET\n      permissions: [{actions: [read], resources: [\"lock/mine/*\"]}]\n",
        &[
            ("DGP_RATE_LIMIT_MAX_ATTEMPTS", "3".into()),
            ("DGP_RATE_LIMIT_WINDOW_SECS", "300".into()),
            ("DGP_RATE_LIMIT_LOCKOUT_SECS", "600".into()),
        ],
    )
    .await;
    let good = p.client();
    good.create_bucket().bucket("lock").send().await.unwrap();
    put_bytes(&good, "lock", "other/x.txt", b"x").await;
    // IAM denials of a verified user are not authentication failures.
    let narrow = p.client_as("NARROWAK", "NARROWSECRET");
    for _ in 0..5 {
        let e = narrow
            .get_object()
            .bucket("lock")
            .key("other/x.txt")
            .send()
            .await
            .unwrap_err();
        assert_eq!(code(&e.into_service_error()), "AccessDenied");
    }
    good.list_buckets().send().await.unwrap();
    // Three bad signatures and one unknown key: locked out.
    let bad = p.client_as(AK, "not-the-secret");
    for _ in 0..2 {
        let e = bad.list_buckets().send().await.unwrap_err();
        assert_eq!(code(&e.into_service_error()), "SignatureDoesNotMatch");
    }
    let e = p
        .client_as("NOSUCHKEY", "x")
        .list_buckets()
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "AccessDenied");
    // Now even the right key pair from this address waits out the lockout.
    let once = no_retry(&good);
    let e = once.list_buckets().send().await.unwrap_err();
    let e = e.into_service_error();
    assert_eq!(code(&e), "SlowDown");
    // Anonymous requests are not authentication: they get their usual answer.
    let r = reqwest::get(format!("{}/lock/other/x.txt", p.url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let m = p.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("deltaglider_auth_failures_total{reason=\"rate_limited\"}")),
        "{m}"
    );
}
