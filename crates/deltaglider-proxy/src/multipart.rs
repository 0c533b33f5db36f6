//! Multipart uploads: parts are staged as local files; CompleteMultipartUpload concatenates
//! them (hashing as it goes) and hands the whole object to the delta engine, keeping the
//! `"<md5 of part md5s>-N"` ETag. At most `DGP_MAX_MULTIPART_UPLOADS` uploads in flight and at
//! most `DGP_MAX_TOTAL_MULTIPART_BYTES` staged across them; beyond either, `SlowDown`.
//!
//! Durability: every upload is a directory `<root>/<upload id>/` holding `manifest.json`
//! (bucket, key, put options, initiated, and the committed parts with md5/size/file name)
//! and one file per committed part (`part-<n>-<uuid>`). A part file is fsynced before the
//! manifest naming it is replaced (temp file + fsync + rename + directory fsync), and only
//! then is the UploadPart answered; so an acknowledged part survives SIGKILL, and a part
//! being written when the process died is simply an unreferenced file that the start-up
//! reload deletes. A re-sent part number gets a fresh file name, so the manifest never
//! points at a half-overwritten file. [`Multipart::open`] reloads every upload at start.
//!
//! Idle sweeper: [`Multipart::sweep`] drops uploads with no activity (create, part, complete
//! attempt) for longer than `DGP_MULTIPART_IDLE_TTL_HOURS`; `serve` runs it periodically.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use md5::Digest as _;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::delta::{PutOptions, Spooled};
use crate::error::ProxyError;

const MANIFEST: &str = "manifest.json";
const MANIFEST_TMP: &str = "manifest.json.tmp";

/// One committed part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Part {
    pub md5: String,
    pub size: u64,
    pub uploaded: DateTime<Utc>,
    /// File name inside the upload directory.
    pub file: String,
}

/// The on-disk form of an upload (`manifest.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    bucket: String,
    key: String,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    user_metadata: BTreeMap<String, String>,
    initiated: DateTime<Utc>,
    #[serde(default)]
    parts: BTreeMap<i32, Part>,
}

#[derive(Clone)]
pub struct Upload {
    pub bucket: String,
    pub key: String,
    pub opts: PutOptions,
    pub initiated: DateTime<Utc>,
    pub dir: PathBuf,
    pub parts: BTreeMap<i32, Part>,
}

impl Upload {
    fn manifest(&self) -> Manifest {
        Manifest {
            version: 1,
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            content_type: self.opts.content_type.clone(),
            user_metadata: self.opts.user_metadata.clone(),
            initiated: self.initiated,
            parts: self.parts.clone(),
        }
    }

    /// Latest of initiation and the newest committed part (the idle clock after a reload).
    fn last_committed(&self) -> DateTime<Utc> {
        self.parts
            .values()
            .map(|p| p.uploaded)
            .max()
            .map_or(self.initiated, |t| t.max(self.initiated))
    }
}

struct Slot {
    upload: Upload,
    /// Serialises manifest rewrites of this upload (concurrent UploadParts).
    write: Arc<tokio::sync::Mutex<()>>,
    last_activity: DateTime<Utc>,
    /// Requests currently working on this upload; the sweeper leaves busy uploads alone.
    busy: usize,
}

pub struct Multipart {
    uploads: Mutex<HashMap<String, Slot>>,
    root: PathBuf,
    max: usize,
    /// Bytes that staged parts of all in-flight uploads may hold together.
    max_bytes: u64,
    /// CompleteMultipartUpload requests running, per bucket: DeleteBucket is refused while
    /// one is, since the object it is about to write would land in a deleted bucket.
    completing: Mutex<HashMap<String, usize>>,
}

/// Counts a complete in flight for its bucket until dropped.
pub struct Completing<'a> {
    mp: &'a Multipart,
    bucket: String,
}

impl Drop for Completing<'_> {
    fn drop(&mut self) {
        let mut m = self.mp.completing.lock();
        if let Some(n) = m.get_mut(&self.bucket) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.bucket);
            }
        }
    }
}

/// Keeps an upload marked busy while a request works on it.
struct Busy<'a> {
    mp: &'a Multipart,
    id: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let now = Utc::now();
        if let Some(s) = self.mp.uploads.lock().get_mut(&self.id) {
            s.busy = s.busy.saturating_sub(1);
            s.last_activity = s.last_activity.max(now);
        }
    }
}

