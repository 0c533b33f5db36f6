//! `scaidrive bench upload`: starts a server in this process, once in embedded mode (SQLite +
//! chunk dir) and once in production mode (a fresh MariaDB database, Redis, an s3s-fs process
//! on loopback; skipped with a note when one is missing), and measures in each, beside a `dd bs=4M conv=fsync` baseline of the same file on the same disk:
//! resumable upload throughput (parallel chunk PUTs), download throughput, bytes stored after
//! uploading the same file twice, the latency of `complete`, and p50/p99 of a 1000-item
//! children page in a 100,000-item folder; in production mode also the MariaDB round trips
//! per chunk PUT and per `complete`. Figures only; never part of the tests.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::config::{Config, Role};

const CHUNK: usize = 4 << 20;

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if let Ok(m) = e.metadata() {
                n += if m.is_dir() {
                    dir_bytes(&e.path())
                } else {
                    m.len()
                };
            }
        }
    }
    n
}

fn write_source(path: &std::path::Path, size: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path)?);
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

fn read_chunk(path: &std::path::Path, i: usize, size: u64) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    let start = (i * CHUNK) as u64;
    let len = (size - start).min(CHUNK as u64) as usize;
    f.seek(SeekFrom::Start(start))?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

async fn check(r: reqwest::Response) -> anyhow::Result<Value> {
    let st = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !st.is_success() {
        bail!("HTTP {st}: {v}");
    }
    Ok(v)
}

