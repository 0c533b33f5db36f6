//! Configuration: the optional YAML file (`DGP_CONFIG`, then `./deltaglider_proxy.yaml`)
//! and the `DGP_*` environment variables, which win over the file. Parsed once at start-up
//! into [`Config`]; a bad value stops start-up naming the variable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use scai_core::config as env;
use serde::{Deserialize, Serialize};

use crate::error::ProxyError;
use crate::iam::{GroupSpec, UserSpec};
use crate::meta::Codec;

/// `storage.buckets.<name>`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BucketPolicy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_delta_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    pub public_prefixes: Vec<String>,
    pub public: bool,
    /// Soft quota on the bucket's stored original bytes; 0 freezes the bucket (see
    /// `s3::quota`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
}

/// `encryption:` of a backend (or `storage.backend_encryption` for the singleton).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EncryptionSpec {
    pub mode: Option<String>,
    #[serde(skip_serializing)]
    pub key: Option<String>,
    pub key_id: Option<String>,
    #[serde(skip_serializing)]
    pub legacy_key: Option<String>,
    pub legacy_key_id: Option<String>,
    /// `sse-kms`: the KMS key (ARN or alias); absent = the account's default S3 KMS key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// `sse-kms`: sent as `x-amz-server-side-encryption-bucket-key-enabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_key_enabled: Option<bool>,
}

/// The encryption modes a backend can run (`encryption.mode`).
pub const ENCRYPTION_MODES: [&str; 4] = ["none", "aes256-gcm-proxy", "sse-kms", "sse-s3"];

/// Named-backend names: they become env var infixes (`DGP_BACKEND_<NAME>_*`) and spool
/// directory names, so they are kept to `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`.
pub fn valid_backend_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Checks one backend's `encryption:` block against its type: a known mode, and no native
/// SSE mode on a filesystem backend (there is no server to encrypt for it).
pub fn validate_encryption(
    backend: &str,
    kind: &str,
    e: &EncryptionSpec,
) -> Result<(), ProxyError> {
    if let Some(mode) = e.mode.as_deref() {
        if !ENCRYPTION_MODES.contains(&mode) {
            return Err(ProxyError::Config(format!(
                "backend {backend:?}: unknown encryption mode {mode:?} (expected one of {})",
                ENCRYPTION_MODES.join(", ")
            )));
        }
        if mode.starts_with("sse-") && kind == "filesystem" {
            return Err(ProxyError::Config(format!(
                "backend {backend:?}: encryption mode {mode} works only on S3 backends, not on a filesystem backend"
            )));
        }
    }
    Ok(())
}

/// One named backend (`storage.backends[]`, or the singleton `storage.backend`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub path: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub force_path_style: Option<bool>,
    pub access_key_id: Option<String>,
    #[serde(skip_serializing)]
    pub secret_access_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_encryption: Option<EncryptionSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(skip_serializing)]
    pub secret_access_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force_path_style: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_backend: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendSpec>,
    pub buckets: BTreeMap<String, BucketPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<crate::replication::ReplicationSection>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AccessSection {
    pub iam_mode: Option<String>,
    pub authentication: Option<String>,
    pub access_key_id: Option<String>,
    #[serde(skip_serializing)]
    pub secret_access_key: Option<String>,
    pub iam_users: Vec<UserSpec>,
    pub iam_groups: Vec<GroupSpec>,
    /// External identity providers (declarative mode; see [`crate::oidc`]).
    pub auth_providers: Vec<crate::oidc::ProviderSpec>,
    pub group_mapping_rules: Vec<crate::oidc::MappingRule>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AdvancedSection {
    pub listen_addr: Option<String>,
    pub cache_size_mb: Option<u64>,
    pub metadata_cache_mb: Option<u64>,
    pub codec_concurrency: Option<usize>,
    pub max_delta_ratio: Option<f64>,
    pub max_object_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_sync_bucket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSection>,
    /// The blocking thread pool's size (codec and disk work); `DGP_BLOCKING_THREADS` wins.
    /// Read before the runtime starts (see `main.rs`), so a change needs a restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocking_threads: Option<usize>,
    /// The bootstrap password hash, below `DGP_BOOTSTRAP_PASSWORD_HASH`. A secret: never
    /// exported.
    #[serde(skip_serializing)]
    pub bootstrap_password_hash: Option<String>,
}

/// `advanced.tls`: built-in TLS (`DGP_TLS_ENABLED` / `DGP_TLS_CERT` / `DGP_TLS_KEY` win).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsSection {
    pub enabled: Option<bool>,
    pub cert_path: Option<String>,
    pub key_path: Option<String>,
}

