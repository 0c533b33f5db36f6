//! Per-device sync preferences, `GET/PUT /api/v1/sync/preferences?device_id=`: the conflict
//! strategy `apply` uses when a request names none, ignore patterns, folders excluded from
//! selective sync, bandwidth limits and pause. The server validates and stores them (table
//! `sync_preferences`); clients enforce all but the strategy. A PUT announces
//! `sync_preference_updated` on the device's sync sockets (on every replica).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::apply::Strategy;
use crate::api::{ok, J, Q};
use crate::auth::{safe_id, Caller};
use crate::db::{iso, now, Db};
use crate::error::{ApiError, ApiResult};
use crate::pubsub::Control;
use crate::AppState;

const MAX_PATTERNS: usize = 200;
const MAX_PATTERN_LEN: usize = 255;
const MAX_EXCLUDED: usize = 200;
/// Each list is stored as one JSON string column of at most this many characters.
const MAX_LIST_JSON: usize = 8000;
/// Bandwidth limits are bytes per second; below 1 KiB/s is almost surely a unit mistake.
const MIN_RATE: i64 = 1024;
const MAX_RATE: i64 = 1_000_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Prefs {
    conflict_resolution: String,
    ignore_patterns: Vec<String>,
    excluded_folder_ids: Vec<String>,
    upload_bytes_per_sec: Option<i64>,
    download_bytes_per_sec: Option<i64>,
    paused: bool,
    updated_at: Option<i64>,
}

impl Default for Prefs {
    fn default() -> Prefs {
        Prefs {
            conflict_resolution: "LAST_WRITER_WINS".into(),
            ignore_patterns: Vec::new(),
            excluded_folder_ids: Vec::new(),
            upload_bytes_per_sec: None,
            download_bytes_per_sec: None,
            paused: false,
            updated_at: None,
        }
    }
}

impl Prefs {
    fn to_json(&self, c: &Caller, device_id: &str) -> Value {
        json!({"device_id": device_id, "user_id": c.user_id,
            "conflict_resolution": self.conflict_resolution,
            "ignore_patterns": self.ignore_patterns,
            "excluded_folder_ids": self.excluded_folder_ids,
            "bandwidth_limits": {"upload_bytes_per_sec": self.upload_bytes_per_sec,
                "download_bytes_per_sec": self.download_bytes_per_sec},
            "paused": self.paused,
            "is_default": self.updated_at.is_none(),
            "updated_at": self.updated_at.map(iso)})
    }
}

/// 404 unless the device is registered to the caller.
async fn mine(db: &Db, c: &Caller, device_id: &str) -> ApiResult<()> {
    if super::api::device_of_user(db, c, device_id).await? {
        Ok(())
    } else {
        Err(ApiError::NotFound("device"))
    }
}

type PrefRow = (String, String, String, Option<i64>, Option<i64>, i64, i64);

async fn load(db: &Db, c: &Caller, device_id: &str) -> ApiResult<Prefs> {
    let row: Option<PrefRow> = sqlx::query_as(
        "SELECT conflict_resolution, ignore_patterns, excluded_folder_ids, upload_bytes_per_sec, download_bytes_per_sec, paused, updated_at FROM sync_preferences WHERE tenant_id = ? AND device_id = ? AND user_id = ?",
    )
    .bind(&c.tenant_id)
    .bind(device_id)
    .bind(&c.user_id)
    .fetch_optional(&db.pool)
    .await?;
    let Some((cr, ig, ex, up, down, paused, at)) = row else {
        return Ok(Prefs::default());
    };
    Ok(Prefs {
        conflict_resolution: cr,
        ignore_patterns: serde_json::from_str(&ig).unwrap_or_default(),
        excluded_folder_ids: serde_json::from_str(&ex).unwrap_or_default(),
        upload_bytes_per_sec: up,
        download_bytes_per_sec: down,
        paused: paused != 0,
        updated_at: Some(at),
    })
}

/// The device's stored default strategy (for `apply` requests that name none).
pub async fn default_strategy(db: &Db, c: &Caller, device_id: &str) -> ApiResult<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT conflict_resolution FROM sync_preferences WHERE tenant_id = ? AND device_id = ? AND user_id = ?",
    )
    .bind(&c.tenant_id)
    .bind(device_id)
    .bind(&c.user_id)
    .fetch_optional(&db.pool)
    .await?)
}

#[derive(serde::Deserialize)]
pub struct DeviceQuery {
    device_id: String,
}

