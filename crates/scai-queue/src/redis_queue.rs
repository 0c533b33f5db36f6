//! The Redis backend, shared by every API and worker replica: the *reliable queue* pattern
//! with leases, every state change one Lua script (run with `EVALSHA`, re-sent with `EVAL`
//! after a Redis restart emptied the script cache).
//!
//! Keys, under a prefix `P` (default `scai:q`):
//! - `P:jobs` hash id → job JSON; `P:state` hash with `a:<id>` attempts, `m:<id>` max
//!   attempts, `t:<id>` current lease token, `e:<id>` last error;
//! - per queue `Q`: `P:Q:ready` list, `P:Q:delayed` sorted set (score = due ms),
//!   `P:Q:leased` sorted set (score = lease end ms), `P:Q:dead` list.
//!
//! Why lists + sorted sets + Lua rather than Streams with consumer groups and `XAUTOCLAIM`:
//! retries need a *delay* (backoff), which streams do not have, so a sorted set would be
//! needed anyway; priority across three queues is one script call that tries them in order;
//! depth is `LLEN`/`ZCARD` (a consumer group's backlog is not directly countable); lease
//! ownership is a token, so a consumer whose lease expired cannot ack a job someone else is
//! now running; and nothing accumulates (acked jobs are deleted, no stream trimming).
//!
//! Clock: every lease and due time uses the Redis server's `TIME`, so workers with skewed
//! clocks agree. Expired leases and due retries are moved by `reserve` itself (bounded to
//! 100 per queue per call): no separate reaper process is needed.
//!
//! Failure: losing Redis loses queued and in-flight jobs (the deployment guide accepts that:
//! jobs are re-derivable by the caller). While Redis is unreachable `enqueue`/`reserve`
//! return [`Error::Backend`]; the connection manager reconnects by itself.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::error::{validate_queue, Error, Result};
use crate::job::{DeadJob, Delivery, FailOutcome, Job, NewJob, QueueDepth};
use crate::queue::{now_ms, JobQueue};

/// Connection settings for [`RedisQueue`].
#[derive(Clone, Debug)]
pub struct RedisQueueOptions {
    /// Prefix of every key (`scaidrive:q`). Put a `{hash tag}` in it for Redis Cluster
    /// (scripts touch several keys that must share a slot).
    pub key_prefix: String,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for one command or script to answer.
    pub response_timeout: Duration,
}

impl Default for RedisQueueOptions {
    fn default() -> Self {
        Self {
            key_prefix: "scai:q".into(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
        }
    }
}

struct Scripts {
    enqueue: redis::Script,
    reserve: redis::Script,
    ack: redis::Script,
    fail: redis::Script,
    extend: redis::Script,
    requeue: redis::Script,
}

/// Job queues in Redis.
pub struct RedisQueue {
    conn: ConnectionManager,
    prefix: String,
    scripts: Scripts,
}

fn backend(e: redis::RedisError) -> Error {
    Error::Backend(e.to_string())
}

impl RedisQueue {
    /// Queues at `redis://` or `rediss://` (TLS via rustls) `url`. Connects lazily (the first
    /// call does), so a process starts while Redis is down. Must be called inside Tokio.
    pub fn new(url: &str, options: RedisQueueOptions) -> Result<Self> {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(Error::InvalidUrl(format!(
                "{url:?}: expected redis:// or rediss://"
            )));
        }
        if url.starts_with("rediss://") && rustls::crypto::CryptoProvider::get_default().is_none() {
            // The workspace links ring and aws-lc-rs, so rustls cannot choose by itself.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = redis::Client::open(url).map_err(|e| Error::InvalidUrl(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(backend)?;
        Ok(Self {
            conn,
            prefix: options.key_prefix,
            scripts: Scripts {
                enqueue: redis::Script::new(include_str!("lua/enqueue.lua")),
                reserve: redis::Script::new(include_str!("lua/reserve.lua")),
                ack: redis::Script::new(include_str!("lua/ack.lua")),
                fail: redis::Script::new(include_str!("lua/fail.lua")),
                extend: redis::Script::new(include_str!("lua/extend.lua")),
                requeue: redis::Script::new(include_str!("lua/requeue.lua")),
            },
        })
    }

    fn jobs(&self) -> String {
        format!("{}:jobs", self.prefix)
    }
    fn state(&self) -> String {
        format!("{}:state", self.prefix)
    }
    fn key(&self, queue: &str, part: &str) -> String {
        format!("{}:{queue}:{part}", self.prefix)
    }
}

fn decode(id: &str, body: &str) -> Result<Job> {
    serde_json::from_str(body).map_err(|e| Error::Corrupt {
        id: id.to_string(),
        reason: e.to_string(),
    })
}

#[async_trait]
impl JobQueue for RedisQueue {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn enqueue(&self, queue: &str, job: NewJob) -> Result<String> {
        validate_queue(queue)?;
        let id = ulid::Ulid::new().to_string();
        let stored = Job {
            id: id.clone(),
            queue: queue.to_string(),
            task: job.task,
            payload: job.payload,
            max_attempts: job.max_attempts.max(1),
            enqueued_at_ms: now_ms(),
        };
        let body = serde_json::to_string(&stored).map_err(|e| Error::Corrupt {
            id: id.clone(),
            reason: e.to_string(),
        })?;
        let mut conn = self.conn.clone();
        let _: i64 = self
            .scripts
            .enqueue
            .key(self.jobs())
            .key(self.state())
            .key(self.key(queue, "ready"))
            .key(self.key(queue, "delayed"))
            .arg(&id)
            .arg(body)
            .arg(stored.max_attempts)
            .arg(job.delay.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok(id)
    }

