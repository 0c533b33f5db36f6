//! Native server-side encryption on S3 backends (`sse-kms`, `sse-s3`): the upstream
//! encrypts, the proxy only asks for it on every write and stamps `dg-encrypted-native` so
//! that reads (and later mode changes) know the stored bytes need no proxy-side decryption.

use aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder;
use aws_sdk_s3::types::ServerSideEncryption;

/// What a backend asks the upstream for on each PutObject.
#[derive(Debug, Clone, PartialEq)]
pub enum NativeSse {
    /// `x-amz-server-side-encryption: aws:kms`, with the key id (ARN or alias) when given
    /// and `x-amz-server-side-encryption-bucket-key-enabled` when configured.
    Kms {
        key_id: Option<String>,
        bucket_key_enabled: Option<bool>,
    },
    /// `x-amz-server-side-encryption: AES256` (keys managed by the upstream).
    S3,
}

impl NativeSse {
    /// The `dg-encrypted-native` marker value, which is also the mode's config name.
    pub fn marker(&self) -> &'static str {
        match self {
            NativeSse::Kms { .. } => "sse-kms",
            NativeSse::S3 => "sse-s3",
        }
    }

    /// Adds the SSE request headers to an upload.
    pub fn apply(&self, req: PutObjectFluentBuilder) -> PutObjectFluentBuilder {
        match self {
            NativeSse::S3 => req.server_side_encryption(ServerSideEncryption::Aes256),
            NativeSse::Kms {
                key_id,
                bucket_key_enabled,
            } => {
                let mut req = req.server_side_encryption(ServerSideEncryption::AwsKms);
                if let Some(k) = key_id {
                    req = req.ssekms_key_id(k);
                }
                if let Some(b) = bucket_key_enabled {
                    req = req.bucket_key_enabled(*b);
                }
                req
            }
        }
    }
}
