//! PutObject: conditional writes (If-Match / If-None-Match) and the bucket quota, then the
//! body streams into the delta engine, which decides delta or passthrough.

use bytes::Bytes;
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result};

use super::{content_md5_hex, etag, perr, Proxy};
use crate::delta::BodyInfo;
use crate::error::ProxyError;

pub(super) async fn handle(
    p: &Proxy,
    req: S3Request<PutObjectInput>,
) -> S3Result<S3Response<PutObjectOutput>> {
    let input = req.input;
    let (bucket, key) = (input.bucket.clone(), input.key.clone());
    // A conditional write resolves the key anyway: the size found there is the one quota
    // usage needs, so the key is not resolved a second time.
    let resolved = if input.if_none_match.is_some() || input.if_match.is_some() {
        Some(
            write_preconditions(
                p,
                &bucket,
                &key,
                input.if_match.as_ref(),
                input.if_none_match.as_ref(),
            )
            .await?,
        )
    } else {
        None
    };
    p.usage.admit(p, &bucket).await?;
    let old = match resolved {
        Some(size) => size,
        None => p.usage.size_before(p, &bucket, &key).await,
    };
    let info = BodyInfo {
        len: req
            .headers
            .get("x-amz-decoded-content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .or(input.content_length.and_then(|l| u64::try_from(l).ok())),
        verified_sha256: verified_payload_sha256(&req.headers, &req.uri, &req.credentials),
        content_md5: input.content_md5.as_deref().map(content_md5_hex),
    };
    let opts = Proxy::put_options(input.content_type, input.metadata);
    let engine = &p.state.engine;
    let meta = match input.body {
        Some(body) => engine.put_stream(&bucket, &key, body, info, opts).await,
        None => {
            let empty = futures::stream::empty::<Result<Bytes, std::io::Error>>();
            engine.put_stream(&bucket, &key, empty, info, opts).await
        }
    }
    .map_err(perr)?;
    p.usage.wrote(p, &bucket, old, meta.file_size);
    Ok(S3Response::new(PutObjectOutput {
        e_tag: Some(etag(&meta.etag())),
        ..Default::default()
    }))
}

/// Conditional write: `If-None-Match: *` refuses to overwrite an existing key; `If-Match`
/// requires the key to exist (with that ETag unless `*`). Both fail as 412. Returns the
/// size of the existing object, if any.
async fn write_preconditions(
    p: &Proxy,
    bucket: &str,
    key: &str,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
) -> S3Result<Option<u64>> {
    let existing = match p.state.engine.resolve(bucket, key).await {
        Ok(r) => Some(r),
        Err(ProxyError::NoSuchKey) => None,
        Err(e) => return Err(perr(e)),
    };
    if let (Some(ETagCondition::Any), Some(_)) = (if_none_match, &existing) {
        return Err(perr(ProxyError::PreconditionFailed));
    }
    if let Some(c) = if_match {
        let ok = match (&existing, c) {
            (None, _) => false,
            (Some(_), ETagCondition::Any) => true,
            (Some(r), ETagCondition::ETag(e)) => e.value().trim_matches('"') == r.meta.etag(),
        };
        if !ok {
            return Err(perr(ProxyError::PreconditionFailed));
        }
    }
    Ok(existing.map(|r| r.meta.file_size))
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
