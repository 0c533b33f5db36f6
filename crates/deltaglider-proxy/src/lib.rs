//! DeltaGlider Proxy: an S3-compatible proxy that stores versioned artifacts as deltas
//! against a per-prefix reference, in the DeltaGlider storage format (filesystem with
//! xattrs, or an upstream S3 bucket). This file wires config, backends, the engine, the S3
//! front (s3s) and the `/_/` admin surface into one axum server.

pub mod admin;
pub mod admission;
pub mod audit;
pub mod backend;
pub mod bench;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod config_doc;
pub mod config_store;
pub mod config_sync;
pub mod crypto;
pub mod delta;
pub mod error;
pub mod iam;
pub mod meta;
pub mod multipart;
pub mod oidc;
pub mod replication;
pub mod s3;
pub mod state;
pub mod tls;
pub mod usage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;

use crate::config::Config;
use crate::delta::{Engine, EngineConfig};
use crate::error::ProxyError;
use crate::state::AppState;

/// Builds the shared state (backends, engine, IAM) from the config.
pub async fn build_state(cfg: Config) -> Result<Arc<AppState>, ProxyError> {
    let (backends, default) = backend::build::build_backends(&cfg)?;
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
    let bootstrap = bootstrap::Bootstrap::load(&cfg)?;
    let store_path = cfg.data_dir.join(config_store::FILE);
    if cfg.iam_declarative {
        if store_path.exists() || cfg.data_dir.join(config_store::LEGACY_FILE).exists() {
            tracing::warn!(path = %store_path.display(), "iam_mode: declarative: admin-API IAM changes in the config store are ignored");
        }
    } else {
        let key = config_store::key_for(&bootstrap.hash());
        iam.attach_store(iam::AdminStore::open(store_path, key)?);
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
    let engine = Arc::new(engine);
    let replication = Arc::new(replication::Replicator::new(
        engine.clone(),
        &cfg.file.storage.replication.clone().unwrap_or_default(),
        // Beside the config store: the data dir is local for every backend kind.
        Some(cfg.data_dir.join(replication::STATE_FILE)),
    ));
    let admission = admission::Chain::build(&cfg.file.admission, &cfg.file.storage.buckets)
        .map_err(ProxyError::Config)?;
    Ok(Arc::new(AppState {
        admission: parking_lot::RwLock::new(admission),
        replication,
        audit: audit::AuditRing::new(cfg.audit_ring_size),
        login_limiter: admin::LoginLimiter::default(),
        sigv4_limiter: admin::LoginLimiter::new("SigV4 authentication"),
        stats_cache: parking_lot::Mutex::new(None),
        sessions: admin::Sessions::new(Duration::from_secs(cfg.session_ttl_hours * 3600)),
        engine,
        multipart,
        iam,
        replay: s3::auth::ReplayGuard::new(cfg.replay_window_secs),
        oidc: oidc::Oidc::new(),
        file: parking_lot::RwLock::new(cfg.file.clone()),
        bootstrap,
        cfg,
        started: Instant::now(),
        usage: usage::UsageScans::default(),
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
    // The admission chain runs on S3 requests only, before s3s authenticates them.
    let svc = tower::ServiceBuilder::new()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admission::enforce,
        ))
        .service(svc);
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

/// Histogram buckets the metrics reference gives (other `_seconds` histograms keep the
/// platform default).
const METRIC_BUCKETS: &[(&str, &[f64])] = &[
    (
        "deltaglider_http_request_duration_seconds",
        &[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ],
    ),
    ("deltaglider_http_request_size_bytes", SIZE_BUCKETS),
    ("deltaglider_http_response_size_bytes", SIZE_BUCKETS),
    (
        "deltaglider_delta_compression_ratio",
        &[
            0.01, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
        ],
    ),
    ("deltaglider_delta_encode_duration_seconds", CODEC_BUCKETS),
    ("deltaglider_delta_decode_duration_seconds", CODEC_BUCKETS),
];
const SIZE_BUCKETS: &[f64] = &[
    1024.0,
    10240.0,
    102400.0,
    1048576.0,
    10485760.0,
    104857600.0,
];
const CODEC_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Serves until the process is stopped. One server loop (axum-server) for both plain HTTP
/// and built-in TLS: only the acceptor differs, so the S3 API, admin API and UI share the
/// port and every middleware in either mode.
pub async fn serve(cfg: Config) -> Result<(), ProxyError> {
    scai_core::metrics::install_with_buckets(METRIC_BUCKETS);
    let addr = cfg.listen_addr.clone();
    // The TLS material is checked before anything else starts, so a bad cert fails fast.
    let tls = match &cfg.tls {
        Some(src) => Some(tls::server_config(src, &addr)?),
        None => None,
    };
    config_sync::validate(&cfg)?;
    let state = build_state(cfg).await?;
    config_sync::start(state.clone()).await?;
    state.replication.start();
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
