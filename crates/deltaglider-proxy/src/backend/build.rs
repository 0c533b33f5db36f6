//! Building backends from configuration: the named list (`storage.backends`) or the
//! singleton, each with its encryption mode resolved from YAML plus `DGP_*` env vars
//! (proxy-AES wrapper, native SSE on the S3 client, or none), and the cross-backend rule
//! that one explicit key id never names two different keys. Used at start-up and by the
//! admin API when it adds a backend at runtime.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::fs::FsBackend;
use super::s3::{S3Backend, S3BackendConfig};
use super::sse::NativeSse;
use super::Backend;
use crate::config::{self, BackendSpec, Config, EncryptionSpec};
use crate::crypto::{EncryptedBackend, KeyGen};
use crate::error::ProxyError;

pub type Backends = HashMap<String, Arc<dyn Backend>>;

/// Name of the singleton backend (no `storage.backends` list).
pub const SINGLETON: &str = "default";

/// `NAME` in `DGP_BACKEND_<NAME>_*`: uppercased, with `-` and `.` turned into `_`.
pub fn env_infix(name: &str) -> String {
    name.to_ascii_uppercase().replace(['-', '.'], "_")
}

/// The proxy-AES key and SSE-KMS key-id env vars of a named backend, or of the singleton
/// (`None`): `DGP_ENCRYPTION_KEY` / `DGP_SSE_KMS_KEY_ID`.
pub fn env_vars(named: Option<&str>) -> (String, String) {
    match named {
        None => ("DGP_ENCRYPTION_KEY".into(), "DGP_SSE_KMS_KEY_ID".into()),
        Some(n) => {
            let n = env_infix(n);
            (
                format!("DGP_BACKEND_{n}_ENCRYPTION_KEY"),
                format!("DGP_BACKEND_{n}_SSE_KMS_KEY_ID"),
            )
        }
    }
}

/// A backend's effective encryption.
pub struct Encryption {
    pub mode: String,
    /// Proxy-AES key that encrypts writes (and decrypts its own objects).
    pub current: Option<KeyGen>,
    /// Older generation that only decrypts (`legacy_key` shim), under any mode.
    pub legacy: Option<KeyGen>,
    /// Native SSE asked of the upstream on writes.
    pub sse: Option<NativeSse>,
    /// Keys whose id was set explicitly (`key_id`, `legacy_key_id`).
    pub pinned: Vec<KeyGen>,
}

/// Resolves one backend's encryption. `named` is the backend's name in `storage.backends`
/// (`None` for the singleton, which takes the singleton env vars); `kind` is `s3` or
/// `filesystem`. Without an explicit `mode`, a proxy-AES key selects `aes256-gcm-proxy`
/// and an SSE-KMS key id selects `sse-kms`.
pub fn resolve_encryption(
    named: Option<&str>,
    kind: &str,
    spec: Option<&EncryptionSpec>,
) -> Result<Encryption, ProxyError> {
    let name = named.unwrap_or(SINGLETON);
    let spec = spec.cloned().unwrap_or_default();
    let (key_var, kms_var) = env_vars(named);
    let env_key = scai_core::config::opt_string(&key_var);
    let key_from_file = env_key.is_none() && spec.key.is_some();
    let key = env_key.or(spec.key.clone());
    let kms = scai_core::config::opt_string(&kms_var).or(spec.kms_key_id.clone());
    let mode = match (&spec.mode, key.is_some(), kms.is_some()) {
        (Some(m), _, _) => m.clone(),
        (None, true, true) => {
            return Err(ProxyError::Config(format!(
                "backend {name:?}: both a proxy-AES key ({key_var}) and an SSE-KMS key id ({kms_var}) are set; choose one with encryption.mode"
            )))
        }
        (None, true, false) => "aes256-gcm-proxy".into(),
        (None, false, true) => "sse-kms".into(),
        (None, false, false) => "none".into(),
    };
    config::validate_encryption(
        name,
        kind,
        &EncryptionSpec {
            mode: Some(mode.clone()),
            ..Default::default()
        },
    )?;
    let current = match (mode.as_str(), key) {
        ("aes256-gcm-proxy", Some(k)) => {
            if key_from_file {
                tracing::warn!("backend '{name}' encryption key was loaded from config file (not DGP_*_ENCRYPTION_KEY)");
            }
            Some(KeyGen::parse(name, &k, spec.key_id.as_deref())?)
        }
        ("aes256-gcm-proxy", None) => {
            tracing::warn!(backend = %name, "proxy-AES encryption mode without a key: writes land in plaintext");
            None
        }
        (m, Some(_)) => {
            // Under sse-* writes skip proxy-AES by definition; an older proxy-AES generation
            // stays readable only through the legacy_key shim, which says so explicitly.
            tracing::warn!(backend = %name, mode = %m, "a proxy-AES key ({key_var} or encryption.key) is set but the mode is {m}: it is ignored (set it as legacy_key to keep reading objects it encrypted)");
            None
        }
        (_, None) => None,
    };
    if kms.is_some() && mode != "sse-kms" {
        tracing::warn!(backend = %name, mode = %mode, "an SSE-KMS key id ({kms_var} or encryption.kms_key_id) is set but the mode is {mode}: it is ignored");
    }
    let sse = match mode.as_str() {
        "sse-kms" => Some(NativeSse::Kms {
            key_id: kms,
            bucket_key_enabled: spec.bucket_key_enabled,
        }),
        "sse-s3" => Some(NativeSse::S3),
        _ => None,
    };
    let legacy = match &spec.legacy_key {
        Some(k) => Some(KeyGen::parse(name, k, spec.legacy_key_id.as_deref())?),
        None => None,
    };
    let mut pinned = Vec::new();
    if let (Some(k), Some(_)) = (&current, &spec.key_id) {
        pinned.push(k.clone());
    }
    if let (Some(k), Some(_)) = (&legacy, &spec.legacy_key_id) {
        pinned.push(k.clone());
    }
    Ok(Encryption {
        mode,
        current,
        legacy,
        sse,
        pinned,
    })
}

