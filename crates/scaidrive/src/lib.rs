//! ScaiDrive server library: configuration, database, object store, identity glue, the file
//! tree, uploads, background jobs and the HTTP API. The `scaidrive` binary wires these into
//! its roles (`serve`, `api`, `worker`, `migrate`, `token`, `bench`).

pub mod api;
pub mod auth;
pub mod bench;
pub mod cache;
pub mod config;
pub mod db;
pub mod error;
pub mod fs;
pub mod jobs;
pub mod pubsub;
pub mod ratelimit;
pub mod storage;
pub mod sync;
pub mod upload;

use std::sync::Arc;

use anyhow::Context;
use scai_auth::{EmbeddedIssuer, Verifier, VerifierConfig};

use crate::config::Config;
use crate::db::Db;
use crate::storage::ObjectStore;

/// Everything a request handler needs, shared behind an `Arc`.
pub struct AppState {
    pub cfg: Arc<Config>,
    pub db: Db,
    pub store: Arc<dyn ObjectStore>,
    pub verifier: Arc<Verifier>,
    pub hashers: upload::hasher::Hashers,
    /// The `high`/`medium`/`low` job queues (Redis or in-process).
    pub jobs: Arc<dyn scai_queue::JobQueue>,
    pub notifier: Arc<dyn pubsub::ChangeNotifier>,
    pub rate_limiter: Arc<ratelimit::RateLimit>,
    /// The Redis upload-session cache (production mode only).
    pub cache: Option<Arc<cache::RedisCache>>,
    /// Change fan-out to this process's WebSockets (sync).
    pub hub: Arc<pubsub::Hub>,
    /// Open WebSockets of this process, for the connection limits.
    pub ws: Arc<sync::ws::Registry>,
    /// This process's WebSockets indexed by share; fed by `hub`'s signals.
    pub fanout: Arc<sync::fanout::Fanout>,
}

/// The embedded issuer of this data dir (key created on first use).
pub fn embedded_issuer(cfg: &Config) -> anyhow::Result<EmbeddedIssuer> {
    EmbeddedIssuer::load_or_create(&cfg.data_dir, &cfg.embedded_issuer)
        .with_context(|| format!("embedded signing key in {}", cfg.data_dir.display()))
}

pub async fn open_store(cfg: &Config) -> anyhow::Result<Arc<dyn ObjectStore>> {
    #[cfg(feature = "s3")]
    if let Some(s3) = &cfg.s3 {
        let store = storage::s3::S3Store::connect(s3).await.with_context(|| {
            format!(
                "SCAIDRIVE_S3_ENDPOINT {}: bucket {}",
                s3.endpoint, s3.bucket
            )
        })?;
        return Ok(Arc::new(store));
    }
    #[cfg(not(feature = "s3"))]
    if cfg.s3.is_some() {
        anyhow::bail!(
            "SCAIDRIVE_S3_ENDPOINT is set but this build has no S3 support (feature `s3`)"
        );
    }
    Ok(Arc::new(
        storage::local::LocalStore::new(cfg.chunk_dir()).context("chunk directory")?,
    ))
}

/// Connect to the database and object store, set up identity. Does not migrate.
pub async fn build_state(cfg: Config) -> anyhow::Result<Arc<AppState>> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let db = Db::connect(&cfg.database_url, cfg.db_max_connections)
        .await
        .context("SCAIDRIVE_DATABASE_URL: cannot connect")?;
    let store = open_store(&cfg).await?;
    let embedded = if cfg.embedded_auth {
        Some(Arc::new(embedded_issuer(&cfg)?))
    } else {
        None
    };
    let verifier = Verifier::new(VerifierConfig {
        scaikey_url: cfg.scaikey_url.clone(),
        jwks_url: None,
        issuer: cfg.jwt_issuer.clone(),
        jwks_ttl: cfg.jwks_ttl,
        leeway: cfg.jwt_leeway,
        embedded,
    });
    // Queue and limiter first: a `rediss://` URL makes them install rustls' crypto provider,
    // which the cache's connection then uses.
    let job_queue = jobs::open_queue(&cfg)?;
    let rate_limiter = Arc::new(ratelimit::RateLimit::from_config(&cfg)?);
    let cache = match &cfg.redis_url {
        Some(url) => Some(Arc::new(cache::RedisCache::new(url, &cfg.redis_prefix)?)),
        None => None,
    };
    let hub = match &cfg.redis_url {
        Some(url) => pubsub::Hub::with_redis(url).context("SCAIDRIVE_REDIS_URL")?,
        None => pubsub::Hub::local(),
    };
    let fanout = Arc::new(sync::fanout::Fanout::default());
    if let Some(signals) = hub.take_signals() {
        sync::fanout::spawn(db.clone(), fanout.clone(), signals);
    }
    Ok(Arc::new(AppState {
        cfg: Arc::new(cfg),
        db,
        store,
        verifier: Arc::new(verifier),
        hashers: Default::default(),
        jobs: job_queue,
        notifier: hub.clone(),
        hub,
        ws: Default::default(),
        fanout,
        rate_limiter,
        cache,
    }))
}

/// Refuse to run on a schema that is not exactly the one this binary knows.
pub async fn require_current_schema(db: &Db) -> anyhow::Result<()> {
    let have = db::migrations::current(db).await?;
    let want = db::migrations::latest();
    if have < want {
        anyhow::bail!("database schema is at version {have}, this binary needs {want}: run `scaidrive migrate` first");
    }
    if have > want {
        anyhow::bail!("database schema is at version {have}, newer than this binary knows ({want}): deploy the matching scaidrive version");
    }
    Ok(())
}

/// Serve HTTP on the configured address until a shutdown signal.
pub async fn serve_http(state: Arc<AppState>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(state.cfg.bind)
        .await
        .with_context(|| format!("SCAIDRIVE_BIND: cannot listen on {}", state.cfg.bind))?;
    tracing::info!(event = "server_started", bind = %state.cfg.bind, data_dir = %state.cfg.data_dir.display());
    let app = api::router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(scai_core::shutdown::signal())
        .await?;
    Ok(())
}
