//! Upstream S3 backend: one API bucket maps to one real bucket (optionally renamed by
//! `alias`, resolved by the engine), same key names as the filesystem backend, metadata as
//! `x-amz-meta-dg-*`. The proxy signs its own requests with the backend credentials.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use async_trait::async_trait;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as AwsByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};

use super::metacache::{MetaCache, Stamp};
use super::sse::NativeSse;
use super::{Backend, ByteStream, PutData, StoredObject};
use crate::error::ProxyError;
use crate::meta::{FileMetadata, Note, REFERENCE_NAME};
use aws_runtime::auth::PayloadSigningOverride;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

pub struct S3Backend {
    client: Client,
    /// Same endpoint without retries, for the first HEAD of a lookup (a 500 there is
    /// disambiguated by listing instead of being retried with backoff).
    head_client: Client,
    spool: PathBuf,
    /// `dg-*` metadata read by HEAD, so that listings do not HEAD every key each time.
    meta_cache: MetaCache,
    /// Native SSE requested on every write (`sse-kms` / `sse-s3` modes).
    sse: Option<NativeSse>,
}

/// The body's SHA-256 when the metadata already holds it: a passthrough object the proxy
/// does not encrypt is stored as the client's exact bytes, whose SHA-256 the engine computed
/// (or SigV4 verified) on receipt. The size is checked too, so a body that is not those
/// bytes is never signed with their hash.
async fn known_payload_sha256(data: &PutData, meta: &FileMetadata) -> Option<String> {
    if meta.note() != Note::Passthrough || meta.encrypted.is_some() || meta.file_sha256.len() != 64
    {
        return None;
    }
    let len = match data {
        PutData::Bytes(b) => b.len() as u64,
        PutData::File(p) => tokio::fs::metadata(p).await.ok()?.len(),
    };
    (len == meta.file_size).then(|| meta.file_sha256.to_ascii_lowercase())
}

/// Signs an upload with a payload SHA-256 known in advance (`x-amz-content-sha256`), instead
/// of the SDK hashing an in-memory body once more or streaming a file as aws-chunked with a
/// CRC32 trailer. The upstream then checks the bytes against the hash the client's own
/// bytes had: integrity end to end, spool file included, and one pass less over the body.
#[derive(Debug)]
struct KnownPayloadSha256(String);

impl Intercept for KnownPayloadSha256 {
    fn name(&self) -> &'static str {
        "KnownPayloadSha256"
    }

    fn modify_before_signing(
        &self,
        _ctx: &mut BeforeTransmitInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(PayloadSigningOverride::Precomputed(self.0.clone()));
        Ok(())
    }
}

/// HEADs in flight per listing: enough to hide the round-trip latency, few enough not to
/// flood the upstream (the SDK's connection pool is shared with every other request).
const LIST_HEAD_CONCURRENCY: usize = 32;

#[derive(Debug, Clone)]
pub struct S3BackendConfig {
    pub endpoint: String,
    pub region: String,
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl S3BackendConfig {
    /// The SDK configuration for this upstream (static credentials named `provider`),
    /// shared by the backend, the credential check and the bench client; callers add
    /// their retry and timeout settings.
    pub fn sdk_config(&self, provider: &'static str) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .credentials_provider(Credentials::new(
                &self.access_key_id,
                &self.secret_access_key,
                None,
                None,
                provider,
            ))
            .region(Region::new(self.region.clone()))
            .endpoint_url(&self.endpoint)
            .force_path_style(self.path_style)
    }
}

