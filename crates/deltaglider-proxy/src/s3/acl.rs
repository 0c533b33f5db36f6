//! ACL and tagging stubs. The proxy's access control is IAM (and public prefixes), not
//! ACLs: GetBucketAcl / GetObjectAcl answer a canned private ACL (the owner has
//! FULL_CONTROL) once the bucket or object is known to exist; writing ACLs and every
//! tagging operation is an explicit 501 NotImplemented, so a client learns that the call
//! did nothing instead of seeing a silent success.

use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::{perr, Proxy};

const OWNER_ID: &str = "deltaglider";

fn owner() -> Owner {
    Owner {
        display_name: Some(OWNER_ID.into()),
        id: Some(OWNER_ID.into()),
    }
}

/// The canned `private` ACL: one grant, the owner with FULL_CONTROL.
fn private_grants() -> Grants {
    vec![Grant {
        grantee: Some(Grantee {
            display_name: Some(OWNER_ID.into()),
            email_address: None,
            id: Some(OWNER_ID.into()),
            type_: Type::from_static(Type::CANONICAL_USER),
            uri: None,
        }),
        permission: Some(Permission::from_static(Permission::FULL_CONTROL)),
    }]
}

pub(super) async fn get_bucket_acl(
    p: &Proxy,
    req: S3Request<GetBucketAclInput>,
) -> S3Result<S3Response<GetBucketAclOutput>> {
    p.require_bucket(&req.input.bucket).await?;
    Ok(S3Response::new(GetBucketAclOutput {
        grants: Some(private_grants()),
        owner: Some(owner()),
    }))
}

pub(super) async fn get_object_acl(
    p: &Proxy,
    req: S3Request<GetObjectAclInput>,
) -> S3Result<S3Response<GetObjectAclOutput>> {
    let i = &req.input;
    // NoSuchBucket / NoSuchKey exactly as a HEAD of the object would answer.
    p.state
        .engine
        .resolve(&i.bucket, &i.key)
        .await
        .map_err(perr)?;
    Ok(S3Response::new(GetObjectAclOutput {
        grants: Some(private_grants()),
        owner: Some(owner()),
        ..Default::default()
    }))
}

/// The 501 every ACL write and tagging operation answers; `op` names it in the message.
pub(super) fn not_implemented<T>(op: &str) -> S3Result<T> {
    Err(S3Error::with_message(
        S3ErrorCode::NotImplemented,
        format!(
            "{op} is not implemented by DeltaGlider Proxy: access is controlled by IAM \
             policies, and objects carry no ACLs or tags"
        ),
    ))
}
