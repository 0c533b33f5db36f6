//! The delta engine: per-deltaspace references, the delta/passthrough decision, transparent
//! reconstruction with SHA-256 verification, LIST that hides internals, and deletes that
//! never break another object's reconstruction. Backend-agnostic; buckets are routed to a
//! backend (and renamed by `alias`) here.

pub mod cache;
pub mod codec;
pub mod ingest;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use crate::backend::{Backend, ByteStream, PutData, StoredObject};
use crate::config::BucketPolicy;
use crate::error::ProxyError;
use crate::meta::{self, Codec, FileMetadata, Note, DELTA_SUFFIX, REFERENCE_NAME};
use cache::RefCache;

/// Leading bytes of the compressed formats xdelta3 opens by itself when it runs without
/// `-D` (gzip, bzip2, compress, xz). See [`Engine::put`] for why such bodies are stored
/// passthrough under the xdelta3 codec.
const XDELTA3_AUTO_DECOMPRESSED: &[&[u8]] = &[b"\x1f\x8b", b"BZh", b"\x1f\x9d", b"\xfd7zXZ\x00"];

/// Delta-eligible suffixes (case-insensitive). Whole-stream compressed formats (tgz,
/// tar.gz/bz2/xz, rar, 7z) are left out, as in the current upstream: they do not delta.
pub const DELTA_EXTENSIONS: &[&str] = &[
    ".zip", ".tar", ".jar", ".war", ".ear", ".dmg", ".iso", ".sql", ".dump", ".bak", ".backup",
];

/// A request body spooled to a temp file, with its digests.
pub struct Spooled {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub md5: String,
}

#[derive(Default, Clone)]
pub struct PutOptions {
    pub content_type: Option<String>,
    pub user_metadata: BTreeMap<String, String>,
    pub multipart_etag: Option<String>,
}

/// A user-visible object as LIST shows it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified: DateTime<Utc>,
}

pub struct ListPage {
    pub objects: Vec<Entry>,
    pub common_prefixes: Vec<String>,
    pub truncated: bool,
    pub next_marker: Option<String>,
}

/// Where an object lives and how it is stored.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub meta: FileMetadata,
    pub physical_key: String,
    pub stored_size: u64,
    pub last_modified: DateTime<Utc>,
}

impl Resolved {
    pub fn storage_type(&self) -> &'static str {
        if self.physical_key.ends_with('/') {
            "directory"
        } else {
            self.meta.note().as_str()
        }
    }
}

/// The body of a GET.
pub enum Body {
    Bytes(Bytes),
    Stream(ByteStream),
}

impl Body {
    /// The body as one stream, for consumers that take any stream (spool, multipart part).
    pub fn into_stream(self) -> ByteStream {
        match self {
            Body::Bytes(b) => Box::pin(futures::stream::iter([Ok(b)])),
            Body::Stream(s) => s,
        }
    }
}

pub struct EngineConfig {
    pub max_delta_ratio: f64,
    pub max_object_size: u64,
    pub cache_bytes: u64,
    pub codec_concurrency: usize,
    pub codec_timeout: Duration,
    pub codec: Codec,
}

/// Serialises "has reference? → put reference → put delta" per deltaspace.
type SpaceLock = Arc<tokio::sync::Mutex<()>>;

pub struct Engine {
    /// Named backends; the admin API adds and removes entries at runtime.
    backends: RwLock<HashMap<String, Arc<dyn Backend>>>,
    default_backend: String,
    pub policies: RwLock<BTreeMap<String, BucketPolicy>>,
    pub cache: RefCache,
    codec_sem: Arc<Semaphore>,
    locks: Mutex<HashMap<(String, String), SpaceLock>>,
    pub cfg: EngineConfig,
    /// Hot-reloadable limits (admin config PUT/apply): f64 bits of max_delta_ratio, and
    /// max_object_size. Seeded from `cfg`; read per request.
    live_ratio_bits: std::sync::atomic::AtomicU64,
    live_max_size: std::sync::atomic::AtomicU64,
}

/// Splits a key into (deltaspace prefix, file name).
pub fn split_key(key: &str) -> (&str, &str) {
    key.rsplit_once('/').unwrap_or(("", key))
}

fn ref_key(prefix: &str) -> String {
    if prefix.is_empty() {
        REFERENCE_NAME.to_string()
    } else {
        format!("{prefix}/{REFERENCE_NAME}")
    }
}

fn hex_sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Rejects reserved and unsafe keys.
pub fn validate_key(key: &str) -> Result<(), ProxyError> {
    if key.is_empty() || key.len() > 1024 {
        return Err(ProxyError::InvalidKey("key must be 1..1024 bytes".into()));
    }
    if key.contains('\0') || key.contains('\\') {
        return Err(ProxyError::InvalidKey(
            "key contains NUL or backslash".into(),
        ));
    }
    let trimmed = key.strip_suffix('/').unwrap_or(key);
    for seg in trimmed.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(ProxyError::InvalidKey(
                "key has an empty, . or .. segment".into(),
            ));
        }
    }
    if !key.ends_with('/') {
        let (_, name) = split_key(key);
        if name == REFERENCE_NAME || name.ends_with(DELTA_SUFFIX) {
            return Err(ProxyError::InvalidKey(format!(
                "{name:?} is reserved for DeltaGlider internals"
            )));
        }
    }
    Ok(())
}

