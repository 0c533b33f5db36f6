//! State that must survive a proxy restart (SIGKILL included): in-flight multipart uploads
//! (manifest + fsynced parts under `$DGP_DATA_DIR/multipart`, on both backends), the idle
//! multipart sweeper, and IAM users created through the admin API (the sealed `deltaglider_config.db`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use common::*;

const B: &str = "durable";

async fn restart(p: &mut Proxy) {
    p.proc.kill9();
    p.proc.restart();
    if let Err(e) =
        scai_testkit::wait_http_ok(&format!("{}/_/health", p.url()), Duration::from_secs(20)).await
    {
        panic!("proxy did not come back: {e}\n{}", p.proc.logs());
    }
}

async fn upload_part(c: &Client, key: &str, id: &str, n: i32, data: &[u8]) -> CompletedPart {
    let r = c
        .upload_part()
        .bucket(B)
        .key(key)
        .upload_id(id)
        .part_number(n)
        .body(ByteStream::from(data.to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("UploadPart {n}: {e:?}"));
    CompletedPart::builder()
        .part_number(n)
        .e_tag(r.e_tag().unwrap())
        .build()
}

fn md5_hex(d: &[u8]) -> String {
    use md5::Digest as _;
    hex::encode(md5::Md5::digest(d))
}

/// Files under the multipart staging dir whose name starts with `prefix`.
fn staged(data: &Path, prefix: &str) -> Vec<String> {
    files_under(&data.join("multipart"))
        .into_iter()
        .filter(|f| {
            f.rsplit('/')
                .next()
                .is_some_and(|name| name.starts_with(prefix))
        })
        .collect()
}

async fn mpu_survives_sigkill(kind: Kind) {
    let up = match kind {
        Kind::Fs => None,
        Kind::S3 => match S3sFs::start("mpu_survives_sigkill_s3").await {
            Some(u) => Some(u),
            None => return,
        },
    };
    let mut p = start_proxy(up.as_ref(), &[]).await;
    let c = p.client();
    c.create_bucket().bucket(B).send().await.unwrap();
    let key = "rel/app-1.2.zip";
    let id = c
        .create_multipart_upload()
        .bucket(B)
        .key(key)
        .content_type("application/zip")
        .metadata("build", "1234")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_string();
    let p1 = bytes(21, 300_000);
    let p1_first = bytes(20, 120_000);
    let p2 = bytes(22, 250_000);
    let p3 = bytes(23, 77_777);
    // Part 1 is sent twice: the second body replaces the first.
    upload_part(&c, key, &id, 1, &p1_first).await;
    let c1 = upload_part(&c, key, &id, 1, &p1).await;
    let c2 = upload_part(&c, key, &id, 2, &p2).await;

    restart(&mut p).await;
    let c = p.client();

    let lu = c.list_multipart_uploads().bucket(B).send().await.unwrap();
    let ups: Vec<_> = lu
        .uploads()
        .iter()
        .map(|u| (u.key().unwrap(), u.upload_id().unwrap()))
        .collect();
    assert_eq!(ups, vec![(key, id.as_str())], "{:?}", p.proc.logs());
    let lp = c
        .list_parts()
        .bucket(B)
        .key(key)
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    let parts: Vec<_> = lp
        .parts()
        .iter()
        .map(|x| {
            (
                x.part_number().unwrap(),
                x.size().unwrap(),
                x.e_tag().unwrap().trim_matches('"').to_string(),
            )
        })
        .collect();
    assert_eq!(
        parts,
        vec![
            (1, p1.len() as i64, md5_hex(&p1)),
            (2, p2.len() as i64, md5_hex(&p2))
        ]
    );
    // The replaced first body of part 1 is gone from staging.
    assert_eq!(staged(&p.data, "part-1-").len(), 1);

    let c3 = upload_part(&c, key, &id, 3, &p3).await;
    let done = c
        .complete_multipart_upload()
        .bucket(B)
        .key(key)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(vec![c1, c2, c3]))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(done.e_tag().unwrap().trim_matches('"').ends_with("-3"));
    let mut whole = p1.clone();
    whole.extend_from_slice(&p2);
    whole.extend_from_slice(&p3);
    assert_eq!(get_bytes(&c, B, key).await, whole);
    let h = c.head_object().bucket(B).key(key).send().await.unwrap();
    assert_eq!(h.content_type(), Some("application/zip"));
    assert_eq!(
        h.metadata()
            .and_then(|m| m.get("build"))
            .map(String::as_str),
        Some("1234")
    );
    assert_eq!(h.e_tag(), done.e_tag());
    assert!(
        files_under(&p.data.join("multipart")).is_empty(),
        "staging not cleaned after complete"
    );
    assert!(c
        .list_multipart_uploads()
        .bucket(B)
        .send()
        .await
        .unwrap()
        .uploads()
        .is_empty());
}

