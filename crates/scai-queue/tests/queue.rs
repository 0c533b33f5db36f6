//! Queue behaviour over both backends: the in-process one and the real Redis at
//! 127.0.0.1:6379 (`SCAI_TEST_REDIS_URL`), each test under its own key prefix.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use scai_queue::{
    FailOutcome, HandlerFn, Job, JobError, JobQueue, MemoryQueue, NewJob, QueueDepth, RedisQueue,
    RedisQueueOptions, RetryPolicy, Worker, WorkerConfig, HIGH, LOW, MEDIUM,
};
use serde_json::json;

const ALL: [&str; 3] = [HIGH, MEDIUM, LOW];

fn prefix(test: &str) -> String {
    format!("scai-q-test:{test}:{}", ulid::Ulid::new())
}

fn redis_at(url: &str, key_prefix: &str) -> Arc<dyn JobQueue> {
    Arc::new(
        RedisQueue::new(
            url,
            RedisQueueOptions {
                key_prefix: key_prefix.to_string(),
                ..RedisQueueOptions::default()
            },
        )
        .expect("valid url"),
    )
}

/// Both backends, unless services are skipped (then only the in-process one).
fn backends(test: &str) -> Vec<Arc<dyn JobQueue>> {
    let mut v: Vec<Arc<dyn JobQueue>> = vec![Arc::new(MemoryQueue::new())];
    if !scai_testkit::services::skip(test) {
        v.push(redis_at(
            &scai_testkit::services::redis_url(),
            &prefix(test),
        ));
    }
    v
}

fn job(task: &str, n: u64) -> NewJob {
    NewJob::new(task, json!({ "n": n }))
}