fn be<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug + HasStatus>(
    e: SdkError<E, R>,
) -> ProxyError {
    let code = e.code().map(str::to_string);
    // A HEAD has no error body, hence no code: its status says throttling.
    if code.is_none() && status_of(&e) == Some(503) {
        return ProxyError::UpstreamSlowDown("503 Service Unavailable".into());
    }
    match code.as_deref() {
        Some("NoSuchBucket") => ProxyError::NoSuchBucket,
        Some("NoSuchKey") | Some("NotFound") => ProxyError::NoSuchKey,
        Some("BucketAlreadyExists") | Some("BucketAlreadyOwnedByYou") => ProxyError::BucketExists,
        Some("BucketNotEmpty") => ProxyError::BucketNotEmpty,
        Some("SlowDown") | Some("ServiceUnavailable") | Some("RequestLimitExceeded") => {
            ProxyError::UpstreamSlowDown(e.message().unwrap_or("SlowDown").to_string())
        }
        Some(c) if c == "AccessDenied" || c.starts_with("KMS.") => {
            ProxyError::UpstreamDenied(format!("{c}: {}", e.message().unwrap_or("access denied")))
        }
        _ => ProxyError::Backend(format!(
            "{}: {}",
            code.unwrap_or_default(),
            e.message().unwrap_or("upstream error")
        )),
    }
}

fn status_of<E, R>(e: &SdkError<E, R>) -> Option<u16>
where
    R: HasStatus,
{
    e.raw_response().map(|r| r.status_code())
}

trait HasStatus {
    fn status_code(&self) -> u16;
}
impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

fn to_chrono(t: Option<&aws_sdk_s3::primitives::DateTime>) -> DateTime<Utc> {
    t.and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos()))
        .unwrap_or_else(Utc::now)
}

impl S3Backend {
    /// `meta_cache_bytes`: `DGP_METADATA_CACHE_MB` in bytes (0 = no cache).
    pub fn new(
        cfg: &S3BackendConfig,
        spool: PathBuf,
        meta_cache_bytes: u64,
    ) -> Result<Self, ProxyError> {
        std::fs::create_dir_all(&spool)?;
        let conf = cfg.sdk_config("deltaglider-proxy").build();
        let head_conf = conf
            .to_builder()
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .build();
        Ok(S3Backend {
            client: Client::from_conf(conf),
            head_client: Client::from_conf(head_conf),
            spool,
            meta_cache: MetaCache::new(meta_cache_bytes),
            sse: None,
        })
    }

    /// Asks the upstream for native SSE on every write, stamping `dg-encrypted-native`.
    pub fn with_sse(mut self, sse: Option<NativeSse>) -> Self {
        self.sse = sse;
        self
    }

    fn ref_key_for(key: &str) -> Option<String> {
        // The Python CLI resolves `dg-ref-key` relative to the bucket.
        if !key.ends_with(crate::meta::DELTA_SUFFIX) {
            return None;
        }
        Some(match key.rsplit_once('/') {
            Some((p, _)) => format!("{p}/{REFERENCE_NAME}"),
            None => REFERENCE_NAME.to_string(),
        })
    }

