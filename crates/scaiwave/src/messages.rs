//! Messages and what hangs off them: send (idempotent with `event_uuid`, mentions, replies,
//! `as_participant_id`), history paging both ways, edit within the window, redaction,
//! reactions and read markers. Each change is a positioned event stored in the same
//! transaction as the state it changes.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;

use crate::app::{ok, AppState, Ctx, JsonBody};
use crate::db::{append_event, now_ms, Draft, EventRow, EVENT_COLS};
use crate::error::{ApiError, ApiResult};
use crate::events::{wire, EDIT, MESSAGE, REACTION, READ_MARKER, REDACTION};
use crate::rooms::{membership, require_joined, POWER_ADMIN, POWER_MODERATE};

pub const HISTORY_DEFAULT: i64 = 50;
pub const HISTORY_MAX: i64 = 200;

pub async fn load_event(app: &AppState, tenant: &str, room: &str, id: &str) -> ApiResult<EventRow> {
    if id.is_empty() || id.len() > 80 {
        return Err(ApiError::EventNotFound);
    }
    let sql = format!(
        "SELECT {EVENT_COLS} FROM sw_events e WHERE e.tenant_id = ? AND e.id = ? AND e.room_id = ?"
    );
    let r = sqlx::query(&sql)
        .bind(tenant)
        .bind(id)
        .bind(room)
        .fetch_optional(&app.db.pool)
        .await?
        .ok_or(ApiError::EventNotFound)?;
    Ok(EventRow::from_row(&r)?)
}

async fn by_uuid(
    app: &AppState,
    tenant: &str,
    sender: &str,
    uuid: &str,
) -> ApiResult<Option<EventRow>> {
    let sql = format!("SELECT {EVENT_COLS} FROM sw_events e WHERE e.tenant_id = ? AND e.sender_id = ? AND e.event_uuid = ?");
    let r = sqlx::query(&sql)
        .bind(tenant)
        .bind(sender)
        .bind(uuid)
        .fetch_optional(&app.db.pool)
        .await?;
    Ok(match r {
        Some(r) => Some(EventRow::from_row(&r)?),
        None => None,
    })
}

