//! The vocabulary of a rate-limit check: dimensions with their default limits, endpoint cost
//! classes, and the [`Decision`] handed back to the HTTP layer.

use std::fmt;

/// A dimension a request is counted in. A request is usually checked in all three at once,
/// each with its own key (the token's id, the user id, the tenant id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dimension {
    /// Per API token (the `jti` or a hash of the token; never the raw token).
    Token,
    /// Per user, across all their tokens.
    User,
    /// Per tenant, across all its users.
    Tenant,
}

impl Dimension {
    /// All dimensions, in the order ScaiDrive checks them.
    pub const ALL: [Dimension; 3] = [Dimension::Token, Dimension::User, Dimension::Tenant];

    /// The wire name: `details.dimension` in the 429 body and the metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Dimension::Token => "token",
            Dimension::User => "user",
            Dimension::Tenant => "tenant",
        }
    }

    /// The documented default limit, in units per minute.
    pub const fn default_limit_per_minute(self) -> u64 {
        match self {
            Dimension::Token => DEFAULT_TOKEN_LIMIT,
            Dimension::User => DEFAULT_USER_LIMIT,
            Dimension::Tenant => DEFAULT_TENANT_LIMIT,
        }
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Default units per minute per token.
pub const DEFAULT_TOKEN_LIMIT: u64 = 1000;
/// Default units per minute per user.
pub const DEFAULT_USER_LIMIT: u64 = 5000;
/// Default units per minute per tenant.
pub const DEFAULT_TENANT_LIMIT: u64 = 50_000;

/// Cost of a metadata read (`GET /files/{id}`).
pub const COST_METADATA: u32 = 1;
/// Cost of a listing (`GET /folders/{id}/children`).
pub const COST_LIST: u32 = 2;
/// Cost of a metadata write (`PATCH /files/{id}`).
pub const COST_WRITE: u32 = 2;
/// Cost of moving content (`/content`, `/sync/download`, each upload chunk `PUT`).
pub const COST_TRANSFER: u32 = 5;
/// Cost of a keyword search (`/search/*`).
pub const COST_SEARCH: u32 = 10;
/// Cost of a semantic search (`/search/semantic`, `/search/context`).
pub const COST_SEMANTIC: u32 = 20;

/// Endpoint cost classes, for routes to declare what they cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CostClass {
    /// Metadata reads: 1 unit.
    Metadata,
    /// Listings: 2 units.
    List,
    /// Metadata writes: 2 units.
    Write,
    /// Upload / download of content: 5 units.
    Transfer,
    /// Keyword search: 10 units.
    Search,
    /// Semantic search: 20 units.
    Semantic,
}

impl CostClass {
    /// Units this class costs.
    pub const fn cost(self) -> u32 {
        match self {
            CostClass::Metadata => COST_METADATA,
            CostClass::List => COST_LIST,
            CostClass::Write => COST_WRITE,
            CostClass::Transfer => COST_TRANSFER,
            CostClass::Search => COST_SEARCH,
            CostClass::Semantic => COST_SEMANTIC,
        }
    }
}

/// One dimension's state after a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DimensionStatus {
    /// The dimension.
    pub dimension: Dimension,
    /// Its limit (units per window) as given in the check.
    pub limit: u64,
    /// Units left in the sliding window after this request.
    pub remaining: u64,
    /// Unix seconds at which the current fixed window ends.
    pub reset_unix: u64,
    /// Whether this dimension alone would have admitted the request.
    pub admits: bool,
    /// Seconds until it would (0 when it does), rounded up.
    pub retry_after_secs: u64,
}

/// The answer to one check.
///
/// `limit`, `remaining` and `reset_unix` describe one dimension, the one to put in the
/// `X-RateLimit-Limit/Remaining/Reset` headers: on a deny, the dimension that denied
/// (`dimension_hit`); on an allow, the most constrained one (smallest remaining share of its
/// limit). `per_dimension` has all of them, in the order they were given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed. When false, no dimension counted it.
    pub allowed: bool,
    /// On a deny, the dimension that denied (for `details.dimension` and the rejection
    /// metric). When several deny, the one that frees up last.
    pub dimension_hit: Option<Dimension>,
    /// The dimension the header fields below describe (`None` only for an empty check).
    pub dimension: Option<Dimension>,
    /// `X-RateLimit-Limit`.
    pub limit: u64,
    /// `X-RateLimit-Remaining`.
    pub remaining: u64,
    /// `X-RateLimit-Reset` (unix seconds).
    pub reset_unix: u64,
    /// `Retry-After` seconds on a deny (at least 1); 0 when allowed.
    pub retry_after_secs: u64,
    /// True when the backend could not be asked and the request was let through
    /// (fail-open). The header fields then show the full limit.
    pub degraded: bool,
    /// Every dimension's status.
    pub per_dimension: Vec<DimensionStatus>,
}

impl Decision {
    /// The response headers this decision asks for: `X-RateLimit-Limit`,
    /// `X-RateLimit-Remaining`, `X-RateLimit-Reset`, plus `Retry-After` on a deny. Empty for
    /// an empty check.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        if self.dimension.is_none() {
            return Vec::new();
        }
        let mut h = vec![
            ("X-RateLimit-Limit", self.limit.to_string()),
            ("X-RateLimit-Remaining", self.remaining.to_string()),
            ("X-RateLimit-Reset", self.reset_unix.to_string()),
        ];
        if !self.allowed {
            h.push(("Retry-After", self.retry_after_secs.to_string()));
        }
        h
    }
}
