//! SigV4 replay detection (`DGP_REPLAY_WINDOW_SECS`), driven through the real binary: the
//! exact same header-signed request is sent twice (a captured request replayed). Inside the
//! window the second PUT/DELETE is refused; GET/HEAD are exempt; window 0 turns it off.

mod common;

use common::*;
use sha2::{Digest, Sha256};

/// A header-signed SigV4 request (path-style, no query), signed once so it can be sent
/// again byte for byte.
struct Signed {
    method: reqwest::Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn sign(port: u16, method: &str, path: &str, body: &[u8]) -> Signed {
    let now = chrono::Utc::now();
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let day = now.format("%Y%m%d").to_string();
    let host = format!("127.0.0.1:{port}");
    let payload = hex::encode(Sha256::digest(body));
    let canonical = format!(
        "{method}\n{path}\n\nhost:{host}\nx-amz-content-sha256:{payload}\nx-amz-date:{amz_date}\n\nhost;x-amz-content-sha256;x-amz-date\n{payload}"
    );
    let scope = format!("{day}/us-east-1/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let sig = sigv4_signature(&day, &to_sign);
    Signed {
        method: method.parse().unwrap(),
        url: format!("http://{host}{path}"),
        headers: vec![
            ("x-amz-date".into(), amz_date),
            ("x-amz-content-sha256".into(), payload),
            (
                "authorization".into(),
                format!("AWS4-HMAC-SHA256 Credential={AK}/{scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={sig}"),
            ),
        ],
        body: body.to_vec(),
    }
}

async fn send(s: &Signed) -> (u16, String) {
    let mut rb = reqwest::Client::new()
        .request(s.method.clone(), &s.url)
        .body(s.body.clone());
    for (k, v) in &s.headers {
        rb = rb.header(k, v);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

#[tokio::test]
async fn replayed_signed_writes_are_refused_inside_the_window_reads_are_exempt() {
    // A wide window, so "inside the window" holds however slow the machine is.
    let p = start_proxy(None, &[("DGP_REPLAY_WINDOW_SECS", "600".into())]).await;
    let c = p.client();
    c.create_bucket().bucket("replay").send().await.unwrap();

    let put = sign(p.port, "PUT", "/replay/a/one.zip", b"first body");
    let (st, body) = send(&put).await;
    assert_eq!(st, 200, "first PUT: {body}");
    let (st, body) = send(&put).await;
    assert_eq!(st, 403, "replayed PUT must be refused: {body}");
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");
    assert!(body.contains("replay"), "{body}");

    // A freshly signed request for the same thing (new signature) is fine.
    let put2 = sign(p.port, "PUT", "/replay/a/one.zip", b"second body");
    assert_eq!(send(&put2).await.0, 200);
    assert_eq!(get_bytes(&c, "replay", "a/one.zip").await, b"second body");

    // GET and HEAD are exempt: the same signed GET works twice.
    let get = sign(p.port, "GET", "/replay/a/one.zip", b"");
    assert_eq!(send(&get).await, (200, "second body".to_string()));
    assert_eq!(send(&get).await, (200, "second body".to_string()));
    let head = sign(p.port, "HEAD", "/replay/a/one.zip", b"");
    assert_eq!(send(&head).await.0, 200);
    assert_eq!(send(&head).await.0, 200);

    // DELETE is state-changing: the replay is refused, and the object is deleted once.
    let del = sign(p.port, "DELETE", "/replay/a/one.zip", b"");
    assert_eq!(send(&del).await.0, 204);
    assert_eq!(send(&del).await.0, 403);

    // Refusals are visible in the metrics and the audit ring.
    let m = p.metrics().await;
    assert!(
        m.lines().any(
            |l| l.starts_with("deltaglider_auth_failures_total{reason=\"replay\"} ")
                && l.ends_with(" 2")
        ),
        "{m}"
    );
    assert!(p.proc.logs().contains("SigV4 replay refused"));
}

#[tokio::test]
async fn replay_window_zero_turns_detection_off() {
    let p = start_proxy(None, &[("DGP_REPLAY_WINDOW_SECS", "0".into())]).await;
    p.client()
        .create_bucket()
        .bucket("replay")
        .send()
        .await
        .unwrap();
    let put = sign(p.port, "PUT", "/replay/k.bin", b"same");
    assert_eq!(send(&put).await.0, 200);
    assert_eq!(
        send(&put).await.0,
        200,
        "window 0: the same signed PUT is accepted again"
    );
}

#[tokio::test]
async fn a_failed_write_leaves_no_mark_so_its_identical_retry_is_not_a_replay() {
    let p = start_proxy(None, &[("DGP_REPLAY_WINDOW_SECS", "600".into())]).await;
    // PUT into a bucket that does not exist yet: NoSuchBucket (404), nothing was done.
    let put = sign(p.port, "PUT", "/later/k.bin", b"body");
    let (st, body) = send(&put).await;
    assert_eq!(st, 404, "{body}");
    p.client()
        .create_bucket()
        .bucket("later")
        .send()
        .await
        .unwrap();
    // The byte-identical retry is processed (as an SDK retry would be), then refused once
    // it has succeeded.
    assert_eq!(send(&put).await.0, 200);
    assert_eq!(send(&put).await.0, 403);
}
