//! Full backup and IAM export: `GET /_/api/admin/backup` (a zip of manifest.json, config.yaml,
//! iam.json and secrets.json), `POST /_/api/admin/backup` (atomic import of that zip, or of
//! the pre-0.8.4 plain JSON `{users, groups}`; a zip's bootstrap hash is adopted with its
//! users, as one re-key of the config store), and `GET /_/api/admin/config/declarative-iam-export`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::iam::{declarative_guard, persist_batch, persist_failed};
use super::password::note_env_pinned;
use super::session::any_session;
use super::{audit_iam_change, err, Admin, St};
use crate::config_store;
use crate::iam::{AdminOverlay, GroupSpec, UserSpec};
use crate::state::AppState;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/_/api/admin/backup", get(export).post(import))
        .route(
            "/_/api/admin/config/declarative-iam-export",
            get(declarative_iam_export),
        )
}

const FORMAT: &str = "deltaglider-proxy-backup";
const VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";
const CONFIG: &str = "config.yaml";
const IAM: &str = "iam.json";
const SECRETS: &str = "secrets.json";

/// `manifest.json`: what the zip holds and the SHA-256 (hex) of every other part.
#[derive(Serialize, Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    created_at: String,
    proxy_version: String,
    files: BTreeMap<String, String>,
}

/// `iam.json` (secrets blanked; they are in `secrets.json`).
#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct IamPart {
    users: Vec<UserSpec>,
    groups: Vec<GroupSpec>,
    memberships: Vec<Membership>,
    /// OAuth/OIDC identities: not held by this proxy's store yet; counted as skipped.
    external_identities: Vec<serde_json::Value>,
}

#[derive(Serialize, Deserialize, Clone)]
struct Membership {
    /// User name.
    user: String,
    /// Group name.
    group: String,
}

/// `secrets.json`: user secrets by access key id, and the bootstrap hash (adopted on import
/// when it differs from the running one, so the instance keeps the exported login).
#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct SecretsPart {
    bootstrap_password_hash: Option<String>,
    user_secrets: BTreeMap<String, String>,
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec_pretty(v).map_err(|e| e.to_string())
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The IAM users an export covers: every user but the synthetic `$` principals.
fn exported_users(st: &AppState) -> Vec<UserSpec> {
    st.iam
        .users
        .read()
        .values()
        .filter(|u| !u.name.starts_with('$'))
        .cloned()
        .collect()
}

/// The canonical, redacted YAML export of the whole configuration (as `config/export`).
fn canonical_config(st: &AppState) -> String {
    let fc = super::config::live_file(st);
    let mut doc = serde_json::Map::new();
    for n in crate::config_doc::SECTIONS {
        if let Some(v) = super::config::section_value(&fc, n).and_then(crate::config_doc::prune) {
            doc.insert(n.to_string(), v);
        }
    }
    serde_yaml::to_string(&serde_json::Value::Object(doc)).unwrap_or_default()
}

fn build_zip(st: &AppState) -> Result<Vec<u8>, String> {
    let users = exported_users(st);
    let groups: Vec<GroupSpec> = st.iam.groups.read().values().cloned().collect();
    let memberships = users
        .iter()
        .flat_map(|u| {
            u.groups.iter().map(|g| Membership {
                user: u.name.clone(),
                group: g.clone(),
            })
        })
        .collect();
    let secrets = SecretsPart {
        bootstrap_password_hash: Some(st.bootstrap.hash()),
        user_secrets: users
            .iter()
            .map(|u| (u.access_key_id.clone(), u.secret_access_key.clone()))
            .collect(),
    };
    let iam = IamPart {
        users: users
            .into_iter()
            .map(|mut u| {
                u.secret_access_key = String::new();
                u
            })
            .collect(),
        groups,
        memberships,
        external_identities: vec![],
    };
    let parts: Vec<(&str, Vec<u8>)> = vec![
        (CONFIG, canonical_config(st).into_bytes()),
        (IAM, enc(&iam)?),
        (SECRETS, enc(&secrets)?),
    ];
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        proxy_version: env!("CARGO_PKG_VERSION").into(),
        files: parts
            .iter()
            .map(|(n, b)| (n.to_string(), sha256_hex(b)))
            .collect(),
    };
    let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .unix_permissions(0o600);
    let mut add = |name: &str, body: &[u8]| -> Result<(), String> {
        zw.start_file(name, opts).map_err(|e| e.to_string())?;
        zw.write_all(body).map_err(|e| e.to_string())
    };
    add(MANIFEST, &enc(&manifest)?)?;
    for (n, b) in &parts {
        add(n, b)?;
    }
    Ok(zw.finish().map_err(|e| e.to_string())?.into_inner())
}

