//! The in-memory audit ring (`DGP_AUDIT_RING_SIZE`, default 500): IAM denials and admin
//! mutations, newest first through the admin API. Every entry is also logged at info level
//! (the authoritative, persistent audit trail is the log stream). Resets on restart.

use std::collections::VecDeque;

use parking_lot::Mutex;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub timestamp: String,
    pub action: String,
    pub user: String,
    pub target: String,
    pub ip: String,
    pub ua: String,
    pub bucket: String,
    pub path: String,
}

pub struct AuditRing {
    cap: usize,
    ring: Mutex<VecDeque<AuditEntry>>,
}

/// Keeps log lines and the JSON view free of control characters and bounded in length.
fn sanitize(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(512).collect()
}

impl AuditRing {
    pub fn new(cap: usize) -> Self {
        AuditRing {
            cap: cap.max(1),
            ring: Mutex::new(VecDeque::new()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        action: &str,
        user: &str,
        target: &str,
        ip: &str,
        ua: &str,
        bucket: &str,
        path: &str,
    ) {
        let e = AuditEntry {
            timestamp: crate::meta::now_timestamp(),
            action: sanitize(action),
            user: sanitize(user),
            target: sanitize(target),
            ip: sanitize(ip),
            ua: sanitize(ua),
            bucket: sanitize(bucket),
            path: sanitize(path),
        };
        tracing::info!(target: "deltaglider_proxy::audit", action = %e.action, user = %e.user, target_name = %e.target, ip = %e.ip, bucket = %e.bucket, path = %e.path, "audit");
        let mut r = self.ring.lock();
        if r.len() >= self.cap {
            r.pop_back();
        }
        r.push_front(e);
    }

    pub fn recent(&self, limit: usize) -> Vec<AuditEntry> {
        self.ring.lock().iter().take(limit).cloned().collect()
    }
}
