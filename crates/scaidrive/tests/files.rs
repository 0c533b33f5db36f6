//! The behavioural suite of the files API, run against the real binary on SQLite and on
//! MariaDB (a fresh database per test): shares, folders, listing, simple and resumable
//! uploads, downloads with Range, versions, tenant isolation, suspension, bad input.

mod common;

use common::{assert_err, data, sha256_hex, Backend, Srv};
use reqwest::Method;
use serde_json::json;

async fn health_ready_metrics_request_id(b: Backend) {
    let Some(s) = Srv::start(b, &[]).await else {
        return;
    };
    let r = s
        .http
        .get(s.url("/api/v1/health"))
        .header("X-Request-Id", "test-req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "test-req-42");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["meta"]["request_id"], "test-req-42");
    let (st, ready) =
        common::json_of(s.http.get(s.url("/api/v1/ready")).send().await.unwrap()).await;
    assert_eq!(st, 200, "{ready}");
    assert_eq!(ready["checks"]["database"], true);
    assert_eq!(ready["checks"]["storage"], true);
    let (st, cfg) =
        common::json_of(s.http.get(s.url("/api/v1/config")).send().await.unwrap()).await;
    assert_eq!(st, 200, "{cfg}");
    assert_eq!(cfg["limits"]["max_file_size_bytes"], 5u64 << 30);
    assert!(
        cfg["limits"]["max_upload_chunk_size_bytes"]
            .as_u64()
            .unwrap()
            >= 4 << 20
    );
    // A generated id when none is sent, echoed in header and body alike.
    let tok = s.token("acme", "alice", false);
    let r = s
        .http
        .get(s.url("/api/v1/files/fil_nope"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    let hdr = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let (st, b) = common::json_of(r).await;
    assert_err(st, &b, 404, "NOT_FOUND");
    assert_eq!(b["meta"]["request_id"], hdr.as_str());
    let (_, root) = s.home(&tok).await;
    s.upload(&tok, &root, "m.txt", b"metrics").await;
    s.download(&tok, "/api/v1/health", None).await;
    let m = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("scaidrive_requests_total"), "{m}");
    assert!(m.contains("scaidrive_request_duration_seconds"), "{m}");
    assert!(m.contains("scaidrive_uploads_bytes_total"), "{m}");
}

async fn folders_crud_names_and_trash(b: Backend) {
    let Some(s) = Srv::start(b, &[]).await else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let (share, root) = s.home(&tok).await;
    let (st, c) = s
        .get(
            &tok,
            &format!("/api/v1/folders/{root}/children?share_id={share}"),
        )
        .await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["total"], 0);
    assert_eq!(c["path"], "/");
    let docs = s.mkdir(&tok, &root, "docs").await;
    let docs_id = docs["id"].as_str().unwrap();
    assert_eq!(docs["path"], "/docs");
    let (st, sub) = s
        .post(
            &tok,
            "/api/v1/folders",
            json!({"share_id": share, "parent_id": docs_id, "name": "2026"}),
        )
        .await;
    assert_eq!(st, 201, "{sub}");
    assert_eq!(sub["path"], "/docs/2026");
    let sub_id = sub["id"].as_str().unwrap().to_string();
    // Collision: never overwritten.
    let (st, e) = s
        .post(
            &tok,
            "/api/v1/folders",
            json!({"parent_id": root, "name": "docs"}),
        )
        .await;
    assert_err(st, &e, 409, "NAME_CONFLICT");
    // Invalid names, each with a clear validation error.
    let long = "x".repeat(256);
    for bad in ["", "a/b", "..", ".", "nul\u{0}x", "tab\tx", long.as_str()] {
        let (st, e) = s
            .post(
                &tok,
                "/api/v1/folders",
                json!({"parent_id": root, "name": bad}),
            )
            .await;
        assert_err(st, &e, 422, "VALIDATION_ERROR");
        assert_eq!(e["error"]["details"]["field"], "name", "{e}");
    }
    // Rename, move, cycle refused.
    let (st, r) = s
        .patch(
            &tok,
            &format!("/api/v1/folders/{sub_id}"),
            json!({"name": "archive"}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["path"], "/docs/archive");
    let (st, r) = s
        .patch(
            &tok,
            &format!("/api/v1/folders/{sub_id}"),
            json!({"parent_id": root}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["path"], "/archive");
    let (st, e) = s
        .patch(
            &tok,
            &format!("/api/v1/folders/{docs_id}"),
            json!({"parent_id": docs_id}),
        )
        .await;
    assert_err(st, &e, 422, "VALIDATION_ERROR");
    let inner = s.mkdir(&tok, docs_id, "inner").await;
    let (st, e) = s
        .patch(
            &tok,
            &format!("/api/v1/folders/{docs_id}"),
            json!({"parent_id": inner["id"]}),
        )
        .await;
    assert_err(st, &e, 422, "VALIDATION_ERROR");
    let (st, e) = s
        .patch(
            &tok,
            &format!("/api/v1/folders/{sub_id}"),
            json!({"name": "docs"}),
        )
        .await;
    assert_err(st, &e, 409, "NAME_CONFLICT");
    // Delete to trash: 410 afterwards, gone from the listing, visible with include_deleted,
    // and the name is free again.
    let (_, f) = s.upload(&tok, docs_id, "in-docs.txt", b"hello").await;
    let (st, _) = s.delete(&tok, &format!("/api/v1/folders/{docs_id}")).await;
    assert_eq!(st, 200);
    let (st, e) = s.get(&tok, &format!("/api/v1/folders/{docs_id}")).await;
    assert_err(st, &e, 410, "RESOURCE_DELETED");
    let (st, e) = s
        .get(
            &tok,
            &format!("/api/v1/files/{}", f["id"].as_str().unwrap()),
        )
        .await;
    assert_err(st, &e, 410, "RESOURCE_DELETED");
    let (_, c) = s
        .get(&tok, &format!("/api/v1/folders/{root}/children"))
        .await;
    assert_eq!(c["total"], 1, "{c}");
    assert_eq!(c["items"][0]["name"], "archive");
    let (_, c) = s
        .get(
            &tok,
            &format!("/api/v1/folders/{root}/children?include_deleted=true"),
        )
        .await;
    assert_eq!(c["total"], 2, "{c}");
    s.mkdir(&tok, &root, "docs").await;
    // The root cannot be deleted.
    let (st, e) = s.delete(&tok, &format!("/api/v1/folders/{root}")).await;
    assert_err(st, &e, 422, "VALIDATION_ERROR");
}

async fn children_keyset_pagination(b: Backend) {
    let Some(s) = Srv::start(b, &[]).await else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let (_, root) = s.home(&tok).await;
    let big = s.mkdir(&tok, &root, "big").await;
    let big = big["id"].as_str().unwrap();
    let mut expected = Vec::new();
    for i in 0..23 {
        let name = format!("item-{:03}", (i * 7) % 23);
        if i % 2 == 0 {
            s.mkdir(&tok, big, &name).await;
        } else {
            let (st, f) = s.upload(&tok, big, &name, name.as_bytes()).await;
            assert_eq!(st, 201, "{f}");
        }
        expected.push(name);
    }
    expected.sort();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/api/v1/folders/{big}/children?limit=5");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (st, page) = s.get(&tok, &path).await;
        assert_eq!(st, 200, "{page}");
        assert_eq!(page["total"], 23);
        for it in page["items"].as_array().unwrap() {
            seen.push(it["name"].as_str().unwrap().to_string());
            if it["type"] == "file" {
                assert!(it["size"].as_i64().unwrap() > 0);
                assert!(it["mime_type"].is_string());
            }
        }
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    assert_eq!(seen, expected);
    let (st, e) = s
        .get(
            &tok,
            &format!("/api/v1/folders/{big}/children?cursor=garbage"),
        )
        .await;
    assert_err(st, &e, 422, "VALIDATION_ERROR");
    let (st, e) = s
        .get(&tok, &format!("/api/v1/folders/{big}/children?limit=0"))
        .await;
    assert_err(st, &e, 422, "VALIDATION_ERROR");
    let (st, e) = s
        .get(&tok, &format!("/api/v1/folders/{big}/children?limit=abc"))
        .await;
    assert_err(st, &e, 400, "VALIDATION_ERROR");
}

async fn simple_upload_download_range(b: Backend) {
    let Some(s) = Srv::start(b, &[]).await else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let (share, root) = s.home(&tok).await;
    let body = data(300_000, 1);
    let form = reqwest::multipart::Form::new()
        .text("share_id", share.clone())
        .text("name", "report.pdf")
        .part(
            "file",
            reqwest::multipart::Part::bytes(body.clone()).file_name("ignored.bin"),
        );
    let (st, f) = common::json_of(
        s.http
            .post(s.url("/api/v1/files"))
            .bearer_auth(&tok)
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 201, "{f}");
    assert_eq!(f["name"], "report.pdf");
    assert_eq!(f["mime_type"], "application/pdf");
    assert_eq!(f["size"], 300_000);
    assert_eq!(f["version"], 1);
    assert_eq!(f["folder_id"], root.as_str());
    assert_eq!(f["checksum_sha256"], sha256_hex(&body));
    assert!(f["meta"]["request_id"].is_string());
    let id = f["id"].as_str().unwrap();
    let (st, m) = s.get(&tok, &format!("/api/v1/files/{id}")).await;
    assert_eq!(st, 200);
    assert_eq!(m["path"], "/report.pdf");
    // Full download.
    let r = s
        .download(&tok, &format!("/api/v1/files/{id}/content"), None)
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert!(r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("report.pdf"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());
    // Ranges, including one spanning a chunk boundary is covered by the resumable test.
    let r = s
        .download(
            &tok,
            &format!("/api/v1/files/{id}/content"),
            Some("bytes=1000-1999"),
        )
        .await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 1000-1999/300000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[1000..2000]);
    let r = s
        .download(
            &tok,
            &format!("/api/v1/files/{id}/content"),
            Some("bytes=-100"),
        )
        .await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[299_900..]);
    let r = s
        .download(
            &tok,
            &format!("/api/v1/files/{id}/content"),
            Some("bytes=300000-"),
        )
        .await;
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */300000");
    let (st, e) = common::json_of(r).await;
    assert_err(st, &e, 416, "RANGE_NOT_SATISFIABLE");
    // Same name again: conflict, the original untouched.
    let (st, e) = s.upload(&tok, &root, "report.pdf", b"other").await;
    assert_err(st, &e, 409, "NAME_CONFLICT");
    let r = s
        .download(&tok, &format!("/api/v1/files/{id}/content"), None)
        .await;
    assert_eq!(r.bytes().await.unwrap().len(), 300_000);
    // Empty file.
    let (st, e) = s.upload(&tok, &root, "empty.txt", b"").await;
    assert_eq!(st, 201, "{e}");
    let r = s
        .download(
            &tok,
            &format!("/api/v1/files/{}/content", e["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().is_empty());
    // Missing file part, bad multipart.
    let form = reqwest::multipart::Form::new()
        .text("folder_id", root.clone())
        .text("name", "x");
    let (st, e) = common::json_of(
        s.http
            .post(s.url("/api/v1/files"))
            .bearer_auth(&tok)
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_err(st, &e, 422, "VALIDATION_ERROR");
    let (st, e) = common::json_of(
        s.http
            .post(s.url("/api/v1/files"))
            .bearer_auth(&tok)
            .header("content-type", "text/plain")
            .body("x")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_err(st, &e, 400, "VALIDATION_ERROR");
}

async fn file_rename_move_delete(b: Backend) {
    let Some(s) = Srv::start(b, &[]).await else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let (_, root) = s.home(&tok).await;
    let dest = s.mkdir(&tok, &root, "dest").await;
    let dest = dest["id"].as_str().unwrap();
    let (_, a) = s.upload(&tok, &root, "a.txt", b"aaa").await;
    let (_, _b2) = s.upload(&tok, &root, "b.txt", b"bbb").await;
    let id = a["id"].as_str().unwrap();
    let (st, e) = s
        .patch(
            &tok,
            &format!("/api/v1/files/{id}"),
            json!({"name": "b.txt"}),
        )
        .await;
    assert_err(st, &e, 409, "NAME_CONFLICT");
    let (st, r) = s
        .patch(
            &tok,
            &format!("/api/v1/files/{id}"),
            json!({"name": "c.txt", "folder_id": dest}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["path"], "/dest/c.txt");
    assert_eq!(r["folder_id"], dest);
    let (st, e) = s
        .patch(&tok, &format!("/api/v1/files/{id}"), json!({"name": "x/y"}))
        .await;
    assert_err(st, &e, 422, "VALIDATION_ERROR");
    let (st, _) = s.delete(&tok, &format!("/api/v1/files/{id}")).await;
    assert_eq!(st, 200);
    let (st, e) = s.get(&tok, &format!("/api/v1/files/{id}")).await;
    assert_err(st, &e, 410, "RESOURCE_DELETED");
    let r = s
        .download(&tok, &format!("/api/v1/files/{id}/content"), None)
        .await;
    assert_eq!(r.status(), 410);
    // The name is free again after the delete.
    let (st, _) = s.upload(&tok, dest, "c.txt", b"new").await;
    assert_eq!(st, 201);
}

async fn resumable_upload_dedup_and_errors(b: Backend) {
    let Some(s) = Srv::start(b, &[]).await else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let (share, root) = s.home(&tok).await;
    let body = data(5 * 65536 + 1234, 2);
    let sum = sha256_hex(&body);
    let (st, s1) = s.post(&tok, "/api/v1/uploads", json!({"share_id": share, "file_name": "big.bin", "file_size": body.len(), "chunk_size": 65536, "checksum_sha256": sum})).await;
    assert_eq!(st, 201, "{s1}");
    assert_eq!(s1["total_chunks"], 6);
    assert_eq!(s1["chunk_size"], 65536);
    let sid = s1["session_id"].as_str().unwrap().to_string();
    let chunk = |i: usize| body[i * 65536..((i + 1) * 65536).min(body.len())].to_vec();
    // Out of order and in parallel, one chunk twice.
    let futs = [5usize, 3, 1, 4]
        .iter()
        .map(|i| s.put_chunk(&tok, &sid, *i as i64, chunk(*i)));
    for (st, r) in futures::future::join_all(futs).await {
        assert_eq!(st, 200, "{r}");
    }
    let (st, _) = s.put_chunk(&tok, &sid, 3, chunk(3)).await;
    assert_eq!(st, 200);
    let (st, stat) = s.get(&tok, &format!("/api/v1/uploads/{sid}")).await;
    assert_eq!(st, 200, "{stat}");
    assert_eq!(stat["received_chunks"], json!([1, 3, 4, 5]));
    assert_eq!(stat["missing_chunks"], json!([0, 2]));
    let (st, e) = s
        .post(&tok, &format!("/api/v1/uploads/{sid}/complete"), json!({}))
        .await;
    assert_err(st, &e, 409, "UPLOAD_INCOMPLETE");
    assert_eq!(e["error"]["details"]["missing_chunks"], json!([0, 2]));
    // Bad chunks.
    let (st, e) = s.put_chunk(&tok, &sid, 6, vec![0; 10]).await;
    assert_err(st, &e, 400, "CHUNK_INDEX_OUT_OF_RANGE");
    let (st, e) = s.put_chunk(&tok, &sid, -1, vec![0; 10]).await;
    assert_err(st, &e, 400, "CHUNK_INDEX_OUT_OF_RANGE");
    let r = s
        .http
        .put(s.url(&format!("/api/v1/uploads/{sid}/chunks/x1")))
        .bearer_auth(&tok)
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    let (st, e) = common::json_of(r).await;
    assert_err(st, &e, 400, "VALIDATION_ERROR");
    let (st, e) = s.put_chunk(&tok, &sid, 0, vec![0; 65537]).await;
    assert_err(st, &e, 400, "CHUNK_SIZE_MISMATCH");
    let (st, e) = s.put_chunk(&tok, &sid, 0, vec![0; 100]).await;
    assert_err(st, &e, 400, "CHUNK_SIZE_MISMATCH");
    for i in [0usize, 2] {
        let (st, _) = s.put_chunk(&tok, &sid, i as i64, chunk(i)).await;
        assert_eq!(st, 200);
    }
    let (st, f) = s
        .post(&tok, &format!("/api/v1/uploads/{sid}/complete"), json!({}))
        .await;
    assert_eq!(st, 200, "{f}");
    assert_eq!(f["checksum_sha256"], sum.as_str());
    assert_eq!(f["size"], body.len());
    let fid = f["file_id"].as_str().unwrap().to_string();
    // Completing again answers the same file; chunk PUTs are refused.
    let (st, f2) = s
        .post(&tok, &format!("/api/v1/uploads/{sid}/complete"), json!({}))
        .await;
    assert_eq!(st, 200, "{f2}");
    assert_eq!(f2["id"], fid.as_str());
    let (st, e) = s.put_chunk(&tok, &sid, 0, chunk(0)).await;
    assert_err(st, &e, 409, "UPLOAD_ALREADY_COMPLETED");
    let r = s
        .download(&tok, &format!("/api/v1/files/{fid}/content"), None)
        .await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());
    let r = s
        .download(
            &tok,
            &format!("/api/v1/files/{fid}/content"),
            Some("bytes=65000-131100"),
        )
        .await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[65000..=131100]);
    // Dedup: the same bytes again store nothing new.
    let stored = s.stored_bytes();
    assert_eq!(stored, body.len() as u64);
    let (st, f3) = s.upload_resumable(&tok, json!({"folder_id": root, "file_name": "copy.bin", "file_size": body.len(), "chunk_size": 65536}), &body).await;
    assert_eq!(st, 200, "{f3}");
    assert_eq!(s.stored_bytes(), stored);
    // Simple uploads use the default 4 MiB chunking: a second identical one stores nothing.
    let (st, _) = s.upload(&tok, &root, "copy2.bin", &body).await;
    assert_eq!(st, 201);
    let stored = s.stored_bytes();
    let (st, _) = s.upload(&tok, &root, "copy3.bin", &body).await;
    assert_eq!(st, 201);
    assert_eq!(s.stored_bytes(), stored);
    // Wrong whole-file checksum: CHECKSUM_MISMATCH and no file.
    let (st, e) = s
        .upload_resumable(&tok, json!({"folder_id": root, "file_name": "bad.bin", "file_size": 1000, "chunk_size": 65536, "checksum_sha256": "0".repeat(64)}), &data(1000, 3))
        .await;
    assert_err(st, &e, 422, "CHECKSUM_MISMATCH");
    let (_, c) = s
        .get(&tok, &format!("/api/v1/folders/{root}/children"))
        .await;
    let names: Vec<_> = c["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert!(!names.contains(&"bad.bin".to_string()), "{names:?}");
    // Session creation errors.
    for (body, status, code) in [
        (
            json!({"share_id": share, "file_name": "n", "file_size": -1}),
            422,
            "VALIDATION_ERROR",
        ),
        (
            json!({"share_id": share, "file_name": "n", "file_size": 10, "chunk_size": 1000}),
            422,
            "VALIDATION_ERROR",
        ),
        (
            json!({"share_id": share, "file_name": "n", "file_size": 10, "chunk_size": 32768}),
            422,
            "VALIDATION_ERROR",
        ),
        (
            json!({"share_id": share, "file_name": "n", "file_size": "ten"}),
            422,
            "VALIDATION_ERROR",
        ),
        (
            json!({"share_id": share, "file_name": "a/b", "file_size": 1}),
            422,
            "VALIDATION_ERROR",
        ),
        (
            json!({"share_id": share, "file_name": "big.bin", "file_size": 1}),
            409,
            "NAME_CONFLICT",
        ),
        (
            json!({"share_id": share, "file_name": "n", "file_size": 1, "checksum_sha256": "xyz"}),
            422,
            "VALIDATION_ERROR",
        ),
        (
            json!({"share_id": "shr_nope", "file_name": "n", "file_size": 1}),
            404,
            "NOT_FOUND",
        ),
    ] {
        let (st, e) = s.post(&tok, "/api/v1/uploads", body).await;
        assert_err(st, &e, status, code);
    }
    let (st, e) = s.get(&tok, "/api/v1/uploads/upl_01NOPE").await;
    assert_err(st, &e, 404, "UPLOAD_SESSION_NOT_FOUND");
    let (st, e) = s.put_chunk(&tok, "upl_01NOPE", 0, vec![1]).await;
    assert_err(st, &e, 404, "UPLOAD_SESSION_NOT_FOUND");
    // Tenant file size limit: 413 on session creation and on simple upload.
    let admin = s.token("acme", "root", true);
    let (st, t0) = s.get(&admin, "/api/v1/admin/tenant").await;
    assert_eq!(st, 200, "{t0}");
    assert_eq!(t0["id"], "tnt_acme");
    assert_eq!(t0["settings"]["max_file_size_bytes"], 5u64 << 30);
    let (st, e) = s.get(&tok, "/api/v1/admin/tenant").await;
    assert_err(st, &e, 403, "AUTHZ_PERMISSION_DENIED");
    let (st, t) = s
        .patch(
            &admin,
            "/api/v1/admin/tenant",
            json!({"settings": {"max_file_size_bytes": 100_000}}),
        )
        .await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["settings"]["max_file_size_bytes"], 100_000);
    let (st, e) = s
        .post(
            &tok,
            "/api/v1/uploads",
            json!({"share_id": share, "file_name": "huge", "file_size": 100_001}),
        )
        .await;
    assert_err(st, &e, 413, "PAYLOAD_TOO_LARGE");
    let (st, e) = s.upload(&tok, &root, "huge2", &data(150_000, 4)).await;
    assert_err(st, &e, 413, "PAYLOAD_TOO_LARGE");
    let (st, e) = s
        .patch(
            &tok,
            "/api/v1/admin/tenant",
            json!({"max_file_size_bytes": 1}),
        )
        .await;
    assert_err(st, &e, 403, "AUTHZ_PERMISSION_DENIED");
    // Absurd declared sizes: negative is refused; i64::MAX (allowed by the tenant here) gives a
    // session whose status answers at once (it once looped over every declared chunk).
    let (st, e) = s
        .post(
            &tok,
            "/api/v1/uploads",
            json!({"share_id": share, "file_name": "neg", "file_size": -1}),
        )
        .await;
    assert!(st == 400 || st == 422, "{st} {e}");
    let (st, t) = s
        .patch(
            &admin,
            "/api/v1/admin/tenant",
            json!({"settings": {"max_file_size_bytes": i64::MAX}}),
        )
        .await;
    assert_eq!(st, 200, "{t}");
    let (st, sess) = s
        .post(
            &tok,
            "/api/v1/uploads",
            json!({"share_id": share, "file_name": "enormous", "file_size": i64::MAX}),
        )
        .await;
    assert_eq!(st, 201, "{sess}");
    let sid = sess["session_id"].as_str().unwrap().to_string();
    let status = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        s.get(&tok, &format!("/api/v1/uploads/{sid}")),
    )
    .await
    .expect("status of a huge session must answer promptly");
    assert_eq!(status.0, 200, "{}", status.1);
}

async fn versions_list_download_restore(b: Backend) {
    let Some(s) = Srv::start(b, &[]).await else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let (_, root) = s.home(&tok).await;
    let v1 = data(70_000, 10);
    let v2 = data(1_000, 11);
    let v3 = data(140_000, 12);
    let (_, f) = s.upload(&tok, &root, "doc.bin", &v1).await;
    let id = f["id"].as_str().unwrap().to_string();
    // v2 through POST /files/{id}/content.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(v2.clone()).file_name("whatever"),
    );
    let (st, f2) = common::json_of(
        s.http
            .post(s.url(&format!("/api/v1/files/{id}/content")))
            .bearer_auth(&tok)
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 201, "{f2}");
    assert_eq!(f2["version"], 2);
    assert_eq!(f2["name"], "doc.bin");
    // v3 through a resumable session with file_id.
    let (st, f3) = s
        .upload_resumable(
            &tok,
            json!({"file_id": id, "file_size": v3.len(), "chunk_size": 65536}),
            &v3,
        )
        .await;
    assert_eq!(st, 200, "{f3}");
    assert_eq!(f3["version"], 3);
    assert_eq!(f3["id"], id.as_str());
    let (st, vs) = s.get(&tok, &format!("/api/v1/files/{id}/versions")).await;
    assert_eq!(st, 200, "{vs}");
    assert_eq!(vs["total"], 3);
    let nums: Vec<i64> = vs["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version_number"].as_i64().unwrap())
        .collect();
    assert_eq!(nums, vec![3, 2, 1]);
    assert!(vs["versions"][0]["id"]
        .as_str()
        .unwrap()
        .starts_with("ver_"));
    assert_eq!(vs["versions"][2]["checksum_sha256"], sha256_hex(&v1));
    for (n, want) in [(1, &v1), (2, &v2), (3, &v3)] {
        let r = s
            .download(
                &tok,
                &format!("/api/v1/files/{id}/content?version={n}"),
                None,
            )
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            want.as_slice(),
            "version {n}"
        );
    }
    let r = s
        .download(&tok, &format!("/api/v1/files/{id}/content"), None)
        .await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), v3.as_slice());
    let r = s
        .download(
            &tok,
            &format!("/api/v1/files/{id}/content?version=1"),
            Some("bytes=69990-"),
        )
        .await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &v1[69_990..]);
    let (st, e) = common::json_of(
        s.download(&tok, &format!("/api/v1/files/{id}/content?version=9"), None)
            .await,
    )
    .await;
    assert_err(st, &e, 404, "NOT_FOUND");
    // Restore v1: a new version 4 with v1's bytes.
    let (st, r) = s
        .post(
            &tok,
            &format!("/api/v1/files/{id}/versions/1/restore"),
            json!({}),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    assert_eq!(r["version"], 4);
    assert_eq!(r["size"], v1.len());
    let r = s
        .download(&tok, &format!("/api/v1/files/{id}/content"), None)
        .await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), v1.as_slice());
    let ver2 = vs["versions"][1]["id"].as_str().unwrap();
    let (st, r) = s
        .post(
            &tok,
            &format!("/api/v1/files/{id}/versions/{ver2}/restore"),
            json!({}),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    assert_eq!(r["version"], 5);
    assert_eq!(r["size"], v2.len());
}

