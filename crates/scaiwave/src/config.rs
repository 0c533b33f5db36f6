//! Configuration, read once from `SCAIWAVE_*` environment variables into [`Config`]. A bad
//! value stops start-up naming the variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use scai_core::config::{self, ConfigError};

/// Which process role is starting: `serve` fills in embedded defaults, `api` requires the
/// production services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Embedded,
    Production,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    pub data_dir: PathBuf,
    pub bind: SocketAddr,
    pub database_url: String,
    pub nats_url: Option<String>,
    pub nats_stream: String,
    pub nats_subject_prefix: String,
    pub server_name: String,
    pub scaikey_url: Option<String>,
    pub scaikey_issuer: Option<String>,
    pub jwks_url: Option<String>,
    pub embedded_auth: bool,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub queue_capacity: usize,
    pub gap_timeout: Duration,
    pub rate_per_sec: f64,
    pub rate_burst: u32,
    /// Shared rate-limit counters for all replicas; unset = per-replica token buckets.
    pub redis_url: Option<String>,
    pub redis_key_prefix: String,
    pub max_content_bytes: usize,
    pub edit_window: Duration,
    pub typing_ttl: Duration,
    pub log_level: String,
}

impl Config {
    pub fn from_env(mode: Mode) -> Result<Config, ConfigError> {
        let data_dir = PathBuf::from(config::string_or("SCAIWAVE_DATA_DIR", "./scaiwave-data"));
        let bind_s = config::string_or("SCAIWAVE_BIND", "127.0.0.1:8100");
        let bind = bind_s
            .parse::<SocketAddr>()
            .map_err(|e| ConfigError::invalid("SCAIWAVE_BIND", &bind_s, e.to_string()))?;
        let database_url = match (config::opt_string("SCAIWAVE_DATABASE_URL"), mode) {
            (Some(u), _) => u,
            (None, Mode::Embedded) => format!(
                "sqlite://{}?mode=rwc",
                data_dir.join("scaiwave.sqlite3").display()
            ),
            (None, Mode::Production) => {
                return Err(ConfigError::missing(
                    "SCAIWAVE_DATABASE_URL",
                    "mysql://user:pass@host:3306/scaiwave for `api` and `migrate`",
                ))
            }
        };
        if !(database_url.starts_with("sqlite:") || database_url.starts_with("mysql:")) {
            return Err(ConfigError::invalid(
                "SCAIWAVE_DATABASE_URL",
                &database_url,
                "expected a sqlite: or mysql: URL",
            ));
        }
        let nats_url = config::opt_string("SCAIWAVE_NATS_URL");
        let ping_interval =
            config::duration_or("SCAIWAVE_WS_PING_INTERVAL", Duration::from_secs(30))?;
        if ping_interval.is_zero() {
            return Err(ConfigError::invalid(
                "SCAIWAVE_WS_PING_INTERVAL",
                "0",
                "must be positive",
            ));
        }
        let pong_timeout = config::duration_or("SCAIWAVE_WS_PONG_TIMEOUT", ping_interval * 2)?;
        let embedded_default = mode == Mode::Embedded;
        Ok(Config {
            mode,
            data_dir,
            bind,
            database_url,
            nats_url,
            nats_stream: config::string_or("SCAIWAVE_NATS_STREAM", "SCAIWAVE_EVENTS"),
            nats_subject_prefix: config::string_or(
                "SCAIWAVE_NATS_SUBJECT_PREFIX",
                "scaiwave.events",
            ),
            server_name: config::string_or("SCAIWAVE_SERVER_NAME", "localhost"),
            scaikey_url: config::opt_string("SCAIWAVE_SCAIKEY_URL"),
            scaikey_issuer: config::opt_string("SCAIWAVE_SCAIKEY_ISSUER"),
            jwks_url: config::opt_string("SCAIWAVE_JWKS_URL"),
            embedded_auth: config::bool_or("SCAIWAVE_EMBEDDED_AUTH", embedded_default)?,
            ping_interval,
            pong_timeout,
            queue_capacity: config::parse_or("SCAIWAVE_WS_QUEUE_CAPACITY", 1024usize)?,
            gap_timeout: config::duration_or(
                "SCAIWAVE_STREAM_GAP_TIMEOUT",
                Duration::from_millis(250),
            )?,
            rate_per_sec: config::parse_or("SCAIWAVE_RATE_LIMIT_PER_SEC", 20.0f64)?,
            rate_burst: config::parse_or("SCAIWAVE_RATE_LIMIT_BURST", 100u32)?,
            redis_url: config::opt_string("SCAIWAVE_REDIS_URL"),
            redis_key_prefix: config::string_or("SCAIWAVE_REDIS_KEY_PREFIX", "scaiwave:rl"),
            max_content_bytes: config::size_or("SCAIWAVE_MAX_CONTENT_BYTES", 64 * 1024)? as usize,
            edit_window: config::duration_or(
                "SCAIWAVE_EDIT_WINDOW",
                Duration::from_secs(24 * 3600),
            )?,
            typing_ttl: config::duration_or("SCAIWAVE_TYPING_TTL", Duration::from_secs(4))?,
            log_level: config::string_or("SCAIWAVE_LOG_LEVEL", "INFO"),
        })
    }
}
