//! SIGKILL during PUTs: after a restart no half-written object is visible, every listed
//! object reads back (SHA-256 verified) as one of the versions written to it, and no delta
//! is left without its reference.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::*;
use futures::StreamExt;

#[tokio::test]
async fn sigkill_during_puts_leaves_no_partial_or_dangling_objects() {
    let mut p = start_proxy(None, &[("DGP_AUTHENTICATION", "none".into())]).await;
    let base_url = p.url();
    let http = reqwest::Client::new();
    let bucket = "crash-bkt";
    assert!(http
        .put(format!("{base_url}/{bucket}"))
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    let seed = bytes(1, 1_000_000);
    assert!(http
        .put(format!("{base_url}/{bucket}/c/seed.zip"))
        .body(seed.clone())
        .send()
        .await
        .unwrap()
        .status()
        .is_success());

    // Every version ever sent per key (the committed one must be one of them).
    let mut versions: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    versions
        .entry("c/seed.zip".into())
        .or_default()
        .push(seed.clone());

    // A slow upload that cannot finish before the kill.
    let slow_url = format!("{base_url}/{bucket}/c/slow.zip");
    let slow_body = bytes(2, 1_000_000);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        slow_body.chunks(100_000).map(|c| Ok(c.to_vec())).collect();
    let stream = futures::stream::iter(chunks).then(|c| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c
    });
    let slow = tokio::spawn({
        let http = http.clone();
        async move {
            let _ = http
                .put(slow_url)
                .header("content-length", "1000000")
                .body(reqwest::Body::wrap_stream(stream))
                .send()
                .await;
        }
    });

    // A burst of delta and passthrough writes, overwrites included.
    let mut tasks = Vec::new();
    for round in 0..3u64 {
        for i in 0..4u64 {
            let key = if i % 2 == 0 {
                format!("c/k{i}.zip")
            } else {
                format!("p/k{i}.bin")
            };
            let data = if i % 2 == 0 {
                mutate(&seed, round * 10 + i)
            } else {
                bytes(round * 10 + i + 100, 600_000)
            };
            versions.entry(key.clone()).or_default().push(data.clone());
            let url = format!("{base_url}/{bucket}/{key}");
            let http = http.clone();
            tasks.push(tokio::spawn(async move {
                let _ = http.put(url).body(data).send().await;
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    p.proc.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let _ = slow.await;

    p.proc.restart();
    scai_testkit::wait_http_ok(&format!("{base_url}/_/health"), Duration::from_secs(20))
        .await
        .unwrap();

    // No delta without its reference, no temp file visible.
    let files = files_under(&p.bucket_dir(bucket));
    let names: HashSet<&String> = files.iter().collect();
    for f in &files {
        if let Some(stripped) = f.strip_suffix(".delta") {
            let dir = stripped
                .rsplit_once('/')
                .map(|(d, _)| format!("{d}/"))
                .unwrap_or_default();
            assert!(
                names.contains(&format!("{dir}reference.bin")),
                "dangling delta {f}: {files:?}"
            );
        }
        assert!(
            !f.contains("up-") && !f.contains(".put"),
            "temp file visible: {f}"
        );
    }
    assert!(
        files_under(&p.data.join("tmp")).is_empty(),
        "temp dir not cleaned on restart"
    );

    // Every listed object reads back as one of its versions; the slow upload is absent.
    let listing = http
        .get(format!("{base_url}/{bucket}?list-type=2"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let listed: Vec<String> = listing
        .split("<Key>")
        .skip(1)
        .map(|s| s.split("</Key>").next().unwrap().to_string())
        .collect();
    assert!(listed.contains(&"c/seed.zip".to_string()), "{listing}");
    assert!(
        !listed.contains(&"c/slow.zip".to_string()),
        "half-written upload visible: {listing}"
    );
    for k in &listed {
        let r = http
            .get(format!("{base_url}/{bucket}/{k}"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {k}: {}", r.status());
        let body = r.bytes().await.unwrap().to_vec();
        assert!(
            versions.get(k).is_some_and(|vs| vs.contains(&body)),
            "{k}: content is not any written version"
        );
    }
    // And writes still work in the same deltaspace.
    let again = mutate(&seed, 999);
    assert!(http
        .put(format!("{base_url}/{bucket}/c/after.zip"))
        .body(again.clone())
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    assert_eq!(
        http.get(format!("{base_url}/{bucket}/c/after.zip"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec(),
        again
    );
}
