//! Throughput of enqueue and reserve+ack on both backends, beside a baseline measured in the
//! same run: raw `LPUSH` / `RPOP` round trips to the same Redis.
//! `cargo run --release -p scai-queue --example queue_bench [redis-url]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use scai_queue::{
    JobQueue, MemoryQueue, NewJob, RedisQueue, RedisQueueOptions, DEFAULT_QUEUES, HIGH, LOW,
};

const N: usize = 5_000;

async fn run_queue(q: &Arc<dyn JobQueue>) -> (f64, f64) {
    let start = Instant::now();
    for i in 0..N {
        let queue = if i % 2 == 0 { HIGH } else { LOW };
        q.enqueue(
            queue,
            NewJob::new("bench", serde_json::json!({"file_id": i})),
        )
        .await
        .unwrap();
    }
    let enq = N as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut n = 0;
    while let Some(d) = q
        .reserve(&DEFAULT_QUEUES, Duration::from_secs(60))
        .await
        .unwrap()
    {
        assert!(q.ack(&d).await.unwrap());
        n += 1;
    }
    assert_eq!(n, N);
    (enq, N as f64 / start.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let prefix = format!("scai-q-bench:{}", std::process::id());
    let memory: Arc<dyn JobQueue> = Arc::new(MemoryQueue::new());
    let redis_q: Arc<dyn JobQueue> = Arc::new(
        RedisQueue::new(
            &url,
            RedisQueueOptions {
                key_prefix: prefix.clone(),
                ..RedisQueueOptions::default()
            },
        )
        .unwrap(),
    );
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let key = format!("{prefix}:baseline");
    let payload = serde_json::json!({"file_id": 1}).to_string();
    let start = Instant::now();
    for _ in 0..N {
        let _: i64 = redis::cmd("LPUSH")
            .arg(&key)
            .arg(&payload)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let base_push = N as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 0..N {
        let _: Option<String> = redis::cmd("RPOP")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let base_pop = N as f64 / start.elapsed().as_secs_f64();
    let (me, mr) = run_queue(&memory).await;
    let (re, rr) = run_queue(&redis_q).await;
    println!("scai-queue bench: {N} jobs over high+low, one sequential client");
    println!("baseline raw Redis: LPUSH {base_push:>8.0}/s   RPOP {base_pop:>8.0}/s");
    println!("memory queue:       enqueue {me:>8.0}/s  reserve+ack {mr:>8.0}/s");
    println!("redis queue:        enqueue {re:>8.0}/s  reserve+ack {rr:>8.0}/s  (reserve+ack = 2 round trips)");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}
