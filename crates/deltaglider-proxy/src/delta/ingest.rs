//! Receiving an upload body: each chunk is fanned out, as it arrives, to consumers that run
//! on their own blocking threads (SHA-256, MD5, the spool file writer, a streaming zstd
//! encoder), so that a PUT costs the slowest of them rather than their sum, and nothing
//! reads the body a second time.
//!
//! - The SHA-256 is not recomputed when SigV4 already verified it (`x-amz-content-sha256`
//!   with a single-chunk hash: s3s fails the body stream on a mismatch, before its end).
//! - The spool writer starts the disk writeback every few MiB (`sync_file_range`), so the
//!   fsync that makes the object durable waits only for the tail, not for the whole file.
//! - Chunks travel in batches of about [`BATCH`] bytes (shared, not copied): a body arrives
//!   in chunks of a few KiB, and a thread wake-up per chunk per consumer would cost more
//!   than the hashing.
//! - MD5 (the ETag) uses AWS-LC's assembly ([`FastMd5`]): it is serial and the longest
//!   stage of a passthrough PUT.
//! - Delta-eligible bodies are kept in memory (they are bounded by `DGP_MAX_OBJECT_SIZE`
//!   and the codec needs them whole anyway) instead of being written to a temp file and
//!   read back.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::ProxyError;

/// Batches queued per consumer before the receiver waits (backpressure).
pub const QUEUE: usize = 8;
/// Bytes per batch handed to the consumers.
pub const BATCH: usize = 256 << 10;

/// Consecutive chunks of the body.
pub type Batch = Arc<Vec<Bytes>>;
/// Bytes written between two writeback kicks.
const WRITEBACK_EVERY: u64 = 4 << 20;

/// Size and digests of a received body.
#[derive(Debug, Clone)]
pub struct Digests {
    pub size: u64,
    pub sha256: String,
    pub md5: String,
}

pub type Consumer<T> = (mpsc::Sender<Batch>, JoinHandle<Result<T, ProxyError>>);

/// Runs `f` on a blocking thread, fed with the body's chunks in order; `depth` batches
/// may wait for it before the receiver does.
pub fn consumer<T: Send + 'static>(
    depth: usize,
    f: impl FnOnce(mpsc::Receiver<Batch>) -> Result<T, ProxyError> + Send + 'static,
) -> Consumer<T> {
    let (tx, rx) = mpsc::channel(depth);
    (tx, tokio::task::spawn_blocking(move || f(rx)))
}

async fn join<T>(h: JoinHandle<Result<T, ProxyError>>) -> Result<T, ProxyError> {
    h.await
        .map_err(|e| ProxyError::Internal(format!("upload worker failed: {e}")))?
}

fn sha256_consumer() -> Consumer<String> {
    consumer(QUEUE, |mut rx| {
        let mut h = Sha256::new();
        while let Some(b) = rx.blocking_recv() {
            b.iter().for_each(|c| h.update(c));
        }
        Ok(hex::encode(h.finalize()))
    })
}

/// Incremental MD5 on AWS-LC's assembly implementation. MD5 cannot be parallelised and
/// is the longest stage of a passthrough PUT (the pure-Rust `md-5` did ~530 MB/s on the
/// bench machine, OpenSSL-style assembly ~760 MB/s).
pub struct FastMd5(Md5Impl);

enum Md5Impl {
    /// An initialised AWS-LC digest context (owned; freed on drop).
    Lc(*mut aws_lc_sys::EVP_MD_CTX),
    /// Fallback if AWS-LC could not allocate a context.
    Soft(md5::Md5),
}

impl FastMd5 {
    pub fn new() -> Self {
        // SAFETY: a fresh context is initialised for MD5 before use and freed on failure.
        unsafe {
            let ctx = aws_lc_sys::EVP_MD_CTX_new();
            if !ctx.is_null() {
                if aws_lc_sys::EVP_DigestInit_ex(ctx, aws_lc_sys::EVP_md5(), std::ptr::null_mut())
                    == 1
                {
                    return FastMd5(Md5Impl::Lc(ctx));
                }
                aws_lc_sys::EVP_MD_CTX_free(ctx);
            }
        }
        FastMd5(Md5Impl::Soft(<md5::Md5 as md5::Digest>::new()))
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            // SAFETY: the context is initialised; `data` is a valid slice. MD5 updates
            // cannot fail.
            Md5Impl::Lc(ctx) => unsafe {
                aws_lc_sys::EVP_DigestUpdate(*ctx, data.as_ptr().cast(), data.len());
            },
            Md5Impl::Soft(h) => md5::Digest::update(h, data),
        }
    }

    pub fn finalize_hex(mut self) -> String {
        match &mut self.0 {
            Md5Impl::Lc(ctx) => {
                let (mut out, mut n) = ([0u8; 16], 0u32);
                // SAFETY: `out` has room for the 16-byte MD5 digest.
                unsafe {
                    aws_lc_sys::EVP_DigestFinal_ex(*ctx, out.as_mut_ptr(), &mut n);
                }
                hex::encode(out)
            }
            Md5Impl::Soft(h) => hex::encode(md5::Digest::finalize_reset(h)),
        }
    }
}

