//! # scai-queue
//!
//! Job queues with **at-least-once** delivery for background work (ScaiDrive's `high`,
//! `medium`, `low`; any names for ScaiWave), a worker loop and the queue metrics.
//!
//! ```no_run
//! # async fn demo() -> Result<(), scai_queue::Error> {
//! use std::sync::Arc;
//! use scai_queue::{HandlerFn, JobError, JobQueue, NewJob, RedisQueue, RedisQueueOptions, Worker, WorkerConfig, HIGH};
//! let q: Arc<dyn JobQueue> = Arc::new(RedisQueue::new("redis://127.0.0.1:6379/0", RedisQueueOptions::default())?);
//! q.enqueue(HIGH, NewJob::new("vectorize_file", serde_json::json!({"file_id": "fil_1"}))).await?;
//! let handler = Arc::new(HandlerFn(|job: scai_queue::Job, _attempt: u32| async move {
//!     match job.task.as_str() {
//!         "vectorize_file" => Ok(()),
//!         other => Err(JobError::Fatal(format!("unknown task {other}"))),
//!     }
//! }));
//! Worker::new(q, WorkerConfig::default()).run(handler, scai_core_like_shutdown()).await;
//! # Ok(()) }
//! # async fn scai_core_like_shutdown() {}
//! ```
//!
//! ## Delivery model
//! Every job is a task name plus a JSON payload. [`JobQueue::reserve`] *leases* the next job
//! of the first non-empty queue in the priority order given. The consumer then
//! - [`JobQueue::ack`]s it (deleted), or
//! - [`JobQueue::fail`]s it: retried after a backoff while attempts remain, else moved to
//!   the queue's dead-letter list (inspect with [`JobQueue::dead_letters`], put back with
//!   [`JobQueue::requeue_dead`]), or
//! - dies: when the lease runs out the job is delivered again to any consumer (an expired
//!   lease counts as an attempt). A consumer whose lease expired can no longer ack: each
//!   lease carries a token.
//!
//! Long jobs keep their lease with [`JobQueue::extend`]; the [`Worker`] does that for you
//! (heartbeat every third of the lease). So while leases hold, no two workers run the same
//! job at once; handlers must still be idempotent (a worker that stalls longer than its
//! lease, or dies after the work but before the ack, causes a second run).
//!
//! ## Backends
//! - [`MemoryQueue`]: in-process, for the embedded `serve` mode (wakes idle workers on
//!   enqueue).
//! - [`RedisQueue`] (feature `redis`, default): the reliable-queue pattern (lists + sorted
//!   sets of leases and delays, each transition one Lua script); see its module docs for why
//!   not Streams.
//!
//! ## Failure behaviour
//! Redis is treated as ephemeral, as the deployment guide says: losing it loses queued and
//! in-flight jobs, so callers must be able to re-derive them (e.g. vectorization re-scans
//! files not yet indexed, quota recompute runs periodically). While Redis is unreachable
//! `enqueue` returns [`Error::Backend`] and workers log `queue_backend_unavailable` and
//! retry with backoff (up to 5 s); the connection recovers by itself.
//!
//! ## Metrics
//! See [`metrics`]: `<p>_queue_depth{queue}`, `<p>_queue_jobs_processed_total{queue,result}`,
//! `<p>_queue_job_duration_seconds{queue,task}`, with `p` the configured prefix.

mod error;
mod job;
mod memory;
pub mod metrics;
mod queue;
#[cfg(feature = "redis")]
mod redis_queue;
mod worker;

pub use error::{Error, Result};
pub use job::{DeadJob, Delivery, FailOutcome, Job, NewJob, QueueDepth, DEFAULT_MAX_ATTEMPTS};
pub use memory::MemoryQueue;
pub use metrics::{ProcessedResult, QueueMetrics};
pub use queue::JobQueue;
#[cfg(feature = "redis")]
pub use redis_queue::{RedisQueue, RedisQueueOptions};
pub use worker::{Handler, HandlerFn, JobError, RetryPolicy, Worker, WorkerConfig};

/// Vectorization, inline DLP.
pub const HIGH: &str = "high";
/// Connector sync.
pub const MEDIUM: &str = "medium";
/// Quota recompute, retention sweeps.
pub const LOW: &str = "low";
/// ScaiDrive's queues in priority order.
pub const DEFAULT_QUEUES: [&str; 3] = [HIGH, MEDIUM, LOW];