/// Reserve until a job comes (leases/backoffs in these tests are a few hundred ms).
async fn reserve_eventually(
    q: &dyn JobQueue,
    queues: &[&str],
    lease: Duration,
) -> scai_queue::Delivery {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(d) = q.reserve(queues, lease).await.unwrap() {
            return d;
        }
        assert!(Instant::now() < deadline, "{}: no job delivered", q.name());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn enqueue_consume_ack_in_fifo_order() {
    for q in backends("enqueue_consume_ack") {
        let mut ids = Vec::new();
        for n in 0..3 {
            ids.push(q.enqueue(HIGH, job("t", n)).await.unwrap());
        }
        let lease = Duration::from_secs(30);
        for (n, id) in ids.iter().enumerate() {
            let d = q.reserve(&[HIGH], lease).await.unwrap().expect("a job");
            assert_eq!(&d.job.id, id, "{}", q.name());
            assert_eq!(d.job.task, "t");
            assert_eq!(d.job.payload, json!({ "n": n }));
            assert_eq!(d.job.queue, HIGH);
            assert_eq!(d.attempt, 1);
            assert!(q.ack(&d).await.unwrap());
            // A second ack of the same delivery finds nothing to ack.
            assert!(!q.ack(&d).await.unwrap());
        }
        assert!(q.reserve(&[HIGH], lease).await.unwrap().is_none());
        assert_eq!(q.depth(HIGH).await.unwrap(), QueueDepth::default());
    }
}

#[tokio::test]
async fn higher_priority_queues_are_served_first() {
    for q in backends("priority") {
        q.enqueue(LOW, job("low", 1)).await.unwrap();
        q.enqueue(MEDIUM, job("medium", 1)).await.unwrap();
        q.enqueue(HIGH, job("high", 1)).await.unwrap();
        q.enqueue(LOW, job("low", 2)).await.unwrap();
        let lease = Duration::from_secs(30);
        let mut order = Vec::new();
        while let Some(d) = q.reserve(&ALL, lease).await.unwrap() {
            order.push(d.job.task.clone());
            q.ack(&d).await.unwrap();
        }
        assert_eq!(order, vec!["high", "medium", "low", "low"], "{}", q.name());
        // Affinity: a worker on `low` only never sees the other queues.
        q.enqueue(HIGH, job("high", 2)).await.unwrap();
        assert!(q.reserve(&[LOW], lease).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn a_killed_consumers_job_is_redelivered_after_the_lease() {
    for q in backends("killed_consumer") {
        let id = q.enqueue(MEDIUM, job("sync", 1)).await.unwrap();
        let lease = Duration::from_millis(300);
        let first = q.reserve(&ALL, lease).await.unwrap().expect("job");
        assert_eq!(first.job.id, id);
        // While the lease holds nobody else gets it.
        assert!(
            q.reserve(&ALL, lease).await.unwrap().is_none(),
            "{}",
            q.name()
        );
        assert_eq!(q.depth(MEDIUM).await.unwrap().leased, 1);
        // The consumer "dies": no ack. After the lease the job comes back.
        let second = reserve_eventually(q.as_ref(), &ALL, Duration::from_secs(30)).await;
        assert_eq!(second.job.id, id, "{}", q.name());
        assert_eq!(second.attempt, 2);
        assert!(second.lease_until_ms > first.lease_until_ms);
        // The dead consumer's late ack and extend are refused; the new holder's ack works.
        assert!(!q.ack(&first).await.unwrap(), "{}", q.name());
        assert!(!q.extend(&first, lease).await.unwrap());
        assert_eq!(
            q.fail(&first, "late", Some(Duration::ZERO)).await.unwrap(),
            FailOutcome::LeaseLost
        );
        assert!(q.ack(&second).await.unwrap());
        assert_eq!(q.depth(MEDIUM).await.unwrap(), QueueDepth::default());
    }
}

#[tokio::test]
async fn extending_a_lease_keeps_the_job() {
    for q in backends("extend") {
        q.enqueue(HIGH, job("long", 1)).await.unwrap();
        let lease = Duration::from_millis(300);
        let d = q.reserve(&[HIGH], lease).await.unwrap().unwrap();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            assert!(q.extend(&d, lease).await.unwrap());
            assert!(
                q.reserve(&[HIGH], lease).await.unwrap().is_none(),
                "{}",
                q.name()
            );
        }
        assert!(q.ack(&d).await.unwrap());
    }
}

#[tokio::test]
async fn retries_then_dead_letter_then_requeue() {
    for q in backends("retries_dead_letter") {
        let id = q
            .enqueue(LOW, job("quota", 7).max_attempts(3))
            .await
            .unwrap();
        let lease = Duration::from_secs(30);
        for attempt in 1..=3u32 {
            let d = reserve_eventually(q.as_ref(), &[LOW], lease).await;
            assert_eq!((d.job.id.as_str(), d.attempt), (id.as_str(), attempt));
            let outcome = q
                .fail(
                    &d,
                    &format!("boom {attempt}"),
                    Some(Duration::from_millis(50)),
                )
                .await
                .unwrap();
            if attempt < 3 {
                assert_eq!(outcome, FailOutcome::Retrying, "{}", q.name());
                assert_eq!(q.depth(LOW).await.unwrap().delayed, 1);
            } else {
                assert_eq!(outcome, FailOutcome::DeadLettered, "{}", q.name());
            }
        }
        assert_eq!(
            q.depth(LOW).await.unwrap(),
            QueueDepth {
                dead: 1,
                ..QueueDepth::default()
            }
        );
        assert!(q.reserve(&[LOW], lease).await.unwrap().is_none());
        let dead = q.dead_letters(LOW, 10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].job.id, id);
        assert_eq!(dead[0].job.payload, json!({ "n": 7 }));
        assert_eq!(dead[0].attempts, 3);
        assert_eq!(dead[0].last_error, "boom 3");
        // Back on the queue with fresh attempts.
        assert!(q.requeue_dead(LOW, &id).await.unwrap());
        assert!(!q.requeue_dead(LOW, &id).await.unwrap());
        let d = q.reserve(&[LOW], lease).await.unwrap().expect("requeued");
        assert_eq!((d.job.id.as_str(), d.attempt), (id.as_str(), 1));
        // Not retryable: straight to the dead-letter list.
        assert_eq!(
            q.fail(&d, "bad payload", None).await.unwrap(),
            FailOutcome::DeadLettered
        );
        assert_eq!(
            q.dead_letters(LOW, 10).await.unwrap()[0].last_error,
            "bad payload"
        );
    }
}

#[tokio::test]
async fn an_expired_lease_on_the_last_attempt_dead_letters() {
    for q in backends("lease_dead_letter") {
        q.enqueue(HIGH, job("x", 1).max_attempts(1)).await.unwrap();
        let d = q
            .reserve(&[HIGH], Duration::from_millis(100))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.attempt, 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while q.depth(HIGH).await.unwrap().dead == 0 {
            assert!(
                Instant::now() < deadline,
                "{}: never dead-lettered",
                q.name()
            );
            assert!(q
                .reserve(&[HIGH], Duration::from_secs(30))
                .await
                .unwrap()
                .is_none());
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        assert_eq!(
            q.dead_letters(HIGH, 5).await.unwrap()[0].last_error,
            "lease expired"
        );
    }
}

#[tokio::test]
async fn depth_counts_every_state() {
    for q in backends("depth") {
        q.enqueue(HIGH, job("a", 1)).await.unwrap();
        q.enqueue(HIGH, job("a", 2)).await.unwrap();
        q.enqueue(HIGH, job("a", 3)).await.unwrap();
        q.enqueue(HIGH, job("a", 4).delay(Duration::from_secs(60)))
            .await
            .unwrap();
        let d = q
            .reserve(&[HIGH], Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        let d2 = q
            .reserve(&[HIGH], Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        q.fail(&d2, "no", None).await.unwrap();
        let depth = q.depth(HIGH).await.unwrap();
        assert_eq!(
            depth,
            QueueDepth {
                ready: 1,
                delayed: 1,
                leased: 1,
                dead: 1
            },
            "{}",
            q.name()
        );
        assert_eq!(depth.waiting(), 2);
        assert_eq!(q.depth(MEDIUM).await.unwrap(), QueueDepth::default());
        q.ack(&d).await.unwrap();
        assert!(q.depth("Not A Queue").await.is_err());
        assert!(q.enqueue("", job("a", 1)).await.is_err());
    }
}

#[tokio::test]
async fn two_workers_share_jobs_without_running_one_twice() {
    for q in backends("two_workers") {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let total = 40u64;
        for n in 0..total {
            q.enqueue(ALL[(n % 3) as usize], job("work", n))
                .await
                .unwrap();
        }
        let running: Arc<Mutex<HashSet<String>>> = Arc::default();
        let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let overlap = Arc::new(Mutex::new(false));
        let make_handler = || {
            let (running, runs, overlap) = (running.clone(), runs.clone(), overlap.clone());
            Arc::new(HandlerFn(move |job: Job, _attempt: u32| {
                let (running, runs, overlap) = (running.clone(), runs.clone(), overlap.clone());
                async move {
                    if !running.lock().insert(job.id.clone()) {
                        *overlap.lock() = true;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    running.lock().remove(&job.id);
                    *runs.lock().entry(job.id).or_default() += 1;
                    Ok(())
                }
            }))
        };
        let config = WorkerConfig {
            concurrency: 4,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(20),
            metric_prefix: "test_two_workers".into(),
            ..WorkerConfig::default()
        };
        let (stop_a, stop_b) = {
            let shared = futures::future::FutureExt::shared(async move {
                let _ = rx.await;
            });
            (shared.clone(), shared)
        };
        // Two "replicas": separate Worker instances over the same queue store.
        let a = tokio::spawn(Worker::new(q.clone(), config.clone()).run(make_handler(), stop_a));
        let b = tokio::spawn(Worker::new(q.clone(), config.clone()).run(make_handler(), stop_b));
        let deadline = Instant::now() + Duration::from_secs(20);
        while runs.lock().len() < total as usize {
            assert!(
                Instant::now() < deadline,
                "{}: jobs not processed",
                q.name()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tx.send(()).unwrap();
        a.await.unwrap();
        b.await.unwrap();
        assert!(
            !*overlap.lock(),
            "{}: a job ran on two workers at once",
            q.name()
        );
        assert!(
            runs.lock().values().all(|n| *n == 1),
            "{}: a job ran twice",
            q.name()
        );
        for queue in ALL {
            assert_eq!(q.depth(queue).await.unwrap(), QueueDepth::default());
        }
    }
}

#[tokio::test]
async fn worker_retries_dead_letters_and_records_metrics() {
    scai_core::metrics::install();
    for (i, q) in backends("worker_metrics").into_iter().enumerate() {
        let prefix = format!("test_worker_{i}");
        let ok_id = q
            .enqueue(HIGH, job("flaky", 1).max_attempts(3))
            .await
            .unwrap();
        let dead_id = q.enqueue(HIGH, job("broken", 2)).await.unwrap();
        let panic_id = q
            .enqueue(LOW, job("panics", 3).max_attempts(2))
            .await
            .unwrap();
        let seen: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
        let handler = {
            let seen = seen.clone();
            Arc::new(HandlerFn(move |job: Job, attempt: u32| {
                let seen = seen.clone();
                async move {
                    seen.lock().push((job.task.clone(), attempt));
                    match job.task.as_str() {
                        "flaky" if attempt < 2 => Err(JobError::Retry("try again".into())),
                        "flaky" => Ok(()),
                        "panics" => panic!("handler bug"),
                        _ => Err(JobError::Fatal("cannot ever work".into())),
                    }
                }
            }))
        };
        let config = WorkerConfig {
            concurrency: 2,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(20),
            retry: RetryPolicy {
                base: Duration::from_millis(20),
                max: Duration::from_millis(100),
            },
            metric_prefix: prefix.clone(),
            depth_interval: Duration::from_millis(50),
            ..WorkerConfig::default()
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let w = tokio::spawn(Worker::new(q.clone(), config).run(handler, async move {
            let _ = rx.await;
        }));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let high = q.depth(HIGH).await.unwrap();
            let low = q.depth(LOW).await.unwrap();
            if high.dead == 1 && low.dead == 1 && high.waiting() + high.leased == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{}: {high:?} {low:?}", q.name());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let the depth reporter see the final state once more.
        tokio::time::sleep(Duration::from_millis(120)).await;
        tx.send(()).unwrap();
        w.await.unwrap();

        let mut seen = seen.lock().clone();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                ("broken".to_string(), 1),
                ("flaky".to_string(), 1),
                ("flaky".to_string(), 2),
                ("panics".to_string(), 1),
                ("panics".to_string(), 2),
            ],
            "{}",
            q.name()
        );
        let dead_high: Vec<String> = q
            .dead_letters(HIGH, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.job.id)
            .collect();
        assert_eq!(dead_high, vec![dead_id]);
        let dead_low = q.dead_letters(LOW, 10).await.unwrap();
        assert_eq!(dead_low[0].job.id, panic_id);
        assert!(
            dead_low[0].last_error.contains("panicked"),
            "{}",
            dead_low[0].last_error
        );
        assert_ne!(ok_id, panic_id);

        let text = scai_core::metrics::render();
        let value = |series: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        };
        let processed = format!("{prefix}_queue_jobs_processed_total");
        assert_eq!(
            value(&format!("{processed}{{queue=\"high\",result=\"ok\"}}")),
            1.0
        );
        assert_eq!(
            value(&format!("{processed}{{queue=\"high\",result=\"retry\"}}")),
            1.0
        );
        assert_eq!(
            value(&format!("{processed}{{queue=\"high\",result=\"error\"}}")),
            1.0
        );
        assert_eq!(
            value(&format!("{processed}{{queue=\"low\",result=\"retry\"}}")),
            1.0
        );
        assert_eq!(
            value(&format!("{processed}{{queue=\"low\",result=\"error\"}}")),
            1.0
        );
        assert_eq!(
            value(&format!(
                "{prefix}_queue_job_duration_seconds_count{{queue=\"high\",task=\"flaky\"}}"
            )),
            2.0
        );
        assert_eq!(
            value(&format!("{prefix}_queue_depth{{queue=\"high\"}}")),
            0.0
        );
    }
}

#[tokio::test]
async fn redis_unreachable_is_an_error_not_a_hang_and_workers_keep_going() {
    if scai_testkit::services::skip("redis_unreachable") {
        return;
    }
    let dead = format!("redis://127.0.0.1:{}", scai_testkit::free_port());
    let q = redis_at(&dead, "nowhere");
    assert!(matches!(
        q.enqueue(HIGH, job("x", 1)).await,
        Err(scai_queue::Error::Backend(_))
    ));
    assert!(q.reserve(&ALL, Duration::from_secs(1)).await.is_err());
    assert!(q.depth(HIGH).await.is_err());
    // A worker on it keeps retrying and stops cleanly on shutdown.
    let handler = Arc::new(HandlerFn(|_job: Job, _a: u32| async { Ok(()) }));
    let config = WorkerConfig {
        poll_interval: Duration::from_millis(20),
        ..WorkerConfig::default()
    };
    Worker::new(q, config)
        .run(handler, tokio::time::sleep(Duration::from_millis(200)))
        .await;
    assert!(RedisQueue::new("http://x", RedisQueueOptions::default()).is_err());
    assert!(RedisQueue::new("rediss://127.0.0.1:1/0", RedisQueueOptions::default()).is_ok());
}

#[tokio::test]
async fn the_heartbeat_keeps_long_jobs_from_running_twice() {
    // Jobs take longer than the lease; only the worker's heartbeat keeps them leased.
    for q in backends("heartbeat") {
        let total = 4u64;
        for n in 0..total {
            q.enqueue(HIGH, job("long", n)).await.unwrap();
        }
        let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let make_handler = || {
            let runs = runs.clone();
            Arc::new(HandlerFn(move |job: Job, _attempt: u32| {
                let runs = runs.clone();
                async move {
                    *runs.lock().entry(job.id.clone()).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    Ok(())
                }
            }))
        };
        let config = WorkerConfig {
            concurrency: 2,
            lease: Duration::from_millis(240),
            poll_interval: Duration::from_millis(20),
            metric_prefix: "test_heartbeat".into(),
            ..WorkerConfig::default()
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shared = futures::future::FutureExt::shared(async move {
            let _ = rx.await;
        });
        let a = tokio::spawn(
            Worker::new(q.clone(), config.clone()).run(make_handler(), shared.clone()),
        );
        let b = tokio::spawn(Worker::new(q.clone(), config.clone()).run(make_handler(), shared));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let d = q.depth(HIGH).await.unwrap();
            if d == QueueDepth::default() {
                break;
            }
            assert!(Instant::now() < deadline, "{}: {d:?}", q.name());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tx.send(()).unwrap();
        a.await.unwrap();
        b.await.unwrap();
        let runs = runs.lock();
        assert_eq!(runs.len(), total as usize);
        assert!(runs.values().all(|n| *n == 1), "{}: {runs:?}", q.name());
    }
}
