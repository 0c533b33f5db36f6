//! Shared test helpers: start the real `deltaglider-proxy` binary on a free port (filesystem
//! or upstream-S3 backend), start a real `s3s-fs` server for the S3 backend, build
//! aws-sdk-s3 clients, and log in to / call the admin API.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::Client;
use scai_testkit::s3::S3Server;
use scai_testkit::{free_port, wait_http_ok, ServerProcess};
use serde_json::{json, Value};

pub const AK: &str = "TESTAK";
pub const SK: &str = "TESTSECRETKEY";

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Fs,
    S3,
}

/// A running `s3s-fs` (real S3-compatible server on loopback), from scai-testkit.
pub struct S3sFs {
    pub server: S3Server,
}

pub const UP_AK: &str = scai_testkit::s3::ACCESS_KEY;
pub const UP_SK: &str = scai_testkit::s3::SECRET_KEY;

impl S3sFs {
    /// Starts s3s-fs, or returns None (after printing why) when services are skipped.
    /// Panics with a clear message when the binary is missing.
    pub async fn start(test: &str) -> Option<S3sFs> {
        if scai_testkit::services::skip(test) {
            return None;
        }
        match S3Server::start().await {
            Ok(server) => Some(S3sFs { server }),
            Err(e) => panic!("{test}: {e} (or set SCAI_TEST_SKIP_SERVICES=1)"),
        }
    }

    pub fn url(&self) -> String {
        self.server.endpoint()
    }

    pub fn root(&self) -> &Path {
        self.server.root()
    }

    pub fn client(&self) -> Client {
        client_for(&self.url(), UP_AK, UP_SK)
    }
}

/// A running proxy.
pub struct Proxy {
    pub proc: ServerProcess,
    pub port: u16,
    pub data: PathBuf,
    pub keep: Option<tempfile::TempDir>,
}

impl Proxy {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> Client {
        client_for(&self.url(), AK, SK)
    }

    pub fn client_as(&self, ak: &str, sk: &str) -> Client {
        client_for(&self.url(), ak, sk)
    }

    /// The bootstrap client without the SDK's retries, for tests that assert on the first
    /// answer (a 5xx or a lockout that a retry would hide or change).
    pub fn client_no_retry(&self) -> Client {
        no_retry(&self.client())
    }

    /// The `/_/metrics` exposition text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/_/metrics", self.url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.data.join("deltaspaces").join(bucket)
    }
}

/// The proxy binary: `DGP_TEST_BIN` if set (a private copy, since worktrees sharing one
/// target dir overwrite each other's `target/debug/deltaglider-proxy`), else Cargo's.
pub fn proxy_bin() -> PathBuf {
    std::env::var_os("DGP_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_deltaglider-proxy")))
}

/// Starts the proxy (filesystem backend, fresh data dir) on a config file with `yaml`;
/// `extra` env as for [`start_proxy`].
pub async fn start_proxy_with_yaml(yaml: &str, extra: &[(&str, String)]) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let mut env = vec![("DGP_CONFIG", cfg.to_str().unwrap().to_string())];
    env.extend(extra.iter().cloned());
    let data = dir.path().to_path_buf();
    start_proxy_in(&data, None, &env, Some(dir)).await
}

/// Starts the proxy with a fresh data dir; `upstream` selects the S3 backend.
pub async fn start_proxy(upstream: Option<&S3sFs>, extra: &[(&str, String)]) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    start_proxy_in(&data, upstream, extra, Some(dir)).await
}