/// `GET /_/api/admin/backup`: the zip (it carries every user secret: treat it as one).
async fn export(
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let zip = match build_zip(&st) {
        Ok(z) => z,
        Err(e) => {
            tracing::error!(error = %e, "backup export failed");
            return err(StatusCode::INTERNAL_SERVER_ERROR, "backup_failed");
        }
    };
    audit_iam_change(&st, "backup_export", "", &headers, &addr);
    let name = format!(
        "attachment; filename=\"deltaglider-backup-{}.zip\"",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    );
    (
        [
            (http::header::CONTENT_TYPE, "application/zip".to_string()),
            (http::header::CONTENT_DISPOSITION, name),
        ],
        zip,
    )
        .into_response()
}

/// What an import carries, however it arrived.
struct Incoming {
    users: Vec<UserSpec>,
    groups: Vec<GroupSpec>,
    memberships: Vec<Membership>,
    external_identities: usize,
    /// The zip's bootstrap hash, normalized and checked like a start-up hash.
    bootstrap_hash: Option<String>,
}

/// The pre-0.8.4 import: `{users, groups}` with secrets inline.
#[derive(Deserialize)]
struct LegacyImport {
    #[serde(default)]
    users: Vec<UserSpec>,
    #[serde(default)]
    groups: Vec<GroupSpec>,
}

/// Reads the zip and checks every part against the manifest before anything is parsed
/// into state: a part that is missing, extra, or whose SHA-256 differs refuses the import.
fn read_zip(body: &[u8]) -> Result<Incoming, String> {
    let mut za = zip::ZipArchive::new(std::io::Cursor::new(body))
        .map_err(|e| format!("not a readable zip: {e}"))?;
    let mut read = |name: &str| -> Result<Option<Vec<u8>>, String> {
        let mut f = match za.by_name(name) {
            Ok(f) => f,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(format!("{name}: {e}")),
        };
        let mut b = Vec::new();
        f.read_to_end(&mut b).map_err(|e| format!("{name}: {e}"))?;
        Ok(Some(b))
    };
    let manifest: Manifest =
        serde_json::from_slice(&read(MANIFEST)?.ok_or_else(|| format!("{MANIFEST} is missing"))?)
            .map_err(|e| format!("{MANIFEST}: {e}"))?;
    if manifest.format != FORMAT || manifest.version != VERSION {
        return Err(format!(
            "unsupported backup format {} v{}",
            manifest.format, manifest.version
        ));
    }
    for required in [IAM, SECRETS] {
        if !manifest.files.contains_key(required) {
            return Err(format!("{MANIFEST} does not list {required}"));
        }
    }
    let mut parts = BTreeMap::new();
    for (name, want) in &manifest.files {
        let b = read(name)?.ok_or_else(|| format!("{name} is missing"))?;
        if !sha256_hex(&b).eq_ignore_ascii_case(want) {
            return Err(format!("{name}: SHA-256 does not match {MANIFEST}"));
        }
        parts.insert(name.clone(), b);
    }
    let iam: IamPart = serde_json::from_slice(&parts[IAM]).map_err(|e| format!("{IAM}: {e}"))?;
    let secrets: SecretsPart =
        serde_json::from_slice(&parts[SECRETS]).map_err(|e| format!("{SECRETS}: {e}"))?;
    // Checked here, with the other parts, so a bad hash refuses the import before any change
    // (and an adopted hash can never stop the next start).
    let bootstrap_hash = match secrets.bootstrap_password_hash.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(h) => {
            let h = crate::bootstrap::normalize(h);
            crate::bootstrap::check_hash(&h, &format!("{SECRETS}: bootstrap_password_hash"))
                .map_err(|e| e.to_string())?;
            Some(h)
        }
    };
    let users = iam
        .users
        .into_iter()
        .map(|mut u| {
            if let Some(s) = secrets.user_secrets.get(&u.access_key_id) {
                u.secret_access_key = s.clone();
            }
            u
        })
        .collect();
    Ok(Incoming {
        users,
        groups: iam.groups,
        memberships: iam.memberships,
        external_identities: iam.external_identities.len(),
        bootstrap_hash,
    })
}

