//! DeltaGlider Proxy: an S3-compatible proxy that stores versioned artifacts as deltas
//! against a per-prefix reference, in the DeltaGlider storage format (filesystem with
//! xattrs, or an upstream S3 bucket). This file wires config, backends, the engine, the S3
//! front (s3s) and the `/_/` admin surface into one axum server.

pub mod admin;
pub mod audit;
pub mod backend;
pub mod bench;
pub mod config;
pub mod config_sync;
pub mod crypto;
pub mod delta;
pub mod error;
pub mod iam;
pub mod meta;
pub mod multipart;
pub mod s3;
pub mod state;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;

use crate::backend::fs::FsBackend;
use crate::backend::s3::{S3Backend, S3BackendConfig};
use crate::backend::Backend;
use crate::config::Config;
use crate::delta::{Engine, EngineConfig};
use crate::error::ProxyError;
use crate::state::AppState;

/// Builds the backends named by the config: the default (S3 if an endpoint is set, else the
/// filesystem under `DGP_DATA_DIR`) plus every entry of `storage.backends`.
type Backends = HashMap<String, Arc<dyn Backend>>;

fn build_backends(cfg: &Config) -> Result<(Backends, String), ProxyError> {
    let mut map: HashMap<String, Arc<dyn Backend>> = HashMap::new();
    let spool = cfg.data_dir.join("spool");
    for b in &cfg.file.storage.backends {
        let be: Arc<dyn Backend> = match b.kind.as_str() {
            "filesystem" => Arc::new(FsBackend::open(std::path::Path::new(
                b.path.as_deref().unwrap_or("./data"),
            ))?),
            "s3" => {
                let endpoint = b.endpoint.clone().ok_or_else(|| {
                    ProxyError::Config(format!("storage.backends.{}: endpoint is required", b.name))
                })?;
                Arc::new(S3Backend::new(
                    &S3BackendConfig {
                        endpoint,
                        region: b.region.clone().unwrap_or_else(|| "us-east-1".into()),
                        path_style: b.force_path_style.unwrap_or(true),
                        access_key_id: b.access_key_id.clone().unwrap_or_default(),
                        secret_access_key: b.secret_access_key.clone().unwrap_or_default(),
                    },
                    spool.join(&b.name),
                    cfg.metadata_cache_mb * 1024 * 1024,
                )?)
            }
            other => {
                return Err(ProxyError::Config(format!(
                    "storage.backends.{}: unknown type {other:?}",
                    b.name
                )))
            }
        };
        map.insert(b.name.clone(), be);
    }
    // Two backends pinning the same key id must hold the same key bytes.
    let mut pinned = Vec::new();
    for b in &cfg.file.storage.backends {
        if let Some(be) = map.remove(&b.name) {
            map.insert(
                b.name.clone(),
                wrap_encryption(be, &b.name, b.encryption.as_ref(), &mut pinned)?,
            );
        }
    }
    let default = if map.is_empty() {
        let be: Arc<dyn Backend> = match cfg.default_s3()? {
            Some(s3) => Arc::new(S3Backend::new(
                &s3,
                spool.join("default"),
                cfg.metadata_cache_mb * 1024 * 1024,
            )?),
            None => Arc::new(FsBackend::open(&cfg.data_dir)?),
        };
        let be = wrap_encryption(
            be,
            "default",
            cfg.file.storage.backend_encryption.as_ref(),
            &mut pinned,
        )?;
        map.insert("default".into(), be);
        "default".to_string()
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
                tracing::warn!(bucket = %bucket, backend = %b, "bucket routes to an unknown backend; the default backend is used");
            }
        }
    }
    Ok((map, default))
}

/// Env name of a backend's key: `DGP_BACKEND_<NAME>_ENCRYPTION_KEY` (the singleton uses
/// `DGP_ENCRYPTION_KEY`).
fn key_env(name: &str) -> String {
    if name == "default" {
        "DGP_ENCRYPTION_KEY".into()
    } else {
        format!(
            "DGP_BACKEND_{}_ENCRYPTION_KEY",
            name.to_ascii_uppercase().replace(['-', '.'], "_")
        )
    }
}