#[tokio::test]
async fn multipart_upload_survives_sigkill_fs() {
    mpu_survives_sigkill(Kind::Fs).await;
}

/// Staging is local (under `$DGP_DATA_DIR/multipart`) for the S3 backend too.
#[tokio::test]
async fn multipart_upload_survives_sigkill_s3() {
    mpu_survives_sigkill(Kind::S3).await;
}

#[tokio::test]
async fn half_written_part_is_not_listed_after_sigkill() {
    let mut p = start_proxy(None, &[("DGP_AUTHENTICATION", "none".into())]).await;
    let base = p.url();
    let c = p.client();
    c.create_bucket().bucket(B).send().await.unwrap();
    let key = "half/x.bin";
    let id = c
        .create_multipart_upload()
        .bucket(B)
        .key(key)
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_string();
    let p1 = bytes(31, 200_000);
    let c1 = upload_part(&c, key, &id, 1, &p1).await;

    // Part 2 streams slowly (a chunk, then a pause far longer than the test needs) so the
    // proxy is killed with the part file half written.
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Vec<u8>, std::io::Error>>();
    tx.unbounded_send(Ok(bytes(32, 64 * 1024))).unwrap();
    let url = format!("{base}/{B}/{key}?partNumber=2&uploadId={id}");
    let slow = tokio::spawn(async move {
        let _ = reqwest::Client::new()
            .put(url)
            .header("content-length", "1000000")
            .body(reqwest::Body::wrap_stream(rx))
            .send()
            .await;
    });
    // Wait until the proxy has started writing part 2 to disk.
    let start = Instant::now();
    loop {
        let f = staged(&p.data, "part-2-");
        if f.len() == 1
            && std::fs::metadata(p.data.join("multipart").join(&f[0])).is_ok_and(|m| m.len() > 0)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "part 2 never reached the staging dir: {:?}",
            files_under(&p.data.join("multipart"))
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    restart(&mut p).await;
    drop(tx);
    let _ = slow.await;

    let c = p.client();
    let lp = c
        .list_parts()
        .bucket(B)
        .key(key)
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    let listed: Vec<i32> = lp
        .parts()
        .iter()
        .map(|x| x.part_number().unwrap())
        .collect();
    assert_eq!(listed, vec![1], "half-written part listed");
    assert!(
        staged(&p.data, "part-2-").is_empty(),
        "half-written part file left in staging"
    );
    // The upload goes on normally: part 2 again, complete, exact bytes.
    let p2 = bytes(33, 123_456);
    let c2 = upload_part(&c, key, &id, 2, &p2).await;
    c.complete_multipart_upload()
        .bucket(B)
        .key(key)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(vec![c1, c2]))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let mut whole = p1;
    whole.extend_from_slice(&p2);
    assert_eq!(get_bytes(&c, B, key).await, whole);
}

/// Polls ListMultipartUploads until `id` is gone (the sweeper's job), bounded generously.
async fn wait_swept(c: &Client, id: &str, logs: impl Fn() -> String) {
    let start = Instant::now();
    loop {
        let lu = c.list_multipart_uploads().bucket(B).send().await.unwrap();
        if !lu.uploads().iter().any(|u| u.upload_id() == Some(id)) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "upload {id} was never swept\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn idle_multipart_uploads_are_swept() {
    // With the default TTL (24 h) an upload is kept across a restart...
    let mut p = start_proxy(None, &[]).await;
    let c = p.client();
    c.create_bucket().bucket(B).send().await.unwrap();
    let old = c
        .create_multipart_upload()
        .bucket(B)
        .key("idle/old.bin")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_string();
    upload_part(&c, "idle/old.bin", &old, 1, &bytes(41, 50_000)).await;
    restart(&mut p).await;
    let lu = p
        .client()
        .list_multipart_uploads()
        .bucket(B)
        .send()
        .await
        .unwrap();
    assert_eq!(lu.uploads().len(), 1);
    assert!(p.data.join("multipart").join(&old).is_dir());

    // ...and a proxy on the same data dir with a 1 s TTL sweeps it, and a new upload too.
    p.proc.kill9();
    let q = start_proxy_in(
        &p.data,
        None,
        &[("DGP_MULTIPART_IDLE_TTL_SECS", "1".into())],
        None,
    )
    .await;
    let c = q.client();
    wait_swept(&c, &old, || q.proc.logs()).await;
    assert!(!p.data.join("multipart").join(&old).exists());
    let new = c
        .create_multipart_upload()
        .bucket(B)
        .key("idle/new.bin")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_string();
    upload_part(&c, "idle/new.bin", &new, 1, &bytes(42, 10_000)).await;
    wait_swept(&c, &new, || q.proc.logs()).await;
    assert!(files_under(&p.data.join("multipart")).is_empty());
    let e = c
        .upload_part()
        .bucket(B)
        .key("idle/new.bin")
        .upload_id(&new)
        .part_number(2)
        .body(ByteStream::from(vec![1u8; 10]))
        .send()
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("NoSuchUpload"), "{e:?}");
    assert!(q.proc.logs().contains("idle multipart upload dropped"));
}

