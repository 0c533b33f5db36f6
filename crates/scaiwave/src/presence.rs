//! Ephemeral state: typing (`PUT /v1/typing`, cleared after `SCAIWAVE_TYPING_TTL` without a
//! re-publish) and presence (`online` while a socket is open, or a status the user sets).
//! Both travel as unpositioned frames through the broker; presence state itself is kept per
//! replica (see docs).

use axum::extract::{Query, State};
use axum::response::Response;
use scai_stream::{Audience, Delivery};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::app::{ok, App, AppState, Ctx, JsonBody};
use crate::error::{ApiError, ApiResult};
use crate::events::{iso, joined};
use crate::rooms::require_joined;

const STATUSES: &[&str] = &["online", "idle", "busy", "appear_offline", "offline"];

#[derive(Deserialize)]
pub struct TypingBody {
    room_id: String,
    typing: bool,
}

async fn publish_typing(app: &App, tenant: &str, room: &str, user: &str, typing: bool) {
    let members = joined(&app.db, tenant, room).await.unwrap_or_default();
    app.hub
        .publish(Delivery {
            tenant: tenant.to_string(),
            position: None,
            audience: Audience::users(members),
            payload: json!({"type": "typing", "room_id": room, "participant_id": user, "typing": typing, "tenant_id": tenant, "ts": iso(crate::db::now_ms())}),
        })
        .await;
}

pub async fn typing(
    State(app): State<AppState>,
    ctx: Ctx,
    JsonBody(b): JsonBody<TypingBody>,
) -> ApiResult<Response> {
    require_joined(&app, &ctx, &b.room_id).await?;
    app.rate_check(&ctx).await?;
    let key = (ctx.tenant.clone(), b.room_id.clone(), ctx.user.clone());
    let generation = {
        let mut g = app.typing.lock();
        let e = g.entry(key.clone()).or_insert(0);
        *e += 1;
        *e
    };
    publish_typing(&app, &ctx.tenant, &b.room_id, &ctx.user, b.typing).await;
    let ttl = app.cfg.typing_ttl;
    if b.typing {
        let app2 = app.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            let current = app2.typing.lock().get(&key).copied();
            if current == Some(generation) {
                app2.typing.lock().remove(&key);
                publish_typing(&app2, &key.0, &key.1, &key.2, false).await;
            }
        });
    } else {
        app.typing.lock().remove(&key);
    }
    Ok(ok(
        json!({"room_id": b.room_id, "typing": b.typing, "timeout_ms": if b.typing { ttl.as_millis() as u64 } else { 0 }}),
    ))
}

pub async fn publish_presence(app: &App, tenant: &str, user: &str, status: &str) {
    let audience = match crate::events::co_members(&app.db, tenant, user).await {
        Ok(users) => Audience::users(users),
        Err(e) => {
            tracing::warn!(event = "ws.fanout_failed", tenant = %tenant, error = %e, "ws.fanout_failed: presence audience");
            return;
        }
    };
    app.hub
        .publish(Delivery {
            tenant: tenant.to_string(),
            position: None,
            audience,
            payload: json!({"type": "presence", "participant_id": user, "status": status, "tenant_id": tenant, "ts": iso(crate::db::now_ms())}),
        })
        .await;
}

/// What others see: a set status wins (appear_offline shows as offline), else online while
/// a socket is open on this replica.
pub fn status_of(app: &App, tenant: &str, user: &str, online: &[String]) -> String {
    let set = app
        .presence
        .lock()
        .get(&(tenant.to_string(), user.to_string()))
        .cloned();
    let is_online = online.iter().any(|u| u == user);
    match set.as_deref() {
        Some("appear_offline") | Some("offline") => "offline".into(),
        Some(s) if is_online => s.to_string(),
        _ if is_online => "online".into(),
        _ => "offline".into(),
    }
}

#[derive(Deserialize)]
pub struct PresenceQuery {
    ids: Option<String>,
}

pub async fn get_presence(
    State(app): State<AppState>,
    ctx: Ctx,
    Query(q): Query<PresenceQuery>,
) -> ApiResult<Response> {
    let ids: Vec<&str> = q
        .ids
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if ids.len() > 200 {
        return Err(ApiError::Invalid("at most 200 ids".into()));
    }
    let mut online = app.hub.online_users(&ctx.tenant);
    if let Some(sp) = &app.shared_presence {
        // Sockets held by other replicas.
        let remote: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !online.iter().any(|u| u == id))
            .collect();
        if let Some(flags) = sp.online_of(&ctx.tenant, &remote).await {
            for (id, on) in remote.iter().zip(flags) {
                if on {
                    online.push(id.to_string());
                }
            }
        }
    }
    let mut m = Map::new();
    for id in ids {
        m.insert(
            id.to_string(),
            Value::String(status_of(&app, &ctx.tenant, id, &online)),
        );
    }
    Ok(ok(Value::Object(m)))
}

#[derive(Deserialize)]
pub struct PresenceBody {
    status: String,
}

pub async fn set_presence(
    State(app): State<AppState>,
    ctx: Ctx,
    JsonBody(b): JsonBody<PresenceBody>,
) -> ApiResult<Response> {
    if !STATUSES.contains(&b.status.as_str()) {
        return Err(ApiError::Invalid(format!(
            "status must be one of {}",
            STATUSES.join(", ")
        )));
    }
    app.rate_check(&ctx).await?;
    app.presence
        .lock()
        .insert((ctx.tenant.clone(), ctx.user.clone()), b.status.clone());
    let online = app.hub.online_users(&ctx.tenant);
    let shown = status_of(&app, &ctx.tenant, &ctx.user, &online);
    publish_presence(&app, &ctx.tenant, &ctx.user, &shown).await;
    Ok(ok(json!({"participant_id": ctx.user, "status": shown})))
}
