//! The application: shared state, authentication (ScaiKey JWT via `scai-auth`, tenants and
//! participants provisioned on first sight), the router, and the server loop.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use parking_lot::Mutex;
use scai_auth::{AuthError, Claims, EmbeddedIssuer, Verifier, VerifierConfig};
use scai_core::metrics::HttpMetricNames;
use scai_ratelimit::{Dimension, Limiter, LimiterConfig, RedisOptions};
use scai_stream::broker::{Broker, InProcess};
use scai_stream::ratelimit::RateLimiter;
use scai_stream::{Delivery, Hub, HubConfig, MetricNames};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::config::{Config, Mode};
use crate::db::{now_ms, Db, EventRow};
use crate::error::{ApiError, ApiResult};
use crate::events::{self, Store};
use crate::{messages, presence, rooms, stream, sync};

pub const METRICS: MetricNames = MetricNames {
    connections: "scaiwave_ws_connections",
    dropped: "scaiwave_ws_messages_dropped_total",
};

const HTTP_METRICS: HttpMetricNames = HttpMetricNames {
    requests_total: "scaiwave_http_requests_total",
    duration_seconds: "scaiwave_http_request_duration_seconds",
};

pub struct App {
    pub cfg: Config,
    pub db: Db,
    pub verifier: Verifier,
    pub hub: Hub<Value>,
    pub limiter: Limits,
    /// Presence across replicas (with `SCAIWAVE_REDIS_URL`).
    pub shared_presence: Option<Arc<crate::shared_presence::SharedPresence>>,
    known: Mutex<HashSet<(String, String)>>,
    pub typing: Mutex<HashMap<(String, String, String), u64>>,
    pub presence: Mutex<HashMap<(String, String), String>>,
}

pub type AppState = Arc<App>;

/// The per-user limit on client-sent events: token buckets in this process, or (with
/// `SCAIWAVE_REDIS_URL`) `scai-ratelimit` counters in Redis that every replica shares.
pub enum Limits {
    Local(RateLimiter),
    /// A sliding window of `burst / rate` seconds admitting `burst` events: the same
    /// sustained rate and burst as the token bucket. Fails open when Redis is down.
    Shared {
        limiter: Limiter,
        limit: u64,
    },
}

impl Limits {
    fn from_config(cfg: &Config) -> anyhow::Result<Limits> {
        let Some(url) = &cfg.redis_url else {
            return Ok(Limits::Local(RateLimiter::new(
                cfg.rate_per_sec,
                cfg.rate_burst,
            )));
        };
        let burst = cfg.rate_burst.max(1);
        // A zero rate means "no refill": a long window keeps the burst as the whole budget.
        let window = if cfg.rate_per_sec > 0.0 {
            Duration::from_secs_f64((f64::from(burst) / cfg.rate_per_sec).clamp(0.001, 86_400.0))
        } else {
            Duration::from_secs(86_400)
        };
        let limiter = Limiter::redis(
            url,
            RedisOptions {
                key_prefix: cfg.redis_key_prefix.clone(),
                ..RedisOptions::default()
            },
            LimiterConfig {
                window,
                metric_prefix: "scaiwave".into(),
            },
        )
        .map_err(|e| anyhow::anyhow!("SCAIWAVE_REDIS_URL: {e}"))?;
        Ok(Limits::Shared {
            limiter,
            limit: u64::from(burst),
        })
    }

    /// Take one event from `tenant/user`'s budget.
    pub async fn check(&self, tenant: &str, user: &str) -> ApiResult<()> {
        let key = format!("{tenant}/{user}");
        match self {
            Limits::Local(rl) => rl
                .check(&key)
                .map_err(|d| ApiError::RateLimited(d.as_millis() as u64)),
            Limits::Shared { limiter, limit } => {
                let d = limiter.check(&[(Dimension::User, &key, *limit)], 1).await;
                if d.allowed {
                    Ok(())
                } else {
                    Err(ApiError::RateLimited(d.retry_after_secs.max(1) * 1000))
                }
            }
        }
    }
}

