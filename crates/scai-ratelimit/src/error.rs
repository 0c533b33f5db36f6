//! The crate's error type. Checks themselves never fail (a backend failure fails open);
//! errors come from construction (a bad Redis URL) and from the backends' raw interface.

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Redis URL could not be parsed or uses an unsupported scheme.
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(String),
    /// Redis could not be reached or answered with an error.
    #[error("redis: {0}")]
    Backend(String),
}
