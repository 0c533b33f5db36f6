//! Change announcements between processes. Every committed tree mutation is announced
//! through [`ChangeNotifier`]; the [`Hub`] turns announcements (and the sync [`Control`]
//! events: a user's access changed, a device's preferences changed) into [`Signal`]s for this
//! process's WebSocket fan-out (`sync::fanout`). With `SCAIDRIVE_REDIS_URL` set, they go
//! through Redis pub/sub instead (publish after commit; one subscriber task per process feeds
//! the local queue), so a change made through any `api` replica reaches sockets on all of them.
//! An announcement only says "tenant T has new changes": the fan-out reads the entries
//! themselves from the change log, which stays the source of truth.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Redis channel carrying every change announcement.
pub const CHANNEL: &str = "scaidrive:changes";
/// Redis channel carrying [`Control`] events.
pub const CONTROL_CHANNEL: &str = "scaidrive:sync-control";

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

/// Events for open sockets that are not change-log entries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Control {
    /// The user's share access or account status changed: their sockets re-resolve access
    /// now instead of at the next periodic re-check.
    AccessChanged { tenant_id: String, user_id: String },
    /// A device's sync preferences were replaced.
    PreferencesUpdated {
        tenant_id: String,
        user_id: String,
        device_id: String,
    },
}

/// What the fan-out task of a process receives.
#[derive(Debug, Clone)]
pub enum Signal {
    /// The tenant's change log grew.
    Changed {
        tenant_id: String,
    },
    /// Announcements may have been lost (Redis reconnected): every tenant with sockets
    /// re-reads its log.
    Reread,
    Control(Control),
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

/// The process-wide announcement point.
pub struct Hub {
    local: mpsc::UnboundedSender<Signal>,
    /// The receiving end, until the fan-out task takes it.
    rx: Mutex<Option<mpsc::UnboundedReceiver<Signal>>>,
    /// Set when Redis carries the announcements: (channel, payload).
    redis: Option<mpsc::UnboundedSender<(&'static str, String)>>,
}

impl Hub {
    /// In-process only.
    pub fn local() -> Arc<Hub> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(Hub {
            local: tx,
            rx: Mutex::new(Some(rx)),
            redis: None,
        })
    }

    /// Through Redis: a publisher task and a subscriber task (both reconnect on failure).
    pub fn with_redis(url: &str) -> anyhow::Result<Arc<Hub>> {
        let client = redis::Client::open(url)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (ptx, prx) = mpsc::unbounded_channel();
        tokio::spawn(publisher(client.clone(), prx));
        tokio::spawn(subscriber(client, tx.clone()));
        Ok(Arc::new(Hub {
            local: tx,
            rx: Mutex::new(Some(rx)),
            redis: Some(ptx),
        }))
    }

    /// The signal stream of this process (once; the fan-out task owns it).
    pub fn take_signals(&self) -> Option<mpsc::UnboundedReceiver<Signal>> {
        self.rx.lock().take()
    }

    /// Announce a control event to every process.
    pub fn control(&self, ev: Control) {
        tracing::debug!(event = "sync_control", control = ?ev);
        match &self.redis {
            Some(p) => {
                if let Ok(s) = serde_json::to_string(&ev) {
                    let _ = p.send((CONTROL_CHANNEL, s));
                }
            }
            None => {
                let _ = self.local.send(Signal::Control(ev));
            }
        }
    }
}

impl ChangeNotifier for Hub {
    fn notify(&self, change: Change) {
        LogNotifier.notify(change.clone());
        match &self.redis {
            Some(p) => {
                if let Ok(s) = serde_json::to_string(&change) {
                    let _ = p.send((CHANNEL, s));
                }
            }
            None => {
                let _ = self.local.send(Signal::Changed {
                    tenant_id: change.tenant_id,
                });
            }
        }
    }
}

async fn publisher(client: redis::Client, mut rx: mpsc::UnboundedReceiver<(&'static str, String)>) {
    let mut con = None;
    while let Some((channel, msg)) = rx.recv().await {
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
                .arg(channel)
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

async fn subscriber(client: redis::Client, tx: mpsc::UnboundedSender<Signal>) {
    use futures::StreamExt;
    loop {
        match client.get_async_pubsub().await {
            Ok(mut ps) => {
                if let Err(e) = ps.subscribe(&[CHANNEL, CONTROL_CHANNEL]).await {
                    tracing::warn!(event = "pubsub_subscribe_failed", error = %e);
                } else {
                    tracing::info!(event = "pubsub_subscribed", channel = CHANNEL);
                    // Announcements made while disconnected were lost: have every tenant
                    // with sockets re-read its log.
                    let _ = tx.send(Signal::Reread);
                    let mut stream = ps.on_message();
                    while let Some(m) = stream.next().await {
                        let Ok(payload) = m.get_payload::<String>() else {
                            continue;
                        };
                        let sig = if m.get_channel_name() == CONTROL_CHANNEL {
                            serde_json::from_str::<Control>(&payload)
                                .ok()
                                .map(Signal::Control)
                        } else {
                            serde_json::from_str::<Change>(&payload).ok().map(|ch| {
                                Signal::Changed {
                                    tenant_id: ch.tenant_id,
                                }
                            })
                        };
                        if let Some(sig) = sig {
                            let _ = tx.send(sig);
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
