//! Listing on the upstream-S3 backend (a real s3s-fs on loopback): the sizes and ETags of
//! the originals come from per-key `dg-*` metadata, which the proxy caches
//! (`DGP_METADATA_CACHE_MB`). Repeated listings are served from the cache, and stay right
//! after overwrites and deletes through the proxy and after writes that bypass it.

mod common;

use std::collections::BTreeMap;

use common::*;

/// key → (size, ETag) as the proxy lists them.
async fn listing(c: &aws_sdk_s3::Client, bucket: &str) -> BTreeMap<String, (i64, String)> {
    let out = c
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("list: {e:?}"));
    out.contents()
        .iter()
        .map(|o| {
            (
                o.key().unwrap().to_string(),
                (
                    o.size().unwrap(),
                    o.e_tag().unwrap().trim_matches('"').to_string(),
                ),
            )
        })
        .collect()
}

/// LastModified of `key` as the listing shows it.
async fn modified(c: &aws_sdk_s3::Client, bucket: &str, key: &str) -> aws_smithy_types::DateTime {
    let out = c.list_objects_v2().bucket(bucket).send().await.unwrap();
    *out.contents()
        .iter()
        .find(|o| o.key() == Some(key))
        .unwrap_or_else(|| panic!("{key} not listed"))
        .last_modified()
        .unwrap()
}

fn md5hex(b: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(b))
}

fn expect(objs: &[(&str, &[u8])]) -> BTreeMap<String, (i64, String)> {
    objs.iter()
        .map(|(k, d)| (k.to_string(), (d.len() as i64, md5hex(d))))
        .collect()
}

