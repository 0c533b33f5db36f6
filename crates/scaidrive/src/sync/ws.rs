//! The two WebSockets: `/api/v1/sync/ws/{device_id}` (nudges for a sync device; one
//! `subscribe` covers every share the user can read) and `/api/v1/realtime/ws` (UI updates,
//! explicit per-share subscriptions). Token by `?token=` or `Authorization`; failures close
//! with 4401 (auth), 4403 (suspended user, foreign device, no access) or 4429 (per-user or
//! per-process connection limit). The server pings every `SCAIDRIVE_WS_PING_INTERVAL` and
//! drops a peer silent for two intervals. A socket's readable shares are resolved once at
//! connect and refreshed on access events and every `SCAIDRIVE_WS_ACCESS_TTL`; entries reach
//! it through `fanout`. Frames are advisory: clients still pull changes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::changelog::ChangeRow;
use super::fanout::{self, Handle, Scope};
use crate::api::{P, Q};
use crate::auth::Caller;
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
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
    // Access once per socket; change fan-out never asks the database per socket.
    let (access, token_admin) = match resolve_access(&st.db, &c, c.is_admin).await {
        Ok(Some((a, db_admin))) => (a, c.is_admin && !db_admin),
        Ok(None) => return close(socket, 4403, "user suspended", &kind, &who).await,
        Err(_) => return close(socket, 1011, "server error", &kind, &who).await,
    };
    let head = match super::api::head(&st.db, &c.tenant_id).await {
        Ok((h, _)) => h,
        Err(_) => return close(socket, 1011, "server error", &kind, &who).await,
    };
    tracing::info!(event = "ws.connect", endpoint = kind.name(), user = %who, open = st.ws.open());
    let reason = run(&st, socket, &c, &kind, access, token_admin, head).await;
    drop(slot);
    tracing::info!(event = "ws.disconnect", endpoint = kind.name(), user = %who, reason);
}

/// The shares `c` may read, as `fs::share_role` decides it: tenant admins (by token, or by the
/// database flag read now) every share of the tenant, others their share memberships.
/// `Ok(None)`: the user is suspended (or gone). Returns the database admin flag too.
async fn resolve_access(
    db: &Db,
    c: &Caller,
    token_admin: bool,
) -> ApiResult<Option<(Scope, bool)>> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT is_active, is_admin FROM users WHERE tenant_id = ? AND id = ?")
            .bind(&c.tenant_id)
            .bind(&c.user_id)
            .fetch_optional(&db.pool)
            .await?;
    let Some((active, db_admin)) = row else {
        return Ok(None);
    };
    if active == 0 {
        return Ok(None);
    }
    if token_admin || db_admin != 0 {
        return Ok(Some((Scope::Tenant, db_admin != 0)));
    }
    let shares: Vec<String> = sqlx::query_scalar(
        "SELECT share_id FROM share_members WHERE tenant_id = ? AND user_id = ?",
    )
    .bind(&c.tenant_id)
    .bind(&c.user_id)
    .fetch_all(&db.pool)
    .await?;
    Ok(Some((Scope::Shares(shares.into_iter().collect()), false)))
}

/// The sync frame: the full change entry (digest §11 change object plus `position`) and the
/// entry's position as `position`/`cursor`. Clients still pull: the cursor equals a changes
/// cursor only for a client that applied every earlier entry of the share.
pub fn sync_frame(row: &ChangeRow) -> String {
    let mut data = row.to_json();
    data["cursor"] = json!(row.position.to_string());
    json!({"event_type": "change", "type": "change", "share_id": row.share_id,
        "position": row.position, "cursor": row.position.to_string(), "data": data})
    .to_string()
}

/// The realtime (UI) frame: `{file|folder}_{created|updated|deleted}` with the entry in
/// `data.change`.
pub fn realtime_frame(row: &ChangeRow) -> String {
    let verb = match row.change_type.as_str() {
        "created" => "created",
        "deleted" => "deleted",
        _ => "updated",
    };
    let id_key = if row.resource_type == "folder" {
        "folder_id"
    } else {
        "file_id"
    };
    json!({"type": format!("{}_{verb}", row.resource_type), "share_id": row.share_id,
        "data": {"id": row.resource_id, id_key: row.resource_id, "change_type": row.change_type,
            "version_id": row.version_id, "change": row.to_json()}})
    .to_string()
}