async fn tenant_isolation(b: Backend) {
    let Some(s) = Srv::start(b, &[]).await else {
        return;
    };
    let alice = s.token("acme", "alice", false);
    let bob = s.token("globex", "bob", false);
    let bob_admin = s.token("globex", "boss", true);
    let carol = s.token("acme", "carol", false);
    let (share, root) = s.home(&alice).await;
    let folder = s.mkdir(&alice, &root, "private").await;
    let folder = folder["id"].as_str().unwrap().to_string();
    let (_, f) = s.upload(&alice, &folder, "secret.txt", b"top secret").await;
    let file = f["id"].as_str().unwrap().to_string();
    let (_, sess) = s
        .post(
            &alice,
            "/api/v1/uploads",
            json!({"share_id": share, "file_name": "up.bin", "file_size": 10}),
        )
        .await;
    let sid = sess["session_id"].as_str().unwrap().to_string();
    for who in [&bob, &bob_admin, &carol] {
        for path in [
            format!("/api/v1/shares/{share}"),
            format!("/api/v1/folders/{root}"),
            format!("/api/v1/folders/{folder}/children"),
            format!("/api/v1/files/{file}"),
            format!("/api/v1/files/{file}/content"),
            format!("/api/v1/files/{file}/versions"),
            format!("/api/v1/uploads/{sid}"),
        ] {
            let (st, e) = s.get(who, &path).await;
            assert_eq!(st, 404, "{path}: {e}");
        }
        let (st, _) = s
            .patch(
                who,
                &format!("/api/v1/files/{file}"),
                json!({"name": "pwned"}),
            )
            .await;
        assert_eq!(st, 404);
        let (st, _) = s.delete(who, &format!("/api/v1/folders/{folder}")).await;
        assert_eq!(st, 404);
        let (st, _) = s
            .post(
                who,
                "/api/v1/folders",
                json!({"parent_id": folder, "name": "x"}),
            )
            .await;
        assert_eq!(st, 404);
        let (st, _) = s
            .post(
                who,
                "/api/v1/uploads",
                json!({"file_id": file, "file_size": 1}),
            )
            .await;
        assert_eq!(st, 404);
        let (st, _) = s.put_chunk(who, &sid, 0, vec![0; 10]).await;
        assert_eq!(st, 404);
        let (st, _) = s
            .post(
                who,
                &format!("/api/v1/files/{file}/versions/1/restore"),
                json!({}),
            )
            .await;
        assert_eq!(st, 404);
        let (_, mine) = s.get(who, "/api/v1/users/me/shares").await;
        assert!(!mine.to_string().contains(&share));
    }
    // Bob's admin cannot suspend Alice from another tenant.
    let (st, _) = s
        .post(
            &bob_admin,
            "/api/v1/admin/users/usr_alice/deactivate",
            json!({}),
        )
        .await;
    assert_eq!(st, 404);
    // Alice still sees her file intact.
    let r = s
        .download(&alice, &format!("/api/v1/files/{file}/content"), None)
        .await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"top secret");
}

