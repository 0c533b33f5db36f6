//! The in-process backend, for the embedded single-process `serve` mode: the same states and
//! transitions as the Redis backend (ready list, delayed set, leases, dead list) in one
//! mutex-guarded struct. Nothing survives the process; a job being worked on when the
//! process stops is lost, like every queued one (callers re-derive jobs at start-up).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::error::{validate_queue, Result};
use crate::job::{DeadJob, Delivery, FailOutcome, Job, NewJob, QueueDepth};
use crate::queue::{now_ms, JobQueue};

#[derive(Default)]
struct Queue {
    /// Front = next to deliver.
    ready: VecDeque<String>,
    /// (due ms, id).
    delayed: BTreeSet<(u64, String)>,
    /// id → lease end ms.
    leased: HashMap<String, u64>,
    /// Front = newest.
    dead: VecDeque<String>,
}

struct Entry {
    job: Job,
    attempts: u32,
    token: Option<String>,
    last_error: String,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Queue>,
    jobs: HashMap<String, Entry>,
}

impl State {
    /// Due retries to ready; expired leases back to ready (front) or dead.
    fn housekeep(&mut self, name: &str, now: u64) {
        let Some(q) = self.queues.get_mut(name) else {
            return;
        };
        while let Some((due, _)) = q.delayed.first() {
            if *due > now {
                break;
            }
            if let Some((_, id)) = q.delayed.pop_first() {
                q.ready.push_back(id);
            }
        }
        let expired: Vec<String> = q
            .leased
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            q.leased.remove(&id);
            if let Some(e) = self.jobs.get_mut(&id) {
                e.token = None;
                if e.attempts >= e.job.max_attempts {
                    e.last_error = "lease expired".into();
                    q.dead.push_front(id);
                } else {
                    q.ready.push_front(id);
                }
            }
        }
    }
}

/// In-process queues.
#[derive(Default)]
pub struct MemoryQueue {
    state: Mutex<State>,
    notify: Notify,
}

impl MemoryQueue {
    /// Empty queues.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry of `d` if `d` still holds its lease.
    fn holds(st: &State, d: &Delivery) -> bool {
        st.jobs
            .get(&d.job.id)
            .is_some_and(|e| e.token.as_deref() == Some(d.token.as_str()))
    }
}

#[async_trait]
impl JobQueue for MemoryQueue {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn enqueue(&self, queue: &str, job: NewJob) -> Result<String> {
        validate_queue(queue)?;
        let now = now_ms();
        let id = ulid::Ulid::new().to_string();
        let stored = Job {
            id: id.clone(),
            queue: queue.to_string(),
            task: job.task,
            payload: job.payload,
            max_attempts: job.max_attempts.max(1),
            enqueued_at_ms: now,
        };
        {
            let mut st = self.state.lock();
            st.jobs.insert(
                id.clone(),
                Entry {
                    job: stored,
                    attempts: 0,
                    token: None,
                    last_error: String::new(),
                },
            );
            let q = st.queues.entry(queue.to_string()).or_default();
            if job.delay.is_zero() {
                q.ready.push_back(id.clone());
            } else {
                q.delayed
                    .insert((now + job.delay.as_millis() as u64, id.clone()));
            }
        }
        self.notify.notify_waiters();
        Ok(id)
    }

    async fn reserve(&self, queues: &[&str], lease: Duration) -> Result<Option<Delivery>> {
        for q in queues {
            validate_queue(q)?;
        }
        let now = now_ms();
        let until = now + lease.as_millis() as u64;
        let mut st = self.state.lock();
        for q in queues {
            st.housekeep(q, now);
        }
        for name in queues {
            let Some(id) = st.queues.get_mut(*name).and_then(|q| q.ready.pop_front()) else {
                continue;
            };
            let token = ulid::Ulid::new().to_string();
            if let Some(q) = st.queues.get_mut(*name) {
                q.leased.insert(id.clone(), until);
            }
            if let Some(e) = st.jobs.get_mut(&id) {
                e.attempts += 1;
                e.token = Some(token.clone());
                return Ok(Some(Delivery {
                    job: e.job.clone(),
                    attempt: e.attempts,
                    lease_until_ms: until,
                    token,
                }));
            }
        }
        Ok(None)
    }

