//! File routes: metadata, rename/move (PATCH), delete to trash, simple multipart upload, new
//! version upload, streaming download with `Range`, version list and restore.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use serde_json::json;

use super::{ok, J, P, Q};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::fs::{self, Kind, Node, Target};
use crate::storage::chunk_key;
use crate::upload::{self, StreamIngest};
use crate::AppState;

pub async fn get(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P(id): P<String>,
) -> ApiResult<Response> {
    c.require_read()?;
    let (file, _) = fs::get_node(&st.db, &c, &id, Kind::File, false).await?;
    Ok(ok(StatusCode::OK, fs::node_json(&st.db, &file).await?))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateFile {
    name: Option<String>,
    folder_id: Option<String>,
}

pub async fn update(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P(id): P<String>,
    J(b): J<UpdateFile>,
) -> ApiResult<Response> {
    c.require_write()?;
    let (file, role) = fs::get_node(&st.db, &c, &id, Kind::File, false).await?;
    fs::require_write_role(&role)?;
    let updated =
        fs::update_node(&st.db, &c, &file, b.name.as_deref(), b.folder_id.as_deref()).await?;
    let change = if updated.parent_id != file.parent_id {
        "moved"
    } else {
        "renamed"
    };
    crate::pubsub::node_changed(&st, &updated, change);
    Ok(ok(StatusCode::OK, fs::node_json(&st.db, &updated).await?))
}

pub async fn delete(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P(id): P<String>,
) -> ApiResult<Response> {
    c.require_write()?;
    let (file, role) = fs::get_node(&st.db, &c, &id, Kind::File, false).await?;
    fs::require_write_role(&role)?;
    fs::trash_node(&st.db, &c, &file).await?;
    crate::pubsub::node_changed(&st, &file, "deleted");
    tracing::info!(event = "file_deleted", tenant_id = %c.tenant_id, file_id = %file.id);
    Ok(ok(
        StatusCode::OK,
        json!({"id": file.id, "is_deleted": true}),
    ))
}

fn multipart_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("VALIDATION_ERROR", format!("malformed multipart body: {e}"))
}

/// Read a multipart upload: small text fields plus one `file` field, which is cut into chunks
/// and ingested as it streams. `resolve` turns the text fields into the commit target; it runs
/// as soon as the file part starts (so a wrong folder fails before bytes are stored) or at the end.
async fn read_multipart(
    st: &AppState,
    c: &Caller,
    mut mp: Multipart,
    existing: Option<&Node>,
) -> ApiResult<(Target, fs::Content)> {
    let mut share_id = None;
    let mut folder_id = None;
    let mut name = None;
    let mut target: Option<Target> = None;
    let mut content = None;
    let limit = upload::tenant_max_file_size(&st.db, &c.tenant_id).await?;
    while let Some(mut field) = mp.next_field().await.map_err(multipart_error)? {
        let fname = field.name().unwrap_or("").to_string();
        match fname.as_str() {
            "file" => {
                if content.is_some() {
                    return Err(ApiError::field("file", "only one file part is allowed"));
                }
                if name.is_none() {
                    name = field.file_name().map(str::to_string);
                }
                if target.is_none() {
                    target = Some(
                        resolve(
                            st,
                            c,
                            existing,
                            share_id.as_deref(),
                            folder_id.as_deref(),
                            name.as_deref(),
                        )
                        .await?,
                    );
                }
                let mut ingest = StreamIngest::new(st.cfg.default_chunk_size as usize, limit);
                while let Some(bytes) = field.chunk().await.map_err(multipart_error)? {
                    ingest.push(st, &c.tenant_id, bytes).await?;
                }
                content = Some(ingest.finish(st, &c.tenant_id).await?);
            }
            "share_id" | "folder_id" | "name" => {
                let v = field.text().await.map_err(multipart_error)?;
                if v.len() > 4096 {
                    return Err(ApiError::field(&fname, "too long"));
                }
                match fname.as_str() {
                    "share_id" => share_id = Some(v),
                    "folder_id" => folder_id = Some(v).filter(|s| !s.is_empty()),
                    _ => name = Some(v),
                }
            }
            _ => {
                // Unknown parts are drained and ignored.
                while field.chunk().await.map_err(multipart_error)?.is_some() {}
            }
        }
    }
    let content = content.ok_or_else(|| ApiError::field("file", "is required"))?;
    let target = match target {
        Some(t) => t,
        None => {
            resolve(
                st,
                c,
                existing,
                share_id.as_deref(),
                folder_id.as_deref(),
                name.as_deref(),
            )
            .await?
        }
    };
    Ok((target, content))
}

