//! The engine's error type: failures of the product's event store or of the broker.

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("event source: {0}")]
    Source(String),
    #[error("broker: {0}")]
    Broker(String),
    #[error("codec: {0}")]
    Codec(#[from] serde_json::Error),
}
