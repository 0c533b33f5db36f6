//! `scaidrive bench upload`: starts a server on a temp dir (embedded mode, in this process),
//! then measures, beside a `dd bs=4M conv=fsync` baseline of the same file on the same disk:
//! resumable upload throughput (parallel chunk PUTs), download throughput, bytes stored after
//! uploading the same file twice, the latency of `complete`, and p50/p99 of a 1000-item
//! children page in a 100,000-item folder. Figures only; never part of the tests.

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

pub async fn upload(size_mib: u64, parallel: usize, items: usize) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("scaidrive-bench")
        .tempdir_in(std::env::temp_dir())?;
    let size = size_mib << 20;
    let mut cfg = Config::from_env(Role::Serve)?;
    cfg.data_dir = tmp.path().join("data");
    cfg.database_url = format!(
        "sqlite://{}?mode=rwc",
        cfg.data_dir.join("scaidrive.db").display()
    );
    cfg.s3 = None;
    cfg.embedded_auth = true;
    let state = crate::build_state(cfg).await?;
    crate::db::migrations::migrate(&state.db).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = crate::api::router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
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

    println!("scaidrive bench upload: {size_mib} MiB file, {} MiB chunks, {parallel} parallel PUTs, data in {}", CHUNK >> 20, tmp.path().display());
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
    let dd_mbps = mbps(size, dd);

    let (up, complete, file_id) = upload_file(
        &http,
        &base,
        &tok,
        &root,
        "bench-1.bin",
        &src,
        size,
        parallel,
    )
    .await?;
    let up_mbps = mbps(size, up);
    let chunks_dir = state.cfg.chunk_dir().join("chunks");
    let stored_once = dir_bytes(&chunks_dir);

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
    let down = t.elapsed();
    if got != size {
        bail!("downloaded {got} bytes, expected {size}");
    }
    let down_mbps = mbps(size, down);

    let (_, complete2, _) = upload_file(
        &http,
        &base,
        &tok,
        &root,
        "bench-2.bin",
        &src,
        size,
        parallel,
    )
    .await?;
    let stored_twice = dir_bytes(&chunks_dir);

    println!();
    println!(
        "dd bs=4M conv=fsync        {dd_mbps:9.1} MB/s  ({:.2} s; median of 3 runs: {} MB/s)",
        dd.as_secs_f64(),
        runs.join(", ")
    );
    println!(
        "upload (resumable, {parallel}x)    {up_mbps:9.1} MB/s  ({:.2} s)  ratio to dd {:.2}",
        up.as_secs_f64(),
        up_mbps / dd_mbps
    );
    println!(
        "download (streamed)        {down_mbps:9.1} MB/s  ({:.2} s)  ratio to upload {:.2}",
        down.as_secs_f64(),
        down_mbps / up_mbps
    );
    println!(
        "complete latency           {:9.1} ms (first upload), {:.1} ms (duplicate upload)",
        complete.as_secs_f64() * 1e3,
        complete2.as_secs_f64() * 1e3
    );
    println!(
        "bytes stored: one upload {stored_once}, same file twice {stored_twice} ({})",
        if stored_once == stored_twice {
            "deduplicated: equal to one copy"
        } else {
            "NOT deduplicated"
        }
    );

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
    let t = Instant::now();
    fill_folder(&state, &folder_id, &share_id, items).await?;
    let fill = t.elapsed();
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
    println!("children page of 1000 in a {items}-item folder: p50 {:.1} ms, p99 {:.1} ms over {} pages (setup {:.1} s)", p(0.5), p(0.99), lat.len(), fill.as_secs_f64());
    Ok(())
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
