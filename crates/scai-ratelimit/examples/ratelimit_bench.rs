//! Throughput of `Limiter::check` (three dimensions, cost 1) on both backends, beside a
//! baseline measured in the same run: raw `INCR` round trips to the same Redis.
//! `cargo run --release -p scai-ratelimit --example ratelimit_bench [redis-url]`

use std::time::{Duration, Instant};

use scai_ratelimit::{Dimension, Limiter, LimiterConfig, RedisOptions};

const N: usize = 20_000;
const TASKS: usize = 32;

async fn run_checks(l: &Limiter, concurrent: bool) -> f64 {
    let start = Instant::now();
    if concurrent {
        let mut set = tokio::task::JoinSet::new();
        for t in 0..TASKS {
            let l = l.clone();
            set.spawn(async move {
                for i in 0..N / TASKS {
                    let tok = format!("tok{}", (t * 7 + i) % 100);
                    let checks = [
                        (Dimension::Token, tok.as_str(), u64::MAX / 4),
                        (Dimension::User, "user", u64::MAX / 4),
                        (Dimension::Tenant, "tenant", u64::MAX / 4),
                    ];
                    assert!(l.check(&checks, 1).await.allowed);
                }
            });
        }
        while set.join_next().await.is_some() {}
    } else {
        for i in 0..N {
            let tok = format!("tok{}", i % 100);
            let checks = [
                (Dimension::Token, tok.as_str(), u64::MAX / 4),
                (Dimension::User, "user", u64::MAX / 4),
                (Dimension::Tenant, "tenant", u64::MAX / 4),
            ];
            assert!(l.check(&checks, 1).await.allowed);
        }
    }
    N as f64 / start.elapsed().as_secs_f64()
}

async fn run_incr(conn: &redis::aio::ConnectionManager, key: &str, concurrent: bool) -> f64 {
    let start = Instant::now();
    let tasks = if concurrent { TASKS } else { 1 };
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (mut c, key) = (conn.clone(), key.to_string());
        set.spawn(async move {
            for _ in 0..N / tasks {
                let _: i64 = redis::cmd("INCR")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
                    .unwrap();
            }
        });
    }
    while set.join_next().await.is_some() {}
    N as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let prefix = format!("scai-rl-bench:{}", std::process::id());
    let config = LimiterConfig {
        window: Duration::from_secs(60),
        metric_prefix: "bench".into(),
    };
    let memory = Limiter::in_memory(config.clone());
    let redis_l = Limiter::redis(
        &url,
        RedisOptions {
            key_prefix: prefix.clone(),
            ..RedisOptions::default()
        },
        config,
    )
    .expect("redis url");
    assert!(
        !redis_l
            .check(&[(Dimension::Token, "warm", 10)], 1)
            .await
            .degraded,
        "Redis unreachable at {url}"
    );
    let client = redis::Client::open(url.as_str()).unwrap();
    let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let base_key = format!("{prefix}:baseline");

    println!("scai-ratelimit bench: {N} checks, 3 dimensions each, cost 1 ({TASKS} tasks when concurrent)");
    for concurrent in [false, true] {
        let mode = if concurrent {
            "concurrent"
        } else {
            "sequential"
        };
        let base = run_incr(&conn, &base_key, concurrent).await;
        let m = run_checks(&memory, concurrent).await;
        let r = run_checks(&redis_l, concurrent).await;
        println!("{mode:>10}: baseline raw INCR {base:>9.0}/s | memory limiter {m:>10.0} checks/s | redis limiter {r:>9.0} checks/s ({:.2}x baseline)", r / base);
    }
    let mut c = conn.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut c)
            .await
            .unwrap();
    }
}
