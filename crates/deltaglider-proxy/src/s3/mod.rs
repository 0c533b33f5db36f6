//! The S3 front: an `s3s::S3` implementation (protocol, SigV4, chunked payloads and XML
//! errors come from s3s) that parses each operation, checks IAM, calls the delta engine and
//! maps the result. Handlers stay thin.

pub mod auth;

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http::HeaderValue;
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};

use crate::delta::{Body, BodyInfo, PutOptions, Resolved};
use crate::error::ProxyError;
use crate::iam::Action;
use crate::state::AppState;
use auth::Principal;

#[derive(Clone)]
pub struct Proxy {
    pub state: Arc<AppState>,
}

fn ts(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp::from(std::time::SystemTime::from(t))
}

fn etag(s: &str) -> ETag {
    ETag::Strong(s.to_string())
}

fn perr(e: ProxyError) -> S3Error {
    e.into()
}

/// Evaluates GET/HEAD conditional headers against the object's ETag and Last-Modified.
fn check_conditions(
    r: &Resolved,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> Result<(), ProxyError> {
    let tag = r.meta.etag();
    let matches = |c: &ETagCondition| match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value().trim_matches('"') == tag,
    };
    let lm = r.last_modified.timestamp();
    let secs = |t: &Timestamp| time::OffsetDateTime::from(t.clone()).unix_timestamp();
    if let Some(c) = if_match {
        if !matches(c) {
            return Err(ProxyError::PreconditionFailed);
        }
    } else if let Some(t) = if_unmodified_since {
        if lm > secs(t) {
            return Err(ProxyError::PreconditionFailed);
        }
    }
    if let Some(c) = if_none_match {
        if matches(c) {
            return Err(ProxyError::NotModified);
        }
    } else if let Some(t) = if_modified_since {
        if lm <= secs(t) {
            return Err(ProxyError::NotModified);
        }
    }
    Ok(())
}

/// The payload SHA-256 when SigV4 vouches for it: a verified request (header or presigned
/// V4) carrying a single-chunk `x-amz-content-sha256`, whose body s3s hashes while it is
/// read and fails on a mismatch. Then the engine need not hash the body again.
fn verified_payload_sha256(
    headers: &http::HeaderMap,
    uri: &http::Uri,
    credentials: &Option<s3s::auth::Credentials>,
) -> Option<String> {
    credentials.as_ref()?;
    let v4 = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256"))
        || uri
            .query()
            .is_some_and(|q| q.contains("X-Amz-Algorithm=AWS4-HMAC-SHA256"));
    let h = headers.get("x-amz-content-sha256")?.to_str().ok()?;
    (v4 && h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| h.to_ascii_lowercase())
}

/// Client-visible metadata: user metadata plus the echoed `dg-*` fields.
fn visible_metadata(r: &Resolved) -> Metadata {
    let mut m: Metadata = Default::default();
    if r.meta.tool != "unmanaged" {
        for (k, v) in r.meta.to_bare_map(None) {
            if k.starts_with("dg-") {
                m.insert(k, v);
            }
        }
    }
    for (k, v) in &r.meta.user_metadata {
        m.insert(k.clone(), v.clone());
    }
    m
}

/// Parses `x-amz-copy-source-range: bytes=first-last` (inclusive, both required, within the
/// source) into a half-open byte range.
fn parse_copy_range(v: &str, size: u64) -> Result<std::ops::Range<u64>, ProxyError> {
    let bad = || {
        ProxyError::InvalidArgument(format!(
            "x-amz-copy-source-range {v:?}: expected bytes=first-last within the source object"
        ))
    };
    let (a, b) = v
        .trim()
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(bad)?;
    let first: u64 = a.trim().parse().map_err(|_| bad())?;
    let last: u64 = b.trim().parse().map_err(|_| bad())?;
    if first > last || last >= size {
        return Err(ProxyError::InvalidRange);
    }
    Ok(first..last + 1)
}

impl Proxy {
    /// `NoSuchBucket` unless `bucket` exists (for operations that only read bucket state).
    async fn require_bucket(&self, bucket: &str) -> S3Result<()> {
        if self
            .state
            .engine
            .bucket_exists(bucket)
            .await
            .map_err(perr)?
        {
            Ok(())
        } else {
            Err(S3Error::new(S3ErrorCode::NoSuchBucket))
        }
    }

