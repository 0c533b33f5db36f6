//! Production mode: separate `api` / `worker` / `migrate` processes over one MariaDB
//! database, one Redis (unique key prefix per test) and one s3s-fs bucket.
//! - rate limiting: headers, 429 envelope, counters shared by two API processes;
//! - two API processes behave as one service (session created on one, chunks to both,
//!   completed on the other);
//! - `migrate` refuses a newer schema, `api` refuses a stale one;
//! - faults: Redis restarted, S3 stopped, a worker SIGKILLed in the middle of a GC job.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{assert_err, Backend, Srv};
use reqwest::{Client, StatusCode};
use scai_testkit::{free_port, wait_http_ok, ServerProcess};
use serde_json::json;

/// MariaDB database + s3s-fs + Redis settings shared by every process of one test.
struct Stack {
    db: scai_testkit::mariadb::TempDatabase,
    s3: scai_testkit::s3::S3Server,
    dir: tempfile::TempDir,
    redis_url: String,
    prefix: String,
}

impl Stack {
    async fn start(test: &str) -> Option<Stack> {
        Self::with_redis(test, scai_testkit::services::redis_url()).await
    }

    async fn with_redis(test: &str, redis_url: String) -> Option<Stack> {
        if scai_testkit::services::skip(test) {
            return None;
        }
        Some(Stack {
            db: scai_testkit::mariadb::TempDatabase::create()
                .await
                .expect("MariaDB"),
            s3: scai_testkit::s3::S3Server::start().await.expect("s3s-fs"),
            dir: tempfile::tempdir().unwrap(),
            redis_url,
            prefix: common::redis_prefix(),
        })
    }

