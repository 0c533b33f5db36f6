//! The object store port: where chunk bytes live. Keys follow the operator guide's layout:
//! `chunks/{tenant_id}/{h[0:2]}/{h[2:4]}/{h}` for content-addressed chunks,
//! `uploads/{session_id}/chunks/{index}` for the pending chunks of a resumable upload (moved to
//! their content address when the upload completes) and `avatars/{tenant_id}/{user_id}`. A
//! `put` returns only once the bytes are durable, so the database row written after it can
//! safely reference them.

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
    /// Store `data` under `key` only if nothing is there yet; `Ok(false)` when the key already
    /// exists (its bytes are left alone). Durable like `put`. Pending chunks use it so the bytes
    /// under one pending key never change once written (see `upload`).
    async fn put_new(&self, key: &str, data: Bytes) -> std::io::Result<bool>;
    /// Make the object at `from` durably available at `to` (rename on a filesystem, server-side
    /// copy on S3; the source may remain until `delete_prefix`). `Ok(false)` when `from` does
    /// not exist.
    async fn promote(&self, from: &str, to: &str) -> std::io::Result<bool>;
    /// Delete every object whose key starts with `prefix` (which ends with `/`).
    async fn delete_prefix(&self, prefix: &str) -> std::io::Result<()>;
    /// Readiness probe.
    async fn ready(&self) -> bool;
}

/// Where chunk `index` of resumable upload `session_id` waits until the upload completes.
pub fn pending_key(session_id: &str, index: i64) -> String {
    format!("uploads/{session_id}/chunks/{index}")
}

/// The prefix holding every pending chunk of one upload session.
pub fn pending_prefix(session_id: &str) -> String {
    format!("uploads/{session_id}/")
}

/// Content address of a chunk.
pub fn chunk_key(tenant_id: &str, hash: &str) -> String {
    format!("chunks/{tenant_id}/{}/{}/{hash}", &hash[0..2], &hash[2..4])
}
