//! DeleteObject and DeleteObjects (≤1000 keys, Quiet): deletes go through the engine so a
//! deltaspace's reference is dropped once no delta needs it. A key ending in `/` deletes
//! the whole prefix. A missing key is a success (204), as on S3.

use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::{perr, Proxy};
use crate::iam::Action;

pub(super) async fn delete_object(
    p: &Proxy,
    req: S3Request<DeleteObjectInput>,
) -> S3Result<S3Response<DeleteObjectOutput>> {
    let principal = Proxy::principal(&req);
    let (bucket, key) = (&req.input.bucket, &req.input.key);
    if key.ends_with('/') {
        delete_prefix(p, &principal, bucket, key).await?;
    } else {
        delete_one(p, bucket, key, None).await.map_err(perr)?;
    }
    Ok(S3Response::new(DeleteObjectOutput::default()))
}

/// Deletes one user key through the engine and keeps the quota usage current; `listed` is
/// its size when a listing already gave it (then the key is not resolved again).
async fn delete_one(
    p: &Proxy,
    bucket: &str,
    key: &str,
    listed: Option<u64>,
) -> Result<(), crate::error::ProxyError> {
    let old = match listed {
        Some(n) => Some(n),
        None => p.usage.size_before(p, bucket, key).await,
    };
    p.state.engine.delete(bucket, key).await?;
    p.usage.deleted(p, bucket, old);
    Ok(())
}

/// `DELETE /bucket/dir/`: every user-visible object under the prefix (the `dir/` marker
/// included), each through the engine so references are cleaned up as the last delta of a
/// deltaspace goes. All keys are authorised first: a principal that may not delete one of
/// them gets AccessDenied and nothing is deleted. Deepest keys go first, so a directory
/// marker is removed after what it contains.
async fn delete_prefix(
    p: &Proxy,
    principal: &super::auth::Principal,
    bucket: &str,
    prefix: &str,
) -> S3Result<()> {
    let page = p
        .state
        .engine
        .list(bucket, prefix, None, None, usize::MAX, &|_| true)
        .await
        .map_err(perr)?;
    let mut keys: Vec<(String, u64)> = page.objects.into_iter().map(|e| (e.key, e.size)).collect();
    if let Some((denied, _)) = keys
        .iter()
        .find(|(k, _)| !p.state.allowed(principal, Action::Delete, bucket, k))
    {
        p.state
            .audit_denial(principal, "DeleteObject", bucket, denied);
        return Err(S3Error::with_message(
            S3ErrorCode::AccessDenied,
            format!(
                "Access Denied: cannot delete {denied:?}, so nothing under {prefix:?} was deleted"
            ),
        ));
    }
    keys.sort_unstable_by(|a, b| b.0.cmp(&a.0));
    tracing::debug!(bucket, prefix, keys = keys.len(), "recursive prefix delete");
    for (k, size) in &keys {
        delete_one(p, bucket, k, Some(*size)).await.map_err(perr)?;
    }
    Ok(())
}

/// Each key is authorised on its own: a denied key is reported in `<Error>` and the others
/// are still deleted.
pub(super) async fn delete_objects(
    p: &Proxy,
    req: S3Request<DeleteObjectsInput>,
) -> S3Result<S3Response<DeleteObjectsOutput>> {
    let principal = Proxy::principal(&req);
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
        if !p.state.allowed(&principal, Action::Delete, &bucket, &o.key) {
            p.state
                .audit_denial(&principal, "DeleteObject", &bucket, &o.key);
            errors.push(Error {
                code: Some("AccessDenied".into()),
                key: Some(o.key),
                message: Some("Access Denied".into()),
                version_id: None,
            });
            continue;
        }
        match delete_one(p, &bucket, &o.key, None).await {
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