/// The YAML file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FileConfig {
    pub admission: crate::admission::AdmissionSection,
    pub access: AccessSection,
    pub storage: StorageSection,
    pub advanced: AdvancedSection,
}

/// Effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: String,
    pub data_dir: PathBuf,
    pub max_multipart_uploads: usize,
    /// `DGP_MAX_TOTAL_MULTIPART_BYTES`: bytes staged by all in-flight multipart uploads
    /// together (default max_object_size × max_uploads / 4).
    pub max_total_multipart_bytes: u64,
    /// `DGP_MULTIPART_IDLE_TTL_HOURS` (fractional hours accepted) or, winning over it,
    /// `DGP_MULTIPART_IDLE_TTL_SECS`: incomplete uploads idle longer are swept. `None` (a
    /// value of 0) turns the sweeper off.
    pub multipart_idle_ttl: Option<std::time::Duration>,
    pub audit_ring_size: usize,
    pub debug_headers: bool,
    pub max_delta_ratio: f64,
    pub max_object_size: u64,
    pub cache_mb: u64,
    /// `DGP_METADATA_CACHE_MB`: upstream-S3 metadata cache per S3 backend (0 = off).
    pub metadata_cache_mb: u64,
    pub codec_concurrency: usize,
    pub codec_timeout_secs: u64,
    pub codec: Codec,
    pub clock_skew_seconds: u32,
    /// `DGP_AUTHENTICATION=none`: open access.
    pub auth_none: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub bootstrap_password_hash: Option<String>,
    pub session_ttl_hours: u64,
    pub trust_proxy_headers: bool,
    pub request_timeout_secs: u64,
    pub max_concurrent_requests: usize,
    pub rate_limit_max_attempts: u32,
    pub rate_limit_window_secs: u64,
    pub rate_limit_lockout_secs: u64,
    pub iam_declarative: bool,
    /// Built-in TLS on the listener; `None` serves plain HTTP.
    pub tls: Option<crate::tls::TlsSource>,
    /// `DGP_CORS_PERMISSIVE`: any origin, method and header (development only).
    pub cors_permissive: bool,
    /// `DGP_REPLAY_WINDOW_SECS`: a header-signed non-GET/HEAD request whose signature was
    /// already accepted within this many seconds is refused (0 turns the check off).
    pub replay_window_secs: u64,
    /// `DGP_CONFIG_SYNC_BUCKET` (or `advanced.config_sync_bucket`): upstream bucket that
    /// carries the admin-API IAM overlay between instances (S3 backend only).
    pub config_sync_bucket: Option<String>,
    /// `DGP_CONFIG_SYNC_INTERVAL_SECS`: how often the sync object is polled (min 1).
    pub config_sync_interval_secs: u64,
    pub file: FileConfig,
    pub config_path: Option<PathBuf>,
}

/// `DGP_BUILD_TIME` as stamped by the build (release pipelines run
/// `DGP_BUILD_TIME=$(date -u +%Y-%m-%dT%H:%M:%SZ) cargo build --release`); `unknown` when the
/// build did not set it. It is read at compile time only: setting it when starting the
/// binary changes nothing.
pub const BUILD_TIME: &str = match option_env!("DGP_BUILD_TIME") {
    Some(t) => t,
    None => "unknown",
};

fn cfg_err(e: scai_core::config::ConfigError) -> ProxyError {
    ProxyError::Config(e.to_string())
}

