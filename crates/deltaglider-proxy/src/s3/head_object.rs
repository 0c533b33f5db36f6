//! HeadObject: the metadata GetObject would return (original size, ETag, user metadata),
//! with the same conditional headers, without reading the body.

use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result};

use super::{check_conditions, etag, perr, ts, visible_metadata, Proxy};

pub(super) async fn handle(
    p: &Proxy,
    req: S3Request<HeadObjectInput>,
) -> S3Result<S3Response<HeadObjectOutput>> {
    let input = req.input;
    let r = p
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
    p.debug_headers(&mut resp.headers, &r, None);
    Ok(resp)
}
