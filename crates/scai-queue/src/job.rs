//! Jobs and what a queue reports about them: the stored [`Job`], an enqueue request
//! ([`NewJob`]), a leased [`Delivery`], depths and dead letters.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default number of deliveries before a job is dead-lettered.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// A job as stored: a task name and a JSON payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Unique id (a ULID) assigned at enqueue.
    pub id: String,
    /// The queue it was enqueued on.
    pub queue: String,
    /// What to do (`vectorize_file`, `recompute_quota`, ...); the handler dispatches on it.
    pub task: String,
    /// Task arguments.
    pub payload: serde_json::Value,
    /// Deliveries allowed before dead-lettering (at least 1).
    pub max_attempts: u32,
    /// Enqueue time, milliseconds since the Unix epoch.
    pub enqueued_at_ms: u64,
}

/// An enqueue request.
#[derive(Clone, Debug)]
pub struct NewJob {
    /// Task name.
    pub task: String,
    /// Task arguments.
    pub payload: serde_json::Value,
    /// Deliveries allowed before dead-lettering (0 is treated as 1).
    pub max_attempts: u32,
    /// Do not deliver before this much time has passed.
    pub delay: Duration,
}

impl NewJob {
    /// A job with [`DEFAULT_MAX_ATTEMPTS`] and no delay.
    pub fn new(task: impl Into<String>, payload: serde_json::Value) -> Self {
        Self {
            task: task.into(),
            payload,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            delay: Duration::ZERO,
        }
    }

    /// Set the number of deliveries before dead-lettering.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Deliver no earlier than `delay` from now.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A job leased to one consumer until `lease_until_ms`. Ack it, fail it, or extend the
/// lease before it runs out; otherwise it is handed to another consumer.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The job.
    pub job: Job,
    /// Which delivery this is (1 for the first).
    pub attempt: u32,
    /// When the lease ends, milliseconds since the Unix epoch (backend clock).
    pub lease_until_ms: u64,
    /// Proves this consumer holds the lease; a stale consumer's ack is refused.
    pub(crate) token: String,
}

/// What [`crate::JobQueue::fail`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOutcome {
    /// Scheduled for another delivery after the retry delay.
    Retrying,
    /// Out of attempts (or not retryable): moved to the dead-letter list.
    DeadLettered,
    /// This consumer no longer held the lease (it expired and the job was handed on);
    /// nothing was changed.
    LeaseLost,
}

/// How many jobs a queue holds, by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Ready to be taken now.
    pub ready: u64,
    /// Waiting for a delay or retry backoff to pass.
    pub delayed: u64,
    /// Taken by a consumer, lease running.
    pub leased: u64,
    /// Dead-lettered.
    pub dead: u64,
}

impl QueueDepth {
    /// Jobs waiting for a worker (`ready + delayed`): the value of the
    /// `<prefix>_queue_depth{queue}` gauge.
    pub fn waiting(&self) -> u64 {
        self.ready + self.delayed
    }
}

/// A dead-lettered job with why it died.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadJob {
    /// The job.
    pub job: Job,
    /// Deliveries it had.
    pub attempts: u32,
    /// The last error reported (or `lease expired`).
    pub last_error: String,
}