async fn suspension_and_admin(b: Backend) {
    let Some(s) = Srv::start(b, &[]).await else {
        return;
    };
    let alice = s.token("acme", "alice", false);
    let admin = s.token("acme", "root", true);
    s.home(&alice).await;
    let (st, me) = s.get(&admin, "/api/v1/users/me").await;
    assert_eq!(st, 200);
    assert_eq!(me["is_admin"], true);
    assert_eq!(me["tenant_id"], "tnt_acme");
    let (st, e) = s
        .post(&alice, "/api/v1/admin/users/usr_root/deactivate", json!({}))
        .await;
    assert_err(st, &e, 403, "AUTHZ_PERMISSION_DENIED");
    let (st, r) = s
        .post(
            &admin,
            "/api/v1/admin/users/usr_alice/deactivate",
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["is_active"], false);
    let (st, e) = s.get(&alice, "/api/v1/users/me/shares").await;
    assert_err(st, &e, 403, "AUTHZ_USER_SUSPENDED");
    let (st, e) = s
        .post(&admin, "/api/v1/admin/users/usr_ghost/activate", json!({}))
        .await;
    assert_err(st, &e, 404, "NOT_FOUND");
    let (st, _) = s
        .post(&admin, "/api/v1/admin/users/usr_alice/activate", json!({}))
        .await;
    assert_eq!(st, 200);
    let (st, _) = s.get(&alice, "/api/v1/users/me/shares").await;
    assert_eq!(st, 200);
}

