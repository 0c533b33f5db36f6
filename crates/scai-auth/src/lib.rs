//! Identity for the Scai products: verifying ScaiKey-issued JWTs ([`Verifier`]) and the
//! embedded issuer ([`EmbeddedIssuer`]) that lets a server run with no identity provider,
//! whose `token` subcommand mints tokens the server on the same data directory accepts.

mod claims;
mod embedded;
mod jwks;
mod verifier;

pub use claims::Claims;
pub use embedded::{EmbeddedIssuer, MintOptions};
pub use verifier::{AuthError, Verifier, VerifierConfig};

/// The bearer token of an `Authorization: Bearer …` header, if present and well-formed.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