#[tokio::test]
async fn upload_part_copy_reads_through_the_delta_engine_fs() {
    upload_part_copy(Kind::Fs).await;
}

#[tokio::test]
async fn upload_part_copy_reads_through_the_delta_engine_s3() {
    upload_part_copy(Kind::S3).await;
}

async fn upload_part_copy(kind: Kind) {
    let up = match kind {
        Kind::Fs => None,
        Kind::S3 => match S3sFs::start("upload_part_copy_s3").await {
            Some(u) => Some(u),
            None => return,
        },
    };
    let p = start_proxy(up.as_ref(), &[]).await;
    let c = p.client();
    c.create_bucket().bucket(B).send().await.unwrap();
    let base = bytes(51, 400_000);
    let v2 = mutate(&base, 52);
    put_bytes(&c, B, "art/v1.zip", &base).await;
    put_bytes(&c, B, "art/v2.zip", &v2).await;
    // v2 is stored as a delta: the copy must reconstruct it, not copy the stored bytes.
    let stored: Vec<String> = match &up {
        None => files_under(&p.bucket_dir(B)),
        Some(u) => u
            .client()
            .list_objects_v2()
            .bucket(B)
            .send()
            .await
            .unwrap()
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect(),
    };
    assert!(
        stored.contains(&"art/v2.zip.delta".to_string()),
        "{stored:?}"
    );

    let key = "out/joined.bin";
    let id = c
        .create_multipart_upload()
        .bucket(B)
        .key(key)
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_string();
    let copy = |n: i32, range: Option<&str>| {
        let mut r = c
            .upload_part_copy()
            .bucket(B)
            .key(key)
            .upload_id(&id)
            .part_number(n)
            .copy_source(format!("{B}/art/v2.zip"));
        if let Some(rg) = range {
            r = r.copy_source_range(rg);
        }
        r.send()
    };
    let r1 = copy(1, Some("bytes=0-99999")).await.unwrap();
    let r2 = copy(2, Some(&format!("bytes=100000-{}", v2.len() - 1)))
        .await
        .unwrap();
    let r3 = copy(3, None).await.unwrap();
    let tag = |r: &aws_sdk_s3::operation::upload_part_copy::UploadPartCopyOutput| {
        r.copy_part_result()
            .and_then(|x| x.e_tag())
            .unwrap()
            .to_string()
    };
    assert_eq!(tag(&r1).trim_matches('"'), md5_hex(&v2[..100_000]));
    assert_eq!(tag(&r2).trim_matches('"'), md5_hex(&v2[100_000..]));
    assert_eq!(tag(&r3).trim_matches('"'), md5_hex(&v2));
    // A plain UploadPart mixes with copied parts.
    let tail = bytes(53, 1000);
    let c4 = upload_part(&c, key, &id, 4, &tail).await;

    // Out-of-range and malformed ranges, a missing source, a missing upload.
    let e = copy(5, Some(&format!("bytes=0-{}", v2.len())))
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("InvalidRange"), "{e:?}");
    let e = copy(5, Some("bytes=10-")).await.unwrap_err();
    assert!(format!("{e:?}").contains("InvalidArgument"), "{e:?}");
    let e = c
        .upload_part_copy()
        .bucket(B)
        .key(key)
        .upload_id(&id)
        .part_number(5)
        .copy_source(format!("{B}/art/missing.zip"))
        .send()
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("NoSuchKey"), "{e:?}");
    let e = c
        .upload_part_copy()
        .bucket(B)
        .key(key)
        .upload_id("nope")
        .part_number(1)
        .copy_source(format!("{B}/art/v2.zip"))
        .send()
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("NoSuchUpload"), "{e:?}");

    let parts: Vec<CompletedPart> = [(1, &r1), (2, &r2), (3, &r3)]
        .iter()
        .map(|(n, r)| {
            CompletedPart::builder()
                .part_number(*n)
                .e_tag(tag(r))
                .build()
        })
        .chain([c4])
        .collect();
    c.complete_multipart_upload()
        .bucket(B)
        .key(key)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let mut want = v2.clone();
    want.extend_from_slice(&v2);
    want.extend_from_slice(&tail);
    assert_eq!(get_bytes(&c, B, key).await, want);
}

