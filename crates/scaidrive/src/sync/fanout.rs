//! Fan-out of change-log entries to this process's WebSockets. Sockets are indexed by the
//! shares they receive (or tenant-wide, for tenant admins), so delivering an entry touches
//! only the sockets of its share. One task per process tails each announced tenant's log from
//! the last position it delivered (`pubsub::Signal`), so every socket gets each committed
//! entry once, in position order, at the cost of one log read per announcement batch — never
//! a database query per socket. Which shares a socket receives is decided by the socket
//! (`ws.rs`: resolved at connect, refreshed on `Control::AccessChanged` and periodically).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::ws::Utf8Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, Notify};

use super::changelog::{ChangeRow, CHANGE_COLS};
use crate::db::Db;
use crate::pubsub::{Control, Signal};

/// Entries queued per socket; beyond it the socket is told `changes_missed` (it pulls).
const SOCKET_QUEUE: usize = 256;
/// Log rows read per query when tailing a tenant.
const TAIL_PAGE: i64 = 500;
/// Entries delivered per tenant and announcement batch; a bigger burst skips to the head and
/// tells the tenant's sockets `changes_missed` (no socket queue could hold it anyway).
const TAIL_MAX: usize = 5000;

/// Socket flags raised by the fan-out and taken by the socket ([`Sub::take_flags`]).
pub const MISSED: u8 = 1;
pub const REFRESH: u8 = 2;
pub const PREFERENCES: u8 = 4;

/// A committed change-log entry on its way to sockets. Frames are rendered once, on first
/// use, and shared by every socket that receives the entry (`Utf8Bytes` clones share the
/// buffer: no per-socket copy).
pub struct Delivery {
    pub row: ChangeRow,
    pub sync_frame: OnceLock<Utf8Bytes>,
    pub realtime_frame: OnceLock<Utf8Bytes>,
}

/// Which entries a socket receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Nothing,
    /// Every share of the tenant (tenant admins).
    Tenant,
    Shares(HashSet<String>),
}

impl Scope {
    pub fn allows(&self, share_id: &str) -> bool {
        match self {
            Scope::Nothing => false,
            Scope::Tenant => true,
            Scope::Shares(s) => s.contains(share_id),
        }
    }
}

/// The part of a socket the fan-out can reach.
pub struct Sub {
    id: u64,
    pub tenant_id: String,
    pub user_id: String,
    pub device_id: Option<String>,
    tx: mpsc::Sender<Arc<Delivery>>,
    flags: AtomicU8,
    /// Woken when a flag is raised.
    pub wake: Notify,
}

impl Sub {
    fn raise(&self, flag: u8) {
        self.flags.fetch_or(flag, Ordering::SeqCst);
        self.wake.notify_one();
    }

    pub fn take_flags(&self) -> u8 {
        self.flags.swap(0, Ordering::SeqCst)
    }

