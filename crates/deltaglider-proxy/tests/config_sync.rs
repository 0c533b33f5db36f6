//! `DGP_CONFIG_SYNC_BUCKET`: two proxies on one s3s-fs upstream share admin-API IAM changes
//! through the sync bucket; the variable is refused with the filesystem backend.

mod common;

use std::time::{Duration, Instant};

use common::*;

const SYNC: &str = "dgp-sync";
const CAROL_AK: &str = "CAROLAK";
const CAROL_SK: &str = "carol-secret-key-0123456789";

/// Whether `p` accepts a LIST of `bucket` signed with carol's keys.
async fn carol_accepted(p: &Proxy, bucket: &str) -> bool {
    p.client_as(CAROL_AK, CAROL_SK)
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .is_ok()
}

/// Polls until `want` (the deadline only bounds a broken build; the poll interval is 1 s).
async fn wait_for(p: &Proxy, bucket: &str, want: bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while carol_accepted(p, bucket).await != want {
        assert!(
            Instant::now() < deadline,
            "{what} never happened\n{}",
            p.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn iam_changes_propagate_between_instances_through_the_sync_bucket() {
    let Some(up) = S3sFs::start("iam_changes_propagate_between_instances").await else {
        return;
    };
    let env = [
        ("DGP_CONFIG_SYNC_BUCKET", SYNC.to_string()),
        ("DGP_CONFIG_SYNC_INTERVAL_SECS", "1".into()),
        (
            "DGP_BOOTSTRAP_PASSWORD_HASH",
            bcrypt::hash("pw", 4).unwrap(),
        ),
        ("DGP_SECURE_COOKIES", "false".into()),
    ];
    let a = start_proxy(Some(&up), &env).await;
    let b = start_proxy(Some(&up), &env).await;
    a.client()
        .create_bucket()
        .bucket("data")
        .send()
        .await
        .unwrap();
    put_bytes(&a.client(), "data", "x.txt", b"hello").await;
    assert!(!carol_accepted(&a, "data").await);
    assert!(!carol_accepted(&b, "data").await);

    let http = reqwest::Client::new();
    let cookie_a = admin_login(&a.url(), "pw").await;
    let carol = serde_json::json!({
        "name": "carol",
        "access_key_id": CAROL_AK,
        "secret_access_key": CAROL_SK,
        "permissions": [{"actions": ["*"], "resources": ["*"]}],
    });
    create_user(&a.url(), &cookie_a, carol).await;
    assert!(carol_accepted(&a, "data").await);
    wait_for(&b, "data", true, "proxy B accepting carol").await;
    // The shared object is where the docs say, sealed like the local store (no plaintext
    // secret in it).
    let shared = std::fs::read(up.root().join(SYNC).join(".deltaglider/config.db")).unwrap();
    assert!(!shared
        .windows(CAROL_SK.len())
        .any(|w| w == CAROL_SK.as_bytes()));

    let cookie_b = admin_login(&b.url(), "pw").await;
    let deleted = http
        .delete(format!("{}/_/api/admin/users/{CAROL_AK}", b.url()))
        .header("cookie", &cookie_b)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert!(!carol_accepted(&b, "data").await);
    wait_for(&a, "data", false, "proxy A refusing carol").await;

    // A restarted A keeps the deletion (its local store and the shared object agree), and
    // a restarted B keeps what it pulled durably.
    let data_a = a.data.clone();
    let keep = a.keep;
    drop(a.proc);
    let a2 = start_proxy_in(&data_a, Some(&up), &env, keep).await;
    assert!(!carol_accepted(&a2, "data").await);
    assert!(b.data.join("deltaglider_config.db").exists());
}

#[tokio::test]
async fn sync_bucket_is_refused_with_the_filesystem_backend() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(proxy_bin())
        .env(
            "DGP_LISTEN_ADDR",
            format!("127.0.0.1:{}", scai_testkit::free_port()),
        )
        .env("DGP_DATA_DIR", dir.path())
        .env("DGP_CONFIG", dir.path().join("none.yaml"))
        .env("DGP_ACCESS_KEY_ID", AK)
        .env("DGP_SECRET_ACCESS_KEY", SK)
        .env("DGP_CONFIG_SYNC_BUCKET", SYNC)
        .env_remove("DGP_S3_ENDPOINT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the proxy started with DGP_CONFIG_SYNC_BUCKET on the filesystem backend");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("DGP_CONFIG_SYNC_BUCKET needs the S3 backend"),
        "{err}"
    );
}
