//! `scaidrive-sync bench`: figures for the sync path against real `scaidrive` processes
//! (a command, never a test). Each figure is printed beside a baseline measured in the same
//! run: backlog pull (HTTP changes/s vs a raw SELECT of the same rows), commit→nudge latency
//! on another replica (two `api` processes, MariaDB + Redis) vs one process, resident memory
//! per idle WebSocket, client time for many small files (vs reading them locally) and a
//! one-byte edit in a big file (bytes uploaded vs the file size).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::Engine;

pub struct Opts {
    pub server_bin: PathBuf,
    pub backlog: usize,
    pub sockets: usize,
    pub files: usize,
    pub big_mib: u64,
    pub samples: usize,
    pub mariadb_url: String,
    pub redis_url: String,
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18000)
}

fn spawn(bin: &Path, args: &[&str], envs: &[(&str, String)]) -> anyhow::Result<Proc> {
    let mut c = Command::new(bin);
    c.args(args).stdout(Stdio::null()).stderr(Stdio::null());
    for (k, v) in envs {
        c.env(k, v);
    }
    Ok(Proc(
        c.spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    ))
}

async fn wait_up(base: &str) -> anyhow::Result<()> {
    for _ in 0..300 {
        if reqwest::get(format!("{base}/api/v1/health"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{base} did not come up")
}

fn token(bin: &Path, data: &Path, user: &str) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args(["token", "--tenant", "bench", "--user", user, "--ttl", "2h"])
        .env("SCAIDRIVE_DATA_DIR", data)
        .output()?;
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn metric(base: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics")).await.ok();
    let text = match text {
        Some(r) => r.text().await.unwrap_or_default(),
        None => return 0.0,
    };
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Http {
    c: reqwest::Client,
    base: String,
    tok: String,
}

impl Http {
    async fn get(&self, p: &str) -> anyhow::Result<Value> {
        Ok(self
            .c
            .get(format!("{}{p}", self.base))
            .bearer_auth(&self.tok)
            .send()
            .await?
            .json()
            .await?)
    }
    async fn post(&self, p: &str, b: Value) -> anyhow::Result<Value> {
        Ok(self
            .c
            .post(format!("{}{p}", self.base))
            .bearer_auth(&self.tok)
            .json(&b)
            .send()
            .await?
            .json()
            .await?)
    }
}

pub async fn run(o: Opts) -> anyhow::Result<()> {
    let tmp = tempfile_dir()?;
    let data = tmp.join("server");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let envs = vec![
        ("SCAIDRIVE_DATA_DIR", data.display().to_string()),
        ("SCAIDRIVE_BIND", format!("127.0.0.1:{port}")),
        ("SCAIDRIVE_WS_MAX_PER_USER", "1000000".to_string()),
        ("SCAIDRIVE_WS_MAX_CONNECTIONS", "1000000".to_string()),
        ("SCAIDRIVE_LOG_LEVEL", "WARN".to_string()),
        // The benchmark measures sync, not the rate limiter (whose per-token budget would
        // otherwise pace the small-file run).
        ("SCAIDRIVE_RATE_LIMIT_ENABLED", "false".to_string()),
    ];
    let server = spawn(&o.server_bin, &["serve"], &envs)?;
    wait_up(&base).await?;
    let tok = token(&o.server_bin, &data, "usr_bench")?;
    let h = Http {
        c: reqwest::Client::new(),
        base: base.clone(),
        tok: tok.clone(),
    };
    let shares = h.get("/api/v1/users/me/shares").await?;
    let share = shares["shares"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let tenant = shares["shares"][0]["tenant_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    println!(
        "scaidrive-sync bench (server {}, embedded SQLite)",
        o.server_bin.display()
    );

    // 1. Backlog pull.
    {
        let db = format!("sqlite://{}", data.join("scaidrive.db").display());
        let pool = sqlx::SqlitePool::connect(&db).await?;
        let (head,): (i64,) =
            sqlx::query_as("SELECT position FROM change_counters WHERE tenant_id = ?")
                .bind(&tenant)
                .fetch_one(&pool)
                .await?;
        let mut tx = pool.begin().await?;
        for i in 0..o.backlog as i64 {
            sqlx::query("INSERT INTO change_log (tenant_id, position, id, share_id, resource_type, resource_id, change_type, changed_by, changed_at, old_path, new_path, version_id, size, mime_type, checksum_sha256) VALUES (?, ?, ?, ?, 'file', ?, 'created', 'usr_bench', strftime('%s','now'), NULL, ?, ?, 1234, 'text/plain', NULL)")
                .bind(&tenant).bind(head + 1 + i).bind(format!("chg_bench{i}")).bind(&share).bind(format!("fil_bench{i}")).bind(format!("/bench/f{i}.txt")).bind(format!("ver_bench{i}"))
                .execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE change_counters SET position = ? WHERE tenant_id = ?")
            .bind(head + o.backlog as i64)
            .bind(&tenant)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let t = Instant::now();
        let rows: Vec<(i64, String, String)> = sqlx::query_as("SELECT position, id, new_path FROM change_log WHERE tenant_id = ? AND share_id = ? AND position > ? ORDER BY position").bind(&tenant).bind(&share).bind(head).fetch_all(&pool).await?;
        let raw = t.elapsed();
        let t = Instant::now();
        let mut cursor = head.to_string();
        let mut n = 0usize;
        loop {
            let b = h
                .get(&format!(
                    "/api/v1/sync/changes?share_id={share}&cursor={cursor}&limit=5000"
                ))
                .await?;
            n += b["changes"].as_array().map(Vec::len).unwrap_or(0);
            cursor = b["cursor"].as_str().unwrap_or_default().to_string();
            if b["has_more"] != true {
                break;
            }
        }
        let http = t.elapsed();
        println!("backlog pull: {n} changes in {:.2}s = {:.0} changes/s over HTTP (limit 5000); baseline raw SELECT of {} rows: {:.0} rows/s", http.as_secs_f64(), n as f64 / http.as_secs_f64(), rows.len(), rows.len() as f64 / raw.as_secs_f64());
        // Drop the fake rows so the client benchmarks below do not pull them.
        sqlx::query("DELETE FROM change_log WHERE tenant_id = ? AND id LIKE 'chg_bench%'")
            .bind(&tenant)
            .execute(&pool)
            .await?;
    }

    // 2. Idle WebSockets.
    {
        h.post("/api/v1/sync/devices", json!({"device_id": "bench-ws"}))
            .await?;
        let pid = server.0.id();
        let before = rss_kib(pid);
        let mut socks = Vec::with_capacity(o.sockets);
        let url = format!("ws://127.0.0.1:{port}/api/v1/sync/ws/bench-ws?token={tok}");
        for _ in 0..o.sockets {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
            ws.send(Message::Text(r#"{"type":"subscribe"}"#.into()))
                .await?;
            let _ = ws.next().await;
            socks.push(ws);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss_kib(pid);
        let per = (after.saturating_sub(before)) as f64 * 1024.0 / o.sockets as f64;
        println!("idle WebSockets: {} connected, server RSS {} → {} KiB = {:.0} bytes per connection; guide (troubleshooting doc) ~8192 bytes", o.sockets, before, after, per);
        drop(socks);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (mut one, _) = tokio_tungstenite::connect_async(&url).await?;
        one.send(Message::Text(r#"{"type":"subscribe"}"#.into()))
            .await?;
        let _ = one.next().await;
        // Same-process nudge latency (baseline for the cross-replica figure).
        let mut lat = nudge_latency(&h, &mut one, &share, o.samples).await?;
        println!(
            "commit→nudge, same process: p50 {:.2} ms, p99 {:.2} ms ({} samples)",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            o.samples
        );
    }

    // 3. Client: many small files, then a one-byte edit in a big file.
    {
        let dir = tmp.join("client");
        std::fs::create_dir_all(dir.join("small"))?;
        for i in 0..o.files {
            std::fs::write(
                dir.join("small").join(format!("f{i:05}.txt")),
                format!("small file {i} {}", "x".repeat(i % 200)),
            )?;
        }
        let t = Instant::now();
        let mut bytes = 0usize;
        for i in 0..o.files {
            bytes += std::fs::read(dir.join("small").join(format!("f{i:05}.txt")))?.len();
        }
        let base_read = t.elapsed();
        let e = Engine::init(&dir, &base, &tok, None, Some("bench")).await?;
        let t = Instant::now();
        let r = e.once().await?;
        let took = t.elapsed();
        println!("client: {} small files ({} bytes) synced in {:.1}s ({:.0} files/s, uploaded {}, errors {}); baseline local read of the same files {:.3}s", o.files, bytes, took.as_secs_f64(), o.files as f64 / took.as_secs_f64(), r.uploaded, r.errors, base_read.as_secs_f64());
        // Big file.
        let big = dir.join("big.bin");
        {
            use std::io::Write;
            let mut f = std::io::BufWriter::new(std::fs::File::create(&big)?);
            let mut x: u64 = 0x1234_5678;
            let mut buf = vec![0u8; 1 << 20];
            for _ in 0..o.big_mib {
                for b in buf.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                f.write_all(&buf)?;
            }
            f.flush()?;
        }
        let up0 = metric(&base, "scaidrive_uploads_bytes_total").await;
        let t = Instant::now();
        e.once().await?;
        let full = t.elapsed();
        let up1 = metric(&base, "scaidrive_uploads_bytes_total").await;
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(&big)?;
            f.seek(SeekFrom::Start(o.big_mib * 1024 * 1024 / 2 + 7))?;
            f.write_all(b"!")?;
            f.sync_all()?;
        }
        let t = Instant::now();
        let r = e.once().await?;
        let edit = t.elapsed();
        let up2 = metric(&base, "scaidrive_uploads_bytes_total").await;
        println!("client: {} MiB file first sync {:.1}s ({:.0} bytes sent); one-byte edit synced in {:.1}s sending {:.0} bytes = {} chunk(s) of {} (uploaded {}, errors {})", o.big_mib, full.as_secs_f64(), up1 - up0, edit.as_secs_f64(), up2 - up1, ((up2 - up1) / crate::remote::CHUNK_SIZE as f64).ceil(), crate::remote::CHUNK_SIZE, r.uploaded, r.errors);
        let _ = std::fs::remove_file(&big);
    }
    drop(server);

    // 4. Commit → nudge on another replica (MariaDB + Redis).
    match replicas(&o, &tmp).await {
        Ok((mut lat, n)) => println!("commit→nudge, other replica (2 api processes, MariaDB + Redis): p50 {:.2} ms, p99 {:.2} ms ({n} samples)", pct(&mut lat, 0.5), pct(&mut lat, 0.99)),
        Err(e) => println!("commit→nudge, other replica: skipped ({e:#})"),
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Create folders through `h`; time from request start to the nudge on `ws` (ms).
async fn nudge_latency(h: &Http, ws: &mut Ws, share: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let root = h.get(&format!("/api/v1/shares/{share}")).await?["root_folder_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let f = h
            .post(
                "/api/v1/folders",
                json!({"parent_id": root, "name": format!("lat-{}-{i}", std::process::id())}),
            )
            .await?;
        let id = f["id"].as_str().unwrap_or_default().to_string();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), ws.next()).await?;
            if let Some(Ok(Message::Text(t2))) = m {
                let v: Value = serde_json::from_str(&t2).unwrap_or_default();
                if v["data"]["resource_id"] == id.as_str() {
                    break;
                }
            }
        }
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

async fn replicas(o: &Opts, tmp: &Path) -> anyhow::Result<(Vec<f64>, usize)> {
    use sqlx::Connection;
    let name = format!("scaidrive_bench_{}", std::process::id());
    let mut admin = sqlx::MySqlConnection::connect(&o.mariadb_url)
        .await
        .context("MariaDB")?;
    sqlx::query(&format!("CREATE DATABASE `{name}`"))
        .execute(&mut admin)
        .await?;
    let url = format!("{}/{name}", o.mariadb_url.trim_end_matches('/'));
    let data = tmp.join("replicas");
    std::fs::create_dir_all(&data)?;
    let common = |port: u16| {
        vec![
            ("SCAIDRIVE_DATA_DIR", data.display().to_string()),
            ("SCAIDRIVE_DATABASE_URL", url.clone()),
            ("SCAIDRIVE_REDIS_URL", o.redis_url.clone()),
            ("SCAIDRIVE_EMBEDDED_AUTH", "1".to_string()),
            ("SCAIDRIVE_BIND", format!("127.0.0.1:{port}")),
            ("SCAIDRIVE_LOG_LEVEL", "WARN".to_string()),
            ("SCAIDRIVE_RATE_LIMIT_ENABLED", "false".to_string()),
        ]
    };
    let result = async {
        let st = Command::new(&o.server_bin)
            .arg("migrate")
            .envs(common(1).into_iter().map(|(k, v)| (k.to_string(), v)))
            .output()?;
        if !st.status.success() {
            bail!("migrate failed: {}", String::from_utf8_lossy(&st.stderr));
        }
        let (pa, pb) = (free_port(), free_port());
        let _a = spawn(&o.server_bin, &["api"], &common(pa))?;
        let _b = spawn(&o.server_bin, &["api"], &common(pb))?;
        let (ba, bb) = (
            format!("http://127.0.0.1:{pa}"),
            format!("http://127.0.0.1:{pb}"),
        );
        wait_up(&ba).await?;
        wait_up(&bb).await?;
        let tok = token(&o.server_bin, &data, "usr_bench")?;
        let ha = Http {
            c: reqwest::Client::new(),
            base: ba,
            tok: tok.clone(),
        };
        let shares = ha.get("/api/v1/users/me/shares").await?;
        let share = shares["shares"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        ha.post("/api/v1/sync/devices", json!({"device_id": "bench-rep"}))
            .await?;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!(
            "{}/api/v1/sync/ws/bench-rep?token={tok}",
            bb.replacen("http", "ws", 1)
        ))
        .await?;
        ws.send(Message::Text(r#"{"type":"subscribe"}"#.into()))
            .await?;
        let _ = ws.next().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let lat = nudge_latency(&ha, &mut ws, &share, o.samples).await?;
        Ok((lat, o.samples))
    }
    .await;
    let _ = sqlx::query(&format!("DROP DATABASE `{name}`"))
        .execute(&mut admin)
        .await;
    result
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("scaidrive-sync-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
