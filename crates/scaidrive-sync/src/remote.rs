//! The HTTP side of the sync API: devices, changes, cursor commits, apply, the sync
//! download (streamed to a temp file, fsynced, hashed on the way) and resumable uploads that
//! send only the chunks the server lacks, several at a time.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use futures::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Chunk size for uploads (the server default; a one-byte edit moves one chunk).
pub const CHUNK_SIZE: u64 = 4 << 20;
/// Chunk PUTs in flight per file.
pub const PARALLEL: usize = 4;
/// Files up to this size skip the `chunks/have` question and just send their one chunk.
const HAVE_MIN: u64 = 256 << 10;
/// Transfers at least this big get a progress bar.
const BAR_MIN: u64 = 8 << 20;

#[derive(Clone)]
pub struct Remote {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
    pub share_id: String,
    pub device_id: String,
}

/// An HTTP error with the server's code (envelope `error.code`, or `detail`).
#[derive(Debug)]
pub struct HttpError {
    pub status: u16,
    pub code: String,
    pub body: Value,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}: {}", self.status, self.code, self.body)
    }
}

impl std::error::Error for HttpError {}

async fn json_or_err(r: reqwest::Response) -> anyhow::Result<Value> {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if status >= 400 {
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or("UNKNOWN")
            .to_string();
        return Err(HttpError { status, code, body }.into());
    }
    Ok(body)
}

pub fn http_code(e: &anyhow::Error) -> Option<(u16, &str)> {
    e.downcast_ref::<HttpError>()
        .map(|h| (h.status, h.code.as_str()))
}

/// Sending with the API digest's advice for `429 RATE_LIMITED`: sleep `Retry-After` with
/// ±20 % jitter and try again, giving up after three retries (the 429 is then returned).
trait SendRetrying {
    fn send_retrying(
        self,
    ) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + Send;
}

impl SendRetrying for reqwest::RequestBuilder {
    async fn send_retrying(self) -> reqwest::Result<reqwest::Response> {
        {
            let mut rb = self;
            for _ in 0..3 {
                // A streaming body cannot be replayed: such requests are sent once.
                let Some(next) = rb.try_clone() else { break };
                let resp = rb.send().await?;
                if resp.status() != reqwest::StatusCode::TOO_MANY_REQUESTS {
                    return Ok(resp);
                }
                let secs = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(1.0)
                    .clamp(0.1, 60.0);
                // Jitter from the clock's nanoseconds: enough to spread clients apart.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0);
                let jitter = 0.8 + f64::from(nanos % 1000) / 1000.0 * 0.4;
                tracing::info!(
                    event = "rate_limited",
                    retry_in_secs = secs,
                    "server asked to slow down"
                );
                tokio::time::sleep(std::time::Duration::from_secs_f64(secs * jitter)).await;
                rb = next;
            }
            rb.send().await
        }
    }
}

fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    if len < BAR_MIN {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
    ) {
        pb.set_style(style);
    }
    pb.set_message(what.to_string());
    pb
}

impl Remote {
    fn url(&self, p: &str) -> String {
        format!("{}{}", self.base.trim_end_matches('/'), p)
    }

    pub async fn get(&self, p: &str) -> anyhow::Result<Value> {
        json_or_err(
            self.http
                .get(self.url(p))
                .bearer_auth(&self.token)
                .send_retrying()
                .await?,
        )
        .await
    }

    pub async fn post(&self, p: &str, body: Value) -> anyhow::Result<Value> {
        json_or_err(
            self.http
                .post(self.url(p))
                .bearer_auth(&self.token)
                .json(&body)
                .send_retrying()
                .await?,
        )
        .await
    }

