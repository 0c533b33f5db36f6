//! The worker loop: `concurrency` slots, each leasing the next job from its queues in
//! priority order, running the handler while a heartbeat extends the lease, then acking or
//! failing it (retry with exponential backoff, or dead-letter). Handler panics count as
//! retryable failures. On the shutdown signal no new job is taken and in-flight jobs finish.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::Rng;
use tokio::sync::watch;

use crate::job::{Delivery, FailOutcome, Job};
use crate::metrics::{ProcessedResult, QueueMetrics};
use crate::queue::JobQueue;

/// How a handler failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobError {
    /// Worth another attempt (a dependency was down, a timeout).
    Retry(String),
    /// Will never succeed (bad payload): dead-letter right away.
    Fatal(String),
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobError::Retry(m) => write!(f, "retryable: {m}"),
            JobError::Fatal(m) => write!(f, "fatal: {m}"),
        }
    }
}

/// What runs jobs. Dispatch on [`Job::task`]. Must be idempotent: delivery is at-least-once.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Run one job; `attempt` is 1 on the first delivery.
    async fn handle(&self, job: Job, attempt: u32) -> Result<(), JobError>;
}

/// A handler from an async closure.
pub struct HandlerFn<F>(pub F);

#[async_trait]
impl<F, Fut> Handler for HandlerFn<F>
where
    F: Fn(Job, u32) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    async fn handle(&self, job: Job, attempt: u32) -> Result<(), JobError> {
        (self.0)(job, attempt).await
    }
}

/// Exponential backoff between attempts: `base * 2^(attempt-1)`, capped at `max`, with
/// ±20 % jitter so failed jobs do not retry in lockstep.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Delay after the first failure.
    pub base: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(2),
            max: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let d = self.base.saturating_mul(1u32 << exp).min(self.max);
        let jitter = rand::thread_rng().gen_range(0.8..=1.2);
        d.mul_f64(jitter).min(self.max)
    }
}

/// Worker settings.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Queues in priority order (a worker with affinity lists only its own).
    pub queues: Vec<String>,
    /// Jobs run at the same time.
    pub concurrency: usize,
    /// Lease per delivery; the heartbeat extends it every third of it while the handler runs.
    pub lease: Duration,
    /// How long an idle slot waits before asking again (Redis has no push).
    pub poll_interval: Duration,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
    /// Metric name prefix (`scaidrive`).
    pub metric_prefix: String,
    /// How often the depth gauges are refreshed.
    pub depth_interval: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            queues: crate::DEFAULT_QUEUES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            concurrency: 4,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
            retry: RetryPolicy::default(),
            metric_prefix: "scaidrive".into(),
            depth_interval: Duration::from_secs(15),
        }
    }
}

/// Runs jobs from a queue with a handler.
pub struct Worker {
    queue: Arc<dyn JobQueue>,
    config: WorkerConfig,
    metrics: QueueMetrics,
}

impl Worker {
    /// A worker over `queue`.
    pub fn new(queue: Arc<dyn JobQueue>, config: WorkerConfig) -> Self {
        let metrics = QueueMetrics::new(&config.metric_prefix);
        Self {
            queue,
            config,
            metrics,
        }
    }

    /// Run until `shutdown` resolves, then let in-flight jobs finish and return.
    pub async fn run<H: Handler>(
        self,
        handler: Arc<H>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let this = Arc::new(self);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..this.config.concurrency.max(1) {
            let (w, h, rx) = (this.clone(), handler.clone(), stop_rx.clone());
            tasks.spawn(async move { w.slot(h, rx).await });
        }
        let depth = {
            let (w, mut rx) = (this.clone(), stop_rx.clone());
            tokio::spawn(async move {
                loop {
                    let names: Vec<&str> = w.config.queues.iter().map(|s| s.as_str()).collect();
                    if let Err(e) = w.metrics.report_depths(w.queue.as_ref(), &names).await {
                        tracing::warn!(event = "queue_depth_unavailable", error = %e, "cannot read queue depth");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(w.config.depth_interval) => {}
                        _ = rx.changed() => break,
                    }
                }
            })
        };
        shutdown.await;
        tracing::info!(
            event = "worker_stopping",
            "worker stopping; finishing in-flight jobs"
        );
        let _ = stop_tx.send(true);
        while tasks.join_next().await.is_some() {}
        let _ = depth.await;
    }