pub async fn start_proxy_in(
    data: &Path,
    upstream: Option<&S3sFs>,
    extra: &[(&str, String)],
    keep: Option<tempfile::TempDir>,
) -> Proxy {
    let port = free_port();
    let mut env: Vec<(&str, String)> = vec![
        ("DGP_LISTEN_ADDR", format!("127.0.0.1:{port}")),
        ("DGP_DATA_DIR", data.to_str().unwrap().to_string()),
        ("DGP_ACCESS_KEY_ID", AK.into()),
        ("DGP_SECRET_ACCESS_KEY", SK.into()),
        ("DGP_DEBUG_HEADERS", "true".into()),
        ("DGP_CACHE_MB", "64".into()),
        (
            "DGP_CONFIG",
            data.join("none.yaml").to_str().unwrap().to_string(),
        ),
        ("RUST_LOG", "deltaglider_proxy=debug,info".into()),
        // These suites send byte-identical signed writes within one second on purpose
        // (create a bucket twice, re-PUT the same bytes to the same key), which the spec's
        // 2 s replay window refuses by design; replay detection has its own tests
        // (replay.rs), which set the window explicitly.
        ("DGP_REPLAY_WINDOW_SECS", "0".into()),
    ];
    if let Some(u) = upstream {
        env.push(("DGP_S3_ENDPOINT", u.url()));
        env.push(("DGP_BE_AWS_ACCESS_KEY_ID", UP_AK.into()));
        env.push(("DGP_BE_AWS_SECRET_ACCESS_KEY", UP_SK.into()));
    }
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        env.push((k, v.clone()));
    }
    let proc = ServerProcess::start(proxy_bin(), &[], &env);
    if let Err(e) = wait_http_ok(
        &format!("http://127.0.0.1:{port}/_/health"),
        Duration::from_secs(20),
    )
    .await
    {
        panic!("proxy did not start: {e}\n{}", proc.logs());
    }
    Proxy {
        proc,
        port,
        data: data.to_path_buf(),
        keep,
    }
}

pub fn client_for(url: &str, ak: &str, sk: &str) -> Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .credentials_provider(Credentials::new(ak, sk, None, None, "test"))
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .force_path_style(true)
        .build();
    Client::from_conf(conf)
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    r.fill_bytes(&mut v);
    v
}

/// `base` with a few small edits: a "next version" of an artifact.
pub fn mutate(base: &[u8], seed: u64) -> Vec<u8> {
    let mut v = base.to_vec();
    let patch = bytes(seed, 64);
    for i in 0..4usize {
        let at = ((seed % 1_000_003) as usize * 7919 + i * 104_729) % v.len().max(1);
        let end = (at + 64).min(v.len());
        v[at..end].copy_from_slice(&patch[..end - at]);
    }
    v.extend_from_slice(&bytes(seed + 1, 100));
    v
}

pub async fn get_bytes(c: &Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = c
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {key}: {e:?}"));
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

pub async fn put_bytes(c: &Client, bucket: &str, key: &str, data: &[u8]) {
    c.put_object()
        .bucket(bucket)
        .key(key)
        .body(data.to_vec().into())
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {key}: {e:?}"));
}

/// Every file under `dir`, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(base, &p, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().to_string_lossy().to_string());
                }
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

/// Environment for an admin-enabled proxy: bootstrap password `pw` (bcrypt cost 4, cheap
/// for tests) and cookies without `Secure`, since the tests speak plain HTTP.
pub fn bootstrap_env(pw: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DGP_BOOTSTRAP_PASSWORD_HASH", bcrypt::hash(pw, 4).unwrap()),
        ("DGP_SECURE_COOKIES", "false".into()),
    ]
}

/// The `dgp_session=…` pair from a response's `set-cookie` headers, if one was set.
pub fn session_cookie(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("dgp_session="))
        .map(|c| c.split(';').next().unwrap().to_string())
}

/// The session cookie a successful login must have set.
pub fn cookie_of(r: &reqwest::Response) -> String {
    session_cookie(r).expect("a dgp_session cookie")
}

/// POSTs the bootstrap-password login; the raw response, for tests of refusals.
pub async fn admin_login_response(base: &str, pw: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/_/api/admin/login"))
        .json(&json!({ "password": pw }))
        .send()
        .await
        .unwrap()
}

/// Logs in with the bootstrap password (must answer 200); returns the session cookie.
pub async fn admin_login(base: &str, pw: &str) -> String {
    let r = admin_login_response(base, pw).await;
    assert_eq!(r.status(), 200);
    cookie_of(&r)
}

