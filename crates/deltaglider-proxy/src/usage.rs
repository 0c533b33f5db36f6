//! Prefix usage: background scans that total, per common prefix, how many user objects a
//! bucket holds, how many bytes clients see (original) and how many the backend stores
//! (deltas, references and passthrough objects as stored), and the cache of their results.
//!
//! Internal objects (`reference.bin`, the `.delta` names) never appear as user keys: a
//! delta counts as its user key with its original size, a reference only adds stored bytes
//! to the prefixes that contain it. One scan runs at a time per (bucket, prefix); the last
//! finished result stays readable while a new scan runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::Serialize;

use crate::backend::StoredObject;
use crate::delta::Engine;
use crate::error::ProxyError;
use crate::meta::{DELTA_SUFFIX, REFERENCE_NAME};

/// Deepest level of common prefixes kept by a scan (and the largest `depth` a read takes).
pub const MAX_DEPTH: usize = 8;

/// Totals of one prefix and, nested, of its common prefixes.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Node {
    /// The full prefix (the scanned prefix for the root, `a/b/` below it).
    pub prefix: String,
    pub objects: u64,
    pub original_bytes: u64,
    pub stored_bytes: u64,
    /// Common prefixes one level down (delimiter `/`), sorted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Node>,
}

impl Node {
    /// This node with children kept down to `depth` levels (0: none).
    pub fn trimmed(&self, depth: usize) -> Node {
        Node {
            children: if depth == 0 {
                vec![]
            } else {
                self.children.iter().map(|c| c.trimmed(depth - 1)).collect()
            },
            ..self.clone()
        }
    }
}

/// A scan's outcome.
#[derive(Debug, Clone)]
pub struct Finished {
    pub scan_id: String,
    pub scanned_at: DateTime<Utc>,
    pub result: Result<Node, String>,
}

/// What is known about one (bucket, prefix).
#[derive(Debug, Clone, Default)]
pub struct Slot {
    /// Id of the scan in progress.
    pub running: Option<String>,
    /// The last scan that ended.
    pub last: Option<Finished>,
}

/// Answer to a scan request.
#[derive(Debug, Clone, PartialEq)]
pub enum Started {
    New(String),
    /// A scan of the same bucket and prefix is already running: its id.
    AlreadyRunning(String),
}

/// Scan results and scans in progress, per (bucket, prefix).
#[derive(Default)]
pub struct UsageScans {
    slots: Arc<Mutex<HashMap<(String, String), Slot>>>,
}

impl UsageScans {
    /// Starts a background scan unless one of the same bucket and prefix runs. The bucket
    /// must exist (checked before anything starts).
    pub async fn start(
        &self,
        engine: Arc<Engine>,
        bucket: &str,
        prefix: &str,
    ) -> Result<Started, ProxyError> {
        if !engine.bucket_exists(bucket).await? {
            return Err(ProxyError::NoSuchBucket);
        }
        let id = uuid::Uuid::new_v4().to_string();
        let slot_key = (bucket.to_string(), prefix.to_string());
        {
            let mut slots = self.slots.lock();
            let slot = slots.entry(slot_key.clone()).or_default();
            if let Some(running) = &slot.running {
                return Ok(Started::AlreadyRunning(running.clone()));
            }
            slot.running = Some(id.clone());
        }
        let slots = self.slots.clone();
        let scan_id = id.clone();
        let (bucket, prefix) = slot_key.clone();
        tokio::spawn(async move {
            let result = scan(&engine, &bucket, &prefix)
                .await
                .map_err(|e| e.to_string());
            if let Err(e) = &result {
                tracing::warn!(bucket, prefix, error = %e, "usage scan failed");
            }
            let mut slots = slots.lock();
            let slot = slots.entry(slot_key).or_default();
            slot.running = None;
            slot.last = Some(Finished {
                scan_id,
                scanned_at: Utc::now(),
                result,
            });
        });
        Ok(Started::New(id))
    }

    /// The cached state of a (bucket, prefix); default (nothing) if never scanned.
    pub fn get(&self, bucket: &str, prefix: &str) -> Slot {
        self.slots
            .lock()
            .get(&(bucket.to_string(), prefix.to_string()))
            .cloned()
            .unwrap_or_default()
    }
}

/// Lists everything stored under `prefix` and totals it.
async fn scan(engine: &Engine, bucket: &str, prefix: &str) -> Result<Node, ProxyError> {
    let (be, real) = engine.route(bucket);
    let stored = be.list(&real, prefix, true).await?;
    Ok(tally(prefix, &stored))
}

/// Per-object contribution, keyed by the user-visible key (a reference has none).
struct Contribution {
    /// The user key, or None for a reference (stored bytes only).
    user_key: Option<String>,
    original: u64,
    stored: u64,
}

