//! The object store port: where chunk bytes live. Keys follow the operator guide's layout
//! (`chunks/{tenant_id}/{h[0:2]}/{h[2:4]}/{h}`); a `put` returns only once the bytes are
//! durable, so the database row written after it can safely reference them.

pub mod local;
#[cfg(feature = "s3")]
pub mod s3;

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Store `data` under `key`, durably (fsync) before returning. Overwrites atomically.
    async fn put(&self, key: &str, data: Bytes) -> std::io::Result<()>;
    /// Stream `len` bytes from `offset` (the whole object when `len` is `None`).
    async fn get(&self, key: &str, offset: u64, len: Option<u64>) -> std::io::Result<ByteStream>;
    /// Read a whole (chunk-sized) object into memory.
    async fn read_all(&self, key: &str) -> std::io::Result<Bytes>;
    async fn delete(&self, key: &str) -> std::io::Result<()>;
    async fn exists(&self, key: &str) -> std::io::Result<bool>;
    /// Readiness probe.
    async fn ready(&self) -> bool;
}

/// Content address of a chunk.
pub fn chunk_key(tenant_id: &str, hash: &str) -> String {
    format!("chunks/{tenant_id}/{}/{}/{hash}", &hash[0..2], &hash[2..4])
}
