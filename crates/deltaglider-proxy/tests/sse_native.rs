//! Native server-side encryption (`sse-kms`, `sse-s3`) on S3 backends, against a real
//! upstream (s3s-fs): the proxy sends the SSE headers (captured on the wire by a transparent
//! TCP relay in front of the upstream), stamps `dg-encrypted-native`, stores plain bytes (no
//! DGE1), and reads them back unchanged. Plus the legacy shim for earlier proxy-AES objects,
//! the native→proxy transition, and the start-up checks (SSE on a filesystem backend,
//! one key id pinned to two keys, warnings for unknown routes and key-less proxy-AES).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const KEY2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

/// Bytes one relayed connection carried from the proxy to the upstream.
type ConnLog = Arc<Mutex<Vec<u8>>>;

/// A transparent TCP relay in front of the upstream that keeps every byte the proxy sends,
/// per connection, so the test can read the request headers as they went on the wire.
struct WireTap {
    port: u16,
    conns: Arc<Mutex<Vec<ConnLog>>>,
}

impl WireTap {
    async fn start(upstream_port: u16) -> WireTap {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<ConnLog>>> = Arc::default();
        let c2 = conns.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                else {
                    continue;
                };
                let log: ConnLog = Arc::default();
                c2.lock().push(log.clone());
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        log.lock().extend_from_slice(&buf[..n]);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                });
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                });
            }
        });
        WireTap { port, conns }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Header blocks (lower-cased) of every PUT whose path starts with `/{bucket}/{key}`.
    fn puts(&self, bucket: &str, key: &str) -> Vec<String> {
        let needle = format!("put /{bucket}/{key}");
        let mut out = vec![];
        for c in self.conns.lock().iter() {
            let text = String::from_utf8_lossy(&c.lock()).to_ascii_lowercase();
            let mut from = 0;
            while let Some(i) = text[from..].find(&needle) {
                let start = from + i;
                let end = text[start..]
                    .find("\r\n\r\n")
                    .map(|e| start + e)
                    .unwrap_or(text.len());
                out.push(text[start..end].to_string());
                from = end;
            }
        }
        out
    }
}

fn yaml_path(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

async fn upstream_object(up: &S3sFs, bucket: &str, key: &str) -> (Vec<u8>, Vec<(String, String)>) {
    let c = up.client();
    let h = c
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("upstream HEAD {bucket}/{key}: {e:?}"));
    let mut meta: Vec<(String, String)> = h
        .metadata()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    meta.sort();
    (get_bytes(&c, bucket, key).await, meta)
}

