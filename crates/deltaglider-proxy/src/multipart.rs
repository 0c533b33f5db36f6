//! Multipart uploads: parts are staged as local files; CompleteMultipartUpload concatenates
//! them (hashing as it goes) and hands the whole object to the delta engine, keeping the
//! `"<md5 of part md5s>-N"` ETag. At most `DGP_MAX_MULTIPART_UPLOADS` uploads in flight and at
//! most `DGP_MAX_TOTAL_MULTIPART_BYTES` staged across them; beyond either, `SlowDown`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use md5::Digest as _;
use parking_lot::Mutex;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::delta::{PutOptions, Spooled};
use crate::error::ProxyError;

#[derive(Clone)]
pub struct Upload {
    pub bucket: String,
    pub key: String,
    pub opts: PutOptions,
    pub initiated: DateTime<Utc>,
    pub dir: PathBuf,
    /// part number → (md5 hex, size, uploaded at)
    pub parts: BTreeMap<i32, (String, u64, DateTime<Utc>)>,
}

pub struct Multipart {
    uploads: Mutex<HashMap<String, Upload>>,
    root: PathBuf,
    max: usize,
    /// Bytes that staged parts of all in-flight uploads may hold together.
    max_bytes: u64,
}

impl Multipart {
    pub fn new(root: PathBuf, max: usize, max_bytes: u64) -> Self {
        let _ = std::fs::remove_dir_all(&root);
        Multipart {
            uploads: Mutex::new(HashMap::new()),
            root,
            max,
            max_bytes,
        }
    }

    /// Bytes held by the staged parts of every in-flight upload, not counting `skip`
    /// (the part a PUT is about to replace).
    fn staged_bytes(&self, skip: Option<(&str, i32)>) -> u64 {
        self.uploads
            .lock()
            .iter()
            .flat_map(|(id, u)| u.parts.iter().map(move |(n, p)| (id, *n, p.1)))
            .filter(|(id, n, _)| skip != Some((id.as_str(), *n)))
            .map(|(_, _, size)| size)
            .sum()
    }

    pub fn in_flight(&self) -> usize {
        self.uploads.lock().len()
    }

    pub fn create(&self, bucket: &str, key: &str, opts: PutOptions) -> Result<String, ProxyError> {
        let mut u = self.uploads.lock();
        if u.len() >= self.max {
            return Err(ProxyError::TooManyUploads);
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = self.root.join(&id);
        std::fs::create_dir_all(&dir)?;
        u.insert(
            id.clone(),
            Upload {
                bucket: bucket.into(),
                key: key.into(),
                opts,
                initiated: Utc::now(),
                dir,
                parts: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    pub fn get(&self, bucket: &str, key: &str, id: &str) -> Result<Upload, ProxyError> {
        match self.uploads.lock().get(id) {
            Some(u) if u.bucket == bucket && u.key == key => Ok(u.clone()),
            _ => Err(ProxyError::NoSuchUpload),
        }
    }

    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<(String, Upload)> {
        let mut v: Vec<_> = self
            .uploads
            .lock()
            .iter()
            .filter(|(_, u)| u.bucket == bucket && u.key.starts_with(prefix))
            .map(|(k, u)| (k.clone(), u.clone()))
            .collect();
        v.sort_by(|a, b| (a.1.key.as_str(), a.0.as_str()).cmp(&(b.1.key.as_str(), b.0.as_str())));
        v
    }

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
        let up = self.get(bucket, key, id)?;
        // Room left under the global cap; parts streaming at the same moment are not reserved,
        // so the cap can be overshot by what is in flight concurrently (a bounded overshoot).
        let room = self
            .max_bytes
            .saturating_sub(self.staged_bytes(Some((id, n))));
        let tmp = up
            .dir
            .join(format!("part-{n}.tmp-{}", uuid::Uuid::new_v4()));
        let mut f = tokio::io::BufWriter::new(tokio::fs::File::create(&tmp).await?);
        let mut md5 = md5::Md5::new();
        let mut size = 0u64;
        while let Some(c) = body.next().await {
            let c = c.map_err(|e| ProxyError::InvalidArgument(format!("request body: {e}")))?;
            md5.update(&c);
            size += c.len() as u64;
            if size > room {
                drop(f);
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(ProxyError::TooManyUploads);
            }
            f.write_all(&c).await?;
        }
        f.flush().await?;
        drop(f);
        tokio::fs::rename(&tmp, up.dir.join(format!("part-{n}"))).await?;
        let etag = hex::encode(md5.finalize());
        match self.uploads.lock().get_mut(id) {
            Some(u) => {
                u.parts.insert(n, (etag.clone(), size, Utc::now()));
            }
            None => return Err(ProxyError::NoSuchUpload),
        }
        Ok(etag)
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
        let up = self.get(bucket, key, id)?;
        if parts.is_empty() {
            return Err(ProxyError::InvalidPart("no parts given".into()));
        }
        let mut last = 0;
        let mut md5s = Vec::new();
        for (n, etag) in parts {
            if *n <= last {
                return Err(ProxyError::InvalidPart(
                    "parts must be in ascending order".into(),
                ));
            }
            last = *n;
            let Some((md5, _, _)) = up.parts.get(n) else {
                return Err(ProxyError::InvalidPart(format!(
                    "part {n} was not uploaded"
                )));
            };
            if let Some(e) = etag {
                if e.trim_matches('"') != md5 {
                    return Err(ProxyError::InvalidPart(format!(
                        "part {n} ETag does not match"
                    )));
                }
            }
            md5s.extend(hex::decode(md5).unwrap_or_default());
        }
        tokio::fs::create_dir_all(spool_dir).await?;
        let path = spool_dir.join(format!("mpu-{}", uuid::Uuid::new_v4()));
        let mut out =
            tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::create(&path).await?);
        let mut sha = Sha256::new();
        let mut md5 = md5::Md5::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        for (n, _) in parts {
            let mut f = tokio::fs::File::open(up.dir.join(format!("part-{n}"))).await?;
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
        if let Some(u) = self.uploads.lock().remove(id) {
            let _ = std::fs::remove_dir_all(u.dir);
        }
    }

    pub fn abort(&self, bucket: &str, key: &str, id: &str) -> Result<(), ProxyError> {
        self.get(bucket, key, id)?;
        self.finish(id);
        Ok(())
    }
}