fn parse_import(body: &[u8]) -> Result<Incoming, String> {
    let inc = if body.starts_with(b"PK") {
        read_zip(body)?
    } else {
        let legacy: LegacyImport = serde_json::from_slice(body)
            .map_err(|e| format!("neither a backup zip nor JSON: {e}"))?;
        Incoming {
            users: legacy.users,
            groups: legacy.groups,
            memberships: vec![],
            external_identities: 0,
            bootstrap_hash: None,
        }
    };
    // A permission the evaluator could not honour (an unknown condition, say) refuses the
    // import before any change, as it would a config file.
    for u in &inc.users {
        crate::iam::validate_permissions(&format!("user {:?}", u.name), &u.permissions)?;
    }
    for g in &inc.groups {
        crate::iam::validate_permissions(&format!("group {:?}", g.name), &g.permissions)?;
    }
    Ok(inc)
}

/// `POST /_/api/admin/backup`: creates the users and groups whose names (and access keys)
/// are free, skips the others unchanged, sets the memberships of the users it creates, all
/// in one durable write. When the zip's bootstrap hash differs from the running one it is
/// adopted as `PUT /_/api/admin/password` does, in that same write: the store is re-sealed
/// under it with the new users and groups, the hash file is the commit point, and every
/// other session ends.
async fn import(
    _: Admin,
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = declarative_guard(&st) {
        return r;
    }
    let Ok((token, _)) = any_session(&st, &headers, &addr) else {
        return err(StatusCode::UNAUTHORIZED, "not_authenticated");
    };
    // The hash check runs bcrypt once: off the async workers.
    let inc = match tokio::task::spawn_blocking(move || parse_import(&body)).await {
        Ok(Ok(i)) => i,
        Ok(Err(e)) => return err(StatusCode::BAD_REQUEST, &format!("invalid_backup: {e}")),
        Err(_) => return err(StatusCode::INTERNAL_SERVER_ERROR, "backup_failed"),
    };
    let adopt = inc.bootstrap_hash.filter(|h| *h != st.bootstrap.hash());
    let reserved = |n: &str| n.is_empty() || n.starts_with('$');
    let mut users = st.iam.users.write();
    let mut groups = st.iam.groups.write();
    let mut new_groups: Vec<GroupSpec> = Vec::new();
    let mut groups_skipped = 0;
    for g in inc.groups {
        if reserved(&g.name)
            || groups.contains_key(&g.name)
            || new_groups.iter().any(|n| n.name == g.name)
        {
            groups_skipped += 1;
        } else {
            new_groups.push(g);
        }
    }
    let known: BTreeSet<&str> = groups
        .keys()
        .map(String::as_str)
        .chain(new_groups.iter().map(|g| g.name.as_str()))
        .collect();
    let mut new_users: Vec<UserSpec> = Vec::new();
    let (mut users_skipped, mut memberships_created) = (0, 0);
    for mut u in inc.users {
        let taken = users.contains_key(&u.access_key_id)
            || users.values().any(|x| x.name == u.name)
            || new_users
                .iter()
                .any(|n| n.name == u.name || n.access_key_id == u.access_key_id);
        // A user without its secret could never sign: skipped rather than re-keyed.
        if taken
            || reserved(&u.name)
            || u.access_key_id.is_empty()
            || u.secret_access_key.is_empty()
        {
            users_skipped += 1;
            continue;
        }
        let mut member_of: Vec<String> = Vec::new();
        let listed = inc
            .memberships
            .iter()
            .filter(|m| m.user == u.name)
            .map(|m| m.group.clone());
        for g in u.groups.iter().cloned().chain(listed) {
            if known.contains(g.as_str()) && !member_of.contains(&g) {
                member_of.push(g);
            }
        }
        memberships_created += member_of.len();
        u.groups = member_of;
        new_users.push(u);
    }
    let record = |o: &mut AdminOverlay| {
        for g in &new_groups {
            o.record_group(None, Some(g));
        }
        for u in &new_users {
            o.record_user(None, Some(u));
        }
    };
    let done = match &adopt {
        None => persist_batch(&st, record),
        Some(hash) => {
            // As the password change: the hash file is the commit point of the re-key, so a
            // failure before it leaves the old hash, store and users (nothing imported).
            let key = config_store::key_for(hash);
            let file = st.bootstrap.file.clone();
            let hash = hash.clone();
            let commit = move || -> Result<(), crate::error::ProxyError> {
                config_store::write_atomic(&file, hash.as_bytes())?;
                Ok(())
            };
            match &st.iam.admin_store {
                Some(store) => store.change_rekeyed(key, commit, record),
                None => commit(),
            }
        }
    };
    if let Err(e) = done {
        if adopt.is_some() {
            tracing::error!(error = %e, "backup import with its bootstrap hash not persisted");
        }
        return persist_failed(e);
    }
    let (groups_created, users_created) = (new_groups.len(), new_users.len());
    for g in new_groups {
        groups.insert(g.name.clone(), g);
    }
    for u in new_users {
        users.insert(u.access_key_id.clone(), u);
    }
    if let Some(hash) = &adopt {
        st.bootstrap.set_hash(hash.clone());
    }
    drop(groups);
    drop(users);
    audit_iam_change(&st, "backup_import", "", &headers, &addr);
    let mut out = json!({
        "users_created": users_created,
        "users_skipped": users_skipped,
        "groups_created": groups_created,
        "groups_skipped": groups_skipped,
        "memberships_created": memberships_created,
        "external_identities_created": 0,
        "external_identities_skipped": inc.external_identities,
        "bootstrap_password_restored": adopt.is_some(),
    });
    if let Some(hash) = &adopt {
        // The password changed: as after PUT /password, only the caller's session stays.
        st.sessions.retain_only(&token);
        audit_iam_change(&st, "admin_password_restore", "$bootstrap", &headers, &addr);
        note_env_pinned(&st, hash, &mut out);
    }
    Json(out).into_response()
}

/// `GET /_/api/admin/config/declarative-iam-export`: the IAM users and groups as an `access:`
/// YAML fragment with `iam_mode: declarative`, secrets blanked to "" (fill them in, or the
/// users cannot sign).
async fn declarative_iam_export(_: Admin, State(st): St) -> Response {
    let users: Vec<UserSpec> = exported_users(&st)
        .into_iter()
        .map(|mut u| {
            u.secret_access_key = String::new();
            u
        })
        .collect();
    let groups: Vec<GroupSpec> = st.iam.groups.read().values().cloned().collect();
    let doc = json!({"access": {
        "iam_mode": "declarative",
        "iam_users": users,
        "iam_groups": groups,
    }});
    let y = serde_yaml::to_string(&doc).unwrap_or_default();
    ([(http::header::CONTENT_TYPE, "application/yaml")], y).into_response()
}
