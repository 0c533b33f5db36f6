//! The S3 API through aws-sdk-s3 against the real proxy binary, on the filesystem backend
//! and on the upstream-S3 backend (a real s3s-fs on loopback): buckets, objects, delta
//! layout, LIST hiding internals, ranges, conditionals, copy, multipart, deletes.

mod common;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use common::*;
use md5::Digest as _;

const B: &str = "dgp-api-test";

/// Physical keys of a bucket as the backend stores them.
async fn physical(p: &Proxy, up: Option<&S3sFs>, bucket: &str) -> Vec<String> {
    match up {
        None => files_under(&p.bucket_dir(bucket)),
        Some(u) => {
            let out = u
                .client()
                .list_objects_v2()
                .bucket(bucket)
                .send()
                .await
                .unwrap();
            let mut v: Vec<String> = out
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string))
                .collect();
            v.sort();
            v
        }
    }
}

fn md5hex(b: &[u8]) -> String {
    hex::encode(md5::Md5::digest(b))
}

async fn list_keys(c: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<(String, i64)> {
    let out = c
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    out.contents()
        .iter()
        .map(|o| (o.key().unwrap().to_string(), o.size().unwrap()))
        .collect()
}

/// The headers every S3 answer carries: a fresh random UUID `x-amz-request-id` (on an
/// error too), and `Accept-Ranges: bytes` on GET/HEAD.
async fn response_headers(p: &Proxy, c: &aws_sdk_s3::Client) {
    put_bytes(c, B, "hdr/h.txt", b"headers").await;
    let url = presigned_get(c, B, "hdr/h.txt").await;
    let http = reqwest::Client::new();
    let ok = http.get(&url).send().await.unwrap();
    let denied = http
        .get(format!("{}/{B}/hdr/h.txt", p.url()))
        .send()
        .await
        .unwrap();
    assert_eq!((ok.status().as_u16(), denied.status().as_u16()), (200, 403));
    assert_eq!(ok.headers()["accept-ranges"], "bytes");
    let id = |r: &reqwest::Response| {
        let v = r.headers()["x-amz-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        uuid::Uuid::parse_str(&v).unwrap_or_else(|e| panic!("{v:?}: {e}"));
        v
    };
    assert_ne!(id(&ok), id(&denied));
    c.delete_object()
        .bucket(B)
        .key("hdr/h.txt")
        .send()
        .await
        .unwrap();
}

async fn suite(p: &Proxy, up: Option<&S3sFs>) {
    let c = p.client();
    // Buckets.
    c.create_bucket().bucket(B).send().await.unwrap();
    response_headers(p, &c).await;
    let dup = c.create_bucket().bucket(B).send().await.unwrap_err();
    assert!(format!("{dup:?}").contains("Bucket"), "{dup:?}");
    let lb = c.list_buckets().send().await.unwrap();
    assert!(lb.buckets().iter().any(|b| b.name() == Some(B)));
    c.head_bucket().bucket(B).send().await.unwrap();
    assert!(c
        .head_bucket()
        .bucket("no-such-bucket-x")
        .send()
        .await
        .is_err());
    let e = c
        .put_object()
        .bucket("no-such-bucket-x")
        .key("a.zip")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.into_service_error().meta().code(), Some("NoSuchBucket"));

    // Delta layout: first eligible object seeds the reference; similar ones become deltas;
    // an unrelated archive and a non-eligible extension go passthrough.
    let v1 = bytes(1, 300_000);
    let v2 = mutate(&v1, 2);
    let unrelated = bytes(99, 200_000);
    c.put_object()
        .bucket(B)
        .key("rel/app-1.zip")
        .body(v1.clone().into())
        .content_type("application/zip")
        .metadata("build", "one")
        .send()
        .await
        .unwrap();
    let put2 = c
        .put_object()
        .bucket(B)
        .key("rel/app-2.zip")
        .body(v2.clone().into())
        .send()
        .await
        .unwrap();
    assert_eq!(put2.e_tag().unwrap().trim_matches('"'), md5hex(&v2));
    put_bytes(&c, B, "rel/random.zip", &unrelated).await;
    put_bytes(&c, B, "rel/notes.txt", b"release notes").await;
    assert_eq!(
        physical(p, up, B).await,
        vec![
            "rel/app-1.zip.delta",
            "rel/app-2.zip.delta",
            "rel/notes.txt",
            "rel/random.zip",
            "rel/reference.bin"
        ]
    );
    // LIST hides internals and reports original sizes.
    assert_eq!(
        list_keys(&c, B, "").await,
        vec![
            ("rel/app-1.zip".to_string(), v1.len() as i64),
            ("rel/app-2.zip".to_string(), v2.len() as i64),
            ("rel/notes.txt".to_string(), 13),
            ("rel/random.zip".to_string(), unrelated.len() as i64),
        ]
    );
    // GET reconstructs; HEAD reports original size, ETag, content type, user metadata.
    assert_eq!(get_bytes(&c, B, "rel/app-2.zip").await, v2);
    assert_eq!(get_bytes(&c, B, "rel/app-1.zip").await, v1);
    assert_eq!(get_bytes(&c, B, "rel/random.zip").await, unrelated);
    let h = c
        .head_object()
        .bucket(B)
        .key("rel/app-1.zip")
        .send()
        .await
        .unwrap();
    assert_eq!(h.content_length(), Some(v1.len() as i64));
    assert_eq!(h.e_tag().unwrap().trim_matches('"'), md5hex(&v1));
    assert_eq!(h.content_type(), Some("application/zip"));
    assert_eq!(
        h.metadata().unwrap().get("build").map(String::as_str),
        Some("one")
    );
    assert_eq!(
        h.metadata().unwrap().get("dg-note").map(String::as_str),
        Some("delta")
    );

    // Ranges on a delta and on a passthrough object.
    let r = c
        .get_object()
        .bucket(B)
        .key("rel/app-2.zip")
        .range("bytes=10-99")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.content_range(),
        Some(format!("bytes 10-99/{}", v2.len()).as_str())
    );
    assert_eq!(
        r.body.collect().await.unwrap().into_bytes().as_ref(),
        &v2[10..100]
    );
    let r = c
        .get_object()
        .bucket(B)
        .key("rel/random.zip")
        .range("bytes=-50")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.body.collect().await.unwrap().into_bytes().as_ref(),
        &unrelated[unrelated.len() - 50..]
    );
    let e = c
        .get_object()
        .bucket(B)
        .key("rel/random.zip")
        .range("bytes=999999999-")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(416));

    // Conditional requests.
    let etag = format!("\"{}\"", md5hex(&v2));
    let e = c
        .get_object()
        .bucket(B)
        .key("rel/app-2.zip")
        .if_none_match(&etag)
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(304));
    let e = c
        .get_object()
        .bucket(B)
        .key("rel/app-2.zip")
        .if_match("\"nope\"")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(412));
    c.get_object()
        .bucket(B)
        .key("rel/app-2.zip")
        .if_match(&etag)
        .send()
        .await
        .unwrap();
    let e = c
        .put_object()
        .bucket(B)
        .key("rel/app-2.zip")
        .if_none_match("*")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(412));

    // Delimiter and pagination (v2 tokens and v1 markers).
    put_bytes(&c, B, "rel/sub/x.zip", &bytes(5, 1000)).await;
    put_bytes(&c, B, "top.txt", b"top").await;
    let out = c
        .list_objects_v2()
        .bucket(B)
        .prefix("rel/")
        .delimiter("/")
        .send()
        .await
        .unwrap();
    let cps: Vec<_> = out
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!(cps, vec!["rel/sub/"]);
    assert_eq!(out.contents().len(), 4);
    let out = c
        .list_objects_v2()
        .bucket(B)
        .delimiter("/")
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.common_prefixes()
            .iter()
            .filter_map(|p| p.prefix())
            .collect::<Vec<_>>(),
        vec!["rel/"]
    );
    assert_eq!(
        out.contents()
            .iter()
            .filter_map(|o| o.key())
            .collect::<Vec<_>>(),
        vec!["top.txt"]
    );
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let mut req = c.list_objects_v2().bucket(B).max_keys(2);
        if let Some(t) = token.take() {
            req = req.continuation_token(t);
        }
        let out = req.send().await.unwrap();
        assert!(out.contents().len() <= 2);
        seen.extend(out.contents().iter().map(|o| o.key().unwrap().to_string()));
        match out.next_continuation_token() {
            Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => break,
        }
    }
    assert_eq!(
        seen,
        vec![
            "rel/app-1.zip",
            "rel/app-2.zip",
            "rel/notes.txt",
            "rel/random.zip",
            "rel/sub/x.zip",
            "top.txt"
        ]
    );
    let v1page = c.list_objects().bucket(B).max_keys(3).send().await.unwrap();
    assert_eq!(v1page.is_truncated(), Some(true));
    let marker = v1page.next_marker().unwrap().to_string();
    let v1page2 = c
        .list_objects()
        .bucket(B)
        .marker(&marker)
        .send()
        .await
        .unwrap();
    assert_eq!(
        v1page2
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .collect::<Vec<_>>(),
        vec!["rel/random.zip", "rel/sub/x.zip", "top.txt"]
    );

    // Copy (COPY directive keeps metadata; REPLACE sets new).
    c.copy_object()
        .bucket(B)
        .key("other/copy.zip")
        .copy_source(format!("{B}/rel/app-1.zip"))
        .send()
        .await
        .unwrap();
    assert_eq!(get_bytes(&c, B, "other/copy.zip").await, v1);
    let h = c
        .head_object()
        .bucket(B)
        .key("other/copy.zip")
        .send()
        .await
        .unwrap();
    assert_eq!(
        h.metadata().unwrap().get("build").map(String::as_str),
        Some("one")
    );
    c.copy_object()
        .bucket(B)
        .key("other/copy2.zip")
        .copy_source(format!("{B}/rel/app-1.zip"))
        .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
        .metadata("build", "two")
        .content_type("application/x-test")
        .send()
        .await
        .unwrap();
    let h = c
        .head_object()
        .bucket(B)
        .key("other/copy2.zip")
        .send()
        .await
        .unwrap();
    assert_eq!(
        h.metadata().unwrap().get("build").map(String::as_str),
        Some("two")
    );
    assert_eq!(h.content_type(), Some("application/x-test"));
    // Onto itself: refused unless the metadata is replaced (then it is how a client
    // changes an object's metadata in place).
    let e = c
        .copy_object()
        .bucket(B)
        .key("other/copy2.zip")
        .copy_source(format!("{B}/other/copy2.zip"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.into_service_error().meta().code(), Some("InvalidRequest"));
    c.copy_object()
        .bucket(B)
        .key("other/copy2.zip")
        .copy_source(format!("{B}/other/copy2.zip"))
        .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
        .metadata("build", "three")
        .send()
        .await
        .unwrap();
    assert_eq!(get_bytes(&c, B, "other/copy2.zip").await, v1);

    // Deleting the object that seeded the reference never breaks the others.
    c.delete_object()
        .bucket(B)
        .key("rel/app-1.zip")
        .send()
        .await
        .unwrap();
    assert_eq!(get_bytes(&c, B, "rel/app-2.zip").await, v2);
    assert!(physical(p, up, B)
        .await
        .contains(&"rel/reference.bin".to_string()));
    // Deleting the last delta of a deltaspace removes its reference.
    c.delete_object()
        .bucket(B)
        .key("rel/app-2.zip")
        .send()
        .await
        .unwrap();
    assert!(!physical(p, up, B)
        .await
        .contains(&"rel/reference.bin".to_string()));
    // Missing key: success.
    c.delete_object()
        .bucket(B)
        .key("rel/never.zip")
        .send()
        .await
        .unwrap();
    // Reserved keys are refused.
    let e = c
        .put_object()
        .bucket(B)
        .key("rel/reference.bin")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(400));

    // Overwrite delta → passthrough leaves no stale form and drops the unused reference.
    let a = bytes(7, 100_000);
    put_bytes(&c, B, "ow/a.zip", &a).await;
    let b2 = bytes(8, 100_000);
    put_bytes(&c, B, "ow/a.zip", &b2).await;
    assert_eq!(get_bytes(&c, B, "ow/a.zip").await, b2);
    let phys: Vec<_> = physical(p, up, B)
        .await
        .into_iter()
        .filter(|k| k.starts_with("ow/"))
        .collect();
    assert_eq!(phys, vec!["ow/a.zip"]);

    // Multipart: list, complete (delta-eligible), abort.
    let mp1 = bytes(11, 150_000);
    let mp2 = bytes(12, 90_000);
    let cm = c
        .create_multipart_upload()
        .bucket(B)
        .key("mp/big.zip")
        .content_type("application/zip")
        .send()
        .await
        .unwrap();
    let id = cm.upload_id().unwrap().to_string();
    let abort_id = c
        .create_multipart_upload()
        .bucket(B)
        .key("mp/aborted.zip")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_string();
    let mut parts = Vec::new();
    for (n, d) in [(1, &mp1), (2, &mp2)] {
        let r = c
            .upload_part()
            .bucket(B)
            .key("mp/big.zip")
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from(d.clone()))
            .send()
            .await
            .unwrap();
        parts.push(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(r.e_tag().unwrap())
                .build(),
        );
    }
    let lu = c.list_multipart_uploads().bucket(B).send().await.unwrap();
    assert_eq!(lu.uploads().len(), 2);
    let lp = c
        .list_parts()
        .bucket(B)
        .key("mp/big.zip")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(lp.parts().len(), 2);
    let done = c
        .complete_multipart_upload()
        .bucket(B)
        .key("mp/big.zip")
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(done.e_tag().unwrap().trim_matches('"').ends_with("-2"));
    let mut whole = mp1.clone();
    whole.extend_from_slice(&mp2);
    assert_eq!(get_bytes(&c, B, "mp/big.zip").await, whole);
    let h = c
        .head_object()
        .bucket(B)
        .key("mp/big.zip")
        .send()
        .await
        .unwrap();
    assert_eq!(h.e_tag(), done.e_tag());
    c.abort_multipart_upload()
        .bucket(B)
        .key("mp/aborted.zip")
        .upload_id(&abort_id)
        .send()
        .await
        .unwrap();
    assert!(c
        .list_multipart_uploads()
        .bucket(B)
        .send()
        .await
        .unwrap()
        .uploads()
        .is_empty());
    let e = c
        .upload_part()
        .bucket(B)
        .key("mp/aborted.zip")
        .upload_id(&abort_id)
        .part_number(1)
        .body(ByteStream::from(vec![1u8]))
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.into_service_error().meta().code(), Some("NoSuchUpload"));

    // Delete bucket: refused while not empty; DeleteObjects empties it.
    let e = c.delete_bucket().bucket(B).send().await.unwrap_err();
    assert_eq!(e.into_service_error().meta().code(), Some("BucketNotEmpty"));
    let keys: Vec<String> = {
        let out = c.list_objects_v2().bucket(B).send().await.unwrap();
        out.contents()
            .iter()
            .map(|o| o.key().unwrap().to_string())
            .collect()
    };
    let ids: Vec<ObjectIdentifier> = keys
        .iter()
        .map(|k| ObjectIdentifier::builder().key(k).build().unwrap())
        .collect();
    let del = c
        .delete_objects()
        .bucket(B)
        .delete(Delete::builder().set_objects(Some(ids)).build().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(del.deleted().len(), keys.len());
    assert!(del.errors().is_empty());
    assert_eq!(physical(p, up, B).await, Vec::<String>::new());
    c.delete_bucket().bucket(B).send().await.unwrap();
    assert!(c.head_bucket().bucket(B).send().await.is_err());
}

