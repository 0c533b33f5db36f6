//! Integrity and limits through the real binary: a corrupted delta or reference is never
//! served (500, not wrong bytes, also after a restart empties the reference cache), a request
//! that outlives `DGP_REQUEST_TIMEOUT_SECS` gets 504, and admin sessions are IP-bound, capped
//! at 10 (the oldest evicted) and ended by logout.

mod common;

use std::io::{Seek, SeekFrom, Write};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Flips one byte in the middle of a stored file in place (its xattr metadata stays).
fn corrupt(path: &std::path::Path) {
    let len = std::fs::metadata(path).unwrap().len();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(len / 2)).unwrap();
    std::io::Read::read_exact(&mut f, &mut b).unwrap();
    f.seek(SeekFrom::Start(len / 2)).unwrap();
    f.write_all(&[b[0] ^ 0xff]).unwrap();
    f.sync_all().unwrap();
}

async fn get_status(c: &aws_sdk_s3::Client, bucket: &str, key: &str) -> u16 {
    match c.get_object().bucket(bucket).key(key).send().await {
        Ok(o) => {
            o.body.collect().await.unwrap();
            200
        }
        Err(e) => e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0),
    }
}

#[tokio::test]
async fn corrupted_deltas_and_references_are_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let p = start_proxy_in(&data, None, &[], None).await;
    let c = p.client_no_retry();
    c.create_bucket().bucket("integ").send().await.unwrap();
    let v1 = bytes(31, 400_000);
    let v2 = mutate(&v1, 32);
    put_bytes(&c, "integ", "rel/a-1.zip", &v1).await;
    put_bytes(&c, "integ", "rel/a-2.zip", &v2).await;
    let space = p.bucket_dir("integ").join("rel");
    corrupt(&space.join("a-2.zip.delta"));
    assert_eq!(get_status(&c, "integ", "rel/a-2.zip").await, 500);
    // The other object of the deltaspace is untouched.
    assert_eq!(get_bytes(&c, "integ", "rel/a-1.zip").await, v1);
    // A corrupted reference: refused once the cache no longer holds the good copy.
    drop(p);
    corrupt(&space.join("reference.bin"));
    let p = start_proxy_in(&data, None, &[], None).await;
    let c = p.client_no_retry();
    assert_eq!(get_status(&c, "integ", "rel/a-1.zip").await, 500);
    let logs = p.proc.logs();
    assert!(
        logs.contains("integrity") || logs.contains("SHA-256"),
        "{logs}"
    );
}

#[tokio::test]
async fn a_request_outliving_the_timeout_gets_504() {
    let p = start_proxy(
        None,
        &[
            ("DGP_AUTHENTICATION", "none".into()),
            ("DGP_REQUEST_TIMEOUT_SECS", "1".into()),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let r = http.put(format!("{}/slow", p.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A PUT that promises 100 bytes and sends 10, then waits.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", p.port))
        .await
        .unwrap();
    s.write_all(
        b"PUT /slow/k.bin HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(15), s.read(&mut buf))
        .await
        .expect("no answer within 15 s")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert!(head.contains("RequestTimeout"), "{head}");
}

#[tokio::test]
async fn admin_sessions_are_ip_bound_capped_and_ended_by_logout() {
    let pw = "sess-pw";
    let mut env = bootstrap_env(pw);
    env.push(("DGP_TRUST_PROXY_HEADERS", "true".into()));
    let p = start_proxy(None, &env).await;
    let base = p.url();
    let http = reqwest::Client::new();
    let login = |ip: &'static str| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let r = http
                .post(format!("{base}/_/api/admin/login"))
                .header("x-forwarded-for", ip)
                .json(&serde_json::json!({ "password": pw }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            cookie_of(&r)
        }
    };
    let status = |cookie: String, ip: &'static str| {
        let http = http.clone();
        let base = base.clone();
        async move {
            http.get(format!("{base}/_/api/admin/users"))
                .header("cookie", cookie)
                .header("x-forwarded-for", ip)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let first = login("10.0.0.1").await;
    assert_eq!(status(first.clone(), "10.0.0.1").await, 200);
    // Bound to the address it was opened from.
    assert_eq!(status(first.clone(), "10.0.0.2").await, 401);
    // Ten more sessions evict the oldest.
    let mut later = Vec::new();
    for _ in 0..10 {
        later.push(login("10.0.0.1").await);
    }
    assert_eq!(status(first, "10.0.0.1").await, 401);
    assert_eq!(status(later[0].clone(), "10.0.0.1").await, 200);
    // Logout ends the session at once.
    let r = http
        .post(format!("{base}/_/api/admin/logout"))
        .header("cookie", later[0].clone())
        .header("x-forwarded-for", "10.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(status(later[0].clone(), "10.0.0.1").await, 401);
    assert_eq!(status(later[9].clone(), "10.0.0.1").await, 200);
}