fn meta_get<'a>(meta: &'a [(String, String)], k: &str) -> Option<&'a str> {
    meta.iter()
        .find(|(mk, _)| mk.eq_ignore_ascii_case(k))
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn sse_kms_and_sse_s3_store_plain_bytes_with_native_markers() {
    let Some(up) = S3sFs::start("sse_native").await else {
        return;
    };
    let tap = WireTap::start(up.server.port()).await;
    let dir = tempfile::tempdir().unwrap();
    // `kms-main` gets its mode from the env key id alone (no `mode:` in YAML); `s3-managed`
    // is sse-s3 by YAML. Both live on the same upstream through the wire tap.
    let cfg = yaml_path(
        dir.path(),
        "cfg.yaml",
        &format!(
            r#"
storage:
  default_backend: kms-main
  backends:
    - name: kms-main
      type: s3
      endpoint: {ep}
      access_key_id: {ak}
      secret_access_key: {sk}
      encryption:
        kms_key_id: alias/from-yaml
        bucket_key_enabled: true
    - name: s3-managed
      type: s3
      endpoint: {ep}
      access_key_id: {ak}
      secret_access_key: {sk}
      encryption:
        mode: sse-s3
  buckets:
    managed:
      backend: s3-managed
"#,
            ep = tap.url(),
            ak = UP_AK,
            sk = UP_SK
        ),
    );
    let kms_arn = "arn:aws:kms:eu-west-1:111122223333:key/from-env";
    let p = start_proxy_in(
        dir.path(),
        None,
        &[
            ("DGP_CONFIG", cfg),
            ("DGP_BACKEND_KMS_MAIN_SSE_KMS_KEY_ID", kms_arn.into()),
        ],
        None,
    )
    .await;
    let c = p.client();
    let v1 = bytes(71, 300_000);
    let v2 = mutate(&v1, 72);
    let plain = bytes(73, 200_000);
    for (bucket, marker) in [("kmsb", "sse-kms"), ("managed", "sse-s3")] {
        c.create_bucket().bucket(bucket).send().await.unwrap();
        put_bytes(&c, bucket, "r/a-1.zip", &v1).await;
        put_bytes(&c, bucket, "r/a-2.zip", &v2).await;
        put_bytes(&c, bucket, "r/data.bin", &plain).await;

        // Straight from the upstream: marker stamped, no proxy-AES marker, plain bytes.
        let (raw, meta) = upstream_object(&up, bucket, "r/data.bin").await;
        assert_eq!(
            meta_get(&meta, "dg-encrypted-native"),
            Some(marker),
            "{meta:?}"
        );
        assert_eq!(meta_get(&meta, "dg-encrypted"), None, "{meta:?}");
        assert_eq!(meta_get(&meta, "dg-encryption-key-id"), None, "{meta:?}");
        assert_ne!(&raw[..4], b"DGE1");
        assert_eq!(raw, plain, "{bucket}: stored bytes are the plain bytes");
        let (reference, meta) = upstream_object(&up, bucket, "r/reference.bin").await;
        assert_eq!(meta_get(&meta, "dg-encrypted-native"), Some(marker));
        assert_eq!(reference, v1, "{bucket}: the reference is stored plain");
        let (delta, meta) = upstream_object(&up, bucket, "r/a-2.zip.delta").await;
        assert_eq!(meta_get(&meta, "dg-encrypted-native"), Some(marker));
        assert!(delta.len() < v2.len() / 10, "still a delta under SSE");

        // Through the proxy: the original bytes, whole and by range.
        assert_eq!(get_bytes(&c, bucket, "r/a-1.zip").await, v1);
        assert_eq!(get_bytes(&c, bucket, "r/a-2.zip").await, v2);
        assert_eq!(get_bytes(&c, bucket, "r/data.bin").await, plain);
        let r = c
            .get_object()
            .bucket(bucket)
            .key("r/data.bin")
            .range("bytes=65000-140000")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.body.collect().await.unwrap().into_bytes().as_ref(),
            &plain[65000..=140000]
        );
    }

    // On the wire: every object write carried the SSE headers of its backend.
    let kms_puts = tap.puts("kmsb", "r/");
    // A passthrough body goes up signed with the SHA-256 the proxy computed on receipt, so
    // the upstream checks the client's bytes end to end; a delta is not those bytes.
    let sha = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&plain))
    };
    let put_of = |key: &str| {
        kms_puts
            .iter()
            .find(|h| h.starts_with(&format!("put /kmsb/{key}")))
            .cloned()
            .unwrap_or_default()
    };
    let data_put = put_of("r/data.bin");
    assert!(
        data_put.contains(&format!("\r\nx-amz-content-sha256: {sha}\r\n")),
        "{data_put}"
    );
    assert!(!data_put.contains("aws-chunked"), "{data_put}");
    let delta_put = put_of("r/a-2.zip.delta");
    assert!(
        !delta_put.is_empty() && !delta_put.contains(&sha),
        "{delta_put}"
    );
    for key in ["r/reference.bin", "r/a-2.zip.delta", "r/data.bin"] {
        assert!(
            kms_puts
                .iter()
                .any(|h| h.starts_with(&format!("put /kmsb/{key}"))),
            "no PUT of {key} seen: {kms_puts:?}"
        );
    }
    for h in &kms_puts {
        assert!(
            h.contains("\r\nx-amz-server-side-encryption: aws:kms\r\n"),
            "{h}"
        );
        assert!(
            h.contains(&format!(
                "\r\nx-amz-server-side-encryption-aws-kms-key-id: {}",
                kms_arn.to_ascii_lowercase()
            )),
            "the env key id wins over the YAML one: {h}"
        );
        assert!(
            h.contains("\r\nx-amz-server-side-encryption-bucket-key-enabled: true"),
            "{h}"
        );
    }
    let s3_puts = tap.puts("managed", "r/");
    assert!(
        s3_puts
            .iter()
            .any(|h| h.starts_with("put /managed/r/data.bin")),
        "{s3_puts:?}"
    );
    for h in &s3_puts {
        assert!(
            h.contains("\r\nx-amz-server-side-encryption: aes256\r\n"),
            "{h}"
        );
        assert!(
            !h.contains("x-amz-server-side-encryption-aws-kms-key-id"),
            "{h}"
        );
    }
}

