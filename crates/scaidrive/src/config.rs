//! Every `SCAIDRIVE_*` environment variable, parsed once into [`Config`]. A bad value stops
//! start-up with a message naming the variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use scai_core::config::{self as env, ConfigError};

/// Which role the process runs; it changes a few defaults (embedded auth is on for `serve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Serve,
    Api,
    Worker,
    Migrate,
    Token,
}

#[derive(Debug, Clone)]
pub struct S3Config {
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `SCAIDRIVE_DATA_DIR` (default `./scaidrive-data`): SQLite file, chunk dir, signing key.
    pub data_dir: PathBuf,
    /// `SCAIDRIVE_BIND` (default `127.0.0.1:8000`).
    pub bind: SocketAddr,
    /// `SCAIDRIVE_DATABASE_URL`, normalised (`mysql+asyncmy://` -> `mysql://`); default SQLite in data dir.
    pub database_url: String,
    /// `SCAIDRIVE_DB_MAX_CONNECTIONS` (default 16).
    pub db_max_connections: u32,
    pub redis_url: Option<String>,
    /// `SCAIDRIVE_S3_*`: when the endpoint is set, chunks go to S3 instead of the data dir.
    pub s3: Option<S3Config>,
    pub scaikey_url: Option<String>,
    pub scaikey_client_id: Option<String>,
    pub jwt_issuer: Option<String>,
    /// `SCAIDRIVE_JWKS_CACHE_TTL` (default 5m).
    pub jwks_ttl: Duration,
    /// `SCAIDRIVE_JWT_LEEWAY` (default 30s) for exp/nbf.
    pub jwt_leeway: Duration,
    /// `SCAIDRIVE_EMBEDDED_AUTH` (default on for `serve`/`token`, off for `api`/`worker`).
    pub embedded_auth: bool,
    /// `SCAIDRIVE_EMBEDDED_ISSUER` (default `scaidrive-embedded`): `iss` of embedded tokens.
    pub embedded_issuer: String,
    /// `SCAIDRIVE_CHUNK_SIZE` default chunk size (4 MiB).
    pub default_chunk_size: u64,
    /// `SCAIDRIVE_MAX_CHUNK_SIZE` largest chunk size a session may ask for (16 MiB).
    pub max_chunk_size: u64,
    /// `SCAIDRIVE_MAX_FILE_SIZE`: default `max_file_size_bytes` of new tenants (5 GiB).
    pub default_max_file_size: u64,
    /// `SCAIDRIVE_UPLOAD_SESSION_TTL`: inactivity after which a session expires (24h).
    pub upload_session_ttl: Duration,
    /// `SCAIDRIVE_GC_INTERVAL`: how often the worker expires sessions and collects chunks (5m).
    pub gc_interval: Duration,
    /// `SCAIDRIVE_GC_GRACE`: an unreferenced chunk younger than this is never collected (1h).
    pub gc_grace: Duration,
    pub weaviate_url: Option<String>,
    pub scaisend_url: Option<String>,
    pub secret_key: Option<String>,
    pub encryption_key: Option<String>,
    pub cors_origins: Vec<String>,
    /// `SCAIDRIVE_LOG_LEVEL` (INFO).
    pub log_level: String,
    /// `SCAIDRIVE_REDIS_PREFIX` (default `scaidrive`): prefix of every Redis key (sessions,
    /// rate-limit counters, queues), so several deployments (or tests) can share one Redis.
    pub redis_prefix: String,
    /// `SCAIDRIVE_RATE_LIMIT_ENABLED` (default true).
    pub rate_limit_enabled: bool,
    /// `SCAIDRIVE_RATE_LIMIT_TOKEN_PER_MIN` / `_USER_PER_MIN` / `_TENANT_PER_MIN`
    /// (defaults 1000 / 5000 / 50000 units per window; 0 = no limit in that dimension).
    pub rate_limit_token: u64,
    pub rate_limit_user: u64,
    pub rate_limit_tenant: u64,
    /// `SCAIDRIVE_RATE_LIMIT_WINDOW` (default 60s).
    pub rate_limit_window: Duration,
    /// `SCAIDRIVE_WORKER_CONCURRENCY` (default 4): jobs a worker runs at once.
    pub worker_concurrency: usize,
    /// `SCAIDRIVE_JOB_LEASE` (default 60s): a job whose worker died is redelivered after this.
    pub job_lease: Duration,
    /// `SCAIDRIVE_GC_BATCH` (default 1000): chunks one GC job tombstones at most.
    pub gc_batch: i64,
    /// `SCAIDRIVE_GC_DELETE_PAUSE` (default 0): pause between two chunk deletions of a GC job
    /// (throttles S3 deletes; tests use it to kill a worker mid-job).
    pub gc_delete_pause: Duration,
    /// Change-log retention and WebSocket limits (see `sync::SyncConfig`).
    pub sync: crate::sync::SyncConfig,
}

