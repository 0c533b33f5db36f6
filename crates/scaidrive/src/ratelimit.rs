//! Rate limiting seam: a [`RateLimiter`] decides per request; the embedded default allows
//! everything. A Redis sliding-window limiter (per token/user/tenant, `RATE_LIMITED` +
//! `Retry-After`) implements this trait in production.

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