    async fn reserve(&self, queues: &[&str], lease: Duration) -> Result<Option<Delivery>> {
        if queues.is_empty() {
            return Ok(None);
        }
        let mut inv = self.scripts.reserve.prepare_invoke();
        inv.key(self.jobs()).key(self.state());
        for q in queues {
            validate_queue(q)?;
            for part in ["ready", "delayed", "leased", "dead"] {
                inv.key(self.key(q, part));
            }
        }
        let token = ulid::Ulid::new().to_string();
        inv.arg((lease.as_millis() as u64).max(1)).arg(&token);
        let mut conn = self.conn.clone();
        let got: Option<(i64, String, String, i64, i64)> =
            inv.invoke_async(&mut conn).await.map_err(backend)?;
        let Some((_, id, body, attempt, until)) = got else {
            return Ok(None);
        };
        Ok(Some(Delivery {
            job: decode(&id, &body)?,
            attempt: attempt.max(1) as u32,
            lease_until_ms: until.max(0) as u64,
            token,
        }))
    }

    async fn ack(&self, d: &Delivery) -> Result<bool> {
        let mut conn = self.conn.clone();
        let n: i64 = self
            .scripts
            .ack
            .key(self.jobs())
            .key(self.state())
            .key(self.key(&d.job.queue, "leased"))
            .arg(&d.job.id)
            .arg(&d.token)
            .invoke_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok(n == 1)
    }

    async fn fail(
        &self,
        d: &Delivery,
        error: &str,
        retry_in: Option<Duration>,
    ) -> Result<FailOutcome> {
        let delay: i64 = retry_in.map_or(-1, |r| r.as_millis() as i64);
        let mut conn = self.conn.clone();
        let r: String = self
            .scripts
            .fail
            .key(self.state())
            .key(self.key(&d.job.queue, "leased"))
            .key(self.key(&d.job.queue, "delayed"))
            .key(self.key(&d.job.queue, "dead"))
            .arg(&d.job.id)
            .arg(&d.token)
            .arg(error)
            .arg(delay)
            .invoke_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok(match r.as_str() {
            "retry" => FailOutcome::Retrying,
            "dead" => FailOutcome::DeadLettered,
            _ => FailOutcome::LeaseLost,
        })
    }

    async fn extend(&self, d: &Delivery, lease: Duration) -> Result<bool> {
        let mut conn = self.conn.clone();
        let until: i64 = self
            .scripts
            .extend
            .key(self.state())
            .key(self.key(&d.job.queue, "leased"))
            .arg(&d.job.id)
            .arg(&d.token)
            .arg((lease.as_millis() as u64).max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok(until > 0)
    }

    async fn depth(&self, queue: &str) -> Result<QueueDepth> {
        validate_queue(queue)?;
        let mut conn = self.conn.clone();
        let (ready, delayed, leased, dead): (u64, u64, u64, u64) = redis::pipe()
            .llen(self.key(queue, "ready"))
            .zcard(self.key(queue, "delayed"))
            .zcard(self.key(queue, "leased"))
            .llen(self.key(queue, "dead"))
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok(QueueDepth {
            ready,
            delayed,
            leased,
            dead,
        })
    }

    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadJob>> {
        validate_queue(queue)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("LRANGE")
            .arg(self.key(queue, "dead"))
            .arg(0)
            .arg(limit as i64 - 1)
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let (body, attempts, err): (Option<String>, Option<u32>, Option<String>) =
                redis::pipe()
                    .hget(self.jobs(), &id)
                    .hget(self.state(), format!("a:{id}"))
                    .hget(self.state(), format!("e:{id}"))
                    .query_async(&mut conn)
                    .await
                    .map_err(backend)?;
            let Some(body) = body else { continue };
            out.push(DeadJob {
                job: decode(&id, &body)?,
                attempts: attempts.unwrap_or(0),
                last_error: err.unwrap_or_default(),
            });
        }
        Ok(out)
    }

    async fn requeue_dead(&self, queue: &str, id: &str) -> Result<bool> {
        validate_queue(queue)?;
        let mut conn = self.conn.clone();
        let n: i64 = self
            .scripts
            .requeue
            .key(self.state())
            .key(self.key(queue, "dead"))
            .key(self.key(queue, "ready"))
            .arg(id)
            .invoke_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok(n == 1)
    }
}
