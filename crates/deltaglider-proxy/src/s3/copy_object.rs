//! CopyObject: the source (any stored form) is read through the engine, spooled, and stored
//! again under the destination key (COPY keeps the source metadata, REPLACE takes the
//! request's).

use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result};

use super::{check_copy_source_conditions, etag, perr, ts, Proxy};
use crate::delta::PutOptions;

pub(super) async fn handle(
    p: &Proxy,
    req: S3Request<CopyObjectInput>,
) -> S3Result<S3Response<CopyObjectOutput>> {
    let principal = Proxy::principal(&req);
    let input = req.input;
    let (sb, sk) = p.readable_copy_source(&principal, &input.copy_source, "CopyObject")?;
    p.usage.admit(p, &input.bucket).await?;
    let r = p.state.engine.resolve(&sb, &sk).await.map_err(perr)?;
    check_copy_source_conditions(
        &r,
        input.copy_source_if_match.as_ref(),
        input.copy_source_if_none_match.as_ref(),
        input.copy_source_if_modified_since.as_ref(),
        input.copy_source_if_unmodified_since.as_ref(),
    )?;
    let replace = input
        .metadata_directive
        .as_ref()
        .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
    // As S3: copying an object onto itself must change something (REPLACE the metadata);
    // otherwise it is a no-op a client most likely did not mean.
    if !replace && sb == input.bucket && sk == input.key {
        return Err(s3s::s3_error!(
            InvalidRequest,
            "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes."
        ));
    }
    let opts = if replace {
        Proxy::put_options(input.content_type, input.metadata)
    } else {
        PutOptions {
            content_type: r.meta.content_type.clone(),
            user_metadata: r.meta.user_metadata.clone(),
            multipart_etag: None,
        }
    };
    let old = p.usage.size_before(p, &input.bucket, &input.key).await;
    let up = p
        .state
        .engine
        .spool_object(&sb, &r, &input.bucket)
        .await
        .map_err(perr)?;
    let meta = p
        .state
        .engine
        .put(&input.bucket, &input.key, up, opts)
        .await
        .map_err(perr)?;
    p.usage.wrote(p, &input.bucket, old, meta.file_size);
    Ok(S3Response::new(CopyObjectOutput {
        copy_object_result: Some(CopyObjectResult {
            e_tag: Some(etag(&meta.etag())),
            last_modified: meta.created().map(ts),
            ..Default::default()
        }),
        ..Default::default()
    }))
}
