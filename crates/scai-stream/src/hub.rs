//! The per-replica hub: one sequencer task per tenant that releases events in position order,
//! and the registry of live sessions the released events fan out to.
//!
//! Every replica receives every event of the tenants it serves (from the broker), so each
//! hub sees the complete, gap-free position sequence. A position that does not arrive within
//! `gap_timeout` while later ones wait is read from the store ([`EventSource::range`]), so a
//! lost or late broker message delays delivery but never loses it. Each released event is
//! serialised once and pushed to the bounded queues of the sessions in its audience; a full
//! queue drops (counted) instead of stalling the other sessions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::broker::Broker;
use crate::position::Reorder;
use crate::queue::{CloseRequest, Frame, SessionQueue};
use crate::{Audience, BusMessage, Delivery, EventSource, Payload};

/// Metric names the product exports (they differ per product).
#[derive(Clone, Copy, Debug)]
pub struct MetricNames {
    /// Gauge with label `tenant`: open sockets.
    pub connections: &'static str,
    /// Counter: frames dropped because a connection's queue was full.
    pub dropped: &'static str,
}

#[derive(Clone, Debug)]
pub struct HubConfig {
    /// How long a later position waits for a missing earlier one before the hub reads the
    /// missing range from the store.
    pub gap_timeout: Duration,
    /// Frames a connection may have queued before further frames are dropped.
    pub queue_capacity: usize,
    pub metrics: MetricNames,
}

struct SessionEntry {
    user: String,
    key: String,
    opened_at_ms: u64,
    queue: Arc<SessionQueue>,
}

#[derive(Default)]
struct Sessions {
    by_id: HashMap<u64, SessionEntry>,
    by_user: HashMap<String, Vec<u64>>,
    by_key: HashMap<String, u64>,
}

struct Tenant<E> {
    tx: mpsc::UnboundedSender<BusMessage<E>>,
    sessions: RwLock<Sessions>,
    /// Last released position; updated under the sessions read lock right after the fan-out,
    /// so a registering session (write lock) sees either "released before me" or gets it.
    head: watch::Sender<u64>,
    /// True once the sequencer has read the committed head from the store.
    ready: watch::Sender<bool>,
}

struct Inner<E> {
    cfg: HubConfig,
    source: Arc<dyn EventSource<E>>,
    broker: Arc<dyn Broker<E>>,
    tenants: Mutex<HashMap<String, Arc<Tenant<E>>>>,
    next_session: AtomicU64,
    /// This replica's id, to recognise its own broker messages.
    replica: String,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Cheap to clone; all clones share one registry.
pub struct Hub<E> {
    inner: Arc<Inner<E>>,
}

impl<E> Clone for Hub<E> {
    fn clone(&self) -> Self {
        Hub {
            inner: self.inner.clone(),
        }
    }
}

/// A live session's place in the hub; unregisters (and updates the gauge) on drop.
pub struct Registration<E: Payload> {
    hub: Hub<E>,
    tenant: String,
    id: u64,
    pub queue: Arc<SessionQueue>,
    /// The last position released to sessions when this one registered.
    pub head_at_start: u64,
}

impl<E: Payload> Drop for Registration<E> {
    fn drop(&mut self) {
        self.hub.unregister(&self.tenant, self.id);
    }
}

impl<E: Payload> Hub<E> {
    /// Create the hub and start the broker's delivery into it.
    pub async fn start(
        cfg: HubConfig,
        source: Arc<dyn EventSource<E>>,
        broker: Arc<dyn Broker<E>>,
    ) -> Result<Self, crate::StreamError> {
        let hub = Hub {
            inner: Arc::new(Inner {
                cfg,
                source,
                broker: broker.clone(),
                tenants: Mutex::new(HashMap::new()),
                next_session: AtomicU64::new(1),
                replica: uuid::Uuid::new_v4().to_string(),
            }),
        };
        broker.start(hub.clone()).await?;
        Ok(hub)
    }

    pub fn source(&self) -> &Arc<dyn EventSource<E>> {
        &self.inner.source
    }

    pub fn broker(&self) -> &Arc<dyn Broker<E>> {
        &self.inner.broker
    }

    pub fn config(&self) -> &HubConfig {
        &self.inner.cfg
    }

    /// Publish a committed (or ephemeral) event to every replica. When the broker fails the
    /// event is still released locally (logged as `ws.fanout_failed`); other replicas fill
    /// the gap from the store when their next event for the tenant arrives.
    pub async fn publish(&self, d: Delivery<E>) {
        let msg = BusMessage::Event(d);
        if let Err(e) = self.inner.broker.publish(&msg).await {
            tracing::warn!(event = "ws.fanout_failed", tenant = %msg.tenant(), error = %e, "ws.fanout_failed");
            self.ingest(msg);
        }
    }