    fn offer(&self, d: &Arc<Delivery>) -> bool {
        match self.tx.try_send(d.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                // A slow reader must not hold up everyone else: it pulls instead.
                metrics::counter!("scaidrive_sync_ws_events_dropped_total").increment(1);
                self.raise(MISSED);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

#[derive(Default)]
struct Index {
    subs: HashMap<u64, (Arc<Sub>, Scope)>,
    /// tenant → share → sockets.
    by_share: HashMap<String, HashMap<String, HashSet<u64>>>,
    /// tenant → sockets receiving every share of it.
    tenant_wide: HashMap<String, HashSet<u64>>,
    /// (tenant, user) → sockets, for control events.
    by_user: HashMap<(String, String), HashSet<u64>>,
    per_tenant: HashMap<String, usize>,
}

impl Index {
    fn unindex(&mut self, tenant: &str, id: u64, scope: &Scope) {
        match scope {
            Scope::Nothing => {}
            Scope::Tenant => {
                if let Some(s) = self.tenant_wide.get_mut(tenant) {
                    s.remove(&id);
                    if s.is_empty() {
                        self.tenant_wide.remove(tenant);
                    }
                }
            }
            Scope::Shares(shares) => {
                if let Some(m) = self.by_share.get_mut(tenant) {
                    for sh in shares {
                        if let Some(s) = m.get_mut(sh) {
                            s.remove(&id);
                            if s.is_empty() {
                                m.remove(sh);
                            }
                        }
                    }
                    if m.is_empty() {
                        self.by_share.remove(tenant);
                    }
                }
            }
        }
    }

    fn index(&mut self, tenant: &str, id: u64, scope: &Scope) {
        match scope {
            Scope::Nothing => {}
            Scope::Tenant => {
                self.tenant_wide
                    .entry(tenant.to_string())
                    .or_default()
                    .insert(id);
            }
            Scope::Shares(shares) => {
                let m = self.by_share.entry(tenant.to_string()).or_default();
                for sh in shares {
                    m.entry(sh.clone()).or_default().insert(id);
                }
            }
        }
    }
}

/// The socket index of this process.
#[derive(Default)]
pub struct Fanout {
    next: AtomicU64,
    idx: RwLock<Index>,
    /// Per tenant with sockets: the last position handed to them. Lock order: `idx` first.
    marks: Mutex<HashMap<String, i64>>,
}

/// A socket's registration; dropping it removes the socket from the index.
pub struct Handle {
    fanout: Arc<Fanout>,
    pub sub: Arc<Sub>,
}

impl Handle {
    /// Replace the shares this socket receives.
    pub fn set_scope(&self, scope: Scope) {
        let mut ix = self.fanout.idx.write();
        let Some((_, cur)) = ix.subs.get(&self.sub.id) else {
            return;
        };
        if *cur == scope {
            return;
        }
        let old = cur.clone();
        ix.unindex(&self.sub.tenant_id, self.sub.id, &old);
        ix.index(&self.sub.tenant_id, self.sub.id, &scope);
        if let Some((_, cur)) = ix.subs.get_mut(&self.sub.id) {
            *cur = scope;
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let sub = &self.sub;
        let mut ix = self.fanout.idx.write();
        if let Some((_, scope)) = ix.subs.remove(&sub.id) {
            ix.unindex(&sub.tenant_id, sub.id, &scope);
        }
        let key = (sub.tenant_id.clone(), sub.user_id.clone());
        if let Some(s) = ix.by_user.get_mut(&key) {
            s.remove(&sub.id);
            if s.is_empty() {
                ix.by_user.remove(&key);
            }
        }
        let last = match ix.per_tenant.get_mut(&sub.tenant_id) {
            Some(n) => {
                *n -= 1;
                *n == 0
            }
            None => false,
        };
        if last {
            ix.per_tenant.remove(&sub.tenant_id);
            // No socket left to deliver to: stop tailing this tenant.
            self.fanout.marks.lock().remove(&sub.tenant_id);
        }
    }
}

impl Fanout {
    /// Add a socket (receiving nothing until [`Handle::set_scope`]). `head` is the tenant's
    /// log head read at connect: tailing starts there when this is the tenant's first socket.
    pub fn register(
        self: &Arc<Self>,
        tenant_id: &str,
        user_id: &str,
        device_id: Option<String>,
        head: i64,
    ) -> (Handle, mpsc::Receiver<Arc<Delivery>>) {
        let (tx, rx) = mpsc::channel(SOCKET_QUEUE);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let sub = Arc::new(Sub {
            id,
            tenant_id: tenant_id.to_string(),
            user_id: user_id.to_string(),
            device_id,
            tx,
            flags: AtomicU8::new(0),
            wake: Notify::new(),
        });
        let mut ix = self.idx.write();
        ix.subs.insert(id, (sub.clone(), Scope::Nothing));
        ix.by_user
            .entry((tenant_id.to_string(), user_id.to_string()))
            .or_default()
            .insert(id);
        *ix.per_tenant.entry(tenant_id.to_string()).or_insert(0) += 1;
        self.marks
            .lock()
            .entry(tenant_id.to_string())
            .or_insert(head);
        drop(ix);
        (
            Handle {
                fanout: self.clone(),
                sub,
            },
            rx,
        )
    }

    /// Hand one entry to the sockets of its share (and the tenant-wide ones).
    fn deliver(&self, d: Arc<Delivery>) {
        let ix = self.idx.read();
        let tenant = &d.row.tenant_id;
        let shares = ix
            .by_share
            .get(tenant)
            .and_then(|m| m.get(&d.row.share_id))
            .into_iter()
            .flatten();
        let wide = ix.tenant_wide.get(tenant).into_iter().flatten();
        let mut n = 0u64;
        for id in shares.chain(wide) {
            if let Some((sub, _)) = ix.subs.get(id) {
                n += sub.offer(&d) as u64;
            }
        }
        metrics::counter!("scaidrive_sync_ws_events_total").increment(n);
    }

    /// Raise `MISSED` on every receiving socket of a tenant.
    fn missed_tenant(&self, tenant: &str) {
        let ix = self.idx.read();
        for (sub, scope) in ix.subs.values() {
            if sub.tenant_id == tenant && *scope != Scope::Nothing {
                sub.raise(MISSED);
            }
        }
    }

    /// Route a control event to the sockets it concerns.
    pub fn control(&self, ev: &Control) {
        let ix = self.idx.read();
        let (tenant, user, flag, device) = match ev {
            Control::AccessChanged { tenant_id, user_id } => (tenant_id, user_id, REFRESH, None),
            Control::PreferencesUpdated {
                tenant_id,
                user_id,
                device_id,
            } => (tenant_id, user_id, PREFERENCES, Some(device_id)),
        };
        let Some(ids) = ix.by_user.get(&(tenant.clone(), user.clone())) else {
            return;
        };
        for id in ids {
            if let Some((sub, _)) = ix.subs.get(id) {
                if device.is_none() || sub.device_id.as_ref() == device {
                    sub.raise(flag);
                }
            }
        }
    }

    fn tenants(&self) -> Vec<String> {
        self.marks.lock().keys().cloned().collect()
    }

    /// Deliver the tenant's entries after the last delivered position.
    async fn tail(&self, db: &Db, tenant: &str) {
        let mut delivered = 0usize;
        loop {
            let Some(from) = self.marks.lock().get(tenant).copied() else {
                return;
            };
            let rows: Result<Vec<ChangeRow>, sqlx::Error> = sqlx::query_as(&format!(
                "SELECT {CHANGE_COLS} FROM change_log WHERE tenant_id = ? AND position > ? ORDER BY position LIMIT ?"
            ))
            .bind(tenant)
            .bind(from)
            .bind(TAIL_PAGE)
            .fetch_all(&db.pool)
            .await;
            let rows = match rows {
                Ok(r) => r,
                Err(e) => {
                    // The mark stays: the next announcement retries; meanwhile clients pull.
                    tracing::warn!(event = "ws_fanout_read_failed", tenant_id = %tenant, error = %e);
                    self.missed_tenant(tenant);
                    return;
                }
            };
            let n = rows.len();
            let Some(last) = rows.last().map(|r| r.position) else {
                return;
            };
            for row in rows {
                self.deliver(Arc::new(Delivery {
                    row,
                    sync_frame: OnceLock::new(),
                    realtime_frame: OnceLock::new(),
                }));
            }
            if let Some(m) = self.marks.lock().get_mut(tenant) {
                *m = (*m).max(last);
            }
            delivered += n;
            if (n as i64) < TAIL_PAGE {
                return;
            }
            if delivered >= TAIL_MAX {
                if let Ok((head, _)) = super::api::head(db, tenant).await {
                    if let Some(m) = self.marks.lock().get_mut(tenant) {
                        *m = (*m).max(head);
                    }
                }
                self.missed_tenant(tenant);
                return;
            }
        }
    }
}

/// The fan-out task: drains announcements in batches (a tenant announced many times in a
/// batch is read once), routes control events, tails the announced tenants' logs.
pub fn spawn(db: Db, fanout: Arc<Fanout>, mut rx: mpsc::UnboundedReceiver<Signal>) {
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut tenants: Vec<String> = Vec::new();
            let mut all = false;
            let mut next = Some(first);
            while let Some(sig) = next {
                match sig {
                    Signal::Changed { tenant_id } => {
                        if !tenants.contains(&tenant_id) {
                            tenants.push(tenant_id);
                        }
                    }
                    Signal::Reread => all = true,
                    Signal::Control(c) => fanout.control(&c),
                }
                next = if tenants.len() < 1000 {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if all {
                tenants = fanout.tenants();
            }
            for t in tenants {
                fanout.tail(&db, &t).await;
            }
        }
    });
}