/// Wraps a backend in proxy-side AES-256-GCM when it has a key (env first, then YAML).
fn wrap_encryption(
    be: Arc<dyn Backend>,
    name: &str,
    spec: Option<&config::EncryptionSpec>,
    pinned: &mut Vec<(String, crypto::KeyGen)>,
) -> Result<Arc<dyn Backend>, ProxyError> {
    let var = key_env(name);
    let env_key = scai_core::config::opt_string(&var);
    let spec = spec.cloned().unwrap_or_default();
    let mode = spec.mode.clone().unwrap_or_else(|| {
        if env_key.is_some() {
            "aes256-gcm-proxy".into()
        } else {
            "none".into()
        }
    });
    match mode.as_str() {
        "none" | "aes256-gcm-proxy" => {}
        "sse-kms" | "sse-s3" if be.kind() == "filesystem" => {
            return Err(ProxyError::Config(format!(
                "backend {name:?}: {mode} works only on S3 backends"
            )))
        }
        other => {
            return Err(ProxyError::Config(format!(
                "backend {name:?}: encryption mode {other:?} is not supported by this proxy"
            )))
        }
    }
    let key = if mode == "aes256-gcm-proxy" {
        match (env_key, spec.key.clone()) {
            (Some(k), _) => Some(crypto::KeyGen::parse(name, &k, spec.key_id.as_deref())?),
            (None, Some(k)) => {
                tracing::warn!("backend '{name}' encryption key was loaded from config file (not DGP_*_ENCRYPTION_KEY)");
                Some(crypto::KeyGen::parse(name, &k, spec.key_id.as_deref())?)
            }
            (None, None) => {
                tracing::warn!(backend = %name, "proxy-AES encryption mode without a key: writes land in plaintext");
                None
            }
        }
    } else {
        None
    };
    let legacy = match &spec.legacy_key {
        Some(k) => Some(crypto::KeyGen::parse(
            name,
            k,
            spec.legacy_key_id.as_deref(),
        )?),
        None => None,
    };
    if let (Some(k), Some(_)) = (&key, &spec.key_id) {
        for (other, ok) in pinned.iter() {
            if ok.id == k.id && !ok.same_key(k) {
                return Err(ProxyError::Config(format!(
                    "backends {other} and {name} share key_id but declare DIFFERENT keys"
                )));
            }
        }
        pinned.push((name.to_string(), k.clone()));
    }
    if key.is_none() && legacy.is_none() {
        return Ok(be);
    }
    Ok(Arc::new(crypto::EncryptedBackend {
        inner: be,
        name: name.to_string(),
        current: key,
        legacy,
    }))
}

/// Builds the shared state (backends, engine, IAM) from the config.
pub async fn build_state(cfg: Config) -> Result<Arc<AppState>, ProxyError> {
    let (backends, default) = build_backends(&cfg)?;
    if cfg.cache_mb < 1024 {
        tracing::warn!(
            "[cache] In-memory reference cache is only {} MB — recommend ≥1024 MB for production",
            cfg.cache_mb
        );
    }
    if cfg.codec == meta::Codec::Xdelta3 {
        if let Err(e) = delta::codec::probe_xdelta3().await {
            tracing::warn!(error = %e, "xdelta3 is not usable: delta-eligible uploads will fail until it is installed");
        }
    }
    let engine = Engine::new(
        backends,
        default,
        cfg.file.storage.buckets.clone(),
        EngineConfig {
            max_delta_ratio: cfg.max_delta_ratio,
            max_object_size: cfg.max_object_size,
            cache_bytes: cfg.cache_mb * 1024 * 1024,
            codec_concurrency: cfg.codec_concurrency,
            codec_timeout: Duration::from_secs(cfg.codec_timeout_secs),
            codec: cfg.codec,
        },
    );
    let mut users = cfg.file.access.iam_users.clone();
    if let (Some(k), Some(s)) = (&cfg.access_key_id, &cfg.secret_access_key) {
        users.push(iam::bootstrap_user(k, s));
    }
    let mut iam = iam::Iam::new(users, cfg.file.access.iam_groups.clone());
    let iam_path = cfg.data_dir.join("iam.json");
    if cfg.iam_declarative {
        if iam_path.exists() {
            tracing::warn!(path = %iam_path.display(), "iam_mode: declarative: admin-API IAM changes in this file are ignored");
        }
    } else {
        iam.attach_store(iam::AdminStore::open(iam_path)?);
    }
    // Staging stays on local disk for every backend kind (see multipart.rs): parts must be
    // fsynced before they are acknowledged, and uploads in flight survive a restart.
    let multipart = Arc::new(multipart::Multipart::open(
        cfg.data_dir.join("multipart"),
        cfg.max_multipart_uploads,
        cfg.max_total_multipart_bytes,
    )?);
    metrics::gauge!("deltaglider_build_info", "version" => env!("CARGO_PKG_VERSION"), "backend_type" => engine.backend_kind(), "build_time" => config::BUILD_TIME).set(1.0);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        build_time = config::BUILD_TIME,
        "deltaglider-proxy starting"
    );
    metrics::gauge!("process_start_time_seconds").set(chrono::Utc::now().timestamp() as f64);
    Ok(Arc::new(AppState {
        audit: audit::AuditRing::new(cfg.audit_ring_size),
        login_limiter: admin::LoginLimiter::default(),
        sessions: admin::Sessions::new(Duration::from_secs(cfg.session_ttl_hours * 3600)),
        engine: Arc::new(engine),
        multipart,
        iam,
        replay: s3::auth::ReplayGuard::new(cfg.replay_window_secs),
        file: parking_lot::RwLock::new(cfg.file.clone()),
        cfg,
        started: Instant::now(),
    }))
}