fn is_pow2_at_least_64k(v: u64) -> bool {
    v >= 64 * 1024 && v.is_power_of_two()
}

/// `mysql+asyncmy://…` and `mysql+aiomysql://…` (the Python driver forms in the operator
/// guide) become `mysql://…`; `mariadb://` too. `sqlite:` URLs get `mode=rwc` so a fresh data
/// dir works.
pub fn normalise_database_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    let (scheme, rest) = url
        .split_once("://")
        .or_else(|| url.split_once(':'))
        .ok_or_else(|| "expected sqlite://PATH or mysql://USER:PW@HOST:PORT/DB".to_string())?;
    let base = scheme
        .split('+')
        .next()
        .unwrap_or(scheme)
        .to_ascii_lowercase();
    match base.as_str() {
        "mysql" | "mariadb" => Ok(format!("mysql://{rest}")),
        "sqlite" => {
            if rest.contains('?') {
                Ok(format!("sqlite://{rest}"))
            } else {
                Ok(format!("sqlite://{rest}?mode=rwc"))
            }
        }
        other => Err(format!("unsupported database scheme {other:?}")),
    }
}

impl Config {
    pub fn from_env(role: Role) -> Result<Config, ConfigError> {
        let data_dir = PathBuf::from(env::string_or("SCAIDRIVE_DATA_DIR", "./scaidrive-data"));
        let bind_s = env::string_or("SCAIDRIVE_BIND", "127.0.0.1:8000");
        let bind: SocketAddr = bind_s.parse().map_err(|e: std::net::AddrParseError| {
            ConfigError::invalid("SCAIDRIVE_BIND", &bind_s, e.to_string())
        })?;
        let database_url = match env::opt_string("SCAIDRIVE_DATABASE_URL") {
            Some(u) => normalise_database_url(&u)
                .map_err(|e| ConfigError::invalid("SCAIDRIVE_DATABASE_URL", &u, e))?,
            None => format!(
                "sqlite://{}?mode=rwc",
                data_dir.join("scaidrive.db").display()
            ),
        };
        let s3 = match env::opt_string("SCAIDRIVE_S3_ENDPOINT") {
            None => None,
            Some(endpoint) => Some(S3Config {
                endpoint,
                bucket: env::required("SCAIDRIVE_S3_BUCKET", "needed with SCAIDRIVE_S3_ENDPOINT")?,
                access_key: env::required(
                    "SCAIDRIVE_S3_ACCESS_KEY",
                    "needed with SCAIDRIVE_S3_ENDPOINT",
                )?,
                secret_key: env::required(
                    "SCAIDRIVE_S3_SECRET_KEY",
                    "needed with SCAIDRIVE_S3_ENDPOINT",
                )?,
                region: env::string_or("SCAIDRIVE_S3_REGION", "us-east-1"),
            }),
        };
        let default_chunk_size = env::size_or("SCAIDRIVE_CHUNK_SIZE", 4 << 20)?;
        if !is_pow2_at_least_64k(default_chunk_size) {
            return Err(ConfigError::invalid(
                "SCAIDRIVE_CHUNK_SIZE",
                &default_chunk_size.to_string(),
                "must be a power of two of at least 64KiB",
            ));
        }
        let max_chunk_size = env::size_or("SCAIDRIVE_MAX_CHUNK_SIZE", 16 << 20)?;
        if !is_pow2_at_least_64k(max_chunk_size) || max_chunk_size < default_chunk_size {
            return Err(ConfigError::invalid(
                "SCAIDRIVE_MAX_CHUNK_SIZE",
                &max_chunk_size.to_string(),
                "must be a power of two of at least SCAIDRIVE_CHUNK_SIZE",
            ));
        }
        let embedded_default = matches!(role, Role::Serve | Role::Token);
        Ok(Config {
            data_dir,
            bind,
            database_url,
            db_max_connections: env::parse_or("SCAIDRIVE_DB_MAX_CONNECTIONS", 16u32)?,
            redis_url: match env::opt_string("SCAIDRIVE_REDIS_URL") {
                Some(u) if !(u.starts_with("redis://") || u.starts_with("rediss://")) => {
                    return Err(ConfigError::invalid(
                        "SCAIDRIVE_REDIS_URL",
                        &u,
                        "expected redis://HOST:PORT/DB or rediss://HOST:PORT/DB",
                    ))
                }
                other => other,
            },
            s3,
            scaikey_url: env::opt_string("SCAIDRIVE_SCAIKEY_URL"),
            scaikey_client_id: env::opt_string("SCAIDRIVE_SCAIKEY_CLIENT_ID"),
            jwt_issuer: env::opt_string("SCAIDRIVE_JWT_ISSUER"),
            jwks_ttl: env::duration_or("SCAIDRIVE_JWKS_CACHE_TTL", Duration::from_secs(300))?,
            jwt_leeway: env::duration_or("SCAIDRIVE_JWT_LEEWAY", Duration::from_secs(30))?,
            embedded_auth: env::bool_or("SCAIDRIVE_EMBEDDED_AUTH", embedded_default)?,
            embedded_issuer: env::string_or("SCAIDRIVE_EMBEDDED_ISSUER", "scaidrive-embedded"),
            default_chunk_size,
            max_chunk_size,
            default_max_file_size: env::size_or("SCAIDRIVE_MAX_FILE_SIZE", 5 << 30)?,
            upload_session_ttl: env::duration_or(
                "SCAIDRIVE_UPLOAD_SESSION_TTL",
                Duration::from_secs(24 * 3600),
            )?,
            gc_interval: env::duration_or("SCAIDRIVE_GC_INTERVAL", Duration::from_secs(300))?,
            gc_grace: env::duration_or("SCAIDRIVE_GC_GRACE", Duration::from_secs(3600))?,
            weaviate_url: env::opt_string("SCAIDRIVE_WEAVIATE_URL"),
            scaisend_url: env::opt_string("SCAIDRIVE_SCAISEND_URL"),
            secret_key: env::opt_string("SCAIDRIVE_SECRET_KEY"),
            encryption_key: env::opt_string("SCAIDRIVE_ENCRYPTION_KEY"),
            cors_origins: env::list("SCAIDRIVE_CORS_ORIGINS"),
            log_level: env::string_or("SCAIDRIVE_LOG_LEVEL", "INFO"),
            redis_prefix: env::string_or("SCAIDRIVE_REDIS_PREFIX", "scaidrive"),
            rate_limit_enabled: env::bool_or("SCAIDRIVE_RATE_LIMIT_ENABLED", true)?,
            rate_limit_token: env::parse_or("SCAIDRIVE_RATE_LIMIT_TOKEN_PER_MIN", 1000u64)?,
            // `_PER_MINUTE` is the spelling of the first (embedded) limiter; both are accepted.
            rate_limit_user: match env::opt_string("SCAIDRIVE_RATE_LIMIT_USER_PER_MIN") {
                Some(_) => env::parse_or("SCAIDRIVE_RATE_LIMIT_USER_PER_MIN", 5000u64)?,
                None => env::parse_or("SCAIDRIVE_RATE_LIMIT_USER_PER_MINUTE", 5000u64)?,
            },
            rate_limit_tenant: env::parse_or("SCAIDRIVE_RATE_LIMIT_TENANT_PER_MIN", 50_000u64)?,
            rate_limit_window: env::duration_or(
                "SCAIDRIVE_RATE_LIMIT_WINDOW",
                Duration::from_secs(60),
            )?,
            worker_concurrency: env::parse_or("SCAIDRIVE_WORKER_CONCURRENCY", 4usize)?,
            job_lease: env::duration_or("SCAIDRIVE_JOB_LEASE", Duration::from_secs(60))?,
            gc_batch: env::parse_or("SCAIDRIVE_GC_BATCH", 1000i64)?,
            gc_delete_pause: env::duration_or("SCAIDRIVE_GC_DELETE_PAUSE", Duration::ZERO)?,
            sync: crate::sync::SyncConfig::from_env()?,
        })
    }

    pub fn chunk_dir(&self) -> PathBuf {
        self.data_dir.join("objects")
    }
}

#[cfg(test)]
mod tests {
    use super::normalise_database_url as n;

    #[test]
    fn database_urls() {
        assert_eq!(
            n("mysql+asyncmy://u:p@h:3306/db").unwrap(),
            "mysql://u:p@h:3306/db"
        );
        assert_eq!(n("mysql://u@h/db").unwrap(), "mysql://u@h/db");
        assert_eq!(
            n("sqlite:///tmp/x.db").unwrap(),
            "sqlite:///tmp/x.db?mode=rwc"
        );
        assert_eq!(n("sqlite://x.db?mode=ro").unwrap(), "sqlite://x.db?mode=ro");
        assert!(n("postgres://x").is_err());
        assert!(n("nonsense").is_err());
    }
}
