//! `GET /v1/stream?token=` (WebSocket): authenticates, sends the hello frame, then runs a
//! `scai_stream` session (events in position order, pings, 4001/4003 closes). An optional
//! `since=<stream_position>` makes the server replay what the caller missed before going
//! live, so a reconnecting client needs no separate sync round-trip.

use std::time::UNIX_EPOCH;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use scai_stream::session::{self, SessionOptions, CLOSE_AUTH_INVALID};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::error::ApiError;
use crate::events::iso;
use crate::presence::publish_presence;

#[derive(Deserialize)]
pub struct StreamQuery {
    token: Option<String>,
    since: Option<String>,
}

pub async fn stream(
    State(app): State<AppState>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let since = match q.since.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match s.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => {
                return ApiError::Invalid("since must be a stream position".into()).into_response()
            }
        },
    };
    let token = q
        .token
        .or_else(|| scai_auth::bearer_token(&headers).map(str::to_string))
        .unwrap_or_default();
    // Reduce the outcome to what the session needs before the upgrade: the spawned
    // connection task keeps its captured values for its whole life, so the claim set and
    // the error must not be among them.
    let auth: Result<(String, String, i64), (u16, &'static str)> = match app
        .authenticate(&token)
        .await
    {
        Ok(ctx) => Ok((ctx.tenant, ctx.user, ctx.claims.exp)),
        Err(e) => {
            // The token itself stays out of the logs (it is in the URL).
            tracing::info!(event = "ws.disconnect", reason = "auth_failed", error = %e, "ws.disconnect");
            Err(match e {
                ApiError::Unavailable(_) => (1013, "SW_SERVICE_UNAVAILABLE"),
                _ => (CLOSE_AUTH_INVALID, "SW_AUTH_INVALID_TOKEN"),
            })
        }
    };
    let ws = ws
        .read_buffer_size(256)
        .write_buffer_size(0)
        .max_message_size(64 * 1024)
        .max_frame_size(64 * 1024);
    // Only a digest of the token lives on with the session (duplicate detection).
    let conn_key = hex::encode(&Sha256::digest(token.as_bytes())[..16]);
    drop(token);
    ws.on_upgrade(move |socket| async move {
        let (tenant, user, exp) = match auth {
            Ok(a) => a,
            Err((code, reason)) => {
                session::close(socket, code, reason).await;
                return;
            }
        };
        let session_id = uuid::Uuid::new_v4().to_string();
        let hello = json!({
            "type": "hello",
            "session_id": session_id,
            "server_name": app.cfg.server_name,
            "tenant_id": tenant,
            "participant_id": user,
            "ts": iso(crate::db::now_ms()),
        })
        .to_string();
        let was_online = app.hub.online_users(&tenant).contains(&user);
        // Boxed: the idle connection's task should not carry the size of these futures.
        if !was_online {
            if let Some(sp) = &app.shared_presence {
                Box::pin(sp.online(&tenant, &user)).await;
            }
            Box::pin(publish_presence(&app, &tenant, &user, "online")).await;
        }
        let opts = SessionOptions {
            session_id,
            tenant: tenant.clone(),
            user: user.clone(),
            conn_key,
            hello,
            since,
            expires_at: u64::try_from(exp)
                .ok()
                .map(|s| UNIX_EPOCH + std::time::Duration::from_secs(s)),
            ping_interval: app.cfg.ping_interval,
            pong_timeout: app.cfg.pong_timeout,
            expired_reason: "SW_AUTH_EXPIRED_TOKEN",
        };
        let frame_app = app.clone();
        let (f_tenant, f_user) = (tenant.clone(), user.clone());
        let run = session::run(socket, app.hub.clone(), opts, move |text| {
            let (app, tenant, user) = (frame_app.clone(), f_tenant.clone(), f_user.clone());
            // Boxed so every idle session carries only a pointer for it.
            Box::pin(async move {
                Some(
                    client_frame(&app, &tenant, &user, text.as_str())
                        .await
                        .to_string(),
                )
            })
                as std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send>>
        });
        tracing::debug!(
            bytes = std::mem::size_of_val(&run),
            "ws session future size"
        );
        run.await;
        if !app.hub.online_users(&tenant).contains(&user) {
            if let Some(sp) = &app.shared_presence {
                Box::pin(sp.offline(&tenant, &user)).await;
            }
            Box::pin(publish_presence(&app, &tenant, &user, "offline")).await;
        }
    })
}

/// Client frames: every one passes the per-user rate limit; `{"type":"ping"}` is answered
/// with `{"type":"pong"}`; everything else is refused (actions go over REST).
async fn client_frame(app: &AppState, tenant: &str, user: &str, text: &str) -> Value {
    if let Err(e) = app.limiter.check(tenant, user).await {
        let retry = match e {
            ApiError::RateLimited(ms) => ms,
            _ => 1000,
        };
        return json!({"type": "error", "error": {"code": "SW_RATE_LIMIT_EXCEEDED", "message": "rate limit exceeded", "retry_after_ms": retry}});
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v) if v.get("type").and_then(Value::as_str) == Some("ping") => {
            json!({"type": "pong", "nonce": v.get("nonce").cloned().unwrap_or(Value::Null), "ts": iso(crate::db::now_ms())})
        }
        Ok(_) => {
            json!({"type": "error", "error": {"code": "SW_UNSUPPORTED_FRAME", "message": "the stream only accepts {\"type\":\"ping\"}; send actions over REST"}})
        }
        Err(_) => {
            json!({"type": "error", "error": {"code": "SW_INVALID_REQUEST", "message": "frames must be JSON"}})
        }
    }
}
