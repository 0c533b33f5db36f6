//! Rooms and membership: create (group, public, dm), directory, metadata, members, join,
//! leave, invite, kick, ban, name, topic and power levels. Every membership change and
//! rename is a stored, positioned event (`swp.room.member`, `swp.room.name`,
//! `swp.room.topic`).

use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;

use crate::app::{ok, AppState, Ctx, JsonBody};
use crate::db::{append_event, now_ms, Draft, EventRow};
use crate::error::{ApiError, ApiResult};
use crate::events::{iso, MEMBER, NAME, TOPIC};

/// Power needed to kick, ban, redact others' events, rename and set the topic.
pub const POWER_MODERATE: i64 = 50;
pub const POWER_ADMIN: i64 = 100;
const MAX_NAME: usize = 255;
const MAX_TOPIC: usize = 4096;

#[derive(Clone, Debug)]
pub struct RoomRow {
    pub id: String,
    pub room_type: String,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub creator_id: String,
    pub state: String,
    pub created_at: i64,
}

impl RoomRow {
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "room_alias": format!("#{}", self.id),
            "name": self.name,
            "topic": self.topic,
            "room_type": self.room_type,
            "is_public": self.room_type == "public",
            "workspace_id": null,
            "creator_id": self.creator_id,
            "state": self.state,
            "created_at": iso(self.created_at),
        })
    }
}

pub async fn load_room(app: &AppState, tenant: &str, room: &str) -> ApiResult<RoomRow> {
    if room.is_empty() || room.len() > 80 {
        return Err(ApiError::RoomNotFound);
    }
    let r = sqlx::query("SELECT id, room_type, name, topic, creator_id, state, created_at FROM sw_rooms WHERE tenant_id = ? AND id = ?")
        .bind(tenant)
        .bind(room)
        .fetch_optional(&app.db.pool)
        .await?
        .ok_or(ApiError::RoomNotFound)?;
    Ok(RoomRow {
        id: r.try_get("id")?,
        room_type: r.try_get("room_type")?,
        name: crate::db::text(&r, "name")?,
        topic: crate::db::text(&r, "topic")?,
        creator_id: r.try_get("creator_id")?,
        state: r.try_get("state")?,
        created_at: r.try_get("created_at")?,
    })
}

/// `(membership, power_level)` of a participant in a room.
pub async fn membership(
    app: &AppState,
    tenant: &str,
    room: &str,
    user: &str,
) -> ApiResult<Option<(String, i64)>> {
    let r = sqlx::query("SELECT membership, power_level FROM sw_members WHERE tenant_id = ? AND room_id = ? AND participant_id = ?")
        .bind(tenant)
        .bind(room)
        .bind(user)
        .fetch_optional(&app.db.pool)
        .await?;
    Ok(match r {
        Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
        None => None,
    })
}

/// The caller's power level; fails unless the caller has joined the (open) room.
pub async fn require_joined(app: &AppState, ctx: &Ctx, room: &str) -> ApiResult<(RoomRow, i64)> {
    let r = load_room(app, &ctx.tenant, room).await?;
    match membership(app, &ctx.tenant, room, &ctx.user).await? {
        Some((m, p)) if m == "join" => {
            if r.state != "open" {
                return Err(ApiError::RoomFrozen);
            }
            Ok((r, p))
        }
        _ => Err(ApiError::NotMember),
    }
}

async fn participant_exists(app: &AppState, tenant: &str, id: &str) -> ApiResult<bool> {
    Ok(
        sqlx::query("SELECT 1 FROM sw_participants WHERE tenant_id = ? AND id = ?")
            .bind(tenant)
            .bind(id)
            .fetch_optional(&app.db.pool)
            .await?
            .is_some(),
    )
}