#[tokio::test]
async fn legacy_shim_under_sse_and_native_to_proxy_transition() {
    let Some(up) = S3sFs::start("sse_native").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = |name: &str, text: &str| ("DGP_CONFIG", yaml_path(dir.path(), name, text));
    // 1. Proxy-AES with an explicit key id.
    let p = start_proxy(
        Some(&up),
        &[
            ("DGP_ENCRYPTION_KEY", KEY1.into()),
            cfg(
                "a.yaml",
                "storage:\n  backend_encryption:\n    mode: aes256-gcm-proxy\n    key_id: gen1\n",
            ),
        ],
    )
    .await;
    let c = p.client();
    c.create_bucket().bucket("shim").send().await.unwrap();
    let old = bytes(81, 150_000);
    put_bytes(&c, "shim", "old.bin", &old).await;
    let (raw, meta) = upstream_object(&up, "shim", "old.bin").await;
    assert_eq!(&raw[..4], b"DGE1");
    assert_eq!(meta_get(&meta, "dg-encryption-key-id"), Some("gen1"));
    drop(p);

    // 2. sse-s3 with the old key as a legacy shim: old objects decrypt, new writes skip
    //    proxy-AES. The new object's plain bytes start with "DGE1" on purpose: the native
    //    marker, not a body sniff, decides that it is not proxy ciphertext.
    let p = start_proxy(
        Some(&up),
        &[cfg(
            "b.yaml",
            &format!("storage:\n  backend_encryption:\n    mode: sse-s3\n    legacy_key: \"{KEY1}\"\n    legacy_key_id: gen1\n"),
        )],
    )
    .await;
    let c = p.client();
    assert_eq!(get_bytes(&c, "shim", "old.bin").await, old);
    let mut new = b"DGE1".to_vec();
    new.extend_from_slice(&bytes(82, 100_000));
    put_bytes(&c, "shim", "new.bin", &new).await;
    let (raw, meta) = upstream_object(&up, "shim", "new.bin").await;
    assert_eq!(raw, new, "no proxy-AES under sse-s3, shim or not");
    assert_eq!(meta_get(&meta, "dg-encrypted-native"), Some("sse-s3"));
    assert_eq!(meta_get(&meta, "dg-encrypted"), None);
    assert_eq!(get_bytes(&c, "shim", "new.bin").await, new);
    drop(p);

    // 3. Native → proxy-AES with a different key and no shim: the native object still reads
    //    (it carries the -native marker), the old proxy-AES one does not (500, never
    //    ciphertext), which shows the shim was what made it readable in step 2.
    let p = start_proxy(
        Some(&up),
        &[
            ("DGP_ENCRYPTION_KEY", KEY2.into()),
            cfg(
                "c.yaml",
                "storage:\n  backend_encryption:\n    mode: aes256-gcm-proxy\n    key_id: gen2\n",
            ),
        ],
    )
    .await;
    let c = p.client();
    assert_eq!(get_bytes(&c, "shim", "new.bin").await, new);
    let r = c
        .get_object()
        .bucket("shim")
        .key("new.bin")
        .range("bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.body.collect().await.unwrap().into_bytes().as_ref(),
        &new[..10]
    );
    let e = c
        .get_object()
        .bucket("shim")
        .key("old.bin")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(500));
}

/// Runs the proxy with `env` and expects it to refuse to start; returns its output.
fn refused_start(data: &Path, env: &[(&str, String)]) -> String {
    let mut cmd = Command::new(proxy_bin());
    cmd.env(
        "DGP_LISTEN_ADDR",
        format!("127.0.0.1:{}", scai_testkit::free_port()),
    )
    .env("DGP_DATA_DIR", data)
    .env("DGP_ACCESS_KEY_ID", AK)
    .env("DGP_SECRET_ACCESS_KEY", SK)
    .env("RUST_LOG", "info")
    .env_remove("DGP_ENCRYPTION_KEY")
    .env_remove("DGP_SSE_KMS_KEY_ID")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the proxy started although its config is invalid: {env:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!status.success(), "exit status {status}: {logs}");
    logs
}