    /// The caller's personal share.
    pub async fn personal_share(&self) -> anyhow::Result<String> {
        let b = self.get("/api/v1/users/me/shares").await?;
        b["shares"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|s| s["share_type"] == "personal")
                    .or(a.first())
            })
            .and_then(|s| s["id"].as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("the server lists no share for this user"))
    }

    pub async fn register_device(&self, name: &str) -> anyhow::Result<()> {
        self.post(
            "/api/v1/sync/devices",
            json!({"device_id": self.device_id, "device_name": name, "platform": std::env::consts::OS, "client_version": env!("CARGO_PKG_VERSION")}),
        )
        .await?;
        Ok(())
    }

    /// One page of changes: (changes, next cursor, has_more).
    pub async fn changes(
        &self,
        cursor: &str,
        limit: u32,
    ) -> anyhow::Result<(Vec<Value>, String, bool)> {
        let r = self
            .http
            .get(self.url("/api/v1/sync/changes"))
            .query(&[
                ("share_id", self.share_id.as_str()),
                ("cursor", cursor),
                ("limit", &limit.to_string()),
            ])
            .bearer_auth(&self.token)
            .send_retrying()
            .await?;
        let b = json_or_err(r).await?;
        let changes = b["changes"].as_array().cloned().unwrap_or_default();
        let cur = match &b["cursor"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => bail!("changes response without cursor"),
        };
        Ok((changes, cur, b["has_more"] == true))
    }

    pub async fn commit_cursor(&self, position: &str) -> anyhow::Result<()> {
        let r = self
            .http
            .post(self.url("/api/v1/sync/cursor"))
            .query(&[
                ("share_id", self.share_id.as_str()),
                ("device_id", self.device_id.as_str()),
                ("position", position),
            ])
            .bearer_auth(&self.token)
            .send_retrying()
            .await?;
        json_or_err(r).await?;
        Ok(())
    }

    pub async fn apply(&self, changes: Vec<Value>) -> anyhow::Result<Vec<Value>> {
        let b = self
            .post(
                "/api/v1/sync/apply",
                json!({"device_id": self.device_id, "share_id": self.share_id, "conflict_resolution": "KEEP_BOTH", "changes": changes}),
            )
            .await?;
        Ok(b["results"].as_array().cloned().unwrap_or_default())
    }

    /// A new file in one request (`POST /api/v1/files`, multipart) into `folder_id` (the
    /// share root when `None`). Returns the file object. A name taken answers 409.
    pub async fn simple_upload(
        &self,
        folder_id: Option<&str>,
        name: &str,
        data: Vec<u8>,
    ) -> anyhow::Result<Value> {
        let mut tries = 0;
        loop {
            let mut form = reqwest::multipart::Form::new()
                .text("share_id", self.share_id.clone())
                .text("name", name.to_string());
            if let Some(f) = folder_id {
                form = form.text("folder_id", f.to_string());
            }
            let part = reqwest::multipart::Part::bytes(data.clone()).file_name(name.to_string());
            form = form.part("file", part);
            let r = self
                .http
                .post(self.url("/api/v1/files"))
                .bearer_auth(&self.token)
                .multipart(form)
                .send()
                .await?;
            // A multipart body cannot be replayed by `send_retrying`: honour 429 here.
            if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS && tries < 3 {
                tries += 1;
                let secs = r
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(1.0)
                    .clamp(0.1, 60.0);
                tokio::time::sleep(std::time::Duration::from_secs_f64(secs)).await;
                continue;
            }
            return json_or_err(r).await;
        }
    }

    /// Download a file into `tmp` (created, written, fsynced). Returns (version_id, sha256).
    pub async fn download(
        &self,
        file_id: &str,
        tmp: &Path,
    ) -> anyhow::Result<(Option<String>, String)> {
        let r = self
            .http
            .get(self.url(&format!("/api/v1/sync/download/{file_id}")))
            .bearer_auth(&self.token)
            .send_retrying()
            .await?;
        if !r.status().is_success() {
            return Err(json_or_err(r)
                .await
                .err()
                .unwrap_or_else(|| anyhow!("download failed")));
        }
        let version = r
            .headers()
            .get("x-version-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let len = r.content_length().unwrap_or(0);
        let pb = progress(len, "download");
        let mut f = tokio::fs::File::create(tmp)
            .await
            .with_context(|| format!("creating {}", tmp.display()))?;
        let mut sha = Sha256::new();
        let mut stream = r.bytes_stream();
        while let Some(b) = stream.next().await {
            let b = b?;
            sha.update(&b);
            f.write_all(&b).await?;
            pb.inc(b.len() as u64);
        }
        f.flush().await?;
        f.sync_all().await?;
        pb.finish_and_clear();
        Ok((version, hex::encode(sha.finalize())))
    }

    /// Upload `file` (`size` bytes, whole-file `sha`) into a session and return its id. A
    /// session remembered for the same path and content is resumed; the server is asked which
    /// chunks it already has, and only the others are sent, `PARALLEL` at a time.
    pub async fn upload(
        &self,
        state: &crate::state::State,
        share_path: &str,
        file: &Path,
        size: u64,
        sha: &str,
    ) -> anyhow::Result<String> {
        let mut session = None;
        if let Some((psha, sid)) = state.upload_for(share_path).await? {
            if psha == sha {
                if let Ok(s) = self.get(&format!("/api/v1/uploads/{sid}")).await {
                    if s["status"] == "active" {
                        session = Some(sid);
                    }
                }
            }
        }
        let sid = match session {
            Some(s) => s,
            None => {
                let s = self
                    .post(
                        "/api/v1/uploads",
                        json!({"share_id": self.share_id, "file_name": format!("scaidrive-sync-{}.upload", uuid::Uuid::new_v4()),
                            "file_size": size, "chunk_size": CHUNK_SIZE, "checksum_sha256": sha}),
                    )
                    .await?;
                let sid = s["session_id"]
                    .as_str()
                    .ok_or_else(|| anyhow!("no session_id"))?
                    .to_string();
                state.set_upload(share_path, sha, &sid).await?;
                sid
            }
        };
        // Chunk hashes → which ones the server lacks.
        let path = file.to_path_buf();
        let hashes = tokio::task::spawn_blocking(move || chunk_hashes(&path)).await??;
        let chunks: Vec<Value> = hashes
            .iter()
            .enumerate()
            .map(|(i, h)| json!({"index": i, "sha256": h}))
            .collect();
        let missing: Vec<u64> = if size <= HAVE_MIN {
            // Asking costs a round trip that sending the few bytes does not.
            (0..chunks.len() as u64).collect()
        } else {
            let have = self
                .post(
                    &format!("/api/v1/uploads/{sid}/chunks/have"),
                    json!({"chunks": chunks}),
                )
                .await?;
            have["missing"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default()
        };
        let pb = progress(missing.len() as u64 * CHUNK_SIZE, "upload");
        let puts = futures::stream::iter(missing.into_iter().map(|i| {
            let file = file.to_path_buf();
            let sid = sid.clone();
            let pb = pb.clone();
            async move {
                let data =
                    tokio::task::spawn_blocking(move || read_chunk(&file, i, size)).await??;
                let n = data.len() as u64;
                let r = self
                    .http
                    .put(self.url(&format!("/api/v1/uploads/{sid}/chunks/{i}")))
                    .bearer_auth(&self.token)
                    .body(data)
                    .send_retrying()
                    .await?;
                json_or_err(r).await?;
                pb.inc(n);
                anyhow::Ok(())
            }
        }))
        .buffer_unordered(PARALLEL);
        let results: Vec<anyhow::Result<()>> = puts.collect().await;
        pb.finish_and_clear();
        for r in results {
            r?;
        }
        Ok(sid)
    }
}

fn chunk_hashes(path: &Path) -> anyhow::Result<Vec<String>> {
    let mut f = std::fs::File::open(path)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = f.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        out.push(hex::encode(Sha256::digest(&buf[..filled])));
        if filled < buf.len() {
            break;
        }
    }
    Ok(out)
}

fn read_chunk(path: &Path, i: u64, size: u64) -> anyhow::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    let start = i * CHUNK_SIZE;
    let len = CHUNK_SIZE.min(size.saturating_sub(start)) as usize;
    f.seek(SeekFrom::Start(start))?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

/// SHA-256 of a whole file.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    Ok(hex::encode(sha.finalize()))
}