/// fsyncs a directory so renames and creations inside it are durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `manifest.json` atomically: temp file, fsync, rename, directory fsync.
fn write_manifest(dir: &Path, m: &Manifest) -> Result<(), ProxyError> {
    use std::io::Write;
    let body = serde_json::to_vec_pretty(m)
        .map_err(|e| ProxyError::Internal(format!("multipart manifest: {e}")))?;
    let tmp = dir.join(MANIFEST_TMP);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&body)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(MANIFEST))?;
    sync_dir(dir)?;
    Ok(())
}

/// Reloads one upload directory. `None` (and the caller deletes the directory) when it has
/// no readable manifest: a CreateMultipartUpload that died before answering, or a directory
/// of the pre-manifest layout.
fn load_upload(dir: &Path) -> Option<Upload> {
    let text = std::fs::read(dir.join(MANIFEST)).ok()?;
    let m: Manifest = match serde_json::from_slice(&text) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "unreadable multipart manifest: upload dropped");
            return None;
        }
    };
    let mut parts = BTreeMap::new();
    for (n, p) in m.parts {
        // A committed part always has its fsynced file; guard anyway against a hand-edited
        // or damaged staging dir so Complete never concatenates a short file.
        let ok = p.file.starts_with("part-")
            && !p.file.contains('/')
            && std::fs::metadata(dir.join(&p.file)).is_ok_and(|md| md.len() == p.size);
        if ok {
            parts.insert(n, p);
        } else {
            tracing::warn!(dir = %dir.display(), part = n, "staged part file missing or wrong size: part dropped");
        }
    }
    // Files no manifest entry names: parts that were being written at the crash, replaced
    // parts whose old file was not yet removed, a manifest temp file.
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name != MANIFEST && !parts.values().any(|p| p.file == name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Some(Upload {
        bucket: m.bucket,
        key: m.key,
        opts: PutOptions {
            content_type: m.content_type,
            user_metadata: m.user_metadata,
            multipart_etag: None,
        },
        initiated: m.initiated,
        dir: dir.to_path_buf(),
        parts,
    })
}

impl Multipart {
    /// Opens the staging root, reloading every upload a previous process left behind.
    pub fn open(root: PathBuf, max: usize, max_bytes: u64) -> Result<Self, ProxyError> {
        std::fs::create_dir_all(&root)?;
        let mut uploads = HashMap::new();
        for e in std::fs::read_dir(&root)?.flatten() {
            let path = e.path();
            let id = e.file_name().to_string_lossy().to_string();
            if !path.is_dir() {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            match load_upload(&path) {
                Some(u) => {
                    let last = u.last_committed();
                    uploads.insert(
                        id,
                        Slot {
                            upload: u,
                            write: Arc::default(),
                            last_activity: last,
                            busy: 0,
                        },
                    );
                }
                None => {
                    let _ = std::fs::remove_dir_all(&path);
                }
            }
        }
        if !uploads.is_empty() {
            tracing::info!(
                uploads = uploads.len(),
                "multipart uploads reloaded from staging"
            );
        }
        Ok(Multipart {
            uploads: Mutex::new(uploads),
            root,
            max,
            max_bytes,
            completing: Mutex::new(HashMap::new()),
        })
    }

    /// Marks a CompleteMultipartUpload on `bucket` as running for the guard's lifetime.
    pub fn completing(&self, bucket: &str) -> Completing<'_> {
        *self
            .completing
            .lock()
            .entry(bucket.to_string())
            .or_default() += 1;
        Completing {
            mp: self,
            bucket: bucket.to_string(),
        }
    }

    /// Whether a CompleteMultipartUpload on `bucket` is running.
    pub fn is_completing(&self, bucket: &str) -> bool {
        self.completing.lock().contains_key(bucket)
    }

    /// Bytes held by the staged parts of every in-flight upload, not counting `skip`
    /// (the part a PUT is about to replace).
    fn staged_bytes(&self, skip: Option<(&str, i32)>) -> u64 {
        self.uploads
            .lock()
            .iter()
            .flat_map(|(id, s)| s.upload.parts.iter().map(move |(n, p)| (id, *n, p.size)))
            .filter(|(id, n, _)| skip != Some((id.as_str(), *n)))
            .map(|(_, _, size)| size)
            .sum()
    }

    pub fn in_flight(&self) -> usize {
        self.uploads.lock().len()
    }