async fn bad_input_never_500(b: Backend) {
    let Some(s) = Srv::start(b, &[]).await else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let (share, _) = s.home(&tok).await;
    // No token, garbage token, wrong scheme.
    let (st, e) =
        common::json_of(s.http.get(s.url("/api/v1/users/me")).send().await.unwrap()).await;
    assert_err(st, &e, 401, "AUTH_TOKEN_INVALID");
    let (st, e) = s.get("not.a.jwt", "/api/v1/users/me").await;
    assert_err(st, &e, 401, "AUTH_TOKEN_INVALID");
    let (st, e) = common::json_of(
        s.http
            .get(s.url("/api/v1/users/me"))
            .header("Authorization", "Basic Zm9vOmJhcg==")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_err(st, &e, 401, "AUTH_TOKEN_INVALID");
    // Malformed JSON, wrong types, unknown fields, wrong content type.
    let post_raw = |body: &'static str, ct: &'static str| {
        s.http
            .post(s.url("/api/v1/folders"))
            .bearer_auth(&tok)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let (st, e) = common::json_of(post_raw("{\"name\": ", "application/json").await.unwrap()).await;
    assert_err(st, &e, 400, "VALIDATION_ERROR");
    let (st, e) = common::json_of(
        post_raw("{\"name\": 42}", "application/json")
            .await
            .unwrap(),
    )
    .await;
    assert_err(st, &e, 422, "VALIDATION_ERROR");
    let (st, e) = common::json_of(post_raw("[1,2,3]", "application/json").await.unwrap()).await;
    assert_err(st, &e, 422, "VALIDATION_ERROR");
    let (st, e) = common::json_of(post_raw("{\"name\": \"a\"}", "text/plain").await.unwrap()).await;
    assert_err(st, &e, 400, "VALIDATION_ERROR");
    let (st, e) = s
        .post(
            &tok,
            "/api/v1/folders",
            json!({"share_id": share, "name": "x", "evil": true}),
        )
        .await;
    assert_err(st, &e, 422, "VALIDATION_ERROR");
    let (st, e) = s
        .post(
            &tok,
            "/api/v1/uploads",
            json!({"share_id": share, "file_name": "x", "file_size": 1e30}),
        )
        .await;
    assert_err(st, &e, 422, "VALIDATION_ERROR");
    // Unknown route, wrong method, malformed ids.
    let (st, e) = s.get(&tok, "/api/v1/nope").await;
    assert_err(st, &e, 404, "NOT_FOUND");
    let (st, e) = s.call(&tok, Method::PUT, "/api/v1/health", None).await;
    assert_err(st, &e, 405, "METHOD_NOT_ALLOWED");
    let (st, e) = s.get(&tok, "/api/v1/files/..%2F..%2Fetc").await;
    assert_err(st, &e, 404, "NOT_FOUND");
    let (st, e) = s.get(&tok, "/api/v1/uploads/upl_x/chunks/abc").await;
    assert_eq!(st, 405, "{e}");
    let (st, e) = s.put_chunk(&tok, "upl_x", 99999999999999999, vec![]).await;
    assert!(st == 400 || st == 404, "{st} {e}");
    // Huge header: refused by the HTTP layer, never a 500, and the server stays up.
    let huge = "x".repeat(1_000_000);
    if let Ok(r) = s
        .http
        .get(s.url("/api/v1/users/me"))
        .bearer_auth(&tok)
        .header("X-Huge", huge)
        .send()
        .await
    {
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    let (st, _) = s.get(&tok, "/api/v1/users/me").await;
    assert_eq!(st, 200);
}

macro_rules! suite {
    ($backend:expr) => {
        #[tokio::test]
        async fn health_ready_metrics_request_id() {
            super::health_ready_metrics_request_id($backend).await
        }
        #[tokio::test]
        async fn folders_crud_names_and_trash() {
            super::folders_crud_names_and_trash($backend).await
        }
        #[tokio::test]
        async fn children_keyset_pagination() {
            super::children_keyset_pagination($backend).await
        }
        #[tokio::test]
        async fn simple_upload_download_range() {
            super::simple_upload_download_range($backend).await
        }
        #[tokio::test]
        async fn file_rename_move_delete() {
            super::file_rename_move_delete($backend).await
        }
        #[tokio::test]
        async fn resumable_upload_dedup_and_errors() {
            super::resumable_upload_dedup_and_errors($backend).await
        }
        #[tokio::test]
        async fn versions_list_download_restore() {
            super::versions_list_download_restore($backend).await
        }
        #[tokio::test]
        async fn tenant_isolation() {
            super::tenant_isolation($backend).await
        }
        #[tokio::test]
        async fn suspension_and_admin() {
            super::suspension_and_admin($backend).await
        }
        #[tokio::test]
        async fn bad_input_never_500() {
            super::bad_input_never_500($backend).await
        }
        #[tokio::test]
        async fn avatars() {
            super::avatars($backend).await
        }
        #[tokio::test]
        async fn pending_chunk_layout() {
            super::pending_chunk_layout($backend).await
        }
    };
}

mod sqlite {
    suite!(crate::Backend::Sqlite);
}

mod mariadb {
    suite!(crate::Backend::MariaDb);
}

mod s3 {
    suite!(crate::Backend::S3);
}

/// MariaDB + Redis + s3s-fs: the production configuration.
mod production {
    suite!(crate::Backend::Production);
}

/// Avatars: stored at `avatars/{tenant_id}/{user_id}`, readable by the tenant's users only.
async fn avatars(b: Backend) {
    let Some(s) = Srv::start(b, &[]).await else {
        return;
    };
    let alice = s.token("acme", "alice", false);
    let bob = s.token("acme", "bob", false);
    let eve = s.token("evil", "eve", false);
    let put = |tok: String, body: Vec<u8>| {
        let req = s
            .http
            .put(s.url("/api/v1/users/me/avatar"))
            .bearer_auth(tok)
            .body(body);
        async move { common::json_of(req.send().await.unwrap()).await }
    };
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&data(5_000, 21));
    let (st, v) = put(alice.clone(), png.clone()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["mime_type"], "image/png");
    // Not an image; too big.
    let (st, e) = put(alice.clone(), b"hello".to_vec()).await;
    assert_err(st, &e, 400, "UNSUPPORTED_MEDIA_TYPE");
    let mut huge = b"\x89PNG\r\n\x1a\n".to_vec();
    // Just over the limit, so the whole body is sent before the server answers.
    huge.extend_from_slice(&data((2 << 20) + 1024, 22));
    // On its own connection: the server answers 413 before reading the whole body and closes
    // that connection, which a pooled client would otherwise try to reuse.
    let (st, e) = common::json_of(
        reqwest::Client::new()
            .put(s.url("/api/v1/users/me/avatar"))
            .bearer_auth(&alice)
            .body(huge)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_err(st, &e, 413, "PAYLOAD_TOO_LARGE");
    // Bob (same tenant) reads Alice's avatar; Eve (another tenant) cannot.
    let get = |tok: &str, user: &str| {
        s.http
            .get(s.url(&format!("/api/v1/users/{user}/avatar")))
            .bearer_auth(tok)
            .send()
    };
    let r = get(&bob, "usr_alice").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.bytes().await.unwrap().to_vec(), png);
    assert_eq!(get(&eve, "usr_alice").await.unwrap().status(), 404);
    assert_eq!(get(&bob, "usr_nobody").await.unwrap().status(), 404);
    assert_eq!(get(&bob, "..%2F..%2Fetc").await.unwrap().status(), 404);
    // The key layout on the local store: ids only.
    if matches!(b, Backend::Sqlite | Backend::MariaDb) {
        let p = s.dir.path().join("objects/avatars/tnt_acme/usr_alice");
        assert_eq!(std::fs::read(&p).unwrap(), png, "{}", p.display());
    }
    let r = s
        .http
        .delete(s.url("/api/v1/users/me/avatar"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(get(&bob, "usr_alice").await.unwrap().status(), 404);
}

/// Where an object key lives on disk for this backend: the local store's directory, or the
/// s3s-fs root of the bucket.
fn object_path(s: &Srv, b: Backend, key: &str) -> std::path::PathBuf {
    match b {
        Backend::Sqlite | Backend::MariaDb => s.dir.path().join("objects").join(key),
        Backend::S3 | Backend::Production => s.dir.path().join("s3root/scaidrive").join(key),
    }
}

/// Pending chunks of a resumable upload wait under `uploads/{session_id}/chunks/{index}` and
/// move to `chunks/{tenant}/{h0:2}/{h2:4}/{h}` at complete; the bytes under a pending key never
/// change once written, so a re-sent index with other bytes cannot store a chunk under a wrong
/// hash.
async fn pending_chunk_layout(b: Backend) {
    let Some(s) = Srv::start(b, &[]).await else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let (_, root) = s.home(&tok).await;
    let part = 64 * 1024;
    let good = data(2 * part, 77);
    let (st, sess) = s
        .post(
            &tok,
            "/api/v1/uploads",
            json!({"folder_id": root, "file_name": "layout.bin", "file_size": good.len(),
                   "chunk_size": part, "checksum_sha256": sha256_hex(&good)}),
        )
        .await;
    assert_eq!(st, 201, "{sess}");
    let sid = sess["session_id"].as_str().unwrap().to_string();
    let chunk_path = |bytes: &[u8]| {
        let h = sha256_hex(bytes);
        object_path(
            &s,
            b,
            &format!("chunks/tnt_acme/{}/{}/{h}", &h[0..2], &h[2..4]),
        )
    };
    let (st, r) = s.put_chunk(&tok, &sid, 0, good[..part].to_vec()).await;
    assert_eq!(st, 200, "{r}");
    let pending0 = object_path(&s, b, &format!("uploads/{sid}/chunks/0"));
    assert_eq!(std::fs::read(&pending0).unwrap(), &good[..part]);
    assert!(!chunk_path(&good[..part]).exists());
    // Chunk 1 first with wrong bytes (no declared hash), then with the right ones.
    let wrong = data(part, 5);
    let (st, r) = s.put_chunk(&tok, &sid, 1, wrong.clone()).await;
    assert_eq!(st, 200, "{r}");
    let (st, r) = s.put_chunk(&tok, &sid, 1, good[part..].to_vec()).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        std::fs::read(object_path(&s, b, &format!("uploads/{sid}/chunks/1"))).unwrap(),
        wrong,
        "a pending key keeps its first bytes"
    );
    let (st, file) = s
        .post(&tok, &format!("/api/v1/uploads/{sid}/complete"), json!({}))
        .await;
    assert_eq!(st, 200, "{file}");
    assert_eq!(file["checksum_sha256"], sha256_hex(&good));
    assert_eq!(
        files_under(&object_path(&s, b, &format!("uploads/{sid}"))),
        0
    );
    for c in [&good[..part], &good[part..]] {
        assert_eq!(std::fs::read(chunk_path(c)).unwrap(), c);
    }
    assert!(
        !chunk_path(&wrong).exists(),
        "never referenced, never promoted"
    );
    let fid = file["id"].as_str().unwrap();
    let r = s
        .download(&tok, &format!("/api/v1/files/{fid}/content"), None)
        .await;
    assert!(
        r.bytes().await.unwrap().to_vec() == good,
        "download differs"
    );

    // An aborted session leaves no pending bytes.
    let (st, sess) = s
        .post(
            &tok,
            "/api/v1/uploads",
            json!({"folder_id": root, "file_name": "gone.bin", "file_size": part}),
        )
        .await;
    assert_eq!(st, 201, "{sess}");
    let sid = sess["session_id"].as_str().unwrap().to_string();
    let (st, _) = s.put_chunk(&tok, &sid, 0, data(part, 9)).await;
    assert_eq!(st, 200);
    assert!(object_path(&s, b, &format!("uploads/{sid}/chunks/0")).exists());
    let r = s
        .http
        .delete(s.url(&format!("/api/v1/uploads/{sid}")))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        files_under(&object_path(&s, b, &format!("uploads/{sid}"))),
        0
    );
}

/// Regular files below `dir` (0 when it does not exist); an S3 server may keep empty dirs.
fn files_under(dir: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            if e.file_type().unwrap().is_dir() {
                files_under(&e.path())
            } else {
                1
            }
        })
        .sum()
}
