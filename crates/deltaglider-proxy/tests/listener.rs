//! The listener, driven through the real binary: built-in TLS (`DGP_TLS_ENABLED` with a
//! self-signed certificate generated at start, or the operator's `DGP_TLS_CERT` /
//! `DGP_TLS_KEY`), and permissive CORS (`DGP_CORS_PERMISSIVE`).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use scai_testkit::{free_port, ServerProcess};

/// Base env for a proxy on `port` with its data in `data` (open access, so plain reqwest
/// can drive S3 PUT/GET without SigV4).
fn env(port: u16, data: &Path, extra: &[(&str, String)]) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = vec![
        ("DGP_LISTEN_ADDR", format!("127.0.0.1:{port}")),
        ("DGP_DATA_DIR", data.to_str().unwrap().to_string()),
        ("DGP_AUTHENTICATION", "none".into()),
        ("DGP_CACHE_MB", "64".into()),
        (
            "DGP_CONFIG",
            data.join("none.yaml").to_str().unwrap().to_string(),
        ),
        ("RUST_LOG", "deltaglider_proxy=debug,info".into()),
    ];
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        let k: &'static str = Box::leak(k.to_string().into_boxed_str());
        env.push((k, v.clone()));
    }
    env
}

/// A client that trusts exactly `ca_pem` (no built-in roots).
fn trusting(ca_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Waits until `url` answers 200 through `client`, or panics with the server log.
async fn wait_ok(client: &reqwest::Client, url: &str, proc: &mut ServerProcess) {
    let mut last = String::new();
    for _ in 0..400 {
        match client.get(url).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) => last = format!("{e:?}"),
        }
        assert!(
            proc.is_running(),
            "proxy exited before answering {url}:\n{}",
            proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} not ready: {last}\n{}", proc.logs());
}