    fn principal<T>(req: &S3Request<T>) -> Principal {
        req.extensions
            .get::<Principal>()
            .cloned()
            .unwrap_or(Principal::Anonymous(None))
    }

    /// The (bucket, key) of a copy source the principal may read; `op` names the operation in
    /// the audit record of a denial.
    fn readable_copy_source(
        &self,
        p: &Principal,
        src: &CopySource,
        op: &str,
    ) -> S3Result<(String, String)> {
        let (sb, sk) = match src {
            CopySource::Bucket { bucket, key, .. } => (bucket.to_string(), key.to_string()),
            _ => {
                return Err(S3Error::with_message(
                    S3ErrorCode::NotImplemented,
                    "access point copy sources are not supported",
                ))
            }
        };
        if !self.state.allowed(p, Action::Read, &sb, &sk) {
            self.state.audit_denial(p, op, &sb, &sk);
            return Err(S3Error::new(S3ErrorCode::AccessDenied));
        }
        Ok((sb, sk))
    }

    fn debug_headers(&self, headers: &mut http::HeaderMap, r: &Resolved, cache: Option<bool>) {
        if !self.state.cfg.debug_headers {
            return;
        }
        if let Ok(v) = HeaderValue::from_str(r.storage_type()) {
            headers.insert("x-amz-storage-type", v);
        }
        headers.insert(
            "x-deltaglider-stored-size",
            HeaderValue::from(r.stored_size),
        );
        if let Some(hit) = cache {
            headers.insert(
                "x-deltaglider-cache",
                HeaderValue::from_static(if hit { "hit" } else { "miss" }),
            );
        }
    }

    async fn do_list(
        &self,
        principal: &Principal,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        start_after: Option<&str>,
        max_keys: Option<i32>,
    ) -> S3Result<(crate::delta::ListPage, bool)> {
        let max = max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        let st = self.state.clone();
        let p = principal.clone();
        let b = bucket.to_string();
        let filtered = std::sync::atomic::AtomicBool::new(false);
        let visible = |k: &str| {
            let ok = st.can_see(&p, &b, k);
            if !ok {
                filtered.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            ok
        };
        let page = self
            .state
            .engine
            .list(bucket, prefix, delimiter, start_after, max, &visible)
            .await
            .map_err(perr)?;
        Ok((page, filtered.load(std::sync::atomic::Ordering::Relaxed)))
    }

    fn list_objects_out(page: &crate::delta::ListPage) -> (Vec<Object>, Vec<CommonPrefix>) {
        let objs = page
            .objects
            .iter()
            .map(|e| Object {
                key: Some(e.key.clone()),
                size: Some(e.size as i64),
                e_tag: Some(etag(&e.etag)),
                last_modified: Some(ts(e.last_modified)),
                storage_class: Some(ObjectStorageClass::from_static(
                    ObjectStorageClass::STANDARD,
                )),
                ..Default::default()
            })
            .collect();
        let cps = page
            .common_prefixes
            .iter()
            .map(|p| CommonPrefix {
                prefix: Some(p.clone()),
            })
            .collect();
        (objs, cps)
    }

    fn put_options(content_type: Option<String>, metadata: Option<Metadata>) -> PutOptions {
        PutOptions {
            content_type,
            user_metadata: metadata
                .map(|m| {
                    m.into_iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v))
                        .collect()
                })
                .unwrap_or_default(),
            multipart_etag: None,
        }
    }

    /// Reads a whole object (any stored form) into a spool file for copy.
    async fn spool_object(
        &self,
        src_bucket: &str,
        r: &Resolved,
        dst_bucket: &str,
    ) -> Result<crate::delta::Spooled, ProxyError> {
        let (body, _) = self.state.engine.get(src_bucket, r, None).await?;
        let dir = self.state.engine.spool_dir(dst_bucket);
        match body {
            Body::Bytes(b) => {
                crate::delta::spool(
                    &dir,
                    futures::stream::iter([Ok::<Bytes, std::io::Error>(b)]),
                )
                .await
            }
            Body::Stream(s) => crate::delta::spool(&dir, s).await,
        }
    }
}

