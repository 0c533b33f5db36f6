//! Rate limiting seam: a [`RateLimiter`] decides per request; the embedded default allows
//! everything. The `Caller` extractor consults it on every authenticated request and answers
//! `RATE_LIMITED` (429, `Retry-After`) on a rejection; a Redis sliding-window limiter (per
//! token/user/tenant) implements this trait in production.

/// Verdict for one request of `cost` units.
pub enum Decision {
    Allow,
    Reject {
        dimension: &'static str,
        retry_after_secs: u64,
    },
}

pub trait RateLimiter: Send + Sync {
    fn check(&self, tenant_id: &str, user_id: &str, cost: u32) -> Decision;
}

pub struct Unlimited;

impl RateLimiter for Unlimited {
    fn check(&self, _tenant_id: &str, _user_id: &str, _cost: u32) -> Decision {
        Decision::Allow
    }
}

/// In-process fixed one-minute windows per user (embedded mode; one process sees all traffic).
pub struct PerUserWindow {
    limit: u32,
    windows: parking_lot::Mutex<std::collections::HashMap<(String, String), (u64, u32)>>,
}

impl PerUserWindow {
    pub fn new(limit_per_minute: u32) -> Self {
        PerUserWindow {
            limit: limit_per_minute,
            windows: Default::default(),
        }
    }
}

impl RateLimiter for PerUserWindow {
    fn check(&self, tenant_id: &str, user_id: &str, cost: u32) -> Decision {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let minute = now / 60;
        let mut w = self.windows.lock();
        if w.len() > 100_000 {
            // Old windows of idle users: drop them all rather than grow without bound.
            w.retain(|_, (m, _)| *m == minute);
        }
        let e = w
            .entry((tenant_id.to_string(), user_id.to_string()))
            .or_insert((minute, 0));
        if e.0 != minute {
            *e = (minute, 0);
        }
        if e.1.saturating_add(cost) > self.limit {
            return Decision::Reject {
                dimension: "user",
                retry_after_secs: 60 - now % 60,
            };
        }
        e.1 += cost;
        Decision::Allow
    }
}