/// Waits for the self-signed certificate file the proxy writes at start.
async fn wait_file(path: &Path, proc: &mut ServerProcess) -> Vec<u8> {
    for _ in 0..400 {
        if let Ok(b) = std::fs::read(path) {
            if !b.is_empty() {
                return b;
            }
        }
        assert!(proc.is_running(), "proxy exited:\n{}", proc.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never appeared\n{}", path.display(), proc.logs());
}

/// S3 round trip over a client: create a bucket, PUT, GET, compare.
async fn put_get(client: &reqwest::Client, base: &str, key: &str, body: &[u8]) {
    let r = client.put(format!("{base}/tlsb")).send().await.unwrap();
    assert!(
        r.status().is_success() || r.status() == 409,
        "create bucket: {}",
        r.status()
    );
    let r = client
        .put(format!("{base}/tlsb/{key}"))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "PUT: {}", r.text().await.unwrap());
    let r = client
        .get(format!("{base}/tlsb/{key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), body);
}

#[tokio::test]
async fn tls_self_signed_is_generated_logged_reused_and_plain_http_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut proc = ServerProcess::start(
        proxy_bin(),
        &[],
        &env(port, dir.path(), &[("DGP_TLS_ENABLED", "true".into())]),
    );
    let cert_path = dir.path().join("tls").join("self-signed-cert.pem");
    let cert = wait_file(&cert_path, &mut proc).await;
    let client = trusting(&cert);
    let base = format!("https://127.0.0.1:{port}");
    wait_ok(&client, &format!("{base}/_/health"), &mut proc).await;
    assert!(
        proc.logs().contains("generated a self-signed certificate"),
        "the generation is logged:\n{}",
        proc.logs()
    );
    // The private key is owner-only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("tls").join("self-signed-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "key mode {mode:o}");

    // S3 API and the admin surface share the TLS port.
    let body = bytes(7, 200_000);
    put_get(&client, &base, "a/app.zip", &body).await;
    let who = client
        .get(format!("{base}/_/api/whoami"))
        .send()
        .await
        .unwrap();
    assert_eq!(who.status(), 200);

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = plain
        .get(format!("http://127.0.0.1:{port}/_/health"))
        .send()
        .await;
    assert!(r.is_err(), "plain HTTP must fail on the TLS port: {r:?}");
    // A client that does not trust the self-signed certificate is refused too.
    let r = plain.get(format!("{base}/_/health")).send().await;
    assert!(r.is_err(), "an untrusting client must fail: {r:?}");

    // Restart: the same certificate is reused (pinned clients keep working) and data is there.
    proc.restart();
    wait_ok(&client, &format!("{base}/_/health"), &mut proc).await;
    assert_eq!(std::fs::read(&cert_path).unwrap(), cert);
    assert!(proc
        .logs()
        .contains("reusing the self-signed certificate generated earlier"));
    let r = client
        .get(format!("{base}/tlsb/a/app.zip"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[..]);
}

#[tokio::test]
async fn tls_with_operator_certificate_serves_s3_and_bad_tls_config_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = ck.cert.pem();
    let cert_file = dir.path().join("op-cert.pem");
    let key_file = dir.path().join("op-key.pem");
    std::fs::write(&cert_file, &cert_pem).unwrap();
    std::fs::write(&key_file, ck.signing_key.serialize_pem()).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();

    let port = free_port();
    let mut proc = ServerProcess::start(
        proxy_bin(),
        &[],
        &env(
            port,
            &data,
            &[
                ("DGP_TLS_ENABLED", "true".into()),
                ("DGP_TLS_CERT", cert_file.to_str().unwrap().into()),
                ("DGP_TLS_KEY", key_file.to_str().unwrap().into()),
            ],
        ),
    );
    let client = trusting(cert_pem.as_bytes());
    // The certificate names localhost only: the client verifies the name against it.
    let base = format!("https://localhost:{port}");
    wait_ok(&client, &format!("{base}/_/health"), &mut proc).await;
    put_get(&client, &base, "b/own.zip", &bytes(9, 50_000)).await;
    assert!(
        !data.join("tls").exists(),
        "no self-signed pair when the operator gives one"
    );
    assert!(!proc.logs().contains("generated a self-signed certificate"));
    proc.kill9();

    // Half a pair is a configuration error named at start.
    let port = free_port();
    let mut half = ServerProcess::start(
        proxy_bin(),
        &[],
        &env(
            port,
            &data,
            &[
                ("DGP_TLS_ENABLED", "true".into()),
                ("DGP_TLS_CERT", cert_file.to_str().unwrap().into()),
            ],
        ),
    );
    // A key that is not a key: start-up fails naming DGP_TLS_KEY.
    let bad_key = dir.path().join("bad-key.pem");
    std::fs::write(&bad_key, "not a pem").unwrap();
    let port2 = free_port();
    let mut bad = ServerProcess::start(
        proxy_bin(),
        &[],
        &env(
            port2,
            &data,
            &[
                ("DGP_TLS_ENABLED", "true".into()),
                ("DGP_TLS_CERT", cert_file.to_str().unwrap().into()),
                ("DGP_TLS_KEY", bad_key.to_str().unwrap().into()),
            ],
        ),
    );
    for p in [&mut half, &mut bad] {
        for _ in 0..400 {
            if !p.is_running() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!p.is_running(), "must refuse to start:\n{}", p.logs());
    }
    assert!(
        half.logs()
            .contains("DGP_TLS_CERT and DGP_TLS_KEY must be set together"),
        "{}",
        half.logs()
    );
    assert!(bad.logs().contains("DGP_TLS_KEY"), "{}", bad.logs());
}

/// A browser preflight for a signed PUT, and a simple cross-origin GET.
async fn cors_probe(base: &str) -> (reqwest::Response, reqwest::Response) {
    let c = reqwest::Client::new();
    let pre = c
        .request(reqwest::Method::OPTIONS, format!("{base}/bkt/a/file.zip"))
        .header("Origin", "http://ui.example")
        .header("Access-Control-Request-Method", "PUT")
        .header(
            "Access-Control-Request-Headers",
            "authorization,x-amz-date,x-amz-content-sha256",
        )
        .send()
        .await
        .unwrap();
    let get = c
        .get(format!("{base}/_/health"))
        .header("Origin", "http://ui.example")
        .send()
        .await
        .unwrap();
    (pre, get)
}

#[tokio::test]
async fn cors_permissive_answers_preflights_and_default_sends_no_cors_headers() {
    let off = start_proxy(None, &[]).await;
    let (pre, get) = cors_probe(&off.url()).await;
    assert!(
        pre.headers().get("access-control-allow-origin").is_none(),
        "default: no CORS on a preflight: {:?}",
        pre.headers()
    );
    assert!(
        !pre.status().is_success(),
        "default: an unsigned OPTIONS is not admitted: {}",
        pre.status()
    );
    assert!(get.headers().get("access-control-allow-origin").is_none());

    let on = start_proxy(None, &[("DGP_CORS_PERMISSIVE", "true".into())]).await;
    let (pre, get) = cors_probe(&on.url()).await;
    assert_eq!(pre.status(), 200, "preflight answered before auth");
    let h = pre.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    assert!(h.contains_key("access-control-allow-methods"), "{h:?}");
    assert!(h.contains_key("access-control-allow-headers"), "{h:?}");
    assert_eq!(get.status(), 200);
    assert_eq!(get.headers()["access-control-allow-origin"], "*");
    assert!(on.proc.logs().contains("DGP_CORS_PERMISSIVE"));
    // Signed S3 traffic is unchanged.
    let c = on.client();
    c.create_bucket().bucket("bkt").send().await.unwrap();
    put_bytes(&c, "bkt", "a/file.zip", b"hello").await;
    assert_eq!(get_bytes(&c, "bkt", "a/file.zip").await, b"hello");
}
