//! The crate's error type.

/// What can go wrong talking to a queue.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Redis URL could not be parsed or uses an unsupported scheme.
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(String),
    /// A queue name is empty or has characters outside `[a-z0-9_-]`.
    #[error("invalid queue name {0:?}")]
    InvalidQueue(String),
    /// The backend (Redis) could not be reached or answered with an error. The job (for an
    /// enqueue) was not stored: the caller must be able to derive it again.
    #[error("queue backend: {0}")]
    Backend(String),
    /// A stored job could not be decoded.
    #[error("corrupt job {id}: {reason}")]
    Corrupt {
        /// The job id.
        id: String,
        /// Why decoding failed.
        reason: String,
    },
}

/// Shorthand.
pub type Result<T> = std::result::Result<T, Error>;

/// Queue names become parts of Redis keys and metric labels: keep them tame.
pub(crate) fn validate_queue(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidQueue(name.to_string()))
    }
}
