//! Events as the clients see them: the wire envelope (one shape for the WebSocket, `/v1/sync`
//! and room history), who may see each event (its audience), and the store side of the
//! stream engine ([`Store`] implements `scai_stream::EventSource`).
//!
//! Visibility: events of rooms where the reader's membership is `join`; after a leave, kick
//! or ban, the room's events up to and including that member event; member events naming the
//! reader (invites); read markers only to their author.

use std::collections::HashMap;

use async_trait::async_trait;
use scai_stream::{Audience, Delivery, EventSource, StreamError};
use serde_json::{json, Map, Value};
use sqlx::Row;

use crate::db::{Db, EventRow, EVENT_COLS};

pub const MESSAGE: &str = "swp.room.message";
pub const MEMBER: &str = "swp.room.member";
pub const REDACTION: &str = "swp.room.redaction";
pub const REACTION: &str = "swp.room.reaction";
pub const EDIT: &str = "swp.room.edit";
pub const NAME: &str = "swp.room.name";
pub const TOPIC: &str = "swp.room.topic";
pub const READ_MARKER: &str = "swp.room.read_marker";

pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// The documented envelope: `type`, `id`, `room_id`, `tenant_id`, `ts`, plus `sender_id`,
/// `content`, `stream_position`, `origin_ts`; for non-message events the content's fields
/// are also lifted to the top level (`event_id`, `emoji`, `membership`, …).
pub fn wire(e: &EventRow) -> Value {
    let content: Value = serde_json::from_str(&e.content).unwrap_or_else(|_| json!({}));
    let mut m = Map::new();
    if e.event_type != MESSAGE {
        if let Value::Object(c) = &content {
            for (k, v) in c {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    m.insert("type".into(), json!(e.event_type));
    m.insert("event_type".into(), json!(e.event_type));
    m.insert("id".into(), json!(e.id));
    m.insert("room_id".into(), json!(e.room_id));
    m.insert("tenant_id".into(), json!(e.tenant_id));
    m.insert("sender_id".into(), json!(e.sender_id));
    m.insert("content".into(), content);
    m.insert("stream_position".into(), json!(e.stream_position));
    m.insert("origin_ts".into(), json!(e.origin_ts));
    m.insert("ts".into(), json!(iso(e.created_at)));
    m.insert("created_at".into(), json!(iso(e.created_at)));
    m.insert("edited_at".into(), json!(e.edited_at.map(iso)));
    m.insert("redacted_at".into(), json!(e.redacted_at.map(iso)));
    if let Some(orig) = &e.original_content {
        m.insert(
            "original_content".into(),
            serde_json::from_str(orig).unwrap_or(Value::Null),
        );
    }
    if let Some(u) = &e.event_uuid {
        m.insert("event_uuid".into(), json!(u));
    }
    Value::Object(m)
}

/// Current `join` members of a room.
pub async fn joined(db: &Db, tenant: &str, room: &str) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT participant_id FROM sw_members WHERE tenant_id = ? AND room_id = ? AND membership = 'join'",
    )
    .bind(tenant)
    .bind(room)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(|r| r.try_get::<String, _>(0)).collect()
}

/// Everyone who shares a joined room with `user` (presence goes to them, not the tenant).
pub async fn co_members(db: &Db, tenant: &str, user: &str) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT DISTINCT m2.participant_id FROM sw_members m1 JOIN sw_members m2 ON m2.tenant_id = m1.tenant_id AND m2.room_id = m1.room_id \
         WHERE m1.tenant_id = ? AND m1.participant_id = ? AND m1.membership = 'join' AND m2.membership = 'join'",
    )
    .bind(tenant)
    .bind(user)
    .fetch_all(&db.pool)
    .await?;
    let mut out: Vec<String> = rows
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?;
    if !out.iter().any(|u| u == user) {
        out.push(user.to_string());
    }
    Ok(out)
}

/// Who receives `e` live (computed after commit, from current membership).
pub fn audience_for(e: &EventRow, members: &[String]) -> Audience {
    if e.event_type == READ_MARKER {
        return Audience::users(vec![e.sender_id.clone()]);
    }
    let mut users = members.to_vec();
    if e.event_type == MEMBER {
        if let Some(t) = &e.target_id {
            if !users.contains(t) {
                users.push(t.clone());
            }
        }
    }
    Audience::users(users)
}

pub struct Store {
    pub db: Db,
}

fn src(e: impl std::fmt::Display) -> StreamError {
    StreamError::Source(e.to_string())
}

/// Events `user` may see after `after`, oldest first.
pub async fn visible_after(
    db: &Db,
    tenant: &str,
    user: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<EventRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {EVENT_COLS} FROM sw_events e JOIN sw_members m ON m.tenant_id = e.tenant_id AND m.room_id = e.room_id AND m.participant_id = ? \
         WHERE e.tenant_id = ? AND e.stream_position > ? \
         AND (m.membership = 'join' OR (m.left_position IS NOT NULL AND e.stream_position <= m.left_position) OR (e.event_type = '{MEMBER}' AND e.target_id = ?)) \
         AND (e.event_type <> '{READ_MARKER}' OR e.sender_id = ?) \
         ORDER BY e.stream_position LIMIT ?"
    );
    let rows = sqlx::query(&sql)
        .bind(user)
        .bind(tenant)
        .bind(after)
        .bind(user)
        .bind(user)
        .bind(limit)
        .fetch_all(&db.pool)
        .await?;
    rows.iter().map(EventRow::from_row).collect()
}

#[async_trait]
impl EventSource<Value> for Store {
    async fn head(&self, tenant: &str) -> Result<u64, StreamError> {
        let row = sqlx::query("SELECT last_position FROM sw_tenants WHERE id = ?")
            .bind(tenant)
            .fetch_optional(&self.db.pool)
            .await
            .map_err(src)?;
        Ok(match row {
            Some(r) => r.try_get::<i64, _>(0).map_err(src)?.max(0) as u64,
            None => 0,
        })
    }

    async fn range(
        &self,
        tenant: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<Delivery<Value>>, StreamError> {
        let sql = format!(
            "SELECT {EVENT_COLS} FROM sw_events e WHERE e.tenant_id = ? AND e.stream_position >= ? AND e.stream_position <= ? ORDER BY e.stream_position"
        );
        let rows = sqlx::query(&sql)
            .bind(tenant)
            .bind(from as i64)
            .bind(to as i64)
            .fetch_all(&self.db.pool)
            .await
            .map_err(src)?;
        let mut members: HashMap<String, Vec<String>> = HashMap::new();
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let e = EventRow::from_row(r).map_err(src)?;
            if !members.contains_key(&e.room_id) {
                let m = joined(&self.db, tenant, &e.room_id).await.map_err(src)?;
                members.insert(e.room_id.clone(), m);
            }
            let audience = audience_for(&e, &members[&e.room_id]);
            out.push(Delivery {
                tenant: tenant.to_string(),
                position: Some(e.stream_position as u64),
                audience,
                payload: wire(&e),
            });
        }
        Ok(out)
    }

    async fn visible_after(
        &self,
        tenant: &str,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Value)>, StreamError> {
        let rows = visible_after(&self.db, tenant, user, after as i64, limit as i64)
            .await
            .map_err(src)?;
        Ok(rows
            .iter()
            .map(|e| (e.stream_position as u64, wire(e)))
            .collect())
    }
}