/// `DGP_CONFIG` (even if the file does not exist yet), else the first existing file of the
/// search order.
pub fn find_config_file() -> Option<PathBuf> {
    if let Some(p) = env::opt_string("DGP_CONFIG") {
        return Some(PathBuf::from(p));
    }
    [
        "./deltaglider_proxy.yaml",
        "./deltaglider_proxy.yml",
        "./deltaglider_proxy.toml",
        "/etc/deltaglider_proxy/config.yaml",
        "/etc/deltaglider_proxy/config.yml",
        "/etc/deltaglider_proxy/config.toml",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

pub fn load_file(path: &Path) -> Result<FileConfig, ProxyError> {
    if !path.exists() {
        return Ok(FileConfig::default());
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| ProxyError::Config(format!("{}: {e}", path.display())))?;
    let is_toml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    if is_toml {
        // TOML is still read (same sections and keys as the YAML) but deprecated.
        let silenced = env::bool_or("DGP_SILENCE_TOML_DEPRECATION", false).map_err(cfg_err)?;
        if !silenced {
            tracing::warn!(
                path = %path.display(),
                "TOML configuration is deprecated: convert this file to YAML (deltaglider_proxy.yaml, same sections and keys); set DGP_SILENCE_TOML_DEPRECATION=true to silence this warning"
            );
        }
    }
    // Either shape: sectioned, or the older flat root-level keys (mixing them is an error).
    let (fc, warnings) = crate::config_doc::parse(&text, is_toml)
        .map_err(|e| ProxyError::Config(format!("{}: {e}", path.display())))?;
    for w in warnings {
        tracing::warn!(path = %path.display(), "{w}");
    }
    validate_file(&fc)?;
    Ok(fc)
}

/// The reconciler's checks, run before anything is written: unique user names, access
/// keys and group names, no reserved `$` names, and only declared groups referenced.
fn validate_declarative_iam(a: &AccessSection) -> Result<(), ProxyError> {
    let bad = |m: String| Err(ProxyError::Config(format!("access: {m}")));
    let mut names = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    let mut groups = std::collections::HashSet::new();
    for g in &a.iam_groups {
        if g.name.starts_with('$') || g.name.is_empty() {
            return bad(format!(
                "iam_groups: invalid group name {:?} (names starting with $ are reserved)",
                g.name
            ));
        }
        if !groups.insert(g.name.as_str()) {
            return bad(format!("iam_groups: duplicate group name {:?}", g.name));
        }
        crate::iam::validate_permissions(
            &format!("iam_groups: group {:?}", g.name),
            &g.permissions,
        )
        .map_err(|m| ProxyError::Config(format!("access: {m}")))?;
    }
    for u in &a.iam_users {
        if u.name.starts_with('$') || u.name.is_empty() {
            return bad(format!(
                "iam_users: invalid user name {:?} (names starting with $ are reserved)",
                u.name
            ));
        }
        if !names.insert(u.name.as_str()) {
            return bad(format!("iam_users: duplicate user name {:?}", u.name));
        }
        crate::iam::validate_permissions(&format!("iam_users: user {:?}", u.name), &u.permissions)
            .map_err(|m| ProxyError::Config(format!("access: {m}")))?;
        if !keys.insert(u.access_key_id.as_str()) {
            return bad(format!(
                "iam_users: duplicate access_key_id for user {:?}",
                u.name
            ));
        }
        if let Some(g) = u.groups.iter().find(|g| !groups.contains(g.as_str())) {
            return bad(format!(
                "iam_users: user {:?} references unknown group {:?}",
                u.name, g
            ));
        }
    }
    Ok(())
}

/// Rejects invalid access (OIDC) and admission sections, public prefixes with `..`, NUL or `//`, and `public` together with prefixes;
/// invalid or duplicate backend names and encryption modes a backend cannot run.
pub fn validate_file(fc: &FileConfig) -> Result<(), ProxyError> {
    if let Some(m) = fc.access.iam_mode.as_deref() {
        if !matches!(m, "gui" | "declarative") {
            return Err(ProxyError::Config(format!(
                "access.iam_mode must be gui or declarative, not {m:?}"
            )));
        }
    }
    let st = &fc.storage;
    let forms: Vec<&str> = [
        ("s3", st.s3.is_some()),
        ("filesystem", st.filesystem.is_some()),
        ("backend", st.backend.is_some()),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(n, _)| *n)
    .collect();
    if forms.len() > 1 {
        return Err(ProxyError::Config(format!(
            "storage: set exactly one of s3, filesystem or backend (found {})",
            forms.join(" and ")
        )));
    }
    validate_declarative_iam(&fc.access)?;
    crate::oidc::validate_access(&fc.access)?;
    crate::admission::validate(&fc.admission).map_err(ProxyError::Config)?;
    let mut seen = std::collections::HashSet::new();
    for b in &fc.storage.backends {
        if !valid_backend_name(&b.name) {
            return Err(ProxyError::Config(format!(
                "storage.backends: invalid backend name {:?} (1-64 chars [A-Za-z0-9_.-], starting with a letter or digit)",
                b.name
            )));
        }
        if !seen.insert(b.name.as_str()) {
            return Err(ProxyError::Config(format!(
                "storage.backends: duplicate backend name {:?}",
                b.name
            )));
        }
        if let Some(e) = &b.encryption {
            validate_encryption(&b.name, &b.kind, e)?;
        }
    }
    if let (Some(e), Some(kind)) = (&fc.storage.backend_encryption, singleton_kind(fc)) {
        validate_encryption("default", kind, e)?;
    }
    if let Some(r) = &fc.storage.replication {
        crate::replication::validate(r)?;
    }
    for (name, b) in &fc.storage.buckets {
        if b.public && !b.public_prefixes.is_empty() {
            return Err(ProxyError::Config(format!(
                "storage.buckets.{name}: set either public or public_prefixes, not both"
            )));
        }
        for p in &b.public_prefixes {
            if p.contains("..") || p.contains('\0') || p.contains("//") {
                return Err(ProxyError::Config(format!(
                    "storage.buckets.{name}.public_prefixes: invalid prefix {p:?}"
                )));
            }
            if p.is_empty() {
                tracing::warn!(bucket = %name, "public prefix \"\" makes the whole bucket public");
            }
        }
        if let Some(r) = b.max_delta_ratio {
            if !(0.0..=1.0).contains(&r) {
                return Err(ProxyError::Config(format!(
                    "storage.buckets.{name}.max_delta_ratio must be within 0..1"
                )));
            }
        }
    }
    Ok(())
}

/// The singleton backend's type as far as the file tells (`DGP_S3_ENDPOINT` can still make
/// it S3 at start-up, where the same check runs again).
fn singleton_kind(fc: &FileConfig) -> Option<&'static str> {
    let st = &fc.storage;
    if st.s3.is_some() || st.backend.as_ref().is_some_and(|b| b.kind == "s3") {
        Some("s3")
    } else if st.filesystem.is_some() || st.backend.as_ref().is_some_and(|b| b.kind == "filesystem")
    {
        Some("filesystem")
    } else {
        None
    }
}

/// Non-fatal findings in a file, for the validate dry run (start-up logs the same ones).
pub fn lint_file(fc: &FileConfig) -> Vec<String> {
    let mut w = Vec::new();
    let names: Vec<&str> = fc
        .storage
        .backends
        .iter()
        .map(|b| b.name.as_str())
        .collect();
    for (name, b) in &fc.storage.buckets {
        if b.public_prefixes.iter().any(|p| p.is_empty()) {
            w.push(format!(
                "storage.buckets.{name}: public prefix \"\" makes the whole bucket public"
            ));
        }
        if let Some(be) = &b.backend {
            if !names.contains(&be.as_str()) {
                w.push(format!("storage.buckets.{name}: routes to unknown backend {be:?}; the default backend is used"));
            }
        }
    }
    for b in &fc.storage.backends {
        if b.encryption.as_ref().is_some_and(|e| e.key.is_some()) {
            w.push(format!("backend '{}' encryption key was loaded from config file (not DGP_*_ENCRYPTION_KEY)", b.name));
        }
    }
    if fc.access.iam_mode.as_deref() != Some("declarative")
        && !(fc.access.auth_providers.is_empty() && fc.access.group_mapping_rules.is_empty())
    {
        w.push("access.auth_providers / group_mapping_rules are used in iam_mode: declarative only; in gui mode manage them through /_/api/admin/ext-auth".into());
    }
    w.extend(crate::admission::lint(&fc.admission));
    if fc.advanced.cache_size_mb.is_some_and(|mb| mb < 1024) {
        w.push("advanced.cache_size_mb below 1024: recommend ≥1024 MB for production".into());
    }
    w
}

/// The multipart idle TTL: `DGP_MULTIPART_IDLE_TTL_SECS` (whole seconds, meant for tests and
/// tight deployments) wins over `DGP_MULTIPART_IDLE_TTL_HOURS` (default 24, fractions allowed).
fn multipart_idle_ttl() -> Result<Option<std::time::Duration>, ProxyError> {
    let secs: Option<u64> = match env::opt_string("DGP_MULTIPART_IDLE_TTL_SECS") {
        Some(_) => Some(env::parse_or("DGP_MULTIPART_IDLE_TTL_SECS", 0u64).map_err(cfg_err)?),
        None => None,
    };
    let ttl = match secs {
        Some(s) => std::time::Duration::from_secs(s),
        None => {
            let hours: f64 =
                env::parse_or("DGP_MULTIPART_IDLE_TTL_HOURS", 24.0f64).map_err(cfg_err)?;
            if !hours.is_finite() || hours < 0.0 {
                return Err(ProxyError::Config(
                    "DGP_MULTIPART_IDLE_TTL_HOURS must be a non-negative number".into(),
                ));
            }
            std::time::Duration::try_from_secs_f64(hours * 3600.0).map_err(|_| {
                ProxyError::Config("DGP_MULTIPART_IDLE_TTL_HOURS is out of range".into())
            })?
        }
    };
    Ok((!ttl.is_zero()).then_some(ttl))
}

/// `DGP_TLS_ENABLED` (or `advanced.tls.enabled`) with `DGP_TLS_CERT` / `DGP_TLS_KEY` (or
/// `cert_path` / `key_path`): both files, or neither for a self-signed certificate kept
/// under `DGP_DATA_DIR/tls/`.
fn tls_source(
    file: TlsSection,
    data_dir: &Path,
) -> Result<Option<crate::tls::TlsSource>, ProxyError> {
    let enabled =
        env::bool_or("DGP_TLS_ENABLED", file.enabled.unwrap_or(false)).map_err(cfg_err)?;
    let cert = env::opt_string("DGP_TLS_CERT").or(file.cert_path);
    let key = env::opt_string("DGP_TLS_KEY").or(file.key_path);
    if !enabled {
        if cert.is_some() || key.is_some() {
            tracing::warn!("DGP_TLS_CERT / DGP_TLS_KEY are set but DGP_TLS_ENABLED is false: serving plain HTTP");
        }
        return Ok(None);
    }
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(crate::tls::TlsSource::Files {
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
        })),
        (None, None) => Ok(Some(crate::tls::TlsSource::SelfSigned {
            dir: data_dir.join("tls"),
        })),
        _ => Err(ProxyError::Config(
            "DGP_TLS_CERT and DGP_TLS_KEY must be set together (or neither, for a self-signed certificate)".into(),
        )),
    }
}