fn check_content(app: &AppState, content: &Value) -> ApiResult<()> {
    if !content.is_object() {
        return Err(ApiError::Invalid("content must be a JSON object".into()));
    }
    let size = serde_json::to_vec(content)?.len();
    if size > app.cfg.max_content_bytes {
        return Err(ApiError::ContentTooLarge(size, app.cfg.max_content_bytes));
    }
    if let Some(m) = content.get("mentions") {
        let okay = m
            .as_array()
            .map(|a| a.iter().all(Value::is_string))
            .unwrap_or(false);
        if !okay {
            return Err(ApiError::Invalid(
                "content.mentions must be an array of participant ids".into(),
            ));
        }
    }
    if let Some(r) = content.get("reply_to_event_id") {
        if !r.is_string() {
            return Err(ApiError::Invalid(
                "content.reply_to_event_id must be an event id".into(),
            ));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
pub struct SendBody {
    content: Option<Value>,
    event_uuid: Option<String>,
    as_participant_id: Option<String>,
}

pub async fn send(
    State(app): State<AppState>,
    ctx: Ctx,
    Path(room): Path<String>,
    JsonBody(b): JsonBody<SendBody>,
) -> ApiResult<Response> {
    let content = b
        .content
        .ok_or_else(|| ApiError::Invalid("content is required".into()))?;
    check_content(&app, &content)?;
    if let Some(u) = &b.event_uuid {
        if u.is_empty() || u.len() > 80 {
            return Err(ApiError::Invalid(
                "event_uuid must be 1 to 80 characters".into(),
            ));
        }
    }
    let (_, power) = require_joined(&app, &ctx, &room).await?;
    let sender = match &b.as_participant_id {
        Some(p) if *p != ctx.user => {
            if power < POWER_ADMIN {
                return Err(ApiError::RoomForbidden(format!(
                    "as_participant_id needs power level {POWER_ADMIN}"
                )));
            }
            match membership(&app, &ctx.tenant, &room, p).await?.map(|x| x.0) {
                Some(m) if m == "join" => p.clone(),
                _ => return Err(ApiError::NotMember),
            }
        }
        _ => ctx.user.clone(),
    };
    if let Some(u) = &b.event_uuid {
        if let Some(existing) = by_uuid(&app, &ctx.tenant, &sender, u).await? {
            return Ok(ok(wire(&existing)));
        }
    }
    if let Some(Value::String(r)) = content.get("reply_to_event_id") {
        load_event(&app, &ctx.tenant, &room, r).await?;
    }
    app.rate_check(&ctx).await?;
    let draft = Draft {
        room_id: room.clone(),
        sender_id: sender.clone(),
        event_type: MESSAGE,
        target_id: None,
        content,
        event_uuid: b.event_uuid.clone(),
    };
    let mut tx = app.db.begin().await?;
    let ev = match append_event(&mut tx, &ctx.tenant, &draft).await {
        Ok(ev) => ev,
        Err(e) => {
            drop(tx);
            // A concurrent send with the same key won the unique index: answer with it.
            if let Some(u) = &b.event_uuid {
                if let Some(existing) = by_uuid(&app, &ctx.tenant, &sender, u).await? {
                    return Ok(ok(wire(&existing)));
                }
            }
            return Err(e);
        }
    };
    tx.commit().await?;
    app.emit(&ev).await;
    Ok(ok(wire(&ev)))
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    limit: Option<i64>,
    from: Option<String>,
    direction: Option<String>,
}

pub async fn history(
    State(app): State<AppState>,
    ctx: Ctx,
    Path(room): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(HISTORY_DEFAULT);
    if !(1..=HISTORY_MAX).contains(&limit) {
        return Err(ApiError::Invalid(format!(
            "limit must be between 1 and {HISTORY_MAX}"
        )));
    }
    let from = match q.from.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            s.parse::<i64>()
                .map_err(|_| ApiError::Invalid("from must be a stream position".into()))?,
        ),
    };
    let forward = match q.direction.as_deref().unwrap_or("back") {
        "back" | "b" => false,
        "forward" | "f" => true,
        other => {
            return Err(ApiError::Invalid(format!(
                "direction must be back or forward, not {other:?}"
            )))
        }
    };
    require_joined(&app, &ctx, &room).await?;
    let (cmp, order, start) = if forward {
        (">", "ASC", from.unwrap_or(0))
    } else {
        ("<", "DESC", from.unwrap_or(i64::MAX))
    };
    let sql = format!("SELECT {EVENT_COLS} FROM sw_events e WHERE e.tenant_id = ? AND e.room_id = ? AND e.event_type <> '{READ_MARKER}' AND e.stream_position {cmp} ? ORDER BY e.stream_position {order} LIMIT ?");
    let rows = sqlx::query(&sql)
        .bind(&ctx.tenant)
        .bind(&room)
        .bind(start)
        .bind(limit + 1)
        .fetch_all(&app.db.pool)
        .await?;
    let has_more = rows.len() as i64 > limit;
    let events: Vec<EventRow> = rows
        .iter()
        .take(limit as usize)
        .map(EventRow::from_row)
        .collect::<Result<_, _>>()?;
    let next = events.last().map(|e| e.stream_position.to_string());
    let data: Vec<Value> = events.iter().map(wire).collect();
    Ok(
        axum::Json(json!({"data": data, "meta": {"has_more": has_more, "next_cursor": next}}))
            .into_response(),
    )
}

pub async fn get_event(
    State(app): State<AppState>,
    ctx: Ctx,
    Path((room, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    require_joined(&app, &ctx, &room).await?;
    let e = load_event(&app, &ctx.tenant, &room, &id).await?;
    if e.event_type == READ_MARKER && e.sender_id != ctx.user {
        return Err(ApiError::EventNotFound);
    }
    Ok(ok(wire(&e)))
}

#[derive(Deserialize)]
pub struct EditBody {
    content: Option<Value>,
}

pub async fn edit(
    State(app): State<AppState>,
    ctx: Ctx,
    Path((room, id)): Path<(String, String)>,
    JsonBody(b): JsonBody<EditBody>,
) -> ApiResult<Response> {
    let content = b
        .content
        .ok_or_else(|| ApiError::Invalid("content is required".into()))?;
    check_content(&app, &content)?;
    require_joined(&app, &ctx, &room).await?;
    let target = load_event(&app, &ctx.tenant, &room, &id).await?;
    if target.event_type != MESSAGE {
        return Err(ApiError::Invalid("only messages can be edited".into()));
    }
    if target.sender_id != ctx.user {
        return Err(ApiError::Forbidden(
            "only the sender can edit a message".into(),
        ));
    }
    if target.redacted_at.is_some() {
        return Err(ApiError::Invalid(
            "a redacted message cannot be edited".into(),
        ));
    }
    if now_ms() - target.created_at > app.cfg.edit_window.as_millis() as i64 {
        return Err(ApiError::TooOldToEdit);
    }
    app.rate_check(&ctx).await?;
    let now = now_ms();
    let mut tx = app.db.begin().await?;
    let ev = append_event(&mut tx, &ctx.tenant, &Draft {
        room_id: room.clone(),
        sender_id: ctx.user.clone(),
        event_type: EDIT,
        target_id: None,
        content: json!({"event_id": id, "new_content": content, "edited_at": crate::events::iso(now)}),
        event_uuid: None,
    }).await?;
    sqlx::query("UPDATE sw_events SET original_content = COALESCE(original_content, content), content = ?, edited_at = ? WHERE tenant_id = ? AND id = ?")
        .bind(serde_json::to_string(&content)?).bind(now).bind(&ctx.tenant).bind(&id)
        .execute(&mut *tx).await?;
    tx.commit().await?;
    app.emit(&ev).await;
    Ok(ok(wire(&load_event(&app, &ctx.tenant, &room, &id).await?)))
}

#[derive(Deserialize, Default)]
pub struct RedactBody {
    reason: Option<String>,
}

pub async fn redact(
    State(app): State<AppState>,
    ctx: Ctx,
    Path((room, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    // The body is optional (`{"reason": …}`).
    let b: RedactBody = if body.iter().all(u8::is_ascii_whitespace) {
        RedactBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::Invalid(format!("invalid JSON body: {e}")))?
    };
    let (_, power) = require_joined(&app, &ctx, &room).await?;
    let target = load_event(&app, &ctx.tenant, &room, &id).await?;
    if target.sender_id != ctx.user && power < POWER_MODERATE {
        return Err(ApiError::RedactForbidden(format!(
            "redacting others' events needs power level {POWER_MODERATE}"
        )));
    }
    if target.redacted_at.is_some() {
        return Ok(ok(wire(&target)));
    }
    app.rate_check(&ctx).await?;
    let now = now_ms();
    let mut tx = app.db.begin().await?;
    let ev = append_event(
        &mut tx,
        &ctx.tenant,
        &Draft {
            room_id: room.clone(),
            sender_id: ctx.user.clone(),
            event_type: REDACTION,
            target_id: None,
            content: json!({"event_id": id, "redacted_by": ctx.user, "reason": b.reason}),
            event_uuid: None,
        },
    )
    .await?;
    sqlx::query("UPDATE sw_events SET content = '{}', original_content = NULL, redacted_at = ? WHERE tenant_id = ? AND id = ?")
        .bind(now).bind(&ctx.tenant).bind(&id).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM sw_reactions WHERE tenant_id = ? AND event_id = ?")
        .bind(&ctx.tenant)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    app.emit(&ev).await;
    Ok(ok(wire(&ev)))
}

#[derive(Deserialize)]
pub struct ReactBody {
    emoji: Option<String>,
    key: Option<String>,
}

fn emoji_of(e: Option<String>, k: Option<String>) -> ApiResult<String> {
    let e = e
        .or(k)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::Invalid("emoji is required".into()))?;
    if e.chars().count() > 16 || e.len() > 64 {
        return Err(ApiError::Invalid("emoji is too long".into()));
    }
    Ok(e)
}

async fn reaction_exists(app: &AppState, ctx: &Ctx, id: &str, emoji: &str) -> ApiResult<bool> {
    Ok(sqlx::query("SELECT 1 FROM sw_reactions WHERE tenant_id = ? AND event_id = ? AND sender_id = ? AND emoji = ?")
        .bind(&ctx.tenant).bind(id).bind(&ctx.user).bind(emoji)
        .fetch_optional(&app.db.pool).await?.is_some())
}

async fn reaction_change(
    app: &AppState,
    ctx: &Ctx,
    room: &str,
    id: &str,
    emoji: &str,
    add: bool,
) -> ApiResult<EventRow> {
    let mut tx = app.db.begin().await?;
    let ev = append_event(&mut tx, &ctx.tenant, &Draft {
        room_id: room.to_string(),
        sender_id: ctx.user.clone(),
        event_type: REACTION,
        target_id: None,
        content: json!({"event_id": id, "emoji": emoji, "action": if add {"add"} else {"remove"}}),
        event_uuid: None,
    }).await?;
    if add {
        sqlx::query("INSERT INTO sw_reactions (tenant_id, event_id, sender_id, emoji, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(&ctx.tenant).bind(id).bind(&ctx.user).bind(emoji).bind(now_ms())
            .execute(&mut *tx).await?;
    } else {
        sqlx::query("DELETE FROM sw_reactions WHERE tenant_id = ? AND event_id = ? AND sender_id = ? AND emoji = ?")
            .bind(&ctx.tenant).bind(id).bind(&ctx.user).bind(emoji)
            .execute(&mut *tx).await?;
    }
    tx.commit().await?;
    app.emit(&ev).await;
    Ok(ev)
}

pub async fn react(
    State(app): State<AppState>,
    ctx: Ctx,
    Path((room, id)): Path<(String, String)>,
    JsonBody(b): JsonBody<ReactBody>,
) -> ApiResult<Response> {
    let emoji = emoji_of(b.emoji, b.key)?;
    require_joined(&app, &ctx, &room).await?;
    let target = load_event(&app, &ctx.tenant, &room, &id).await?;
    if target.event_type != MESSAGE || target.redacted_at.is_some() {
        return Err(ApiError::Invalid(
            "reactions apply to messages that are not redacted".into(),
        ));
    }
    if reaction_exists(&app, &ctx, &id, &emoji).await? {
        return Ok(ok(
            json!({"event_id": id, "emoji": emoji, "sender_id": ctx.user, "duplicate": true}),
        ));
    }
    app.rate_check(&ctx).await?;
    match reaction_change(&app, &ctx, &room, &id, &emoji, true).await {
        Ok(ev) => Ok(ok(wire(&ev))),
        // Lost a race with the same reaction: duplicates are a no-op.
        Err(_) if reaction_exists(&app, &ctx, &id, &emoji).await? => Ok(ok(
            json!({"event_id": id, "emoji": emoji, "sender_id": ctx.user, "duplicate": true}),
        )),
        Err(e) => Err(e),
    }
}

#[derive(Deserialize)]
pub struct UnreactQuery {
    emoji: Option<String>,
    key: Option<String>,
}

pub async fn unreact(
    State(app): State<AppState>,
    ctx: Ctx,
    Path((room, id)): Path<(String, String)>,
    Query(q): Query<UnreactQuery>,
) -> ApiResult<Response> {
    let emoji = emoji_of(q.emoji, q.key)?;
    require_joined(&app, &ctx, &room).await?;
    load_event(&app, &ctx.tenant, &room, &id).await?;
    if !reaction_exists(&app, &ctx, &id, &emoji).await? {
        return Err(ApiError::EventNotFound);
    }
    app.rate_check(&ctx).await?;
    let ev = reaction_change(&app, &ctx, &room, &id, &emoji, false).await?;
    Ok(ok(wire(&ev)))
}

#[derive(Deserialize)]
pub struct MarkerBody {
    event_id: String,
}

pub async fn read_marker(
    State(app): State<AppState>,
    ctx: Ctx,
    Path(room): Path<String>,
    JsonBody(b): JsonBody<MarkerBody>,
) -> ApiResult<Response> {
    require_joined(&app, &ctx, &room).await?;
    let target = load_event(&app, &ctx.tenant, &room, &b.event_id).await?;
    app.rate_check(&ctx).await?;
    let mut tx = app.db.begin().await?;
    let ev = append_event(&mut tx, &ctx.tenant, &Draft {
        room_id: room.clone(),
        sender_id: ctx.user.clone(),
        event_type: READ_MARKER,
        target_id: None,
        content: json!({"event_id": b.event_id, "participant_id": ctx.user, "event_stream_position": target.stream_position}),
        event_uuid: None,
    }).await?;
    sqlx::query(
        "DELETE FROM sw_read_markers WHERE tenant_id = ? AND room_id = ? AND participant_id = ?",
    )
    .bind(&ctx.tenant)
    .bind(&room)
    .bind(&ctx.user)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO sw_read_markers (tenant_id, room_id, participant_id, event_id, stream_position) VALUES (?, ?, ?, ?, ?)")
        .bind(&ctx.tenant).bind(&room).bind(&ctx.user).bind(&b.event_id).bind(target.stream_position)
        .execute(&mut *tx).await?;
    tx.commit().await?;
    app.emit(&ev).await;
    Ok(ok(wire(&ev)))
}

/// The unread marker of the caller in a room, for the room state.
pub async fn marker_of(app: &AppState, ctx: &Ctx, room: &str) -> ApiResult<Option<String>> {
    let r = sqlx::query("SELECT event_id FROM sw_read_markers WHERE tenant_id = ? AND room_id = ? AND participant_id = ?")
        .bind(&ctx.tenant).bind(room).bind(&ctx.user).fetch_optional(&app.db.pool).await?;
    Ok(match r {
        Some(r) => Some(r.try_get(0)?),
        None => None,
    })
}