/// Store a membership change as an event and apply it, in one transaction.
pub async fn change_member(
    app: &AppState,
    ctx: &Ctx,
    room: &str,
    target: &str,
    membership: &str,
    power: Option<i64>,
    reason: Option<String>,
) -> ApiResult<EventRow> {
    let mut tx = app.db.begin().await?;
    let mut content =
        json!({"participant_id": target, "membership": membership, "changed_by": ctx.user});
    if let Some(r) = reason {
        content["reason"] = json!(r);
    }
    let ev = append_event(
        &mut tx,
        &ctx.tenant,
        &Draft {
            room_id: room.to_string(),
            sender_id: ctx.user.clone(),
            event_type: MEMBER,
            target_id: Some(target.to_string()),
            content,
            event_uuid: None,
        },
    )
    .await?;
    let left = matches!(membership, "leave" | "ban").then_some(ev.stream_position);
    let updated = match power {
        Some(p) => sqlx::query("UPDATE sw_members SET membership = ?, left_position = ?, power_level = ? WHERE tenant_id = ? AND room_id = ? AND participant_id = ?")
            .bind(membership).bind(left).bind(p).bind(&ctx.tenant).bind(room).bind(target)
            .execute(&mut *tx).await?,
        None => sqlx::query("UPDATE sw_members SET membership = ?, left_position = ? WHERE tenant_id = ? AND room_id = ? AND participant_id = ?")
            .bind(membership).bind(left).bind(&ctx.tenant).bind(room).bind(target)
            .execute(&mut *tx).await?,
    };
    if updated.rows_affected() == 0 {
        sqlx::query("INSERT INTO sw_members (tenant_id, room_id, participant_id, membership, power_level, joined_at, left_position) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(&ctx.tenant).bind(room).bind(target).bind(membership).bind(power.unwrap_or(0)).bind(now_ms()).bind(left)
            .execute(&mut *tx).await?;
    }
    tx.commit().await?;
    app.emit(&ev).await;
    Ok(ev)
}

async fn insert_room(
    app: &AppState,
    ctx: &Ctx,
    room_type: &str,
    name: Option<String>,
    topic: Option<String>,
    dm_key: Option<String>,
) -> ApiResult<RoomRow> {
    let row = RoomRow {
        id: format!("room-{}", uuid::Uuid::new_v4().simple()),
        room_type: room_type.to_string(),
        name,
        topic,
        creator_id: ctx.user.clone(),
        state: "open".into(),
        created_at: now_ms(),
    };
    sqlx::query("INSERT INTO sw_rooms (tenant_id, id, room_type, name, topic, creator_id, state, dm_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
        .bind(&ctx.tenant).bind(&row.id).bind(&row.room_type).bind(&row.name).bind(&row.topic)
        .bind(&row.creator_id).bind(&row.state).bind(dm_key).bind(row.created_at)
        .execute(&app.db.pool).await?;
    Ok(row)
}

#[derive(Deserialize)]
pub struct CreateRoom {
    room_type: Option<String>,
    name: Option<String>,
    topic: Option<String>,
    is_public: Option<bool>,
    #[serde(default)]
    invite: Vec<String>,
}

fn check_len(what: &str, v: &Option<String>, max: usize) -> ApiResult<()> {
    if let Some(s) = v {
        if s.chars().count() > max {
            return Err(ApiError::Invalid(format!(
                "{what} is longer than {max} characters"
            )));
        }
    }
    Ok(())
}

pub async fn create(
    State(app): State<AppState>,
    ctx: Ctx,
    JsonBody(b): JsonBody<CreateRoom>,
) -> ApiResult<Response> {
    let mut room_type = b.room_type.unwrap_or_else(|| "group".into());
    if b.is_public == Some(true) && room_type == "group" {
        room_type = "public".into();
    }
    match room_type.as_str() {
        "group" | "public" => {}
        "dm" => {
            return Err(ApiError::RoomTypeInvariant(
                "create direct rooms with POST /v1/rooms/dm".into(),
            ))
        }
        other => {
            return Err(ApiError::Invalid(format!(
                "unsupported room_type {other:?}; use group, public or dm"
            )))
        }
    }
    let name = b
        .name
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| ApiError::Invalid("name is required for group and public rooms".into()))?;
    check_len("name", &Some(name.clone()), MAX_NAME)?;
    check_len("topic", &b.topic, MAX_TOPIC)?;
    app.rate_check(&ctx).await?;
    let room = insert_room(&app, &ctx, &room_type, Some(name), b.topic, None).await?;
    change_member(
        &app,
        &ctx,
        &room.id,
        &ctx.user,
        "join",
        Some(POWER_ADMIN),
        None,
    )
    .await?;
    for p in b.invite.iter().filter(|p| **p != ctx.user) {
        if participant_exists(&app, &ctx.tenant, p).await? {
            change_member(&app, &ctx, &room.id, p, "invite", Some(0), None).await?;
        }
    }
    Ok(ok(room.json()))
}

#[derive(Deserialize)]
pub struct Target {
    participant_id: String,
    reason: Option<String>,
}

pub async fn create_dm(
    State(app): State<AppState>,
    ctx: Ctx,
    JsonBody(b): JsonBody<Target>,
) -> ApiResult<Response> {
    if b.participant_id == ctx.user {
        return Err(ApiError::RoomTypeInvariant(
            "a direct room needs another participant".into(),
        ));
    }
    if !participant_exists(&app, &ctx.tenant, &b.participant_id).await? {
        return Err(ApiError::ParticipantNotFound);
    }
    let mut pair = [ctx.user.clone(), b.participant_id.clone()];
    pair.sort();
    let key = pair.join("|");
    if let Some(r) =
        sqlx::query("SELECT id FROM sw_rooms WHERE tenant_id = ? AND dm_key = ? AND state = 'open'")
            .bind(&ctx.tenant)
            .bind(&key)
            .fetch_optional(&app.db.pool)
            .await?
    {
        let id: String = r.try_get(0)?;
        return Ok(ok(load_room(&app, &ctx.tenant, &id).await?.json()));
    }
    app.rate_check(&ctx).await?;
    let room = insert_room(&app, &ctx, "dm", None, None, Some(key)).await?;
    change_member(
        &app,
        &ctx,
        &room.id,
        &ctx.user,
        "join",
        Some(POWER_MODERATE),
        None,
    )
    .await?;
    change_member(
        &app,
        &ctx,
        &room.id,
        &b.participant_id,
        "join",
        Some(POWER_MODERATE),
        None,
    )
    .await?;
    Ok(ok(room.json()))
}

pub async fn get_room(
    State(app): State<AppState>,
    ctx: Ctx,
    Path(room): Path<String>,
) -> ApiResult<Response> {
    let r = load_room(&app, &ctx.tenant, &room).await?;
    let m = membership(&app, &ctx.tenant, &room, &ctx.user).await?;
    if r.room_type != "public"
        && !matches!(m.as_ref().map(|x| x.0.as_str()), Some("join" | "invite"))
    {
        return Err(ApiError::NotMember);
    }
    let count: i64 = sqlx::query("SELECT COUNT(*) FROM sw_members WHERE tenant_id = ? AND room_id = ? AND membership = 'join'")
        .bind(&ctx.tenant).bind(&room).fetch_one(&app.db.pool).await?.try_get(0)?;
    let mut v = r.json();
    v["member_count"] = json!(count);
    v["membership"] = json!(m.map(|x| x.0));
    Ok(ok(v))
}

pub async fn members(
    State(app): State<AppState>,
    ctx: Ctx,
    Path(room): Path<String>,
) -> ApiResult<Response> {
    require_joined(&app, &ctx, &room).await?;
    let rows = sqlx::query("SELECT m.participant_id, m.membership, m.power_level, m.joined_at, p.local_id, p.display_name FROM sw_members m LEFT JOIN sw_participants p ON p.tenant_id = m.tenant_id AND p.id = m.participant_id WHERE m.tenant_id = ? AND m.room_id = ? ORDER BY m.joined_at")
        .bind(&ctx.tenant).bind(&room).fetch_all(&app.db.pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: String = r.try_get(0)?;
        out.push(json!({
            "participant_id": id,
            "membership": r.try_get::<String, _>(1)?,
            "power_level": r.try_get::<i64, _>(2)?,
            "joined_at": iso(r.try_get(3)?),
            "notification_mode": "all",
            "muted_until": null,
            "participant": {
                "id": id,
                "local_id": r.try_get::<Option<String>, _>(4)?,
                "server_name": app.cfg.server_name,
                "display_name": crate::db::text(&r, 5)?,
                "participant_type": "human",
                "avatar_url": null,
            }
        }));
    }
    Ok(ok(json!(out)))
}

pub async fn join(
    State(app): State<AppState>,
    ctx: Ctx,
    Path(room): Path<String>,
) -> ApiResult<Response> {
    let r = load_room(&app, &ctx.tenant, &room).await?;
    if r.state != "open" {
        return Err(ApiError::RoomFrozen);
    }
    let m = membership(&app, &ctx.tenant, &room, &ctx.user).await?;
    match m.as_ref().map(|x| x.0.as_str()) {
        Some("join") => return Ok(ok(r.json())),
        Some("ban") => {
            return Err(ApiError::RoomForbidden(
                "you are banned from this room".into(),
            ))
        }
        Some("invite") => {}
        _ if r.room_type == "public" => {}
        _ => {
            return Err(ApiError::RoomForbidden(
                "this room needs an invitation".into(),
            ))
        }
    }
    app.rate_check(&ctx).await?;
    change_member(&app, &ctx, &room, &ctx.user, "join", None, None).await?;
    Ok(ok(r.json()))
}

pub async fn leave(
    State(app): State<AppState>,
    ctx: Ctx,
    Path(room): Path<String>,
) -> ApiResult<Response> {
    load_room(&app, &ctx.tenant, &room).await?;
    match membership(&app, &ctx.tenant, &room, &ctx.user)
        .await?
        .map(|x| x.0)
    {
        Some(m) if m == "join" || m == "invite" => {}
        _ => return Err(ApiError::NotMember),
    }
    app.rate_check(&ctx).await?;
    let ev = change_member(&app, &ctx, &room, &ctx.user, "leave", None, None).await?;
    Ok(ok(crate::events::wire(&ev)))
}

pub async fn invite(
    State(app): State<AppState>,
    ctx: Ctx,
    Path(room): Path<String>,
    JsonBody(b): JsonBody<Target>,
) -> ApiResult<Response> {
    let (r, _) = require_joined(&app, &ctx, &room).await?;
    if r.room_type == "dm" {
        return Err(ApiError::RoomTypeInvariant(
            "direct rooms have exactly two members".into(),
        ));
    }
    if !participant_exists(&app, &ctx.tenant, &b.participant_id).await? {
        return Err(ApiError::ParticipantNotFound);
    }
    match membership(&app, &ctx.tenant, &room, &b.participant_id)
        .await?
        .map(|x| x.0)
    {
        Some(m) if m == "join" || m == "invite" => {
            return Ok(ok(
                json!({"participant_id": b.participant_id, "membership": m}),
            ))
        }
        Some(m) if m == "ban" => {
            return Err(ApiError::RoomForbidden(
                "that participant is banned from this room".into(),
            ))
        }
        _ => {}
    }
    app.rate_check(&ctx).await?;
    let ev = change_member(
        &app,
        &ctx,
        &room,
        &b.participant_id,
        "invite",
        None,
        b.reason,
    )
    .await?;
    Ok(ok(crate::events::wire(&ev)))
}

async fn moderate(
    app: AppState,
    ctx: Ctx,
    room: String,
    b: Target,
    membership_to: &str,
) -> ApiResult<Response> {
    let (r, power) = require_joined(&app, &ctx, &room).await?;
    if r.room_type == "dm" {
        return Err(ApiError::RoomTypeInvariant(
            "members cannot be removed from direct rooms".into(),
        ));
    }
    if power < POWER_MODERATE {
        return Err(ApiError::RoomForbidden(format!(
            "{membership_to} needs power level {POWER_MODERATE}"
        )));
    }
    let target = membership(&app, &ctx.tenant, &room, &b.participant_id).await?;
    if let Some((_, tp)) = &target {
        if *tp >= power && b.participant_id != ctx.user {
            return Err(ApiError::RoomForbidden(
                "target's power level is not below yours".into(),
            ));
        }
    }
    if membership_to == "leave"
        && !matches!(
            target.as_ref().map(|x| x.0.as_str()),
            Some("join" | "invite")
        )
    {
        return Err(ApiError::NotMember);
    }
    if membership_to == "ban" && !participant_exists(&app, &ctx.tenant, &b.participant_id).await? {
        return Err(ApiError::ParticipantNotFound);
    }
    app.rate_check(&ctx).await?;
    let ev = change_member(
        &app,
        &ctx,
        &room,
        &b.participant_id,
        membership_to,
        None,
        b.reason,
    )
    .await?;
    Ok(ok(crate::events::wire(&ev)))
}

pub async fn kick(
    State(app): State<AppState>,
    ctx: Ctx,
    Path(room): Path<String>,
    JsonBody(b): JsonBody<Target>,
) -> ApiResult<Response> {
    moderate(app, ctx, room, b, "leave").await
}

pub async fn ban(
    State(app): State<AppState>,
    ctx: Ctx,
    Path(room): Path<String>,
    JsonBody(b): JsonBody<Target>,
) -> ApiResult<Response> {
    moderate(app, ctx, room, b, "ban").await
}

#[derive(Deserialize)]
pub struct NameBody {
    name: Option<String>,
    topic: Option<String>,
}

async fn set_state(
    app: AppState,
    ctx: Ctx,
    room: String,
    field: &'static str,
    value: Option<String>,
) -> ApiResult<Response> {
    let (r, power) = require_joined(&app, &ctx, &room).await?;
    if r.room_type == "dm" {
        return Err(ApiError::RoomTypeInvariant(format!(
            "direct rooms have no {field}"
        )));
    }
    if power < POWER_MODERATE {
        return Err(ApiError::RoomForbidden(format!(
            "changing the {field} needs power level {POWER_MODERATE}"
        )));
    }
    let value = match field {
        "name" => {
            let v = value
                .filter(|n| !n.trim().is_empty())
                .ok_or_else(|| ApiError::Invalid("name must not be empty".into()))?;
            check_len("name", &Some(v.clone()), MAX_NAME)?;
            Some(v)
        }
        _ => {
            check_len("topic", &value, MAX_TOPIC)?;
            value
        }
    };
    app.rate_check(&ctx).await?;
    let mut tx = app.db.begin().await?;
    let ev = append_event(
        &mut tx,
        &ctx.tenant,
        &Draft {
            room_id: room.clone(),
            sender_id: ctx.user.clone(),
            event_type: if field == "name" { NAME } else { TOPIC },
            target_id: None,
            content: json!({ field: value }),
            event_uuid: None,
        },
    )
    .await?;
    let sql = format!("UPDATE sw_rooms SET {field} = ? WHERE tenant_id = ? AND id = ?");
    sqlx::query(&sql)
        .bind(&value)
        .bind(&ctx.tenant)
        .bind(&room)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    app.emit(&ev).await;
    Ok(ok(crate::events::wire(&ev)))
}

pub async fn set_name(
    State(app): State<AppState>,
    ctx: Ctx,
    Path(room): Path<String>,
    JsonBody(b): JsonBody<NameBody>,
) -> ApiResult<Response> {
    set_state(app, ctx, room, "name", b.name).await
}

pub async fn set_topic(
    State(app): State<AppState>,
    ctx: Ctx,
    Path(room): Path<String>,
    JsonBody(b): JsonBody<NameBody>,
) -> ApiResult<Response> {
    set_state(app, ctx, room, "topic", b.topic).await
}

#[derive(Deserialize)]
pub struct PowerBody {
    participant_id: String,
    power_level: i64,
}

pub async fn set_power(
    State(app): State<AppState>,
    ctx: Ctx,
    Path(room): Path<String>,
    JsonBody(b): JsonBody<PowerBody>,
) -> ApiResult<Response> {
    let (_, power) = require_joined(&app, &ctx, &room).await?;
    if power < POWER_ADMIN {
        return Err(ApiError::RoomForbidden(format!(
            "changing power levels needs power level {POWER_ADMIN}"
        )));
    }
    if !(0..=100).contains(&b.power_level) {
        return Err(ApiError::Invalid(
            "power_level must be between 0 and 100".into(),
        ));
    }
    match membership(&app, &ctx.tenant, &room, &b.participant_id)
        .await?
        .map(|x| x.0)
    {
        Some(m) if m == "join" => {}
        _ => return Err(ApiError::NotMember),
    }
    app.rate_check(&ctx).await?;
    let ev = change_member(
        &app,
        &ctx,
        &room,
        &b.participant_id,
        "join",
        Some(b.power_level),
        None,
    )
    .await?;
    Ok(ok(crate::events::wire(&ev)))
}

#[derive(Deserialize)]
pub struct DirQuery {
    q: Option<String>,
    room_type: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

pub async fn directory(
    State(app): State<AppState>,
    ctx: Ctx,
    Query(q): Query<DirQuery>,
) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::Invalid("limit must be between 1 and 200".into()));
    }
    let offset = q.offset.unwrap_or(0).max(0);
    let rows = sqlx::query("SELECT r.id, r.room_type, r.name, r.topic, r.creator_id, r.state, r.created_at FROM sw_rooms r WHERE r.tenant_id = ? AND r.state = 'open' AND (r.room_type = 'public' OR EXISTS (SELECT 1 FROM sw_members m WHERE m.tenant_id = r.tenant_id AND m.room_id = r.id AND m.participant_id = ? AND m.membership = 'join')) ORDER BY r.created_at, r.id")
        .bind(&ctx.tenant).bind(&ctx.user).fetch_all(&app.db.pool).await?;
    let needle = q.q.map(|s| s.to_lowercase());
    let mut all = Vec::new();
    for r in rows {
        let room = RoomRow {
            id: r.try_get(0)?,
            room_type: r.try_get(1)?,
            name: crate::db::text(&r, 2)?,
            topic: crate::db::text(&r, 3)?,
            creator_id: r.try_get(4)?,
            state: r.try_get(5)?,
            created_at: r.try_get(6)?,
        };
        if let Some(t) = &q.room_type {
            if &room.room_type != t {
                continue;
            }
        }
        if let Some(n) = &needle {
            if !room
                .name
                .as_deref()
                .unwrap_or("")
                .to_lowercase()
                .contains(n)
            {
                continue;
            }
        }
        all.push(room.json());
    }
    let total = all.len();
    let page: Vec<Value> = all
        .into_iter()
        .skip(offset as usize)
        .take(limit as usize)
        .collect();
    Ok(axum::response::IntoResponse::into_response(axum::Json(
        json!({"data": page, "meta": {"total": total}}),
    )))
}
