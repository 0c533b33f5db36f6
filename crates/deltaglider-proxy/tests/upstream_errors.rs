//! What a client sees when the upstream S3 itself refuses: a throttling upstream (503
//! SlowDown) is passed on as 503 SlowDown, so the client's SDK backs off and retries,
//! instead of a bare 500.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An "S3" on loopback that answers every request 503 SlowDown after reading it whole.
async fn throttling_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    // Headers, then Content-Length bytes of body.
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let is_head = head.starts_with("head ");
                    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                    let resp = format!(
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n{}",
                        body.len(),
                        if is_head { "" } else { body }
                    );
                    if sock.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                    buf.drain(..end + 4 + len);
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_throttling_upstream_reaches_the_client_as_503_slowdown() {
    let up = throttling_upstream().await;
    let p = start_proxy(
        None,
        &[
            ("DGP_S3_ENDPOINT", up),
            ("DGP_BE_AWS_ACCESS_KEY_ID", "up".into()),
            ("DGP_BE_AWS_SECRET_ACCESS_KEY", "upsecret".into()),
        ],
    )
    .await;
    let c = p.client_no_retry();
    let status_code = |raw: Option<u16>, code: Option<&str>| (raw, code.map(str::to_string));
    let e = c
        .put_object()
        .bucket("thr")
        .key("a.bin")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    let raw = e.raw_response().map(|r| r.status().as_u16());
    assert_eq!(
        status_code(raw, e.into_service_error().meta().code()),
        (Some(503), Some("SlowDown".into()))
    );
    let e = c.list_objects_v2().bucket("thr").send().await.unwrap_err();
    let raw = e.raw_response().map(|r| r.status().as_u16());
    assert_eq!(
        status_code(raw, e.into_service_error().meta().code()),
        (Some(503), Some("SlowDown".into()))
    );
    let e = c
        .get_object()
        .bucket("thr")
        .key("a.bin")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(503));
}