async fn resolve(
    st: &AppState,
    c: &Caller,
    existing: Option<&Node>,
    share_id: Option<&str>,
    folder_id: Option<&str>,
    name: Option<&str>,
) -> ApiResult<Target> {
    if let Some(f) = existing {
        return Ok(Target::Version {
            file_id: f.id.clone(),
        });
    }
    let name = name
        .ok_or_else(|| ApiError::field("name", "is required (or give the file part a filename)"))?;
    fs::names::validate("name", name)?;
    let folder = fs::target_folder(&st.db, c, share_id, folder_id).await?;
    let taken: Option<String> = sqlx::query_scalar(
        "SELECT id FROM nodes WHERE tenant_id = ? AND parent_id = ? AND live_name = ?",
    )
    .bind(&c.tenant_id)
    .bind(&folder.id)
    .bind(name)
    .fetch_optional(&st.db.pool)
    .await?;
    if taken.is_some() {
        return Err(ApiError::NameConflict(name.to_string()));
    }
    Ok(Target::New {
        folder: Box::new(folder),
        name: name.to_string(),
        mime_type: fs::names::mime_for(name).to_string(),
    })
}

async fn commit(
    st: &AppState,
    c: &Caller,
    target: Target,
    content: fs::Content,
) -> ApiResult<Node> {
    let mut tx = st.db.pool.begin().await?;
    let file_id = fs::commit_content(&mut tx, c, &target, &content).await?;
    tx.commit().await?;
    Ok(fs::get_node(&st.db, c, &file_id, Kind::File, false)
        .await?
        .0)
}

/// `POST /api/v1/files` (multipart `share_id`, `folder_id`, `name`, `file`) → 201.
pub async fn upload(
    State(st): State<Arc<AppState>>,
    c: Caller,
    mp: Result<Multipart, MultipartRejection>,
) -> ApiResult<Response> {
    c.require_write()?;
    let mp = mp.map_err(multipart_error)?;
    let (target, content) = read_multipart(&st, &c, mp, None).await?;
    let node = commit(&st, &c, target, content).await?;
    crate::pubsub::node_changed(&st, &node, "created");
    tracing::info!(event = "file_uploaded", tenant_id = %c.tenant_id, file_id = %node.id, size = node.size);
    Ok(ok(StatusCode::CREATED, fs::node_json(&st.db, &node).await?))
}

/// `POST /api/v1/files/{id}/content` (multipart `file`): a new version of an existing file.
pub async fn upload_version(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P(id): P<String>,
    mp: Result<Multipart, MultipartRejection>,
) -> ApiResult<Response> {
    c.require_write()?;
    let (file, role) = fs::get_node(&st.db, &c, &id, Kind::File, false).await?;
    fs::require_write_role(&role)?;
    let mp = mp.map_err(multipart_error)?;
    let (target, content) = read_multipart(&st, &c, mp, Some(&file)).await?;
    let node = commit(&st, &c, target, content).await?;
    crate::pubsub::node_changed(&st, &node, "updated");
    Ok(ok(StatusCode::CREATED, fs::node_json(&st.db, &node).await?))
}

/// Parse a single `bytes=` range against `size`: `Ok(None)` = whole file (no or unsupported
/// header, e.g. several ranges), `Err` = unsatisfiable (416).
pub fn parse_range(h: Option<&HeaderValue>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = h.and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 || size == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end: u64 = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse::<u64>()
                .map_err(|_| ())?
                .min(size.saturating_sub(1))
        };
        (start, end)
    };
    if start >= size || end < start {
        return Err(());
    }
    Ok(Some((start, end)))
}

#[derive(serde::Deserialize)]
pub struct VersionQuery {
    pub version: Option<String>,
}

