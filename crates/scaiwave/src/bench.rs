//! `scaiwave bench`: figures, not a test. Spawns `scaiwave serve` (SQLite, in-process broker)
//! as a child process and drives it with real WebSocket and HTTP clients from this process:
//! - resident memory per idle connection (server RSS before/after N idle sockets),
//! - fan-out in one room with M connected members: deliveries/s, p50/p99 send→receive,
//! - fan-out across R rooms of 10: deliveries/s, p50/p99,
//! - catch-up of a client B events behind: `/v1/sync` pages and the stream's `since` replay.
//!
//! Baseline, measured in the same run: a bare axum WebSocket broadcast (tokio broadcast
//! channel, no auth, no database, no ordering) with the same one-room fan-out shape.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::StreamExt;
use parking_lot::Mutex;
use scai_auth::{EmbeddedIssuer, MintOptions};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Latencies and counts per scenario tag.
#[derive(Default)]
struct Stats {
    lat: Mutex<Vec<u64>>,
    count: AtomicU64,
}

fn pct(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] as f64 / 1000.0
}

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Bench {
    http: reqwest::Client,
    base: String,
    ws: String,
    issuer: EmbeddedIssuer,
    tenant: String,
}

impl Bench {
    fn token(&self, user: &str) -> String {
        let mut o = MintOptions::new(&self.tenant, user);
        o.ttl = Duration::from_secs(6 * 3600);
        self.issuer.mint(&o)
    }

