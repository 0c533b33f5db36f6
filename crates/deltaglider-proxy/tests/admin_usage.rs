//! Admin usage API end to end: delta-eligible and passthrough objects in nested prefixes
//! are written through S3, a scan is started over HTTP and polled until done, and the
//! usage tree is checked against what was written (object counts, original bytes) and
//! what lies on disk (stored bytes, internals included but never shown as keys).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

struct Admin {
    http: reqwest::Client,
    base: String,
    cookie: String,
}

impl Admin {
    async fn login(p: &Proxy) -> Admin {
        let http = reqwest::Client::new();
        let base = p.url();
        let cookie = admin_login(&base, "pw").await;
        Admin { http, base, cookie }
    }

    async fn scan(&self, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/_/api/admin/usage/scan", self.base))
            .header("cookie", &self.cookie)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn usage(&self, query: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}/_/api/admin/usage?{query}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// Starts a scan and polls until it is no longer running; returns the final answer.
    async fn scan_and_wait(&self, bucket: &str, prefix: &str, depth: usize) -> Value {
        let (s, started) = self.scan(json!({"bucket": bucket, "prefix": prefix})).await;
        assert_eq!(s, 202, "{started}");
        assert_eq!(started["status"], "scanning");
        let id = started["scan_id"].as_str().unwrap().to_string();
        let q = format!("bucket={bucket}&prefix={prefix}&depth={depth}");
        for _ in 0..600 {
            let (s, v) = self.usage(&q).await;
            assert_eq!(s, 200, "{v}");
            if v["status"] != "scanning" {
                assert_eq!(v["status"], "done", "{v}");
                assert_eq!(v["scan_id"], id.as_str());
                assert!(v["scanned_at"].as_str().is_some_and(|t| t.contains('T')));
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("usage scan of {bucket}/{prefix} never finished");
    }
}

/// Child node of `v` (a usage node) with this full prefix.
fn child<'a>(v: &'a Value, prefix: &str) -> &'a Value {
    v["children"]
        .as_array()
        .and_then(|c| c.iter().find(|n| n["prefix"] == prefix))
        .unwrap_or_else(|| panic!("no child {prefix} in {v}"))
}

fn children(v: &Value) -> Vec<String> {
    v["children"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|n| n["prefix"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn totals(v: &Value) -> (u64, u64, u64) {
    (
        v["objects"].as_u64().unwrap(),
        v["original_bytes"].as_u64().unwrap(),
        v["stored_bytes"].as_u64().unwrap(),
    )
}

/// Bytes of every file under `dir` on disk (the proxy's physical objects).
fn disk_bytes(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .map(|f| std::fs::metadata(dir.join(f)).unwrap().len())
        .sum()
}

#[tokio::test]
async fn usage_scan_reports_counts_original_and_stored_bytes() {
    let hash = bcrypt::hash("pw", 4).unwrap();
    let p = start_proxy(
        None,
        &[
            ("DGP_BOOTSTRAP_PASSWORD_HASH", hash),
            ("DGP_SECURE_COOKIES", "false".into()),
        ],
    )
    .await;
    let c = p.client();
    let bucket = "usage-bkt";
    c.create_bucket().bucket(bucket).send().await.unwrap();

    // Three versions of an artifact (stored as deltas against one reference), a
    // passthrough file beside them and one below them, and passthrough-only prefixes.
    let base = bytes(7, 300_000);
    let versions = [base.clone(), mutate(&base, 1), mutate(&base, 2)];
    for (i, v) in versions.iter().enumerate() {
        put_bytes(&c, bucket, &format!("releases/app/v{i}.zip"), v).await;
    }
    let legacy = bytes(8, 5_000);
    put_bytes(&c, bucket, "releases/app/old/legacy.png", &legacy).await;
    let readme = bytes(9, 1_234);
    put_bytes(&c, bucket, "releases/docs/readme.txt", &readme).await;
    let notes = bytes(10, 777);
    put_bytes(&c, bucket, "misc/notes.txt", &notes).await;
    let top = bytes(11, 99);
    put_bytes(&c, bucket, "top.bin", &top).await;
    let app_dir = p.bucket_dir(bucket).join("releases/app");
    assert!(
        app_dir.join("reference.bin").exists(),
        "the zips must have been stored as deltas"
    );

    let admin = Admin::login(&p).await;

    // Without a session: 401 on both routes.
    let anon = reqwest::Client::new();
    let r = anon
        .get(format!("{}/_/api/admin/usage?bucket={bucket}", p.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = anon
        .post(format!("{}/_/api/admin/usage/scan", p.url()))
        .json(&json!({"bucket": bucket}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Bad input answers in JSON, never a bare error.
    let (s, v) = admin.scan(json!({"bucket": "no-such-bucket"})).await;
    assert_eq!((s, v["error"].as_str()), (404, Some("no_such_bucket")));
    let (s, v) = admin.scan(json!({"prefix": "x/"})).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = admin.usage("prefix=x/").await;
    assert_eq!((s, v["error"].as_str()), (400, Some("bucket_required")));
    let (s, _) = admin.usage(&format!("bucket={bucket}&depth=deep")).await;
    assert_eq!(s, 400);

    // Never scanned: status none, no tree.
    let (s, v) = admin.usage(&format!("bucket={bucket}")).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("none")));
    assert!(v["usage"].is_null());

    // Whole bucket, three levels of common prefixes.
    let v = admin.scan_and_wait(bucket, "", 3).await;
    let root = &v["usage"];
    let zips: u64 = versions.iter().map(|v| v.len() as u64).sum();
    let all_orig = zips + (legacy.len() + readme.len() + notes.len() + top.len()) as u64;
    let bucket_dir = p.bucket_dir(bucket);
    assert_eq!(
        totals(root),
        (7, all_orig, disk_bytes(&bucket_dir)),
        "{root}"
    );
    assert_eq!(children(root), ["misc/", "releases/"]);
    let releases = child(root, "releases/");
    assert_eq!(children(releases), ["releases/app/", "releases/docs/"]);

    let app = child(releases, "releases/app/");
    let (objs, orig, stored) = totals(app);
    assert_eq!(objs, 4, "three zips and old/legacy.png: {app}");
    assert_eq!(orig, zips + legacy.len() as u64);
    // Stored bytes are what lies on disk, reference.bin and the deltas included.
    assert_eq!(stored, disk_bytes(&app_dir));
    assert!(
        stored < orig,
        "delta prefix must store less than it holds: {app}"
    );
    assert_eq!(children(app), ["releases/app/old/"]);
    assert_eq!(
        totals(child(app, "releases/app/old/")),
        (1, legacy.len() as u64, legacy.len() as u64)
    );
    // Passthrough prefixes store exactly what they hold.
    let docs = child(releases, "releases/docs/");
    assert_eq!(totals(docs), (1, readme.len() as u64, readme.len() as u64));
    let misc = child(root, "misc/");
    assert_eq!(totals(misc), (1, notes.len() as u64, notes.len() as u64));
    // Internals are never shown as keys or prefixes.
    let text = v.to_string();
    assert!(
        !text.contains("reference.bin") && !text.contains(".delta"),
        "{text}"
    );

    // The same cached scan read with depth 1: one level only.
    let (_, v1) = admin.usage(&format!("bucket={bucket}&depth=1")).await;
    assert_eq!(v1["status"], "done");
    assert_eq!(children(&v1["usage"]), ["misc/", "releases/"]);
    assert!(children(child(&v1["usage"], "releases/")).is_empty());

    // A scan of a nested prefix is cached apart from the bucket's.
    let v = admin.scan_and_wait(bucket, "releases/app/", 2).await;
    assert_eq!(v["usage"]["prefix"], "releases/app/");
    assert_eq!(totals(&v["usage"]), (objs, orig, stored));
    assert_eq!(children(&v["usage"]), ["releases/app/old/"]);

    // A rescan sees changes: delete one version and the passthrough file.
    c.delete_object()
        .bucket(bucket)
        .key("releases/app/v2.zip")
        .send()
        .await
        .unwrap();
    c.delete_object()
        .bucket(bucket)
        .key("releases/app/old/legacy.png")
        .send()
        .await
        .unwrap();
    let v = admin.scan_and_wait(bucket, "releases/app/", 2).await;
    let (objs2, orig2, stored2) = totals(&v["usage"]);
    assert_eq!(objs2, 2);
    assert_eq!(orig2, (versions[0].len() + versions[1].len()) as u64);
    assert_eq!(stored2, disk_bytes(&app_dir));
    assert!(children(&v["usage"]).is_empty());
}
