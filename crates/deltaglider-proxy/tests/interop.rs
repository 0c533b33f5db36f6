//! Storage-format interop with the Python `deltaglider` CLI (PyPI), both ways, through a
//! real s3s-fs: the CLI writes reference.bin + .delta straight to S3 and the proxy (S3
//! backend on the same server) reads them; the proxy writes and the CLI reads.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn cli(bin: &Path, endpoint: &str, args: &[&str]) {
    let out = Command::new(bin)
        .arg("cp")
        .arg("--endpoint-url")
        .arg(endpoint)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", UP_AK)
        .env("AWS_SECRET_ACCESS_KEY", UP_SK)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("DG_SUPPRESS_DEPRECATION", "1")
        .output()
        .expect("run deltaglider");
    assert!(
        out.status.success(),
        "deltaglider {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn python_cli_and_proxy_read_each_others_objects() {
    let Some(up) = S3sFs::start("python_cli_and_proxy_read_each_others_objects").await else {
        return;
    };
    let bin = scai_testkit::services::program("DELTAGLIDER_CLI", "deltaglider")
        .expect("the Python deltaglider CLI is required (pip install deltaglider), or set SCAI_TEST_SKIP_SERVICES=1");
    let p = start_proxy(Some(&up), &[]).await;
    let c = p.client();
    c.create_bucket().bucket("interop").send().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let v1 = bytes(31, 500_000);
    let v2 = mutate(&v1, 32);
    std::fs::write(dir.path().join("v1.zip"), &v1).unwrap();
    std::fs::write(dir.path().join("v2.zip"), &v2).unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();

    // CLI writes, proxy reads.
    cli(&bin, &up.url(), &[&d("v1.zip"), "s3://interop/cli/v1.zip"]);
    cli(&bin, &up.url(), &[&d("v2.zip"), "s3://interop/cli/v2.zip"]);
    let raw = up
        .client()
        .list_objects_v2()
        .bucket("interop")
        .prefix("cli/")
        .send()
        .await
        .unwrap();
    let mut phys: Vec<_> = raw.contents().iter().filter_map(|o| o.key()).collect();
    phys.sort();
    assert_eq!(
        phys,
        vec!["cli/reference.bin", "cli/v1.zip.delta", "cli/v2.zip.delta"]
    );
    // The metadata structure both tools rely on: reference.bin names its writer and its
    // SHA-256 (prefixed `dg-` or the legacy bare names).
    let sha = |b: &[u8]| {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(b))
    };
    let meta_of = |key: &'static str| {
        let up = up.client();
        async move {
            up.head_object()
                .bucket("interop")
                .key(key)
                .send()
                .await
                .unwrap()
                .metadata()
                .cloned()
                .unwrap_or_default()
        }
    };
    let m = meta_of("cli/reference.bin").await;
    let field = |m: &std::collections::HashMap<String, String>, k: &str| {
        m.get(&format!("dg-{k}")).or_else(|| m.get(k)).cloned()
    };
    assert!(field(&m, "tool").is_some(), "{m:?}");
    assert_eq!(field(&m, "file-sha256"), Some(sha(&v1)), "{m:?}");
    assert_eq!(get_bytes(&c, "interop", "cli/v2.zip").await, v2);
    assert_eq!(get_bytes(&c, "interop", "cli/v1.zip").await, v1);
    let listed: Vec<_> = c
        .list_objects_v2()
        .bucket("interop")
        .prefix("cli/")
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .map(|o| (o.key().unwrap().to_string(), o.size().unwrap()))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("cli/v1.zip".to_string(), v1.len() as i64),
            ("cli/v2.zip".to_string(), v2.len() as i64)
        ]
    );
    // The proxy adds a delta to the CLI's deltaspace, against the CLI's reference.
    let v3 = mutate(&v2, 33);
    put_bytes(&c, "interop", "cli/v3.zip", &v3).await;
    cli(&bin, &up.url(), &["s3://interop/cli/v3.zip", &d("v3.out")]);
    assert_eq!(std::fs::read(d("v3.out")).unwrap(), v3);

    // The CLI deltas .tar.gz files with xdelta3 *without* -D, so xdelta3 encodes the
    // decompressed content and records that the decoder must recompress: the proxy (which
    // decodes with -D, as the existing proxy does) must fall back for such deltas.
    let text: Vec<u8> = (0..30_000)
        .flat_map(|i| format!("file-{i}.txt\tcontent line {i}\n").into_bytes())
        .collect();
    let mut text2 = text.clone();
    text2.extend_from_slice(b"one more line\n");
    let (g1, g2) = (gzip(&text, "-6"), gzip(&text2, "-6"));
    // The CLI keeps the local file name under the destination prefix.
    std::fs::write(dir.path().join("app-1.tar.gz"), &g1).unwrap();
    std::fs::write(dir.path().join("app-2.tar.gz"), &g2).unwrap();
    cli(
        &bin,
        &up.url(),
        &[&d("app-1.tar.gz"), "s3://interop/gz/app-1.tar.gz"],
    );
    cli(
        &bin,
        &up.url(),
        &[&d("app-2.tar.gz"), "s3://interop/gz/app-2.tar.gz"],
    );
    let raw = up
        .client()
        .list_objects_v2()
        .bucket("interop")
        .prefix("gz/")
        .send()
        .await
        .unwrap();
    let phys: Vec<_> = raw.contents().iter().filter_map(|o| o.key()).collect();
    assert!(phys.contains(&"gz/app-2.tar.gz.delta"), "{phys:?}");
    assert_eq!(get_bytes(&c, "interop", "gz/app-2.tar.gz").await, g2);
    assert_eq!(get_bytes(&c, "interop", "gz/app-1.tar.gz").await, g1);

    // Proxy writes, CLI reads (delta and passthrough).
    put_bytes(&c, "interop", "px/v1.zip", &v1).await;
    put_bytes(&c, "interop", "px/v2.zip", &v2).await;
    put_bytes(&c, "interop", "px/readme.txt", b"plain text").await;
    let m = meta_of("px/reference.bin").await;
    assert!(
        m.get("dg-tool")
            .is_some_and(|t| t.starts_with("deltaglider_proxy/")),
        "{m:?}"
    );
    assert_eq!(m.get("dg-file-sha256"), Some(&sha(&v1)), "{m:?}");
    cli(&bin, &up.url(), &["s3://interop/px/v2.zip", &d("v2.out")]);
    assert_eq!(std::fs::read(d("v2.out")).unwrap(), v2);
    cli(&bin, &up.url(), &["s3://interop/px/v1.zip", &d("v1.out")]);
    assert_eq!(std::fs::read(d("v1.out")).unwrap(), v1);
    cli(
        &bin,
        &up.url(),
        &["s3://interop/px/readme.txt", &d("readme.out")],
    );
    assert_eq!(std::fs::read(d("readme.out")).unwrap(), b"plain text");
    // gzip content the proxy deltas (a .dump): encoded with -D, the CLI's plain decode
    // rebuilds the exact bytes.
    put_bytes(&c, "interop", "dumps/db-1.dump", &g1).await;
    put_bytes(&c, "interop", "dumps/db-2.dump", &g2).await;
    cli(
        &bin,
        &up.url(),
        &["s3://interop/dumps/db-2.dump", &d("db-2.out")],
    );
    assert_eq!(std::fs::read(d("db-2.out")).unwrap(), g2);
}
