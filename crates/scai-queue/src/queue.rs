//! The queue interface both backends implement, and the delivery contract:
//!
//! - **at-least-once**: [`JobQueue::reserve`] leases a job for a time; unless it is acked,
//!   failed or its lease extended in time, it is delivered again (to any consumer).
//! - **priority**: `reserve` takes from the first non-empty queue in the order given.
//! - **retries**: [`JobQueue::fail`] schedules another delivery after a delay while attempts
//!   remain (attempts count deliveries, including ones whose lease expired), then moves the
//!   job to the queue's dead-letter list.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::job::{DeadJob, Delivery, FailOutcome, NewJob, QueueDepth};

/// A set of named job queues.
#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Short name for logs (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// Store a job on `queue`; returns its id. On error nothing was stored.
    async fn enqueue(&self, queue: &str, job: NewJob) -> Result<String>;

    /// Lease the next job from the first of `queues` (priority order) that has one, for
    /// `lease`. Also moves due retries to ready and takes back expired leases. Does not wait.
    async fn reserve(&self, queues: &[&str], lease: Duration) -> Result<Option<Delivery>>;

    /// Done: delete the job. False when the lease was lost (the job may run again).
    async fn ack(&self, delivery: &Delivery) -> Result<bool>;

    /// Failed: retry after `retry_in` if attempts remain (`None` = not retryable), else
    /// dead-letter. `error` is kept for the dead-letter list.
    async fn fail(
        &self,
        delivery: &Delivery,
        error: &str,
        retry_in: Option<Duration>,
    ) -> Result<FailOutcome>;

    /// Push the lease end to `lease` from now (long jobs heartbeat with this). False when
    /// the lease was already lost.
    async fn extend(&self, delivery: &Delivery, lease: Duration) -> Result<bool>;

    /// Counts by state.
    async fn depth(&self, queue: &str) -> Result<QueueDepth>;

    /// Up to `limit` dead-lettered jobs, newest first.
    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadJob>>;

    /// Put a dead-lettered job back on its queue with a fresh attempt count. False when no
    /// such dead job.
    async fn requeue_dead(&self, queue: &str, id: &str) -> Result<bool>;

    /// Wait up to `timeout` for work to maybe be available (the in-process backend wakes
    /// early on enqueue; Redis simply sleeps: consumers poll).
    async fn wait_for_work(&self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
    }
}

/// Milliseconds since the Unix epoch by this process's clock.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