/// The authenticated caller: tenant and participant ids come from the token.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub tenant: String,
    pub user: String,
    pub claims: Claims,
}

impl App {
    pub async fn build(cfg: Config) -> anyhow::Result<AppState> {
        let db = Db::connect(&cfg.database_url).await?;
        db.migrate().await?;
        let embedded = if cfg.embedded_auth {
            std::fs::create_dir_all(&cfg.data_dir)?;
            Some(Arc::new(EmbeddedIssuer::load_or_create(
                &cfg.data_dir,
                &format!("scaiwave-embedded:{}", cfg.server_name),
            )?))
        } else {
            None
        };
        if embedded.is_none() && cfg.scaikey_url.is_none() {
            anyhow::bail!("SCAIWAVE_SCAIKEY_URL is required when SCAIWAVE_EMBEDDED_AUTH is off");
        }
        let verifier = Verifier::new(VerifierConfig {
            scaikey_url: cfg.scaikey_url.clone(),
            jwks_url: cfg.jwks_url.clone(),
            issuer: cfg.scaikey_issuer.clone(),
            embedded,
            ..VerifierConfig::default()
        });
        let broker: Arc<dyn Broker<Value>> = match (&cfg.nats_url, cfg.mode) {
            (Some(url), _) => Arc::new(
                scai_stream::broker::nats::NatsBroker::connect(
                    url,
                    &cfg.nats_stream,
                    &cfg.nats_subject_prefix,
                    Duration::from_secs(3600),
                )
                .await
                .map_err(|e| anyhow::anyhow!("SCAIWAVE_NATS_URL: {e}"))?,
            ),
            (None, Mode::Embedded) => Arc::new(InProcess::default()),
            (None, Mode::Production) => anyhow::bail!(
                "SCAIWAVE_NATS_URL is required for `api` (replicas fan out through NATS JetStream)"
            ),
        };
        let hub = Hub::start(
            HubConfig {
                gap_timeout: cfg.gap_timeout,
                queue_capacity: cfg.queue_capacity,
                metrics: METRICS,
            },
            Arc::new(Store { db: db.clone() }),
            broker,
        )
        .await?;
        let shared_presence = match &cfg.redis_url {
            None => None,
            Some(url) => {
                let ttl = (cfg.ping_interval * 3).max(Duration::from_secs(1));
                match crate::shared_presence::SharedPresence::connect(
                    url,
                    &cfg.redis_key_prefix,
                    ttl,
                )
                .await
                {
                    Ok(sp) => {
                        let sp = Arc::new(sp);
                        let (weak, every) = (Arc::downgrade(&sp), cfg.ping_interval);
                        tokio::spawn(async move {
                            let mut tick = tokio::time::interval(every);
                            loop {
                                tick.tick().await;
                                let Some(sp) = weak.upgrade() else { break };
                                sp.refresh().await;
                            }
                        });
                        Some(sp)
                    }
                    Err(e) => {
                        tracing::warn!(event = "presence.shared_unavailable", error = %e, "presence.shared_unavailable: presence stays per replica");
                        None
                    }
                }
            }
        };
        Ok(Arc::new(App {
            limiter: Limits::from_config(&cfg)?,
            shared_presence,
            cfg,
            db,
            verifier,
            hub,
            known: Mutex::new(HashSet::new()),
            typing: Mutex::new(HashMap::new()),
            presence: Mutex::new(HashMap::new()),
        }))
    }

