//! Crash safety: SIGKILL the server in the middle of a resumable upload, restart it on the
//! same data dir (and database), resume the session, complete, and get identical bytes back.

mod common;

use common::{data, sha256_hex, Backend, Srv};
use serde_json::json;

async fn sigkill_mid_upload_then_resume(b: Backend) {
    let Some(mut s) = Srv::start(b, &[]).await else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let (share, _) = s.home(&tok).await;
    let body = data(10 * 65536 + 77, 42);
    let (st, sess) = s
        .post(&tok, "/api/v1/uploads", json!({"share_id": share, "file_name": "crash.bin", "file_size": body.len(), "chunk_size": 65536, "checksum_sha256": sha256_hex(&body)}))
        .await;
    assert_eq!(st, 201, "{sess}");
    let sid = sess["session_id"].as_str().unwrap().to_string();
    let chunk = |i: usize| body[i * 65536..((i + 1) * 65536).min(body.len())].to_vec();
    for i in [0usize, 2, 4, 6, 10] {
        let (st, r) = s.put_chunk(&tok, &sid, i as i64, chunk(i)).await;
        assert_eq!(st, 200, "{r}");
    }
    // Crash while another chunk is in flight.
    let inflight = {
        let http = s.http.clone();
        let url = s.url(&format!("/api/v1/uploads/{sid}/chunks/7"));
        let tok = tok.clone();
        let c = chunk(7);
        tokio::spawn(async move { http.put(url).bearer_auth(tok).body(c).send().await })
    };
    s.proc.kill9();
    let _ = inflight.await;
    s.proc.restart();
    s.wait_ready().await;
    // The acknowledged chunks survived.
    let (st, stat) = s.get(&tok, &format!("/api/v1/uploads/{sid}")).await;
    assert_eq!(st, 200, "{stat}");
    let got: Vec<i64> = stat["received_chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    for i in [0, 2, 4, 6, 10] {
        assert!(got.contains(&i), "chunk {i} lost: {got:?}");
    }
    // Resume: send what is missing, complete, compare.
    for i in stat["missing_chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
    {
        let (st, r) = s.put_chunk(&tok, &sid, i as i64, chunk(i)).await;
        assert_eq!(st, 200, "{r}");
    }
    let (st, f) = s
        .post(&tok, &format!("/api/v1/uploads/{sid}/complete"), json!({}))
        .await;
    assert_eq!(st, 200, "{f}");
    let fid = f["file_id"].as_str().unwrap().to_string();
    // And the completed file survives another crash.
    s.proc.kill9();
    s.proc.restart();
    s.wait_ready().await;
    let r = s
        .download(&tok, &format!("/api/v1/files/{fid}/content"), None)
        .await;
    assert_eq!(r.status(), 200);
    let got = r.bytes().await.unwrap();
    assert_eq!(got.len(), body.len());
    assert_eq!(got.as_ref(), body.as_slice());
}

#[tokio::test]
async fn sigkill_mid_upload_then_resume_sqlite() {
    sigkill_mid_upload_then_resume(Backend::Sqlite).await
}

#[tokio::test]
async fn sigkill_mid_upload_then_resume_mariadb() {
    sigkill_mid_upload_then_resume(Backend::MariaDb).await
}

#[tokio::test]
async fn sigkill_mid_upload_then_resume_s3() {
    sigkill_mid_upload_then_resume(Backend::S3).await
}

#[tokio::test]
async fn sigkill_mid_upload_then_resume_production() {
    sigkill_mid_upload_then_resume(Backend::Production).await
}