/// An admin API request with the session cookie and an optional JSON body; returns
/// (status, JSON body or Null).
pub async fn admin_call(
    method: reqwest::Method,
    url: String,
    cookie: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut rq = reqwest::Client::new()
        .request(method, url)
        .header("cookie", cookie);
    if let Some(b) = body {
        rq = rq.json(&b);
    }
    let r = rq.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// GET of an admin route with the session cookie: the raw response, for bodies that are not
/// JSON (a backup zip, a YAML export) or headers the test checks.
pub async fn admin_get(url: String, cookie: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(url)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

/// A presigned GET URL (5 minutes) for `bucket/key`, signed by `c`: for tests that need the
/// raw HTTP response (headers the SDK does not model, extra request headers).
pub async fn presigned_get(c: &Client, bucket: &str, key: &str) -> String {
    c.get_object()
        .bucket(bucket)
        .key(key)
        .presigned(
            aws_sdk_s3::presigning::PresigningConfig::expires_in(Duration::from_secs(300)).unwrap(),
        )
        .await
        .unwrap()
        .uri()
        .to_string()
}

/// `data` through the `gzip` CLI (`-c -n`, at `level`): real gzip streams for the tests of
/// compressed bodies.
pub fn gzip(data: &[u8], level: &str) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("gzip")
        .args(["-c", "-n", level])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip");
    child.stdin.take().unwrap().write_all(data).unwrap();
    child.wait_with_output().unwrap().stdout
}

/// Creates an IAM user through the admin API (must answer 201); returns its secret key.
pub async fn create_user(base: &str, cookie: &str, body: Value) -> String {
    let (s, v) = admin_call(
        reqwest::Method::POST,
        format!("{base}/_/api/admin/users"),
        cookie,
        Some(body),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    v["secret_access_key"].as_str().unwrap().to_string()
}

/// `c` without the SDK's retries.
pub fn no_retry(c: &Client) -> Client {
    Client::from_conf(
        c.config()
            .to_builder()
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .build(),
    )
}

/// The S3 error code of an SDK error ("" when there is none).
pub fn code<E: aws_sdk_s3::error::ProvideErrorMetadata>(e: &E) -> String {
    e.code().unwrap_or("").to_string()
}

/// HMAC-SHA256, for the tests that sign SigV4 by hand.
pub fn hmac(key: &[u8], msg: &str) -> Vec<u8> {
    use hmac::Mac as _;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    m.update(msg.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// The SigV4 signature of `to_sign` with the bootstrap secret, for `day` (YYYYMMDD) in
/// us-east-1/s3.
pub fn sigv4_signature(day: &str, to_sign: &str) -> String {
    let k = hmac(format!("AWS4{SK}").as_bytes(), day);
    let k = hmac(&k, "us-east-1");
    let k = hmac(&k, "s3");
    let k = hmac(&k, "aws4_request");
    hex::encode(hmac(&k, to_sign))
}

/// An SDK interceptor that keeps the raw headers and body of the response it sees, for what
/// the SDK's parser does not model (MinIO's `<UserMetadata>`, `x-amz-meta-dg-list-filtered`).
#[derive(Debug, Clone, Default)]
pub struct RawResponse(std::sync::Arc<std::sync::Mutex<(http::HeaderMap, Vec<u8>)>>);

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        let g = self.0.lock().unwrap();
        g.0.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    pub fn body_text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().1.clone()).unwrap()
    }
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for RawResponse {
    fn name(&self) -> &'static str {
        "RawResponse"
    }

    fn read_after_deserialization(
        &self,
        ctx: &aws_smithy_runtime_api::client::interceptors::context::AfterDeserializationInterceptorContextRef<'_>,
        _rc: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let r = ctx.response();
        let mut headers = http::HeaderMap::new();
        for (k, v) in r.headers() {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                headers.append(k, v);
            }
        }
        let body = r.body().bytes().map(<[u8]>::to_vec).unwrap_or_default();
        *self.0.lock().unwrap() = (headers, body);
        Ok(())
    }
}
