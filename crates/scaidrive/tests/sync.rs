//! Sync suite against the real binary on SQLite and MariaDB: the change log and changes feed
//! (cursor, limits, snapshot on cursor 0, retention → 410 SYNC_CURSOR_INVALID), devices and
//! status, apply with every conflict strategy, conflicts and resolution, the chunk "have"
//! dedup, and the WebSockets with a real client (frames, 4401/4403/4429, reconnect with
//! catch-up), plus two `api` replicas on one MariaDB + Redis.

mod common;

use std::time::Duration;

use common::{assert_err, data, Backend, Srv};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

async fn register(s: &Srv, tok: &str, dev: &str) {
    let (st, b) = s
        .post(tok, "/api/v1/sync/devices", json!({"device_id": dev, "device_name": dev, "platform": "linux", "client_version": "test"}))
        .await;
    assert!(st == 201 || st == 200, "{b}");
}

async fn changes(s: &Srv, tok: &str, share: &str, cursor: &str, limit: u32) -> Value {
    let (st, b) = s
        .get(
            tok,
            &format!("/api/v1/sync/changes?share_id={share}&cursor={cursor}&limit={limit}"),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    b
}

/// Everything after `cursor`, following has_more.
async fn drain(s: &Srv, tok: &str, share: &str, mut cursor: String) -> (Vec<Value>, String) {
    let mut all = Vec::new();
    loop {
        let b = changes(s, tok, share, &cursor, 2).await;
        all.extend(b["changes"].as_array().unwrap().iter().cloned());
        cursor = b["cursor"].as_str().unwrap().to_string();
        if b["has_more"] != true {
            return (all, cursor);
        }
    }
}

async fn changes_feed_cursor_and_snapshot(b: Backend) {
    let Some(s) = Srv::start(b, &[]).await else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let (share, root) = s.home(&tok).await;
    register(&s, &tok, "dev-a").await;
    // Re-registering answers 200 with the same record.
    let (st, d) = s
        .post(&tok, "/api/v1/sync/devices", json!({"device_id": "dev-a"}))
        .await;
    assert_eq!(st, 200, "{d}");
    let (st, devs) = s.get(&tok, "/api/v1/sync/devices").await;
    assert_eq!(st, 200);
    assert_eq!(devs["total"], 1);
    let (st, status) = s
        .get(
            &tok,
            &format!("/api/v1/sync/status?share_id={share}&device_id=dev-a"),
        )
        .await;
    assert_eq!(st, 200, "{status}");
    let start = status["cursor_position"].as_i64().unwrap();
    assert_eq!(status["pending_changes"], 0);
    assert_eq!(status["has_conflicts"], false);

    let docs = s.mkdir(&tok, &root, "docs").await;
    let docs_id = docs["id"].as_str().unwrap().to_string();
    let (_, f) = s.upload(&tok, &root, "a.txt", b"hello").await;
    let fid = f["id"].as_str().unwrap().to_string();
    let (st, _) = s
        .patch(
            &tok,
            &format!("/api/v1/files/{fid}"),
            json!({"name": "b.txt"}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .patch(
            &tok,
            &format!("/api/v1/files/{fid}"),
            json!({"folder_id": docs_id}),
        )
        .await;
    assert_eq!(st, 200);
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"hello v2".to_vec()).file_name("b.txt"),
    );
    let r = s
        .http
        .post(s.url(&format!("/api/v1/files/{fid}/content")))
        .bearer_auth(&tok)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (st, _) = s.delete(&tok, &format!("/api/v1/folders/{docs_id}")).await;
    assert_eq!(st, 200);

    let (st, status) = s
        .get(
            &tok,
            &format!("/api/v1/sync/status?share_id={share}&device_id=dev-a"),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(status["pending_changes"], 6, "{status}");
    assert_eq!(
        status["cursor_position"].as_i64().unwrap(),
        start,
        "the server never moves a cursor"
    );

    let (all, end) = drain(&s, &tok, &share, start.to_string()).await;
    let kinds: Vec<(String, String)> = all
        .iter()
        .map(|c| {
            (
                c["resource_type"].as_str().unwrap().into(),
                c["change_type"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("folder", "created"),
        ("file", "created"),
        ("file", "renamed"),
        ("file", "moved"),
        ("file", "updated"),
        ("folder", "deleted"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(kinds, want);
    let positions: Vec<i64> = all
        .iter()
        .map(|c| c["position"].as_i64().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert!(all
        .iter()
        .all(|c| c["id"].as_str().unwrap().starts_with("chg_")));
    assert_eq!(all[1]["new_path"], "/a.txt");
    assert_eq!(all[1]["metadata"]["size"], 5);
    assert_eq!(all[1]["metadata"]["mime_type"], "text/plain");
    assert_eq!(all[2]["old_path"], "/a.txt");
    assert_eq!(all[2]["new_path"], "/b.txt");
    assert_eq!(all[3]["new_path"], "/docs/b.txt");
    assert_ne!(all[4]["version_id"], all[1]["version_id"]);
    assert!(all[4]["version_id"].as_str().unwrap().starts_with("ver_"));
    assert_eq!(all[5]["old_path"], "/docs");

    // Commit the cursor; only then does status move.
    let (st, cur) = s
        .post(
            &tok,
            &format!("/api/v1/sync/cursor?share_id={share}&device_id=dev-a&position={end}"),
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{cur}");
    let (_, status) = s
        .get(
            &tok,
            &format!("/api/v1/sync/status?share_id={share}&device_id=dev-a"),
        )
        .await;
    assert_eq!(status["pending_changes"], 0);
    assert_eq!(status["cursor_position"].to_string(), end);
    // Omitted cursor + device: from the device's position (nothing new).
    let (st, b) = s
        .get(
            &tok,
            &format!("/api/v1/sync/changes?share_id={share}&device_id=dev-a"),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(b["changes"].as_array().unwrap().len(), 0);

    // Cursor 0: snapshot of the live tree only (the folder and file were trashed).
    s.upload(&tok, &root, "live.txt", b"x").await;
    let sub = s.mkdir(&tok, &root, "sub").await;
    s.upload(&tok, sub["id"].as_str().unwrap(), "deep.txt", b"yy")
        .await;
    let (snap, _) = drain(&s, &tok, &share, "0".into()).await;
    let mut paths: Vec<String> = snap
        .iter()
        .filter(|c| c["snapshot"] == true)
        .map(|c| c["new_path"].as_str().unwrap().to_string())
        .collect();
    paths.sort();
    assert_eq!(paths, vec!["/live.txt", "/sub", "/sub/deep.txt"]);

    // Bad input.
    for q in ["limit=0", "limit=5001"] {
        let (st, b) = s
            .get(
                &tok,
                &format!("/api/v1/sync/changes?share_id={share}&cursor=1&{q}"),
            )
            .await;
        assert_err(st, &b, 422, "VALIDATION_ERROR");
    }
    let (st, b) = s
        .get(
            &tok,
            &format!("/api/v1/sync/changes?share_id={share}&cursor=abc"),
        )
        .await;
    assert_err(st, &b, 422, "VALIDATION_ERROR");
    let (st, b) = s
        .get(
            &tok,
            &format!("/api/v1/sync/changes?share_id={share}&cursor=999999"),
        )
        .await;
    assert_err(st, &b, 410, "SYNC_CURSOR_INVALID");
    let (st, b) = s
        .post(
            &tok,
            "/api/v1/sync/devices",
            json!({"device_id": "bad id!"}),
        )
        .await;
    assert_err(st, &b, 422, "VALIDATION_ERROR");
    // Another tenant sees nothing of this share.
    let eve = s.token("evil", "eve", false);
    let (st, b) = s
        .get(
            &eve,
            &format!("/api/v1/sync/changes?share_id={share}&cursor=1"),
        )
        .await;
    assert_err(st, &b, 404, "NOT_FOUND");
    // Another user of the tenant cannot use alice's device.
    let bob = s.token("acme", "bob", false);
    let (st, b) = s
        .post(&bob, "/api/v1/sync/devices", json!({"device_id": "dev-a"}))
        .await;
    assert_err(st, &b, 409, "DEVICE_ID_TAKEN");
}

/// Upload `bytes` into a session (target rewritten by apply) and return its id.
async fn staged(s: &Srv, tok: &str, share: &str, file_id: Option<&str>, bytes: &[u8]) -> String {
    let mut body = json!({"file_size": bytes.len(), "chunk_size": 65536});
    match file_id {
        Some(f) => body["file_id"] = json!(f),
        None => {
            body["share_id"] = json!(share);
            body["file_name"] = json!(format!("upload-{}.part", uuid_like()));
        }
    }
    let (st, sess) = s.post(tok, "/api/v1/uploads", body).await;
    assert_eq!(st, 201, "{sess}");
    let sid = sess["session_id"].as_str().unwrap().to_string();
    for (i, c) in bytes.chunks(65536).enumerate() {
        let (st, b) = s.put_chunk(tok, &sid, i as i64, c.to_vec()).await;
        assert_eq!(st, 200, "{b}");
    }
    sid
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

async fn content(s: &Srv, tok: &str, fid: &str) -> Vec<u8> {
    let r = s
        .download(tok, &format!("/api/v1/sync/download/{fid}"), None)
        .await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap().to_vec()
}

async fn apply(
    s: &Srv,
    tok: &str,
    share: &str,
    strategy: &str,
    changes: Value,
) -> (reqwest::StatusCode, Value) {
    s.post(tok, "/api/v1/sync/apply", json!({"device_id": "dev-a", "share_id": share, "conflict_resolution": strategy, "changes": changes})).await
}

async fn apply_and_conflicts(b: Backend) {
    let Some(s) = Srv::start(b, &[]).await else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let (share, _root) = s.home(&tok).await;
    register(&s, &tok, "dev-a").await;

    // Create through apply: folders made on the way.
    let sid = staged(&s, &tok, &share, None, b"v1").await;
    let (st, r) = apply(&s, &tok, &share, "KEEP_BOTH", json!([{"resource_type": "file", "change_type": "created", "new_path": "/w/doc.txt", "session_id": sid}])).await;
    assert_eq!(st, 200, "{r}");
    let res = &r["results"][0];
    assert_eq!(res["status"], "applied", "{r}");
    let fid = res["resource_id"].as_str().unwrap().to_string();
    let v1 = res["version_id"].as_str().unwrap().to_string();
    assert_eq!(res["new_path"], "/w/doc.txt");

    // In-step edit: applied as a new version.
    let sid = staged(&s, &tok, &share, Some(&fid), b"v2").await;
    let (_, r) = apply(&s, &tok, &share, "KEEP_BOTH", json!([{"resource_type": "file", "change_type": "updated", "resource_id": fid, "base_version_id": v1, "session_id": sid}])).await;
    assert_eq!(r["results"][0]["status"], "applied", "{r}");
    let v2 = r["results"][0]["version_id"].as_str().unwrap().to_string();
    assert_eq!(content(&s, &tok, &fid).await, b"v2");

    // Stale base (v1) with KEEP_BOTH: server keeps v2, client's bytes become a conflict copy.
    let sid = staged(&s, &tok, &share, Some(&fid), b"client-edit").await;
    let (_, r) = apply(&s, &tok, &share, "KEEP_BOTH", json!([{"resource_type": "file", "change_type": "updated", "resource_id": fid, "base_version_id": v1, "session_id": sid}])).await;
    let res = &r["results"][0];
    assert_eq!(res["status"], "conflict", "{r}");
    assert_eq!(res["resolution"], "keep_both");
    let copy = res["resource_id"].as_str().unwrap().to_string();
    assert!(
        res["new_path"]
            .as_str()
            .unwrap()
            .starts_with("/w/doc (conflict copy "),
        "{r}"
    );
    assert!(
        res["new_path"].as_str().unwrap().ends_with(" dev-a).txt"),
        "{r}"
    );
    assert_eq!(content(&s, &tok, &fid).await, b"v2");
    assert_eq!(content(&s, &tok, &copy).await, b"client-edit");

    // SERVER_WINS: dropped. LAST_WRITER_WINS / CLIENT_WINS: client on top.
    let sid = staged(&s, &tok, &share, Some(&fid), b"lost").await;
    let (_, r) = apply(&s, &tok, &share, "SERVER_WINS", json!([{"resource_type": "file", "change_type": "updated", "resource_id": fid, "base_version_id": v1, "session_id": sid}])).await;
    assert_eq!(r["results"][0]["resolution"], "server_kept", "{r}");
    assert_eq!(content(&s, &tok, &fid).await, b"v2");
    for (strategy, bytes) in [
        ("LAST_WRITER_WINS", b"lww".as_slice()),
        ("CLIENT_WINS", b"cw".as_slice()),
    ] {
        let sid = staged(&s, &tok, &share, Some(&fid), bytes).await;
        let (_, r) = apply(&s, &tok, &share, strategy, json!([{"resource_type": "file", "change_type": "updated", "resource_id": fid, "base_version_id": v1, "session_id": sid}])).await;
        assert_eq!(r["results"][0]["status"], "conflict", "{r}");
        assert_eq!(content(&s, &tok, &fid).await, bytes);
    }

    // MANUAL: 409, the conflict is listed, only that resource is blocked.
    let sid = staged(&s, &tok, &share, Some(&fid), b"manual").await;
    let (st, r) = apply(&s, &tok, &share, "MANUAL", json!([{"resource_type": "file", "change_type": "updated", "resource_id": fid, "base_version_id": v2, "session_id": sid}])).await;
    assert_err(st, &r, 409, "SYNC_CONFLICT");
    let cid = r["error"]["details"]["results"][0]["conflict_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, list) = s
        .get(
            &tok,
            "/api/v1/sync/conflicts?device_id=dev-a&include_resolved=false",
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["conflicts"][0]["id"], cid.as_str());
    let (_, all) = s
        .get(
            &tok,
            "/api/v1/sync/conflicts?device_id=dev-a&include_resolved=true",
        )
        .await;
    assert!(all["total"].as_u64().unwrap() >= 5, "{all}");
    let (_, status) = s
        .get(
            &tok,
            &format!("/api/v1/sync/status?share_id={share}&device_id=dev-a"),
        )
        .await;
    assert_eq!(status["has_conflicts"], true);
    let (_, cur) = s.get(&tok, &format!("/api/v1/files/{fid}")).await;
    let sid2 = staged(&s, &tok, &share, Some(&fid), b"blocked").await;
    let sid3 = staged(&s, &tok, &share, Some(&copy), b"other ok").await;
    let (st, r) = apply(&s, &tok, &share, "MANUAL", json!([
        {"resource_type": "file", "change_type": "updated", "resource_id": fid, "base_version_id": cur["version_id"], "session_id": sid2},
        {"resource_type": "file", "change_type": "updated", "resource_id": copy, "base_version_id": null, "session_id": sid3},
    ])).await;
    // The second item has no base: stale → conflict as well, but the first is just blocked.
    assert_eq!(st, 409, "{r}");
    assert_eq!(r["error"]["details"]["results"][0]["status"], "blocked");
    // Resolve KEEP_CLIENT: the held content becomes the new version; the resource unblocks.
    let (st, res) = s
        .post(
            &tok,
            &format!("/api/v1/sync/conflicts/{cid}/resolve"),
            json!({"resolution": "KEEP_CLIENT"}),
        )
        .await;
    assert_eq!(st, 200, "{res}");
    assert_eq!(res["is_resolved"], true);
    assert_eq!(content(&s, &tok, &fid).await, b"manual");
    let (st, again) = s
        .post(
            &tok,
            &format!("/api/v1/sync/conflicts/{cid}/resolve"),
            json!({"resolution": "KEEP_CLIENT"}),
        )
        .await;
    assert_err(st, &again, 409, "CONFLICT_ALREADY_RESOLVED");

    // Move and rename through apply are moves (same id), delete with a stale base keeps the edit.
    let (_, r) = apply(&s, &tok, &share, "KEEP_BOTH", json!([{"resource_type": "file", "change_type": "moved", "resource_id": fid, "new_path": "/x/y/renamed.txt"}])).await;
    assert_eq!(r["results"][0]["status"], "applied", "{r}");
    assert_eq!(r["results"][0]["resource_id"], fid.as_str());
    let (_, f) = s.get(&tok, &format!("/api/v1/files/{fid}")).await;
    assert_eq!(f["path"], "/x/y/renamed.txt");
    let (_, r) = apply(&s, &tok, &share, "KEEP_BOTH", json!([{"resource_type": "file", "change_type": "deleted", "resource_id": fid, "base_version_id": v1}])).await;
    assert_eq!(r["results"][0]["status"], "conflict", "{r}");
    let (st, _) = s.get(&tok, &format!("/api/v1/files/{fid}")).await;
    assert_eq!(st, 200, "the edited file survives a stale delete");
    let (_, r) = apply(&s, &tok, &share, "KEEP_BOTH", json!([{"resource_type": "file", "change_type": "deleted", "resource_id": fid, "base_version_id": f["version_id"]}])).await;
    assert_eq!(r["results"][0]["status"], "applied", "{r}");
    let (st, _) = s.get(&tok, &format!("/api/v1/files/{fid}")).await;
    assert_eq!(st, 410);

    // Bad strategy.
    let (st, r) = apply(&s, &tok, &share, "NOPE", json!([])).await;
    assert_err(st, &r, 422, "VALIDATION_ERROR");
    // Range on the sync download.
    let sid = staged(&s, &tok, &share, None, b"0123456789").await;
    let (_, r) = apply(&s, &tok, &share, "KEEP_BOTH", json!([{"resource_type": "file", "change_type": "created", "new_path": "/r.bin", "session_id": sid}])).await;
    let rid = r["results"][0]["resource_id"].as_str().unwrap().to_string();
    let resp = s
        .download(
            &tok,
            &format!("/api/v1/sync/download/{rid}?range_start=2&range_end=4"),
            None,
        )
        .await;
    assert_eq!(resp.status(), 206);
    assert!(resp.headers()["x-version-id"]
        .to_str()
        .unwrap()
        .starts_with("ver_"));
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"234");
    let resp = s
        .download(
            &tok,
            &format!("/api/v1/sync/download/{rid}"),
            Some("bytes=8-"),
        )
        .await;
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"89");
}

async fn retention_gives_cursor_invalid(b: Backend) {
    let Some(s) = Srv::start(
        b,
        &[
            ("SCAIDRIVE_CHANGELOG_RETENTION", "1s".into()),
            ("SCAIDRIVE_CHANGELOG_PURGE_INTERVAL", "200ms".into()),
        ],
    )
    .await
    else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let (share, root) = s.home(&tok).await;
    s.upload(&tok, &root, "old.txt", b"old").await;
    let first = changes(&s, &tok, &share, "1", 10).await;
    assert!(!first["changes"].as_array().unwrap().is_empty());
    // Wait until the purge has taken the old rows (polling the feed itself).
    let mut gone = false;
    for _ in 0..100 {
        let (st, b) = s
            .get(
                &tok,
                &format!("/api/v1/sync/changes?share_id={share}&cursor=1"),
            )
            .await;
        if st == 410 {
            assert_err(st, &b, 410, "SYNC_CURSOR_INVALID");
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gone, "cursor 1 never became invalid");
    // Full resync from 0 still works and shows the file.
    let (snap, cursor) = drain(&s, &tok, &share, "0".into()).await;
    assert!(snap.iter().any(|c| c["new_path"] == "/old.txt"), "{snap:?}");
    s.upload(&tok, &root, "new.txt", b"new").await;
    let (after, _) = drain(&s, &tok, &share, cursor).await;
    assert!(
        after.iter().any(|c| c["new_path"] == "/new.txt"),
        "{after:?}"
    );
}

async fn chunk_have_dedup_is_tenant_scoped(b: Backend) {
    let Some(s) = Srv::start(b, &[]).await else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let (share, _root) = s.home(&tok).await;
    let bytes = data(65536 * 3 + 100, 7);
    let (st, f) = s.upload_resumable(&tok, json!({"share_id": share, "file_name": "big.bin", "file_size": bytes.len(), "chunk_size": 65536}), &bytes).await;
    assert_eq!(st, 200, "{f}");
    // Same content with one chunk changed.
    let mut edited = bytes.clone();
    edited[65536 + 5] ^= 0xff;
    let hashes: Vec<Value> = edited
        .chunks(65536)
        .enumerate()
        .map(|(i, c)| json!({"index": i, "sha256": common::sha256_hex(c)}))
        .collect();
    let (st, sess) = s
        .post(
            &tok,
            "/api/v1/uploads",
            json!({"file_id": f["id"], "file_size": edited.len(), "chunk_size": 65536}),
        )
        .await;
    assert_eq!(st, 201);
    let sid = sess["session_id"].as_str().unwrap();
    let (st, have) = s
        .post(
            &tok,
            &format!("/api/v1/uploads/{sid}/chunks/have"),
            json!({"chunks": hashes}),
        )
        .await;
    assert_eq!(st, 200, "{have}");
    assert_eq!(have["missing"], json!([1]));
    assert_eq!(have["have"], json!([0, 2, 3]));
    let (st, _) = s
        .put_chunk(&tok, sid, 1, edited[65536..131072].to_vec())
        .await;
    assert_eq!(st, 200);
    let (st, done) = s
        .post(&tok, &format!("/api/v1/uploads/{sid}/complete"), json!({}))
        .await;
    assert_eq!(st, 200, "{done}");
    assert_eq!(done["checksum_sha256"], common::sha256_hex(&edited));
    let fid = f["id"].as_str().unwrap();
    assert_eq!(content(&s, &tok, fid).await, edited);
    // Another tenant with the same hashes learns nothing: everything is missing.
    let eve = s.token("evil", "eve", false);
    let (eshare, _) = s.home(&eve).await;
    let (_, es) = s.post(&eve, "/api/v1/uploads", json!({"share_id": eshare, "file_name": "x.bin", "file_size": edited.len(), "chunk_size": 65536})).await;
    let esid = es["session_id"].as_str().unwrap();
    let (st, have) = s
        .post(
            &eve,
            &format!("/api/v1/uploads/{esid}/chunks/have"),
            json!({"chunks": hashes}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(have["missing"], json!([0, 1, 2, 3]));
    // A wrong hash claims nothing either.
    let (st, have) = s
        .post(
            &tok,
            &format!("/api/v1/uploads/{esid}/chunks/have"),
            json!({"chunks": [{"index": 0, "sha256": "zz"}]}),
        )
        .await;
    assert!(st == 404 || st == 422, "{have}");
}

// ---- WebSockets ----

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_url(base: &str, path: &str) -> String {
    format!("{}{}", base.replacen("http://", "ws://", 1), path)
}

async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("ws connect")
        .0
}

/// The close code the server ends the socket with.
async fn close_code(ws: &mut Ws) -> u16 {
    let r = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Close(Some(f))) => return u16::from(f.code),
                Ok(Message::Close(None)) => return 1005,
                Ok(_) => continue,
                Err(_) => return 1006,
            }
        }
        1006
    })
    .await;
    r.expect("socket was not closed")
}

/// Next JSON frame (pings skipped).
async fn next_json(ws: &mut Ws) -> Value {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str::<Value>(&t).unwrap(),
                Some(Ok(Message::Close(f))) => panic!("closed: {f:?}"),
                Some(Ok(_)) => continue,
                other => panic!("socket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("no frame")
}

/// Next `change` frame for `resource_id`.
async fn next_change(ws: &mut Ws, resource_id: &str) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["event_type"] == "change" && v["data"]["resource_id"] == resource_id {
            return v;
        }
    }
}

async fn subscribe(ws: &mut Ws) {
    ws.send(Message::Text(
        json!({"type": "subscribe"}).to_string().into(),
    ))
    .await
    .unwrap();
    loop {
        let v = next_json(ws).await;
        if v["type"] == "subscribed" {
            return;
        }
    }
}

async fn websocket_auth_limits_and_frames(b: Backend) {
    let Some(s) = Srv::start(
        b,
        &[
            ("SCAIDRIVE_WS_MAX_PER_USER", "2".into()),
            ("SCAIDRIVE_WS_PING_INTERVAL", "300ms".into()),
        ],
    )
    .await
    else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let (share, root) = s.home(&tok).await;
    register(&s, &tok, "dev-a").await;
    // 4401: bad token, no token.
    let mut ws = connect(&ws_url(&s.base, "/api/v1/sync/ws/dev-a?token=nonsense")).await;
    assert_eq!(close_code(&mut ws).await, 4401);
    let mut ws = connect(&ws_url(&s.base, "/api/v1/realtime/ws")).await;
    assert_eq!(close_code(&mut ws).await, 4401);
    // 4403: someone else's / unknown device.
    let bob = s.token("acme", "usr_bob", false);
    let mut ws = connect(&ws_url(
        &s.base,
        &format!("/api/v1/sync/ws/dev-a?token={bob}"),
    ))
    .await;
    assert_eq!(close_code(&mut ws).await, 4403);
    // Token in the Authorization header works; frames: ping/pong, subscribe, change nudges.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        ws_url(&s.base, "/api/v1/sync/ws/dev-a"),
    )
    .unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {tok}").parse().unwrap());
    let (mut a, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    a.send(Message::Text(json!({"type": "ping"}).to_string().into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut a).await["type"], "pong");
    subscribe(&mut a).await;
    let (_, f) = s.upload(&tok, &root, "n.txt", b"nudge").await;
    let fid = f["id"].as_str().unwrap();
    let ev = next_change(&mut a, fid).await;
    assert_eq!(ev["share_id"], share.as_str());
    assert_eq!(ev["data"]["change_type"], "created");
    // Realtime: explicit subscription, typed events.
    let mut rt = connect(&ws_url(
        &s.base,
        &format!("/api/v1/realtime/ws?token={tok}"),
    ))
    .await;
    assert_eq!(next_json(&mut rt).await["type"], "connected");
    // 4429: a third socket of the same user.
    let mut c3 = connect(&ws_url(
        &s.base,
        &format!("/api/v1/sync/ws/dev-a?token={tok}"),
    ))
    .await;
    assert_eq!(close_code(&mut c3).await, 4429);
    rt.send(Message::Text(
        json!({"action": "subscribe", "share_id": share})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut rt).await["type"], "subscribed");
    let folder = s.mkdir(&tok, &root, "rt").await;
    loop {
        let v = next_json(&mut rt).await;
        if v["type"] == "folder_created" {
            assert_eq!(v["data"]["folder_id"], folder["id"]);
            break;
        }
    }
    // Another tenant's changes never reach this socket; the other user's neither.
    drop(rt);
    // A socket that stops answering pings is dropped (dead-peer detection): a raw TCP
    // client that completes the handshake and then never reads.
    // 4403: suspended user.
    let admin = s.token("acme", "root", true);
    s.home(&bob).await;
    let (st, _) = s
        .post(&admin, "/api/v1/admin/users/usr_bob/deactivate", json!({}))
        .await;
    assert_eq!(st, 200);
    let mut ws = connect(&ws_url(
        &s.base,
        &format!("/api/v1/realtime/ws?token={bob}"),
    ))
    .await;
    assert_eq!(close_code(&mut ws).await, 4403);
    let m = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("scaidrive_sync_websocket_connections"), "{m}");
    assert!(
        m.contains("scaidrive_sync_changes_fetched_total")
            || m.contains("scaidrive_sync_websocket_connections")
    );
    let logs = s.proc.logs();
    assert!(
        logs.contains("ws.connect") && logs.contains("ws.disconnect"),
        "{logs}"
    );
}

async fn reconnect_catches_up_from_cursor(b: Backend) {
    let Some(s) = Srv::start(b, &[]).await else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let (share, root) = s.home(&tok).await;
    register(&s, &tok, "dev-a").await;
    let (_, st0) = s
        .get(
            &tok,
            &format!("/api/v1/sync/status?share_id={share}&device_id=dev-a"),
        )
        .await;
    let url = ws_url(&s.base, &format!("/api/v1/sync/ws/dev-a?token={tok}"));
    let mut ws = connect(&url).await;
    subscribe(&mut ws).await;
    let (_, f) = s.upload(&tok, &root, "one.txt", b"1").await;
    next_change(&mut ws, f["id"].as_str().unwrap()).await;
    // Consume and commit.
    let (got, cur) = drain(&s, &tok, &share, st0["cursor_position"].to_string()).await;
    assert_eq!(got.len(), 1);
    s.post(
        &tok,
        &format!("/api/v1/sync/cursor?share_id={share}&device_id=dev-a&position={cur}"),
        json!({}),
    )
    .await;
    // Disconnected: two changes happen meanwhile; no socket sees them.
    ws.close(None).await.unwrap();
    drop(ws);
    s.upload(&tok, &root, "two.txt", b"2").await;
    s.upload(&tok, &root, "three.txt", b"3").await;
    // Reconnect, then catch up from the persisted cursor (status → changes).
    let mut ws = connect(&url).await;
    subscribe(&mut ws).await;
    let (_, status) = s
        .get(
            &tok,
            &format!("/api/v1/sync/status?share_id={share}&device_id=dev-a"),
        )
        .await;
    assert_eq!(status["pending_changes"], 2);
    let (got, _) = drain(&s, &tok, &share, status["cursor_position"].to_string()).await;
    let names: Vec<&str> = got
        .iter()
        .map(|c| c["new_path"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["/two.txt", "/three.txt"]);
    // And live nudges flow again.
    let (_, f) = s.upload(&tok, &root, "four.txt", b"4").await;
    next_change(&mut ws, f["id"].as_str().unwrap()).await;
}

/// Run one statement on the server's database, as another writer of it would (there is no
/// share-members endpoint yet: this is how a membership changes out of band).
async fn db_exec(s: &Srv, sql: &str, binds: &[&str]) {
    sqlx::any::install_default_drivers();
    let url = match &s.db {
        Some(d) => d.url(),
        None => format!("sqlite://{}/scaidrive.db", s.dir.path().display()),
    };
    let mut con = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let mut q = sqlx::query(sql);
    for b in binds {
        q = q.bind(*b);
    }
    q.execute(&mut con).await.unwrap();
}

/// Next `change` frame (any resource).
async fn next_any_change(ws: &mut Ws) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["event_type"] == "change" {
            return v;
        }
    }
}

async fn websocket_full_entries_and_access_follow_membership(b: Backend) {
    let Some(s) = Srv::start(b, &[("SCAIDRIVE_WS_ACCESS_TTL", "300ms".into())]).await else {
        return;
    };
    let alice = s.token("acme", "alice", false);
    let bob = s.token("acme", "usr_bob", false);
    let (share, root) = s.home(&alice).await;
    let (bshare, broot) = s.home(&bob).await;
    register(&s, &alice, "dev-a").await;
    register(&s, &bob, "dev-b").await;
    let mut a = connect(&ws_url(
        &s.base,
        &format!("/api/v1/sync/ws/dev-a?token={alice}"),
    ))
    .await;
    subscribe(&mut a).await;

    // The frame carries the full change entry, the same one the change log serves.
    let (_, f) = s.upload(&alice, &root, "entry.txt", b"hello").await;
    let fid = f["id"].as_str().unwrap().to_string();
    let ev = next_change(&mut a, &fid).await;
    let d = &ev["data"];
    assert!(d["id"].as_str().unwrap().starts_with("chg_"), "{ev}");
    assert_eq!(d["tenant_id"], "tnt_acme");
    assert_eq!(d["share_id"], share.as_str());
    assert_eq!(ev["share_id"], share.as_str());
    assert_eq!(d["resource_type"], "file");
    assert_eq!(d["change_type"], "created");
    assert_eq!(d["changed_by"], "usr_alice");
    assert!(d["changed_at"].is_string(), "{ev}");
    assert_eq!(d["old_path"], Value::Null);
    assert_eq!(d["new_path"], "/entry.txt");
    assert_eq!(d["version_id"], f["version_id"], "{ev} {f}");
    assert_eq!(d["metadata"]["size"], 5);
    assert!(
        d.get("metadata").unwrap().get("mime_type").is_some(),
        "{ev}"
    );
    let pos = d["position"].as_i64().unwrap();
    assert_eq!(ev["position"], pos);
    assert_eq!(ev["cursor"], pos.to_string());
    let log = changes(&s, &alice, &share, &(pos - 1).to_string(), 1).await;
    assert_eq!(log["changes"][0], {
        let mut x = d.clone();
        x.as_object_mut().unwrap().remove("cursor");
        x
    });
    let (st, _) = s
        .patch(
            &alice,
            &format!("/api/v1/files/{fid}"),
            json!({"name": "renamed.txt"}),
        )
        .await;
    assert_eq!(st, 200);
    let ev = next_change(&mut a, &fid).await;
    assert_eq!(ev["data"]["change_type"], "renamed");
    assert_eq!(ev["data"]["old_path"], "/entry.txt");
    assert_eq!(ev["data"]["new_path"], "/renamed.txt");
    assert!(ev["data"]["position"].as_i64().unwrap() > pos);

    // Bob becomes a member of alice's share (out of band); his sockets opened afterwards
    // receive it, on the sync and on the realtime socket.
    db_exec(
        &s,
        "INSERT INTO share_members (tenant_id, share_id, user_id, role, created_at) VALUES ('tnt_acme', ?, 'usr_bob', 'reader', 0)",
        &[&share],
    )
    .await;
    let mut bws = connect(&ws_url(
        &s.base,
        &format!("/api/v1/sync/ws/dev-b?token={bob}"),
    ))
    .await;
    subscribe(&mut bws).await;
    let mut brt = connect(&ws_url(
        &s.base,
        &format!("/api/v1/realtime/ws?token={bob}"),
    ))
    .await;
    assert_eq!(next_json(&mut brt).await["type"], "connected");
    brt.send(Message::Text(
        json!({"action": "subscribe", "share_id": share})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut brt).await["type"], "subscribed");
    let (_, f1) = s.upload(&alice, &root, "shared.txt", b"1").await;
    let ev = next_any_change(&mut bws).await;
    assert_eq!(ev["data"]["resource_id"], f1["id"], "{ev}");
    let ev = next_json(&mut brt).await;
    assert_eq!(ev["type"], "file_created", "{ev}");
    assert_eq!(ev["data"]["file_id"], f1["id"]);

    // Membership revoked: the periodic re-check drops the share from both sockets.
    db_exec(
        &s,
        "DELETE FROM share_members WHERE tenant_id = 'tnt_acme' AND share_id = ? AND user_id = 'usr_bob'",
        &[&share],
    )
    .await;
    let ev = next_json(&mut brt).await;
    assert_eq!(ev["type"], "unsubscribed", "{ev}");
    assert_eq!(ev["reason"], "access_revoked");
    assert_eq!(ev["share_id"], share.as_str());
    // The sync socket re-checked too (its log line), so the next change bob's sync socket
    // gets is the one in his own share, not alice's made before it.
    let mut refreshed = false;
    for _ in 0..200 {
        if s.proc.logs().matches("ws.access_changed").count() >= 2 {
            refreshed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refreshed, "{}", s.proc.logs());
    let (_, hidden) = s.upload(&alice, &root, "hidden.txt", b"2").await;
    let (_, own) = s.upload(&bob, &broot, "own.txt", b"3").await;
    let ev = next_any_change(&mut bws).await;
    assert_eq!(ev["data"]["resource_id"], own["id"], "{ev} hidden={hidden}");
    assert_eq!(ev["share_id"], bshare.as_str());
    // Alice's socket saw hers all along.
    next_change(&mut a, hidden["id"].as_str().unwrap()).await;

    // Suspension closes an open socket at once with 4403 (the access event).
    let admin = s.token("acme", "root", true);
    let (st, _) = s
        .post(&admin, "/api/v1/admin/users/usr_bob/deactivate", json!({}))
        .await;
    assert_eq!(st, 200);
    assert_eq!(close_code(&mut bws).await, 4403);
    assert_eq!(close_code(&mut brt).await, 4403);
}

async fn tenant_retention_setting_scopes_cursor_validity(b: Backend) {
    let Some(s) = Srv::start(b, &[("SCAIDRIVE_CHANGELOG_PURGE_INTERVAL", "200ms".into())]).await
    else {
        return;
    };
    let admin = s.token("acme", "root", true);
    let (st, t) = s.get(&admin, "/api/v1/admin/tenant").await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["settings"]["change_log_retention_days"], 90);
    assert_eq!(t["settings"]["change_log_retention_is_default"], true);
    for bad in [json!(-1), json!(3651), json!("7"), json!(1.5)] {
        let (st, e) = s
            .patch(
                &admin,
                "/api/v1/admin/tenant",
                json!({"settings": {"change_log_retention_days": bad}}),
            )
            .await;
        assert_err(st, &e, 422, "VALIDATION_ERROR");
    }
    let alice = s.token("acme", "alice", false);
    let gina = s.token("globex", "gina", false);
    let (share_a, root_a) = s.home(&alice).await;
    let (share_g, root_g) = s.home(&gina).await;
    // Cursors taken at each tenant's head, then one change each: both cursors are now behind.
    let cur_a = changes(&s, &alice, &share_a, "0", 1000).await["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let cur_g = changes(&s, &gina, &share_g, "0", 1000).await["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    s.upload(&alice, &root_a, "a.txt", b"a").await;
    s.upload(&gina, &root_g, "g.txt", b"g").await;
    assert_eq!(
        changes(&s, &alice, &share_a, &cur_a, 10).await["changes"][0]["new_path"],
        "/a.txt"
    );
    // acme keeps no history: its stale cursor becomes invalid (once the change is in the past
    // second) and the purge takes acme's rows.
    let (st, t) = s
        .patch(
            &admin,
            "/api/v1/admin/tenant",
            json!({"change_log_retention_days": 0}),
        )
        .await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["settings"]["change_log_retention_days"], 0);
    assert_eq!(t["settings"]["change_log_retention_is_default"], false);
    let mut gone = false;
    for _ in 0..100 {
        let (st, body) = s
            .get(
                &alice,
                &format!("/api/v1/sync/changes?share_id={share_a}&cursor={cur_a}"),
            )
            .await;
        if st == 410 {
            assert_err(st, &body, 410, "SYNC_CURSOR_INVALID");
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gone, "acme's stale cursor never became invalid");
    // A purge logged before the change fell out of the window may have taken only acme's
    // older rows: give the 200 ms purge a few more rounds past that second boundary.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut purged = false;
    for _ in 0..100 {
        if s.proc.logs().contains("changelog_purged") {
            purged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(purged, "{}", s.proc.logs());
    // globex (default retention) is untouched: its equally old cursor still serves the change.
    let g = changes(&s, &gina, &share_g, &cur_g, 10).await;
    assert_eq!(g["changes"][0]["new_path"], "/g.txt", "{g}");
    // Back to the default: acme's rows are gone, so its old cursor stays invalid; a resync
    // from 0 works.
    let (st, t) = s
        .patch(
            &admin,
            "/api/v1/admin/tenant",
            json!({"settings": {"change_log_retention_days": null}}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(t["settings"]["change_log_retention_is_default"], true);
    let (st, body) = s
        .get(
            &alice,
            &format!("/api/v1/sync/changes?share_id={share_a}&cursor={cur_a}"),
        )
        .await;
    assert_err(st, &body, 410, "SYNC_CURSOR_INVALID");
    let (snap, _) = drain(&s, &alice, &share_a, "0".into()).await;
    assert!(snap.iter().any(|c| c["new_path"] == "/a.txt"), "{snap:?}");
    // Another tenant's admin setting does not leak: globex still shows the default.
    let gadmin = s.token("globex", "groot", true);
    let (_, t) = s.get(&gadmin, "/api/v1/admin/tenant").await;
    assert_eq!(t["settings"]["change_log_retention_days"], 90);
}

async fn sync_preferences_stored_validated_and_used(b: Backend) {
    let Some(s) = Srv::start(b, &[]).await else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let (share, root) = s.home(&tok).await;
    register(&s, &tok, "dev-a").await;
    let (st, p) = s
        .get(&tok, "/api/v1/sync/preferences?device_id=dev-a")
        .await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["is_default"], true);
    assert_eq!(p["conflict_resolution"], "LAST_WRITER_WINS");
    assert_eq!(p["ignore_patterns"], json!([]));
    assert_eq!(p["excluded_folder_ids"], json!([]));
    assert_eq!(p["paused"], false);
    assert_eq!(p["bandwidth_limits"]["upload_bytes_per_sec"], Value::Null);
    // Unknown and someone else's devices: 404; no device_id: 400.
    let (st, e) = s.get(&tok, "/api/v1/sync/preferences?device_id=nope").await;
    assert_err(st, &e, 404, "NOT_FOUND");
    let bob = s.token("acme", "usr_bob", false);
    let (st, e) = s
        .get(&bob, "/api/v1/sync/preferences?device_id=dev-a")
        .await;
    assert_err(st, &e, 404, "NOT_FOUND");
    let (st, e) = s.get(&tok, "/api/v1/sync/preferences").await;
    assert_err(st, &e, 400, "VALIDATION_ERROR");

    let mut ws = connect(&ws_url(
        &s.base,
        &format!("/api/v1/sync/ws/dev-a?token={tok}"),
    ))
    .await;
    subscribe(&mut ws).await;
    let photos = s.mkdir(&tok, &root, "photos").await;
    let body = json!({"conflict_resolution": "server_wins", "ignore_patterns": ["*.log", "build/"],
        "excluded_folder_ids": [photos["id"], photos["id"]],
        "bandwidth_limits": {"upload_bytes_per_sec": 1048576, "download_bytes_per_sec": null},
        "paused": true});
    let (st, p) = s
        .call(
            &tok,
            reqwest::Method::PUT,
            "/api/v1/sync/preferences?device_id=dev-a",
            Some(body),
        )
        .await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["conflict_resolution"], "SERVER_WINS");
    assert_eq!(p["excluded_folder_ids"], json!([photos["id"]]));
    assert_eq!(p["is_default"], false);
    let (_, g) = s
        .get(&tok, "/api/v1/sync/preferences?device_id=dev-a")
        .await;
    for k in [
        "conflict_resolution",
        "ignore_patterns",
        "excluded_folder_ids",
        "bandwidth_limits",
        "paused",
    ] {
        assert_eq!(g[k], p[k], "{k}: {g}");
    }
    assert_eq!(g["bandwidth_limits"]["upload_bytes_per_sec"], 1048576);
    assert_eq!(g["paused"], true);
    // The device's sync socket hears about it.
    loop {
        let v = next_json(&mut ws).await;
        if v["event_type"] == "sync_preference_updated" {
            assert_eq!(v["device_id"], "dev-a");
            break;
        }
    }

    // Every invalid field is reported, in the envelope; nothing is stored.
    let eve = s.token("evil", "eve", false);
    let (_, eroot) = s.home(&eve).await;
    let foreign = s.mkdir(&eve, &eroot, "secret").await;
    let bad = json!({"conflict_resolution": "NOPE", "ignore_patterns": ["", "a\nb", "ok"],
        "excluded_folder_ids": ["fld_nope", foreign["id"], "../x"],
        "bandwidth_limits": {"upload_bytes_per_sec": 5, "download_bytes_per_sec": -1}});
    let (st, e) = s
        .call(
            &tok,
            reqwest::Method::PUT,
            "/api/v1/sync/preferences?device_id=dev-a",
            Some(bad),
        )
        .await;
    assert_err(st, &e, 422, "VALIDATION_ERROR");
    let fields: Vec<&str> = e["error"]["details"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        vec![
            "conflict_resolution",
            "ignore_patterns[0]",
            "ignore_patterns[1]",
            "excluded_folder_ids[0]",
            "excluded_folder_ids[1]",
            "excluded_folder_ids[2]",
            "bandwidth_limits.upload_bytes_per_sec",
            "bandwidth_limits.download_bytes_per_sec",
        ],
        "{e}"
    );
    for bad in [json!({"paused": "yes"}), json!({"colour": "blue"})] {
        let (st, e) = s
            .call(
                &tok,
                reqwest::Method::PUT,
                "/api/v1/sync/preferences?device_id=dev-a",
                Some(bad),
            )
            .await;
        assert_err(st, &e, 422, "VALIDATION_ERROR");
    }
    let (_, g2) = s
        .get(&tok, "/api/v1/sync/preferences?device_id=dev-a")
        .await;
    assert_eq!(g2["conflict_resolution"], "SERVER_WINS", "{g2}");

    // `apply` without a strategy uses the device's preferred one (SERVER_WINS drops a stale
    // edit); naming one still wins.
    let (_, f) = s.upload(&tok, &root, "p.txt", b"v1").await;
    let fid = f["id"].as_str().unwrap().to_string();
    let v1 = f["version_id"].as_str().unwrap().to_string();
    let sid = staged(&s, &tok, &share, Some(&fid), b"v2").await;
    let (_, r) = apply(&s, &tok, &share, "LAST_WRITER_WINS", json!([{"resource_type": "file", "change_type": "updated", "resource_id": fid, "base_version_id": v1, "session_id": sid}])).await;
    assert_eq!(r["results"][0]["status"], "applied", "{r}");
    let sid = staged(&s, &tok, &share, Some(&fid), b"stale").await;
    let (st, r) = s
        .post(&tok, "/api/v1/sync/apply", json!({"device_id": "dev-a", "share_id": share,
            "changes": [{"resource_type": "file", "change_type": "updated", "resource_id": fid, "base_version_id": v1, "session_id": sid}]}))
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["conflict_resolution"], "SERVER_WINS", "{r}");
    assert_eq!(r["results"][0]["resolution"], "server_kept", "{r}");
    assert_eq!(content(&s, &tok, &fid).await, b"v2");
    // PUT replaces: omitted fields are back to their defaults.
    let (st, p) = s
        .call(
            &tok,
            reqwest::Method::PUT,
            "/api/v1/sync/preferences?device_id=dev-a",
            Some(json!({"paused": false})),
        )
        .await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["conflict_resolution"], "LAST_WRITER_WINS");
    assert_eq!(p["excluded_folder_ids"], json!([]));
}

/// A sample's value from a Prometheus text page: the line starting with `series` (name and,
/// if any, the labels as the exporter prints them up to where `series` ends).
fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            series == name || series.starts_with(&format!("{name}{{"))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
}

async fn scrape(s: &Srv) -> String {
    s.http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn sync_metrics_scraped(b: Backend) {
    let Some(s) = Srv::start(b, &[]).await else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let (share, root) = s.home(&tok).await;
    register(&s, &tok, "dev-a").await;
    let mut ws = connect(&ws_url(
        &s.base,
        &format!("/api/v1/sync/ws/dev-a?token={tok}"),
    ))
    .await;
    subscribe(&mut ws).await;
    let m = scrape(&s).await;
    assert_eq!(
        sample(&m, "scaidrive_sync_websocket_connections", &[]),
        Some(1.0),
        "{m}"
    );
    let (_, f) = s.upload(&tok, &root, "m.txt", b"v1").await;
    let fid = f["id"].as_str().unwrap().to_string();
    next_change(&mut ws, &fid).await;
    let head = changes(&s, &tok, &share, "0", 1000).await["head_position"]
        .as_i64()
        .unwrap();
    let m = scrape(&s).await;
    assert_eq!(
        sample(
            &m,
            "scaidrive_sync_changelog_head_position",
            &[("tenant_id", "tnt_acme")]
        ),
        Some(head as f64),
        "{m}"
    );
    // Provisioning (share created) and the upload.
    assert!(
        sample(&m, "scaidrive_sync_changelog_appends_total", &[]).unwrap_or(0.0) >= 2.0,
        "{m}"
    );
    assert!(
        sample(&m, "scaidrive_sync_ws_events_total", &[]).unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    // A conflict of each kind counts under its type.
    let v1 = f["version_id"].as_str().unwrap().to_string();
    for bytes in [b"v2".as_slice(), b"v3".as_slice()] {
        let sid = staged(&s, &tok, &share, Some(&fid), bytes).await;
        apply(&s, &tok, &share, "LAST_WRITER_WINS", json!([{"resource_type": "file", "change_type": "updated", "resource_id": fid, "base_version_id": v1, "session_id": sid}])).await;
    }
    let m = scrape(&s).await;
    assert_eq!(
        sample(
            &m,
            "scaidrive_sync_conflicts_total",
            &[("type", "edit_edit"), ("share_id", &share)]
        ),
        Some(1.0),
        "{m}"
    );
    // Cursor lag: committed one position behind the head.
    let head = changes(&s, &tok, &share, "0", 1000).await["head_position"]
        .as_i64()
        .unwrap();
    let (st, _) = s
        .post(
            &tok,
            &format!(
                "/api/v1/sync/cursor?share_id={share}&device_id=dev-a&position={}",
                head - 1
            ),
            json!({}),
        )
        .await;
    assert_eq!(st, 200);
    let m = scrape(&s).await;
    assert_eq!(
        sample(
            &m,
            "scaidrive_sync_cursor_lag_positions",
            &[("device_id", "dev-a")]
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "scaidrive_sync_cursor_lag_seconds",
            &[("device_id", "dev-a")]
        )
        .is_some(),
        "{m}"
    );
    // The gauge follows sockets closing.
    ws.close(None).await.unwrap();
    drop(ws);
    let mut zero = false;
    for _ in 0..100 {
        if sample(
            &scrape(&s).await,
            "scaidrive_sync_websocket_connections",
            &[],
        ) == Some(0.0)
        {
            zero = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(zero);
}

macro_rules! both {
    ($($name:ident),*) => {
        mod sqlite { $( #[tokio::test] async fn $name() { super::$name(super::Backend::Sqlite).await } )* }
        mod mariadb { $( #[tokio::test] async fn $name() { super::$name(super::Backend::MariaDb).await } )* }
    };
}

both!(
    changes_feed_cursor_and_snapshot,
    apply_and_conflicts,
    retention_gives_cursor_invalid,
    chunk_have_dedup_is_tenant_scoped,
    websocket_auth_limits_and_frames,
    reconnect_catches_up_from_cursor,
    websocket_full_entries_and_access_follow_membership,
    tenant_retention_setting_scopes_cursor_validity,
    sync_preferences_stored_validated_and_used,
    sync_metrics_scraped
);

/// Two `scaidrive api` processes on one MariaDB + Redis: a change through one reaches a
/// WebSocket on the other.
#[tokio::test]
async fn two_replicas_fan_out_through_redis() {
    if scai_testkit::services::skip("scaidrive two-replica (MariaDB + Redis)") {
        return;
    }
    let redis = scai_testkit::services::redis_url();
    let Some(a) = Srv::start(Backend::MariaDb, &[("SCAIDRIVE_REDIS_URL", redis.clone())]).await
    else {
        return;
    };
    let port = scai_testkit::free_port();
    let envs: Vec<(&str, String)> = vec![
        ("SCAIDRIVE_DATA_DIR", a.dir.path().display().to_string()),
        ("SCAIDRIVE_BIND", format!("127.0.0.1:{port}")),
        ("SCAIDRIVE_DATABASE_URL", a.db.as_ref().unwrap().url()),
        ("SCAIDRIVE_REDIS_URL", redis),
        ("SCAIDRIVE_EMBEDDED_AUTH", "1".into()),
        ("SCAIDRIVE_LOG_LEVEL", "DEBUG".into()),
    ];
    let b_proc = scai_testkit::ServerProcess::start(common::bin(), &["api"], &envs);
    let b_base = format!("http://127.0.0.1:{port}");
    scai_testkit::wait_http_ok(&format!("{b_base}/api/v1/health"), Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("replica b: {e}\n{}", b_proc.logs()));
    // A tenant of its own: the Redis channel is shared with other test runs.
    let tenant = format!("t{}", uuid_like().replace('-', "x"));
    let tok = a.token(&tenant, "alice", false);
    let (_, root) = a.home(&tok).await;
    register(&a, &tok, "dev-b").await;
    let mut ws = connect(&ws_url(
        &b_base,
        &format!("/api/v1/sync/ws/dev-b?token={tok}"),
    ))
    .await;
    subscribe(&mut ws).await;
    // Wait for replica b's Redis subscriber (it logs once subscribed).
    for _ in 0..100 {
        if b_proc.logs().contains("pubsub_subscribed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, f) = a.upload(&tok, &root, "via-a.txt", b"replicated").await;
    let ev = next_change(&mut ws, f["id"].as_str().unwrap()).await;
    assert_eq!(ev["data"]["change_type"], "created");
    // And the change log read through b has it.
    let (share, _) = a.home(&tok).await;
    let r = a
        .http
        .get(format!(
            "{b_base}/api/v1/sync/changes?share_id={share}&cursor=0"
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert!(
        body["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["new_path"] == "/via-a.txt"),
        "{body}"
    );
}

/// Figures, not a test of timing (run with `--ignored --nocapture`): `SCAIDRIVE_FANOUT_SOCKETS`
/// (2000) subscribed sync sockets of one user; for each of 20 uploads, the time from the
/// request start until the last socket has the frame. Asserts only that every socket got
/// every change, in order.
#[tokio::test]
#[ignore]
async fn fanout_many_sockets_figures() {
    let n: usize = std::env::var("SCAIDRIVE_FANOUT_SOCKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let Some(s) = Srv::start(
        Backend::Sqlite,
        &[
            ("SCAIDRIVE_WS_MAX_PER_USER", (n + 10).to_string()),
            ("SCAIDRIVE_RATE_LIMIT_ENABLED", "false".into()),
            ("SCAIDRIVE_LOG_LEVEL", "WARNING".into()),
        ],
    )
    .await
    else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let (_share, root) = s.home(&tok).await;
    register(&s, &tok, "dev-a").await;
    let url = ws_url(&s.base, &format!("/api/v1/sync/ws/dev-a?token={tok}"));
    let t = std::time::Instant::now();
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(usize, String, std::time::Instant)>();
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut ws = connect(&url).await;
        subscribe(&mut ws).await;
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Text(t) = m {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["event_type"] == "change" {
                        let id = v["data"]["resource_id"].as_str().unwrap().to_string();
                        let _ = tx.send((i, id, std::time::Instant::now()));
                    }
                }
            }
        }));
    }
    println!(
        "{n} sockets connected and subscribed in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    let mut lat = Vec::new();
    for k in 0..20 {
        let start = std::time::Instant::now();
        let (st, f) = s.upload(&tok, &root, &format!("fan{k}.txt"), b"x").await;
        assert_eq!(st, 201, "{f}");
        let id = f["id"].as_str().unwrap().to_string();
        let mut got = vec![false; n];
        let mut left = n;
        let mut last = start;
        while left > 0 {
            let (i, rid, at) = tokio::time::timeout(Duration::from_secs(120), rx.recv())
                .await
                .expect("a socket missed a change")
                .unwrap();
            assert_eq!(rid, id, "socket {i}: changes out of order");
            assert!(!got[i], "socket {i}: duplicate");
            got[i] = true;
            left -= 1;
            last = at;
        }
        lat.push((last - start).as_secs_f64() * 1000.0);
    }
    let first = lat[0];
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "commit→frame on all {n} sockets: first change {first:.1} ms, p50 {:.1} ms, max {:.1} ms (20 changes)",
        lat[lat.len() / 2],
        lat[lat.len() - 1]
    );
    for t in tasks {
        t.abort();
    }
}
