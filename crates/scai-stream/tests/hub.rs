//! The hub with the in-process broker and a store-backed event source: events published out
//! of order are released in position order; a position that never comes through the broker
//! is read from the store after the gap timeout; audiences and tenants are respected; a full
//! queue drops and counts instead of blocking.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use scai_stream::broker::InProcess;
use scai_stream::{Audience, Delivery, EventSource, Hub, HubConfig, MetricNames, StreamError};
use serde_json::{json, Value};

/// A tiny event store: what the product's database is to the hub.
#[derive(Default)]
struct Store {
    events: Mutex<BTreeMap<(String, u64), Delivery<Value>>>,
}

#[async_trait]
impl EventSource<Value> for Store {
    async fn head(&self, tenant: &str) -> Result<u64, StreamError> {
        Ok(self
            .events
            .lock()
            .keys()
            .filter(|(t, _)| t == tenant)
            .map(|(_, p)| *p)
            .max()
            .unwrap_or(0))
    }
    async fn range(
        &self,
        tenant: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<Delivery<Value>>, StreamError> {
        Ok(self
            .events
            .lock()
            .range((tenant.to_string(), from)..=(tenant.to_string(), to))
            .map(|(_, d)| d.clone())
            .collect())
    }
    async fn visible_after(
        &self,
        tenant: &str,
        _user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Value)>, StreamError> {
        Ok(self
            .events
            .lock()
            .range((tenant.to_string(), after + 1)..)
            .filter(|((t, _), _)| t == tenant)
            .take(limit)
            .map(|((_, p), d)| (*p, d.payload.clone()))
            .collect())
    }
}

fn ev(tenant: &str, p: u64, users: &[&str]) -> Delivery<Value> {
    Delivery {
        tenant: tenant.into(),
        position: Some(p),
        audience: Audience::users(users.iter().map(|u| u.to_string()).collect()),
        payload: json!({"p": p}),
    }
}

async fn hub(store: Arc<Store>, capacity: usize) -> Hub<Value> {
    Hub::start(
        HubConfig {
            gap_timeout: Duration::from_millis(50),
            queue_capacity: capacity,
            metrics: MetricNames {
                connections: "test_connections",
                dropped: "test_dropped_total",
            },
        },
        store,
        Arc::new(InProcess::default()),
    )
    .await
    .unwrap()
}

async fn positions(q: &scai_stream::queue::SessionQueue, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < n {
        let b = tokio::time::timeout(Duration::from_secs(10), q.next_batch())
            .await
            .expect("frames");
        out.extend(b.frames.iter().filter_map(|f| f.position));
    }
    out
}

#[tokio::test]
async fn out_of_order_and_lost_messages_are_released_in_order() {
    let store = Arc::new(Store::default());
    let h = hub(store.clone(), 100).await;
    let alice = h.register("t1", "alice", "k1", "s1").await;
    let bob = h.register("t1", "bob", "k2", "s2").await;
    let other_tenant = h.register("t2", "alice", "k3", "s3").await;
    for p in 1..=5 {
        store
            .events
            .lock()
            .insert(("t1".into(), p), ev("t1", p, &["alice"]));
    }
    // 3 and 2 arrive before 1; 4 is committed but never published; 5 arrives.
    h.publish(ev("t1", 3, &["alice"])).await;
    h.publish(ev("t1", 2, &["alice"])).await;
    h.publish(ev("t1", 1, &["alice"])).await;
    h.publish(ev("t1", 5, &["alice"])).await;
    h.publish(ev("t1", 2, &["alice"])).await; // duplicate
    assert_eq!(positions(&alice.queue, 5).await, vec![1, 2, 3, 4, 5]);
    // Bob is not in the audience; the other tenant sees nothing.
    h.publish(Delivery {
        tenant: "t1".into(),
        position: None,
        audience: Audience::users(vec!["bob".into()]),
        payload: json!({"typing": true}),
    })
    .await;
    let b = tokio::time::timeout(Duration::from_secs(10), bob.queue.next_batch())
        .await
        .unwrap();
    assert_eq!(b.frames.len(), 1);
    assert_eq!(b.frames[0].position, None);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), other_tenant.queue.next_batch())
            .await
            .is_err()
    );
    assert_eq!(*h.watch("t1").borrow(), 5);
}

#[tokio::test]
async fn full_queue_drops_without_blocking_others_and_duplicate_key_closes_older() {
    let store = Arc::new(Store::default());
    let h = hub(store.clone(), 3).await;
    let slow = h.register("t", "u", "slow", "s1").await;
    let fast = h.register("t", "v", "fast", "s2").await;
    for p in 1..=10 {
        h.publish(ev("t", p, &["u", "v"])).await;
        // The fast one drains as it goes.
        let _ = positions(&fast.queue, 1).await;
    }
    let b = slow.queue.next_batch().await;
    assert_eq!(b.frames.len(), 3);
    assert_eq!(b.dropped, 7);
    assert_eq!(slow.queue.dropped(), 7);
    // Same key again: the older session is asked to close with 4003 duplicate_connection.
    let _newer = h.register("t", "u", "slow", "s3").await;
    let b = slow.queue.next_batch().await;
    let close = b.close.expect("close request");
    assert_eq!((close.code, close.reason), (4003, "duplicate_connection"));
}