    /// Entry point of broker deliveries (and of local fallbacks).
    pub fn ingest(&self, msg: BusMessage<E>) {
        let t = self.tenant(msg.tenant());
        let _ = t.tx.send(msg);
    }

    /// Watch the last released position of a tenant (long-poll waits on it).
    pub fn watch(&self, tenant: &str) -> watch::Receiver<u64> {
        self.tenant(tenant).head.subscribe()
    }

    /// Number of live sessions on this replica (all tenants).
    pub fn session_count(&self) -> usize {
        let tenants: Vec<_> = self.inner.tenants.lock().values().cloned().collect();
        tenants.iter().map(|t| t.sessions.read().by_id.len()).sum()
    }

    fn tenant(&self, tenant: &str) -> Arc<Tenant<E>> {
        let mut g = self.inner.tenants.lock();
        if let Some(t) = g.get(tenant) {
            return t.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (head, _) = watch::channel(0);
        let (ready, _) = watch::channel(false);
        let t = Arc::new(Tenant {
            tx,
            sessions: RwLock::new(Sessions::default()),
            head,
            ready,
        });
        g.insert(tenant.to_string(), t.clone());
        tokio::spawn(sequencer(self.clone(), tenant.to_string(), t.clone(), rx));
        t
    }

    /// Add a session. An older session with the same `conn_key` (on this replica now, on
    /// other replicas through the broker) is closed with 4003 `duplicate_connection`.
    pub async fn register(
        &self,
        tenant: &str,
        user: &str,
        conn_key: &str,
        session_id: &str,
    ) -> Registration<E> {
        let t = self.tenant(tenant);
        let mut ready = t.ready.subscribe();
        while !*ready.borrow_and_update() {
            if ready.changed().await.is_err() {
                break;
            }
        }
        let id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(SessionQueue::new(self.inner.cfg.queue_capacity));
        let opened_at_ms = now_ms();
        let head_at_start;
        {
            let mut s = t.sessions.write();
            head_at_start = *t.head.borrow();
            if let Some(old) = s.by_key.insert(conn_key.to_string(), id) {
                if let Some(e) = s.by_id.get(&old) {
                    e.queue.close(DUPLICATE);
                }
            }
            s.by_user.entry(user.to_string()).or_default().push(id);
            s.by_id.insert(
                id,
                SessionEntry {
                    user: user.to_string(),
                    key: conn_key.to_string(),
                    opened_at_ms,
                    queue: queue.clone(),
                },
            );
        }
        metrics::gauge!(self.inner.cfg.metrics.connections, "tenant" => tenant.to_string())
            .increment(1.0);
        let msg = BusMessage::SessionOpened {
            tenant: tenant.to_string(),
            conn_key: conn_key.to_string(),
            session_id: session_id.to_string(),
            origin: self.inner.replica.clone(),
            opened_at_ms,
        };
        if let Err(e) = self.inner.broker.publish(&msg).await {
            tracing::warn!(event = "ws.fanout_failed", tenant = %tenant, error = %e, "ws.fanout_failed");
        }
        Registration {
            hub: self.clone(),
            tenant: tenant.to_string(),
            id,
            queue,
            head_at_start,
        }
    }

    fn unregister(&self, tenant: &str, id: u64) {
        let t = self.tenant(tenant);
        let mut s = t.sessions.write();
        if let Some(e) = s.by_id.remove(&id) {
            if let Some(v) = s.by_user.get_mut(&e.user) {
                v.retain(|x| *x != id);
                if v.is_empty() {
                    s.by_user.remove(&e.user);
                }
            }
            if s.by_key.get(&e.key) == Some(&id) {
                s.by_key.remove(&e.key);
            }
            metrics::gauge!(self.inner.cfg.metrics.connections, "tenant" => tenant.to_string())
                .decrement(1.0);
        }
    }

    /// Users with at least one live session on this replica.
    pub fn online_users(&self, tenant: &str) -> Vec<String> {
        let t = self.tenant(tenant);
        let s = t.sessions.read();
        s.by_user.keys().cloned().collect()
    }
}

const DUPLICATE: CloseRequest = CloseRequest {
    code: crate::session::CLOSE_SERVER_ABORT,
    reason: "duplicate_connection",
};

fn fanout<E: Payload>(t: &Tenant<E>, d: &Delivery<E>, dropped_metric: &'static str) {
    let s = t.sessions.read();
    if let Some(p) = d.position {
        t.head.send_replace(p);
    }
    if s.by_id.is_empty() {
        return;
    }
    let text = match serde_json::to_string(&d.payload) {
        Ok(t) => Utf8Bytes::from(t),
        Err(e) => {
            tracing::warn!(event = "ws.fanout_failed", tenant = %d.tenant, error = %e, "ws.fanout_failed");
            return;
        }
    };
    let frame = Frame {
        position: d.position,
        text,
    };
    let mut dropped = 0u64;
    let mut push = |e: &SessionEntry| {
        if !e.queue.push(frame.clone()) {
            dropped += 1;
        }
    };
    match &d.audience {
        Audience::Tenant => s.by_id.values().for_each(&mut push),
        Audience::Users { users } => {
            for u in users {
                if let Some(ids) = s.by_user.get(u) {
                    ids.iter()
                        .filter_map(|id| s.by_id.get(id))
                        .for_each(&mut push);
                }
            }
        }
    }
    if dropped > 0 {
        metrics::counter!(dropped_metric).increment(dropped);
    }
}

async fn sequencer<E: Payload>(
    hub: Hub<E>,
    tenant: String,
    t: Arc<Tenant<E>>,
    mut rx: mpsc::UnboundedReceiver<BusMessage<E>>,
) {
    let source = hub.inner.source.clone();
    let gap_timeout = hub.inner.cfg.gap_timeout;
    let dropped_metric = hub.inner.cfg.metrics.dropped;
    // Everything committed up to `head` happened before we listened: readers get it from the
    // store (sync, or a session's `since` replay).
    let head = loop {
        match source.head(&tenant).await {
            Ok(h) => break h,
            Err(e) => {
                tracing::warn!(event = "ws.fanout_failed", tenant = %tenant, error = %e, "ws.fanout_failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    {
        let _s = t.sessions.write();
        t.head.send_replace(head);
    }
    t.ready.send_replace(true);
    let mut reorder: Reorder<Delivery<E>> = Reorder::new(head);
    let mut deadline: Option<Instant> = None;
    loop {
        let msg = match deadline {
            Some(d) => tokio::select! {
                m = rx.recv() => m,
                _ = tokio::time::sleep_until(d) => {
                    fill_gap(&hub, &tenant, &t, &mut reorder, dropped_metric).await;
                    deadline = reorder.is_waiting().then(|| Instant::now() + gap_timeout);
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(msg) = msg else { break };
        match msg {
            BusMessage::Event(d) => match d.position {
                None => fanout(&t, &d, dropped_metric),
                Some(p) => {
                    for (_, d) in reorder.offer(p, d) {
                        fanout(&t, &d, dropped_metric);
                    }
                }
            },
            BusMessage::SessionOpened {
                conn_key,
                origin,
                opened_at_ms,
                ..
            } => {
                // Our own openings closed their local predecessors at registration.
                if origin != hub.inner.replica {
                    let s = t.sessions.read();
                    for e in s.by_id.values() {
                        if e.key == conn_key && e.opened_at_ms <= opened_at_ms {
                            e.queue.close(DUPLICATE);
                        }
                    }
                }
            }
        }
        deadline = if reorder.is_waiting() {
            deadline.or_else(|| Some(Instant::now() + gap_timeout))
        } else {
            None
        };
    }
}

async fn fill_gap<E: Payload>(
    hub: &Hub<E>,
    tenant: &str,
    t: &Tenant<E>,
    reorder: &mut Reorder<Delivery<E>>,
    dropped_metric: &'static str,
) {
    let Some((from, to)) = reorder.gap() else {
        return;
    };
    match hub.inner.source.range(tenant, from, to).await {
        Ok(found) => {
            for d in found {
                if let Some(p) = d.position {
                    for (_, d) in reorder.offer(p, d) {
                        fanout(t, &d, dropped_metric);
                    }
                }
            }
            if let Some((from, to)) = reorder.gap() {
                // Not in the store either: nothing was committed there. Move on.
                tracing::warn!(event = "ws.fanout_failed", tenant = %tenant, from, to, "ws.fanout_failed: positions missing from store");
                for (_, d) in reorder.skip_to(to + 1) {
                    fanout(t, &d, dropped_metric);
                }
            }
        }
        Err(e) => {
            tracing::warn!(event = "ws.fanout_failed", tenant = %tenant, error = %e, "ws.fanout_failed");
        }
    }
}
