//! The Redis cache of upload sessions (production mode, `SCAIDRIVE_REDIS_URL`).
//!
//! The database stays the source of truth: a session is written to the DB first and then to
//! Redis, so a session created on one API replica is usable on any other (both read the same
//! DB; Redis only saves the chunk-PUT hot path a query). Only *positive* answers come from
//! Redis: a cached session that looks expired, completed or aborted is re-read from the DB,
//! and completing/aborting/expiring a session deletes its key. Every Redis failure is a cache
//! miss (logged `redis_cache_unavailable`), so losing Redis loses nothing and never fails a
//! request.

use std::time::Duration;

use redis::aio::ConnectionManager;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Time allowed for one Redis round trip before it counts as a miss.
const OP_TIMEOUT: Duration = Duration::from_millis(500);

pub struct RedisCache {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisCache {
    /// Connect lazily: the process starts (and serves from the DB) while Redis is down.
    pub fn new(url: &str, prefix: &str) -> anyhow::Result<RedisCache> {
        // `rediss://` needs rustls' process-wide crypto provider: the job queue, built before
        // this cache in `build_state`, installs it.
        let client =
            redis::Client::open(url).map_err(|e| anyhow::anyhow!("SCAIDRIVE_REDIS_URL: {e}"))?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, cfg)
            .map_err(|e| anyhow::anyhow!("SCAIDRIVE_REDIS_URL: {e}"))?;
        Ok(RedisCache {
            conn,
            prefix: prefix.to_string(),
        })
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.prefix)
    }

    fn warn(e: impl std::fmt::Display) {
        tracing::warn!(event = "redis_cache_unavailable", error = %e);
    }

    pub async fn get<T: DeserializeOwned>(&self, kind: &str, id: &str) -> Option<T> {
        let mut c = self.conn.clone();
        let r: redis::RedisResult<Option<String>> = redis::cmd("GET")
            .arg(self.key(kind, id))
            .query_async(&mut c)
            .await;
        match r {
            Ok(v) => v.and_then(|s| serde_json::from_str(&s).ok()),
            Err(e) => {
                Self::warn(e);
                None
            }
        }
    }

    pub async fn put<T: Serialize>(&self, kind: &str, id: &str, v: &T, ttl: Duration) {
        let Ok(s) = serde_json::to_string(v) else {
            return;
        };
        let mut c = self.conn.clone();
        let r: redis::RedisResult<()> = redis::cmd("SET")
            .arg(self.key(kind, id))
            .arg(s)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut c)
            .await;
        if let Err(e) = r {
            Self::warn(e);
        }
    }

    pub async fn del(&self, kind: &str, id: &str) {
        let mut c = self.conn.clone();
        let r: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(self.key(kind, id))
            .query_async(&mut c)
            .await;
        if let Err(e) = r {
            Self::warn(e);
        }
    }

    /// `SET key 1 NX PX ttl`: true for the one caller that got it (the maintenance scheduler
    /// uses it so N workers enqueue one sweep per interval). A Redis error answers true: the
    /// jobs are idempotent, a duplicate costs only work.
    pub async fn claim(&self, name: &str, ttl: Duration) -> bool {
        let mut c = self.conn.clone();
        let r: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(self.key("lock", name))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut c)
            .await;
        match r {
            Ok(v) => v.is_some(),
            Err(e) => {
                Self::warn(e);
                true
            }
        }
    }

    pub async fn ping(&self) -> bool {
        let mut c = self.conn.clone();
        let r: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
        r.is_ok()
    }
}