    /// Verify a token and provision its tenant and participant on first sight.
    pub async fn authenticate(&self, token: &str) -> ApiResult<Ctx> {
        let claims = self.verifier.verify(token).await.map_err(|e| match e {
            AuthError::Expired => ApiError::ExpiredToken,
            AuthError::KeysUnavailable(m) => ApiError::Unavailable(m),
            other => ApiError::InvalidToken(other.to_string()),
        })?;
        let tenant = claims
            .tenant_id
            .clone()
            .ok_or_else(|| ApiError::InvalidToken("token has no tenant_id".into()))?;
        let user = claims.sub.clone();
        if user.is_empty() || user.len() > 80 || tenant.len() > 80 {
            return Err(ApiError::InvalidToken(
                "token sub or tenant_id is unusable".into(),
            ));
        }
        let key = (tenant.clone(), user.clone());
        if !self.known.lock().contains(&key) {
            self.provision(&tenant, &user, &claims).await?;
            self.known.lock().insert(key);
        }
        Ok(Ctx {
            tenant,
            user,
            claims,
        })
    }

    async fn provision(&self, tenant: &str, user: &str, claims: &Claims) -> ApiResult<()> {
        let now = now_ms();
        let ins = self.db.insert_ignore();
        sqlx::query(&format!(
            "{ins} INTO sw_tenants (id, last_position, created_at) VALUES (?, 0, ?)"
        ))
        .bind(tenant)
        .bind(now)
        .execute(&self.db.pool)
        .await?;
        let local = claims
            .email
            .as_deref()
            .and_then(|e| e.split('@').next())
            .unwrap_or(user.strip_prefix("usr_").unwrap_or(user))
            .to_string();
        sqlx::query(&format!("{ins} INTO sw_participants (tenant_id, id, local_id, display_name, email, created_at) VALUES (?, ?, ?, ?, ?, ?)"))
            .bind(tenant)
            .bind(user)
            .bind(&local)
            .bind(claims.display_name().map(str::to_string))
            .bind(claims.email.clone())
            .bind(now)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Fan a committed event out to every replica.
    pub async fn emit(&self, e: &EventRow) {
        let members = match events::joined(&self.db, &e.tenant_id, &e.room_id).await {
            Ok(m) => m,
            Err(err) => {
                // Sessions still get it: the hub fills the gap from the store.
                tracing::warn!(event = "ws.fanout_failed", tenant = %e.tenant_id, error = %err, "ws.fanout_failed");
                return;
            }
        };
        self.hub
            .publish(Delivery {
                tenant: e.tenant_id.clone(),
                position: Some(e.stream_position as u64),
                audience: events::audience_for(e, &members),
                payload: events::wire(e),
            })
            .await;
    }

    /// The per-user rate limit every client-sent event passes.
    pub async fn rate_check(&self, ctx: &Ctx) -> ApiResult<()> {
        self.limiter.check(&ctx.tenant, &ctx.user).await
    }
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Ctx, ApiError> {
        let token = scai_auth::bearer_token(&parts.headers)
            .ok_or_else(|| ApiError::InvalidToken("missing bearer token".into()))?;
        app.authenticate(token).await
    }
}

/// JSON bodies whose rejections use the error envelope.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) => Err(ApiError::Invalid(e.body_text())),
        }
    }
}

pub fn ok(data: Value) -> Response {
    Json(json!({ "data": data })).into_response()
}

async fn health(State(app): State<AppState>) -> Response {
    let db = app.db.clone();
    let hub = app.hub.clone();
    let (all, checks) = scai_core::health::run(
        vec![
            scai_core::health::Check::new("database", async move { db.ping().await }),
            scai_core::health::Check::new(
                if app.cfg.nats_url.is_some() {
                    "nats"
                } else {
                    "broker"
                },
                async move { hub.broker().healthy().await },
            ),
        ],
        Duration::from_secs(3),
    )
    .await;
    let mut c = serde_json::Map::new();
    for (k, v) in checks {
        c.insert(k.to_string(), json!(if v { "ok" } else { "error" }));
    }
    c.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
    let status = if all {
        http::StatusCode::OK
    } else {
        http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"status": if all {"ok"} else {"error"}, "checks": c})),
    )
        .into_response()
}