async fn send(socket: &mut WebSocket, v: Value) -> bool {
    socket
        .send(Message::Text(v.to_string().into()))
        .await
        .is_ok()
}

/// What a socket receives and may receive.
struct SocketState {
    /// Shares the user may read (resolved at connect, refreshed).
    access: Scope,
    /// Sync: one subscribe covers all readable shares.
    sync_subscribed: bool,
    /// Realtime: the explicitly subscribed shares (always within `access`).
    rt_shares: HashSet<String>,
}

impl SocketState {
    fn scope(&self, kind: &Kind) -> Scope {
        match kind {
            Kind::Sync { .. } if self.sync_subscribed => self.access.clone(),
            Kind::Sync { .. } => Scope::Nothing,
            Kind::Realtime => Scope::Shares(self.rt_shares.clone()),
        }
    }
}

/// Why a socket must end after an access refresh.
enum Refresh {
    Unchanged,
    Changed(Vec<String>),
    Suspended,
}

/// Re-resolve the socket's access (on `AccessChanged` or the periodic re-check) and re-index.
async fn refresh(
    st: &AppState,
    c: &Caller,
    token_admin: bool,
    kind: &Kind,
    s: &mut SocketState,
    handle: &Handle,
) -> Refresh {
    let access = match resolve_access(&st.db, c, token_admin).await {
        Ok(Some((a, _))) => a,
        Ok(None) => return Refresh::Suspended,
        Err(e) => {
            // Keep what we had; the next re-check tries again.
            tracing::warn!(event = "ws.access_refresh_failed", user = %c.user_id, error = %e);
            return Refresh::Unchanged;
        }
    };
    if access == s.access {
        return Refresh::Unchanged;
    }
    let revoked: Vec<String> = s
        .rt_shares
        .iter()
        .filter(|sh| !access.allows(sh))
        .cloned()
        .collect();
    for sh in &revoked {
        s.rt_shares.remove(sh);
    }
    let before = s.access.clone();
    s.access = access;
    handle.set_scope(s.scope(kind));
    tracing::info!(event = "ws.access_changed", endpoint = kind.name(), tenant_id = %c.tenant_id,
        user = %c.user_id, before = ?before, after = ?s.access);
    Refresh::Changed(revoked)
}

/// Realtime subscribe check, without a query for members (their shares are known).
async fn may_subscribe(st: &AppState, c: &Caller, access: &Scope, share_id: &str) -> bool {
    match access {
        Scope::Tenant => matches!(
            sqlx::query_scalar::<_, String>("SELECT id FROM shares WHERE tenant_id = ? AND id = ?")
                .bind(&c.tenant_id)
                .bind(share_id)
                .fetch_optional(&st.db.pool)
                .await,
            Ok(Some(_))
        ),
        other => other.allows(share_id),
    }
}

/// When this socket first re-checks its access: spread over one TTL by socket so thousands of
/// sockets opened together do not re-check together.
fn first_recheck(ttl: Duration, salt: &str) -> Duration {
    let h = salt.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    let ms = ttl.as_millis().max(1) as u64;
    Duration::from_millis(ms / 2 + h % (ms / 2 + 1))
}

