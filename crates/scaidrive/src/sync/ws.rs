//! The two WebSockets: `/api/v1/sync/ws/{device_id}` (nudges for a sync device; one
//! `subscribe` covers every share the user can read) and `/api/v1/realtime/ws` (UI updates,
//! explicit per-share subscriptions). Token by `?token=` or `Authorization`; failures close
//! with 4401 (auth), 4403 (suspended user, foreign device, no access) or 4429 (per-user or
//! per-process connection limit). The server pings every `SCAIDRIVE_WS_PING_INTERVAL` and
//! drops a peer silent for two intervals. Frames are advisory: clients still pull changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::api::{P, Q};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::pubsub::Change;
use crate::AppState;

/// Open sockets of this process: total and per user (tenant/user).
#[derive(Default)]
pub struct Registry {
    total: AtomicUsize,
    per_user: Mutex<HashMap<String, usize>>,
}

/// Holds a slot; dropping it frees the slot.
pub struct Slot {
    reg: Arc<Registry>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.reg.total.fetch_sub(1, Ordering::SeqCst);
        let mut m = self.reg.per_user.lock();
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
        metrics::gauge!("scaidrive_sync_websocket_connections").decrement(1.0);
    }
}

impl Registry {
    fn acquire(
        self: &Arc<Self>,
        key: &str,
        max_user: usize,
        max_total: usize,
    ) -> Result<Slot, &'static str> {
        let mut m = self.per_user.lock();
        if self.total.load(Ordering::SeqCst) >= max_total {
            return Err("process_limit");
        }
        let n = m.entry(key.to_string()).or_insert(0);
        if *n >= max_user {
            return Err("user_limit");
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!("scaidrive_sync_websocket_connections").increment(1.0);
        Ok(Slot {
            reg: self.clone(),
            key: key.to_string(),
        })
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

#[derive(serde::Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

#[derive(Clone)]
enum Kind {
    Sync { device_id: String },
    Realtime,
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Sync { .. } => "sync",
            Kind::Realtime => "realtime",
        }
    }
}

fn upgrade(ws: WebSocketUpgrade, st: Arc<AppState>, token: Option<String>, kind: Kind) -> Response {
    // Small buffers: an idle socket should cost a few KB, not tungstenite's 128 KiB default.
    ws.read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| session(st, socket, token, kind))
}

fn token_of(q: TokenQuery, headers: &HeaderMap) -> Option<String> {
    q.token
        .or_else(|| scai_auth::bearer_token(headers).map(str::to_string))
}

/// `GET /api/v1/sync/ws/{device_id}` (WebSocket).
pub async fn sync_ws(
    ws: WebSocketUpgrade,
    State(st): State<Arc<AppState>>,
    P(device_id): P<String>,
    Q(q): Q<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    let token = token_of(q, &headers);
    upgrade(ws, st, token, Kind::Sync { device_id })
}

/// `GET /api/v1/realtime/ws` (WebSocket).
pub async fn realtime_ws(
    ws: WebSocketUpgrade,
    State(st): State<Arc<AppState>>,
    Q(q): Q<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    let token = token_of(q, &headers);
    upgrade(ws, st, token, Kind::Realtime)
}

