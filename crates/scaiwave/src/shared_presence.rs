//! Presence across replicas (only with `SCAIWAVE_REDIS_URL`): every replica records in Redis
//! which users hold a socket on it, so `GET /v1/presence` on one replica sees sockets held by
//! another. One sorted set per user (`<prefix>:presence:<tenant>:<user>`), one member per
//! replica scored with its expiry (ms); a replica refreshes its members every ping interval,
//! so a crashed replica's users turn offline within the TTL. Redis errors are logged and
//! the replica falls back to what it knows locally.

use std::collections::HashSet;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::ConnectionManager;

pub struct SharedPresence {
    conn: ConnectionManager,
    prefix: String,
    replica: String,
    ttl: Duration,
    /// (tenant, user) with at least one socket on this replica.
    local: Mutex<HashSet<(String, String)>>,
}

impl SharedPresence {
    pub async fn connect(url: &str, prefix: &str, ttl: Duration) -> anyhow::Result<SharedPresence> {
        let client = redis::Client::open(url)?;
        let conn = tokio::time::timeout(Duration::from_secs(2), ConnectionManager::new(client))
            .await
            .map_err(|_| anyhow::anyhow!("timed out connecting to Redis"))??;
        Ok(SharedPresence {
            conn,
            prefix: prefix.to_string(),
            replica: uuid::Uuid::new_v4().to_string(),
            ttl,
            local: Mutex::new(HashSet::new()),
        })
    }

    fn key(&self, tenant: &str, user: &str) -> String {
        format!("{}:presence:{}:{}", self.prefix, tenant, user)
    }

    async fn mark(&self, pairs: &[(String, String)]) {
        if pairs.is_empty() {
            return;
        }
        let until = crate::db::now_ms() + self.ttl.as_millis() as i64;
        let mut pipe = redis::pipe();
        for (t, u) in pairs {
            let k = self.key(t, u);
            pipe.zadd(&k, &self.replica, until)
                .ignore()
                .pexpire(&k, self.ttl.as_millis() as i64)
                .ignore();
        }
        let mut c = self.conn.clone();
        if let Err(e) = pipe.query_async::<()>(&mut c).await {
            tracing::warn!(event = "presence.shared_unavailable", error = %e, "presence.shared_unavailable");
        }
    }

    /// The user's first socket on this replica opened.
    pub async fn online(&self, tenant: &str, user: &str) {
        self.local
            .lock()
            .insert((tenant.to_string(), user.to_string()));
        self.mark(&[(tenant.to_string(), user.to_string())]).await;
    }

    /// The user's last socket on this replica closed.
    pub async fn offline(&self, tenant: &str, user: &str) {
        self.local
            .lock()
            .remove(&(tenant.to_string(), user.to_string()));
        let mut c = self.conn.clone();
        let r: redis::RedisResult<()> = redis::cmd("ZREM")
            .arg(self.key(tenant, user))
            .arg(&self.replica)
            .query_async(&mut c)
            .await;
        if let Err(e) = r {
            tracing::warn!(event = "presence.shared_unavailable", error = %e, "presence.shared_unavailable");
        }
    }

    /// Refresh this replica's entries (called every ping interval).
    pub async fn refresh(&self) {
        let pairs: Vec<(String, String)> = self.local.lock().iter().cloned().collect();
        for chunk in pairs.chunks(500) {
            self.mark(chunk).await;
        }
    }

    /// Which of `users` hold a live socket on any replica (`None` when Redis cannot say).
    pub async fn online_of(&self, tenant: &str, users: &[&str]) -> Option<Vec<bool>> {
        if users.is_empty() {
            return Some(Vec::new());
        }
        let now = crate::db::now_ms();
        let mut pipe = redis::pipe();
        for u in users {
            pipe.zcount(self.key(tenant, u), now, "+inf");
        }
        let mut c = self.conn.clone();
        match pipe.query_async::<Vec<u64>>(&mut c).await {
            Ok(v) => Some(v.into_iter().map(|n| n > 0).collect()),
            Err(e) => {
                tracing::warn!(event = "presence.shared_unavailable", error = %e, "presence.shared_unavailable");
                None
            }
        }
    }
}