#[tokio::test]
async fn admin_created_users_survive_restart() {
    let hash = bcrypt::hash("s3cret-admin", 4).unwrap();
    let mut p = start_proxy(
        None,
        &[
            ("DGP_BOOTSTRAP_PASSWORD_HASH", hash),
            ("DGP_SECURE_COOKIES", "false".into()),
        ],
    )
    .await;
    let base = p.url();
    let http = reqwest::Client::new();
    p.client().create_bucket().bucket(B).send().await.unwrap();
    let cookie = admin_login(&base, "s3cret-admin").await;
    let rw = serde_json::json!([{"effect": "Allow", "actions": ["read", "write", "list"], "resources": [format!("{B}/*")]}]);
    let mut secrets = Vec::new();
    for name in ["erin", "frank", "gina"] {
        let user = serde_json::json!({
            "name": name,
            "access_key_id": format!("{}AK", name.to_uppercase()),
            "permissions": rw,
        });
        secrets.push(create_user(&base, &cookie, user).await);
    }
    // frank is deleted, gina gets a new access key (secret kept) and loses write.
    assert_eq!(
        http.delete(format!("{base}/_/api/admin/users/FRANKAK"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let r = http
        .put(format!("{base}/_/api/admin/users/GINAAK"))
        .header("cookie", &cookie)
        .json(&serde_json::json!({
            "name": "gina",
            "access_key_id": "GINA2AK",
            "permissions": [{"effect": "Allow", "actions": ["read", "list"], "resources": [format!("{B}/*")]}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A key or name already taken by another user is refused (nothing persisted).
    let r = http
        .put(format!("{base}/_/api/admin/users/ERINAK"))
        .header("cookie", &cookie)
        .json(&serde_json::json!({"name": "erin", "access_key_id": "GINA2AK"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // Groups: "readers" grants read/list and has a member with no rules of its own; "temp"
    // is created and deleted again.
    for g in ["readers", "temp"] {
        let r = http
            .post(format!("{base}/_/api/admin/groups"))
            .header("cookie", &cookie)
            .json(&serde_json::json!({
                "name": g,
                "permissions": [{"effect": "Allow", "actions": ["read", "list"], "resources": [format!("{B}/*")]}],
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    assert_eq!(
        http.delete(format!("{base}/_/api/admin/groups/temp"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let hank =
        serde_json::json!({"name": "hank", "access_key_id": "HANKAK", "groups": ["readers"]});
    let hank_secret = create_user(&base, &cookie, hank).await;
    let store = std::fs::metadata(p.data.join("deltaglider_config.db")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(store.permissions().mode() & 0o777, 0o600);
    }
    // Sealed at rest: the secret is not in the file.
    let sealed = std::fs::read(p.data.join("deltaglider_config.db")).unwrap();
    assert!(!sealed
        .windows(hank_secret.len())
        .any(|w| w == hank_secret.as_bytes()));

    restart(&mut p).await;

    let erin = p.client_as("ERINAK", &secrets[0]);
    put_bytes(&erin, B, "erin/a.txt", b"hello").await;
    assert_eq!(get_bytes(&erin, B, "erin/a.txt").await, b"hello");
    let e = p
        .client_as("FRANKAK", &secrets[1])
        .list_objects_v2()
        .bucket(B)
        .send()
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("AccessDenied"), "{e:?}");
    let gina = p.client_as("GINA2AK", &secrets[2]);
    assert_eq!(get_bytes(&gina, B, "erin/a.txt").await, b"hello");
    let e = gina
        .put_object()
        .bucket(B)
        .key("gina/b.txt")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("AccessDenied"), "{e:?}");
    assert!(p
        .client_as("GINAAK", &secrets[2])
        .list_objects_v2()
        .bucket(B)
        .send()
        .await
        .is_err());
    // hank reads through the reloaded group; the deleted group stays deleted.
    let hank = p.client_as("HANKAK", &hank_secret);
    assert_eq!(get_bytes(&hank, B, "erin/a.txt").await, b"hello");
    // The admin API lists the reloaded users (secrets redacted).
    let cookie = admin_login(&base, "s3cret-admin").await;
    let (_, users) = admin_call(
        reqwest::Method::GET,
        format!("{base}/_/api/admin/users"),
        &cookie,
        None,
    )
    .await;
    let mut names: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["erin", "gina", "hank"], "{users}");
    let groups: serde_json::Value = http
        .get(format!("{base}/_/api/admin/groups"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let gnames: Vec<&str> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(gnames, vec!["readers"], "{groups}");
    assert!(!users.to_string().contains(&secrets[0]));
}