/// The socket's loop; returns the disconnect reason.
async fn run(
    st: &AppState,
    mut socket: WebSocket,
    c: &Caller,
    kind: &Kind,
    access: Scope,
    token_admin: bool,
    head: i64,
) -> &'static str {
    let device = match kind {
        Kind::Sync { device_id } => Some(device_id.clone()),
        Kind::Realtime => None,
    };
    let (handle, mut rx) = st.fanout.register(&c.tenant_id, &c.user_id, device, head);
    let sub = handle.sub.clone();
    let interval = st.cfg.sync.ws_ping_interval;
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    let ttl = st.cfg.sync.ws_access_ttl;
    let recheck = tokio::time::sleep(first_recheck(
        ttl,
        &format!("{}/{}/{:?}", c.tenant_id, c.user_id, Instant::now()),
    ));
    tokio::pin!(recheck);
    let mut last_heard = Instant::now();
    let mut s = SocketState {
        access,
        sync_subscribed: false,
        rt_shares: HashSet::new(),
    };
    if matches!(kind, Kind::Realtime)
        && !send(&mut socket, json!({"type": "connected", "user_id": c.user_id, "timestamp": crate::db::iso(crate::db::now())})).await
    {
        return "send_failed";
    }
    loop {
        let mut do_refresh = false;
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
                    (Kind::Sync { .. }, "subscribe") => {
                        s.sync_subscribed = true;
                        handle.set_scope(s.scope(kind));
                        json!({"type": "subscribed", "event_type": "subscribed"})
                    }
                    (Kind::Realtime, "subscribe") | (Kind::Realtime, "unsubscribe") => {
                        let sid = v.get("share_id").and_then(Value::as_str).unwrap_or("").to_string();
                        if ty == "unsubscribe" {
                            s.rt_shares.remove(&sid);
                            handle.set_scope(s.scope(kind));
                            json!({"type": "unsubscribed", "share_id": sid})
                        } else if may_subscribe(st, c, &s.access, &sid).await {
                            s.rt_shares.insert(sid.clone());
                            handle.set_scope(s.scope(kind));
                            json!({"type": "subscribed", "share_id": sid})
                        } else {
                            json!({"type": "error", "code": "NOT_FOUND", "message": "share not found", "share_id": sid})
                        }
                    }
                    _ => json!({"type": "error", "code": "VALIDATION_ERROR", "message": "unknown message type"}),
                };
                if !send(&mut socket, reply).await { return "send_failed" }
            }
            d = rx.recv() => {
                let Some(d) = d else { return "server_shutdown" };
                let frame = match kind {
                    Kind::Sync { .. } => d.sync_frame.get_or_init(|| sync_frame(&d.row).into()),
                    Kind::Realtime => d.realtime_frame.get_or_init(|| realtime_frame(&d.row).into()),
                };
                if socket.send(Message::Text(frame.clone())).await.is_err() { return "send_failed" }
            }
            _ = sub.wake.notified() => {
                let flags = sub.take_flags();
                if flags & fanout::MISSED != 0
                    && !send(&mut socket, json!({"event_type": "changes_missed", "type": "changes_missed"})).await
                {
                    return "send_failed";
                }
                if flags & fanout::PREFERENCES != 0 {
                    if let Kind::Sync { device_id } = kind {
                        let v = json!({"event_type": "sync_preference_updated", "type": "sync_preference_updated",
                            "share_id": null, "device_id": device_id});
                        if !send(&mut socket, v).await { return "send_failed" }
                    }
                }
                do_refresh = flags & fanout::REFRESH != 0;
            }
            _ = &mut recheck => {
                recheck.as_mut().reset(tokio::time::Instant::now() + ttl);
                do_refresh = true;
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > interval * 2 {
                    let _ = socket.send(Message::Close(Some(CloseFrame { code: 1001, reason: "ping timeout".into() }))).await;
                    return "dead_peer";
                }
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() { return "send_failed" }
            }
        }
        if do_refresh {
            match refresh(st, c, token_admin, kind, &mut s, &handle).await {
                Refresh::Unchanged => {}
                Refresh::Changed(revoked) => {
                    for sid in revoked {
                        let v = json!({"type": "unsubscribed", "share_id": sid, "reason": "access_revoked"});
                        if !send(&mut socket, v).await {
                            return "send_failed";
                        }
                    }
                }
                Refresh::Suspended => {
                    let _ = socket
                        .send(Message::Close(Some(CloseFrame {
                            code: 4403,
                            reason: "user suspended".into(),
                        })))
                        .await;
                    return "user_suspended";
                }
            }
        }
    }
}