    /// Whether `key` exists as an object, by listing (for HEAD answers that cannot tell:
    /// some S3 servers answer 500 to a HEAD on a key that is only a prefix).
    async fn listed(&self, bucket: &str, key: &str) -> Result<bool, ProxyError> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(key)
            .max_keys(1)
            .send()
            .await
            .map_err(be)?;
        Ok(out.contents().iter().any(|o| o.key() == Some(key)))
    }

    async fn head_meta(&self, bucket: &str, key: &str) -> Result<Option<StoredObject>, ProxyError> {
        let epoch = self.meta_cache.epoch();
        let res = self.head_uncached(bucket, key).await;
        if let Ok(Some(o)) = &res {
            self.meta_cache.insert(
                bucket,
                key,
                Stamp {
                    size: o.size,
                    etag: o.etag.clone(),
                    modified: o.last_modified.timestamp(),
                },
                o.meta.clone(),
                epoch,
            );
        }
        res
    }

    async fn head_uncached(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<StoredObject>, ProxyError> {
        let first = self
            .head_client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await;
        let res = match first {
            Err(e) if status_of(&e) != Some(404) => {
                tracing::debug!(bucket, key, error = ?e, "upstream HEAD failed; checking by listing");
                if !self.listed(bucket, key).await? {
                    return Ok(None);
                }
                self.client
                    .head_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
            }
            other => other,
        };
        match res {
            Ok(h) => {
                let m: BTreeMap<String, String> = h
                    .metadata()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                let meta = FileMetadata::from_bare_map(&m, h.content_type().map(str::to_string));
                Ok(Some(StoredObject {
                    key: key.to_string(),
                    size: h.content_length().unwrap_or(0).max(0) as u64,
                    last_modified: to_chrono(h.last_modified()),
                    etag: h.e_tag().map(|e| e.trim_matches('"').to_string()),
                    meta,
                }))
            }
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(be(e)),
        }
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn kind(&self) -> &'static str {
        "s3"
    }

    async fn create_bucket(&self, bucket: &str) -> Result<(), ProxyError> {
        self.client
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(be)?;
        Ok(())
    }

    async fn delete_bucket(&self, bucket: &str) -> Result<(), ProxyError> {
        if !self.list(bucket, "", false).await?.is_empty() {
            return Err(ProxyError::BucketNotEmpty);
        }
        self.client
            .delete_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(be)?;
        self.meta_cache.invalidate_bucket(bucket);
        Ok(())
    }

    async fn bucket_exists(&self, bucket: &str) -> Result<bool, ProxyError> {
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(be(e)),
        }
    }

    async fn list_buckets(&self) -> Result<Vec<(String, DateTime<Utc>)>, ProxyError> {
        let out = self.client.list_buckets().send().await.map_err(be)?;
        Ok(out
            .buckets()
            .iter()
            .filter_map(|b| Some((b.name()?.to_string(), to_chrono(b.creation_date()))))
            .collect())
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        data: PutData,
        meta: &FileMetadata,
    ) -> Result<(), ProxyError> {
        let ref_key = Self::ref_key_for(key);
        // The marker says what this write is, never what an earlier object was.
        let mut meta = meta.clone();
        meta.encrypted_native = self.sse.as_ref().map(|s| s.marker().to_string());
        let bare = meta.to_bare_map(ref_key.as_deref());
        let known_sha256 = known_payload_sha256(&data, &meta).await;
        let (body, tmp) = match data {
            PutData::Bytes(b) => (AwsByteStream::from(b), None),
            PutData::File(p) => (
                AwsByteStream::from_path(&p)
                    .await
                    .map_err(|e| ProxyError::Internal(e.to_string()))?,
                Some(p),
            ),
        };
        let mut req = self.client.put_object().bucket(bucket).key(key).body(body);
        if let Some(sse) = &self.sse {
            req = sse.apply(req);
        }
        for (k, v) in bare {
            req = req.metadata(k, v);
        }
        if let Some(ct) = &meta.content_type {
            req = req.content_type(ct);
        }
        let res = match known_sha256 {
            Some(sha) => {
                req.customize()
                    .interceptor(KnownPayloadSha256(sha))
                    .config_override(
                        aws_sdk_s3::config::Builder::default().request_checksum_calculation(
                            aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                        ),
                    )
                    .send()
                    .await
            }
            None => req.send().await,
        }
        .map_err(be);
        // Even a failed put may have replaced the object upstream.
        self.meta_cache.invalidate(bucket, key);
        if let Some(p) = tmp {
            let _ = tokio::fs::remove_file(p).await;
        }
        res.map(|_| ())
    }

    async fn get_bytes(&self, bucket: &str, key: &str) -> Result<Bytes, ProxyError> {
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(be)?;
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| ProxyError::Backend(e.to_string()))?;
        Ok(data.into_bytes())
    }

    async fn get_stream(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, ProxyError> {
        let mut req = self.client.get_object().bucket(bucket).key(key);
        if let Some(r) = &range {
            if r.end <= r.start {
                return Ok(Box::pin(futures::stream::empty()));
            }
            req = req.range(format!("bytes={}-{}", r.start, r.end - 1));
        }
        let out = req.send().await.map_err(be)?;
        let s = out.body.into_async_read();
        let stream = tokio_util::io::ReaderStream::with_capacity(s, 256 * 1024);
        Ok(Box::pin(stream.map_err(std::io::Error::other)))
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<StoredObject>, ProxyError> {
        self.head_meta(bucket, key).await
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), ProxyError> {
        let res = self
            .client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(be);
        self.meta_cache.invalidate(bucket, key);
        res?;
        Ok(())
    }

    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        with_meta: bool,
    ) -> Result<Vec<StoredObject>, ProxyError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = self.client.list_objects_v2().bucket(bucket).prefix(prefix);
            if let Some(t) = &token {
                req = req.continuation_token(t);
            }
            let page = req.send().await.map_err(be)?;
            for o in page.contents() {
                let Some(k) = o.key() else { continue };
                out.push(StoredObject {
                    key: k.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    last_modified: to_chrono(o.last_modified()),
                    etag: o.e_tag().map(|e| e.trim_matches('"').to_string()),
                    meta: None,
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        if !with_meta {
            return Ok(out);
        }
        // The listing carries no user metadata: take it from the cache when the listed
        // object is the one cached, else HEAD it (bounded concurrency).
        let mut done = Vec::with_capacity(out.len());
        let mut missing = Vec::new();
        for o in out {
            let stamp = Stamp {
                size: o.size,
                etag: o.etag.clone(),
                modified: o.last_modified.timestamp(),
            };
            match self.meta_cache.get(bucket, &o.key, &stamp) {
                Some((meta, etag)) => done.push(StoredObject {
                    meta,
                    etag: o.etag.clone().or(etag),
                    ..o
                }),
                None => missing.push(o),
            }
        }
        let mut heads = futures::stream::iter(missing.into_iter().map(|o| async move {
            self.head_meta(bucket, &o.key).await.map(|h| {
                h.map(|h| StoredObject {
                    meta: h.meta,
                    etag: o.etag.clone().or(h.etag),
                    ..o
                })
            })
        }))
        .buffer_unordered(LIST_HEAD_CONCURRENCY);
        while let Some(h) = heads.next().await {
            // Gone since the listing (deleted meanwhile): not listed. A failed HEAD fails the
            // listing rather than show a delta's stored size as the object's size.
            if let Some(o) = h? {
                done.push(o);
            }
        }
        done.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(done)
    }

    fn spool_dir(&self) -> PathBuf {
        self.spool.clone()
    }
}

/// One real request with the given endpoint and credentials (HeadBucket when a bucket is
/// named, else ListBuckets), without retries and with short timeouts: the admin API's
/// credential check before a backend is created, and `POST /_/api/admin/test-s3`.
pub async fn check_credentials(cfg: &S3BackendConfig, bucket: Option<&str>) -> Result<(), String> {
    let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .operation_timeout(std::time::Duration::from_secs(20))
        .build();
    let conf = cfg
        .sdk_config("deltaglider-proxy-check")
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .timeout_config(timeouts)
        .build();
    let client = Client::from_conf(conf);
    match bucket {
        Some(b) => client
            .head_bucket()
            .bucket(b)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| describe(&e)),
        None => client
            .list_buckets()
            .send()
            .await
            .map(|_| ())
            .map_err(|e| describe(&e)),
    }
}

/// An SDK error as one line: the S3 error code and message when the server answered, else
/// the transport cause chain (connection refused, timeout, DNS).
fn describe<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + HasStatus,
{
    if let Some(code) = e.code() {
        let status = status_of(e)
            .map(|s| format!(" (HTTP {s})"))
            .unwrap_or_default();
        return format!("{code}{status}: {}", e.message().unwrap_or(""));
    }
    if let Some(s) = status_of(e) {
        return format!("upstream answered HTTP {s}");
    }
    let mut out = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        out.push_str(": ");
        out.push_str(&x.to_string());
        src = x.source();
    }
    out
}
