//! Filesystem backend: `$DGP_DATA_DIR/deltaspaces/<bucket>/<key path>`, metadata as a JSON
//! `user.dg.metadata` xattr on the data file's inode. Writes go to a temp file in
//! `$DGP_DATA_DIR/tmp` (same filesystem), are fsynced with their xattr set, then renamed
//! into place: an object is visible with its metadata or not at all, even after SIGKILL.
//! Directory markers (`a/b/`) are the directory itself carrying the xattr.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{Backend, ByteStream, PutData, StoredObject};
use crate::error::ProxyError;
use crate::meta::FileMetadata;

pub const XATTR_NAME: &str = "user.dg.metadata";

pub struct FsBackend {
    root: PathBuf,
    tmp: PathBuf,
}

fn io_err(e: std::io::Error) -> ProxyError {
    ProxyError::Io(e)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ProxyError> + Send + 'static,
) -> Result<T, ProxyError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProxyError::Internal(format!("blocking task failed: {e}")))?
}

impl FsBackend {
    /// Opens the data dir, clears stale temp files left by a crash, and checks that the
    /// filesystem stores extended attributes (refusing to start otherwise).
    pub fn open(data_dir: &Path) -> Result<Self, ProxyError> {
        let root = data_dir.join("deltaspaces");
        let tmp = data_dir.join("tmp");
        std::fs::create_dir_all(&root).map_err(io_err)?;
        if tmp.exists() {
            // Leftovers of interrupted uploads: never visible, safe to drop.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        std::fs::create_dir_all(&tmp).map_err(io_err)?;
        let probe = tmp.join(".xattr-probe");
        std::fs::write(&probe, b"probe").map_err(io_err)?;
        let ok = xattr::set(&probe, XATTR_NAME, b"{}").is_ok()
            && xattr::get(&probe, XATTR_NAME).ok().flatten().is_some();
        let _ = std::fs::remove_file(&probe);
        if !ok {
            tracing::error!(data_dir = %data_dir.display(), "Data directory does not support extended attributes");
            return Err(ProxyError::Startup(
                "Data directory does not support extended attributes".into(),
            ));
        }
        Ok(FsBackend { root, tmp })
    }

    fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.root.join(bucket)
    }

    fn path(&self, bucket: &str, key: &str) -> PathBuf {
        self.bucket_dir(bucket).join(key.trim_end_matches('/'))
    }
}

fn read_meta(p: &Path) -> Option<FileMetadata> {
    xattr::get(p, XATTR_NAME)
        .ok()
        .flatten()
        .and_then(|b| FileMetadata::from_json(&b))
}

fn mtime(md: &std::fs::Metadata) -> DateTime<Utc> {
    md.modified()
        .map(DateTime::<Utc>::from)
        .unwrap_or_else(|_| Utc::now())
}

fn fsync_dir(p: &Path) {
    if let Ok(d) = std::fs::File::open(p) {
        let _ = d.sync_all();
    }
}

/// Removes empty directories from `dir` up to (not including) `stop`, keeping markers.
fn prune_empty(mut dir: PathBuf, stop: &Path) {
    while dir.starts_with(stop) && dir != stop {
        if read_meta(&dir).is_some() || std::fs::remove_dir(&dir).is_err() {
            break;
        }
        match dir.parent() {
            Some(p) => dir = p.to_path_buf(),
            None => break,
        }
    }
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<StoredObject>) -> std::io::Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for ent in rd {
        let ent = ent?;
        let name = ent.file_name().to_string_lossy().to_string();
        let path = ent.path();
        let md = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(_) => continue,
        };
        let key = format!("{rel}{name}");
        if md.is_dir() {
            if let Some(meta) = read_meta(&path) {
                out.push(StoredObject {
                    key: format!("{key}/"),
                    size: 0,
                    last_modified: mtime(&md),
                    etag: None,
                    meta: Some(meta),
                });
            }
            walk(&path, &format!("{key}/"), out)?;
        } else {
            out.push(StoredObject {
                key,
                size: md.len(),
                last_modified: mtime(&md),
                etag: None,
                meta: read_meta(&path),
            });
        }
    }
    Ok(())
}