#[tokio::test]
async fn s3_api_on_filesystem_backend() {
    let p = start_proxy(None, &[]).await;
    suite(&p, None).await;
}

#[tokio::test]
async fn s3_api_on_s3_backend() {
    let Some(up) = S3sFs::start("s3_api_on_s3_backend").await else {
        return;
    };
    let p = start_proxy(Some(&up), &[]).await;
    suite(&p, Some(&up)).await;
}

#[tokio::test]
async fn zstd_codec_round_trips_and_is_recorded() {
    let mut p = start_proxy(None, &[("DGP_DELTA_CODEC", "zstd".into())]).await;
    let c = p.client();
    c.create_bucket().bucket("zstd-bkt").send().await.unwrap();
    let v1 = bytes(21, 400_000);
    let v2 = mutate(&v1, 22);
    put_bytes(&c, "zstd-bkt", "r/a-1.zip", &v1).await;
    put_bytes(&c, "zstd-bkt", "r/a-2.zip", &v2).await;
    let h = c
        .head_object()
        .bucket("zstd-bkt")
        .key("r/a-2.zip")
        .send()
        .await
        .unwrap();
    assert_eq!(
        h.metadata()
            .unwrap()
            .get("dg-delta-codec")
            .map(String::as_str),
        Some("zstd-patch")
    );
    let stored = std::fs::metadata(p.bucket_dir("zstd-bkt").join("r/a-2.zip.delta"))
        .unwrap()
        .len();
    assert!(stored < v2.len() as u64 / 10, "delta {stored} bytes");
    assert_eq!(get_bytes(&c, "zstd-bkt", "r/a-2.zip").await, v2);
    // A proxy configured for xdelta3 still reads zstd deltas (codec recorded per object).
    let data = p.data.clone();
    let keep = p.keep.take();
    drop(p);
    let p2 = start_proxy_in(&data, None, &[], keep).await;
    assert_eq!(get_bytes(&p2.client(), "zstd-bkt", "r/a-2.zip").await, v2);
}