fn is_eligible_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    DELTA_EXTENSIONS.iter().any(|e| lower.ends_with(e))
}

/// Writes a byte stream to a fresh temp file in `dir`, hashing as it goes (see
/// [`ingest`]: receive, SHA-256, MD5 and the file write run concurrently).
pub async fn spool<S, E>(dir: &std::path::Path, stream: S) -> Result<Spooled, ProxyError>
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let path = dir.join(format!("up-{}", uuid::Uuid::new_v4()));
    let r = ingest::receive(stream, None, ingest::Sink::File(path.clone()), None, None).await?;
    Ok(Spooled {
        path,
        size: r.digests.size,
        sha256: r.digests.sha256,
        md5: r.digests.md5,
    })
}

/// An upload's bytes on their way to storage.
enum Data {
    /// A temp file the backend may take over (rename) or upload from.
    File(PathBuf),
    /// The received chunks (delta-eligible uploads received by [`Engine::put_stream`]):
    /// joined into one buffer only if something needs it whole (a delta encoded while
    /// the body arrived does not).
    Chunks(Vec<Bytes>),
    /// In one buffer.
    Memory(Bytes),
}

impl Data {
    /// The first `n` bytes (fewer if the body is shorter).
    async fn head(&self, n: usize) -> Result<Vec<u8>, ProxyError> {
        match self {
            Data::File(p) => {
                use tokio::io::AsyncReadExt;
                let mut buf = Vec::with_capacity(n);
                tokio::fs::File::open(p)
                    .await?
                    .take(n as u64)
                    .read_to_end(&mut buf)
                    .await?;
                Ok(buf)
            }
            Data::Chunks(c) => Ok(c.iter().flat_map(|b| b.iter().copied()).take(n).collect()),
            Data::Memory(b) => Ok(b[..n.min(b.len())].to_vec()),
        }
    }

    /// The bytes in one buffer (reads the file; joins the chunks once).
    async fn whole(&mut self) -> Result<Bytes, ProxyError> {
        match self {
            Data::File(p) => Ok(Bytes::from(tokio::fs::read(&*p).await?)),
            Data::Chunks(c) => {
                let b = ingest::concat(c);
                *self = Data::Memory(b.clone());
                Ok(b)
            }
            Data::Memory(b) => Ok(b.clone()),
        }
    }
}

struct Upload {
    digests: ingest::Digests,
    data: Data,
    /// A delta encoded while the body arrived: (SHA-256 of its reference, delta).
    pre_encoded: Option<(String, Vec<u8>)>,
}

/// What a PUT request tells about its body besides the bytes.
#[derive(Default, Clone)]
pub struct BodyInfo {
    /// Declared length (Content-Length or x-amz-decoded-content-length).
    pub len: Option<u64>,
    /// SHA-256 that SigV4 verifies while the body is read (the stream fails on mismatch).
    pub verified_sha256: Option<String>,
    /// Content-MD5, hex.
    pub content_md5: Option<String>,
}

