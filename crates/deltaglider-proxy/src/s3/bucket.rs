//! Bucket-level operations: ListBuckets (IAM-filtered, prefix / max-buckets), CreateBucket, DeleteBucket,
//! HeadBucket and the GetBucketLocation / GetBucketVersioning stubs.

use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::{perr, ts, Proxy};

/// ListBuckets: only the buckets the principal may list, narrowed by `prefix`, in name
/// order, at most `max-buckets` (1–10000, default all) per page; a truncated page carries a
/// `ContinuationToken` (the last name returned) to pass back.
pub(super) async fn list_buckets(
    p: &Proxy,
    req: S3Request<ListBucketsInput>,
) -> S3Result<S3Response<ListBucketsOutput>> {
    let principal = Proxy::principal(&req);
    let i = &req.input;
    let max = match i.max_buckets {
        None => usize::MAX,
        Some(n) if (1..=10_000).contains(&n) => n as usize,
        Some(n) => {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidArgument,
                format!("max-buckets {n}: expected 1 to 10000"),
            ))
        }
    };
    let prefix = i.prefix.clone().unwrap_or_default();
    let after = i.continuation_token.clone().unwrap_or_default();
    let buckets = p.state.engine.list_buckets().await.map_err(perr)?;
    let mut visible = buckets.into_iter().filter(|(b, _)| {
        b.starts_with(prefix.as_str())
            && b.as_str() > after.as_str()
            && p.state.can_list_bucket(&principal, b, None)
    });
    let list: Vec<Bucket> = visible
        .by_ref()
        .take(max)
        .map(|(name, t)| Bucket {
            name: Some(name),
            creation_date: Some(ts(t)),
            bucket_region: None,
        })
        .collect();
    let next = if visible.next().is_some() {
        list.last().and_then(|b| b.name.clone())
    } else {
        None
    };
    Ok(S3Response::new(ListBucketsOutput {
        buckets: Some(list),
        owner: Some(Owner {
            display_name: Some("deltaglider".into()),
            id: Some("deltaglider".into()),
        }),
        continuation_token: next,
        prefix: i.prefix.clone(),
    }))
}

pub(super) async fn create_bucket(
    p: &Proxy,
    req: S3Request<CreateBucketInput>,
) -> S3Result<S3Response<CreateBucketOutput>> {
    p.state
        .engine
        .create_bucket(&req.input.bucket)
        .await
        .map_err(perr)?;
    Ok(S3Response::new(CreateBucketOutput {
        location: Some(format!("/{}", req.input.bucket)),
    }))
}

pub(super) async fn delete_bucket(
    p: &Proxy,
    req: S3Request<DeleteBucketInput>,
) -> S3Result<S3Response<DeleteBucketOutput>> {
    if p.state.multipart.is_completing(&req.input.bucket) {
        return Err(s3s::s3_error!(
            OperationAborted,
            "A CompleteMultipartUpload is in progress on this bucket: try again"
        ));
    }
    p.state
        .engine
        .delete_bucket(&req.input.bucket)
        .await
        .map_err(perr)?;
    Ok(S3Response::new(DeleteBucketOutput {}))
}

pub(super) async fn head_bucket(
    p: &Proxy,
    req: S3Request<HeadBucketInput>,
) -> S3Result<S3Response<HeadBucketOutput>> {
    p.require_bucket(&req.input.bucket).await?;
    Ok(S3Response::new(HeadBucketOutput {
        bucket_region: Some("us-east-1".into()),
        ..Default::default()
    }))
}

/// Stub: empty, which clients read as us-east-1.
pub(super) async fn get_bucket_location(
    p: &Proxy,
    req: S3Request<GetBucketLocationInput>,
) -> S3Result<S3Response<GetBucketLocationOutput>> {
    p.require_bucket(&req.input.bucket).await?;
    Ok(S3Response::new(GetBucketLocationOutput::default()))
}

/// Stub: versioning was never enabled (empty configuration).
pub(super) async fn get_bucket_versioning(
    p: &Proxy,
    req: S3Request<GetBucketVersioningInput>,
) -> S3Result<S3Response<GetBucketVersioningOutput>> {
    p.require_bucket(&req.input.bucket).await?;
    Ok(S3Response::new(GetBucketVersioningOutput::default()))
}