impl Drop for FastMd5 {
    fn drop(&mut self) {
        if let Md5Impl::Lc(ctx) = self.0 {
            // SAFETY: allocated by EVP_MD_CTX_new, freed once.
            unsafe { aws_lc_sys::EVP_MD_CTX_free(ctx) }
        }
    }
}

impl Default for FastMd5 {
    fn default() -> Self {
        Self::new()
    }
}

fn md5_consumer() -> Consumer<String> {
    consumer(QUEUE, |mut rx| {
        let mut h = FastMd5::new();
        while let Some(b) = rx.blocking_recv() {
            b.iter().for_each(|c| h.update(c));
        }
        Ok(h.finalize_hex())
    })
}

/// Starts writeback of `[from, to)` without waiting for it (Linux; elsewhere a no-op: the
/// final fsync then does all the work).
fn kick_writeback(f: &std::fs::File, from: u64, to: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on an open fd; failure only loses the optimisation.
        unsafe {
            libc::sync_file_range(
                f.as_raw_fd(),
                from as libc::off64_t,
                (to - from) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (f, from, to);
}

/// Writes a batch with as few syscalls as possible and no copy into a user-space buffer.
fn write_batch(f: &mut std::fs::File, batch: &[Bytes]) -> std::io::Result<()> {
    use std::io::{IoSlice, Write};
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|c| IoSlice::new(c)).collect();
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        let n = f.write_vectored(bufs)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

fn file_consumer(mut file: std::fs::File) -> Consumer<u64> {
    consumer(QUEUE, move |mut rx| {
        let (mut size, mut kicked) = (0u64, 0u64);
        while let Some(b) = rx.blocking_recv() {
            write_batch(&mut file, &b)?;
            size += b.iter().map(|c| c.len() as u64).sum::<u64>();
            if size - kicked >= WRITEBACK_EVERY {
                kick_writeback(&file, kicked, size);
                kicked = size;
            }
        }
        if size > kicked {
            kick_writeback(&file, kicked, size);
        }
        Ok(size)
    })
}

/// Where the body goes besides the hashers.
pub enum Sink {
    /// A new file at this path (created here, removed on failure).
    File(std::path::PathBuf),
    /// Memory: the chunks are returned.
    Memory,
}

/// A received body.
pub struct Received {
    pub digests: Digests,
    /// The chunks, in order (`Sink::Memory` only).
    pub chunks: Vec<Bytes>,
}

/// Receives `stream` completely: hashes it (SHA-256 only when `verified_sha256` is None),
/// stores it as `into` says and feeds every chunk to `extra` (e.g. an encoder) too.
/// A body error fails the whole receive; `extra` then sees its channel close early and
/// its result is not used. `Sink::Memory` takes at most `max_len` bytes.
pub async fn receive<S, E>(
    mut stream: S,
    verified_sha256: Option<String>,
    into: Sink,
    extra: Option<mpsc::Sender<Batch>>,
    max_len: Option<u64>,
) -> Result<Received, ProxyError>
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let (file_path, file) = match &into {
        Sink::File(p) => {
            if let Some(dir) = p.parent() {
                tokio::fs::create_dir_all(dir).await?;
            }
            let f = std::fs::File::create(p)?;
            (Some(p.clone()), Some(file_consumer(f)))
        }
        Sink::Memory => (None, None),
    };
    // The senders live only in `senders`: dropping it closes every channel.
    let mut senders: Vec<mpsc::Sender<Batch>> = Vec::with_capacity(4);
    let (md5_tx, md5_h) = md5_consumer();
    senders.push(md5_tx);
    let sha_h = match verified_sha256 {
        Some(_) => None,
        None => {
            let (tx, h) = sha256_consumer();
            senders.push(tx);
            Some(h)
        }
    };
    let file_h = file.map(|(tx, h)| {
        senders.push(tx);
        h
    });
    if let Some(x) = extra {
        senders.push(x);
    }
    let keep = matches!(into, Sink::Memory);
    let mut chunks = Vec::new();
    let mut size = 0u64;
    let mut failure: Option<ProxyError> = None;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batch_len = 0usize;
    // Hands the batch to every consumer; false when one hung up (it failed; its join
    // reports why).
    async fn flush(senders: &[mpsc::Sender<Batch>], batch: &mut Vec<Bytes>) -> bool {
        let b: Batch = Arc::new(std::mem::take(batch));
        for s in senders {
            if s.send(b.clone()).await.is_err() {
                return false;
            }
        }
        true
    }
    loop {
        match stream.next().await {
            None => {
                if !batch.is_empty() {
                    flush(&senders, &mut batch).await;
                }
                break;
            }
            Some(Ok(c)) if c.is_empty() => {}
            Some(Ok(c)) => {
                size += c.len() as u64;
                if max_len.is_some_and(|m| size > m) {
                    failure = Some(ProxyError::InvalidArgument(
                        "request body is longer than declared".into(),
                    ));
                    break;
                }
                if keep {
                    chunks.push(c.clone());
                }
                batch_len += c.len();
                batch.push(c);
                if batch_len >= BATCH {
                    batch_len = 0;
                    if !flush(&senders, &mut batch).await {
                        break;
                    }
                }
            }
            Some(Err(e)) => {
                failure = Some(ProxyError::InvalidArgument(format!("request body: {e}")));
                break;
            }
        }
    }
    drop(senders);
    let md5 = join(md5_h).await;
    let sha = match sha_h {
        Some(h) => join(h).await,
        None => Ok(verified_sha256.unwrap_or_default()),
    };
    let written = match file_h {
        Some(h) => join(h).await.map(Some),
        None => Ok(None),
    };
    let res = (|| {
        if let Some(e) = failure {
            return Err(e);
        }
        let (md5, sha256, written) = (md5?, sha?, written?);
        if written.is_some_and(|w| w != size) {
            return Err(ProxyError::Internal("spool writer lost bytes".into()));
        }
        Ok(Received {
            digests: Digests { size, sha256, md5 },
            chunks,
        })
    })();
    if res.is_err() {
        if let Some(p) = file_path {
            let _ = tokio::fs::remove_file(p).await;
        }
    }
    res
}

/// One contiguous buffer of the chunks (no copy for a single chunk).
pub fn concat(chunks: &[Bytes]) -> Bytes {
    match chunks {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => {
            let len = many.iter().map(Bytes::len).sum();
            let mut v = Vec::with_capacity(len);
            for c in many {
                v.extend_from_slice(c);
            }
            Bytes::from(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[&'static [u8]]) -> impl futures::Stream<Item = Result<Bytes, String>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn digests_file_and_memory_agree() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        let r = receive(
            body(&[b"hello ", b"", b"world"]),
            None,
            Sink::File(p.clone()),
            None,
            None,
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"hello world");
        assert_eq!(r.digests.size, 11);
        assert_eq!(r.digests.md5, "5eb63bbbe01eeed093cb22bb8f5acdc3");
        assert_eq!(
            r.digests.sha256,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        let m = receive(
            body(&[b"hello ", b"world"]),
            None,
            Sink::Memory,
            None,
            Some(11),
        )
        .await
        .unwrap();
        assert_eq!(concat(&m.chunks).as_ref(), b"hello world");
        assert_eq!(m.digests.sha256, r.digests.sha256);
        // A SigV4-verified hash is taken as is.
        let v = receive(
            body(&[b"a"]),
            Some("given".into()),
            Sink::Memory,
            None,
            None,
        )
        .await
        .unwrap();
        assert_eq!(v.digests.sha256, "given");
    }

    #[test]
    fn fast_md5_matches_md5_crate_across_chunk_boundaries() {
        use md5::Digest as _;
        let data: Vec<u8> = (0..200_003u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut h = FastMd5::new();
        for c in data.chunks(4097) {
            h.update(c);
        }
        assert_eq!(h.finalize_hex(), hex::encode(md5::Md5::digest(&data)));
        assert_eq!(
            FastMd5::new().finalize_hex(),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
    }

    #[tokio::test]
    async fn a_broken_body_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        let s = futures::stream::iter(vec![Ok(Bytes::from_static(b"abc")), Err("reset")]);
        assert!(receive(s, None, Sink::File(p.clone()), None, None)
            .await
            .is_err());
        assert!(
            receive(body(&[b"toolong"]), None, Sink::Memory, None, Some(3))
                .await
                .is_err()
        );
        assert!(!p.exists());
    }
}