    async fn ack(&self, d: &Delivery) -> Result<bool> {
        let mut st = self.state.lock();
        if !Self::holds(&st, d) {
            return Ok(false);
        }
        st.jobs.remove(&d.job.id);
        if let Some(q) = st.queues.get_mut(&d.job.queue) {
            q.leased.remove(&d.job.id);
        }
        Ok(true)
    }

    async fn fail(
        &self,
        d: &Delivery,
        error: &str,
        retry_in: Option<Duration>,
    ) -> Result<FailOutcome> {
        let now = now_ms();
        let outcome = {
            let mut st = self.state.lock();
            if !Self::holds(&st, d) {
                return Ok(FailOutcome::LeaseLost);
            }
            let Some(e) = st.jobs.get_mut(&d.job.id) else {
                return Ok(FailOutcome::LeaseLost);
            };
            e.token = None;
            e.last_error = error.to_string();
            let dead = retry_in.is_none() || e.attempts >= e.job.max_attempts;
            let q = st.queues.entry(d.job.queue.clone()).or_default();
            q.leased.remove(&d.job.id);
            if dead {
                q.dead.push_front(d.job.id.clone());
                FailOutcome::DeadLettered
            } else {
                let due = now + retry_in.unwrap_or_default().as_millis() as u64;
                q.delayed.insert((due, d.job.id.clone()));
                FailOutcome::Retrying
            }
        };
        self.notify.notify_waiters();
        Ok(outcome)
    }

    async fn extend(&self, d: &Delivery, lease: Duration) -> Result<bool> {
        let mut st = self.state.lock();
        if !Self::holds(&st, d) {
            return Ok(false);
        }
        let until = now_ms() + lease.as_millis() as u64;
        Ok(match st.queues.get_mut(&d.job.queue) {
            Some(q) => q.leased.insert(d.job.id.clone(), until).is_some(),
            None => false,
        })
    }

    async fn depth(&self, queue: &str) -> Result<QueueDepth> {
        validate_queue(queue)?;
        let st = self.state.lock();
        Ok(st
            .queues
            .get(queue)
            .map(|q| QueueDepth {
                ready: q.ready.len() as u64,
                delayed: q.delayed.len() as u64,
                leased: q.leased.len() as u64,
                dead: q.dead.len() as u64,
            })
            .unwrap_or_default())
    }

    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadJob>> {
        validate_queue(queue)?;
        let st = self.state.lock();
        let Some(q) = st.queues.get(queue) else {
            return Ok(Vec::new());
        };
        Ok(q.dead
            .iter()
            .take(limit)
            .filter_map(|id| st.jobs.get(id))
            .map(|e| DeadJob {
                job: e.job.clone(),
                attempts: e.attempts,
                last_error: e.last_error.clone(),
            })
            .collect())
    }

    async fn requeue_dead(&self, queue: &str, id: &str) -> Result<bool> {
        validate_queue(queue)?;
        let found = {
            let mut st = self.state.lock();
            let Some(q) = st.queues.get_mut(queue) else {
                return Ok(false);
            };
            let Some(pos) = q.dead.iter().position(|d| d == id) else {
                return Ok(false);
            };
            q.dead.remove(pos);
            q.ready.push_back(id.to_string());
            if let Some(e) = st.jobs.get_mut(id) {
                e.attempts = 0;
                e.last_error.clear();
            }
            true
        };
        self.notify.notify_waiters();
        Ok(found)
    }

    async fn wait_for_work(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.notify.notified()).await;
    }
}
