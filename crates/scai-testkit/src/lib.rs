//! Test kit shared by the products' integration tests.
//!
//! - [`free_port`], [`ServerProcess`]: start the real binary on a free loopback port, wait for
//!   it, kill it with SIGKILL and restart it on the same data.
//! - [`mariadb::TempDatabase`]: a uniquely named MariaDB database per test, dropped afterwards.
//! - [`jwks::JwksServer`]: a real OIDC discovery + JWKS endpoint on loopback with RS256 keys,
//!   standing in for ScaiKey so the production verification path is exercised for real.
//! - [`s3::S3Server`]: a real S3-compatible server (s3s-fs) on a free port.
//! - [`services`]: the one switch (`SCAI_TEST_SKIP_SERVICES=1`) that may skip service-backed tests.

pub mod jwks;
pub mod mariadb;
mod process;
pub mod s3;
pub mod services;

pub use process::{free_port, wait_http_ok, ServerProcess};
