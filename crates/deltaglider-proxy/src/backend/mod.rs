//! Storage backends: the physical layer under the delta engine. One trait, two real
//! implementations: a filesystem tree with `user.dg.metadata` xattrs, and an upstream S3
//! bucket with `x-amz-meta-dg-*` metadata. Keys here are physical keys (`x.zip.delta`,
//! `reference.bin`), never the user-visible ones.

pub mod build;
pub mod fs;
pub mod metacache;
pub mod s3;
pub mod sse;

use std::ops::Range;
use std::path::PathBuf;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::Stream;

use crate::error::ProxyError;
use crate::meta::FileMetadata;

pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// Bytes to store: in memory (deltas, references) or a spooled temp file (passthrough).
pub enum PutData {
    Bytes(Bytes),
    /// A temp file the backend may move (rename) into place or upload from.
    File(PathBuf),
}

/// One stored object as a backend sees it.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub key: String,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
    pub etag: Option<String>,
    pub meta: Option<FileMetadata>,
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    /// Whether this backend decrypts proxy-AES objects (the encryption wrapper with a key
    /// or a legacy shim). A plain backend must refuse them rather than serve ciphertext.
    fn decrypts(&self) -> bool {
        false
    }
    async fn create_bucket(&self, bucket: &str) -> Result<(), ProxyError>;
    async fn delete_bucket(&self, bucket: &str) -> Result<(), ProxyError>;
    async fn bucket_exists(&self, bucket: &str) -> Result<bool, ProxyError>;
    async fn list_buckets(&self) -> Result<Vec<(String, DateTime<Utc>)>, ProxyError>;
    /// Stores bytes and metadata so that the object becomes visible atomically, with its
    /// metadata, or not at all.
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        data: PutData,
        meta: &FileMetadata,
    ) -> Result<(), ProxyError>;
    async fn get_bytes(&self, bucket: &str, key: &str) -> Result<Bytes, ProxyError>;
    async fn get_stream(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, ProxyError>;
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<StoredObject>, ProxyError>;
    async fn delete(&self, bucket: &str, key: &str) -> Result<(), ProxyError>;
    /// Every stored object under `prefix` (recursive), sorted by key; with metadata when
    /// `with_meta` (the fs backend always has it; the S3 backend needs a HEAD per key).
    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        with_meta: bool,
    ) -> Result<Vec<StoredObject>, ProxyError>;
    /// Directory where spooled uploads go (same filesystem as the data for the fs backend,
    /// so a rename is atomic).
    fn spool_dir(&self) -> PathBuf;
}
