//! ListObjects (v1 markers) and ListObjectsV2: the engine's user-visible view (internals
//! hidden, deltas shown under their original names and sizes), filtered per key by IAM.
//! A filtered listing carries `x-amz-meta-dg-list-filtered: true`. ListObjectsV2 with
//! `metadata=true` (MinIO's extension) also gathers each key's metadata, which
//! [`inject_metadata`] writes into the XML as `<UserMetadata>` (s3s's `Object` has no field
//! for it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;

use http::HeaderValue;
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result};

use super::{etag, perr, query_param, ts, visible_metadata, xml_escape, Proxy};
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
    let with_metadata =
        query_param(&req.uri, "metadata").is_some_and(|v| v.eq_ignore_ascii_case("true"));
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
    if with_metadata {
        let bucket = resp.output.name.clone().unwrap_or_default();
        resp.extensions
            .insert(listed_metadata(p, &bucket, &page).await);
    }
    Ok(resp)
}

/// Per listed key, in listing order, the pairs `metadata=true` shows: `content-type` and
/// `X-Amz-Meta-<k>` for every field a HEAD echoes (user metadata and the `dg-*` fields).
#[derive(Clone)]
pub struct ListedMetadata(Arc<Vec<Vec<(String, String)>>>);

async fn listed_metadata(p: &Proxy, bucket: &str, page: &ListPage) -> ListedMetadata {
    // Owned keys and handles: a future borrowing the page would not be `Send` for every
    // lifetime, which the S3 trait's boxed future requires.
    let keys: Vec<String> = page.objects.iter().map(|e| e.key.clone()).collect();
    let all = futures::stream::iter(keys)
        .map(|key| {
            let engine = p.state.engine.clone();
            let bucket = bucket.to_string();
            async move { metadata_pairs(&engine, &bucket, &key).await }
        })
        .buffered(16)
        .collect()
        .await;
    ListedMetadata(Arc::new(all))
}

async fn metadata_pairs(
    engine: &crate::delta::Engine,
    bucket: &str,
    key: &str,
) -> Vec<(String, String)> {
    // A key deleted since the listing read it shows no metadata rather than failing the
    // whole page.
    let Ok(r) = engine.resolve(bucket, key).await else {
        return Vec::new();
    };
    let mut pairs = Vec::new();
    if let Some(ct) = &r.meta.content_type {
        pairs.push(("content-type".to_string(), ct.clone()));
    }
    pairs.extend(
        visible_metadata(&r)
            .into_iter()
            .map(|(k, v)| (format!("X-Amz-Meta-{k}"), v)),
    );
    pairs
}

/// Adds `<UserMetadata>` to the n-th `<Contents>` of a serialized ListObjectsV2 result.
/// A key whose name is not a valid XML element name (S3 allows any header token) is left
/// out rather than breaking the document.
pub fn inject_metadata(xml: &str, meta: &ListedMetadata) -> String {
    let mut out = String::with_capacity(xml.len() + meta.0.len() * 256);
    let mut rest = xml;
    for pairs in meta.0.iter() {
        let Some(at) = rest.find("</Contents>") else {
            break;
        };
        out.push_str(&rest[..at]);
        out.push_str("<UserMetadata>");
        for (k, v) in pairs {
            if k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                out.push_str(&format!("<{k}>{}</{k}>", xml_escape(v)));
            }
        }
        out.push_str("</UserMetadata></Contents>");
        rest = &rest[at + "</Contents>".len()..];
    }
    out.push_str(rest);
    out
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
