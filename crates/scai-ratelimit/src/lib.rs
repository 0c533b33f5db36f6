//! # scai-ratelimit
//!
//! Sliding-window rate limiting with a per-request **cost**, over several **dimensions** at
//! once (`token`, `user`, `tenant`), atomic across dimensions: a request denied in one
//! dimension consumes nothing in the others.
//!
//! ```no_run
//! # async fn demo() -> Result<(), scai_ratelimit::Error> {
//! use scai_ratelimit::{CostClass, Dimension, Limiter, LimiterConfig, RedisOptions};
//! let limiter = Limiter::redis("redis://127.0.0.1:6379/0", RedisOptions::default(), LimiterConfig::default())?;
//! let d = limiter
//!     .check(
//!         &[
//!             (Dimension::Token, "jti-123", 1000),
//!             (Dimension::User, "usr_1", 5000),
//!             (Dimension::Tenant, "ten_1", 50_000),
//!         ],
//!         CostClass::Search.cost(),
//!     )
//!     .await;
//! // X-RateLimit-Limit / -Remaining / -Reset, and Retry-After on a deny:
//! let headers: Vec<(&str, String)> = d.headers();
//! if !d.allowed {
//!     // 429 RATE_LIMITED with details.dimension = d.dimension_hit.unwrap().as_str()
//! }
//! # Ok(()) }
//! ```
//!
//! ## Algorithm
//! A *sliding window counter*: per `(dimension, key)` one counter per fixed window of
//! `window` (default 60 s); the units used in the sliding window ending now are
//! `curr + floor(prev * (window - elapsed) / window)`. A request of `cost` units is admitted
//! when that plus `cost` fits under the limit in **every** dimension, and only then is `cost`
//! added to each. See [`window`] for the arithmetic and `redis_backend` for why this
//! rather than a sorted-set log.
//!
//! ## Backends
//! - [`MemoryBackend`]: in-process, for the embedded single-process mode.
//! - `RedisBackend` (feature `redis`, default): one Lua script run with `EVALSHA` does the
//!   read-decide-increment for all dimensions atomically; all replicas share the counters.
//!   `redis://` and `rediss://` (rustls) URLs.
//!
//! ## Failure behaviour
//! A check never fails. When the backend cannot be asked (Redis down, timeout), the request
//! is **allowed** (fail-open: an outage of the cache must not take the API down), a
//! `rate_limit_backend_unavailable` warning is logged and the counter
//! `<prefix>_rate_limit_backend_errors_total{backend}` is incremented; the decision has
//! `degraded = true`. The Redis connection reconnects by itself, so limiting resumes when
//! Redis returns. Counters live only in Redis: losing Redis resets them (documented as
//! acceptable by the deployment guide).
//!
//! ## Metrics
//! With a metric prefix `p` (default `scaidrive`): `p_rate_limit_rejections_total{dimension}`
//! on every deny, and `p_rate_limit_backend_errors_total{backend}` on every fail-open.

mod backend;
mod error;
mod memory;
#[cfg(feature = "redis")]
mod redis_backend;
mod types;
pub mod window;

use std::sync::Arc;
use std::time::Duration;

pub use backend::{Backend, Taken};
pub use error::Error;
pub use memory::MemoryBackend;
#[cfg(feature = "redis")]
pub use redis_backend::{RedisBackend, RedisOptions};
pub use types::*;

/// Limiter-wide settings.
#[derive(Clone, Debug)]
pub struct LimiterConfig {
    /// Length of the sliding window; limits are "units per window". Default 60 s.
    pub window: Duration,
    /// Prefix of the metric names (`scaidrive` → `scaidrive_rate_limit_rejections_total`).
    pub metric_prefix: String,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            metric_prefix: "scaidrive".into(),
        }
    }
}

/// The rate limiter: a backend plus the decision logic and metrics. Cheap to clone.
#[derive(Clone)]
pub struct Limiter {
    backend: Arc<dyn Backend>,
    window_ms: u64,
    rejections_metric: String,
    errors_metric: String,
}

impl Limiter {
    /// A limiter over any backend.
    pub fn new(backend: Arc<dyn Backend>, config: LimiterConfig) -> Self {
        Self {
            backend,
            window_ms: (config.window.as_millis() as u64).max(1),
            rejections_metric: format!("{}_rate_limit_rejections_total", config.metric_prefix),
            errors_metric: format!("{}_rate_limit_backend_errors_total", config.metric_prefix),
        }
    }

    /// An in-process limiter (embedded mode).
    pub fn in_memory(config: LimiterConfig) -> Self {
        Self::new(Arc::new(MemoryBackend::new()), config)
    }

    /// A Redis-backed limiter shared by every process using the same Redis and key prefix.
    /// Does not connect yet; must be called inside a Tokio runtime.
    #[cfg(feature = "redis")]
    pub fn redis(url: &str, options: RedisOptions, config: LimiterConfig) -> Result<Self, Error> {
        Ok(Self::new(
            Arc::new(RedisBackend::new(url, options)?),
            config,
        ))
    }