    fn envs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SCAIDRIVE_DATA_DIR", self.dir.path().display().to_string()),
            (
                "SCAIDRIVE_DATABASE_URL",
                self.db.url().replacen("mysql://", "mysql+asyncmy://", 1),
            ),
            ("SCAIDRIVE_REDIS_URL", self.redis_url.clone()),
            ("SCAIDRIVE_REDIS_PREFIX", self.prefix.clone()),
            ("SCAIDRIVE_S3_ENDPOINT", self.s3.endpoint()),
            ("SCAIDRIVE_S3_BUCKET", "scaidrive".into()),
            (
                "SCAIDRIVE_S3_ACCESS_KEY",
                scai_testkit::s3::ACCESS_KEY.into(),
            ),
            (
                "SCAIDRIVE_S3_SECRET_KEY",
                scai_testkit::s3::SECRET_KEY.into(),
            ),
            ("SCAIDRIVE_EMBEDDED_AUTH", "true".into()),
            ("SCAIDRIVE_LOG_LEVEL", "DEBUG".into()),
        ]
    }

    fn run(&self, cmd: &str) -> std::process::Output {
        std::process::Command::new(common::bin())
            .arg(cmd)
            .envs(self.envs())
            .env("SCAIDRIVE_BIND", format!("127.0.0.1:{}", free_port()))
            .output()
            .unwrap()
    }

    fn migrate(&self) {
        let out = self.run("migrate");
        assert!(
            out.status.success(),
            "migrate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start `scaidrive api` and wait until it answers.
    async fn api(&self, extra: &[(&'static str, String)]) -> Srv {
        let port = free_port();
        let mut envs = self.envs();
        envs.push(("SCAIDRIVE_BIND", format!("127.0.0.1:{port}")));
        envs.extend(extra.iter().cloned());
        let proc = ServerProcess::start(common::bin(), &["api"], &envs);
        let base = format!("http://127.0.0.1:{port}");
        if let Err(e) =
            wait_http_ok(&format!("{base}/api/v1/health"), Duration::from_secs(30)).await
        {
            panic!("api did not start: {e}\n{}", proc.logs());
        }
        Srv {
            proc,
            base,
            dir: tempfile::tempdir().unwrap(),
            http: Client::new(),
            db: None,
            s3: None,
        }
    }

    /// Start `scaidrive worker`; returns it and the base URL of its health/metrics port.
    fn worker(&self, extra: &[(&'static str, String)]) -> (ServerProcess, String) {
        let port = free_port();
        let mut envs = self.envs();
        envs.push(("SCAIDRIVE_BIND", format!("127.0.0.1:{port}")));
        envs.extend(extra.iter().cloned());
        (
            ServerProcess::start(common::bin(), &["worker"], &envs),
            format!("http://127.0.0.1:{port}"),
        )
    }

    fn token(&self, tenant: &str, user: &str) -> String {
        let out = std::process::Command::new(common::bin())
            .args(["token", "--tenant", tenant, "--user", user, "--ttl", "1h"])
            .env("SCAIDRIVE_DATA_DIR", self.dir.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Chunk objects in the bucket.
    fn chunk_objects(&self) -> usize {
        count_files(&self.s3.root().join("scaidrive/chunks"))
    }

    async fn sql_i64(&self, sql: &str) -> i64 {
        let db = scaidrive::db::Db::connect(&self.db.url(), 1).await.unwrap();
        let v: i64 = sqlx_scalar(&db, sql).await;
        db.pool.close().await;
        v
    }
}

async fn sqlx_scalar(db: &scaidrive::db::Db, sql: &str) -> i64 {
    use sqlx::Row;
    let row = sqlx::query(sql).fetch_one(&db.pool).await.unwrap();
    row.try_get::<i64, _>(0).unwrap()
}

fn count_files(p: &Path) -> usize {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                n += count_files(&path);
            } else if !e.file_name().to_string_lossy().starts_with('.') {
                n += 1;
            }
        }
    }
    n
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn create_session(s: &Srv, tok: &str, share: &str, name: &str, size: usize) -> String {
    let (st, b) = s
        .post(
            tok,
            "/api/v1/uploads",
            json!({"share_id": share, "file_name": name, "file_size": size, "chunk_size": 65536}),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    b["session_id"].as_str().unwrap().to_string()
}

async fn download_bytes(s: &Srv, tok: &str, file_id: &str) -> Vec<u8> {
    let r = s
        .download(tok, &format!("/api/v1/files/{file_id}/content"), None)
        .await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap().to_vec()
}

#[tokio::test]
async fn rate_limit_headers_and_429_embedded() {
    let Some(s) = Srv::start(
        Backend::Sqlite,
        &[
            ("SCAIDRIVE_RATE_LIMIT_TOKEN_PER_MIN", "6".to_string()),
            // A long window: a window boundary inside the test would blur the exact counts.
            ("SCAIDRIVE_RATE_LIMIT_WINDOW", "1h".to_string()),
        ],
    )
    .await
    else {
        return;
    };
    let tok = s.token("acme", "alice", false);
    let mut remaining = Vec::new();
    for _ in 0..3 {
        // Metadata read: 1 unit each.
        let r = s.download(&tok, "/api/v1/users/me", None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit").as_deref(), Some("6"));
        assert!(
            header(&r, "x-ratelimit-reset")
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > 1_700_000_000
        );
        remaining.push(header(&r, "x-ratelimit-remaining").unwrap());
    }
    assert_eq!(remaining, ["5", "4", "3"]);
    // A listing costs 2 units.
    let r = s.download(&tok, "/api/v1/users/me/shares", None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-remaining").as_deref(), Some("1"));
    // A content transfer (5 units) no longer fits.
    let r = s.download(&tok, "/api/v1/files/fil_x/content", None).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    let (st, b) = common::json_of(r).await;
    assert_err(st, &b, 429, "RATE_LIMITED");
    assert_eq!(b["error"]["details"]["dimension"], "token");
    assert_eq!(b["error"]["details"]["limit"], 6);
    assert_eq!(b["error"]["details"]["window_seconds"], 3600);
    assert_eq!(b["error"]["retry_after"], retry);
    // One unit is still there; another token (of another user) has its own window.
    let r = s.download(&tok, "/api/v1/users/me", None).await;
    let (st, body) = common::json_of(r).await;
    assert_eq!(st, 200, "{body}");
    let other = s.token("acme", "bob", false);
    let r = s.download(&other, "/api/v1/users/me", None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-remaining").as_deref(), Some("5"));
    // Probes are not counted and carry no rate-limit headers.
    let r = s.http.get(s.url("/api/v1/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(header(&r, "x-ratelimit-limit").is_none());
    let m = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("scaidrive_rate_limit_rejections_total{dimension=\"token\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn two_api_processes_behave_as_one_service() {
    let Some(stack) = Stack::start("two_api_processes_behave_as_one_service").await else {
        return;
    };
    stack.migrate();
    let limit = [
        ("SCAIDRIVE_RATE_LIMIT_TOKEN_PER_MIN", "100".to_string()),
        ("SCAIDRIVE_RATE_LIMIT_WINDOW", "1h".to_string()),
    ];
    let a = stack.api(&limit).await;
    let b = stack.api(&limit).await;
    for s in [&a, &b] {
        let r = s.http.get(s.url("/api/v1/ready")).send().await.unwrap();
        let (st, body) = common::json_of(r).await;
        assert_eq!(st, 200, "{body}");
        for dep in ["database", "redis", "storage", "scaikey"] {
            assert_eq!(body["checks"][dep], true, "{body}");
        }
    }
    let tok = stack.token("acme", "alice");
    let (share, root) = a.home(&tok).await;
    let data = common::data(4 * 65536 + 1000, 7);
    let sid = create_session(&a, &tok, &share, "shared.bin", data.len()).await;
    // Chunks alternate between the replicas.
    for (i, c) in data.chunks(65536).enumerate() {
        let s = if i % 2 == 0 { &a } else { &b };
        let (st, body) = s.put_chunk(&tok, &sid, i as i64, c.to_vec()).await;
        assert_eq!(st, 200, "{body}");
    }
    let (st, status) = b.get(&tok, &format!("/api/v1/uploads/{sid}")).await;
    assert_eq!(st, 200, "{status}");
    let (st, file) = b
        .post(&tok, &format!("/api/v1/uploads/{sid}/complete"), json!({}))
        .await;
    assert_eq!(st, 200, "{file}");
    assert_eq!(file["checksum_sha256"], common::sha256_hex(&data));
    let fid = file["id"].as_str().unwrap();
    assert_eq!(download_bytes(&a, &tok, fid).await, data);
    let (st, kids) = a
        .get(&tok, &format!("/api/v1/folders/{root}/children"))
        .await;
    assert_eq!(st, 200);
    assert_eq!(kids["items"].as_array().unwrap().len(), 1);
    // A completed session is completed on both replicas (the cache entry is gone).
    let (st, e) = a.put_chunk(&tok, &sid, 0, data[..65536].to_vec()).await;
    assert_err(st, &e, 409, "UPLOAD_ALREADY_COMPLETED");
    // Chunks live under the documented content-address layout only.
    let h = common::sha256_hex(&data[..65536]);
    assert!(stack
        .s3
        .root()
        .join(format!(
            "scaidrive/chunks/tnt_acme/{}/{}/{h}",
            &h[0..2],
            &h[2..4]
        ))
        .exists());

    // Shared counters: a fresh token gets exactly 100 units across both replicas.
    let t2 = stack.token("acme", "bob");
    let mut ok = 0;
    let mut last_remaining = None;
    for i in 0..150 {
        let s = if i % 2 == 0 { &a } else { &b };
        let r = s.download(&t2, "/api/v1/users/me", None).await;
        match r.status() {
            StatusCode::OK => {
                ok += 1;
                let rem: u64 = header(&r, "x-ratelimit-remaining")
                    .unwrap()
                    .parse()
                    .unwrap();
                if let Some(prev) = last_remaining {
                    assert_eq!(rem + 1, prev, "counters are not shared");
                }
                last_remaining = Some(rem);
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let (st, body) = common::json_of(r).await;
                assert_err(st, &body, 429, "RATE_LIMITED");
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 100);
}

#[tokio::test]
async fn migrate_refuses_newer_schema_and_api_refuses_stale() {
    let Some(stack) = Stack::start("migrate_refuses_newer_schema_and_api_refuses_stale").await
    else {
        return;
    };
    // Not migrated: api and worker refuse with a clear message.
    for role in ["api", "worker"] {
        let out = stack.run(role);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("run `scaidrive migrate`"), "{role}: {err}");
    }
    stack.migrate();
    let out = stack.run("migrate");
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied 0"));
    // Per-tenant composite indexes exist.
    let n = stack
        .sql_i64(&format!(
            "SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = '{}' AND column_name = 'tenant_id' AND seq_in_index = 1",
            stack.db.name()
        ))
        .await;
    assert!(n >= 8, "only {n} tenant-leading indexes");
    // A newer schema (a later release migrated already): refuse to touch it.
    let db = scaidrive::db::Db::connect(&stack.db.url(), 1)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO scaidrive_migrations (version, name, applied_at) VALUES (99, 'future', 0)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let out = stack.run("migrate");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("newer than this binary"), "{err}");
    let out = stack.run("api");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("newer than this binary"));
}

#[tokio::test]
async fn worker_killed_mid_gc_job_is_retried_and_never_deletes_referenced_chunks() {
    let Some(stack) = Stack::start("worker_killed_mid_gc").await else {
        return;
    };
    stack.migrate();
    let a = stack.api(&[]).await;
    let tok = stack.token("acme", "alice");
    let (share, root) = a.home(&tok).await;
    // A kept file (one 4 MiB-class chunk), and 8 abandoned chunks at their content address
    // (refcount 0, no parts): each session's chunk 0 is re-sent with other bytes, which go to
    // their content address (the first bytes stay pending), then the session is aborted.
    let kept = common::data(3 * 65536, 1);
    let (st, file) = a.upload(&tok, &root, "kept.bin", &kept).await;
    assert_eq!(st, 201, "{file}");
    let kept_id = file["id"].as_str().unwrap().to_string();
    for i in 0..8 {
        let sid = create_session(&a, &tok, &share, &format!("gone{i}.bin"), 65536).await;
        let (st, _) = a
            .put_chunk(&tok, &sid, 0, common::data(65536, 200 + i))
            .await;
        assert_eq!(st, 200);
        let (st, _) = a
            .put_chunk(&tok, &sid, 0, common::data(65536, 100 + i))
            .await;
        assert_eq!(st, 200);
        let (st, _) = a.delete(&tok, &format!("/api/v1/uploads/{sid}")).await;
        assert_eq!(st, 200);
    }
    assert_eq!(stack.chunk_objects(), 1 + 8);
    let gc_env = |pause: &str| {
        vec![
            ("SCAIDRIVE_GC_GRACE", "0s".to_string()),
            ("SCAIDRIVE_GC_INTERVAL", "1h".to_string()),
            ("SCAIDRIVE_GC_DELETE_PAUSE", pause.to_string()),
            ("SCAIDRIVE_JOB_LEASE", "2s".to_string()),
        ]
    };
    tokio::time::sleep(Duration::from_millis(1100)).await; // last_seen < now with 0s grace
    let (mut w1, _) = stack.worker(&gc_env("400ms"));
    // Kill it after its first deletion, well before the 8th.
    let mut started = false;
    for _ in 0..200 {
        if w1.logs().contains("chunk_collected") {
            started = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(started, "GC never started:\n{}", w1.logs());
    w1.kill9();
    let left = stack.chunk_objects();
    assert!(
        left > 1,
        "the killed worker finished its job ({left} objects left)"
    );
    let tombstones = stack
        .sql_i64("SELECT COUNT(*) FROM chunks WHERE deleting_since IS NOT NULL")
        .await;
    assert!(tombstones > 0, "no tombstones left by the killed worker");
    // A second worker: its own scheduler slot is already claimed (1h interval), so only the
    // redelivered job (lease ran out) can finish the collection.
    let (w2, w2_base) = stack.worker(&gc_env("0s"));
    let mut done = false;
    for _ in 0..200 {
        if stack.chunk_objects() == 1 {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        done,
        "GC not retried: {} objects\n{}",
        stack.chunk_objects(),
        w2.logs()
    );
    assert!(w2.logs().contains("chunk_collected"));
    // The worker serves liveness and its queue metrics.
    wait_http_ok(&format!("{w2_base}/api/v1/health"), Duration::from_secs(10))
        .await
        .unwrap();
    // The objects are gone before the job ends (rows of chunks whose bytes were never at their
    // address are still being dropped): wait for the job to be counted.
    let mut m = String::new();
    for _ in 0..100 {
        m = reqwest::get(format!("{w2_base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if m.contains("scaidrive_queue_jobs_processed_total{queue=\"low\",result=\"ok\"}") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        m.contains("scaidrive_queue_jobs_processed_total{queue=\"low\",result=\"ok\"}"),
        "{m}"
    );
    assert_eq!(
        stack
            .sql_i64("SELECT COUNT(*) FROM chunks WHERE deleting_since IS NOT NULL")
            .await,
        0
    );
    assert_eq!(download_bytes(&a, &tok, &kept_id).await, kept);
    // A collected chunk uploaded again is stored again and readable.
    let again = common::data(65536, 100);
    let (st, f) = a.upload(&tok, &root, "again.bin", &again).await;
    assert_eq!(st, 201, "{f}");
    assert_eq!(
        download_bytes(&a, &tok, f["id"].as_str().unwrap()).await,
        again
    );
}

#[tokio::test]
async fn redis_restart_mid_test_loses_no_acknowledged_data() {
    if scai_testkit::services::skip("redis_restart_mid_test") {
        return;
    }
    let port = free_port();
    let rdir = tempfile::tempdir().unwrap();
    let mut redis = ServerProcess::start(
        "redis-server",
        &[
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            rdir.path().to_str().unwrap(),
        ],
        &[],
    );
    wait_port(port).await;
    let Some(stack) =
        Stack::with_redis("redis_restart", format!("redis://127.0.0.1:{port}/0")).await
    else {
        return;
    };
    stack.migrate();
    let a = stack
        .api(&[("SCAIDRIVE_RATE_LIMIT_TOKEN_PER_MIN", "1000".to_string())])
        .await;
    let tok = stack.token("acme", "alice");
    let (share, root) = a.home(&tok).await;
    let d1 = common::data(100_000, 1);
    let (st, f1) = a.upload(&tok, &root, "before.bin", &d1).await;
    assert_eq!(st, 201);
    let data = common::data(2 * 65536, 2);
    let sid = create_session(&a, &tok, &share, "across.bin", data.len()).await;
    let (st, _) = a.put_chunk(&tok, &sid, 0, data[..65536].to_vec()).await;
    assert_eq!(st, 200);

    // Redis goes away (all its state with it: no persistence).
    redis.kill9();
    let r = a.http.get(a.url("/api/v1/ready")).send().await.unwrap();
    let (st, body) = common::json_of(r).await;
    assert_eq!(st, 503, "{body}");
    assert_eq!(body["checks"]["redis"], false);
    // Requests still work: the session comes from the DB, rate limiting fails open.
    let (st, b) = a.put_chunk(&tok, &sid, 1, data[65536..].to_vec()).await;
    assert_eq!(st, 200, "{b}");
    let d2 = common::data(70_000, 3);
    let (st, f2) = a.upload(&tok, &root, "during.bin", &d2).await;
    assert_eq!(st, 201, "{f2}");

    // Redis is back (empty).
    redis.restart();
    wait_port(port).await;
    let mut ready = false;
    for _ in 0..50 {
        if a.http
            .get(a.url("/api/v1/ready"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready);
    let (st, f3) = a
        .post(&tok, &format!("/api/v1/uploads/{sid}/complete"), json!({}))
        .await;
    assert_eq!(st, 200, "{f3}");
    let r = a.download(&tok, "/api/v1/users/me", None).await;
    assert!(header(&r, "x-ratelimit-remaining").is_some());
    assert_eq!(
        download_bytes(&a, &tok, f1["id"].as_str().unwrap()).await,
        d1
    );
    assert_eq!(
        download_bytes(&a, &tok, f2["id"].as_str().unwrap()).await,
        d2
    );
    assert_eq!(
        download_bytes(&a, &tok, f3["id"].as_str().unwrap()).await,
        data
    );
}

#[tokio::test]
async fn s3_outage_is_a_clear_503_and_leaves_nothing_half_written() {
    let Some(mut stack) = Stack::start("s3_outage").await else {
        return;
    };
    stack.migrate();
    let a = stack.api(&[]).await;
    let tok = stack.token("acme", "alice");
    let (share, root) = a.home(&tok).await;
    let d1 = common::data(50_000, 1);
    let (st, f1) = a.upload(&tok, &root, "before.bin", &d1).await;
    assert_eq!(st, 201);
    let sid = create_session(&a, &tok, &share, "resumable.bin", 65536 + 10).await;

    stack.s3.stop();
    let (st, e) = a
        .upload(&tok, &root, "during.bin", &common::data(80_000, 2))
        .await;
    assert_err(st, &e, 503, "SERVICE_UNAVAILABLE");
    let (st, e) = a.put_chunk(&tok, &sid, 0, common::data(65536, 3)).await;
    assert_err(st, &e, 503, "SERVICE_UNAVAILABLE");
    let r = a
        .download(
            &tok,
            &format!("/api/v1/files/{}/content", f1["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(r.status(), 503);
    let r = a.http.get(a.url("/api/v1/ready")).send().await.unwrap();
    let (st, body) = common::json_of(r).await;
    assert_eq!(st, 503, "{body}");
    assert_eq!(body["checks"]["storage"], false);
    // Nothing half-written is visible.
    let (st, kids) = a
        .get(&tok, &format!("/api/v1/folders/{root}/children"))
        .await;
    assert_eq!(st, 200);
    let names: Vec<&str> = kids["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["before.bin"]);
    let (st, status) = a.get(&tok, &format!("/api/v1/uploads/{sid}")).await;
    assert_eq!(st, 200);
    assert_eq!(status["received_chunks"], json!([]), "{status}");

    stack.s3.resume().unwrap();
    let d2 = common::data(80_000, 2);
    let (st, f2) = a.upload(&tok, &root, "during.bin", &d2).await;
    assert_eq!(st, 201, "{f2}");
    assert_eq!(
        download_bytes(&a, &tok, f2["id"].as_str().unwrap()).await,
        d2
    );
    assert_eq!(
        download_bytes(&a, &tok, f1["id"].as_str().unwrap()).await,
        d1
    );
    let (st, _) = a.put_chunk(&tok, &sid, 0, common::data(65536, 3)).await;
    assert_eq!(st, 200);
}

async fn wait_port(port: u16) {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("port {port} never opened");
}