#[tokio::test]
async fn start_up_refuses_sse_on_filesystem_and_conflicting_key_ids() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fs_a = d.join("fs-a");
    let fs_b = d.join("fs-b");
    // A native SSE mode on a named filesystem backend: the error names the backend.
    let cfg = yaml_path(
        d,
        "fs-sse.yaml",
        &format!(
            "storage:\n  backends:\n    - name: cold-disk\n      type: filesystem\n      path: {}\n      encryption:\n        mode: sse-kms\n",
            fs_a.display()
        ),
    );
    let logs = refused_start(d, &[("DGP_CONFIG", cfg)]);
    assert!(logs.contains("cold-disk"), "{logs}");
    assert!(logs.contains("sse-kms works only on S3 backends"), "{logs}");

    // The singleton filesystem backend with the singleton SSE-KMS env var.
    let logs = refused_start(
        d,
        &[
            (
                "DGP_CONFIG",
                d.join("none.yaml").to_str().unwrap().to_string(),
            ),
            ("DGP_SSE_KMS_KEY_ID", "alias/x".into()),
        ],
    );
    assert!(
        logs.contains("\"default\"") && logs.contains("works only on S3 backends"),
        "{logs}"
    );

    // Two backends pinning key_id `shared` to different key bytes (one from YAML, one from
    // its DGP_BACKEND_<NAME>_ENCRYPTION_KEY env var).
    let cfg = yaml_path(
        d,
        "dup.yaml",
        &format!(
            "storage:\n  backends:\n    - name: alpha\n      type: filesystem\n      path: {a}\n      encryption:\n        mode: aes256-gcm-proxy\n        key: \"{KEY1}\"\n        key_id: shared\n    - name: beta.two\n      type: filesystem\n      path: {b}\n      encryption:\n        mode: aes256-gcm-proxy\n        key_id: shared\n",
            a = fs_a.display(),
            b = fs_b.display()
        ),
    );
    let logs = refused_start(
        d,
        &[
            ("DGP_CONFIG", cfg.clone()),
            ("DGP_BACKEND_BETA_TWO_ENCRYPTION_KEY", KEY2.into()),
        ],
    );
    assert!(
        logs.contains("backends alpha and beta.two share key_id but declare DIFFERENT keys")
            && logs.contains("shared"),
        "{logs}"
    );

    // Control: the same pin with the same key bytes starts.
    let p = start_proxy_in(
        d,
        None,
        &[
            ("DGP_CONFIG", cfg),
            ("DGP_BACKEND_BETA_TWO_ENCRYPTION_KEY", KEY1.into()),
        ],
        None,
    )
    .await;
    drop(p);
}

#[tokio::test]
async fn start_up_warns_about_unknown_routes_and_keyless_proxy_aes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let main = d.join("main");
    let cfg = yaml_path(
        d,
        "warn.yaml",
        &format!(
            "storage:\n  backends:\n    - name: main\n      type: filesystem\n      path: {}\n      encryption:\n        mode: aes256-gcm-proxy\n  buckets:\n    lost:\n      backend: nowhere\n",
            main.display()
        ),
    );
    let p = start_proxy_in(d, None, &[("DGP_CONFIG", cfg)], None).await;
    let logs = p.proc.logs();
    assert!(
        logs.contains("bucket routes to an unknown backend") && logs.contains("nowhere"),
        "{logs}"
    );
    assert!(
        logs.contains("proxy-AES encryption mode without a key: writes land in plaintext"),
        "{logs}"
    );
    // The route is ignored: the bucket lives on the default backend, in plaintext.
    let c = p.client();
    c.create_bucket().bucket("lost").send().await.unwrap();
    put_bytes(&c, "lost", "x.bin", b"plain text here").await;
    let stored = std::fs::read(main.join("deltaspaces/lost/x.bin")).unwrap();
    assert_eq!(stored, b"plain text here");
    assert_eq!(get_bytes(&c, "lost", "x.bin").await, b"plain text here");
}
