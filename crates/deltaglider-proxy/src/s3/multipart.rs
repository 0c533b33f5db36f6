//! Multipart uploads: Create, UploadPart (Content-MD5 checked), UploadPartCopy, Complete
//! (the assembled object goes through the engine like a PUT, keeping the MPU ETag), Abort,
//! ListMultipartUploads and ListParts. Parts are staged by `crate::multipart`. UploadPart,
//! UploadPartCopy and Complete are refused once the bucket is at its quota.

use bytes::Bytes;
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::{check_copy_source_conditions, content_md5_hex, etag, perr, ts, Proxy};
use crate::error::ProxyError;

pub(super) async fn create_multipart_upload(
    p: &Proxy,
    req: S3Request<CreateMultipartUploadInput>,
) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
    let i = req.input;
    p.require_bucket(&i.bucket).await?;
    crate::delta::validate_key(&i.key).map_err(perr)?;
    let opts = Proxy::put_options(i.content_type, i.metadata);
    let id = p
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

pub(super) async fn upload_part(
    p: &Proxy,
    req: S3Request<UploadPartInput>,
) -> S3Result<S3Response<UploadPartOutput>> {
    let i = req.input;
    p.usage.admit(p, &i.bucket).await?;
    let body = i.body.unwrap_or_else(|| {
        StreamingBlob::wrap(futures::stream::empty::<Result<Bytes, std::io::Error>>())
    });
    let tag = p
        .state
        .multipart
        .put_part(&i.bucket, &i.key, &i.upload_id, i.part_number, body)
        .await
        .map_err(perr)?;
    if let Some(md5) = &i.content_md5 {
        if content_md5_hex(md5) != tag {
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
pub(super) async fn upload_part_copy(
    p: &Proxy,
    req: S3Request<UploadPartCopyInput>,
) -> S3Result<S3Response<UploadPartCopyOutput>> {
    let principal = Proxy::principal(&req);
    let i = req.input;
    let (sb, sk) = p.readable_copy_source(&principal, &i.copy_source, "UploadPartCopy")?;
    // The upload must exist before the source is read (NoSuchUpload wins).
    p.state
        .multipart
        .get(&i.bucket, &i.key, &i.upload_id)
        .map_err(perr)?;
    p.usage.admit(p, &i.bucket).await?;
    let r = p.state.engine.resolve(&sb, &sk).await.map_err(perr)?;
    check_copy_source_conditions(
        &r,
        i.copy_source_if_match.as_ref(),
        i.copy_source_if_none_match.as_ref(),
        i.copy_source_if_modified_since.as_ref(),
        i.copy_source_if_unmodified_since.as_ref(),
    )?;
    let range = match &i.copy_source_range {
        Some(s) => Some(parse_copy_range(s, r.meta.file_size).map_err(perr)?),
        None => None,
    };
    let (body, _) = p.state.engine.get(&sb, &r, range).await.map_err(perr)?;
    let mp = &p.state.multipart;
    let tag = mp
        .put_part(
            &i.bucket,
            &i.key,
            &i.upload_id,
            i.part_number,
            body.into_stream(),
        )
        .await
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

pub(super) async fn complete_multipart_upload(
    p: &Proxy,
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
    let _completing = p.state.multipart.completing(&i.bucket);
    p.usage.admit(p, &i.bucket).await?;
    let old = p.usage.size_before(p, &i.bucket, &i.key).await;
    let dir = p.state.engine.spool_dir(&i.bucket);
    let (up, mpu_etag, mut opts) = p
        .state
        .multipart
        .assemble(&i.bucket, &i.key, &i.upload_id, &parts, &dir)
        .await
        .map_err(perr)?;
    opts.multipart_etag = Some(mpu_etag.clone());
    let meta = p
        .state
        .engine
        .put(&i.bucket, &i.key, up, opts)
        .await
        .map_err(perr)?;
    p.usage.wrote(p, &i.bucket, old, meta.file_size);
    p.state.multipart.finish(&i.upload_id);
    Ok(S3Response::new(CompleteMultipartUploadOutput {
        bucket: Some(i.bucket.clone()),
        key: Some(i.key.clone()),
        e_tag: Some(etag(&mpu_etag)),
        location: Some(format!("/{}/{}", i.bucket, i.key)),
        ..Default::default()
    }))
}

pub(super) async fn abort_multipart_upload(
    p: &Proxy,
    req: S3Request<AbortMultipartUploadInput>,
) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
    let i = req.input;
    p.state
        .multipart
        .abort(&i.bucket, &i.key, &i.upload_id)
        .map_err(perr)?;
    Ok(S3Response::new(AbortMultipartUploadOutput::default()))
}

pub(super) async fn list_multipart_uploads(
    p: &Proxy,
    req: S3Request<ListMultipartUploadsInput>,
) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
    let i = req.input;
    let prefix = i.prefix.clone().unwrap_or_default();
    let max = i.max_uploads.unwrap_or(1000).clamp(1, 1000) as usize;
    let all = p.state.multipart.list(&i.bucket, &prefix);
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

pub(super) async fn list_parts(
    p: &Proxy,
    req: S3Request<ListPartsInput>,
) -> S3Result<S3Response<ListPartsOutput>> {
    let i = req.input;
    let u = p
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
