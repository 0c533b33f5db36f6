//! The S3 front: an `s3s::S3` implementation (protocol, SigV4, chunked payloads and XML
//! errors come from s3s). `impl S3 for Proxy` below only delegates: each operation's body
//! lives in its own file (Garage-style), and the helpers they share live here.

pub mod auth;
pub mod edge;
pub mod post_object;

mod acl;
mod bucket;
mod copy_object;
mod delete_object;
mod get_object;
mod head_object;
pub mod list_objects;
mod multipart;
mod put_object;
mod quota;

use std::sync::Arc;

use http::HeaderValue;
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};

use crate::delta::{PutOptions, Resolved};
use crate::error::ProxyError;
use crate::iam::Action;
use crate::state::AppState;
use auth::Principal;

#[derive(Clone)]
pub struct Proxy {
    pub state: Arc<AppState>,
    /// Per-bucket stored bytes for the buckets that have a quota.
    usage: Arc<quota::Usage>,
}

impl Proxy {
    pub fn new(state: Arc<AppState>) -> Self {
        Proxy {
            state,
            usage: Default::default(),
        }
    }
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

/// `x-amz-copy-source-if-*`: like [`check_conditions`], except that a failed
/// If-None-Match / If-Modified-Since is 412 (there is no 304 for a copy).
fn check_copy_source_conditions(
    r: &Resolved,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    check_conditions(
        r,
        if_match,
        if_none_match,
        if_modified_since,
        if_unmodified_since,
    )
    .map_err(|e| {
        perr(if matches!(e, ProxyError::NotModified) {
            ProxyError::PreconditionFailed
        } else {
            e
        })
    })
}

/// A query parameter of a request, decoded.
pub(crate) fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    url::form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Text for an XML element or attribute (S3 error bodies, listing extensions).
pub(crate) fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
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

/// Decodes a base64 `Content-MD5` to hex (an undecodable value becomes "", which never
/// matches a digest and so fails as BadDigest).
fn content_md5_hex(md5: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(md5)
        .map(hex::encode)
        .unwrap_or_default()
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
}

/// Thin delegations only: see the per-operation files for what each one does.
#[async_trait::async_trait]
impl S3 for Proxy {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        bucket::list_buckets(self, req).await
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        bucket::create_bucket(self, req).await
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        bucket::delete_bucket(self, req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        bucket::head_bucket(self, req).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        bucket::get_bucket_location(self, req).await
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        bucket::get_bucket_versioning(self, req).await
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        put_object::handle(self, req).await
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        get_object::handle(self, req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        head_object::handle(self, req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        delete_object::delete_object(self, req).await
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        delete_object::delete_objects(self, req).await
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        copy_object::handle(self, req).await
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        list_objects::list_objects(self, req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        list_objects::list_objects_v2(self, req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        multipart::create_multipart_upload(self, req).await
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        multipart::upload_part(self, req).await
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        multipart::upload_part_copy(self, req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        multipart::complete_multipart_upload(self, req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        multipart::abort_multipart_upload(self, req).await
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        multipart::list_multipart_uploads(self, req).await
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        multipart::list_parts(self, req).await
    }

    async fn post_object(
        &self,
        req: S3Request<PostObjectInput>,
    ) -> S3Result<S3Response<PostObjectOutput>> {
        post_object::handle(self, req).await
    }

    async fn get_bucket_acl(
        &self,
        req: S3Request<GetBucketAclInput>,
    ) -> S3Result<S3Response<GetBucketAclOutput>> {
        acl::get_bucket_acl(self, req).await
    }

    async fn get_object_acl(
        &self,
        req: S3Request<GetObjectAclInput>,
    ) -> S3Result<S3Response<GetObjectAclOutput>> {
        acl::get_object_acl(self, req).await
    }

    async fn put_bucket_acl(
        &self,
        _req: S3Request<PutBucketAclInput>,
    ) -> S3Result<S3Response<PutBucketAclOutput>> {
        acl::not_implemented("PutBucketAcl")
    }

    async fn put_object_acl(
        &self,
        _req: S3Request<PutObjectAclInput>,
    ) -> S3Result<S3Response<PutObjectAclOutput>> {
        acl::not_implemented("PutObjectAcl")
    }

    async fn get_bucket_tagging(
        &self,
        _req: S3Request<GetBucketTaggingInput>,
    ) -> S3Result<S3Response<GetBucketTaggingOutput>> {
        acl::not_implemented("GetBucketTagging")
    }

    async fn put_bucket_tagging(
        &self,
        _req: S3Request<PutBucketTaggingInput>,
    ) -> S3Result<S3Response<PutBucketTaggingOutput>> {
        acl::not_implemented("PutBucketTagging")
    }

    async fn get_object_tagging(
        &self,
        _req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        acl::not_implemented("GetObjectTagging")
    }

    async fn put_object_tagging(
        &self,
        _req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        acl::not_implemented("PutObjectTagging")
    }

    async fn delete_object_tagging(
        &self,
        _req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        acl::not_implemented("DeleteObjectTagging")
    }
}