/// `GET /api/v1/files/{id}/content[?version=N]`: streamed chunk by chunk; `Range` → 206.
pub async fn download(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P(id): P<String>,
    Q(q): Q<VersionQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    c.require_read()?;
    let (file, _) = fs::get_node(&st.db, &c, &id, Kind::File, false).await?;
    let version = fs::get_version(&st.db, &c, &file, q.version.as_deref()).await?;
    let size = version.size as u64;
    let range = parse_range(headers.get(header::RANGE), size)
        .map_err(|_| ApiError::RangeNotSatisfiable { size })?;
    let (start, end) = range.unwrap_or((0, size.saturating_sub(1)));
    let len = if size == 0 { 0 } else { end - start + 1 };
    let cs = version.chunk_size as u64;
    let hashes = version.hashes();
    let mut segments = Vec::new();
    if len > 0 {
        for idx in (start / cs)..=(end / cs) {
            let chunk_start = idx * cs;
            let from = start.max(chunk_start) - chunk_start;
            let to = end.min(chunk_start + cs - 1) - chunk_start;
            let h = hashes
                .get(idx as usize)
                .ok_or_else(|| ApiError::internal("manifest shorter than file"))?;
            segments.push((
                chunk_key(&c.tenant_id, &hex::encode(h)),
                from,
                to - from + 1,
            ));
        }
    }
    metrics::counter!("scaidrive_downloads_bytes_total", "tenant_id" => c.tenant_id.clone())
        .increment(len);
    let store = st.store.clone();
    // The first segment is opened before the status line goes out, so an object store that
    // is down answers a clear 503 instead of a 200 with a truncated body.
    let mut segments = segments.into_iter();
    let first = match segments.next() {
        Some((key, off, n)) => Some(st.store.get(&key, off, Some(n)).await?),
        None => None,
    };
    let rest = futures::stream::iter(segments)
        .then(move |(key, off, n)| {
            let store = store.clone();
            async move { store.get(&key, off, Some(n)).await }
        })
        .try_flatten();
    let stream = futures::stream::iter(first).flatten().chain(rest);
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    let mime = file
        .mime_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into());
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&mime)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let disp = format!(
        "attachment; filename=\"{}\"",
        file.name.replace(['"', '\\'], "_")
    );
    if let Ok(v) = HeaderValue::from_str(&disp) {
        h.insert(header::CONTENT_DISPOSITION, v);
    } else {
        h.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment"),
        );
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", version.checksum_sha256)) {
        h.insert(header::ETAG, v);
    }
    if range.is_some() {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")) {
            h.insert(header::CONTENT_RANGE, v);
        }
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(resp)
}

pub async fn versions(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P(id): P<String>,
) -> ApiResult<Response> {
    c.require_read()?;
    let (file, _) = fs::get_node(&st.db, &c, &id, Kind::File, false).await?;
    let vs = fs::list_versions(&st.db, &c, &file).await?;
    let items: Vec<_> = vs.iter().map(|v| v.to_json()).collect();
    Ok(ok(
        StatusCode::OK,
        json!({"versions": items, "total": items.len()}),
    ))
}

/// Restore version N: a new version with N's content (restore v2 at v4 → v5).
pub async fn restore(
    State(st): State<Arc<AppState>>,
    c: Caller,
    P((id, which)): P<(String, String)>,
) -> ApiResult<Response> {
    c.require_write()?;
    let (file, role) = fs::get_node(&st.db, &c, &id, Kind::File, false).await?;
    fs::require_write_role(&role)?;
    let v = fs::get_version(&st.db, &c, &file, Some(&which)).await?;
    let content = fs::Content {
        hashes: v.hashes(),
        size: v.size,
        chunk_size: v.chunk_size,
        sha256: v.checksum_sha256.clone(),
    };
    let node = commit(
        &st,
        &c,
        Target::Version {
            file_id: file.id.clone(),
        },
        content,
    )
    .await?;
    crate::pubsub::node_changed(&st, &node, "updated");
    tracing::info!(event = "version_restored", tenant_id = %c.tenant_id, file_id = %file.id, from_version = v.version_number, new_version = node.version);
    Ok(ok(StatusCode::CREATED, fs::node_json(&st.db, &node).await?))
}

#[cfg(test)]
mod tests {
    use super::parse_range;
    use axum::http::HeaderValue;

    fn r(s: &str, size: u64) -> Result<Option<(u64, u64)>, ()> {
        parse_range(Some(&HeaderValue::from_str(s).unwrap()), size)
    }

    #[test]
    fn ranges() {
        assert_eq!(r("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(r("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(r("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(r("bytes=50-500", 100), Ok(Some((50, 99))));
        assert_eq!(r("bytes=100-", 100), Err(()));
        assert_eq!(r("bytes=9-1", 100), Err(()));
        assert_eq!(r("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(r("items=0-1", 100), Ok(None));
        assert_eq!(r("bytes=x-1", 100), Err(()));
    }
}