/// gzip bodies under delta-eligible names (a `.dump`) with the xdelta3 codec: stored
/// passthrough (a compressed stream that xdelta3 would open by itself without `-D` would make
/// deltas the Python CLI cannot decode), and byte-identical on GET.
#[tokio::test]
async fn gzip_bodies_round_trip_byte_identical_through_xdelta3() {
    let p = start_proxy(None, &[("DGP_DELTA_CODEC", "xdelta3".into())]).await;
    let c = p.client();
    c.create_bucket().bucket("gzb").send().await.unwrap();
    let text: Vec<u8> = (0..20_000)
        .flat_map(|i| format!("INSERT INTO t VALUES ({i}, 'row {i}');\n").into_bytes())
        .collect();
    let mut text2 = text.clone();
    text2.extend_from_slice(b"INSERT INTO t VALUES (-1, 'late');\n");
    let (v1, v2) = (gzip(&text, "-9"), gzip(&text2, "-9"));
    assert_eq!(&v1[..2], &[0x1f, 0x8b]);
    put_bytes(&c, "gzb", "dumps/db-1.dump", &v1).await;
    put_bytes(&c, "gzb", "dumps/db-2.dump", &v2).await;
    assert_eq!(get_bytes(&c, "gzb", "dumps/db-1.dump").await, v1);
    assert_eq!(get_bytes(&c, "gzb", "dumps/db-2.dump").await, v2);
    let stored = files_under(&p.bucket_dir("gzb"));
    assert!(
        stored
            .iter()
            .all(|f| !f.ends_with(".delta") && !f.ends_with("reference.bin")),
        "{stored:?}"
    );
    // The same names with uncompressed content are deltas.
    put_bytes(&c, "gzb", "plain/db-1.dump", &text).await;
    put_bytes(&c, "gzb", "plain/db-2.dump", &text2).await;
    assert!(files_under(&p.bucket_dir("gzb"))
        .iter()
        .any(|f| f.ends_with("db-2.dump.delta")));
    assert_eq!(get_bytes(&c, "gzb", "plain/db-2.dump").await, text2);
}
