//! Shared plumbing for the Scai products' HTTP servers.
//!
//! Each product keeps its own error envelope and routes; this crate owns only what is the
//! same everywhere: reading configuration from the environment ([`config`]), request ids
//! ([`request_id`]), logging ([`telemetry`]), Prometheus metrics ([`metrics`]), readiness
//! checks ([`health`]), prefixed ULID identifiers ([`ids`]) and graceful shutdown ([`shutdown`]).

pub mod config;
pub mod health;
pub mod ids;
pub mod metrics;
pub mod request_id;
pub mod shutdown;
pub mod telemetry;