#[async_trait]
impl Backend for FsBackend {
    fn kind(&self) -> &'static str {
        "filesystem"
    }

    async fn create_bucket(&self, bucket: &str) -> Result<(), ProxyError> {
        let d = self.bucket_dir(bucket);
        if d.exists() {
            return Err(ProxyError::BucketExists);
        }
        std::fs::create_dir_all(&d).map_err(io_err)
    }

    async fn delete_bucket(&self, bucket: &str) -> Result<(), ProxyError> {
        let d = self.bucket_dir(bucket);
        if !d.exists() {
            return Err(ProxyError::NoSuchBucket);
        }
        let b = bucket.to_string();
        let objs = self.list(&b, "", false).await?;
        if !objs.is_empty() {
            return Err(ProxyError::BucketNotEmpty);
        }
        std::fs::remove_dir_all(&d).map_err(io_err)
    }

    async fn bucket_exists(&self, bucket: &str) -> Result<bool, ProxyError> {
        Ok(self.bucket_dir(bucket).is_dir())
    }

    async fn list_buckets(&self) -> Result<Vec<(String, DateTime<Utc>)>, ProxyError> {
        let mut out = Vec::new();
        for ent in std::fs::read_dir(&self.root).map_err(io_err)? {
            let ent = ent.map_err(io_err)?;
            let md = ent.metadata().map_err(io_err)?;
            if md.is_dir() {
                out.push((ent.file_name().to_string_lossy().to_string(), mtime(&md)));
            }
        }
        out.sort();
        Ok(out)
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        data: PutData,
        meta: &FileMetadata,
    ) -> Result<(), ProxyError> {
        let dest = self.path(bucket, key);
        let bucket_dir = self.bucket_dir(bucket);
        let json = meta.to_json();
        let tmp_dir = self.tmp.clone();
        let is_marker = key.ends_with('/');
        blocking(move || {
            if is_marker {
                std::fs::create_dir_all(&dest).map_err(io_err)?;
                xattr::set(&dest, XATTR_NAME, &json).map_err(io_err)?;
                return Ok(());
            }
            let tmp_path = match data {
                PutData::File(p) => p,
                PutData::Bytes(b) => {
                    let p = tmp_dir.join(format!("put-{}", uuid::Uuid::new_v4()));
                    let mut f = std::fs::File::create(&p).map_err(io_err)?;
                    f.write_all(&b).map_err(io_err)?;
                    p
                }
            };
            let res = (|| {
                // Metadata goes on the inode before the rename: the visible name always
                // carries its xattr.
                xattr::set(&tmp_path, XATTR_NAME, &json).map_err(io_err)?;
                std::fs::File::open(&tmp_path)
                    .and_then(|f| f.sync_all())
                    .map_err(io_err)?;
                let parent = dest.parent().unwrap_or(&bucket_dir).to_path_buf();
                std::fs::create_dir_all(&parent).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotADirectory
                        || e.kind() == std::io::ErrorKind::AlreadyExists
                    {
                        ProxyError::InvalidKey("a prefix of this key is already an object".into())
                    } else {
                        io_err(e)
                    }
                })?;
                if dest.is_dir() {
                    return Err(ProxyError::InvalidKey(
                        "key is already used as a prefix".into(),
                    ));
                }
                std::fs::rename(&tmp_path, &dest).map_err(io_err)?;
                fsync_dir(&parent);
                Ok(())
            })();
            if res.is_err() {
                let _ = std::fs::remove_file(&tmp_path);
            }
            res
        })
        .await
    }

    async fn get_bytes(&self, bucket: &str, key: &str) -> Result<Bytes, ProxyError> {
        match tokio::fs::read(self.path(bucket, key)).await {
            Ok(v) => Ok(Bytes::from(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ProxyError::NoSuchKey),
            Err(e) => Err(io_err(e)),
        }
    }

    async fn get_stream(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, ProxyError> {
        let mut f = match tokio::fs::File::open(self.path(bucket, key)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ProxyError::NoSuchKey)
            }
            Err(e) => return Err(io_err(e)),
        };
        let len = f.metadata().await.map_err(io_err)?.len();
        let r = range.unwrap_or(0..len);
        f.seek(std::io::SeekFrom::Start(r.start))
            .await
            .map_err(io_err)?;
        let reader = f.take(r.end.saturating_sub(r.start));
        Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
            reader,
            256 * 1024,
        )))
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<StoredObject>, ProxyError> {
        let p = self.path(bucket, key);
        let key = key.to_string();
        blocking(move || {
            let md = match std::fs::metadata(&p) {
                Ok(m) => m,
                Err(_) => return Ok(None),
            };
            if md.is_dir() != key.ends_with('/') {
                return Ok(None);
            }
            let meta = read_meta(&p);
            if md.is_dir() && meta.is_none() {
                return Ok(None);
            }
            Ok(Some(StoredObject {
                key,
                size: if md.is_dir() { 0 } else { md.len() },
                last_modified: mtime(&md),
                etag: None,
                meta,
            }))
        })
        .await
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), ProxyError> {
        let p = self.path(bucket, key);
        let stop = self.bucket_dir(bucket);
        let is_marker = key.ends_with('/');
        blocking(move || {
            if is_marker {
                let _ = xattr::remove(&p, XATTR_NAME);
                prune_empty(p, &stop);
                return Ok(());
            }
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_err(e)),
            }
            if let Some(parent) = p.parent() {
                prune_empty(parent.to_path_buf(), &stop);
            }
            Ok(())
        })
        .await
    }

    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        _with_meta: bool,
    ) -> Result<Vec<StoredObject>, ProxyError> {
        let bdir = self.bucket_dir(bucket);
        if !bdir.is_dir() {
            return Err(ProxyError::NoSuchBucket);
        }
        // Walk only the deepest directory that the prefix names, then filter.
        let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let start = if dir_part.is_empty() {
            bdir.clone()
        } else {
            bdir.join(dir_part)
        };
        let rel = if dir_part.is_empty() {
            String::new()
        } else {
            format!("{dir_part}/")
        };
        let prefix = prefix.to_string();
        blocking(move || {
            let mut out = Vec::new();
            if let Some(meta) = (!rel.is_empty()).then(|| read_meta(&start)).flatten() {
                out.push(StoredObject {
                    key: rel.clone(),
                    size: 0,
                    last_modified: Utc::now(),
                    etag: None,
                    meta: Some(meta),
                });
            }
            walk(&start, &rel, &mut out).map_err(io_err)?;
            out.retain(|o| o.key.starts_with(&prefix));
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    fn spool_dir(&self) -> PathBuf {
        self.tmp.clone()
    }
}