async fn register(State(app): State<AppState>, ctx: Ctx) -> ApiResult<Response> {
    let row =
        sqlx::query("SELECT display_name FROM sw_participants WHERE tenant_id = ? AND id = ?")
            .bind(&ctx.tenant)
            .bind(&ctx.user)
            .fetch_optional(&app.db.pool)
            .await?;
    let name: Option<String> = match row {
        Some(r) => crate::db::text(&r, 0)?,
        None => None,
    };
    Ok(ok(
        json!({"participant_id": ctx.user, "tenant_id": ctx.tenant, "display_name": name}),
    ))
}

async fn auth_config(State(app): State<AppState>) -> Response {
    ok(json!({
        "issuer": app.cfg.scaikey_issuer.clone().or(app.cfg.scaikey_url.clone()),
        "authorization_endpoint": null,
        "token_endpoint": null,
        "scopes_supported": ["openid", "profile", "email", "groups"],
        "redirect_uri": null,
        "embedded": app.cfg.embedded_auth,
    }))
}

async fn not_found() -> ApiError {
    ApiError::Invalid("no such endpoint".into())
}

pub fn router(app: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(scai_core::metrics::metrics_handler))
        .route("/v1/auth/config", get(auth_config))
        .route("/v1/auth/register", post(register))
        .route("/v1/stream", get(stream::stream))
        .route("/v1/sync", get(sync::sync))
        .route("/v1/typing", put(presence::typing))
        .route(
            "/v1/presence",
            get(presence::get_presence).put(presence::set_presence),
        )
        .route("/v1/directory/rooms", get(rooms::directory))
        .route("/v1/rooms", post(rooms::create))
        .route("/v1/rooms/dm", post(rooms::create_dm))
        .route("/v1/rooms/{room_id}", get(rooms::get_room))
        .route("/v1/rooms/{room_id}/members", get(rooms::members))
        .route("/v1/rooms/{room_id}/join", post(rooms::join))
        .route("/v1/rooms/{room_id}/leave", post(rooms::leave))
        .route("/v1/rooms/{room_id}/invite", post(rooms::invite))
        .route("/v1/rooms/{room_id}/kick", post(rooms::kick))
        .route("/v1/rooms/{room_id}/ban", post(rooms::ban))
        .route("/v1/rooms/{room_id}/name", put(rooms::set_name))
        .route("/v1/rooms/{room_id}/topic", put(rooms::set_topic))
        .route("/v1/rooms/{room_id}/power_levels", put(rooms::set_power))
        .route("/v1/rooms/{room_id}/messages", get(messages::history))
        .route("/v1/rooms/{room_id}/send", post(messages::send))
        .route(
            "/v1/rooms/{room_id}/read_marker",
            post(messages::read_marker),
        )
        .route(
            "/v1/rooms/{room_id}/events/{event_id}",
            get(messages::get_event),
        )
        .route(
            "/v1/rooms/{room_id}/events/{event_id}/edit",
            post(messages::edit),
        )
        .route(
            "/v1/rooms/{room_id}/events/{event_id}/redact",
            post(messages::redact),
        )
        .route(
            "/v1/rooms/{room_id}/events/{event_id}/reaction",
            post(messages::react),
        )
        .route(
            "/v1/rooms/{room_id}/events/{event_id}/reaction",
            delete(messages::unreact),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn(move |req, next| {
            scai_core::metrics::http_layer(HTTP_METRICS, req, next)
        }))
        .layer(axum::middleware::from_fn(scai_core::request_id::layer))
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .with_state(app)
}

pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    scai_core::metrics::install();
    metrics::gauge!("scaiwave_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let bind = cfg.bind;
    let app = App::build(cfg).await?;
    let listener = tokio::net::TcpListener::bind(bind).await?;
    tracing::info!(addr = %listener.local_addr()?, "scaiwave listening");
    axum::serve(listener, router(app))
        .with_graceful_shutdown(scai_core::shutdown::signal())
        .await?;
    Ok(())
}
