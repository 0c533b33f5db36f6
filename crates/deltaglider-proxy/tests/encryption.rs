//! Encryption at rest (`aes256-gcm-proxy`): objects are ciphertext on disk (DGE1 for
//! passthrough, single-shot for deltas and references), read back transparently with ranges,
//! and fail loudly (500, never ciphertext) with a missing or mismatched key; a legacy key
//! keeps historical reads working after rotation.

mod common;

use common::*;

const KEY1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const KEY2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

#[tokio::test]
async fn proxy_aes_encrypts_at_rest_and_guards_keys() {
    let mut p = start_proxy(None, &[("DGP_ENCRYPTION_KEY", KEY1.into())]).await;
    let c = p.client();
    c.create_bucket().bucket("enc-bkt").send().await.unwrap();
    let v1 = bytes(51, 300_000);
    let v2 = mutate(&v1, 52);
    let plain = bytes(53, 200_000);
    put_bytes(&c, "enc-bkt", "r/a-1.zip", &v1).await;
    put_bytes(&c, "enc-bkt", "r/a-2.zip", &v2).await;
    put_bytes(&c, "enc-bkt", "r/data.bin", &plain).await;
    let dir = p.bucket_dir("enc-bkt");
    assert_eq!(
        files_under(&dir),
        vec![
            "r/a-1.zip.delta",
            "r/a-2.zip.delta",
            "r/data.bin",
            "r/reference.bin"
        ]
    );
    let raw = std::fs::read(dir.join("r/data.bin")).unwrap();
    assert_eq!(&raw[..4], b"DGE1");
    assert!(
        !raw.windows(64).any(|w| w == &plain[1000..1064]),
        "plaintext visible on disk"
    );
    let reference = std::fs::read(dir.join("r/reference.bin")).unwrap();
    assert!(
        !reference.windows(64).any(|w| w == &v1[5000..5064]),
        "reference stored in plaintext"
    );
    assert_eq!(get_bytes(&c, "enc-bkt", "r/a-2.zip").await, v2);
    assert_eq!(get_bytes(&c, "enc-bkt", "r/data.bin").await, plain);
    // A range across a 64 KiB chunk boundary.
    let r = c
        .get_object()
        .bucket("enc-bkt")
        .key("r/data.bin")
        .range("bytes=65000-140000")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.body.collect().await.unwrap().into_bytes().as_ref(),
        &plain[65000..=140000]
    );
    let h = c
        .head_object()
        .bucket("enc-bkt")
        .key("r/data.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(h.content_length(), Some(plain.len() as i64));
    assert_eq!(
        h.metadata()
            .unwrap()
            .get("dg-encrypted")
            .map(String::as_str),
        Some("aes-256-gcm-chunked-v1")
    );
    let old_id = h
        .metadata()
        .unwrap()
        .get("dg-encryption-key-id")
        .cloned()
        .unwrap();

    // Wrong key: 500 naming both ids, never ciphertext.
    let data = p.data.clone();
    let keep = p.keep.take();
    drop(p);
    // A GET that must fail with 500, and the error body naming why.
    async fn refused(p: &Proxy, key: &str) -> String {
        let e = p
            .client()
            .get_object()
            .bucket("enc-bkt")
            .key(key)
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            e.raw_response().map(|r| r.status().as_u16()),
            Some(500),
            "{key}"
        );
        String::from_utf8_lossy(e.raw_response().unwrap().body().bytes().unwrap_or_default())
            .to_string()
    }
    let p2 = start_proxy_in(&data, None, &[("DGP_ENCRYPTION_KEY", KEY2.into())], None).await;
    let body = refused(&p2, "r/data.bin").await;
    assert!(body.contains(&old_id), "{body}");
    drop(p2);
    // No key at all: the delta and the passthrough object (never served as ciphertext).
    let p3 = start_proxy_in(&data, None, &[], None).await;
    refused(&p3, "r/a-2.zip").await;
    let body = refused(&p3, "r/data.bin").await;
    assert!(body.contains("no key is configured"), "{body}");
    drop(p3);
    // Rotation with a legacy shim: old objects read, new writes use the new key.
    std::fs::write(
        data.join("cfg.yaml"),
        format!("storage:\n  backend_encryption:\n    mode: aes256-gcm-proxy\n    legacy_key: \"{KEY1}\"\n    legacy_key_id: \"{old_id}\"\n"),
    )
    .unwrap();
    let p4 = start_proxy_in(
        &data,
        None,
        &[
            ("DGP_ENCRYPTION_KEY", KEY2.into()),
            (
                "DGP_CONFIG",
                data.join("cfg.yaml").to_str().unwrap().to_string(),
            ),
        ],
        keep,
    )
    .await;
    let c4 = p4.client();
    assert_eq!(get_bytes(&c4, "enc-bkt", "r/data.bin").await, plain);
    assert_eq!(get_bytes(&c4, "enc-bkt", "r/a-1.zip").await, v1);
    put_bytes(&c4, "enc-bkt", "r/new.bin", b"new data").await;
    let h = c4
        .head_object()
        .bucket("enc-bkt")
        .key("r/new.bin")
        .send()
        .await
        .unwrap();
    assert_ne!(
        h.metadata().unwrap().get("dg-encryption-key-id"),
        Some(&old_id)
    );
    assert_eq!(get_bytes(&c4, "enc-bkt", "r/new.bin").await, b"new data");
}
