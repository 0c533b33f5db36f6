//! In-memory LRU of deltaspace references, bounded in bytes (`DGP_CACHE_MB`). Entries are
//! keyed by (bucket, deltaspace) and carry the reference's SHA-256 so that a replaced or
//! corrupt reference is never served from cache.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;

pub struct RefCache {
    inner: Mutex<Inner>,
    max_bytes: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

struct Inner {
    lru: lru::LruCache<(String, String), (String, Bytes)>,
    bytes: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct CacheStats {
    pub size_bytes: u64,
    pub entries: u64,
    pub max_bytes: u64,
    pub hits: u64,
    pub misses: u64,
}

impl RefCache {
    pub fn new(max_bytes: u64) -> Self {
        RefCache {
            inner: Mutex::new(Inner {
                lru: lru::LruCache::unbounded(),
                bytes: 0,
            }),
            max_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Returns the cached reference if its SHA-256 matches `sha` (when given).
    pub fn get(&self, bucket: &str, space: &str, sha: Option<&str>) -> Option<Bytes> {
        let mut g = self.inner.lock();
        let hit = match g.lru.get(&(bucket.to_string(), space.to_string())) {
            Some((s, b)) if sha.is_none_or(|want| want == s) => Some(b.clone()),
            _ => None,
        };
        drop(g);
        if hit.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("deltaglider_cache_hits_total").increment(1);
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("deltaglider_cache_misses_total").increment(1);
        }
        hit
    }

    pub fn put(&self, bucket: &str, space: &str, sha: &str, data: Bytes) {
        let len = data.len() as u64;
        if len > self.max_bytes {
            return;
        }
        let mut g = self.inner.lock();
        if let Some((_, old)) = g.lru.put(
            (bucket.to_string(), space.to_string()),
            (sha.to_string(), data),
        ) {
            g.bytes -= old.len() as u64;
        }
        g.bytes += len;
        while g.bytes > self.max_bytes {
            match g.lru.pop_lru() {
                Some((_, (_, b))) => g.bytes -= b.len() as u64,
                None => break,
            }
        }
    }

    pub fn evict(&self, bucket: &str, space: &str) {
        let mut g = self.inner.lock();
        if let Some((_, b)) = g.lru.pop(&(bucket.to_string(), space.to_string())) {
            g.bytes -= b.len() as u64;
        }
    }

    pub fn stats(&self) -> CacheStats {
        let g = self.inner.lock();
        CacheStats {
            size_bytes: g.bytes,
            entries: g.lru.len() as u64,
            max_bytes: self.max_bytes,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_by_bytes_and_checks_sha() {
        let c = RefCache::new(10);
        c.put("b", "a", "s1", Bytes::from_static(b"123456"));
        c.put("b", "c", "s2", Bytes::from_static(b"123456"));
        assert!(c.get("b", "a", None).is_none());
        assert!(c.get("b", "c", Some("s2")).is_some());
        assert!(c.get("b", "c", Some("other")).is_none());
        assert!(c.stats().size_bytes <= 10);
    }
}