/// `GET /api/v1/sync/preferences?device_id=`: the stored preferences, or the defaults
/// (`is_default: true`) for a device that never stored any.
pub async fn get(
    State(st): State<Arc<AppState>>,
    c: Caller,
    Q(q): Q<DeviceQuery>,
) -> ApiResult<Response> {
    c.require_read()?;
    mine(&st.db, &c, &q.device_id).await?;
    let p = load(&st.db, &c, &q.device_id).await?;
    Ok(ok(StatusCode::OK, p.to_json(&c, &q.device_id)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefsBody {
    conflict_resolution: Option<String>,
    ignore_patterns: Option<Vec<String>>,
    excluded_folder_ids: Option<Vec<String>>,
    bandwidth_limits: Option<Limits>,
    paused: Option<bool>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    upload_bytes_per_sec: Option<i64>,
    download_bytes_per_sec: Option<i64>,
}

/// Every problem of a body, reported together.
#[derive(Default)]
struct Problems(Vec<(String, String)>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push((field.into(), reason.into()));
    }
    fn into_result(self) -> ApiResult<()> {
        let Some((field, reason)) = self.0.first().cloned() else {
            return Ok(());
        };
        let errors: Vec<Value> = self
            .0
            .iter()
            .map(|(f, r)| json!({"field": f, "reason": r}))
            .collect();
        Err(ApiError::Validation {
            message: format!("{field}: {reason}"),
            details: json!({"field": field, "reason": reason, "errors": errors}),
        })
    }
}

fn check_rate(p: &mut Problems, field: &str, v: Option<i64>) {
    if let Some(r) = v {
        if !(MIN_RATE..=MAX_RATE).contains(&r) {
            p.add(
                format!("bandwidth_limits.{field}"),
                format!("null (unlimited) or {MIN_RATE}..={MAX_RATE} bytes per second"),
            );
        }
    }
}

/// Excluded folders must be live folders in shares the caller can read; unknown ids are
/// reported by position. Ids are read in batches (one query per 100 ids).
async fn check_folders(db: &Db, c: &Caller, ids: &[String], p: &mut Problems) -> ApiResult<()> {
    let wellformed: Vec<&String> = ids.iter().filter(|i| safe_id(i)).collect();
    let mut found: HashMap<String, String> = HashMap::new();
    for batch in wellformed.chunks(100) {
        let marks = vec!["?"; batch.len()].join(", ");
        let sql = format!(
            "SELECT id, share_id FROM nodes WHERE tenant_id = ? AND kind = 'folder' AND is_deleted = 0 AND id IN ({marks})"
        );
        let mut q = sqlx::query_as::<_, (String, String)>(&sql).bind(&c.tenant_id);
        for id in batch {
            q = q.bind(id.as_str());
        }
        found.extend(q.fetch_all(&db.pool).await?);
    }
    let mut readable: HashMap<String, bool> = HashMap::new();
    for share in found.values() {
        if !readable.contains_key(share) {
            let r = crate::fs::share_role(db, c, share).await?.is_some();
            readable.insert(share.clone(), r);
        }
    }
    for (i, id) in ids.iter().enumerate() {
        let ok = found
            .get(id)
            .is_some_and(|s| readable.get(s).copied().unwrap_or(false));
        if !ok {
            p.add(
                format!("excluded_folder_ids[{i}]"),
                "no such folder in a share you can read",
            );
        }
    }
    Ok(())
}

/// `PUT /api/v1/sync/preferences?device_id=`: replace the device's preferences (omitted
/// fields take their defaults). Every invalid field is listed in `error.details.errors`.
pub async fn put(
    State(st): State<Arc<AppState>>,
    c: Caller,
    Q(q): Q<DeviceQuery>,
    J(b): J<PrefsBody>,
) -> ApiResult<Response> {
    c.require_read()?;
    mine(&st.db, &c, &q.device_id).await?;
    let mut p = Problems::default();
    let mut prefs = Prefs::default();
    if let Some(s) = &b.conflict_resolution {
        match Strategy::parse(s) {
            Ok(s) => prefs.conflict_resolution = s.name().to_string(),
            Err(_) => p.add(
                "conflict_resolution",
                "one of LAST_WRITER_WINS, KEEP_BOTH, MANUAL, SERVER_WINS, CLIENT_WINS",
            ),
        }
    }
    let patterns = b.ignore_patterns.unwrap_or_default();
    if patterns.len() > MAX_PATTERNS {
        p.add(
            "ignore_patterns",
            format!("at most {MAX_PATTERNS} patterns"),
        );
    }
    for (i, pat) in patterns.iter().enumerate() {
        if pat.trim().is_empty() || pat.len() > MAX_PATTERN_LEN || pat.chars().any(char::is_control)
        {
            p.add(
                format!("ignore_patterns[{i}]"),
                format!("1-{MAX_PATTERN_LEN} bytes, not blank, no control characters"),
            );
        }
    }
    if serde_json::to_string(&patterns).map_or(0, |j| j.chars().count()) > MAX_LIST_JSON {
        p.add(
            "ignore_patterns",
            format!("at most {MAX_LIST_JSON} characters as a JSON array"),
        );
    }
    prefs.ignore_patterns = patterns;
    let mut excluded = b.excluded_folder_ids.unwrap_or_default();
    // Order kept, duplicates dropped: the set is what matters.
    let mut seen = std::collections::HashSet::new();
    excluded.retain(|id| seen.insert(id.clone()));
    if excluded.len() > MAX_EXCLUDED {
        p.add(
            "excluded_folder_ids",
            format!("at most {MAX_EXCLUDED} folders"),
        );
    } else {
        check_folders(&st.db, &c, &excluded, &mut p).await?;
    }
    if serde_json::to_string(&excluded).map_or(0, |j| j.chars().count()) > MAX_LIST_JSON {
        p.add(
            "excluded_folder_ids",
            format!("at most {MAX_LIST_JSON} characters as a JSON array"),
        );
    }
    prefs.excluded_folder_ids = excluded;
    if let Some(l) = b.bandwidth_limits {
        check_rate(&mut p, "upload_bytes_per_sec", l.upload_bytes_per_sec);
        check_rate(&mut p, "download_bytes_per_sec", l.download_bytes_per_sec);
        prefs.upload_bytes_per_sec = l.upload_bytes_per_sec;
        prefs.download_bytes_per_sec = l.download_bytes_per_sec;
    }
    prefs.paused = b.paused.unwrap_or(false);
    p.into_result()?;
    store(&st.db, &c, &q.device_id, &prefs).await?;
    st.hub.control(Control::PreferencesUpdated {
        tenant_id: c.tenant_id.clone(),
        user_id: c.user_id.clone(),
        device_id: q.device_id.clone(),
    });
    tracing::info!(event = "sync_preferences_updated", tenant_id = %c.tenant_id, device_id = %q.device_id,
        conflict_resolution = %prefs.conflict_resolution, paused = prefs.paused);
    let stored = load(&st.db, &c, &q.device_id).await?;
    Ok(ok(StatusCode::OK, stored.to_json(&c, &q.device_id)))
}

async fn store(db: &Db, c: &Caller, device_id: &str, p: &Prefs) -> ApiResult<()> {
    let ig = serde_json::to_string(&p.ignore_patterns).unwrap_or_else(|_| "[]".into());
    let ex = serde_json::to_string(&p.excluded_folder_ids).unwrap_or_else(|_| "[]".into());
    let ts = now();
    for _ in 0..2 {
        let n = sqlx::query("UPDATE sync_preferences SET user_id = ?, conflict_resolution = ?, ignore_patterns = ?, excluded_folder_ids = ?, upload_bytes_per_sec = ?, download_bytes_per_sec = ?, paused = ?, updated_at = ? WHERE tenant_id = ? AND device_id = ?")
            .bind(&c.user_id).bind(&p.conflict_resolution).bind(&ig).bind(&ex)
            .bind(p.upload_bytes_per_sec).bind(p.download_bytes_per_sec).bind(p.paused as i64).bind(ts)
            .bind(&c.tenant_id).bind(device_id)
            .execute(&db.pool).await?.rows_affected();
        if n > 0 {
            return Ok(());
        }
        let r = sqlx::query("INSERT INTO sync_preferences (tenant_id, device_id, user_id, conflict_resolution, ignore_patterns, excluded_folder_ids, upload_bytes_per_sec, download_bytes_per_sec, paused, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(&c.tenant_id).bind(device_id).bind(&c.user_id).bind(&p.conflict_resolution).bind(&ig).bind(&ex)
            .bind(p.upload_bytes_per_sec).bind(p.download_bytes_per_sec).bind(p.paused as i64).bind(ts)
            .execute(&db.pool).await;
        match r {
            Ok(_) => return Ok(()),
            // MariaDB reports 0 affected rows for an unchanged row, and a concurrent PUT may
            // have inserted first: the row exists, the UPDATE above (again) wrote it.
            Err(e) if crate::error::is_unique_violation(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
