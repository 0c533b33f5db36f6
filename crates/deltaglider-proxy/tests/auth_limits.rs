//! SigV4 limits on the real binary: a presigned URL may live at most 7 days (a longer
//! X-Amz-Expires is refused even with a valid signature), and a user whose secret is empty
//! cannot sign (else anyone knowing the access key id could).

mod common;

use common::*;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

fn hmac(key: &[u8], msg: &str) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(msg.as_bytes());
    m.finalize().into_bytes().to_vec()
}

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
    let k = hmac(format!("AWS4{SK}").as_bytes(), &day);
    let k = hmac(&k, "us-east-1");
    let k = hmac(&k, "s3");
    let k = hmac(&k, "aws4_request");
    let sig = hex::encode(hmac(&k, &to_sign));
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
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.yaml"),
        "access:\n  iam_mode: declarative\n  iam_users:\n    - name: blank\n      access_key_id: BLANKAK\n      secret_access_key: \"\"\n      permissions: [{actions: [\"*\"], resources: [\"*\"]}]\n",
    )
    .unwrap();
    let p = start_proxy_in(
        dir.path(),
        None,
        &[(
            "DGP_CONFIG",
            dir.path().join("config.yaml").to_str().unwrap().to_string(),
        )],
        None,
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