fn classify(o: &StoredObject) -> Contribution {
    let name = o.key.rsplit('/').next().unwrap_or(&o.key);
    if name == REFERENCE_NAME && !o.key.ends_with('/') {
        return Contribution {
            user_key: None,
            original: 0,
            stored: o.size,
        };
    }
    match o.key.strip_suffix(DELTA_SUFFIX) {
        Some(user) if !o.key.ends_with('/') => Contribution {
            user_key: Some(user.to_string()),
            original: o.meta.as_ref().map(|m| m.file_size).unwrap_or(o.size),
            stored: o.size,
        },
        _ => Contribution {
            user_key: Some(o.key.clone()),
            original: o.size,
            stored: o.size,
        },
    }
}

/// Builder node: totals plus children by their one-level name.
#[derive(Default)]
struct Acc {
    objects: u64,
    original: u64,
    stored: u64,
    children: BTreeMap<String, Acc>,
}

impl Acc {
    fn into_node(self, prefix: String) -> Node {
        Node {
            objects: self.objects,
            original_bytes: self.original,
            stored_bytes: self.stored,
            children: self
                .children
                .into_iter()
                .map(|(seg, a)| {
                    let p = format!("{prefix}{seg}/");
                    a.into_node(p)
                })
                .collect(),
            prefix,
        }
    }
}

/// Totals `stored` (physical objects under `prefix`) into a tree of common prefixes below
/// `prefix`, at most [`MAX_DEPTH`] levels deep. A user key stored in both forms for a
/// moment (an overwrite in flight) counts once, with the larger original size; both
/// forms' bytes count as stored.
pub fn tally(prefix: &str, stored: &[StoredObject]) -> Node {
    let mut root = Acc::default();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for o in stored {
        let Some(rest) = o.key.strip_prefix(prefix) else {
            continue;
        };
        let c = classify(o);
        // Path segments of the common prefixes this object sits in.
        let mut segs: Vec<&str> = rest.split('/').collect();
        segs.pop(); // the object's own name (or "" for a `dir/` marker)
        segs.truncate(MAX_DEPTH);
        let (add_obj, add_orig) = match &c.user_key {
            None => (0, 0),
            Some(k) => match seen.get_mut(k) {
                None => {
                    seen.insert(k.clone(), c.original);
                    (1, c.original)
                }
                Some(prev) => {
                    let extra = c.original.saturating_sub(*prev);
                    *prev = (*prev).max(c.original);
                    (0, extra)
                }
            },
        };
        let mut node = &mut root;
        let mut segs = segs.into_iter();
        loop {
            node.objects += add_obj;
            node.original += add_orig;
            node.stored += c.stored;
            let Some(seg) = segs.next() else {
                break;
            };
            node = node.children.entry(seg.to_string()).or_default();
        }
    }
    root.into_node(prefix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::FileMetadata;

    fn obj(key: &str, size: u64, file_size: Option<u64>) -> StoredObject {
        StoredObject {
            key: key.into(),
            size,
            last_modified: Utc::now(),
            etag: None,
            meta: file_size.map(|f| FileMetadata {
                file_size: f,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn internals_count_as_stored_bytes_only() {
        let stored = vec![
            obj("a/b/reference.bin", 1000, Some(1000)),
            obj("a/b/v1.zip.delta", 10, Some(1000)),
            obj("a/b/v2.zip.delta", 20, Some(1010)),
            obj("a/c/readme.txt", 5, Some(5)),
            obj("top.txt", 7, Some(7)),
        ];
        let n = tally("", &stored);
        assert_eq!(
            (n.objects, n.original_bytes, n.stored_bytes),
            (4, 2022, 1042)
        );
        assert_eq!(n.children.len(), 1);
        let a = &n.children[0];
        assert_eq!(a.prefix, "a/");
        assert_eq!(
            (a.objects, a.original_bytes, a.stored_bytes),
            (3, 2015, 1035)
        );
        let names: Vec<_> = a.children.iter().map(|c| c.prefix.as_str()).collect();
        assert_eq!(names, ["a/b/", "a/c/"]);
        assert_eq!(
            (a.children[0].objects, a.children[0].stored_bytes),
            (2, 1030)
        );
        assert!(a.trimmed(0).children.is_empty());
        assert_eq!(n.trimmed(1).children[0].children.len(), 0);
    }

    #[test]
    fn both_forms_of_one_key_count_once() {
        let stored = vec![
            obj("p/x.zip", 100, Some(100)),
            obj("p/x.zip.delta", 9, Some(100)),
        ];
        let n = tally("p/", &stored);
        assert_eq!((n.objects, n.original_bytes, n.stored_bytes), (1, 100, 109));
        assert!(n.children.is_empty());
    }
}
