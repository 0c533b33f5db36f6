//! Per-bucket soft quotas (`storage.buckets.<name>.quota_bytes`): a write into a bucket
//! whose stored original bytes are already at or over its quota is refused with 403
//! `QuotaExceeded`; `quota_bytes: 0` freezes the bucket. "Soft": the check happens before
//! a write, so the one write that crosses the line lands (and everything after it is
//! refused).
//!
//! Usage is the sum of user-visible object sizes (original bytes, not the smaller stored
//! deltas: the quota is about what users put in). It is scanned once per bucket on the
//! first write that needs it, then kept current by adjusting on the writes and deletes
//! that pass through the S3 handlers. Only buckets that have a quota are tracked; a write
//! into an untracked bucket drops any stale figure so a quota added later rescans.

use std::collections::HashMap;

use s3s::{S3Error, S3ErrorCode, S3Result};

use super::{perr, Proxy};

#[derive(Default)]
pub struct Usage {
    bytes: parking_lot::Mutex<HashMap<String, u64>>,
}

impl Usage {
    /// The bucket's configured quota, if any (re-read each time: the admin API may change it).
    fn quota(p: &Proxy, bucket: &str) -> Option<u64> {
        p.state
            .engine
            .policies
            .read()
            .get(bucket)
            .and_then(|b| b.quota_bytes)
    }

    /// Refuses a write into `bucket` when it is at or over its quota.
    pub async fn admit(&self, p: &Proxy, bucket: &str) -> S3Result<()> {
        let Some(quota) = Self::quota(p, bucket) else {
            return Ok(());
        };
        let used = if quota == 0 {
            0
        } else {
            self.current(p, bucket).await?
        };
        if used >= quota {
            metrics::counter!("deltaglider_quota_rejections_total").increment(1);
            let mut e = S3Error::with_message(
                S3ErrorCode::Custom("QuotaExceeded".into()),
                format!(
                    "bucket {bucket:?} is at or over its quota: {used} of {quota} bytes stored \
                     (storage.buckets.{bucket}.quota_bytes)"
                ),
            );
            e.set_status_code(http::StatusCode::FORBIDDEN);
            return Err(e);
        }
        Ok(())
    }

    /// Bytes stored in a quota'd bucket: the kept figure, or a one-off scan.
    async fn current(&self, p: &Proxy, bucket: &str) -> S3Result<u64> {
        if let Some(n) = self.bytes.lock().get(bucket) {
            return Ok(*n);
        }
        let page = p
            .state
            .engine
            .list(bucket, "", None, None, usize::MAX, &|_| true)
            .await
            .map_err(perr)?;
        let total: u64 = page.objects.iter().map(|e| e.size).sum();
        tracing::debug!(bucket, bytes = total, "quota: usage scanned");
        Ok(*self.bytes.lock().entry(bucket.to_string()).or_insert(total))
    }

    /// The current size of `key` when the bucket is tracked (needed to adjust usage when
    /// the key is overwritten or deleted); None when untracked or absent.
    pub async fn size_before(&self, p: &Proxy, bucket: &str, key: &str) -> Option<u64> {
        Self::quota(p, bucket)?;
        let r = p.state.engine.resolve(bucket, key).await.ok()?;
        Some(r.meta.file_size)
    }

    /// After a successful write of `new` bytes replacing `old` bytes.
    pub fn wrote(&self, p: &Proxy, bucket: &str, old: Option<u64>, new: u64) {
        self.adjust(p, bucket, |n| {
            n.saturating_sub(old.unwrap_or(0)).saturating_add(new)
        });
    }

    /// After a successful delete of an object of `old` bytes.
    pub fn deleted(&self, p: &Proxy, bucket: &str, old: Option<u64>) {
        self.adjust(p, bucket, |n| n.saturating_sub(old.unwrap_or(0)));
    }

    fn adjust(&self, p: &Proxy, bucket: &str, f: impl FnOnce(u64) -> u64) {
        let tracked = Self::quota(p, bucket).is_some();
        let mut g = self.bytes.lock();
        if !tracked {
            g.remove(bucket);
            return;
        }
        if let Some(n) = g.get_mut(bucket) {
            *n = f(*n);
        }
    }
}
