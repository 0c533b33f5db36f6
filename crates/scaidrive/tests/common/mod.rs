//! Shared helpers for the integration tests: start the real `scaidrive` binary on a free port
//! (SQLite in a temp dir, or a fresh MariaDB database), mint tokens with `scaidrive token`,
//! and small HTTP helpers.
#![allow(dead_code)]

use std::time::Duration;

use reqwest::{Client, Method, Response, StatusCode};
use scai_testkit::{free_port, wait_http_ok, ServerProcess};
use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_scaidrive");

/// The binary under test: `SCAIDRIVE_TEST_BIN` when set (a private copy, for a worktree whose
/// shared target dir another checkout of this crate also builds into), else cargo's.
pub fn bin() -> String {
    std::env::var("SCAIDRIVE_TEST_BIN").unwrap_or_else(|_| BIN.to_string())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    MariaDb,
    /// SQLite metadata, chunks in an S3 bucket served by a real s3s-fs on loopback.
    S3,
    /// The production set-up: MariaDB, Redis (sessions cache, rate-limit counters, job
    /// queues; a unique key prefix per test) and chunks in s3s-fs.
    Production,
}

/// A key prefix no other test run uses, for `SCAIDRIVE_REDIS_PREFIX`.
pub fn redis_prefix() -> String {
    format!("sdtest:{}", scai_core::ids::new_id("run"))
}

pub struct Srv {
    pub proc: ServerProcess,
    pub base: String,
    pub dir: tempfile::TempDir,
    pub http: Client,
    pub db: Option<scai_testkit::mariadb::TempDatabase>,
    /// The s3s-fs process of the S3 backend (killed on drop).
    pub s3: Option<ServerProcess>,
}

impl Srv {
    /// `None` when the backend's service is explicitly skipped (SCAI_TEST_SKIP_SERVICES=1).
    pub async fn start(backend: Backend, extra: &[(&str, String)]) -> Option<Srv> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut envs: Vec<(&str, String)> = vec![
            ("SCAIDRIVE_DATA_DIR", dir.path().display().to_string()),
            ("SCAIDRIVE_BIND", format!("127.0.0.1:{port}")),
            ("SCAIDRIVE_LOG_LEVEL", "DEBUG".to_string()),
        ];
        let mut db = None;
        if let Backend::MariaDb | Backend::Production = backend {
            if scai_testkit::services::skip("scaidrive MariaDB suite") {
                return None;
            }
            let t = scai_testkit::mariadb::TempDatabase::create()
                .await
                .expect("MariaDB temp database");
            envs.push(("SCAIDRIVE_DATABASE_URL", t.url()));
            db = Some(t);
        }
        let mut s3 = None;
        if let Backend::Production = backend {
            envs.push(("SCAIDRIVE_REDIS_URL", scai_testkit::services::redis_url()));
            envs.push(("SCAIDRIVE_REDIS_PREFIX", redis_prefix()));
        }
        if let Backend::S3 | Backend::Production = backend {
            if scai_testkit::services::skip("scaidrive S3 suite") {
                return None;
            }
            let bin = scai_testkit::services::program("SCAI_TEST_S3S_FS", "s3s-fs")
                .expect("s3s-fs not installed (cargo install s3s-fs@0.14.1 --features binary)");
            let root = dir.path().join("s3root");
            std::fs::create_dir_all(&root).unwrap();
            let s3port = free_port();
            let p = ServerProcess::start(
                bin,
                &[
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &s3port.to_string(),
                    "--access-key",
                    "AK",
                    "--secret-key",
                    "SK",
                    root.to_str().unwrap(),
                ],
                &[],
            );
            let endpoint = format!("http://127.0.0.1:{s3port}");
            for _ in 0..100 {
                if std::net::TcpStream::connect(("127.0.0.1", s3port)).is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            envs.push(("SCAIDRIVE_S3_ENDPOINT", endpoint));
            envs.push(("SCAIDRIVE_S3_BUCKET", "scaidrive".to_string()));
            envs.push(("SCAIDRIVE_S3_ACCESS_KEY", "AK".to_string()));
            envs.push(("SCAIDRIVE_S3_SECRET_KEY", "SK".to_string()));
            s3 = Some(p);
        }
        envs.extend(extra.iter().cloned());
        let proc = ServerProcess::start(bin(), &["serve"], &envs);
        let base = format!("http://127.0.0.1:{port}");
        let s = Srv {
            proc,
            base,
            dir,
            http: Client::new(),
            db,
            s3,
        };
        s.wait_ready().await;
        Some(s)
    }

