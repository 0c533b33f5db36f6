//! The upstream-S3 metadata cache (`DGP_METADATA_CACHE_MB`, default 50, 0 = off): the
//! `dg-*` metadata of physical objects, as read by HEAD, so that a repeated LIST does not
//! HEAD every key again. Bounded in (estimated) bytes, LRU, entries expire after 10 minutes.
//!
//! Why it is safe to serve listings from it:
//! - an entry is used only if the object the listing shows still has the size, the
//!   Last-Modified second and (when the listing carries one: s3s-fs's does not) the ETag
//!   it had when its metadata was read, so a write by another client is noticed unless it
//!   lands in the same second with the same size (then metadata can be stale for at most
//!   the TTL);
//! - puts and deletes through the proxy drop the key's entry once upstream answered;
//! - every drop bumps an epoch, and a HEAD that started before a drop never fills the
//!   cache, so a slow HEAD cannot re-insert metadata older than a write it raced with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::meta::FileMetadata;

/// Entries older than this are refetched.
pub const TTL: Duration = Duration::from_secs(600);

/// What identifies the stored object a cached entry describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub size: u64,
    pub etag: Option<String>,
    /// Last-Modified, whole seconds (HEAD answers carry no more).
    pub modified: i64,
}

impl Stamp {
    /// Whether a listed object (`self`) is the one `cached` was read from.
    fn same_object(&self, cached: &Stamp) -> bool {
        self.size == cached.size
            && self.modified == cached.modified
            && match (&self.etag, &cached.etag) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

struct Entry {
    stamp: Stamp,
    meta: Option<FileMetadata>,
    at: Instant,
    cost: u64,
}

struct Inner {
    lru: lru::LruCache<(String, String), Entry>,
    bytes: u64,
}

pub struct MetaCache {
    inner: Mutex<Inner>,
    max_bytes: u64,
    ttl: Duration,
    epoch: AtomicU64,
}

/// Rough heap footprint of an entry: what the byte bound is measured in.
fn cost(bucket: &str, key: &str, stamp: &Stamp, meta: &Option<FileMetadata>) -> u64 {
    let s = |o: &Option<String>| o.as_ref().map_or(0, String::len);
    let m = meta.as_ref().map_or(0, |m| {
        m.tool.len()
            + m.original_name.len()
            + m.file_sha256.len()
            + m.created_at.len()
            + m.note.len()
            + s(&m.md5)
            + s(&m.multipart_etag)
            + s(&m.content_type)
            + s(&m.source_name)
            + s(&m.ref_path)
            + s(&m.ref_sha256)
            + s(&m.delta_cmd)
            + s(&m.delta_codec)
            + s(&m.encrypted)
            + s(&m.encryption_key_id)
            + s(&m.encrypted_native)
            + m.user_metadata
                .iter()
                .map(|(k, v)| k.len() + v.len() + 48)
                .sum::<usize>()
            + std::mem::size_of::<FileMetadata>()
    });
    (bucket.len() + key.len() + s(&stamp.etag) + m + 128) as u64
}

impl MetaCache {
    pub fn new(max_bytes: u64) -> Self {
        Self::with_ttl(max_bytes, TTL)
    }

    pub fn with_ttl(max_bytes: u64, ttl: Duration) -> Self {
        MetaCache {
            inner: Mutex::new(Inner {
                lru: lru::LruCache::unbounded(),
                bytes: 0,
            }),
            max_bytes,
            ttl,
            epoch: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    /// Call before reading metadata upstream; pass the result to [`MetaCache::insert`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The cached metadata of `key` if the entry is fresh and describes the object that is
    /// stored now (`stamp` from the listing), with the ETag HEAD saw (listings of some
    /// servers carry none). `Some((None, _))` = cached: the object has no dg metadata.
    pub fn get(
        &self,
        bucket: &str,
        key: &str,
        stamp: &Stamp,
    ) -> Option<(Option<FileMetadata>, Option<String>)> {
        if !self.enabled() {
            return None;
        }
        let k = (bucket.to_string(), key.to_string());
        let mut g = self.inner.lock();
        let hit = match g.lru.get(&k) {
            Some(e) if e.at.elapsed() < self.ttl && stamp.same_object(&e.stamp) => {
                Some((e.meta.clone(), e.stamp.etag.clone()))
            }
            Some(_) => {
                if let Some(old) = g.lru.pop(&k) {
                    g.bytes -= old.cost;
                }
                None
            }
            None => None,
        };
        drop(g);
        if hit.is_some() {
            metrics::counter!("deltaglider_metadata_cache_hits_total").increment(1);
        } else {
            metrics::counter!("deltaglider_metadata_cache_misses_total").increment(1);
        }
        hit
    }

    /// Stores metadata read upstream, unless some key was invalidated since `epoch` (the
    /// read may predate that write).
    pub fn insert(
        &self,
        bucket: &str,
        key: &str,
        stamp: Stamp,
        meta: Option<FileMetadata>,
        epoch: u64,
    ) {
        if !self.enabled() {
            return;
        }
        let c = cost(bucket, key, &stamp, &meta);
        if c > self.max_bytes {
            return;
        }
        let mut g = self.inner.lock();
        // Checked under the lock: `invalidate` bumps the epoch under the same lock.
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        let e = Entry {
            stamp,
            meta,
            at: Instant::now(),
            cost: c,
        };
        if let Some(old) = g.lru.put((bucket.to_string(), key.to_string()), e) {
            g.bytes -= old.cost;
        }
        g.bytes += c;
        while g.bytes > self.max_bytes {
            match g.lru.pop_lru() {
                Some((_, old)) => g.bytes -= old.cost,
                None => break,
            }
        }
    }

    /// Drops `key` (after a put or delete through the proxy).
    pub fn invalidate(&self, bucket: &str, key: &str) {
        if !self.enabled() {
            return;
        }
        let mut g = self.inner.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(old) = g.lru.pop(&(bucket.to_string(), key.to_string())) {
            g.bytes -= old.cost;
        }
    }

    /// Drops every entry of `bucket` (bucket deleted).
    pub fn invalidate_bucket(&self, bucket: &str) {
        if !self.enabled() {
            return;
        }
        let mut g = self.inner.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let keys: Vec<_> = g
            .lru
            .iter()
            .filter(|((b, _), _)| b == bucket)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some(old) = g.lru.pop(&k) {
                g.bytes -= old.cost;
            }
        }
    }

    /// (entries, estimated bytes)
    pub fn stats(&self) -> (usize, u64) {
        let g = self.inner.lock();
        (g.lru.len(), g.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64) -> Option<FileMetadata> {
        Some(FileMetadata {
            file_size: size,
            ..Default::default()
        })
    }

    fn st(size: u64, etag: &str) -> Stamp {
        Stamp {
            size,
            etag: Some(etag.into()),
            modified: 1000,
        }
    }

    #[test]
    fn hit_only_for_the_same_stored_object() {
        let c = MetaCache::new(1 << 20);
        c.insert("b", "k", st(10, "e1"), meta(100), c.epoch());
        assert_eq!(
            c.get("b", "k", &st(10, "e1")).unwrap().0.unwrap().file_size,
            100
        );
        // A listing without ETags (s3s-fs) matches on size and second.
        let no_etag = Stamp {
            etag: None,
            ..st(10, "")
        };
        assert!(c.get("b", "k", &no_etag).is_some());
        // Replaced upstream by someone else: later second, entry dropped.
        let later = Stamp {
            modified: 1001,
            ..no_etag.clone()
        };
        assert!(c.get("b", "k", &later).is_none());
        assert!(c.get("b", "k", &st(10, "e1")).is_none());
        // Different ETag: dropped as well.
        c.insert("b", "k", st(10, "e1"), meta(100), c.epoch());
        assert!(c.get("b", "k", &st(10, "e2")).is_none());
        assert!(c.get("b", "k", &st(10, "e1")).is_none());
        assert_eq!(c.stats().0, 0);
    }

    #[test]
    fn invalidation_drops_and_fences_racing_reads() {
        let c = MetaCache::new(1 << 20);
        c.insert("b", "k", st(10, "e1"), meta(100), c.epoch());
        let before = c.epoch();
        c.invalidate("b", "k");
        assert!(c.get("b", "k", &st(10, "e1")).is_none());
        // A HEAD that started before the write must not repopulate the cache.
        c.insert("b", "k", st(10, "e1"), meta(100), before);
        assert!(c.get("b", "k", &st(10, "e1")).is_none());
        c.insert("b", "k", st(10, "e1"), meta(200), c.epoch());
        assert_eq!(
            c.get("b", "k", &st(10, "e1")).unwrap().0.unwrap().file_size,
            200
        );
        c.invalidate_bucket("b");
        assert!(c.get("b", "k", &st(10, "e1")).is_none());
    }

    #[test]
    fn bounded_by_bytes_expires_and_can_be_off() {
        let c = MetaCache::new(2000);
        for i in 0..100 {
            c.insert("b", &format!("k{i}"), st(1, "e"), meta(1), c.epoch());
        }
        let (n, bytes) = c.stats();
        assert!(
            bytes <= 2000 && n < 100 && n > 0,
            "{n} entries, {bytes} bytes"
        );
        assert!(c.get("b", "k99", &st(1, "e")).is_some(), "newest is kept");
        assert!(c.get("b", "k0", &st(1, "e")).is_none(), "oldest is evicted");

        let c = MetaCache::with_ttl(1 << 20, Duration::from_millis(0));
        c.insert("b", "k", st(1, "e"), meta(1), c.epoch());
        assert!(c.get("b", "k", &st(1, "e")).is_none(), "expired");

        let off = MetaCache::new(0);
        off.insert("b", "k", st(1, "e"), meta(1), off.epoch());
        assert!(off.get("b", "k", &st(1, "e")).is_none());
    }
}