#[async_trait::async_trait]
impl S3 for Proxy {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let p = Self::principal(&req);
        let buckets = self.state.engine.list_buckets().await.map_err(perr)?;
        let list = buckets
            .into_iter()
            .filter(|(b, _)| self.state.can_list_bucket(&p, b))
            .map(|(name, t)| Bucket {
                name: Some(name),
                creation_date: Some(ts(t)),
                bucket_region: None,
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(list),
            owner: Some(Owner {
                display_name: Some("deltaglider".into()),
                id: Some("deltaglider".into()),
            }),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.state
            .engine
            .create_bucket(&req.input.bucket)
            .await
            .map_err(perr)?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{}", req.input.bucket)),
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.state
            .engine
            .delete_bucket(&req.input.bucket)
            .await
            .map_err(perr)?;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.require_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some("us-east-1".into()),
            ..Default::default()
        }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.require_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        self.require_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(GetBucketVersioningOutput::default()))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        if input.if_none_match.is_some() || input.if_match.is_some() {
            let existing = match self.state.engine.resolve(&bucket, &key).await {
                Ok(r) => Some(r),
                Err(ProxyError::NoSuchKey) => None,
                Err(e) => return Err(perr(e)),
            };
            if let (Some(ETagCondition::Any), Some(_)) = (&input.if_none_match, &existing) {
                return Err(perr(ProxyError::PreconditionFailed));
            }
            if let Some(c) = &input.if_match {
                let ok = match (&existing, c) {
                    (None, _) => false,
                    (Some(_), ETagCondition::Any) => true,
                    (Some(r), ETagCondition::ETag(e)) => {
                        e.value().trim_matches('"') == r.meta.etag()
                    }
                };
                if !ok {
                    return Err(perr(ProxyError::PreconditionFailed));
                }
            }
        }
        let info = BodyInfo {
            len: req
                .headers
                .get("x-amz-decoded-content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .or(input.content_length.and_then(|l| u64::try_from(l).ok())),
            verified_sha256: verified_payload_sha256(&req.headers, &req.uri, &req.credentials),
            content_md5: match &input.content_md5 {
                Some(md5) => {
                    use base64::Engine as _;
                    Some(
                        base64::engine::general_purpose::STANDARD
                            .decode(md5)
                            .map(hex::encode)
                            .unwrap_or_default(),
                    )
                }
                None => None,
            },
        };
        let opts = Self::put_options(input.content_type, input.metadata);
        let engine = &self.state.engine;
        let meta = match input.body {
            Some(body) => engine.put_stream(&bucket, &key, body, info, opts).await,
            None => {
                let empty = futures::stream::empty::<Result<Bytes, std::io::Error>>();
                engine.put_stream(&bucket, &key, empty, info, opts).await
            }
        }
        .map_err(perr)?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(etag(&meta.etag())),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let r = self
            .state
            .engine
            .resolve(&input.bucket, &input.key)
            .await
            .map_err(perr)?;
        check_conditions(
            &r,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )
        .map_err(perr)?;
        let size = r.meta.file_size;
        let range = match &input.range {
            Some(rg) => Some(rg.check(size).map_err(|_| perr(ProxyError::InvalidRange))?),
            None => None,
        };
        let (body, cache_hit) = self
            .state
            .engine
            .get(&input.bucket, &r, range.clone())
            .await
            .map_err(perr)?;
        let len = range.as_ref().map(|r| r.end - r.start).unwrap_or(size);
        let blob = match body {
            Body::Bytes(b) => {
                StreamingBlob::wrap(futures::stream::iter([Ok::<Bytes, std::io::Error>(b)]))
            }
            Body::Stream(s) => {
                let body =
                    http_body_util::StreamBody::new(s.map(|c| c.map(http_body::Frame::data)));
                StreamingBlob::from(s3s::Body::http_body_unsync(body))
            }
        };
        let out = GetObjectOutput {
            body: Some(blob),
            content_length: Some(len as i64),
            content_range: range
                .as_ref()
                .map(|rg| format!("bytes {}-{}/{}", rg.start, rg.end.saturating_sub(1), size)),
            content_type: r.meta.content_type.clone(),
            e_tag: Some(etag(&r.meta.etag())),
            last_modified: Some(ts(r.last_modified)),
            metadata: Some(visible_metadata(&r)),
            accept_ranges: Some("bytes".into()),
            ..Default::default()
        };
        let mut resp = S3Response::new(out);
        self.debug_headers(
            &mut resp.headers,
            &r,
            (r.meta.note() == crate::meta::Note::Delta).then_some(cache_hit),
        );
        Ok(resp)
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let r = self
            .state
            .engine
            .resolve(&input.bucket, &input.key)
            .await
            .map_err(perr)?;
        check_conditions(
            &r,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )
        .map_err(perr)?;
        let out = HeadObjectOutput {
            content_length: Some(r.meta.file_size as i64),
            content_type: r.meta.content_type.clone(),
            e_tag: Some(etag(&r.meta.etag())),
            last_modified: Some(ts(r.last_modified)),
            metadata: Some(visible_metadata(&r)),
            accept_ranges: Some("bytes".into()),
            ..Default::default()
        };
        let mut resp = S3Response::new(out);
        self.debug_headers(&mut resp.headers, &r, None);
        Ok(resp)
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.state
            .engine
            .delete(&req.input.bucket, &req.input.key)
            .await
            .map_err(perr)?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let p = Self::principal(&req);
        let bucket = req.input.bucket.clone();
        if req.input.delete.objects.len() > 1000 {
            return Err(S3Error::with_message(
                S3ErrorCode::MalformedXML,
                "at most 1000 keys per request",
            ));
        }
        let quiet = req.input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for o in req.input.delete.objects {
            if !self.state.allowed(&p, Action::Delete, &bucket, &o.key) {
                self.state.audit_denial(&p, "DeleteObject", &bucket, &o.key);
                errors.push(Error {
                    code: Some("AccessDenied".into()),
                    key: Some(o.key),
                    message: Some("Access Denied".into()),
                    version_id: None,
                });
                continue;
            }
            match self.state.engine.delete(&bucket, &o.key).await {
                Ok(()) => {
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(o.key),
                            ..Default::default()
                        })
                    }
                }
                Err(e) => {
                    let s3e: S3Error = e.into();
                    errors.push(Error {
                        code: Some(s3e.code().as_str().to_string()),
                        key: Some(o.key),
                        message: s3e.message().map(str::to_string),
                        version_id: None,
                    })
                }
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let p = Self::principal(&req);
        let input = req.input;
        let (sb, sk) = self.readable_copy_source(&p, &input.copy_source, "CopyObject")?;
        let r = self.state.engine.resolve(&sb, &sk).await.map_err(perr)?;
        check_conditions(
            &r,
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since.as_ref(),
            input.copy_source_if_unmodified_since.as_ref(),
        )
        .map_err(|e| {
            perr(if matches!(e, ProxyError::NotModified) {
                ProxyError::PreconditionFailed
            } else {
                e
            })
        })?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let opts = if replace {
            Self::put_options(input.content_type, input.metadata)
        } else {
            PutOptions {
                content_type: r.meta.content_type.clone(),
                user_metadata: r.meta.user_metadata.clone(),
                multipart_etag: None,
            }
        };
        let up = self
            .spool_object(&sb, &r, &input.bucket)
            .await
            .map_err(perr)?;
        let meta = self
            .state
            .engine
            .put(&input.bucket, &input.key, up, opts)
            .await
            .map_err(perr)?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag(&meta.etag())),
                last_modified: meta.created().map(ts),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let p = Self::principal(&req);
        let i = req.input;
        let prefix = i.prefix.clone().unwrap_or_default();
        let (page, filtered) = self
            .do_list(
                &p,
                &i.bucket,
                &prefix,
                i.delimiter.as_deref(),
                i.marker.as_deref().filter(|m| !m.is_empty()),
                i.max_keys,
            )
            .await?;
        let (contents, cps) = Self::list_objects_out(&page);
        let mut resp = S3Response::new(ListObjectsOutput {
            name: Some(i.bucket),
            prefix: Some(prefix),
            marker: i.marker,
            max_keys: Some(i.max_keys.unwrap_or(1000)),
            is_truncated: Some(page.truncated),
            contents: Some(contents),
            common_prefixes: Some(cps),
            delimiter: i.delimiter,
            next_marker: page.next_marker.clone().filter(|_| page.truncated),
            encoding_type: i.encoding_type,
            ..Default::default()
        });
        if filtered {
            resp.headers.insert(
                "x-amz-meta-dg-list-filtered",
                HeaderValue::from_static("true"),
            );
        }
        Ok(resp)
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let p = Self::principal(&req);
        let i = req.input;
        let prefix = i.prefix.clone().unwrap_or_default();
        // Continuation tokens are user-visible keys; the later of token and start-after wins.
        let start = match (i.continuation_token.as_deref(), i.start_after.as_deref()) {
            (Some(t), Some(s)) => Some(if t > s { t } else { s }),
            (Some(t), None) => Some(t),
            (None, s) => s,
        }
        .filter(|s| !s.is_empty());
        let (page, filtered) = self
            .do_list(
                &p,
                &i.bucket,
                &prefix,
                i.delimiter.as_deref(),
                start,
                i.max_keys,
            )
            .await?;
        let (contents, cps) = Self::list_objects_out(&page);
        let key_count = (contents.len() + cps.len()) as i32;
        let mut resp = S3Response::new(ListObjectsV2Output {
            name: Some(i.bucket),
            prefix: Some(prefix),
            max_keys: Some(i.max_keys.unwrap_or(1000)),
            key_count: Some(key_count),
            continuation_token: i.continuation_token,
            is_truncated: Some(page.truncated),
            next_continuation_token: page.next_marker.clone().filter(|_| page.truncated),
            contents: Some(contents),
            common_prefixes: Some(cps),
            delimiter: i.delimiter,
            encoding_type: i.encoding_type,
            start_after: i.start_after,
            ..Default::default()
        });
        if filtered {
            resp.headers.insert(
                "x-amz-meta-dg-list-filtered",
                HeaderValue::from_static("true"),
            );
        }
        Ok(resp)
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let i = req.input;
        self.require_bucket(&i.bucket).await?;
        crate::delta::validate_key(&i.key).map_err(perr)?;
        let opts = Self::put_options(i.content_type, i.metadata);
        let id = self
            .state
            .multipart
            .create(&i.bucket, &i.key, opts)
            .await
            .map_err(perr)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            upload_id: Some(id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let i = req.input;
        let body = i.body.unwrap_or_else(|| {
            StreamingBlob::wrap(futures::stream::empty::<Result<Bytes, std::io::Error>>())
        });
        let tag = self
            .state
            .multipart
            .put_part(&i.bucket, &i.key, &i.upload_id, i.part_number, body)
            .await
            .map_err(perr)?;
        if let Some(md5) = &i.content_md5 {
            use base64::Engine as _;
            let want = base64::engine::general_purpose::STANDARD
                .decode(md5)
                .map(hex::encode)
                .unwrap_or_default();
            if want != tag {
                return Err(S3Error::with_message(
                    S3ErrorCode::BadDigest,
                    "The Content-MD5 you specified did not match what we received.",
                ));
            }
        }
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(etag(&tag)),
            ..Default::default()
        }))
    }

    /// UploadPartCopy: the source (any stored form: delta, reference, passthrough) is read
    /// through the delta engine, optionally narrowed by `x-amz-copy-source-range`, and staged
    /// as the part exactly like an UploadPart body.
    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let p = Self::principal(&req);
        let i = req.input;
        let (sb, sk) = self.readable_copy_source(&p, &i.copy_source, "UploadPartCopy")?;
        // The upload must exist before the source is read (NoSuchUpload wins).
        self.state
            .multipart
            .get(&i.bucket, &i.key, &i.upload_id)
            .map_err(perr)?;
        let r = self.state.engine.resolve(&sb, &sk).await.map_err(perr)?;
        check_conditions(
            &r,
            i.copy_source_if_match.as_ref(),
            i.copy_source_if_none_match.as_ref(),
            i.copy_source_if_modified_since.as_ref(),
            i.copy_source_if_unmodified_since.as_ref(),
        )
        .map_err(|e| {
            perr(if matches!(e, ProxyError::NotModified) {
                ProxyError::PreconditionFailed
            } else {
                e
            })
        })?;
        let range = match &i.copy_source_range {
            Some(s) => Some(parse_copy_range(s, r.meta.file_size).map_err(perr)?),
            None => None,
        };
        let (body, _) = self.state.engine.get(&sb, &r, range).await.map_err(perr)?;
        let mp = &self.state.multipart;
        let tag = match body {
            Body::Bytes(b) => {
                mp.put_part(
                    &i.bucket,
                    &i.key,
                    &i.upload_id,
                    i.part_number,
                    futures::stream::iter([Ok::<Bytes, std::io::Error>(b)]),
                )
                .await
            }
            Body::Stream(s) => {
                mp.put_part(&i.bucket, &i.key, &i.upload_id, i.part_number, s)
                    .await
            }
        }
        .map_err(perr)?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(etag(&tag)),
                last_modified: Some(ts(chrono::Utc::now())),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let i = req.input;
        let parts: Vec<(i32, Option<String>)> = i
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                (
                    p.part_number.unwrap_or(0),
                    p.e_tag.map(|e| e.value().to_string()),
                )
            })
            .collect();
        let dir = self.state.engine.spool_dir(&i.bucket);
        let (up, mpu_etag, mut opts) = self
            .state
            .multipart
            .assemble(&i.bucket, &i.key, &i.upload_id, &parts, &dir)
            .await
            .map_err(perr)?;
        opts.multipart_etag = Some(mpu_etag.clone());
        let res = self
            .state
            .engine
            .put(&i.bucket, &i.key, up, opts)
            .await
            .map_err(perr);
        res?;
        self.state.multipart.finish(&i.upload_id);
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(i.bucket.clone()),
            key: Some(i.key.clone()),
            e_tag: Some(etag(&mpu_etag)),
            location: Some(format!("/{}/{}", i.bucket, i.key)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let i = req.input;
        self.state
            .multipart
            .abort(&i.bucket, &i.key, &i.upload_id)
            .map_err(perr)?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let i = req.input;
        let prefix = i.prefix.clone().unwrap_or_default();
        let max = i.max_uploads.unwrap_or(1000).clamp(1, 1000) as usize;
        let all = self.state.multipart.list(&i.bucket, &prefix);
        let truncated = all.len() > max;
        let uploads = all
            .into_iter()
            .take(max)
            .map(|(id, u)| MultipartUpload {
                key: Some(u.key),
                upload_id: Some(id),
                initiated: Some(ts(u.initiated)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(i.bucket),
            prefix: Some(prefix),
            max_uploads: Some(max as i32),
            is_truncated: Some(truncated),
            uploads: Some(uploads),
            ..Default::default()
        }))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let i = req.input;
        let u = self
            .state
            .multipart
            .get(&i.bucket, &i.key, &i.upload_id)
            .map_err(perr)?;
        let max = i.max_parts.unwrap_or(1000).clamp(1, 1000) as usize;
        let marker = i.part_number_marker.unwrap_or(0);
        let all: Vec<_> = u.parts.iter().filter(|(n, _)| **n > marker).collect();
        let truncated = all.len() > max;
        let parts: Vec<Part> = all
            .into_iter()
            .take(max)
            .map(|(n, p)| Part {
                part_number: Some(*n),
                e_tag: Some(etag(&p.md5)),
                size: Some(p.size as i64),
                last_modified: Some(ts(p.uploaded)),
                ..Default::default()
            })
            .collect();
        let next = parts
            .last()
            .and_then(|p| p.part_number)
            .filter(|_| truncated);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            upload_id: Some(i.upload_id),
            max_parts: Some(max as i32),
            is_truncated: Some(truncated),
            next_part_number_marker: next,
            parts: Some(parts),
            ..Default::default()
        }))
    }
}