/// The `operation` label: from method and path shape only (never a bucket or key).
fn operation(method: &http::Method, path: &str) -> &'static str {
    if let Some(rest) = path.strip_prefix("/_/") {
        return match rest {
            "health" => "health",
            "stats" => "stats",
            "metrics" => "metrics",
            _ => "admin",
        };
    }
    let trimmed = path.trim_start_matches('/');
    let (bucket, key) = match trimmed.split_once('/') {
        Some((b, k)) => (b, k),
        None => (trimmed, ""),
    };
    use http::Method as M;
    match (bucket.is_empty(), key.is_empty(), method) {
        (true, _, &M::HEAD) => "head_root",
        (true, _, _) => "list_buckets",
        (false, true, &M::GET) => "list_objects",
        (false, true, &M::PUT) => "create_bucket",
        (false, true, &M::DELETE) => "delete_bucket",
        (false, true, &M::HEAD) => "head_bucket",
        (false, true, _) => "post_bucket",
        (false, false, &M::GET) => "get_object",
        (false, false, &M::PUT) => "put_object",
        (false, false, &M::DELETE) => "delete_object",
        (false, false, &M::HEAD) => "head_object",
        (false, false, _) => "post_object",
    }
}

/// HTTP metrics under the spec's names, plus auth-failure reasons that only show in the
/// S3 error code of a 403 (bad signature, skewed clock).
async fn http_metrics(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let op = if s3::post_object::is_form_upload(&method, req.uri().path(), req.headers()) {
        "post_object"
    } else {
        operation(&method, req.uri().path())
    };
    let presigned = req
        .uri()
        .query()
        .is_some_and(|q| q.contains("X-Amz-Signature"));
    let req_size = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<f64>().ok());
    let resp = next.run(req).await;
    let status = resp.status();
    let resp = if status == http::StatusCode::FORBIDDEN && !op.starts_with("admin") {
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, 64 * 1024)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        if text.contains("<Code>SignatureDoesNotMatch</Code>")
            || text.contains("<Code>RequestTimeTooSkewed</Code>")
        {
            let reason = if presigned {
                "invalid_presigned"
            } else {
                "invalid_signature"
            };
            metrics::counter!("deltaglider_auth_failures_total", "reason" => reason).increment(1);
            metrics::counter!("deltaglider_auth_attempts_total", "result" => "failure")
                .increment(1);
        }
        Response::from_parts(parts, axum::body::Body::from(bytes))
    } else {
        resp
    };
    let m = method.as_str().to_string();
    metrics::counter!("deltaglider_http_requests_total", "method" => m.clone(), "status" => status.as_u16().to_string(), "operation" => op).increment(1);
    metrics::histogram!("deltaglider_http_request_duration_seconds", "method" => m.clone(), "operation" => op).record(start.elapsed().as_secs_f64());
    if let Some(sz) = req_size {
        metrics::histogram!("deltaglider_http_request_size_bytes", "method" => m.clone())
            .record(sz);
    }
    if let Some(sz) = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<f64>().ok())
    {
        metrics::histogram!("deltaglider_http_response_size_bytes", "method" => m).record(sz);
    }
    resp
}

/// `DGP_MAX_CONCURRENT_REQUESTS` (excess requests queue) and `DGP_REQUEST_TIMEOUT_SECS`
/// (exceeding it answers 504 with an S3 XML error).
async fn limits(
    axum::extract::State((sem, timeout)): axum::extract::State<(
        Arc<tokio::sync::Semaphore>,
        Duration,
    )>,
    req: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = sem.acquire_owned().await else {
        return Response::new(axum::body::Body::empty());
    };
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            let mut r = Response::new(axum::body::Body::from(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>RequestTimeout</Code><Message>request exceeded DGP_REQUEST_TIMEOUT_SECS</Message></Error>",
            ));
            *r.status_mut() = http::StatusCode::GATEWAY_TIMEOUT;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/xml"),
            );
            r
        }
    }
}