    async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await?;
        let st = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(st.is_success(), "{path}: {st} {v}");
        Ok(v)
    }

    async fn room(&self, owner: &str, name: &str, members: &[String]) -> anyhow::Result<String> {
        let t = self.token(owner);
        let v = self
            .call(
                &t,
                reqwest::Method::POST,
                "/v1/rooms",
                Some(json!({"name": name, "room_type": "public"})),
            )
            .await?;
        let id = v["data"]["id"].as_str().context("room id")?.to_string();
        let joins = futures::stream::iter(members.iter().filter(|m| m.as_str() != owner).cloned())
            .map(|m| {
                let t = self.token(&m);
                let path = format!("/v1/rooms/{id}/join");
                async move { self.call(&t, reqwest::Method::POST, &path, None).await }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        for j in joins {
            j?;
        }
        Ok(id)
    }
}

/// Open one socket per user; each reader records latency of message frames by tag.
async fn connect_all(
    b: &Bench,
    users: &[String],
    stats: Arc<Vec<Stats>>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let results = futures::stream::iter(users.iter().cloned())
        .map(|u| {
            let url = format!("{}/v1/stream?token={}", b.ws, b.token(&u));
            let stats = stats.clone();
            async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
                // Wait for the hello so the session is registered before traffic starts.
                while let Some(m) = ws.next().await {
                    if let Message::Text(_) = m? {
                        break;
                    }
                }
                Ok::<_, anyhow::Error>(tokio::spawn(async move {
                    while let Some(Ok(m)) = ws.next().await {
                        if let Message::Text(t) = m {
                            let s = t.as_str();
                            if !s.contains("\"bench\"") {
                                continue;
                            }
                            if let Ok(v) = serde_json::from_str::<Value>(s) {
                                let c = &v["content"];
                                if let (Some(tag), Some(sent)) =
                                    (c["tag"].as_u64(), c["t"].as_u64())
                                {
                                    let st = &stats[tag as usize];
                                    st.lat.lock().push(now_us().saturating_sub(sent));
                                    st.count.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                }))
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect()
}

async fn wait_count(st: &Stats, expected: u64, limit: Duration) -> Duration {
    let start = Instant::now();
    while st.count.load(Ordering::Relaxed) < expected && start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

fn report(name: &str, st: &Stats, expected: u64, elapsed: Duration) {
    let got = st.count.load(Ordering::Relaxed);
    let mut lat = st.lat.lock().clone();
    println!(
        "{name:<44} deliveries {got}/{expected}  {:>10.0} deliveries/s  p50 {:>8.2} ms  p99 {:>8.2} ms",
        got as f64 / elapsed.as_secs_f64(),
        pct(&mut lat, 0.50),
        pct(&mut lat, 0.99)
    );
}

/// Send `per_room` messages into each room with `conc` concurrent senders; returns the time
/// from the first send until every expected delivery arrived.
async fn blast(
    b: &Bench,
    rooms: &[(String, String)],
    per_room: usize,
    conc: usize,
    st: &Stats,
    tag: u64,
    expected: u64,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let jobs: Vec<(String, String)> = (0..per_room).flat_map(|_| rooms.iter().cloned()).collect();
    let res = futures::stream::iter(jobs)
        .map(|(room, sender)| {
            let t = b.token(&sender);
            async move {
                let body = json!({"content": {"msgtype": "swp.text", "body": "bench", "bench": true, "tag": tag, "t": now_us()}});
                b.call(&t, reqwest::Method::POST, &format!("/v1/rooms/{room}/send"), Some(body)).await
            }
        })
        .buffer_unordered(conc)
        .collect::<Vec<_>>()
        .await;
    for r in res {
        r?;
    }
    wait_count(st, expected, Duration::from_secs(120)).await;
    Ok(start.elapsed())
}

pub async fn run(members: usize, rooms: usize, idle: usize, backlog: usize) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let issuer = EmbeddedIssuer::load_or_create(&dir, "scaiwave-embedded:localhost")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = std::process::Command::new(std::env::current_exe()?)
        .arg("serve")
        .env("SCAIWAVE_DATA_DIR", &dir)
        .env("SCAIWAVE_BIND", format!("127.0.0.1:{port}"))
        .env("SCAIWAVE_RATE_LIMIT_PER_SEC", "1000000")
        .env("SCAIWAVE_RATE_LIMIT_BURST", "1000000")
        .env("SCAIWAVE_LOG_LEVEL", "WARN")
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let child = Child(child);
    let pid = child.0.id();
    let b = Bench {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?,
        base: format!("http://127.0.0.1:{port}"),
        ws: format!("ws://127.0.0.1:{port}"),
        issuer,
        tenant: "bench".into(),
    };
    for _ in 0..200 {
        if b.http
            .get(format!("{}/health", b.base))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "scaiwave bench: server pid {pid}, SQLite + in-process broker, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    // Users: u0..u{n}; the first `members` share the big room; groups of 10 share a small room.
    let n_users = idle.max(members).max(rooms * 10);
    let users: Vec<String> = (0..n_users).map(|i| format!("u{i}")).collect();
    let t0 = Instant::now();
    let big = b.room(&users[0], "big", &users[..members]).await?;
    let mut small = Vec::new();
    for r in 0..rooms {
        let group = &users[r * 10..r * 10 + 10];
        small.push((
            b.room(&group[0], &format!("r{r}"), group).await?,
            group[0].clone(),
        ));
    }
    println!(
        "setup: {} users, 1 room of {members}, {rooms} rooms of 10 in {:.1} s",
        n_users,
        t0.elapsed().as_secs_f64()
    );

    // Idle memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = rss_kb(pid);
    let stats: Arc<Vec<Stats>> = Arc::new((0..4).map(|_| Stats::default()).collect());
    let t0 = Instant::now();
    let _readers = connect_all(&b, &users[..n_users], stats.clone()).await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss1 = rss_kb(pid);
    println!(
        "idle: {n_users} connections opened in {:.1} s; server RSS {} MiB -> {} MiB = {:.1} KiB per connection (Centrifugo reference ~35 KB)",
        t0.elapsed().as_secs_f64(),
        rss0 / 1024,
        rss1 / 1024,
        (rss1.saturating_sub(rss0)) as f64 / n_users as f64
    );

    // One room, many members.
    let msgs = 100;
    let expected = (msgs * members) as u64;
    let el = blast(
        &b,
        &[(big.clone(), users[0].clone())],
        msgs,
        4,
        &stats[0],
        0,
        expected,
    )
    .await?;
    report(
        &format!("1 room x {members} members, {msgs} msgs"),
        &stats[0],
        expected,
        el,
    );

    // Many small rooms.
    let per_room = 5;
    let expected = (per_room * rooms * 10) as u64;
    let el = blast(&b, &small, per_room, 32, &stats[1], 1, expected).await?;
    report(
        &format!("{rooms} rooms x 10 members, {per_room} msgs each"),
        &stats[1],
        expected,
        el,
    );

    // Catch-up of a client far behind.
    catch_up(&b, &dir, backlog).await?;

    // Baseline: bare axum WebSocket broadcast with the same one-room shape.
    baseline(members, msgs).await?;
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("scaiwave-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

async fn catch_up(b: &Bench, dir: &Path, backlog: usize) -> anyhow::Result<()> {
    // Write the backlog straight into the server's database (same schema and counter) in
    // large transactions: the point is reading it back, not writing it.
    let db = crate::db::Db::connect(&format!(
        "sqlite://{}?mode=rwc",
        dir.join("scaiwave.sqlite3").display()
    ))
    .await?;
    let reader = "behind";
    let t = b.token(reader);
    let room = b.room(reader, "backlog", &[reader.to_string()]).await?;
    let t0 = Instant::now();
    let mut left = backlog;
    while left > 0 {
        let n = left.min(5000);
        let mut tx = db.begin().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        for i in 0..n {
            crate::db::append_event(
                &mut tx,
                "tnt_bench",
                &crate::db::Draft {
                    room_id: room.clone(),
                    sender_id: format!("usr_{reader}"),
                    event_type: crate::events::MESSAGE,
                    target_id: None,
                    content: json!({"msgtype": "swp.text", "body": format!("backlog {i}")}),
                    event_uuid: None,
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        tx.commit().await?;
        left -= n;
    }
    println!(
        "catch-up: wrote {backlog} events in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let start_pos = 0;
    let t0 = Instant::now();
    let mut since = start_pos;
    let mut got = 0usize;
    loop {
        let v = b
            .call(
                &t,
                reqwest::Method::GET,
                &format!("/v1/sync?since={since}&limit=500&timeout=0"),
                None,
            )
            .await?;
        got += v["data"]["events"].as_array().map(Vec::len).unwrap_or(0);
        since = v["data"]["next_cursor"].as_u64().unwrap_or(since);
        if !v["data"]["has_more"].as_bool().unwrap_or(false) {
            break;
        }
    }
    let el = t0.elapsed();
    println!(
        "{:<44} {got} events in {:.2} s = {:>10.0} events/s",
        "catch-up via /v1/sync (limit 500)",
        el.as_secs_f64(),
        got as f64 / el.as_secs_f64()
    );
    let t0 = Instant::now();
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}/v1/stream?token={t}&since=0", b.ws).as_str())
            .await?;
    let mut n = 0usize;
    let target = got;
    while n < target + 1 {
        match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => n += 1,
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    let el = t0.elapsed();
    println!(
        "{:<44} {} events in {:.2} s = {:>10.0} events/s",
        "catch-up via /v1/stream?since=0",
        n.saturating_sub(1),
        el.as_secs_f64(),
        n.saturating_sub(1) as f64 / el.as_secs_f64()
    );
    let _ = ws.close(None).await;
    Ok(())
}

async fn baseline(members: usize, msgs: usize) -> anyhow::Result<()> {
    use axum::extract::ws::{Message as AMsg, WebSocketUpgrade};
    use axum::routing::{get, post};
    let (tx, _) = tokio::sync::broadcast::channel::<String>(4096);
    let tx2 = tx.clone();
    let app = axum::Router::new()
        .route(
            "/ws",
            get(move |ws: WebSocketUpgrade| {
                let mut rx = tx2.subscribe();
                async move {
                    ws.on_upgrade(move |mut s| async move {
                        let _ = s.send(AMsg::Text("hello".into())).await;
                        while let Ok(m) = rx.recv().await {
                            if s.send(AMsg::Text(m.into())).await.is_err() {
                                break;
                            }
                        }
                    })
                }
            }),
        )
        .route(
            "/send",
            post(move |body: String| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(body);
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let stats = Arc::new(Stats::default());
    let mut readers = Vec::new();
    for _ in 0..members {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws").as_str()).await?;
        ws.next().await;
        let st = stats.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(Message::Text(t))) = ws.next().await {
                if let Ok(v) = serde_json::from_str::<Value>(t.as_str()) {
                    if let Some(sent) = v["content"]["t"].as_u64() {
                        st.lat.lock().push(now_us().saturating_sub(sent));
                        st.count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let http = reqwest::Client::new();
    let start = Instant::now();
    let sends = futures::stream::iter(0..msgs)
        .map(|_| {
            let http = http.clone();
            async move {
                let body = json!({"type": "swp.room.message", "content": {"msgtype": "swp.text", "body": "bench", "t": now_us()}}).to_string();
                http.post(format!("http://{addr}/send")).body(body).send().await
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    for s in sends {
        s?;
    }
    let expected = (members * msgs) as u64;
    wait_count(&stats, expected, Duration::from_secs(60)).await;
    report(
        &format!("BASELINE bare axum WS broadcast x {members}"),
        &stats,
        expected,
        start.elapsed(),
    );
    for r in readers {
        r.abort();
    }
    server.abort();
    Ok(())
}
