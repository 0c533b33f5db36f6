//! Per-key token buckets (one key per user): the rate limit client-sent events must pass
//! before they may enter the stream. In memory, per replica; a cluster-wide cap would be the
//! per-replica rate times the replica count.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub struct RateLimiter {
    rate_per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `rate_per_sec` tokens refill per second up to `burst`.
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        RateLimiter {
            rate_per_sec: rate_per_sec.max(0.0),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one token for `key`; `Err(retry_after)` when the bucket is empty.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut g = self.buckets.lock();
        if g.len() > 100_000 {
            // Forget full buckets so the map cannot grow without bound.
            let (rate, burst) = (self.rate_per_sec, self.burst);
            g.retain(|_, (t, at)| *t + now.duration_since(*at).as_secs_f64() * rate < burst);
        }
        let (tokens, at) = g.entry(key.to_string()).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.rate_per_sec).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - *tokens;
            let secs = if self.rate_per_sec > 0.0 {
                missing / self.rate_per_sec
            } else {
                60.0
            };
            Err(Duration::from_secs_f64(secs.max(0.001)))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn burst_then_refuse() {
        let rl = super::RateLimiter::new(0.0, 3);
        assert!(rl.check("u").is_ok());
        assert!(rl.check("u").is_ok());
        assert!(rl.check("u").is_ok());
        assert!(rl.check("u").is_err());
        assert!(rl.check("other").is_ok());
    }
}