/// Explicit key ids seen so far: one id must always name the same key bytes, or objects
/// stamped with it would decrypt under one backend and fail (or worse) under another.
#[derive(Default)]
pub struct Pins(Vec<(String, KeyGen)>);

impl Pins {
    pub fn add(&mut self, backend: &str, enc: &Encryption) -> Result<(), ProxyError> {
        for k in &enc.pinned {
            if let Some((other, _)) = self
                .0
                .iter()
                .find(|(_, ok)| ok.id == k.id && !ok.same_key(k))
            {
                return Err(ProxyError::Config(format!(
                    "backends {other} and {backend} share key_id but declare DIFFERENT keys (key_id {:?}): make the ids distinct, or the keys identical",
                    k.id
                )));
            }
            self.0.push((backend.to_string(), k.clone()));
        }
        Ok(())
    }
}

/// Where backends keep spooled uploads, and the metadata cache size of S3 backends.
pub struct BuildCtx {
    pub spool_root: PathBuf,
    pub meta_cache_bytes: u64,
}

impl BuildCtx {
    pub fn from_config(cfg: &Config) -> Self {
        BuildCtx {
            spool_root: cfg.data_dir.join("spool"),
            meta_cache_bytes: cfg.metadata_cache_mb * 1024 * 1024,
        }
    }
}

/// Puts the proxy-AES wrapper around a backend when it has a key or a legacy shim.
fn wrap(be: Arc<dyn Backend>, name: &str, enc: Encryption) -> Arc<dyn Backend> {
    if enc.current.is_none() && enc.legacy.is_none() {
        return be;
    }
    Arc::new(EncryptedBackend {
        inner: be,
        name: name.to_string(),
        current: enc.current,
        legacy: enc.legacy,
    })
}

/// The S3 client settings of a named S3 backend.
pub fn s3_config(b: &BackendSpec) -> Result<S3BackendConfig, ProxyError> {
    let endpoint = b.endpoint.clone().ok_or_else(|| {
        ProxyError::Config(format!("storage.backends.{}: endpoint is required", b.name))
    })?;
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(ProxyError::Config(format!(
            "storage.backends.{}: endpoint must start with http:// or https://",
            b.name
        )));
    }
    Ok(S3BackendConfig {
        endpoint,
        region: b.region.clone().unwrap_or_else(|| "us-east-1".into()),
        path_style: b.force_path_style.unwrap_or(true),
        access_key_id: b.access_key_id.clone().unwrap_or_default(),
        secret_access_key: b.secret_access_key.clone().unwrap_or_default(),
    })
}

/// Builds one named backend, checking its explicit key ids against `pins`.
pub fn build_named(
    b: &BackendSpec,
    ctx: &BuildCtx,
    pins: &mut Pins,
) -> Result<Arc<dyn Backend>, ProxyError> {
    let enc = resolve_encryption(Some(&b.name), &b.kind, b.encryption.as_ref())?;
    pins.add(&b.name, &enc)?;
    let be: Arc<dyn Backend> = match b.kind.as_str() {
        "filesystem" => Arc::new(FsBackend::open(Path::new(
            b.path.as_deref().unwrap_or("./data"),
        ))?),
        "s3" => Arc::new(
            S3Backend::new(
                &s3_config(b)?,
                ctx.spool_root.join(&b.name),
                ctx.meta_cache_bytes,
            )?
            .with_sse(enc.sse.clone()),
        ),
        other => {
            return Err(ProxyError::Config(format!(
                "storage.backends.{}: unknown type {other:?} (expected s3 or filesystem)",
                b.name
            )))
        }
    };
    Ok(wrap(be, &b.name, enc))
}