/// One resumable upload; returns (total time, complete latency, file id).
#[allow(clippy::too_many_arguments)]
async fn upload_file(
    http: &reqwest::Client,
    base: &str,
    tok: &str,
    folder: &str,
    name: &str,
    src: &std::path::Path,
    size: u64,
    parallel: usize,
) -> anyhow::Result<(Duration, Duration, String)> {
    let start = Instant::now();
    let s = check(
        http.post(format!("{base}/api/v1/uploads"))
            .bearer_auth(tok)
            .json(&json!({"folder_id": folder, "file_name": name, "file_size": size, "chunk_size": CHUNK}))
            .send()
            .await?,
    )
    .await?;
    let sid = s["session_id"].as_str().context("session id")?.to_string();
    let total = s["total_chunks"].as_u64().context("total_chunks")? as usize;
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..total)
        .map(|i| {
            let (http, sid, src) = (http.clone(), sid.clone(), src.to_path_buf());
            async move {
                let body = tokio::task::spawn_blocking(move || read_chunk(&src, i, size)).await??;
                check(
                    http.put(format!("{base}/api/v1/uploads/{sid}/chunks/{i}"))
                        .bearer_auth(tok)
                        .body(body)
                        .send()
                        .await?,
                )
                .await?;
                Ok(())
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    for r in results {
        r?;
    }
    let c0 = Instant::now();
    let f = check(
        http.post(format!("{base}/api/v1/uploads/{sid}/complete"))
            .bearer_auth(tok)
            .send()
            .await?,
    )
    .await?;
    let complete = c0.elapsed();
    Ok((
        start.elapsed(),
        complete,
        f["id"].as_str().context("file id")?.to_string(),
    ))
}

/// Where a bench run keeps its data.
enum Mode {
    /// SQLite + local chunk dir, in-process limiter and queue.
    Embedded,
    /// MariaDB + Redis + s3s-fs on loopback.
    Production(ProdDeps),
}

struct ProdDeps {
    admin_url: String,
    db_name: String,
    redis_url: String,
    s3s: std::process::Child,
    s3_port: u16,
    s3_root: std::path::PathBuf,
}

impl Drop for ProdDeps {
    fn drop(&mut self) {
        let _ = self.s3s.kill();
        let _ = self.s3s.wait();
    }
}

#[derive(Default)]
struct Figures {
    dd: Duration,
    up: Duration,
    down: Duration,
    complete1: Duration,
    complete2: Duration,
    stored_once: u64,
    stored_twice: u64,
    p50_ms: f64,
    p99_ms: f64,
    pages: usize,
    /// MariaDB round trips per chunk PUT and per complete (production only).
    queries: Option<(f64, i64, usize)>,
}

fn find_program(name: &str) -> Option<std::path::PathBuf> {
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(std::path::PathBuf::from(h).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Start the production dependencies: a fresh MariaDB database
/// (`SCAIDRIVE_BENCH_MARIADB_URL`, default `mysql://root@127.0.0.1:3306`), Redis
/// (`SCAIDRIVE_BENCH_REDIS_URL`, default `redis://127.0.0.1:6379/0`) and an s3s-fs process.
async fn prod_deps(tmp: &std::path::Path) -> anyhow::Result<ProdDeps> {
    let admin_url = std::env::var("SCAIDRIVE_BENCH_MARIADB_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    let redis_url = std::env::var("SCAIDRIVE_BENCH_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let db_name = format!(
        "scaidrive_bench_{}",
        scai_core::ids::new_id("b").to_lowercase().replace('_', "")
    );
    let admin = crate::db::Db::connect(&admin_url, 1)
        .await
        .context("SCAIDRIVE_BENCH_MARIADB_URL")?;
    sqlx::query(&format!("CREATE DATABASE {db_name}"))
        .execute(&admin.pool)
        .await?;
    admin.pool.close().await;
    let bin = find_program("s3s-fs").context("s3s-fs not installed")?;
    let s3_root = tmp.join("s3root");
    std::fs::create_dir_all(&s3_root)?;
    let s3_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let s3s = std::process::Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &s3_port.to_string()])
        .args(["--access-key", "AK", "--secret-key", "SK"])
        .arg(&s3_root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting s3s-fs")?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", s3_port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(ProdDeps {
        admin_url,
        db_name,
        redis_url,
        s3s,
        s3_port,
        s3_root,
    })
}

fn mode_config(mode: &Mode, data_dir: std::path::PathBuf) -> anyhow::Result<Config> {
    let mut cfg = Config::from_env(Role::Serve)?;
    cfg.data_dir = data_dir;
    cfg.embedded_auth = true;
    // The benchmark measures throughput, not the limiter (it would throttle 256+ PUTs/min).
    cfg.rate_limit_enabled = false;
    match mode {
        Mode::Embedded => {
            cfg.database_url = format!(
                "sqlite://{}?mode=rwc",
                cfg.data_dir.join("scaidrive.db").display()
            );
            cfg.s3 = None;
            cfg.redis_url = None;
        }
        Mode::Production(p) => {
            cfg.database_url = format!("{}/{}", p.admin_url.trim_end_matches('/'), p.db_name);
            cfg.redis_url = Some(p.redis_url.clone());
            cfg.redis_prefix = format!("{}:redis", p.db_name);
            cfg.s3 = Some(crate::config::S3Config {
                endpoint: format!("http://127.0.0.1:{}", p.s3_port),
                bucket: "scaidrive".into(),
                access_key: "AK".into(),
                secret_key: "SK".into(),
                region: "us-east-1".into(),
            });
        }
    }
    Ok(cfg)
}

async fn serve_state(state: Arc<crate::AppState>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = crate::api::router(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}

/// `Questions` of the pool's only connection (the SHOW itself counts one).
async fn questions(db: &crate::db::Db) -> anyhow::Result<i64> {
    let (_, v): (String, String) = sqlx::query_as("SHOW SESSION STATUS LIKE 'Questions'")
        .fetch_one(&db.pool)
        .await?;
    Ok(v.parse()?)
}

pub async fn upload(size_mib: u64, parallel: usize, items: usize) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("scaidrive-bench")
        .tempdir_in(std::env::temp_dir())?;
    let size = size_mib << 20;
    println!("scaidrive bench upload: {size_mib} MiB file, {} MiB chunks, {parallel} parallel PUTs, {items}-item folder, data in {}", CHUNK >> 20, tmp.path().display());
    let src = tmp.path().join("source.bin");
    write_source(&src, size)?;
    // Baseline: dd of the same file onto the same disk, fsync at the end. This disk's speed
    // varies run to run, so dd runs three times and the median is the baseline.
    let dd_out = tmp.path().join("dd.out");
    let mut dds = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let st = std::process::Command::new("dd")
            .arg(format!("if={}", src.display()))
            .arg(format!("of={}", dd_out.display()))
            .args(["bs=4M", "conv=fsync", "status=none"])
            .status()
            .context("running dd")?;
        dds.push(t.elapsed());
        if !st.success() {
            bail!("dd failed");
        }
        std::fs::remove_file(&dd_out)?;
    }
    let runs: Vec<String> = dds
        .iter()
        .map(|d| format!("{:.0}", mbps(size, *d)))
        .collect();
    dds.sort();
    let dd = dds[1];

    let mut emb = run_mode(&Mode::Embedded, tmp.path(), &src, size, parallel, items).await?;
    emb.dd = dd;
    let prod = match prod_deps(tmp.path()).await {
        Ok(deps) => {
            let mode = Mode::Production(deps);
            let r = run_mode(&mode, tmp.path(), &src, size, parallel, items).await;
            if let Mode::Production(d) = &mode {
                if let Ok(admin) = crate::db::Db::connect(&d.admin_url, 1).await {
                    let _ = sqlx::query(&format!("DROP DATABASE {}", d.db_name))
                        .execute(&admin.pool)
                        .await;
                }
            }
            Some(r?)
        }
        Err(e) => {
            println!("production mode skipped: {e:#}");
            None
        }
    };
    let dd_mbps = mbps(size, dd);
    println!();
    println!(
        "dd bs=4M conv=fsync (baseline)  {dd_mbps:9.1} MB/s  ({:.2} s; median of 3 runs: {} MB/s)",
        dd.as_secs_f64(),
        runs.join(", ")
    );
    println!(
        "{:<34}{:>22}{:>30}",
        "", "embedded (SQLite+dir)", "production (MariaDB+Redis+S3)"
    );
    let both = |label: &str, f: &dyn Fn(&Figures) -> String| {
        println!(
            "{label:<34}{:>22}{:>30}",
            f(&emb),
            prod.as_ref().map(f).unwrap_or_else(|| "-".into())
        );
    };
    both(&format!("upload (resumable, {parallel}x) MB/s"), &|f| {
        format!(
            "{:.1} ({:.2}x dd)",
            mbps(size, f.up),
            mbps(size, f.up) / dd_mbps
        )
    });
    both("download (streamed) MB/s", &|f| {
        format!("{:.1}", mbps(size, f.down))
    });
    both("complete latency ms (1st / dup)", &|f| {
        format!(
            "{:.1} / {:.1}",
            f.complete1.as_secs_f64() * 1e3,
            f.complete2.as_secs_f64() * 1e3
        )
    });
    both("bytes stored: once / twice", &|f| {
        format!("{} / {}", f.stored_once, f.stored_twice)
    });
    both("children page of 1000 p50/p99 ms", &|f| {
        format!("{:.1} / {:.1} ({} pages)", f.p50_ms, f.p99_ms, f.pages)
    });
    both("MariaDB round trips per chunk PUT", &|f| {
        f.queries
            .map(|(put, _, _)| format!("{put:.1}"))
            .unwrap_or_else(|| "n/a".into())
    });
    both("MariaDB round trips per complete", &|f| {
        f.queries
            .map(|(_, c, n)| format!("{c} (for {n} chunks)"))
            .unwrap_or_else(|| "n/a".into())
    });
    Ok(())
}

async fn run_mode(
    mode: &Mode,
    tmp: &std::path::Path,
    src: &std::path::Path,
    size: u64,
    parallel: usize,
    items: usize,
) -> anyhow::Result<Figures> {
    let name = match mode {
        Mode::Embedded => "embedded",
        Mode::Production(_) => "production",
    };
    let cfg = mode_config(mode, tmp.join(name))?;
    let state = crate::build_state(cfg.clone()).await?;
    crate::db::migrations::migrate(&state.db).await?;
    let base = serve_state(state.clone()).await?;
    let issuer = crate::embedded_issuer(&state.cfg)?;
    let tok = issuer.mint(&scai_auth::MintOptions::new("bench", "bench"));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(parallel * 2)
        .build()?;
    let shares = check(
        http.get(format!("{base}/api/v1/users/me/shares"))
            .bearer_auth(&tok)
            .send()
            .await?,
    )
    .await?;
    let share_id = shares["shares"][0]["id"]
        .as_str()
        .context("share")?
        .to_string();
    let share = check(
        http.get(format!("{base}/api/v1/shares/{share_id}"))
            .bearer_auth(&tok)
            .send()
            .await?,
    )
    .await?;
    let root = share["root_folder_id"]
        .as_str()
        .context("root")?
        .to_string();
    let chunks_dir = match mode {
        Mode::Embedded => state.cfg.chunk_dir().join("chunks"),
        Mode::Production(p) => p.s3_root.join("scaidrive/chunks"),
    };
    let mut fig = Figures::default();
    let (up, complete, file_id) = upload_file(
        &http,
        &base,
        &tok,
        &root,
        "bench-1.bin",
        src,
        size,
        parallel,
    )
    .await?;
    fig.up = up;
    fig.complete1 = complete;
    fig.stored_once = dir_bytes(&chunks_dir);
    let t = Instant::now();
    let r = http
        .get(format!("{base}/api/v1/files/{file_id}/content"))
        .bearer_auth(&tok)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("download: HTTP {}", r.status());
    }
    let mut got = 0u64;
    let mut body = r.bytes_stream();
    while let Some(b) = body.next().await {
        got += b?.len() as u64;
    }
    fig.down = t.elapsed();
    if got != size {
        bail!("downloaded {got} bytes, expected {size}");
    }
    let (_, complete2, _) = upload_file(
        &http,
        &base,
        &tok,
        &root,
        "bench-2.bin",
        src,
        size,
        parallel,
    )
    .await?;
    fig.complete2 = complete2;
    fig.stored_twice = dir_bytes(&chunks_dir);

    if let Mode::Production(_) = mode {
        fig.queries = Some(count_queries(cfg, &tok, &root, src, size).await?);
    }

    // Listing: a folder with `items` children, inserted straight into the database (setup
    // only), then paged through with the API 1000 at a time.
    let folder = check(
        http.post(format!("{base}/api/v1/folders"))
            .bearer_auth(&tok)
            .json(&json!({"parent_id": root, "name": "big"}))
            .send()
            .await?,
    )
    .await?;
    let folder_id = folder["id"].as_str().context("folder")?.to_string();
    fill_folder(&state, &folder_id, &share_id, items).await?;
    let mut lat = Vec::new();
    for _round in 0..2 {
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{base}/api/v1/folders/{folder_id}/children?limit=1000");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let t = Instant::now();
            let page = check(http.get(url).bearer_auth(&tok).send().await?).await?;
            lat.push(t.elapsed());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
    }
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    fig.p50_ms = p(0.5);
    fig.p99_ms = p(0.99);
    fig.pages = lat.len();
    Ok(fig)
}

/// MariaDB round trips of one chunk PUT and of one complete, read from the `Questions`
/// status of a second server whose pool has exactly one connection (so the session counter
/// sees every statement; each SHOW itself counts one, subtracted). New content, chunks PUT
/// sequentially in order.
async fn count_queries(
    mut cfg: Config,
    tok: &str,
    folder: &str,
    src: &std::path::Path,
    size: u64,
) -> anyhow::Result<(f64, i64, usize)> {
    cfg.db_max_connections = 1;
    let state = crate::build_state(cfg).await?;
    let base = serve_state(state.clone()).await?;
    let http = reqwest::Client::new();
    let n = (size as usize).div_ceil(CHUNK).min(16);
    let len = (n * CHUNK) as u64;
    let s = check(
        http.post(format!("{base}/api/v1/uploads"))
            .bearer_auth(tok)
            .json(&json!({"folder_id": folder, "file_name": "bench-count.bin", "file_size": len, "chunk_size": CHUNK}))
            .send()
            .await?,
    )
    .await?;
    let sid = s["session_id"].as_str().context("session id")?.to_string();
    let mut put_total = 0i64;
    for i in 0..n {
        let mut body = read_chunk(src, i, size.max(len)).unwrap_or_else(|_| vec![0u8; CHUNK]);
        body.resize(CHUNK, 0);
        // Distinct from the earlier uploads: fresh chunks, not dedup hits.
        body[0] ^= 0x5a;
        let q0 = questions(&state.db).await?;
        check(
            http.put(format!("{base}/api/v1/uploads/{sid}/chunks/{i}"))
                .bearer_auth(tok)
                .body(body)
                .send()
                .await?,
        )
        .await?;
        put_total += questions(&state.db).await? - q0 - 1;
    }
    let q0 = questions(&state.db).await?;
    check(
        http.post(format!("{base}/api/v1/uploads/{sid}/complete"))
            .bearer_auth(tok)
            .json(&json!({}))
            .send()
            .await?,
    )
    .await?;
    let complete = questions(&state.db).await? - q0 - 1;
    Ok((put_total as f64 / n as f64, complete, n))
}

async fn fill_folder(
    state: &Arc<crate::AppState>,
    folder_id: &str,
    share_id: &str,
    items: usize,
) -> anyhow::Result<()> {
    let ts = crate::db::now();
    let tenant = "tnt_bench";
    let mut tx = state.db.pool.begin().await?;
    for batch in (0..items).collect::<Vec<_>>().chunks(500) {
        let mut sql = String::from("INSERT INTO nodes (tenant_id, id, share_id, parent_id, kind, name, live_name, size, mime_type, owner_id, created_by, created_at, modified_by, modified_at) VALUES ");
        for (k, _) in batch.iter().enumerate() {
            if k > 0 {
                sql.push_str(", ");
            }
            sql.push_str("(?, ?, ?, ?, 'file', ?, ?, 1, 'text/plain', 'usr_bench', 'usr_bench', ?, 'usr_bench', ?)");
        }
        let mut q = sqlx::query(&sql);
        for i in batch {
            let name = format!("file-{i:07}.txt");
            q = q
                .bind(tenant)
                .bind(scai_core::ids::new_id("fil"))
                .bind(share_id)
                .bind(folder_id)
                .bind(name.clone())
                .bind(name)
                .bind(ts)
                .bind(ts);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}