impl Engine {
    pub fn max_delta_ratio(&self) -> f64 {
        f64::from_bits(
            self.live_ratio_bits
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    pub fn max_object_size(&self) -> u64 {
        self.live_max_size
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_max_delta_ratio(&self, r: f64) {
        self.live_ratio_bits
            .store(r.to_bits(), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_max_object_size(&self, n: u64) {
        self.live_max_size
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn new(
        backends: HashMap<String, Arc<dyn Backend>>,
        default_backend: String,
        policies: BTreeMap<String, BucketPolicy>,
        cfg: EngineConfig,
    ) -> Self {
        metrics::gauge!("deltaglider_codec_semaphore_available").set(cfg.codec_concurrency as f64);
        Engine {
            backends: RwLock::new(backends),
            default_backend,
            policies: RwLock::new(policies),
            cache: RefCache::new(cfg.cache_bytes),
            codec_sem: Arc::new(Semaphore::new(cfg.codec_concurrency)),
            locks: Mutex::new(HashMap::new()),
            live_ratio_bits: std::sync::atomic::AtomicU64::new(cfg.max_delta_ratio.to_bits()),
            live_max_size: std::sync::atomic::AtomicU64::new(cfg.max_object_size),
            cfg,
        }
    }

    pub fn backend_kind(&self) -> &'static str {
        self.backends
            .read()
            .get(&self.default_backend)
            .map(|b| b.kind())
            .unwrap_or("unknown")
    }

    /// Name of the backend unrouted buckets use.
    pub fn default_backend(&self) -> &str {
        &self.default_backend
    }

    pub fn has_backend(&self, name: &str) -> bool {
        self.backends.read().contains_key(name)
    }

    /// Makes a backend routable at once (admin API create); refuses a name in use.
    pub fn add_backend(&self, name: &str, be: Arc<dyn Backend>) -> bool {
        let mut m = self.backends.write();
        if m.contains_key(name) {
            return false;
        }
        m.insert(name.to_string(), be);
        true
    }

    /// Drops a backend (admin API delete); the default backend is never removed.
    pub fn remove_backend(&self, name: &str) -> bool {
        name != self.default_backend && self.backends.write().remove(name).is_some()
    }

    /// The backend a bucket is routed to, and the bucket's real name there.
    pub fn route(&self, bucket: &str) -> (Arc<dyn Backend>, String) {
        // Only the two routing fields are copied out (this runs for every S3 operation);
        // the policy lock is released before the backends lock is taken.
        let (backend, alias) = match self.policies.read().get(bucket) {
            Some(p) => (p.backend.clone(), p.alias.clone()),
            None => (None, None),
        };
        let backends = self.backends.read();
        let be = backend
            .as_ref()
            .and_then(|n| backends.get(n))
            .or_else(|| backends.get(&self.default_backend))
            .cloned()
            .or_else(|| backends.values().next().cloned())
            .expect("at least one backend is configured");
        (be, alias.unwrap_or_else(|| bucket.to_string()))
    }

    pub fn spool_dir(&self, bucket: &str) -> PathBuf {
        self.route(bucket).0.spool_dir()
    }

    fn policy(&self, bucket: &str) -> BucketPolicy {
        self.policies
            .read()
            .get(bucket)
            .cloned()
            .unwrap_or_default()
    }

    async fn lock_space(&self, bucket: &str, prefix: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self
            .locks
            .lock()
            .entry((bucket.to_string(), prefix.to_string()))
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone();
        m.lock_owned().await
    }

    async fn codec_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ProxyError> {
        let p = self
            .codec_sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ProxyError::Internal(e.to_string()))?;
        metrics::gauge!("deltaglider_codec_semaphore_available")
            .set(self.codec_sem.available_permits() as f64);
        Ok(p)
    }

    fn release_gauge(&self) {
        metrics::gauge!("deltaglider_codec_semaphore_available")
            .set(self.codec_sem.available_permits() as f64);
    }

    pub async fn create_bucket(&self, bucket: &str) -> Result<(), ProxyError> {
        let (be, real) = self.route(bucket);
        be.create_bucket(&real).await
    }

    pub async fn delete_bucket(&self, bucket: &str) -> Result<(), ProxyError> {
        let (be, real) = self.route(bucket);
        be.delete_bucket(&real).await
    }

    pub async fn bucket_exists(&self, bucket: &str) -> Result<bool, ProxyError> {
        let (be, real) = self.route(bucket);
        be.bucket_exists(&real).await
    }

    /// Buckets of every backend, under their virtual names.
    pub async fn list_buckets(&self) -> Result<Vec<(String, DateTime<Utc>)>, ProxyError> {
        let mut out = BTreeMap::new();
        let aliases: HashMap<String, String> = self
            .policies
            .read()
            .iter()
            .filter_map(|(k, v)| v.alias.clone().map(|a| (a, k.clone())))
            .collect();
        let mut seen = std::collections::HashSet::new();
        let backends: Vec<Arc<dyn Backend>> = self.backends.read().values().cloned().collect();
        for be in &backends {
            if !seen.insert(Arc::as_ptr(be) as *const () as usize) {
                continue;
            }
            for (name, t) in be.list_buckets().await? {
                let name = aliases.get(&name).cloned().unwrap_or(name);
                out.insert(name, t);
            }
        }
        Ok(out.into_iter().collect())
    }

    async fn require_bucket(&self, be: &Arc<dyn Backend>, real: &str) -> Result<(), ProxyError> {
        if be.bucket_exists(real).await? {
            Ok(())
        } else {
            Err(ProxyError::NoSuchBucket)
        }
    }

    /// Stores an upload: delta against the deltaspace reference when eligible and worth it,
    /// passthrough otherwise. The spooled file is consumed.
    pub async fn put(
        &self,
        bucket: &str,
        key: &str,
        up: Spooled,
        opts: PutOptions,
    ) -> Result<FileMetadata, ProxyError> {
        let res = async {
            validate_key(key)?;
            let (be, real) = self.route(bucket);
            self.require_bucket(&be, &real).await?;
            let upload = Upload {
                digests: ingest::Digests {
                    size: up.size,
                    sha256: up.sha256.clone(),
                    md5: up.md5.clone(),
                },
                data: Data::File(up.path.clone()),
                pre_encoded: None,
            };
            self.store(&be, &real, bucket, key, upload, opts).await
        }
        .await;
        let _ = tokio::fs::remove_file(&up.path).await;
        res
    }

    /// Receives and stores a PUT body. Delta-eligible bodies stay in memory and, when the
    /// deltaspace has a reference and the codec is zstd, are delta-encoded while they
    /// arrive; other bodies are spooled to a temp file that the backend takes over.
    pub async fn put_stream<S, E>(
        &self,
        bucket: &str,
        key: &str,
        body: S,
        info: BodyInfo,
        opts: PutOptions,
    ) -> Result<FileMetadata, ProxyError>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        validate_key(key)?;
        let (be, real) = self.route(bucket);
        self.require_bucket(&be, &real).await?;
        let (prefix, name) = split_key(key);
        let pol = self.policy(bucket);
        let in_memory = !key.ends_with('/')
            && pol.compression.unwrap_or(true)
            && is_eligible_name(name)
            && info
                .len
                .is_some_and(|l| l > 0 && l <= self.max_object_size());
        let check_md5 = |d: &ingest::Digests| match &info.content_md5 {
            Some(want) if *want != d.md5 => Err(ProxyError::BadDigest),
            _ => Ok(()),
        };
        if !in_memory {
            let path = be.spool_dir().join(format!("up-{}", uuid::Uuid::new_v4()));
            let t0 = Instant::now();
            let res = async {
                let r = ingest::receive(
                    body,
                    info.verified_sha256.clone(),
                    ingest::Sink::File(path.clone()),
                    None,
                    None,
                )
                .await?;
                check_md5(&r.digests)?;
                let t_received = t0.elapsed();
                let upload = Upload {
                    digests: r.digests,
                    data: Data::File(path.clone()),
                    pre_encoded: None,
                };
                let res = self.store(&be, &real, bucket, key, upload, opts).await;
                tracing::debug!(
                    key,
                    received_ms = t_received.as_secs_f64() * 1e3,
                    stored_ms = t0.elapsed().as_secs_f64() * 1e3,
                    "put timings (spooled)"
                );
                res
            }
            .await;
            // Normally already renamed into place (or uploaded and removed) by the backend.
            let _ = tokio::fs::remove_file(&path).await;
            return res;
        }
        let len = info.len.unwrap_or_default();
        let t0 = Instant::now();
        let encoder = self.start_stream_encode(&be, &real, prefix, len).await?;
        let t_setup = t0.elapsed();
        let (tx, pending) = match encoder {
            Some((ref_sha, tx, h, permit)) => (Some(tx), Some((ref_sha, h, permit))),
            None => (None, None),
        };
        let received = ingest::receive(
            body,
            info.verified_sha256.clone(),
            ingest::Sink::Memory,
            tx,
            Some(len),
        )
        .await;
        let t_received = t0.elapsed();
        let pre_encoded = match pending {
            Some((ref_sha, h, permit)) => {
                let enc = h.await;
                drop(permit);
                self.release_gauge();
                match enc {
                    Ok(Ok((delta, busy))) => {
                        metrics::histogram!("deltaglider_delta_encode_duration_seconds")
                            .record(busy.as_secs_f64());
                        Some((ref_sha, delta))
                    }
                    // Encoded again after the receive if it is still wanted.
                    _ => None,
                }
            }
            None => None,
        };
        let t_encoded = t0.elapsed();
        let streamed = pre_encoded.is_some();
        let r = received?;
        check_md5(&r.digests)?;
        let upload = Upload {
            data: Data::Chunks(r.chunks),
            digests: r.digests,
            pre_encoded,
        };
        let res = self.store(&be, &real, bucket, key, upload, opts).await;
        tracing::debug!(
            key,
            streamed,
            setup_ms = t_setup.as_secs_f64() * 1e3,
            received_ms = t_received.as_secs_f64() * 1e3,
            encoded_ms = t_encoded.as_secs_f64() * 1e3,
            stored_ms = t0.elapsed().as_secs_f64() * 1e3,
            "put timings"
        );
        res
    }

    /// Starts a zstd encoder against the deltaspace's current reference, if there is one
    /// and a codec slot is free right now (a slow client must not hold a slot others wait
    /// for: without one, the upload is encoded after it arrived, as with xdelta3).
    #[allow(clippy::type_complexity)]
    async fn start_stream_encode(
        &self,
        be: &Arc<dyn Backend>,
        real: &str,
        prefix: &str,
        len: u64,
    ) -> Result<
        Option<(
            String,
            tokio::sync::mpsc::Sender<ingest::Batch>,
            tokio::task::JoinHandle<Result<(Vec<u8>, Duration), ProxyError>>,
            tokio::sync::OwnedSemaphorePermit,
        )>,
        ProxyError,
    > {
        if self.cfg.codec != Codec::Zstd {
            return Ok(None);
        }
        let Some(obj) = be.head(real, &ref_key(prefix)).await? else {
            return Ok(None);
        };
        let ref_sha = obj.meta.map(|m| m.file_sha256).unwrap_or_default();
        let Ok(permit) = self.codec_sem.clone().try_acquire_owned() else {
            return Ok(None);
        };
        self.release_gauge();
        let reference = self
            .load_reference(be, real, prefix, Some(&ref_sha))
            .await?;
        let (tx, h) = codec::zstd_stream_encoder(reference, len);
        Ok(Some((ref_sha, tx, h, permit)))
    }

    /// Encodes with the configured codec under a codec slot.
    async fn encode(&self, reference: Bytes, target: Bytes) -> Result<Vec<u8>, ProxyError> {
        let permit = self.codec_permit().await?;
        let t0 = Instant::now();
        let enc = codec::encode(self.cfg.codec, reference, target, self.cfg.codec_timeout).await;
        drop(permit);
        self.release_gauge();
        metrics::histogram!("deltaglider_delta_encode_duration_seconds")
            .record(t0.elapsed().as_secs_f64());
        enc
    }

    async fn store(
        &self,
        be: &Arc<dyn Backend>,
        real: &str,
        bucket: &str,
        key: &str,
        up: Upload,
        opts: PutOptions,
    ) -> Result<FileMetadata, ProxyError> {
        let (prefix, name) = split_key(key);
        let size = up.digests.size;
        let mut meta = FileMetadata {
            tool: meta::TOOL.into(),
            original_name: name.to_string(),
            file_sha256: up.digests.sha256.clone(),
            file_size: size,
            md5: Some(up.digests.md5.clone()),
            multipart_etag: opts.multipart_etag.clone(),
            created_at: meta::now_timestamp(),
            content_type: opts.content_type.clone(),
            note: Note::Passthrough.as_str().into(),
            user_metadata: opts.user_metadata.clone(),
            ..Default::default()
        };
        if key.ends_with('/') {
            if size != 0 {
                return Err(ProxyError::InvalidKey(
                    "a key ending in / is a directory marker and must be empty".into(),
                ));
            }
            meta.content_type = Some("application/x-directory".into());
            be.put(real, key, PutData::Bytes(Bytes::new()), &meta)
                .await?;
            return Ok(meta);
        }
        let pol = self.policy(bucket);
        let ratio_limit = pol.max_delta_ratio.unwrap_or(self.max_delta_ratio());
        let eligible = pol.compression.unwrap_or(true)
            && is_eligible_name(name)
            && size > 0
            && size <= self.max_object_size();
        let delta_key = format!("{key}{DELTA_SUFFIX}");
        let _guard = self.lock_space(real, prefix).await;

        let mut data = up.data;
        // A compressed body under an eligible name (a `.dump` that is a gzip stream) is stored
        // passthrough with the xdelta3 codec: the Python CLI decodes without `-D`, so
        // xdelta3 would decompress such a reference or target behind its back and a delta
        // made here (with `-D`) would not decode there. Passthrough keeps every object
        // readable by both tools, and a compressed stream deltas poorly anyway.
        let eligible = eligible
            && !(self.cfg.codec == Codec::Xdelta3 && {
                let head = data.head(6).await?;
                XDELTA3_AUTO_DECOMPRESSED
                    .iter()
                    .any(|m| head.starts_with(m))
            });
        if eligible {
            let rkey = ref_key(prefix);
            let codec = self.cfg.codec;
            let (delta, ref_sha, created_ref) = match be.head(real, &rkey).await? {
                Some(obj) => {
                    let ref_sha = obj.meta.unwrap_or_default().file_sha256;
                    // The delta encoded during the receive stands if the reference it was
                    // encoded against is still the deltaspace's (checked under the lock).
                    let delta = match up.pre_encoded {
                        Some((sha, d)) if sha == ref_sha => d,
                        _ => {
                            let r = self
                                .load_reference(be, real, prefix, Some(&ref_sha))
                                .await?;
                            self.encode(r, data.whole().await?).await?
                        }
                    };
                    (delta, ref_sha, false)
                }
                None => {
                    let bytes = data.whole().await?;
                    let rmeta = FileMetadata {
                        note: Note::Reference.as_str().into(),
                        source_name: Some(key.to_string()),
                        original_name: REFERENCE_NAME.into(),
                        content_type: None,
                        user_metadata: BTreeMap::new(),
                        multipart_etag: None,
                        ..meta.clone()
                    };
                    // The reference write and the (self-)delta encode overlap.
                    let (stored, enc) = tokio::join!(
                        be.put(real, &rkey, PutData::Bytes(bytes.clone()), &rmeta),
                        self.encode(bytes.clone(), bytes.clone())
                    );
                    stored?;
                    self.cache
                        .put(real, prefix, &up.digests.sha256, bytes.clone());
                    (enc?, up.digests.sha256.clone(), true)
                }
            };
            let ratio = delta.len() as f64 / size as f64;
            metrics::histogram!("deltaglider_delta_compression_ratio").record(ratio);
            tracing::debug!(
                bucket,
                key,
                ratio,
                delta_size = delta.len(),
                size,
                codec = codec.as_str(),
                "delta encoded"
            );
            if ratio < ratio_limit {
                let dmeta = FileMetadata {
                    note: Note::Delta.as_str().into(),
                    ref_path: Some(REFERENCE_NAME.into()),
                    ref_sha256: Some(ref_sha),
                    delta_size: Some(delta.len() as u64),
                    delta_cmd: Some(match codec {
                        Codec::Xdelta3 => {
                            format!("xdelta3 -e -9 -s reference.bin {name} {name}.delta")
                        }
                        Codec::Zstd => {
                            format!("zstd --patch-from=reference.bin {name} -o {name}.delta")
                        }
                    }),
                    delta_codec: (codec == Codec::Zstd).then(|| codec.as_str().to_string()),
                    ..meta.clone()
                };
                let saved = size.saturating_sub(delta.len() as u64);
                be.put(real, &delta_key, PutData::Bytes(Bytes::from(delta)), &dmeta)
                    .await?;
                // The new form is durable: drop a stale passthrough copy so it never shadows.
                be.delete(real, key).await?;
                metrics::counter!("deltaglider_delta_decisions_total", "decision" => if created_ref { "reference" } else { "delta" }).increment(1);
                metrics::counter!("deltaglider_delta_bytes_saved_total").increment(saved);
                tracing::info!(
                    bucket,
                    key,
                    decision = if created_ref { "reference" } else { "delta" },
                    ratio,
                    "object stored"
                );
                return Ok(dmeta);
            }
            if created_ref {
                be.delete(real, &rkey).await?;
                self.cache.evict(real, prefix);
            }
        }
        let put_data = match data {
            // The backend consumes (renames) the file it is given.
            Data::File(p) => PutData::File(p),
            Data::Chunks(c) => PutData::Bytes(ingest::concat(&c)),
            Data::Memory(b) => PutData::Bytes(b),
        };
        be.put(real, key, put_data, &meta).await?;
        let had_delta = be.head(real, &delta_key).await?.is_some();
        if had_delta {
            be.delete(real, &delta_key).await?;
            self.cleanup_space(be, real, prefix).await?;
        }
        metrics::counter!("deltaglider_delta_decisions_total", "decision" => "passthrough")
            .increment(1);
        tracing::info!(bucket, key, decision = "passthrough", size, "object stored");
        Ok(meta)
    }

    async fn load_reference(
        &self,
        be: &Arc<dyn Backend>,
        real: &str,
        prefix: &str,
        sha: Option<&str>,
    ) -> Result<Bytes, ProxyError> {
        if let Some(b) = self.cache.get(real, prefix, sha) {
            return Ok(b);
        }
        let data = be
            .get_bytes(real, &ref_key(prefix))
            .await
            .map_err(|e| match e {
                ProxyError::NoSuchKey => {
                    ProxyError::Integrity(format!("reference {} is missing", ref_key(prefix)))
                }
                e => e,
            })?;
        let hashed = data.clone();
        let actual = tokio::task::spawn_blocking(move || hex_sha256(&hashed))
            .await
            .map_err(|e| ProxyError::Internal(e.to_string()))?;
        if let Some(want) = sha {
            if actual != want {
                return Err(ProxyError::Integrity(format!(
                    "reference {} has SHA-256 {actual}, expected {want}",
                    ref_key(prefix)
                )));
            }
        }
        self.cache.put(real, prefix, &actual, data.clone());
        Ok(data)
    }

    /// Finds the stored form of a user key (delta or passthrough; the newest if both).
    pub async fn resolve(&self, bucket: &str, key: &str) -> Result<Resolved, ProxyError> {
        let (be, real) = self.route(bucket);
        if validate_key(key).is_err() {
            return Err(ProxyError::NoSuchKey);
        }
        let delta_key = format!("{key}{DELTA_SUFFIX}");
        let (d, p) = if key.ends_with('/') {
            (None, be.head(&real, key).await?)
        } else {
            futures::try_join!(be.head(&real, &delta_key), be.head(&real, key))?
        };
        let from = |o: StoredObject| -> Resolved {
            let meta = o.meta.clone().unwrap_or_else(|| FileMetadata {
                tool: "unmanaged".into(),
                original_name: split_key(key).1.into(),
                file_sha256: String::new(),
                file_size: o.size,
                md5: o.etag.clone(),
                created_at: meta::format_rfc3339(o.last_modified),
                note: "passthrough".into(),
                ..Default::default()
            });
            let last_modified = meta.created().unwrap_or(o.last_modified);
            Resolved {
                meta,
                physical_key: o.key,
                stored_size: o.size,
                last_modified,
            }
        };
        let res = match (d, p) {
            (Some(d), Some(p)) => {
                let (d, p) = (from(d), from(p));
                if d.last_modified >= p.last_modified {
                    d
                } else {
                    p
                }
            }
            (Some(d), None) => from(d),
            (None, Some(p)) => from(p),
            (None, None) => {
                self.require_bucket(&be, &real).await?;
                return Err(ProxyError::NoSuchKey);
            }
        };
        Ok(res)
    }

    /// Reads an object; `range` is already checked against the original size.
    pub async fn get(
        &self,
        bucket: &str,
        r: &Resolved,
        range: Option<Range<u64>>,
    ) -> Result<(Body, bool), ProxyError> {
        let (be, real) = self.route(bucket);
        if r.physical_key.ends_with('/') {
            return Ok((Body::Bytes(Bytes::new()), false));
        }
        // A proxy-AES object on a backend without a key (switched to `mode: none`, or to
        // sse-* without a legacy shim): refuse, never serve the ciphertext as the object.
        if r.meta.encrypted.is_some() && !be.decrypts() {
            return Err(ProxyError::Integrity(format!(
                "object {} is encrypted ({}) but no key is configured for its backend",
                r.physical_key,
                r.meta.encrypted.as_deref().unwrap_or_default()
            )));
        }
        if r.meta.note() != Note::Delta {
            return Ok((
                Body::Stream(be.get_stream(&real, &r.physical_key, range).await?),
                false,
            ));
        }
        let (prefix, _) = split_key(&r.physical_key);
        let codec = r.meta.codec().ok_or_else(|| {
            ProxyError::Codec(format!("unknown delta codec {:?}", r.meta.delta_codec))
        })?;
        let delta = be.get_bytes(&real, &r.physical_key).await?;
        let cached = self.cache.stats().hits;
        let reference = self
            .load_reference(&be, &real, prefix, r.meta.ref_sha256.as_deref())
            .await?;
        let cache_hit = self.cache.stats().hits > cached;
        let first = self
            .decode_checked(codec, &reference, &delta, codec::Recompress::Off)
            .await;
        let right = matches!(&first, Ok((_, sha)) if *sha == r.meta.file_sha256);
        // A delta written without `-D` (the Python CLI, which deltas .tar.gz/.gz too; the
        // proxy up to v0.9.0) of a gzip/xz body was encoded against the *decompressed*
        // reference: under `-D` it fails or rebuilds other bytes, and only comes back right
        // when xdelta3 may (de)compress. Try that before calling the object corrupt.
        let (out, sha) = if !right && codec == Codec::Xdelta3 {
            match self
                .decode_checked(codec, &reference, &delta, codec::Recompress::Legacy)
                .await
            {
                Ok(legacy) if legacy.1 == r.meta.file_sha256 => {
                    tracing::debug!(key = %r.physical_key, "delta decoded with xdelta3's automatic (de)compression (written without -D)");
                    legacy
                }
                _ => first?,
            }
        } else {
            first?
        };
        if sha != r.meta.file_sha256 {
            // Never serve corrupt bytes; the cached reference may be the culprit.
            self.cache.evict(&real, prefix);
            return Err(ProxyError::Integrity(format!(
                "reconstructed {} does not match its SHA-256",
                r.physical_key
            )));
        }
        let body = match range {
            Some(rg) => out.slice(rg.start as usize..rg.end as usize),
            None => out,
        };
        Ok((Body::Bytes(body), cache_hit))
    }

    /// Decodes under a codec permit (timed) and returns the bytes with their SHA-256.
    async fn decode_checked(
        &self,
        codec: Codec,
        reference: &Bytes,
        delta: &Bytes,
        recompress: codec::Recompress,
    ) -> Result<(Bytes, String), ProxyError> {
        let permit = self.codec_permit().await?;
        let t0 = Instant::now();
        let out = codec::decode(
            codec,
            reference.clone(),
            delta.clone(),
            self.cfg.codec_timeout,
            recompress,
        )
        .await;
        drop(permit);
        self.release_gauge();
        metrics::histogram!("deltaglider_delta_decode_duration_seconds")
            .record(t0.elapsed().as_secs_f64());
        let out = Bytes::from(out?);
        let check = out.clone();
        let sha = tokio::task::spawn_blocking(move || hex_sha256(&check))
            .await
            .map_err(|e| ProxyError::Internal(e.to_string()))?;
        Ok((out, sha))
    }

    /// Reads a whole object (any stored form) into a spool file of `dst_bucket`'s backend,
    /// ready for [`Engine::put`]: the read half of CopyObject and of a replication copy.
    pub async fn spool_object(
        &self,
        bucket: &str,
        r: &Resolved,
        dst_bucket: &str,
    ) -> Result<Spooled, ProxyError> {
        let (body, _) = self.get(bucket, r, None).await?;
        spool(&self.spool_dir(dst_bucket), body.into_stream()).await
    }

    /// Deletes a user key (both stored forms), then drops the deltaspace reference if no
    /// delta needs it any more. A missing key is a success.
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), ProxyError> {
        let (be, real) = self.route(bucket);
        self.require_bucket(&be, &real).await?;
        if key.ends_with('/') {
            return be.delete(&real, key).await;
        }
        let (prefix, name) = split_key(key);
        if name == REFERENCE_NAME || name.ends_with(DELTA_SUFFIX) {
            return Err(ProxyError::InvalidKey(
                "internal, cannot be deleted directly".into(),
            ));
        }
        if validate_key(key).is_err() {
            // Such a key can never have been stored: deleting it is a no-op success.
            return Ok(());
        }
        let _g = self.lock_space(&real, prefix).await;
        let delta_key = format!("{key}{DELTA_SUFFIX}");
        be.delete(&real, &delta_key).await?;
        be.delete(&real, key).await?;
        self.cleanup_space(&be, &real, prefix).await
    }

    /// Deletes `reference.bin` when no delta in the deltaspace remains (storage first, then
    /// cache). Called with the deltaspace lock held.
    async fn cleanup_space(
        &self,
        be: &Arc<dyn Backend>,
        real: &str,
        prefix: &str,
    ) -> Result<(), ProxyError> {
        let list_prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let objs = be.list(real, &list_prefix, false).await?;
        let any_delta = objs.iter().any(|o| {
            let rest = &o.key[list_prefix.len()..];
            !rest.contains('/') && rest.ends_with(DELTA_SUFFIX)
        });
        let rkey = ref_key(prefix);
        if !any_delta && objs.iter().any(|o| o.key == rkey) {
            be.delete(real, &rkey).await?;
            self.cache.evict(real, prefix);
            tracing::debug!(
                bucket = real,
                deltaspace = prefix,
                "last object gone: reference deleted"
            );
        }
        Ok(())
    }

    /// Lists user-visible objects: references dropped, `X.delta` shown as `X`, duplicates
    /// collapsed (newest wins), sizes and ETags of the originals.
    pub async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        start_after: Option<&str>,
        max_keys: usize,
        visible: &(dyn Fn(&str) -> bool + Send + Sync),
    ) -> Result<ListPage, ProxyError> {
        let (be, real) = self.route(bucket);
        self.require_bucket(&be, &real).await?;
        let stored = be.list(&real, prefix, true).await?;
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        for o in stored {
            let (_, name) = split_key(o.key.trim_end_matches('/'));
            if name == REFERENCE_NAME && !o.key.ends_with('/') {
                continue;
            }
            let user_key = o
                .key
                .strip_suffix(DELTA_SUFFIX)
                .unwrap_or(&o.key)
                .to_string();
            if !user_key.starts_with(prefix) {
                continue;
            }
            let (size, etag, lm) = match &o.meta {
                Some(m) => (
                    m.file_size,
                    m.etag(),
                    m.created().unwrap_or(o.last_modified),
                ),
                None => (o.size, o.etag.clone().unwrap_or_default(), o.last_modified),
            };
            let e = Entry {
                key: user_key.clone(),
                size,
                etag,
                last_modified: lm,
            };
            match entries.get(&user_key) {
                Some(old) if old.last_modified > lm => {}
                _ => {
                    entries.insert(user_key, e);
                }
            }
        }
        let mut page = ListPage {
            objects: vec![],
            common_prefixes: vec![],
            truncated: false,
            next_marker: None,
        };
        let mut count = 0usize;
        let mut last_cp: Option<String> = None;
        for (k, e) in entries {
            if let Some(sa) = start_after {
                if k.as_str() <= sa {
                    continue;
                }
                if delimiter.is_some_and(|d| sa.ends_with(d)) && k.starts_with(sa) {
                    continue;
                }
            }
            if !visible(&k) {
                continue;
            }
            let cp = delimiter.filter(|d| !d.is_empty()).and_then(|d| {
                let rest = &k[prefix.len()..];
                rest.find(d)
                    .map(|i| format!("{prefix}{}", &rest[..i + d.len()]))
            });
            if let Some(cp) = &cp {
                if last_cp.as_deref() == Some(cp.as_str()) {
                    continue;
                }
            }
            if count >= max_keys {
                page.truncated = true;
                break;
            }
            count += 1;
            match cp {
                Some(cp) => {
                    page.next_marker = Some(cp.clone());
                    page.common_prefixes.push(cp.clone());
                    last_cp = Some(cp);
                }
                None => {
                    page.next_marker = Some(k.clone());
                    page.objects.push(e);
                }
            }
        }
        if !page.truncated {
            page.next_marker = None;
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        assert!(validate_key("a/b.zip").is_ok());
        assert!(validate_key("a/").is_ok());
        assert!(validate_key("a/reference.bin").is_err());
        assert!(validate_key("a/x.delta").is_err());
        assert!(validate_key("a/../b").is_err());
        assert!(validate_key("a//b").is_err());
        assert!(validate_key("").is_err());
    }

    #[test]
    fn eligibility_by_suffix() {
        assert!(is_eligible_name("X.ZIP"));
        assert!(is_eligible_name("db.sql"));
        assert!(!is_eligible_name("a.tar.gz"));
        assert!(!is_eligible_name("a.png"));
        assert_eq!(split_key("a/b/c.zip"), ("a/b", "c.zip"));
        assert_eq!(split_key("c.zip"), ("", "c.zip"));
    }
}