/// Explicit key ids of every named backend in `specs`, for checking a backend added at
/// runtime against the ones already running.
pub fn pins_of(specs: &[BackendSpec]) -> Result<Pins, ProxyError> {
    let mut pins = Pins::default();
    for b in specs {
        let enc = resolve_encryption(Some(&b.name), &b.kind, b.encryption.as_ref())?;
        pins.add(&b.name, &enc)?;
    }
    Ok(pins)
}

/// Builds the backends named by the config: every entry of `storage.backends`, or (when
/// that list is empty) the singleton: S3 if an endpoint is set, else the filesystem under
/// `DGP_DATA_DIR`. Returns them with the default backend's name.
pub fn build_backends(cfg: &Config) -> Result<(Backends, String), ProxyError> {
    let ctx = BuildCtx::from_config(cfg);
    let mut pins = Pins::default();
    let mut map: Backends = HashMap::new();
    for b in &cfg.file.storage.backends {
        map.insert(b.name.clone(), build_named(b, &ctx, &mut pins)?);
    }
    let default = if map.is_empty() {
        let s3 = cfg.default_s3()?;
        let kind = if s3.is_some() { "s3" } else { "filesystem" };
        let enc = resolve_encryption(None, kind, cfg.file.storage.backend_encryption.as_ref())?;
        pins.add(SINGLETON, &enc)?;
        let be: Arc<dyn Backend> = match s3 {
            Some(s3) => Arc::new(
                S3Backend::new(&s3, ctx.spool_root.join(SINGLETON), ctx.meta_cache_bytes)?
                    .with_sse(enc.sse.clone()),
            ),
            None => Arc::new(FsBackend::open(&cfg.data_dir)?),
        };
        map.insert(SINGLETON.into(), wrap(be, SINGLETON, enc));
        SINGLETON.to_string()
    } else {
        cfg.file
            .storage
            .default_backend
            .clone()
            .unwrap_or_else(|| cfg.file.storage.backends[0].name.clone())
    };
    if !map.contains_key(&default) {
        return Err(ProxyError::Config(format!(
            "storage.default_backend {default:?} is not a configured backend"
        )));
    }
    for (bucket, pol) in &cfg.file.storage.buckets {
        if let Some(b) = &pol.backend {
            if !map.contains_key(b) {
                tracing::warn!(bucket = %bucket, backend = %b, "bucket routes to an unknown backend: the route is ignored and the default backend is used");
            }
        }
    }
    Ok((map, default))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_follow_the_spec() {
        assert_eq!(
            env_vars(Some("eu-west.prod")),
            (
                "DGP_BACKEND_EU_WEST_PROD_ENCRYPTION_KEY".to_string(),
                "DGP_BACKEND_EU_WEST_PROD_SSE_KMS_KEY_ID".to_string()
            )
        );
        assert_eq!(env_vars(None).1, "DGP_SSE_KMS_KEY_ID");
    }

    #[test]
    fn modes_resolve_and_pins_conflict() {
        let spec = |mode: &str, key: Option<&str>, id: Option<&str>| EncryptionSpec {
            mode: Some(mode.into()),
            key: key.map(String::from),
            key_id: id.map(String::from),
            kms_key_id: Some("alias/x".into()),
            bucket_key_enabled: Some(true),
            ..Default::default()
        };
        let kms =
            resolve_encryption(Some("t-a"), "s3", Some(&spec("sse-kms", None, None))).unwrap();
        assert_eq!(
            kms.sse,
            Some(NativeSse::Kms {
                key_id: Some("alias/x".into()),
                bucket_key_enabled: Some(true)
            })
        );
        assert!(kms.current.is_none());
        let err = resolve_encryption(
            Some("t-fs"),
            "filesystem",
            Some(&spec("sse-s3", None, None)),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("t-fs") && err.contains("S3 backends"), "{err}");
        let a = resolve_encryption(
            Some("t-a"),
            "s3",
            Some(&spec(
                "aes256-gcm-proxy",
                Some(&"11".repeat(32)),
                Some("k1"),
            )),
        )
        .unwrap();
        let b = resolve_encryption(
            Some("t-b"),
            "s3",
            Some(&spec(
                "aes256-gcm-proxy",
                Some(&"22".repeat(32)),
                Some("k1"),
            )),
        )
        .unwrap();
        let mut pins = Pins::default();
        pins.add("t-a", &a).unwrap();
        let err = pins.add("t-b", &b).err().unwrap().to_string();
        assert!(
            err.contains("t-a") && err.contains("t-b") && err.contains("k1"),
            "{err}"
        );
    }
}
