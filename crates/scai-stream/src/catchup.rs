//! The product's side of catch-up: where the engine reads events it did not receive live.
//! The hub uses [`EventSource::head`] and [`EventSource::range`] to fill gaps in its reorder
//! buffer; sessions opened with a `since` position replay [`EventSource::visible_after`]
//! before going live.

use async_trait::async_trait;

use crate::{Delivery, StreamError};

#[async_trait]
pub trait EventSource<E>: Send + Sync + 'static {
    /// The last committed position of the tenant (0 when none).
    async fn head(&self, tenant: &str) -> Result<u64, StreamError>;
    /// Committed events with `from <= position <= to`, in order, with their audiences.
    async fn range(
        &self,
        tenant: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<Delivery<E>>, StreamError>;
    /// Events `user` may see with position > `after`, in order, at most `limit`.
    async fn visible_after(
        &self,
        tenant: &str,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, E)>, StreamError>;
}
