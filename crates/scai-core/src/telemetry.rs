//! Logging setup: `tracing` with an env filter. `RUST_LOG` wins; otherwise the product's own
//! level variable (`SCAIDRIVE_LOG_LEVEL=DEBUG|INFO|WARNING|ERROR`, ...) sets the level of its
//! crates. `LOG_FORMAT=json` switches to one JSON object per line for log shippers.

use tracing_subscriber::{fmt, EnvFilter};

/// Map the operator-facing level names (Python-style `WARNING` included) to a filter directive.
pub fn level_directive(level: &str) -> &'static str {
    match level.trim().to_ascii_uppercase().as_str() {
        "TRACE" => "trace",
        "DEBUG" => "debug",
        "WARN" | "WARNING" => "warn",
        "ERROR" | "CRITICAL" => "error",
        _ => "info",
    }
}

/// Install the global subscriber once; later calls (tests starting several servers in one
/// process) are no-ops.
pub fn init(default_directive: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_directive));
    let json = std::env::var("LOG_FORMAT")
        .map(|v| v.eq_ignore_ascii_case("json"))
        .unwrap_or(false);
    let result = if json {
        fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(true)
            .try_init()
    } else {
        fmt().with_env_filter(filter).with_target(true).try_init()
    };
    let _ = result;
}