/// Replay bookkeeping around each request: a write that fails (4xx/5xx, e.g. SlowDown)
/// releases the signature it recorded, so only a replay of an accepted request is refused.
async fn replay_ticket(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let ticket = s3::auth::ReplayTicket::default();
    req.extensions_mut().insert(ticket.clone());
    let resp = next.run(req).await;
    if resp.status().is_client_error() || resp.status().is_server_error() {
        if let Some(sig) = ticket.0.lock().take() {
            state.replay.release(&sig);
        }
    }
    resp
}

async fn handle_s3_error(err: s3s::HttpError) -> Response {
    tracing::error!(?err, "S3 service error");
    let mut r = Response::new(axum::body::Body::from("Internal Server Error"));
    *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    r
}

/// The full router: `/_/` admin surface, everything else to the S3 service.
pub fn router(state: Arc<AppState>) -> Router {
    let proxy = s3::Proxy::new(state.clone());
    let mut b = s3s::service::S3ServiceBuilder::new(proxy);
    b.set_auth(s3::auth::Auth(state.clone()));
    b.set_access(s3::auth::Access(state.clone()));
    let mut s3cfg = s3s::config::S3Config::default();
    s3cfg.presigned_url_max_skew_time_secs = state.cfg.clock_skew_seconds;
    // s3s holds a PostObject file in memory before the handler runs: bound it by the
    // object size limit rather than its 5 GiB default.
    s3cfg.post_object_max_file_size = state.cfg.max_object_size;
    b.set_config(Arc::new(s3s::config::StaticConfigProvider::new(Arc::new(
        s3cfg,
    ))));
    let svc = axum::error_handling::HandleError::new(b.build(), handle_s3_error);
    let lim = (
        Arc::new(tokio::sync::Semaphore::new(
            state.cfg.max_concurrent_requests,
        )),
        Duration::from_secs(state.cfg.request_timeout_secs.max(1)),
    );
    let cors_permissive = state.cfg.cors_permissive;
    let app = admin::router(state.clone())
        .fallback_service(svc)
        .layer(axum::middleware::from_fn(s3::edge::layer))
        .layer(axum::middleware::from_fn_with_state(state, replay_ticket))
        .layer(axum::middleware::from_fn_with_state(lim, limits))
        .layer(axum::middleware::from_fn(http_metrics))
        .layer(axum::middleware::from_fn(scai_core::request_id::layer));
    if cors_permissive {
        // Outermost, so preflights are answered before auth (a browser never signs an
        // OPTIONS) and every response, errors included, carries the CORS headers.
        tracing::warn!(
            "DGP_CORS_PERMISSIVE: any origin may call the S3 and admin APIs (development only)"
        );
        app.layer(tower_http::cors::CorsLayer::permissive())
    } else {
        app
    }
}

/// Serves until the process is stopped. One server loop (axum-server) for both plain HTTP
/// and built-in TLS: only the acceptor differs, so the S3 API, admin API and UI share the
/// port and every middleware in either mode.
pub async fn serve(cfg: Config) -> Result<(), ProxyError> {
    scai_core::metrics::install();
    let addr = cfg.listen_addr.clone();
    // The TLS material is checked before anything else starts, so a bad cert fails fast.
    let tls = match &cfg.tls {
        Some(src) => Some(tls::server_config(src, &addr)?),
        None => None,
    };
    config_sync::validate(&cfg)?;
    let state = build_state(cfg).await?;
    config_sync::start(state.clone()).await?;
    if let Some(ttl) = state.cfg.multipart_idle_ttl {
        tokio::spawn(state.multipart.clone().run_sweeper(ttl));
    }
    let app = router(state);
    let listener = std::net::TcpListener::bind(&addr)
        .map_err(|e| ProxyError::Startup(format!("DGP_LISTEN_ADDR {addr}: {e}")))?;
    let server = axum_server::from_tcp(listener)
        .map_err(|e| ProxyError::Startup(format!("DGP_LISTEN_ADDR {addr}: {e}")))?;
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        h.graceful_shutdown(None);
    });
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %addr, scheme, "deltaglider proxy listening");
    let make = app.into_make_service_with_connect_info::<SocketAddr>();
    let served = match tls {
        Some(sc) => {
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(
                axum_server::tls_rustls::RustlsConfig::from_config(sc),
            );
            server.acceptor(acceptor).handle(handle).serve(make).await
        }
        None => server.handle(handle).serve(make).await,
    };
    served.map_err(|e| ProxyError::Startup(e.to_string()))
}