    async fn slot<H: Handler>(self: Arc<Self>, handler: Arc<H>, mut stop: watch::Receiver<bool>) {
        let names: Vec<&str> = self.config.queues.iter().map(|s| s.as_str()).collect();
        let mut backoff = self.config.poll_interval;
        while !*stop.borrow() {
            match self.queue.reserve(&names, self.config.lease).await {
                Ok(Some(d)) => {
                    backoff = self.config.poll_interval;
                    self.process(handler.clone(), d).await;
                }
                Ok(None) => {
                    tokio::select! {
                        _ = self.queue.wait_for_work(self.config.poll_interval) => {}
                        _ = stop.changed() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(event = "queue_backend_unavailable", backend = self.queue.name(), error = %e, "cannot reserve a job; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn process<H: Handler>(&self, handler: Arc<H>, d: Delivery) {
        let queue = d.job.queue.clone();
        let task = d.job.task.clone();
        let started = Instant::now();
        // Heartbeat: keep the lease while the handler runs, so a long job is not handed to
        // a second worker.
        let beat = {
            let (q, d, lease) = (self.queue.clone(), d.clone(), self.config.lease);
            tokio::spawn(async move {
                let every = (lease / 3).max(Duration::from_millis(10));
                loop {
                    tokio::time::sleep(every).await;
                    match q.extend(&d, lease).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(event = "queue_lease_lost", job_id = %d.job.id, "lease lost while running");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(event = "queue_lease_extend_failed", job_id = %d.job.id, error = %e)
                        }
                    }
                }
            })
        };
        // A spawned task turns a handler panic into a JoinError instead of killing the slot.
        let run = {
            let (job, attempt) = (d.job.clone(), d.attempt);
            tokio::spawn(async move { handler.handle(job, attempt).await })
        };
        let outcome = match run.await {
            Ok(r) => r,
            Err(e) => Err(JobError::Retry(format!("handler panicked: {e}"))),
        };
        beat.abort();
        self.metrics
            .duration(&queue, &task, started.elapsed().as_secs_f64());
        let result = match outcome {
            Ok(()) => match self.queue.ack(&d).await {
                Ok(true) => ProcessedResult::Ok,
                Ok(false) => {
                    tracing::warn!(event = "queue_lease_lost", job_id = %d.job.id, "acked after the lease was lost; the job may run again");
                    ProcessedResult::Ok
                }
                Err(e) => {
                    tracing::warn!(event = "queue_ack_failed", job_id = %d.job.id, error = %e, "ack failed; the job will run again");
                    ProcessedResult::Error
                }
            },
            Err(err) => {
                let (msg, retry_in) = match &err {
                    JobError::Retry(m) => (m.as_str(), Some(self.config.retry.delay(d.attempt))),
                    JobError::Fatal(m) => (m.as_str(), None),
                };
                match self.queue.fail(&d, msg, retry_in).await {
                    Ok(FailOutcome::Retrying) => {
                        tracing::info!(event = "queue_job_retry", queue = %queue, task = %task, job_id = %d.job.id, attempt = d.attempt, error = %msg);
                        ProcessedResult::Retry
                    }
                    Ok(FailOutcome::DeadLettered) => {
                        tracing::warn!(event = "queue_job_dead_lettered", queue = %queue, task = %task, job_id = %d.job.id, attempt = d.attempt, error = %msg);
                        ProcessedResult::Error
                    }
                    Ok(FailOutcome::LeaseLost) => ProcessedResult::Retry,
                    Err(e) => {
                        tracing::warn!(event = "queue_fail_failed", job_id = %d.job.id, error = %e, "could not record the failure; the lease will expire");
                        ProcessedResult::Retry
                    }
                }
            }
        };
        self.metrics.processed(&queue, result);
    }
}
