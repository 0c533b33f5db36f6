//! The storage interface both backends implement: one atomic "read every counter, and if
//! all dimensions admit the cost, add it to each" step.

use async_trait::async_trait;

use crate::window::WindowCounts;
use crate::{Dimension, Error};

/// The counters a backend read and whether it counted the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taken {
    /// The clock the backend decided with (milliseconds since the Unix epoch).
    pub now_ms: u64,
    /// True when every dimension admitted the cost and it was added to all of them.
    pub counted: bool,
    /// Counters before the request, one per check, in order.
    pub counts: Vec<WindowCounts>,
}

/// Counter storage. Implementations must make [`Backend::take`] atomic across all checks:
/// a request denied in one dimension consumes nothing in the others, and two concurrent
/// requests never both see the same last free units.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Short name for logs (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// Atomically admit-and-count `cost` units in every `(dimension, key, limit)`.
    /// `now_ms` overrides the backend's clock (tests, replays); `None` uses the backend's
    /// own clock (the Redis server's `TIME` for the Redis backend, so replicas agree).
    async fn take(
        &self,
        checks: &[(Dimension, &str, u64)],
        cost: u64,
        window_ms: u64,
        now_ms: Option<u64>,
    ) -> Result<Taken, Error>;
}

/// Milliseconds since the Unix epoch by this process's clock.
pub(crate) fn system_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