    pub async fn create(
        &self,
        bucket: &str,
        key: &str,
        opts: PutOptions,
    ) -> Result<String, ProxyError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = self.root.join(&id);
        let upload = Upload {
            bucket: bucket.into(),
            key: key.into(),
            opts: PutOptions {
                multipart_etag: None,
                ..opts
            },
            initiated: Utc::now(),
            dir: dir.clone(),
            parts: BTreeMap::new(),
        };
        // Reserve the slot first so the cap holds under concurrent creates; the upload is
        // marked busy so a sweep cannot race the manifest write.
        {
            let mut u = self.uploads.lock();
            if u.len() >= self.max {
                return Err(ProxyError::TooManyUploads);
            }
            u.insert(
                id.clone(),
                Slot {
                    upload: upload.clone(),
                    write: Arc::default(),
                    last_activity: upload.initiated,
                    busy: 1,
                },
            );
        }
        let busy = Busy {
            mp: self,
            id: id.clone(),
        };
        let root = self.root.clone();
        let m = upload.manifest();
        let res = tokio::task::spawn_blocking(move || -> Result<(), ProxyError> {
            std::fs::create_dir_all(&dir)?;
            write_manifest(&dir, &m)?;
            sync_dir(&root)?;
            Ok(())
        })
        .await
        .map_err(|e| ProxyError::Internal(format!("multipart create: {e}")))
        .and_then(|r| r);
        drop(busy);
        if let Err(e) = res {
            self.uploads.lock().remove(&id);
            let _ = tokio::fs::remove_dir_all(self.root.join(&id)).await;
            return Err(e);
        }
        Ok(id)
    }

    pub fn get(&self, bucket: &str, key: &str, id: &str) -> Result<Upload, ProxyError> {
        match self.uploads.lock().get(id) {
            Some(s) if s.upload.bucket == bucket && s.upload.key == key => Ok(s.upload.clone()),
            _ => Err(ProxyError::NoSuchUpload),
        }
    }

    /// Marks the upload busy (and returns it plus its manifest lock) for the guard's life.
    fn hold(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
    ) -> Result<(Upload, Arc<tokio::sync::Mutex<()>>, Busy<'_>), ProxyError> {
        let mut m = self.uploads.lock();
        match m.get_mut(id) {
            Some(s) if s.upload.bucket == bucket && s.upload.key == key => {
                s.busy += 1;
                s.last_activity = Utc::now();
                Ok((
                    s.upload.clone(),
                    s.write.clone(),
                    Busy {
                        mp: self,
                        id: id.to_string(),
                    },
                ))
            }
            _ => Err(ProxyError::NoSuchUpload),
        }
    }

    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<(String, Upload)> {
        let mut v: Vec<_> = self
            .uploads
            .lock()
            .iter()
            .filter(|(_, s)| s.upload.bucket == bucket && s.upload.key.starts_with(prefix))
            .map(|(k, s)| (k.clone(), s.upload.clone()))
            .collect();
        v.sort_by(|a, b| (a.1.key.as_str(), a.0.as_str()).cmp(&(b.1.key.as_str(), b.0.as_str())));
        v
    }

    /// Stages part `n` from `body`; answers its MD5 (hex) once file and manifest are durable.
    pub async fn put_part<S, E>(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        n: i32,
        mut body: S,
    ) -> Result<String, ProxyError>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures::StreamExt;
        if !(1..=10000).contains(&n) {
            return Err(ProxyError::InvalidArgument(
                "part number must be 1..10000".into(),
            ));
        }
        let (up, lock, _busy) = self.hold(bucket, key, id)?;
        // Room left under the global cap; parts streaming at the same moment are not reserved,
        // so the cap can be overshot by what is in flight concurrently (a bounded overshoot).
        let room = self
            .max_bytes
            .saturating_sub(self.staged_bytes(Some((id, n))));
        let file = format!("part-{n}-{}", uuid::Uuid::new_v4().simple());
        let path = up.dir.join(&file);
        let f = match tokio::fs::File::create(&path).await {
            Ok(f) => f,
            // Aborted, completed or swept while this request was on its way.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ProxyError::NoSuchUpload)
            }
            Err(e) => return Err(e.into()),
        };
        let mut f = tokio::io::BufWriter::new(f);
        let mut md5 = md5::Md5::new();
        let mut size = 0u64;
        let res: Result<(), ProxyError> = async {
            while let Some(c) = body.next().await {
                let c = c.map_err(|e| ProxyError::InvalidArgument(format!("request body: {e}")))?;
                md5.update(&c);
                size += c.len() as u64;
                if size > room {
                    return Err(ProxyError::TooManyUploads);
                }
                f.write_all(&c).await?;
            }
            f.flush().await?;
            f.get_mut().sync_all().await?;
            Ok(())
        }
        .await;
        drop(f);
        if let Err(e) = res {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
        let etag = hex::encode(md5.finalize());
        let part = Part {
            md5: etag.clone(),
            size,
            uploaded: Utc::now(),
            file,
        };
        self.commit_part(id, &up.dir, n, part, &lock).await?;
        Ok(etag)
    }

    /// Records a written part in memory and in the manifest (durably) and removes the file
    /// of the part it replaces.
    async fn commit_part(
        &self,
        id: &str,
        dir: &Path,
        n: i32,
        part: Part,
        lock: &tokio::sync::Mutex<()>,
    ) -> Result<(), ProxyError> {
        let _w = lock.lock().await;
        let (manifest, old) = {
            let mut m = self.uploads.lock();
            let Some(s) = m.get_mut(id) else {
                drop(m);
                let _ = std::fs::remove_file(dir.join(&part.file));
                return Err(ProxyError::NoSuchUpload);
            };
            let old = s.upload.parts.insert(n, part.clone());
            (s.upload.manifest(), old)
        };
        let d = dir.to_path_buf();
        let res = tokio::task::spawn_blocking(move || write_manifest(&d, &manifest))
            .await
            .map_err(|e| ProxyError::Internal(format!("multipart manifest: {e}")))
            .and_then(|r| r);
        if let Err(e) = res {
            // Not durable: roll the in-memory view back so no unacknowledged part is listed.
            if let Some(s) = self.uploads.lock().get_mut(id) {
                match &old {
                    Some(o) => s.upload.parts.insert(n, o.clone()),
                    None => s.upload.parts.remove(&n),
                };
            }
            let _ = tokio::fs::remove_file(dir.join(&part.file)).await;
            return Err(e);
        }
        if let Some(o) = old {
            if o.file != part.file {
                let _ = tokio::fs::remove_file(dir.join(&o.file)).await;
            }
        }
        Ok(())
    }

    /// Concatenates the listed parts into a spool file in `spool_dir`.
    pub async fn assemble(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        parts: &[(i32, Option<String>)],
        spool_dir: &std::path::Path,
    ) -> Result<(Spooled, String, PutOptions), ProxyError> {
        let (up, _lock, _busy) = self.hold(bucket, key, id)?;
        if parts.is_empty() {
            return Err(ProxyError::InvalidPart("no parts given".into()));
        }
        let mut last = 0;
        let mut md5s = Vec::new();
        let mut files = Vec::new();
        for (n, etag) in parts {
            if *n <= last {
                return Err(ProxyError::InvalidPart(
                    "parts must be in ascending order".into(),
                ));
            }
            last = *n;
            let Some(p) = up.parts.get(n) else {
                return Err(ProxyError::InvalidPart(format!(
                    "part {n} was not uploaded"
                )));
            };
            if let Some(e) = etag {
                if e.trim_matches('"') != p.md5 {
                    return Err(ProxyError::InvalidPart(format!(
                        "part {n} ETag does not match"
                    )));
                }
            }
            md5s.extend(hex::decode(&p.md5).unwrap_or_default());
            files.push(up.dir.join(&p.file));
        }
        tokio::fs::create_dir_all(spool_dir).await?;
        let path = spool_dir.join(format!("mpu-{}", uuid::Uuid::new_v4()));
        let mut out =
            tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::create(&path).await?);
        let mut sha = Sha256::new();
        let mut md5 = md5::Md5::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        for file in &files {
            let mut f = tokio::fs::File::open(file).await?;
            loop {
                let got = f.read(&mut buf).await?;
                if got == 0 {
                    break;
                }
                sha.update(&buf[..got]);
                md5.update(&buf[..got]);
                size += got as u64;
                out.write_all(&buf[..got]).await?;
            }
        }
        out.flush().await?;
        let mpu_etag = format!("{}-{}", hex::encode(md5::Md5::digest(&md5s)), parts.len());
        Ok((
            Spooled {
                path,
                size,
                sha256: hex::encode(sha.finalize()),
                md5: hex::encode(md5.finalize()),
            },
            mpu_etag,
            up.opts,
        ))
    }

    pub fn finish(&self, id: &str) {
        if let Some(s) = self.uploads.lock().remove(id) {
            let _ = std::fs::remove_dir_all(s.upload.dir);
        }
    }

    pub fn abort(&self, bucket: &str, key: &str, id: &str) -> Result<(), ProxyError> {
        self.get(bucket, key, id)?;
        self.finish(id);
        Ok(())
    }

    /// Drops every upload idle (no create, part or complete attempt) for longer than `ttl`
    /// and not being worked on right now; answers how many were dropped.
    pub fn sweep(&self, ttl: Duration) -> usize {
        let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let now = Utc::now();
        let dropped: Vec<(String, Upload)> = {
            let mut m = self.uploads.lock();
            let ids: Vec<String> = m
                .iter()
                .filter(|(_, s)| s.busy == 0 && now - s.last_activity > ttl)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| m.remove(&id).map(|s| (id, s.upload)))
                .collect()
        };
        for (id, u) in &dropped {
            tracing::info!(upload_id = %id, bucket = %u.bucket, key = %u.key, "idle multipart upload dropped by the sweeper");
            let _ = std::fs::remove_dir_all(&u.dir);
        }
        dropped.len()
    }

    /// Runs [`Multipart::sweep`] forever; the check interval scales with the TTL (a quarter of
    /// it, between 1 s and 10 min) so a short TTL is honoured promptly.
    pub async fn run_sweeper(self: Arc<Self>, ttl: Duration) {
        let every = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let n = self.sweep(ttl);
            if n > 0 {
                metrics::counter!("deltaglider_multipart_swept_total").increment(n as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(d: &[u8]) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        futures::stream::iter([Ok(Bytes::copy_from_slice(d))])
    }

    #[tokio::test]
    async fn reload_keeps_committed_parts_and_drops_strays() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("mp");
        let mp = Multipart::open(root.clone(), 10, 1 << 30).unwrap();
        let id = mp.create("b", "k", PutOptions::default()).await.unwrap();
        mp.put_part("b", "k", &id, 1, body(b"one")).await.unwrap();
        mp.put_part("b", "k", &id, 2, body(b"two")).await.unwrap();
        mp.put_part("b", "k", &id, 2, body(b"TWO!")).await.unwrap();
        // A stray part file (as if killed mid-write) and a manifest-less upload dir.
        std::fs::write(root.join(&id).join("part-3-dead"), b"half").unwrap();
        std::fs::create_dir_all(root.join("orphan")).unwrap();
        drop(mp);
        let mp = Multipart::open(root.clone(), 10, 1 << 30).unwrap();
        let u = mp.get("b", "k", &id).unwrap();
        let got: Vec<_> = u.parts.iter().map(|(n, p)| (*n, p.size)).collect();
        assert_eq!(got, vec![(1, 3), (2, 4)]);
        assert!(!root.join(&id).join("part-3-dead").exists());
        assert!(!root.join("orphan").exists());
        // manifest + exactly one file per part (the replaced part 2 file is gone).
        assert_eq!(std::fs::read_dir(root.join(&id)).unwrap().count(), 3);
    }

    #[test]
    fn a_bucket_is_completing_while_any_complete_guard_lives() {
        let dir = tempfile::tempdir().unwrap();
        let mp = Multipart::open(dir.path().join("mp"), 10, 1 << 30).unwrap();
        assert!(!mp.is_completing("b"));
        let g1 = mp.completing("b");
        let g2 = mp.completing("b");
        assert!(mp.is_completing("b") && !mp.is_completing("other"));
        drop(g1);
        assert!(mp.is_completing("b"));
        drop(g2);
        assert!(!mp.is_completing("b"));
    }

    #[tokio::test]
    async fn sweep_drops_only_uploads_idle_beyond_the_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let mp = Multipart::open(dir.path().join("mp"), 10, 1 << 30).unwrap();
        let id = mp.create("b", "k", PutOptions::default()).await.unwrap();
        mp.put_part("b", "k", &id, 1, body(b"x")).await.unwrap();
        assert_eq!(mp.sweep(Duration::from_secs(3600)), 0);
        assert_eq!(mp.in_flight(), 1);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(mp.sweep(Duration::from_millis(1)), 1);
        assert_eq!(mp.in_flight(), 0);
        assert!(!dir.path().join("mp").join(&id).exists());
        assert!(matches!(
            mp.get("b", "k", &id),
            Err(ProxyError::NoSuchUpload)
        ));
    }
}
