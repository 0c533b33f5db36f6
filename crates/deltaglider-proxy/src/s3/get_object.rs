//! GetObject: resolve the stored form (delta, reference-backed or passthrough), evaluate
//! the conditional headers and the range, and stream the original bytes back, with the
//! `response-*` query overrides applied to the response headers.

use bytes::Bytes;
use futures::StreamExt;
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::auth::Principal;
use super::{check_conditions, etag, perr, ts, visible_metadata, Proxy};
use crate::delta::Body;
use crate::error::ProxyError;

pub(super) async fn handle(
    p: &Proxy,
    req: S3Request<GetObjectInput>,
) -> S3Result<S3Response<GetObjectOutput>> {
    let anonymous = matches!(Proxy::principal(&req), Principal::Anonymous(_));
    let input = req.input;
    let overrides = Overrides::take(&input);
    if anonymous && overrides.any() {
        // As on S3: overriding response headers needs a signed request.
        return Err(S3Error::with_message(
            S3ErrorCode::InvalidRequest,
            "Request specific response headers cannot be used for anonymous GET requests.",
        ));
    }
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
    let size = r.meta.file_size;
    let range = match &input.range {
        Some(rg) => Some(rg.check(size).map_err(|_| perr(ProxyError::InvalidRange))?),
        None => None,
    };
    let (body, cache_hit) = p
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
            let body = http_body_util::StreamBody::new(s.map(|c| c.map(http_body::Frame::data)));
            StreamingBlob::from(s3s::Body::http_body_unsync(body))
        }
    };
    let out = GetObjectOutput {
        body: Some(blob),
        content_length: Some(len as i64),
        content_range: range
            .as_ref()
            .map(|rg| format!("bytes {}-{}/{}", rg.start, rg.end.saturating_sub(1), size)),
        content_type: overrides
            .content_type
            .or_else(|| r.meta.content_type.clone()),
        cache_control: overrides.cache_control,
        content_disposition: overrides.content_disposition,
        content_encoding: overrides.content_encoding,
        content_language: overrides.content_language,
        expires: overrides.expires,
        e_tag: Some(etag(&r.meta.etag())),
        last_modified: Some(ts(r.last_modified)),
        metadata: Some(visible_metadata(&r)),
        accept_ranges: Some("bytes".into()),
        ..Default::default()
    };
    let mut resp = S3Response::new(out);
    p.debug_headers(
        &mut resp.headers,
        &r,
        (r.meta.note() == crate::meta::Note::Delta).then_some(cache_hit),
    );
    Ok(resp)
}

/// `response-content-type`, `-content-disposition`, `-cache-control`, `-expires`,
/// `-content-language` and `-content-encoding`: replace the stored value (or add the
/// header) in this one response; nothing stored changes.
struct Overrides {
    content_type: Option<String>,
    cache_control: Option<String>,
    content_disposition: Option<String>,
    content_encoding: Option<String>,
    content_language: Option<String>,
    expires: Option<Timestamp>,
}

impl Overrides {
    fn take(i: &GetObjectInput) -> Self {
        Overrides {
            content_type: i.response_content_type.clone(),
            cache_control: i.response_cache_control.clone(),
            content_disposition: i.response_content_disposition.clone(),
            content_encoding: i.response_content_encoding.clone(),
            content_language: i.response_content_language.clone(),
            expires: i.response_expires.clone(),
        }
    }

    fn any(&self) -> bool {
        self.content_type.is_some()
            || self.cache_control.is_some()
            || self.content_disposition.is_some()
            || self.content_encoding.is_some()
            || self.content_language.is_some()
            || self.expires.is_some()
    }
}