    /// The backend's short name (`memory`, `redis`).
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Admit-and-count `cost` units in every `(dimension, key, limit)`; limits are units per
    /// window. Never fails: a backend failure fails open (see the crate docs).
    pub async fn check(&self, checks: &[(Dimension, &str, u64)], cost: u32) -> Decision {
        self.decide(checks, cost, None).await
    }

    /// [`Limiter::check`] at an explicit clock (milliseconds since the Unix epoch) instead
    /// of the backend's: for tests and replays.
    pub async fn check_at(
        &self,
        checks: &[(Dimension, &str, u64)],
        cost: u32,
        now_ms: u64,
    ) -> Decision {
        self.decide(checks, cost, Some(now_ms)).await
    }

    async fn decide(
        &self,
        checks: &[(Dimension, &str, u64)],
        cost: u32,
        now_ms: Option<u64>,
    ) -> Decision {
        let cost = u64::from(cost);
        if checks.is_empty() {
            return Decision {
                allowed: true,
                dimension_hit: None,
                dimension: None,
                limit: 0,
                remaining: 0,
                reset_unix: 0,
                retry_after_secs: 0,
                degraded: false,
                per_dimension: Vec::new(),
            };
        }
        match self
            .backend
            .take(checks, cost, self.window_ms, now_ms)
            .await
        {
            Ok(taken) => {
                let d = decision_from(checks, cost, self.window_ms, &taken);
                if let Some(dim) = d.dimension_hit {
                    metrics::counter!(self.rejections_metric.clone(), "dimension" => dim.as_str())
                        .increment(1);
                }
                d
            }
            Err(e) => {
                tracing::warn!(
                    event = "rate_limit_backend_unavailable",
                    backend = self.backend.name(),
                    error = %e,
                    "rate-limit backend unavailable; allowing the request (fail-open)"
                );
                metrics::counter!(self.errors_metric.clone(), "backend" => self.backend.name())
                    .increment(1);
                fail_open(checks, now_ms, self.window_ms)
            }
        }
    }
}

/// Turn the raw counters into the decision the HTTP layer needs.
fn decision_from(
    checks: &[(Dimension, &str, u64)],
    cost: u64,
    window_ms: u64,
    taken: &Taken,
) -> Decision {
    let per_dimension: Vec<DimensionStatus> = checks
        .iter()
        .zip(&taken.counts)
        .map(|((dim, _, limit), counts)| {
            let o = window::outcome(
                *counts,
                cost,
                *limit,
                taken.now_ms,
                window_ms,
                taken.counted,
            );
            DimensionStatus {
                dimension: *dim,
                limit: *limit,
                remaining: o.remaining,
                reset_unix: o.reset_unix,
                admits: o.admits,
                retry_after_secs: o.wait_ms.div_ceil(1000),
            }
        })
        .collect();
    let shown = if taken.counted {
        // Most constrained: smallest remaining share of its limit (first one on ties).
        per_dimension.iter().min_by(|a, b| {
            (u128::from(a.remaining) * u128::from(b.limit.max(1)))
                .cmp(&(u128::from(b.remaining) * u128::from(a.limit.max(1))))
        })
    } else {
        // The denying dimension that frees up last: waiting for it is enough for all.
        per_dimension.iter().filter(|s| !s.admits).fold(
            None,
            |best: Option<&DimensionStatus>, s| match best {
                Some(b) if b.retry_after_secs >= s.retry_after_secs => Some(b),
                _ => Some(s),
            },
        )
    };
    let shown = shown.or(per_dimension.first()).cloned();
    let (dimension, limit, remaining, reset_unix, retry) = match &shown {
        Some(s) => (
            Some(s.dimension),
            s.limit,
            s.remaining,
            s.reset_unix,
            s.retry_after_secs,
        ),
        None => (None, 0, 0, 0, 0),
    };
    Decision {
        allowed: taken.counted,
        dimension_hit: if taken.counted { None } else { dimension },
        dimension,
        limit,
        remaining,
        reset_unix,
        retry_after_secs: if taken.counted { 0 } else { retry.max(1) },
        degraded: false,
        per_dimension,
    }
}

/// The decision when the backend could not be asked: allow, show the first dimension's full
/// limit.
fn fail_open(checks: &[(Dimension, &str, u64)], now_ms: Option<u64>, window_ms: u64) -> Decision {
    let now_ms = now_ms.unwrap_or_else(backend::system_now_ms);
    let reset_unix = ((now_ms / window_ms + 1) * window_ms).div_ceil(1000);
    let per_dimension: Vec<DimensionStatus> = checks
        .iter()
        .map(|(dim, _, limit)| DimensionStatus {
            dimension: *dim,
            limit: *limit,
            remaining: *limit,
            reset_unix,
            admits: true,
            retry_after_secs: 0,
        })
        .collect();
    let first = &per_dimension[0];
    Decision {
        allowed: true,
        dimension_hit: None,
        dimension: Some(first.dimension),
        limit: first.limit,
        remaining: first.remaining,
        reset_unix,
        retry_after_secs: 0,
        degraded: true,
        per_dimension,
    }
}
