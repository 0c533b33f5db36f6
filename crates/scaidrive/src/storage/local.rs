//! Local-directory object store (embedded mode): each key is a file under the root. Writes go
//! to a temp file, are fsynced, renamed into place, and the directory is fsynced, so a crash
//! leaves either the whole object or nothing.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncSeekExt;
use tokio_util::io::ReaderStream;

use super::{ByteStream, ObjectStore};

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(LocalStore { root })
    }

    fn path(&self, key: &str) -> std::io::Result<PathBuf> {
        // Keys are built by this crate from validated ids and hex hashes; refuse anything else.
        if key
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "bad object key",
            ));
        }
        Ok(self.root.join(key))
    }

    fn tmp_path(&self) -> PathBuf {
        self.root
            .join("tmp")
            .join(uuid::Uuid::new_v4().simple().to_string())
    }
}

/// Write `data` to the temp file `tmp`, fsynced, and make sure `dest`'s directory exists
/// (returned, for the directory fsync after the rename or link).
fn write_tmp(tmp: &Path, dest: &Path, data: &[u8]) -> std::io::Result<PathBuf> {
    let parent = dest.parent().map(Path::to_path_buf).unwrap_or_default();
    std::fs::create_dir_all(&parent)?;
    let mut f = std::fs::File::create(tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(parent)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait::async_trait]
impl ObjectStore for LocalStore {
    async fn put(&self, key: &str, data: Bytes) -> std::io::Result<()> {
        let dest = self.path(key)?;
        let tmp = self.tmp_path();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let parent = write_tmp(&tmp, &dest, &data)?;
            if let Err(e) = std::fs::rename(&tmp, &dest) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            sync_dir(&parent)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    async fn get(&self, key: &str, offset: u64, len: Option<u64>) -> std::io::Result<ByteStream> {
        let mut f = tokio::fs::File::open(self.path(key)?).await?;
        if offset > 0 {
            f.seek(SeekFrom::Start(offset)).await?;
        }
        let reader: Box<dyn tokio::io::AsyncRead + Send + Unpin> = match len {
            Some(n) => Box::new(tokio::io::AsyncReadExt::take(f, n)),
            None => Box::new(f),
        };
        Ok(ReaderStream::with_capacity(reader, 1 << 20).boxed())
    }

    async fn read_all(&self, key: &str) -> std::io::Result<Bytes> {
        let path = self.path(key)?;
        tokio::task::spawn_blocking(move || -> std::io::Result<Bytes> {
            let mut f = std::fs::File::open(path)?;
            let len = f.seek(SeekFrom::End(0))?;
            f.seek(SeekFrom::Start(0))?;
            let mut buf = Vec::with_capacity(len as usize);
            f.read_to_end(&mut buf)?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(std::io::Error::other)?
    }

    async fn delete(&self, key: &str) -> std::io::Result<()> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn exists(&self, key: &str) -> std::io::Result<bool> {
        tokio::fs::try_exists(self.path(key)?).await
    }

    async fn put_new(&self, key: &str, data: Bytes) -> std::io::Result<bool> {
        let dest = self.path(key)?;
        let tmp = self.tmp_path();
        tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            let parent = write_tmp(&tmp, &dest, &data)?;
            // A hard link fails when the name exists, unlike rename: first writer wins.
            let linked = std::fs::hard_link(&tmp, &dest);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => sync_dir(&parent).map(|_| true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(std::io::Error::other)?
    }

    async fn promote(&self, from: &str, to: &str) -> std::io::Result<bool> {
        let (src, dest) = (self.path(from)?, self.path(to)?);
        tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            let parent = dest.parent().map(Path::to_path_buf).unwrap_or_default();
            std::fs::create_dir_all(&parent)?;
            match std::fs::rename(&src, &dest) {
                Ok(()) => sync_dir(&parent).map(|_| true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(std::io::Error::other)?
    }

    async fn delete_prefix(&self, prefix: &str) -> std::io::Result<()> {
        let dir = self.path(prefix.trim_end_matches('/'))?;
        match tokio::fs::remove_dir_all(dir).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    async fn ready(&self) -> bool {
        tokio::fs::metadata(self.root.join("tmp")).await.is_ok()
    }
}