    pub async fn wait_ready(&self) {
        if let Err(e) = wait_http_ok(
            &format!("{}/api/v1/health", self.base),
            Duration::from_secs(30),
        )
        .await
        {
            panic!("server did not start: {e}\n{}", self.proc.logs());
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A token from `scaidrive token` for this server's data dir.
    pub fn token(&self, tenant: &str, user: &str, admin: bool) -> String {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["token", "--tenant", tenant, "--user", user, "--ttl", "1h"]);
        if admin {
            cmd.arg("--admin");
        }
        cmd.env("SCAIDRIVE_DATA_DIR", self.dir.path());
        let out = cmd.output().expect("run scaidrive token");
        assert!(
            out.status.success(),
            "token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub async fn call(
        &self,
        tok: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut rb = self.http.request(method, self.url(path)).bearer_auth(tok);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        json_of(r).await
    }

    pub async fn get(&self, tok: &str, path: &str) -> (StatusCode, Value) {
        self.call(tok, Method::GET, path, None).await
    }

    pub async fn post(&self, tok: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(tok, Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, tok: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(tok, Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, tok: &str, path: &str) -> (StatusCode, Value) {
        self.call(tok, Method::DELETE, path, None).await
    }

    /// (share_id, root_folder_id) of the caller's personal share.
    pub async fn home(&self, tok: &str) -> (String, String) {
        let (st, b) = self.get(tok, "/api/v1/users/me/shares").await;
        assert_eq!(st, 200, "{b}");
        let sid = b["shares"][0]["id"].as_str().unwrap().to_string();
        let (st, s) = self.get(tok, &format!("/api/v1/shares/{sid}")).await;
        assert_eq!(st, 200, "{s}");
        (sid, s["root_folder_id"].as_str().unwrap().to_string())
    }

    pub async fn mkdir(&self, tok: &str, parent: &str, name: &str) -> Value {
        let (st, b) = self
            .post(
                tok,
                "/api/v1/folders",
                json!({"parent_id": parent, "name": name}),
            )
            .await;
        assert_eq!(st, 201, "{b}");
        b
    }

    /// Simple multipart upload into `folder`.
    pub async fn upload(
        &self,
        tok: &str,
        folder: &str,
        name: &str,
        data: &[u8],
    ) -> (StatusCode, Value) {
        let form = reqwest::multipart::Form::new()
            .text("folder_id", folder.to_string())
            .part(
                "file",
                reqwest::multipart::Part::bytes(data.to_vec()).file_name(name.to_string()),
            );
        let r = self
            .http
            .post(self.url("/api/v1/files"))
            .bearer_auth(tok)
            .multipart(form)
            .send()
            .await
            .unwrap();
        json_of(r).await
    }

    pub async fn put_chunk(
        &self,
        tok: &str,
        session: &str,
        i: i64,
        data: Vec<u8>,
    ) -> (StatusCode, Value) {
        let r = self
            .http
            .put(self.url(&format!("/api/v1/uploads/{session}/chunks/{i}")))
            .bearer_auth(tok)
            .body(data)
            .send()
            .await
            .unwrap();
        json_of(r).await
    }

    /// Resumable upload with 64 KiB chunks, chunks sent in reverse order, 4 at a time.
    pub async fn upload_resumable(
        &self,
        tok: &str,
        create: Value,
        data: &[u8],
    ) -> (StatusCode, Value) {
        let (st, s) = self.post(tok, "/api/v1/uploads", create).await;
        assert_eq!(st, 201, "{s}");
        let sid = s["session_id"].as_str().unwrap().to_string();
        let cs = s["chunk_size"].as_u64().unwrap() as usize;
        let chunks: Vec<(i64, Vec<u8>)> = data
            .chunks(cs)
            .enumerate()
            .map(|(i, c)| (i as i64, c.to_vec()))
            .rev()
            .collect();
        for group in chunks.chunks(4) {
            let futs = group
                .iter()
                .map(|(i, c)| self.put_chunk(tok, &sid, *i, c.clone()));
            for (st, b) in futures::future::join_all(futs).await {
                assert_eq!(st, 200, "{b}");
            }
        }
        self.post(tok, &format!("/api/v1/uploads/{sid}/complete"), json!({}))
            .await
    }

    pub async fn download(&self, tok: &str, path: &str, range: Option<&str>) -> Response {
        let mut rb = self.http.get(self.url(path)).bearer_auth(tok);
        if let Some(r) = range {
            rb = rb.header("Range", r);
        }
        rb.send().await.unwrap()
    }

    /// Bytes stored under the chunk directory.
    pub fn stored_bytes(&self) -> u64 {
        fn walk(p: &std::path::Path) -> u64 {
            let mut n = 0;
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    let m = e.metadata().unwrap();
                    n += if m.is_dir() { walk(&e.path()) } else { m.len() };
                }
            }
            n
        }
        // Chunks at their content address plus pending chunks of open uploads.
        let root = if self.s3.is_some() {
            self.dir.path().join("s3root/scaidrive")
        } else {
            self.dir.path().join("objects")
        };
        walk(&root.join("chunks")) + walk(&root.join("uploads"))
    }
}

pub async fn json_of(r: Response) -> (StatusCode, Value) {
    let st = r.status();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| json!({"raw": text}));
    (st, v)
}

/// Assert the error envelope and its code.
pub fn assert_err(st: StatusCode, b: &Value, status: u16, code: &str) {
    assert_eq!(st.as_u16(), status, "{b}");
    assert_eq!(b["status"], "error", "{b}");
    assert_eq!(b["error"]["code"], code, "{b}");
    assert!(b["error"]["message"].is_string(), "{b}");
    assert_eq!(b["detail"], b["error"]["message"], "{b}");
    assert!(
        b["meta"]["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{b}"
    );
}

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn sha256_hex(d: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(d))
}