async fn close(mut socket: WebSocket, code: u16, reason: &'static str, kind: &Kind, who: &str) {
    tracing::info!(event = "ws.disconnect", endpoint = kind.name(), user = %who, code, reason);
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

async fn session(st: Arc<AppState>, socket: WebSocket, token: Option<String>, kind: Kind) {
    let caller = match token {
        None => Err(ApiError::TokenInvalid("missing token".into())),
        Some(t) => crate::auth::caller_from_token(&st, &t, None).await,
    };
    let c = match caller {
        Ok(c) => c,
        Err(ApiError::UserSuspended) => {
            return close(socket, 4403, "user suspended", &kind, "").await
        }
        Err(ApiError::TokenInvalid(_)) | Err(ApiError::Forbidden(_)) => {
            return close(socket, 4401, "authentication failed", &kind, "").await
        }
        Err(_) => return close(socket, 1011, "server error", &kind, "").await,
    };
    let who = format!("{}/{}", c.tenant_id, c.user_id);
    if c.require_read().is_err() {
        return close(socket, 4403, "token lacks files:read", &kind, &who).await;
    }
    if let Kind::Sync { device_id } = &kind {
        match super::api::device_of_user(&st.db, &c, device_id).await {
            Ok(true) => {}
            Ok(false) => return close(socket, 4403, "unknown device", &kind, &who).await,
            Err(_) => return close(socket, 1011, "server error", &kind, &who).await,
        }
    }
    let cfg = &st.cfg.sync;
    let slot = match st
        .ws
        .acquire(&who, cfg.ws_max_per_user, cfg.ws_max_connections)
    {
        Ok(s) => s,
        Err(why) => return close(socket, 4429, why, &kind, &who).await,
    };
    tracing::info!(event = "ws.connect", endpoint = kind.name(), user = %who, open = st.ws.open());
    let reason = run(&st, socket, &c, &kind).await;
    drop(slot);
    tracing::info!(event = "ws.disconnect", endpoint = kind.name(), user = %who, reason);
}

/// Share access, cached per socket (a share's membership rarely changes while connected).
struct Access {
    known: HashMap<String, bool>,
}

impl Access {
    async fn can_read(&mut self, st: &AppState, c: &Caller, share_id: &str) -> bool {
        if let Some(v) = self.known.get(share_id) {
            return *v;
        }
        let v = matches!(
            crate::fs::share_role(&st.db, c, share_id).await,
            Ok(Some(_))
        );
        if self.known.len() > 1024 {
            self.known.clear();
        }
        self.known.insert(share_id.to_string(), v);
        v
    }
}

fn event_frame(kind: &Kind, ch: &Change) -> Value {
    match kind {
        Kind::Sync { .. } => {
            json!({"event_type": "change", "type": "change", "share_id": ch.share_id,
            "data": {"tenant_id": ch.tenant_id, "share_id": ch.share_id, "resource_type": ch.resource_type,
                "resource_id": ch.resource_id, "change_type": ch.change_type, "version_id": ch.version_id}})
        }
        Kind::Realtime => {
            let verb = match ch.change_type.as_str() {
                "created" => "created",
                "deleted" => "deleted",
                _ => "updated",
            };
            let id_key = if ch.resource_type == "folder" {
                "folder_id"
            } else {
                "file_id"
            };
            json!({"type": format!("{}_{verb}", ch.resource_type), "share_id": ch.share_id,
                "data": {"id": ch.resource_id, id_key: ch.resource_id, "change_type": ch.change_type, "version_id": ch.version_id}})
        }
    }
}

async fn send(socket: &mut WebSocket, v: Value) -> bool {
    socket
        .send(Message::Text(v.to_string().into()))
        .await
        .is_ok()
}

/// The socket's loop; returns the disconnect reason.
async fn run(st: &AppState, mut socket: WebSocket, c: &Caller, kind: &Kind) -> &'static str {
    let mut rx = st.hub.subscribe();
    let interval = st.cfg.sync.ws_ping_interval;
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    let mut last_heard = Instant::now();
    let mut access = Access {
        known: HashMap::new(),
    };
    // Sync: one subscribe covers all readable shares. Realtime: explicit share set.
    let mut sync_subscribed = false;
    let mut rt_shares: std::collections::HashSet<String> = Default::default();
    if matches!(kind, Kind::Realtime)
        && !send(&mut socket, json!({"type": "connected", "user_id": c.user_id, "timestamp": crate::db::iso(crate::db::now())})).await
    {
        return "send_failed";
    }
    loop {
        tokio::select! {
            msg = socket.recv() => {
                let Some(Ok(msg)) = msg else { return "peer_gone" };
                last_heard = Instant::now();
                let text = match msg {
                    Message::Text(t) => t.to_string(),
                    Message::Close(_) => return "client_close",
                    _ => continue,
                };
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let ty = v.get("type").or_else(|| v.get("action")).or_else(|| v.get("event_type"))
                    .and_then(Value::as_str).unwrap_or("");
                let reply = match (kind, ty) {
                    (_, "ping") => json!({"type": "pong", "event_type": "pong"}),
                    (Kind::Sync { .. }, "subscribe") => { sync_subscribed = true; json!({"type": "subscribed", "event_type": "subscribed"}) }
                    (Kind::Realtime, "subscribe") | (Kind::Realtime, "unsubscribe") => {
                        let sid = v.get("share_id").and_then(Value::as_str).unwrap_or("").to_string();
                        if ty == "unsubscribe" {
                            rt_shares.remove(&sid);
                            json!({"type": "unsubscribed", "share_id": sid})
                        } else if access.can_read(st, c, &sid).await {
                            rt_shares.insert(sid.clone());
                            json!({"type": "subscribed", "share_id": sid})
                        } else {
                            json!({"type": "error", "code": "NOT_FOUND", "message": "share not found", "share_id": sid})
                        }
                    }
                    _ => json!({"type": "error", "code": "VALIDATION_ERROR", "message": "unknown message type"}),
                };
                if !send(&mut socket, reply).await { return "send_failed" }
            }
            ev = rx.recv() => {
                let ch = match ev {
                    Ok(ch) => ch,
                    Err(RecvError::Lagged(_)) => {
                        // Nudges were dropped: tell the client to pull (its cursor catches up).
                        if !send(&mut socket, json!({"event_type": "changes_missed", "type": "changes_missed"})).await { return "send_failed" }
                        continue;
                    }
                    Err(RecvError::Closed) => return "server_shutdown",
                };
                if ch.tenant_id != c.tenant_id { continue }
                let wanted = match kind {
                    Kind::Sync { .. } => sync_subscribed && access.can_read(st, c, &ch.share_id).await,
                    Kind::Realtime => rt_shares.contains(&ch.share_id),
                };
                if wanted && !send(&mut socket, event_frame(kind, &ch)).await { return "send_failed" }
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > interval * 2 {
                    let _ = socket.send(Message::Close(Some(CloseFrame { code: 1001, reason: "ping timeout".into() }))).await;
                    return "dead_peer";
                }
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() { return "send_failed" }
            }
        }
    }
}
