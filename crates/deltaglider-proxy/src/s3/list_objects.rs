//! ListObjects (v1 markers) and ListObjectsV2: the engine's user-visible view (internals
//! hidden, deltas shown under their original names and sizes), filtered per key by IAM.
//! A filtered listing carries `x-amz-meta-dg-list-filtered: true`.

use std::sync::atomic::{AtomicBool, Ordering};

use http::HeaderValue;
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result};

use super::{etag, perr, ts, Proxy};
use crate::delta::ListPage;
use crate::s3::auth::Principal;

pub(super) async fn list_objects(
    p: &Proxy,
    req: S3Request<ListObjectsInput>,
) -> S3Result<S3Response<ListObjectsOutput>> {
    let principal = Proxy::principal(&req);
    let i = req.input;
    let prefix = i.prefix.clone().unwrap_or_default();
    let (page, filtered) = list_page(
        p,
        &principal,
        &i.bucket,
        &prefix,
        i.delimiter.as_deref(),
        i.marker.as_deref().filter(|m| !m.is_empty()),
        i.max_keys,
    )
    .await?;
    let (contents, cps) = output_entries(&page);
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
    mark_filtered(&mut resp.headers, filtered);
    Ok(resp)
}

pub(super) async fn list_objects_v2(
    p: &Proxy,
    req: S3Request<ListObjectsV2Input>,
) -> S3Result<S3Response<ListObjectsV2Output>> {
    let principal = Proxy::principal(&req);
    let i = req.input;
    let prefix = i.prefix.clone().unwrap_or_default();
    // Continuation tokens are user-visible keys; the later of token and start-after wins.
    let start = match (i.continuation_token.as_deref(), i.start_after.as_deref()) {
        (Some(t), Some(s)) => Some(if t > s { t } else { s }),
        (Some(t), None) => Some(t),
        (None, s) => s,
    }
    .filter(|s| !s.is_empty());
    let (page, filtered) = list_page(
        p,
        &principal,
        &i.bucket,
        &prefix,
        i.delimiter.as_deref(),
        start,
        i.max_keys,
    )
    .await?;
    let (contents, cps) = output_entries(&page);
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
    mark_filtered(&mut resp.headers, filtered);
    Ok(resp)
}

/// One page of the keys `principal` may see; the flag says whether any key was hidden.
async fn list_page(
    p: &Proxy,
    principal: &Principal,
    bucket: &str,
    prefix: &str,
    delimiter: Option<&str>,
    start_after: Option<&str>,
    max_keys: Option<i32>,
) -> S3Result<(ListPage, bool)> {
    let max = max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
    let filtered = AtomicBool::new(false);
    let visible = |k: &str| {
        let ok = p.state.can_see(principal, bucket, k, prefix);
        if !ok {
            filtered.store(true, Ordering::Relaxed);
        }
        ok
    };
    let page = p
        .state
        .engine
        .list(bucket, prefix, delimiter, start_after, max, &visible)
        .await
        .map_err(perr)?;
    Ok((page, filtered.load(Ordering::Relaxed)))
}

fn output_entries(page: &ListPage) -> (Vec<Object>, Vec<CommonPrefix>) {
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

fn mark_filtered(headers: &mut http::HeaderMap, filtered: bool) {
    if filtered {
        headers.insert(
            "x-amz-meta-dg-list-filtered",
            HeaderValue::from_static("true"),
        );
    }
}
