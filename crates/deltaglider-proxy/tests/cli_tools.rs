//! Real S3 clients against the running proxy, on both backends: the `aws` CLI (cp with
//! multipart, ls, sync, rm, s3api head-object), `s3cmd` (put with multipart, get, ls, del)
//! and `rclone` (copyto, cat, ls, deletefile).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn need(test: &str, var: &str, name: &str) -> PathBuf {
    scai_testkit::services::program(var, name).unwrap_or_else(|| {
        panic!("{test}: `{name}` not found (apt-get install -y s3cmd rclone; pip install awscli), or set SCAI_TEST_SKIP_SERVICES=1")
    })
}

fn run(mut cmd: Command) -> String {
    let t0 = std::time::Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "{:?} {:?}",
        t0.elapsed(),
        cmd.get_args().collect::<Vec<_>>()
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

struct Tools {
    aws: PathBuf,
    s3cmd: PathBuf,
    rclone: PathBuf,
}

fn aws(t: &Tools, p: &Proxy, work: &Path, args: &[&str]) -> String {
    let mut c = Command::new(&t.aws);
    c.arg("--endpoint-url")
        .arg(p.url())
        .args(args)
        .env("AWS_ACCESS_KEY_ID", AK)
        .env("AWS_SECRET_ACCESS_KEY", SK)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", work.join("aws.cfg"))
        .env_remove("AWS_PROFILE");
    run(c)
}

fn s3cmd(t: &Tools, work: &Path, args: &[&str]) -> String {
    let mut c = Command::new(&t.s3cmd);
    c.arg("-c").arg(work.join("s3cmd.cfg")).args(args);
    run(c)
}

fn rclone(t: &Tools, p: &Proxy, args: &[&str]) -> String {
    let mut c = Command::new(&t.rclone);
    c.args(args)
        .env_remove("AWS_CA_BUNDLE")
        .env("RCLONE_CONFIG", "/dev/null")
        .env("RCLONE_S3_PROVIDER", "Other")
        .env("RCLONE_S3_ENDPOINT", p.url())
        .env("RCLONE_S3_ACCESS_KEY_ID", AK)
        .env("RCLONE_S3_SECRET_ACCESS_KEY", SK)
        .env("RCLONE_S3_REGION", "us-east-1");
    run(c)
}

async fn suite(t: &Tools, p: &Proxy) {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::write(
        w.join("aws.cfg"),
        "[default]\ns3 =\n  multipart_threshold = 5MB\n  multipart_chunksize = 5MB\n",
    )
    .unwrap();
    std::fs::write(
        w.join("s3cmd.cfg"),
        format!(
            "[default]\naccess_key = {AK}\nsecret_key = {SK}\nhost_base = 127.0.0.1:{port}\nhost_bucket = 127.0.0.1:{port}\nuse_https = False\nsignature_v2 = False\nbucket_location = us-east-1\n",
            port = p.port
        ),
    )
    .unwrap();
    let big = bytes(41, 6 * 1024 * 1024 + 123);
    let big2 = mutate(&big, 42);
    std::fs::write(w.join("big-1.zip"), &big).unwrap();
    std::fs::write(w.join("big-2.zip"), &big2).unwrap();
    std::fs::write(w.join("small.txt"), b"small text").unwrap();

    // aws CLI.
    aws(t, p, w, &["s3", "mb", "s3://cli-bkt"]);
    aws(
        t,
        p,
        w,
        &[
            "s3",
            "cp",
            w.join("big-1.zip").to_str().unwrap(),
            "s3://cli-bkt/aws/big-1.zip",
        ],
    );
    aws(
        t,
        p,
        w,
        &[
            "s3",
            "cp",
            w.join("big-2.zip").to_str().unwrap(),
            "s3://cli-bkt/aws/big-2.zip",
        ],
    );
    let head = aws(
        t,
        p,
        w,
        &[
            "s3api",
            "head-object",
            "--bucket",
            "cli-bkt",
            "--key",
            "aws/big-2.zip",
        ],
    );
    assert!(
        head.contains(&format!("\"ContentLength\": {}", big2.len())) && head.contains("-2\\\""),
        "multipart head: {head}"
    );
    aws(
        t,
        p,
        w,
        &[
            "s3",
            "cp",
            "s3://cli-bkt/aws/big-2.zip",
            w.join("aws-out.zip").to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(w.join("aws-out.zip")).unwrap(), big2);
    let ls = aws(t, p, w, &["s3", "ls", "--recursive", "s3://cli-bkt/"]);
    assert!(
        ls.contains("aws/big-1.zip")
            && ls.contains("aws/big-2.zip")
            && !ls.contains("reference.bin")
            && !ls.contains(".delta"),
        "{ls}"
    );
    let syncdir = w.join("syncsrc");
    std::fs::create_dir_all(syncdir.join("sub")).unwrap();
    std::fs::write(syncdir.join("a.txt"), b"a").unwrap();
    std::fs::write(syncdir.join("sub/b.txt"), b"bb").unwrap();
    aws(
        t,
        p,
        w,
        &[
            "s3",
            "sync",
            syncdir.to_str().unwrap(),
            "s3://cli-bkt/sync/",
        ],
    );
    let again = aws(
        t,
        p,
        w,
        &[
            "s3",
            "sync",
            syncdir.to_str().unwrap(),
            "s3://cli-bkt/sync/",
        ],
    );
    assert!(
        again.trim().is_empty(),
        "second sync should upload nothing: {again}"
    );
    aws(t, p, w, &["s3", "rm", "s3://cli-bkt/aws/big-1.zip"]);
    aws(
        t,
        p,
        w,
        &[
            "s3",
            "cp",
            "s3://cli-bkt/aws/big-2.zip",
            w.join("aws-out2.zip").to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(w.join("aws-out2.zip")).unwrap(), big2);

    // s3cmd (multipart with 5 MB chunks).
    s3cmd(
        t,
        w,
        &[
            "put",
            "--multipart-chunk-size-mb=5",
            w.join("big-1.zip").to_str().unwrap(),
            "s3://cli-bkt/s3cmd/big-1.zip",
        ],
    );
    s3cmd(
        t,
        w,
        &[
            "put",
            w.join("small.txt").to_str().unwrap(),
            "s3://cli-bkt/s3cmd/small.txt",
        ],
    );
    s3cmd(
        t,
        w,
        &[
            "get",
            "--force",
            "s3://cli-bkt/s3cmd/big-1.zip",
            w.join("s3cmd-out.zip").to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(w.join("s3cmd-out.zip")).unwrap(), big);
    let ls = s3cmd(t, w, &["ls", "s3://cli-bkt/s3cmd/"]);
    assert!(
        ls.contains("s3cmd/big-1.zip") && ls.contains("s3cmd/small.txt"),
        "{ls}"
    );
    s3cmd(t, w, &["del", "s3://cli-bkt/s3cmd/small.txt"]);
    assert!(!s3cmd(t, w, &["ls", "s3://cli-bkt/s3cmd/"]).contains("small.txt"));

    // rclone.
    rclone(
        t,
        p,
        &[
            "copyto",
            w.join("big-2.zip").to_str().unwrap(),
            ":s3:cli-bkt/rclone/big-2.zip",
        ],
    );
    rclone(
        t,
        p,
        &[
            "copyto",
            w.join("small.txt").to_str().unwrap(),
            ":s3:cli-bkt/rclone/small.txt",
        ],
    );
    assert_eq!(
        rclone(t, p, &["cat", ":s3:cli-bkt/rclone/small.txt"]),
        "small text"
    );
    rclone(
        t,
        p,
        &[
            "copyto",
            ":s3:cli-bkt/rclone/big-2.zip",
            w.join("rclone-out.zip").to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(w.join("rclone-out.zip")).unwrap(), big2);
    let ls = rclone(t, p, &["ls", ":s3:cli-bkt/rclone"]);
    assert!(
        ls.contains(&format!("{} big-2.zip", big2.len())) && ls.contains("10 small.txt"),
        "{ls}"
    );
    rclone(t, p, &["deletefile", ":s3:cli-bkt/rclone/small.txt"]);
    assert!(!rclone(t, p, &["ls", ":s3:cli-bkt/rclone"]).contains("small.txt"));
    // Everything the tools stored reads back through the SDK too.
    assert_eq!(
        get_bytes(&p.client(), "cli-bkt", "sync/sub/b.txt").await,
        b"bb"
    );
}

fn tools(test: &str) -> Option<Tools> {
    if scai_testkit::services::skip(test) {
        return None;
    }
    Some(Tools {
        aws: need(test, "AWS_CLI", "aws"),
        s3cmd: need(test, "S3CMD", "s3cmd"),
        rclone: need(test, "RCLONE", "rclone"),
    })
}

#[tokio::test]
async fn cli_tools_on_filesystem_backend() {
    let Some(t) = tools("cli_tools_on_filesystem_backend") else {
        return;
    };
    let p = start_proxy(None, &[]).await;
    suite(&t, &p).await;
}

#[tokio::test]
async fn cli_tools_on_s3_backend() {
    let Some(t) = tools("cli_tools_on_s3_backend") else {
        return;
    };
    let Some(up) = S3sFs::start("cli_tools_on_s3_backend").await else {
        return;
    };
    let p = start_proxy(Some(&up), &[]).await;
    suite(&t, &p).await;
}