/// Sum of a Prometheus counter's samples (0 when absent).
async fn counter(p: &Proxy, name: &str) -> f64 {
    let text = p.metrics().await;
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const HITS: &str = "deltaglider_metadata_cache_hits_total";
const MISSES: &str = "deltaglider_metadata_cache_misses_total";

#[tokio::test]
async fn listing_sizes_stay_right_with_the_metadata_cache() {
    let Some(up) = S3sFs::start("listing_sizes_stay_right_with_the_metadata_cache").await else {
        return;
    };
    let p = start_proxy(Some(&up), &[]).await;
    let c = p.client();
    c.create_bucket().bucket("lst").send().await.unwrap();
    let v1 = bytes(1, 300_000);
    let v2 = mutate(&v1, 2);
    let plain = bytes(3, 5_000);
    put_bytes(&c, "lst", "rel/a.zip", &v1).await;
    put_bytes(&c, "lst", "rel/b.zip", &v2).await;
    put_bytes(&c, "lst", "rel/c.bin", &plain).await;
    // b.zip is stored as a small delta: the listing must show the original's size.
    let want = expect(&[
        ("rel/a.zip", &v1),
        ("rel/b.zip", &v2),
        ("rel/c.bin", &plain),
    ]);
    assert_eq!(listing(&c, "lst").await, want);

    // Listed again: every key's metadata comes from the cache, no miss.
    let (h0, m0) = (counter(&p, HITS).await, counter(&p, MISSES).await);
    assert_eq!(listing(&c, "lst").await, want);
    let (h1, m1) = (counter(&p, HITS).await, counter(&p, MISSES).await);
    // rel/reference.bin, rel/a.zip.delta, rel/b.zip.delta, rel/c.bin
    assert!(h1 - h0 >= 4.0, "hits {h0} -> {h1}");
    assert_eq!(m1, m0, "a repeated listing missed the cache");

    // Overwrite through the proxy: new size and ETag at once.
    let v3 = mutate(&v2, 4);
    assert_ne!(v3.len(), v2.len());
    put_bytes(&c, "lst", "rel/b.zip", &v3).await;
    let want = expect(&[
        ("rel/a.zip", &v1),
        ("rel/b.zip", &v3),
        ("rel/c.bin", &plain),
    ]);
    assert_eq!(listing(&c, "lst").await, want);
    // Same size, other bytes.
    let mut v4 = v3.clone();
    v4[10] ^= 0xff;
    put_bytes(&c, "lst", "rel/b.zip", &v4).await;
    let want = expect(&[
        ("rel/a.zip", &v1),
        ("rel/b.zip", &v4),
        ("rel/c.bin", &plain),
    ]);
    assert_eq!(listing(&c, "lst").await, want);

    // The very same bytes again: upstream, the delta object keeps its size (and usually its
    // Last-Modified second), so only the invalidation on put makes the listing show the
    // new upload time.
    for _ in 0..3 {
        let before = modified(&c, "lst", "rel/b.zip").await;
        put_bytes(&c, "lst", "rel/b.zip", &v4).await;
        let after = modified(&c, "lst", "rel/b.zip").await;
        assert!(
            after > before,
            "listed LastModified {after:?} after re-upload, was {before:?}"
        );
    }
    assert_eq!(listing(&c, "lst").await, want);

    // Delete, then re-create under the same key with other content.
    c.delete_object()
        .bucket("lst")
        .key("rel/a.zip")
        .send()
        .await
        .unwrap();
    let want = expect(&[("rel/b.zip", &v4), ("rel/c.bin", &plain)]);
    assert_eq!(listing(&c, "lst").await, want);
    let v5 = mutate(&v1, 5);
    put_bytes(&c, "lst", "rel/a.zip", &v5).await;
    let want = expect(&[
        ("rel/a.zip", &v5),
        ("rel/b.zip", &v4),
        ("rel/c.bin", &plain),
    ]);
    assert_eq!(listing(&c, "lst").await, want);

    // A write that bypasses the proxy (straight to the upstream bucket) is seen too: the
    // cached entry no longer matches the stored object.
    let other = bytes(6, 7_000);
    up.client()
        .put_object()
        .bucket("lst")
        .key("rel/c.bin")
        .body(other.clone().into())
        .send()
        .await
        .unwrap();
    let want = expect(&[
        ("rel/a.zip", &v5),
        ("rel/b.zip", &v4),
        ("rel/c.bin", &other),
    ]);
    assert_eq!(listing(&c, "lst").await, want);
    drop(p);

    // DGP_METADATA_CACHE_MB=0: no cache, same answers.
    let p = start_proxy(Some(&up), &[("DGP_METADATA_CACHE_MB", "0".into())]).await;
    let c = p.client();
    assert_eq!(listing(&c, "lst").await, want);
    assert_eq!(listing(&c, "lst").await, want);
    assert_eq!(counter(&p, HITS).await, 0.0);
}

/// ListObjectsV2 with MinIO's `metadata=true` (a signed request, on both backends): every
/// key carries `<UserMetadata>` with its content type, its user metadata and the echoed
/// `dg-*` fields, a delta under its original's digest; without the parameter nothing changes.
#[tokio::test]
async fn list_v2_metadata_true_returns_each_keys_metadata() {
    let up = S3sFs::start("list_v2_metadata_true_returns_each_keys_metadata").await;
    for upstream in [None, up.as_ref()] {
        let p = start_proxy(upstream, &[]).await;
        let c = p.client();
        c.create_bucket().bucket("mdl").send().await.unwrap();
        let v1 = bytes(11, 200_000);
        let v2 = mutate(&v1, 12);
        for (key, data, ct) in [
            ("r/a.zip", &v1, "application/zip"),
            ("r/b.zip", &v2, "application/zip"),
            ("r/n.txt", &b"note & <text>".to_vec(), "text/plain"),
        ] {
            c.put_object()
                .bucket("mdl")
                .key(key)
                .content_type(ct)
                .metadata("owner", "team <a&b>")
                .body(data.clone().into())
                .send()
                .await
                .unwrap();
        }
        let raw = RawResponse::default();
        let out = c
            .list_objects_v2()
            .bucket("mdl")
            .prefix("r/")
            .customize()
            .mutate_request(|r| {
                let uri = format!("{}&metadata=true", r.uri());
                r.set_uri(uri).unwrap();
            })
            .interceptor(raw.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(out.contents().len(), 3);
        let xml = raw.body_text();
        let contents: Vec<&str> = xml.split("<Contents>").skip(1).collect();
        assert_eq!(contents.len(), 3, "{xml}");
        let sha = |b: &[u8]| {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(b))
        };
        for (entry, key, data, ct) in [
            (contents[0], "r/a.zip", &v1, "application/zip"),
            (contents[1], "r/b.zip", &v2, "application/zip"),
            (
                contents[2],
                "r/n.txt",
                &b"note & <text>".to_vec(),
                "text/plain",
            ),
        ] {
            assert!(entry.contains(&format!("<Key>{key}</Key>")), "{entry}");
            let um = entry
                .split_once("<UserMetadata>")
                .and_then(|(_, r)| r.split_once("</UserMetadata>"))
                .map(|(m, _)| m)
                .unwrap_or_else(|| panic!("no UserMetadata in {entry}"));
            assert!(
                um.contains(&format!("<content-type>{ct}</content-type>")),
                "{um}"
            );
            assert!(
                um.contains("<X-Amz-Meta-owner>team &lt;a&amp;b&gt;</X-Amz-Meta-owner>"),
                "{um}"
            );
            assert!(
                um.contains(&format!(
                    "<X-Amz-Meta-dg-file-sha256>{}</X-Amz-Meta-dg-file-sha256>",
                    sha(data)
                )),
                "{um}"
            );
        }
        // b.zip is a delta: its metadata says so, under the original's digest above.
        assert!(
            contents[1].contains("<X-Amz-Meta-dg-ref-key>"),
            "{}",
            contents[1]
        );

        let plain = RawResponse::default();
        c.list_objects_v2()
            .bucket("mdl")
            .customize()
            .interceptor(plain.clone())
            .send()
            .await
            .unwrap();
        let xml = plain.body_text();
        assert!(
            xml.contains("<Key>r/a.zip</Key>") && !xml.contains("UserMetadata"),
            "{xml}"
        );
    }
}
