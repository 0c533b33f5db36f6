//! Change fan-out. Every committed tree mutation is announced through [`ChangeNotifier`]; the
//! [`Hub`] turns announcements into a local `tokio::sync::broadcast` that every WebSocket of
//! this process listens to. With `SCAIDRIVE_REDIS_URL` set, announcements go through Redis
//! pub/sub instead (publish after commit; one subscriber task per process feeds the local
//! broadcast), so a change made through any `api` replica reaches sockets on all of them.
//! A nudge is advisory: the change log stays the source of truth and clients pull it.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

/// Redis channel carrying every change announcement.
pub const CHANNEL: &str = "scaidrive:changes";

/// One tree mutation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    pub tenant_id: String,
    pub share_id: String,
    pub resource_type: String,
    pub resource_id: String,
    pub change_type: String,
    #[serde(default)]
    pub version_id: Option<String>,
}

pub trait ChangeNotifier: Send + Sync {
    fn notify(&self, change: Change);
}

/// A notifier that only logs (used where no hub is wanted).
pub struct LogNotifier;

impl ChangeNotifier for LogNotifier {
    fn notify(&self, change: Change) {
        tracing::debug!(event = "change", tenant_id = %change.tenant_id, share_id = %change.share_id,
            resource_type = %change.resource_type, resource_id = %change.resource_id, change_type = %change.change_type);
    }
}

/// The process-wide fan-out point.
pub struct Hub {
    local: broadcast::Sender<Arc<Change>>,
    /// Set when Redis carries the announcements.
    redis: Option<mpsc::UnboundedSender<String>>,
}

impl Hub {
    /// In-process only.
    pub fn local() -> Arc<Hub> {
        let (tx, _) = broadcast::channel(4096);
        Arc::new(Hub {
            local: tx,
            redis: None,
        })
    }

    /// Through Redis: a publisher task and a subscriber task (both reconnect on failure).
    pub fn with_redis(url: &str) -> anyhow::Result<Arc<Hub>> {
        let client = redis::Client::open(url)?;
        let (tx, _) = broadcast::channel(4096);
        let (ptx, prx) = mpsc::unbounded_channel();
        tokio::spawn(publisher(client.clone(), prx));
        tokio::spawn(subscriber(client, tx.clone()));
        Ok(Arc::new(Hub {
            local: tx,
            redis: Some(ptx),
        }))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.local.subscribe()
    }
}

impl ChangeNotifier for Hub {
    fn notify(&self, change: Change) {
        LogNotifier.notify(change.clone());
        match &self.redis {
            Some(p) => {
                if let Ok(s) = serde_json::to_string(&change) {
                    let _ = p.send(s);
                }
            }
            None => {
                let _ = self.local.send(Arc::new(change));
            }
        }
    }
}

async fn publisher(client: redis::Client, mut rx: mpsc::UnboundedReceiver<String>) {
    let mut con = None;
    while let Some(msg) = rx.recv().await {
        // One retry with a fresh connection; a lost nudge only delays a client until its
        // next pull.
        for _ in 0..2 {
            if con.is_none() {
                con = client.get_multiplexed_async_connection().await.ok();
            }
            let Some(c) = con.as_mut() else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let r: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(CHANNEL)
                .arg(&msg)
                .query_async(c)
                .await;
            match r {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(event = "pubsub_publish_failed", error = %e);
                    con = None;
                }
            }
        }
    }
}

async fn subscriber(client: redis::Client, tx: broadcast::Sender<Arc<Change>>) {
    use futures::StreamExt;
    loop {
        match client.get_async_pubsub().await {
            Ok(mut ps) => {
                if let Err(e) = ps.subscribe(CHANNEL).await {
                    tracing::warn!(event = "pubsub_subscribe_failed", error = %e);
                } else {
                    tracing::info!(event = "pubsub_subscribed", channel = CHANNEL);
                    let mut stream = ps.on_message();
                    while let Some(m) = stream.next().await {
                        let Ok(payload) = m.get_payload::<String>() else {
                            continue;
                        };
                        if let Ok(ch) = serde_json::from_str::<Change>(&payload) {
                            let _ = tx.send(Arc::new(ch));
                        }
                    }
                    tracing::warn!(event = "pubsub_disconnected");
                }
            }
            Err(e) => tracing::warn!(event = "pubsub_connect_failed", error = %e),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Report a change to a file or folder through the state's notifier (after commit).
pub fn node_changed(state: &crate::AppState, node: &crate::fs::Node, change_type: &'static str) {
    state.notifier.notify(Change {
        tenant_id: node.tenant_id.clone(),
        share_id: node.share_id.clone(),
        resource_type: if node.is_folder() { "folder" } else { "file" }.to_string(),
        resource_id: node.id.clone(),
        change_type: change_type.to_string(),
        version_id: node.version_id.clone(),
    });
}