impl Config {
    pub fn from_env() -> Result<Config, ProxyError> {
        let config_path = find_config_file();
        let file = match &config_path {
            Some(p) => load_file(p)?,
            None => FileConfig::default(),
        };
        let adv = &file.advanced;
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let max_delta_ratio =
            env::parse_or("DGP_MAX_DELTA_RATIO", adv.max_delta_ratio.unwrap_or(0.75))
                .map_err(cfg_err)?;
        if !(0.0..=1.0).contains(&max_delta_ratio) {
            return Err(ProxyError::Config(
                "DGP_MAX_DELTA_RATIO must be within 0..1".into(),
            ));
        }
        let codec = match env::string_or("DGP_DELTA_CODEC", "xdelta3").as_str() {
            "xdelta3" | "vcdiff" => Codec::Xdelta3,
            "zstd" | "zstd-patch" => Codec::Zstd,
            other => {
                return Err(ProxyError::Config(format!(
                    "DGP_DELTA_CODEC: invalid value {other:?}: expected xdelta3 or zstd"
                )))
            }
        };
        let authentication =
            env::opt_string("DGP_AUTHENTICATION").or(file.access.authentication.clone());
        let access_key_id =
            env::opt_string("DGP_ACCESS_KEY_ID").or(file.access.access_key_id.clone());
        let secret_access_key =
            env::opt_string("DGP_SECRET_ACCESS_KEY").or(file.access.secret_access_key.clone());
        let auth_none = authentication.as_deref() == Some("none");
        if !auth_none
            && (access_key_id.is_none() || secret_access_key.is_none())
            && file.access.iam_users.is_empty()
        {
            return Err(ProxyError::Config(
                "DGP_ACCESS_KEY_ID / DGP_SECRET_ACCESS_KEY are required (or DGP_AUTHENTICATION=none for open access)".into(),
            ));
        }
        let codec_concurrency = env::parse_or(
            "DGP_CODEC_CONCURRENCY",
            adv.codec_concurrency.unwrap_or((cpus * 4).max(16)),
        )
        .map_err(cfg_err)?;
        if codec_concurrency == 0 {
            return Err(ProxyError::Config(
                "DGP_CODEC_CONCURRENCY must be at least 1".into(),
            ));
        }
        // `storage.filesystem: <path>`, or the canonical `storage.backend: {type:
        // filesystem, path}`.
        let file_dir = file.storage.filesystem.clone().or_else(|| {
            file.storage
                .backend
                .as_ref()
                .filter(|b| b.kind == "filesystem")
                .and_then(|b| b.path.clone())
        });
        let data_dir = PathBuf::from(env::string_or(
            "DGP_DATA_DIR",
            file_dir.as_deref().unwrap_or("./data"),
        ));
        if data_dir
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(ProxyError::Config(
                "DGP_DATA_DIR: paths containing .. are rejected".into(),
            ));
        }
        let max_multipart_uploads: usize =
            env::parse_or("DGP_MAX_MULTIPART_UPLOADS", 1000usize).map_err(cfg_err)?;
        let max_object_size: u64 = env::parse_or(
            "DGP_MAX_OBJECT_SIZE",
            adv.max_object_size.unwrap_or(104_857_600u64),
        )
        .map_err(cfg_err)?;
        // The guide's default: max_object_size × max_uploads / 4.
        let max_total_multipart_bytes: u64 = env::parse_or(
            "DGP_MAX_TOTAL_MULTIPART_BYTES",
            max_object_size.saturating_mul(max_multipart_uploads as u64) / 4,
        )
        .map_err(cfg_err)?;
        let multipart_idle_ttl = multipart_idle_ttl()?;
        let tls = tls_source(adv.tls.clone().unwrap_or_default(), &data_dir)?;
        Ok(Config {
            listen_addr: env::string_or(
                "DGP_LISTEN_ADDR",
                adv.listen_addr.as_deref().unwrap_or("0.0.0.0:9000"),
            ),
            data_dir,
            max_multipart_uploads,
            max_total_multipart_bytes,
            multipart_idle_ttl,
            audit_ring_size: env::parse_or("DGP_AUDIT_RING_SIZE", 500usize).map_err(cfg_err)?,
            debug_headers: env::bool_or("DGP_DEBUG_HEADERS", false).map_err(cfg_err)?,
            max_delta_ratio,
            max_object_size,
            cache_mb: env::parse_or("DGP_CACHE_MB", adv.cache_size_mb.unwrap_or(100u64))
                .map_err(cfg_err)?,
            metadata_cache_mb: env::parse_or(
                "DGP_METADATA_CACHE_MB",
                adv.metadata_cache_mb.unwrap_or(50u64),
            )
            .map_err(cfg_err)?,
            codec_concurrency,
            codec_timeout_secs: env::parse_or("DGP_CODEC_TIMEOUT_SECS", 60u64).map_err(cfg_err)?,
            codec,
            clock_skew_seconds: env::parse_or("DGP_CLOCK_SKEW_SECONDS", 300u32).map_err(cfg_err)?,
            auth_none,
            access_key_id,
            secret_access_key,
            bootstrap_password_hash: env::opt_string("DGP_BOOTSTRAP_PASSWORD_HASH")
                .or_else(|| env::opt_string("DGP_ADMIN_PASSWORD_HASH"))
                .or_else(|| {
                    adv.bootstrap_password_hash
                        .clone()
                        .filter(|h| !h.is_empty())
                }),
            session_ttl_hours: env::parse_or("DGP_SESSION_TTL_HOURS", 4u64).map_err(cfg_err)?,
            trust_proxy_headers: env::bool_or("DGP_TRUST_PROXY_HEADERS", false).map_err(cfg_err)?,
            request_timeout_secs: env::parse_or("DGP_REQUEST_TIMEOUT_SECS", 300u64)
                .map_err(cfg_err)?,
            max_concurrent_requests: env::parse_or("DGP_MAX_CONCURRENT_REQUESTS", 1024usize)
                .map_err(cfg_err)?
                .max(1),
            rate_limit_max_attempts: env::parse_or("DGP_RATE_LIMIT_MAX_ATTEMPTS", 100u32)
                .map_err(cfg_err)?,
            rate_limit_window_secs: env::parse_or("DGP_RATE_LIMIT_WINDOW_SECS", 300u64)
                .map_err(cfg_err)?,
            rate_limit_lockout_secs: env::parse_or("DGP_RATE_LIMIT_LOCKOUT_SECS", 600u64)
                .map_err(cfg_err)?,
            iam_declarative: file.access.iam_mode.as_deref() == Some("declarative"),
            tls,
            cors_permissive: env::bool_or("DGP_CORS_PERMISSIVE", false).map_err(cfg_err)?,
            replay_window_secs: env::parse_or("DGP_REPLAY_WINDOW_SECS", 2u64).map_err(cfg_err)?,
            config_sync_bucket: env::opt_string("DGP_CONFIG_SYNC_BUCKET")
                .or(file.advanced.config_sync_bucket.clone())
                .filter(|b| !b.is_empty()),
            config_sync_interval_secs: env::parse_or("DGP_CONFIG_SYNC_INTERVAL_SECS", 30u64)
                .map_err(cfg_err)?
                .max(1),
            file,
            config_path,
        })
    }

    /// Defaults with the given data dir and bootstrap keys (used by `bench`).
    pub fn with_defaults(data_dir: PathBuf, access_key_id: &str, secret: &str) -> Config {
        Config {
            listen_addr: "127.0.0.1:0".into(),
            data_dir,
            max_multipart_uploads: 1000,
            max_total_multipart_bytes: 104_857_600 * 1000 / 4,
            multipart_idle_ttl: Some(std::time::Duration::from_secs(24 * 3600)),
            audit_ring_size: 500,
            debug_headers: false,
            max_delta_ratio: 0.75,
            max_object_size: 104_857_600,
            cache_mb: 1024,
            metadata_cache_mb: 50,
            codec_concurrency: 16,
            codec_timeout_secs: 60,
            codec: Codec::Xdelta3,
            clock_skew_seconds: 300,
            auth_none: false,
            access_key_id: Some(access_key_id.into()),
            secret_access_key: Some(secret.into()),
            bootstrap_password_hash: None,
            session_ttl_hours: 4,
            trust_proxy_headers: false,
            request_timeout_secs: 300,
            max_concurrent_requests: 1024,
            rate_limit_max_attempts: 100,
            rate_limit_window_secs: 300,
            rate_limit_lockout_secs: 600,
            iam_declarative: false,
            tls: None,
            cors_permissive: false,
            replay_window_secs: 2,
            config_sync_bucket: None,
            config_sync_interval_secs: 30,
            file: FileConfig::default(),
            config_path: None,
        }
    }

    /// The singleton S3 backend from env (`DGP_S3_ENDPOINT`) or the file, if any.
    pub fn default_s3(&self) -> Result<Option<crate::backend::s3::S3BackendConfig>, ProxyError> {
        let st = &self.file.storage;
        let endpoint = env::opt_string("DGP_S3_ENDPOINT")
            .or(st.s3.clone())
            .or_else(|| {
                st.backend
                    .as_ref()
                    .filter(|b| b.kind == "s3")
                    .and_then(|b| b.endpoint.clone())
            });
        let Some(endpoint) = endpoint else {
            return Ok(None);
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ProxyError::Config(
                "DGP_S3_ENDPOINT must start with http:// or https://".into(),
            ));
        }
        let b = st.backend.clone().unwrap_or_default();
        Ok(Some(crate::backend::s3::S3BackendConfig {
            endpoint,
            region: env::opt_string("DGP_S3_REGION")
                .or(st.region.clone())
                .or(b.region)
                .unwrap_or_else(|| "us-east-1".into()),
            path_style: env::bool_or(
                "DGP_S3_PATH_STYLE",
                st.force_path_style.or(b.force_path_style).unwrap_or(true),
            )
            .map_err(cfg_err)?,
            access_key_id: env::opt_string("DGP_BE_AWS_ACCESS_KEY_ID")
                .or(st.access_key_id.clone())
                .or(b.access_key_id)
                .unwrap_or_default(),
            secret_access_key: env::opt_string("DGP_BE_AWS_SECRET_ACCESS_KEY")
                .or(st.secret_access_key.clone())
                .or(b.secret_access_key)
                .unwrap_or_default(),
        }))
    }
}
