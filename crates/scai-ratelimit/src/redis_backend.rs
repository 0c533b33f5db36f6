//! The Redis backend, shared by every API replica: one Lua script (run with `EVALSHA`,
//! falling back to `EVAL` after a Redis restart flushed the script cache) reads and bumps
//! the fixed-window counters of all dimensions in one atomic step.
//!
//! Algorithm: a *sliding window counter* (two fixed-window counters per key, the previous
//! one weighted by how much of it still overlaps the sliding window), not a sorted-set log.
//! Why: it needs O(1) memory and work per key whatever the limit (a log of a tenant at
//! 50 000 units/min would hold tens of thousands of members and sum their costs on every
//! request), a cost is a plain `INCRBY`, and its error — it assumes the previous window's
//! traffic was evenly spread — is small and only matters for bursts at a window boundary.
//! The clock is the Redis server's `TIME`, so replicas with skewed clocks still agree.
//!
//! Connection: a lazily connecting `redis::aio::ConnectionManager` with short timeouts; it
//! reconnects by itself, so the limiter recovers when Redis comes back without a restart.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::backend::{Backend, Taken};
use crate::window::WindowCounts;
use crate::{Dimension, Error};

/// Connection settings for [`RedisBackend`].
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Prefix of every key this limiter writes (`scaidrive:rl`). Put a `{hash tag}` in it to
    /// run on Redis Cluster (the script touches several keys and needs them in one slot).
    pub key_prefix: String,
    /// Time allowed to open a connection. While Redis is down, a check waits at most about
    /// this long before failing open.
    pub connect_timeout: Duration,
    /// Time allowed for one script call to answer.
    pub response_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            key_prefix: "scai:rl".into(),
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_millis(500),
        }
    }
}

/// Counters in Redis.
pub struct RedisBackend {
    conn: ConnectionManager,
    prefix: String,
    script: redis::Script,
}

impl RedisBackend {
    /// A backend for `redis://` or `rediss://` (TLS via rustls) `url`. Does not connect yet
    /// (the first check does), so a service starts even while Redis is down. Must be called
    /// inside a Tokio runtime.
    pub fn new(url: &str, options: RedisOptions) -> Result<Self, Error> {
        let conn = connect_lazy(url, options.connect_timeout, options.response_timeout)?;
        Ok(Self {
            conn,
            prefix: options.key_prefix,
            script: redis::Script::new(include_str!("check.lua")),
        })
    }
}

/// Parse `url` and build a lazily connecting, self-reconnecting connection manager.
pub(crate) fn connect_lazy(
    url: &str,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> Result<ConnectionManager, Error> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(Error::InvalidUrl(format!(
            "{url:?}: expected redis:// or rediss://"
        )));
    }
    if url.starts_with("rediss://") {
        install_crypto_provider();
    }
    let client = redis::Client::open(url).map_err(|e| Error::InvalidUrl(e.to_string()))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(response_timeout))
        // Few, quick reconnect attempts per failure: a request must not hang on an outage;
        // the next request triggers the next attempt.
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(200));
    ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|e| Error::Backend(e.to_string()))
}

/// rustls needs a process-wide crypto provider; the workspace links both ring and aws-lc-rs,
/// so none is chosen automatically. Install ring unless the program installed one already.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn take(
        &self,
        checks: &[(Dimension, &str, u64)],
        cost: u64,
        window_ms: u64,
        now_ms: Option<u64>,
    ) -> Result<Taken, Error> {
        let mut inv = self.script.prepare_invoke();
        for (d, k, _) in checks {
            inv.key(format!("{}:{}:{}", self.prefix, d.as_str(), k));
        }
        inv.arg(cost).arg(window_ms);
        match now_ms {
            Some(n) => inv.arg(n),
            None => inv.arg(""),
        };
        for (_, _, limit) in checks {
            inv.arg(*limit);
        }
        let mut conn = self.conn.clone();
        let raw: Vec<i64> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| Error::Backend(e.to_string()))?;
        if raw.len() != 2 + 2 * checks.len() {
            return Err(Error::Backend(format!(
                "rate-limit script returned {} values for {} checks",
                raw.len(),
                checks.len()
            )));
        }
        let counts = raw[2..]
            .chunks(2)
            .map(|c| WindowCounts {
                prev: c[0].max(0) as u64,
                curr: c[1].max(0) as u64,
            })
            .collect();
        Ok(Taken {
            now_ms: raw[1].max(0) as u64,
            counted: raw[0] == 1,
            counts,
        })
    }
}
