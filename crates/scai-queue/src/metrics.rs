//! The queue metrics, under a caller-chosen name prefix so ScaiDrive (`scaidrive`) and
//! ScaiWave (`scaiwave`) both use them:
//! - `<p>_queue_depth{queue}` gauge: jobs waiting (`ready + delayed`);
//! - `<p>_queue_jobs_processed_total{queue,result}` counter, `result` = `ok` (acked),
//!   `retry` (failed, another attempt scheduled), `error` (failed for good: dead-lettered);
//! - `<p>_queue_job_duration_seconds{queue,task}` histogram of handler run time.

use crate::error::Result;
use crate::queue::JobQueue;

/// Result label of `<p>_queue_jobs_processed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessedResult {
    /// Handled and acked.
    Ok,
    /// Failed; another attempt is scheduled.
    Retry,
    /// Failed for good (dead-lettered), or the outcome could not be recorded.
    Error,
}

impl ProcessedResult {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            ProcessedResult::Ok => "ok",
            ProcessedResult::Retry => "retry",
            ProcessedResult::Error => "error",
        }
    }
}

/// Metric names for one prefix.
#[derive(Clone, Debug)]
pub struct QueueMetrics {
    depth: String,
    processed: String,
    duration: String,
}

impl QueueMetrics {
    /// Names under `prefix` (`scaidrive` → `scaidrive_queue_depth`, ...).
    pub fn new(prefix: &str) -> Self {
        Self {
            depth: format!("{prefix}_queue_depth"),
            processed: format!("{prefix}_queue_jobs_processed_total"),
            duration: format!("{prefix}_queue_job_duration_seconds"),
        }
    }

    /// Count one processed job.
    pub fn processed(&self, queue: &str, result: ProcessedResult) {
        metrics::counter!(self.processed.clone(), "queue" => queue.to_string(), "result" => result.as_str())
            .increment(1);
    }

    /// Record a handler's run time.
    pub fn duration(&self, queue: &str, task: &str, seconds: f64) {
        metrics::histogram!(self.duration.clone(), "queue" => queue.to_string(), "task" => task.to_string())
            .record(seconds);
    }

    /// Set the depth gauge of `queue`.
    pub fn depth(&self, queue: &str, waiting: u64) {
        metrics::gauge!(self.depth.clone(), "queue" => queue.to_string()).set(waiting as f64);
    }

    /// Read every queue's depth from `q` and set the gauges (for an API process that
    /// exposes depth without running workers, or a periodic task).
    pub async fn report_depths(&self, q: &dyn JobQueue, queues: &[&str]) -> Result<()> {
        for name in queues {
            let d = q.depth(name).await?;
            self.depth(name, d.waiting());
        }
        Ok(())
    }
}
