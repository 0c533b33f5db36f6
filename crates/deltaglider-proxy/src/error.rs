//! The crate's one error type and its single mapping to S3 XML errors.

use s3s::{S3Error, S3ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("The specified bucket does not exist")]
    NoSuchBucket,
    #[error("The specified key does not exist.")]
    NoSuchKey,
    #[error("The requested bucket name is not available")]
    BucketExists,
    #[error("The bucket you tried to delete is not empty")]
    BucketNotEmpty,
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("The specified upload does not exist")]
    NoSuchUpload,
    #[error("invalid part: {0}")]
    InvalidPart(String),
    #[error("too many multipart uploads in flight")]
    TooManyUploads,
    #[error("At least one of the pre-conditions you specified did not hold")]
    PreconditionFailed,
    #[error("Not Modified")]
    NotModified,
    #[error("The requested range is not satisfiable")]
    InvalidRange,
    #[error("The Content-MD5 you specified did not match what we received.")]
    BadDigest,
    #[error("Access Denied")]
    AccessDenied,
    #[error("integrity check failed: {0}")]
    Integrity(String),
    #[error("codec error: {0}")]
    Codec(String),
    #[error("backend error: {0}")]
    Backend(String),
    /// The upstream S3 throttled us (503 SlowDown after the SDK's retries): passed on as
    /// such, so clients back off instead of seeing a bare 500.
    #[error("upstream S3 is throttling: {0}")]
    UpstreamSlowDown(String),
    /// The upstream S3 refused the proxy's own request (its credentials, bucket policy or a
    /// disabled KMS key): 403 with the upstream's reason, distinct from the client's auth.
    #[error("upstream S3 refused the request: {0}")]
    UpstreamDenied(String),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("startup error: {0}")]
    Startup(String),
    #[error("config error: {0}")]
    Config(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ProxyError> for S3Error {
    fn from(e: ProxyError) -> S3Error {
        use ProxyError::*;
        // A key segment longer than the filesystem's name limit is the client's key, not a
        // server fault: S3's KeyTooLongError (400), wherever the path was first touched.
        if let Io(io) = &e {
            if io.raw_os_error() == Some(libc::ENAMETOOLONG) {
                return S3Error::with_message(
                    S3ErrorCode::KeyTooLongError,
                    "a segment of this key is longer than the filesystem backend stores (255 bytes less the .delta suffix)",
                );
            }
        }
        let msg = e.to_string();
        let code = match &e {
            NoSuchBucket => S3ErrorCode::NoSuchBucket,
            NoSuchKey => S3ErrorCode::NoSuchKey,
            BucketExists => S3ErrorCode::BucketAlreadyOwnedByYou,
            BucketNotEmpty => S3ErrorCode::BucketNotEmpty,
            InvalidKey(_) | InvalidArgument(_) => S3ErrorCode::InvalidArgument,
            NoSuchUpload => S3ErrorCode::NoSuchUpload,
            InvalidPart(_) => S3ErrorCode::InvalidPart,
            TooManyUploads => S3ErrorCode::SlowDown,
            PreconditionFailed => S3ErrorCode::PreconditionFailed,
            NotModified => S3ErrorCode::Custom("NotModified".into()),
            InvalidRange => S3ErrorCode::InvalidRange,
            BadDigest => S3ErrorCode::BadDigest,
            AccessDenied | UpstreamDenied(_) => S3ErrorCode::AccessDenied,
            UpstreamSlowDown(_) => S3ErrorCode::SlowDown,
            Integrity(_) | Codec(_) | Backend(_) | Io(_) | Startup(_) | Config(_) | Internal(_) => {
                tracing::error!(error = %msg, "request failed");
                S3ErrorCode::InternalError
            }
        };
        if let UpstreamDenied(_) = &e {
            tracing::warn!(error = %msg, "upstream S3 refused the proxy's request");
        }
        let mut err = S3Error::with_message(code, msg);
        match e {
            NotModified => err.set_status_code(http::StatusCode::NOT_MODIFIED),
            // The proxy never answers 503 itself: 503 SlowDown always comes from upstream.
            TooManyUploads => err.set_status_code(http::StatusCode::TOO_MANY_REQUESTS),
            UpstreamSlowDown(_) => err.set_status_code(http::StatusCode::SERVICE_UNAVAILABLE),
            UpstreamDenied(_) => err.set_status_code(http::StatusCode::FORBIDDEN),
            _ => {}
        }
        err
    }
}
