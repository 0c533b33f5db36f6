//! IAM: users (access key pairs), groups, Allow/Deny permission rules on `bucket/key-glob`
//! resources, and their evaluation (Deny wins; group rules merge with the user's own).
//! Also the durable store of admin-API user changes ([`AdminStore`], sealed in
//! `deltaglider_config.db`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::error::ProxyError;

pub mod conditions;

pub use conditions::RequestContext;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Permission {
    #[serde(default = "allow")]
    pub effect: String,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
    /// AWS-style conditions ([`conditions`]); the rule applies only where they hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<conditions::Conditions>,
}

impl Permission {
    /// Refuses what evaluation could not honour exactly: an effect other than Allow/Deny,
    /// an unknown action, no resources, an unsupported condition.
    pub fn validate(&self) -> Result<(), String> {
        if !["allow", "deny"]
            .iter()
            .any(|e| self.effect.eq_ignore_ascii_case(e))
        {
            return Err(format!(
                "effect must be Allow or Deny, not {:?}",
                self.effect
            ));
        }
        if self.actions.is_empty() {
            return Err("a permission needs at least one action".into());
        }
        if let Some(a) = self.actions.iter().find(|a| {
            !["*", "read", "write", "delete", "list", "admin"]
                .iter()
                .any(|k| a.eq_ignore_ascii_case(k))
        }) {
            return Err(format!(
                "unknown action {a:?} (read, write, delete, list, admin or *)"
            ));
        }
        if self.resources.is_empty() || self.resources.iter().any(|r| r.is_empty()) {
            return Err(
                "a permission needs non-empty resources (\"bucket/key-glob\" or \"*\")".into(),
            );
        }
        match &self.conditions {
            Some(c) => conditions::validate(c),
            None => Ok(()),
        }
    }

    fn applies(&self, cx: &RequestContext<'_>) -> bool {
        self.conditions
            .as_ref()
            .is_none_or(|c| conditions::holds(c, cx))
    }
}

/// Every permission of a user or group, each error naming its owner and position.
pub fn validate_permissions(owner: &str, perms: &[Permission]) -> Result<(), String> {
    for (i, p) in perms.iter().enumerate() {
        p.validate()
            .map_err(|e| format!("{owner}: permissions[{i}]: {e}"))?;
    }
    Ok(())
}

fn allow() -> String {
    "Allow".into()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserSpec {
    pub name: String,
    pub access_key_id: String,
    #[serde(default)]
    pub secret_access_key: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub permissions: Vec<Permission>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub permissions: Vec<Permission>,
}

/// IAM action classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Write,
    Delete,
    List,
    Admin,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Delete => "delete",
            Action::List => "list",
            Action::Admin => "admin",
        }
    }

    /// Maps an S3 operation name to its action class.
    pub fn of_op(op: &str) -> Action {
        match op {
            "GetObject" | "HeadObject" | "GetObjectAcl" => Action::Read,
            "DeleteObject" | "DeleteObjects" | "AbortMultipartUpload" => Action::Delete,
            "ListBuckets"
            | "ListObjects"
            | "ListObjectsV2"
            | "ListMultipartUploads"
            | "ListParts"
            | "HeadBucket"
            | "GetBucketLocation"
            | "GetBucketVersioning"
            | "GetBucketAcl" => Action::List,
            "CreateBucket" | "DeleteBucket" => Action::Admin,
            _ => Action::Write,
        }
    }
}

/// Glob match with `*` (any run of characters, `/` included).
pub fn glob(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0usize, 0usize, None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == t[ti] || p[pi] == '?') {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

fn rule_matches(p: &Permission, action: Action, resource: &str, cx: &RequestContext<'_>) -> bool {
    let act = p
        .actions
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(action.as_str()));
    act && p.resources.iter().any(|r| r == "*" || glob(r, resource)) && p.applies(cx)
}

/// The IAM store: users by access key and groups by name.
#[derive(Default)]
pub struct Iam {
    pub users: RwLock<BTreeMap<String, UserSpec>>,
    pub groups: RwLock<BTreeMap<String, GroupSpec>>,
    /// Where admin-API user changes are persisted (absent in declarative mode, where the
    /// YAML is the only source of truth and the API refuses mutations).
    pub admin_store: Option<AdminStore>,
    /// The configured (YAML/bootstrap) users and groups before any overlay: an overlay
    /// pulled from the sync bucket (see [`crate::config_sync`]) is re-applied over these.
    base: (BTreeMap<String, UserSpec>, BTreeMap<String, GroupSpec>),
}

/// Outcome of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
}

impl Iam {
    pub fn new(users: Vec<UserSpec>, groups: Vec<GroupSpec>) -> Self {
        let iam = Iam::default();
        {
            let mut u = iam.users.write();
            for user in users {
                u.insert(user.access_key_id.clone(), user);
            }
            let mut g = iam.groups.write();
            for group in groups {
                g.insert(group.name.clone(), group);
            }
        }
        iam
    }

    /// Attaches the admin-API store and applies what it holds over the configured users.
    pub fn attach_store(&mut self, store: AdminStore) {
        self.base = (self.users.read().clone(), self.groups.read().clone());
        let overlay = store.overlay();
        overlay.apply(&mut self.users.write());
        overlay.apply_groups(&mut self.groups.write());
        if !overlay.users.is_empty()
            || !overlay.deleted.is_empty()
            || !overlay.groups.is_empty()
            || !overlay.deleted_groups.is_empty()
        {
            tracing::info!(
                path = %store.path().display(),
                users = overlay.users.len(),
                deleted = overlay.deleted.len(),
                groups = overlay.groups.len(),
                deleted_groups = overlay.deleted_groups.len(),
                "admin-API IAM changes reloaded"
            );
        }
        self.admin_store = Some(store);
    }

    /// Persists an admin-API change (see [`AdminStore::record`]); a no-op without a store.
    pub fn persist(
        &self,
        old_key: Option<&str>,
        user: Option<&UserSpec>,
    ) -> Result<(), ProxyError> {
        match &self.admin_store {
            Some(s) => s.record(old_key, user),
            None => Ok(()),
        }
    }

    /// Group counterpart of [`Iam::persist`].
    pub fn persist_group(
        &self,
        old_name: Option<&str>,
        group: Option<&GroupSpec>,
    ) -> Result<(), ProxyError> {
        match &self.admin_store {
            Some(s) => s.record_group(old_name, group),
            None => Ok(()),
        }
    }

    /// Replaces the whole overlay with one written by another instance (last writer wins):
    /// durably into the local store first, then in memory over the configured users
    /// and groups. Returns false (nothing changed) when it equals the current overlay, or
    /// when the current overlay is no longer `seen` (a local change not yet uploaded wins).
    pub fn replace_overlay(
        &self,
        next: AdminOverlay,
        seen: &AdminOverlay,
    ) -> Result<bool, ProxyError> {
        let Some(store) = &self.admin_store else {
            return Ok(false);
        };
        // Lock order users -> groups -> store, as the admin handlers take them.
        let mut users = self.users.write();
        let mut groups = self.groups.write();
        if !store.replace(next.clone(), seen)? {
            return Ok(false);
        }
        let (mut u, mut g) = self.base.clone();
        next.apply(&mut u);
        next.apply_groups(&mut g);
        *users = u;
        *groups = g;
        Ok(true)
    }

    pub fn user_by_key(&self, access_key: &str) -> Option<UserSpec> {
        self.users.read().get(access_key).cloned()
    }

    fn rules_of(&self, user: &UserSpec) -> Vec<Permission> {
        let groups = self.groups.read();
        let mut rules = user.permissions.clone();
        for g in &user.groups {
            if let Some(g) = groups.get(g) {
                rules.extend(g.permissions.iter().cloned());
            }
        }
        rules
    }

    /// Evaluates `action` on `bucket/key` for the user in the request's context (rules whose
    /// conditions do not hold are skipped). Deny wins over Allow; no match denies.
    pub fn evaluate(
        &self,
        user: &UserSpec,
        action: Action,
        bucket: &str,
        key: &str,
        cx: &RequestContext<'_>,
    ) -> Decision {
        if !user.enabled {
            return Decision::Deny;
        }
        let resource = format!("{bucket}/{key}");
        let rules = self.rules_of(user);
        let matching = rules
            .iter()
            .filter(|r| rule_matches(r, action, &resource, cx));
        let mut allowed = false;
        for r in matching {
            if r.effect.eq_ignore_ascii_case("deny") {
                return Decision::Deny;
            }
            allowed = true;
        }
        if allowed {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }

    /// Whether the user may see anything in the bucket (used to admit a LIST before the
    /// per-key filter runs): an applicable Allow of list or read somewhere in it, and no
    /// applicable Deny of listing the bucket itself (`bucket`, `bucket/*` or `*`: a
    /// "no listing from outside the office" rule answers AccessDenied, not an empty page).
    pub fn may_list_bucket(&self, user: &UserSpec, bucket: &str, cx: &RequestContext<'_>) -> bool {
        if !user.enabled {
            return false;
        }
        let rules = self.rules_of(user);
        let whole = [format!("{bucket}/"), bucket.to_string()];
        let denied = rules.iter().any(|r| {
            r.effect.eq_ignore_ascii_case("deny")
                && whole
                    .iter()
                    .any(|res| rule_matches(r, Action::List, res, cx))
        });
        !denied
            && rules.iter().any(|r| {
                !r.effect.eq_ignore_ascii_case("deny")
                    && r.applies(cx)
                    && r.actions
                        .iter()
                        .any(|a| a == "*" || a == "list" || a == "read")
                    && r.resources.iter().any(|res| {
                        res == "*" || res.split('/').next().is_some_and(|b| glob(b, bucket))
                    })
            })
    }

    /// Admin (GUI, config, login-as) needs an unconditional `*`/`admin` on `*`: an admin
    /// session outlives the request it was opened from, so a condition on the request
    /// (address, prefix) cannot be honoured for it and does not confer admin.
    /// Deny overrides Allow here too: a Deny of `admin` (any resource), or of `*` on `*`,
    /// removes admin whatever its conditions (failing closed, for the same reason).
    pub fn is_admin(&self, user: &UserSpec) -> bool {
        let rules = self.rules_of(user);
        let deny = |r: &Permission| {
            r.effect.eq_ignore_ascii_case("deny")
                && (r.actions.iter().any(|a| a.eq_ignore_ascii_case("admin"))
                    || (r.actions.iter().any(|a| a == "*") && r.resources.iter().any(|x| x == "*")))
        };
        user.enabled
            && !rules.iter().any(deny)
            && rules.iter().any(|r| {
                !r.effect.eq_ignore_ascii_case("deny")
                    && r.conditions.is_none()
                    && r.actions
                        .iter()
                        .any(|a| a == "*" || a.eq_ignore_ascii_case("admin"))
                    && r.resources.iter().any(|x| x == "*")
            })
    }
}

/// What the admin API changed, as persisted (sealed) in `$DGP_DATA_DIR/deltaglider_config.db`: users created or
/// updated through `/_/api/admin/users` (by access key) and access keys it deleted, and the
/// same for groups (by name). Applied over the YAML/bootstrap users and YAML groups at start,
/// so YAML edits to entities the API never touched still take effect.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminOverlay {
    pub version: u32,
    pub users: BTreeMap<String, UserSpec>,
    pub deleted: Vec<String>,
    pub groups: BTreeMap<String, GroupSpec>,
    pub deleted_groups: Vec<String>,
    /// External identity providers managed through `/_/api/admin/ext-auth/providers`.
    #[serde(default)]
    pub auth_providers: Vec<crate::oidc::ProviderSpec>,
    /// Group mapping rules managed through `/_/api/admin/ext-auth/mappings`.
    #[serde(default)]
    pub mapping_rules: Vec<crate::oidc::MappingRule>,
    /// External identities seen at OAuth login, linked to their provisioned users.
    #[serde(default)]
    pub external_identities: Vec<crate::oidc::ExternalIdentity>,
}

impl AdminOverlay {
    /// Applies the overlay to the configured users (deletions first, then upserts). A
    /// persisted user whose name is taken by a different configured key is skipped.
    pub fn apply(&self, users: &mut BTreeMap<String, UserSpec>) {
        for k in &self.deleted {
            if users.get(k).is_some_and(|u| !u.name.starts_with('$')) {
                users.remove(k);
            }
        }
        for (k, u) in &self.users {
            if users.get(k).is_some_and(|x| x.name.starts_with('$')) {
                tracing::warn!(access_key_id = %k, "iam.json user collides with the bootstrap key: skipped");
                continue;
            }
            if users.iter().any(|(ok, x)| ok != k && x.name == u.name) {
                tracing::warn!(user = %u.name, "iam.json user name is taken by another configured user: skipped");
                continue;
            }
            users.insert(k.clone(), u.clone());
        }
    }

    /// Records `old_key` (key changed or user deleted) as deleted and `user` as upserted.
    pub fn record_user(&mut self, old_key: Option<&str>, user: Option<&UserSpec>) {
        if let Some(k) = old_key {
            self.users.remove(k);
            if !self.deleted.iter().any(|d| d == k) {
                self.deleted.push(k.to_string());
            }
        }
        if let Some(u) = user {
            self.deleted.retain(|d| d != &u.access_key_id);
            self.users.insert(u.access_key_id.clone(), u.clone());
        }
    }

    /// Group counterpart of [`AdminOverlay::record_user`].
    pub fn record_group(&mut self, old_name: Option<&str>, group: Option<&GroupSpec>) {
        if let Some(n) = old_name {
            self.groups.remove(n);
            if !self.deleted_groups.iter().any(|d| d == n) {
                self.deleted_groups.push(n.to_string());
            }
        }
        if let Some(g) = group {
            self.deleted_groups.retain(|d| d != &g.name);
            self.groups.insert(g.name.clone(), g.clone());
        }
    }

    /// Applies the group part of the overlay (deletions first, then upserts).
    pub fn apply_groups(&self, groups: &mut BTreeMap<String, GroupSpec>) {
        for g in &self.deleted_groups {
            groups.remove(g);
        }
        for (name, g) in &self.groups {
            groups.insert(name.clone(), g.clone());
        }
    }
}

/// Durable store for [`AdminOverlay`]: the whole overlay is sealed (see
/// [`crate::config_store`]) and the file rewritten atomically on every change, before the
/// change is applied.
pub struct AdminStore {
    path: PathBuf,
    /// Store key, derived from the bootstrap password hash.
    key: Mutex<[u8; 32]>,
    overlay: Mutex<AdminOverlay>,
    /// The file on disk does not open with the current key (the bootstrap hash changed
    /// outside `PUT /_/api/admin/password`): it is left untouched, the overlay is empty and
    /// every change is refused until `POST /_/api/admin/recover-db` moves it aside.
    locked: std::sync::atomic::AtomicBool,
    /// Signalled after every local admin-API change (not after [`AdminStore::replace`]), so
    /// the sync uploader pushes the new overlay; a pending permit coalesces bursts.
    pub changed: std::sync::Arc<tokio::sync::Notify>,
}

/// Refused because the store is locked (see [`AdminStore::is_locked`]).
pub const LOCKED: &str =
    "config store is locked: it does not open with the current bootstrap password hash";

impl AdminStore {
    /// Opens the sealed store at `path` (missing = empty), migrating a plaintext `iam.json`
    /// beside it on first start. A store sealed under another key opens locked; an
    /// unreadable or corrupt file stops start-up rather than silently dropping users.
    pub fn open(path: PathBuf, key: [u8; 32]) -> Result<Self, ProxyError> {
        use crate::config_store::{open, OpenError};
        let startup =
            |e: &dyn std::fmt::Display| ProxyError::Startup(format!("{}: {e}", path.display()));
        let pending = rekey_path(&path);
        let mut locked = false;
        let overlay = match std::fs::read(&path) {
            Ok(b) => match open(&key, &b) {
                Ok(plain) => {
                    // A re-key that crashed before its commit point left a stale copy.
                    let _ = std::fs::remove_file(&pending);
                    serde_json::from_slice(&plain).map_err(|e| startup(&e))?
                }
                Err(OpenError::WrongKey) => match roll_forward(&path, &pending, &key) {
                    Some(o) => o,
                    None => {
                        tracing::error!(path = %path.display(), "Failed to open config DB: invalid passphrase (the bootstrap password hash differs from the one it was sealed with); admin-API IAM changes are unavailable until the right hash is configured or POST /_/api/admin/recover-db resets it");
                        locked = true;
                        AdminOverlay::default()
                    }
                },
                Err(OpenError::Format) => return Err(startup(&"not a deltaglider config store")),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match roll_forward(&path, &pending, &key) {
                    Some(o) => o,
                    None => Self::migrate_legacy(&path, &key)?,
                }
            }
            Err(e) => return Err(startup(&e)),
        };
        Ok(AdminStore {
            path,
            key: Mutex::new(key),
            overlay: Mutex::new(overlay),
            locked: std::sync::atomic::AtomicBool::new(locked),
            changed: Default::default(),
        })
    }

    /// Seals a plaintext `iam.json` of an earlier version into the store, then removes the
    /// plaintext (it holds secret keys). Missing = empty overlay.
    fn migrate_legacy(path: &Path, key: &[u8; 32]) -> Result<AdminOverlay, ProxyError> {
        let legacy = path
            .parent()
            .unwrap_or(Path::new("."))
            .join(crate::config_store::LEGACY_FILE);
        let bytes = match std::fs::read(&legacy) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(AdminOverlay::default())
            }
            Err(e) => return Err(ProxyError::Startup(format!("{}: {e}", legacy.display()))),
        };
        let overlay: AdminOverlay = serde_json::from_slice(&bytes)
            .map_err(|e| ProxyError::Startup(format!("{}: {e}", legacy.display())))?;
        write_sealed(path, key, &overlay)?;
        std::fs::remove_file(&legacy)?;
        tracing::info!(from = %legacy.display(), to = %path.display(), users = overlay.users.len(), groups = overlay.groups.len(), "plaintext IAM overlay migrated into the encrypted config store");
        Ok(overlay)
    }

    pub fn overlay(&self) -> AdminOverlay {
        self.overlay.lock().clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_locked(&self) -> bool {
        self.locked.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The overlay sealed under the current key (what config sync uploads).
    pub fn seal(&self, overlay: &AdminOverlay) -> Result<Vec<u8>, ProxyError> {
        let body = serde_json::to_vec(overlay)
            .map_err(|e| ProxyError::Internal(format!("iam store: {e}")))?;
        Ok(crate::config_store::seal(&self.key.lock(), &body))
    }

    /// Opens bytes sealed by [`AdminStore::seal`] (here or on another instance sharing the
    /// bootstrap hash).
    pub fn unseal(&self, sealed: &[u8]) -> Result<AdminOverlay, String> {
        let plain = crate::config_store::open(&self.key.lock(), sealed)
            .map_err(|e| format!("cannot open sealed overlay: {e:?}"))?;
        serde_json::from_slice(&plain).map_err(|e| e.to_string())
    }

    /// Records `old_key` (if the key changed or the user was deleted) as deleted and `user`
    /// as upserted, durably. Nothing changes in memory when the write fails.
    pub fn record(&self, old_key: Option<&str>, user: Option<&UserSpec>) -> Result<(), ProxyError> {
        self.change(|next| next.record_user(old_key, user))
    }

    /// Group counterpart of [`AdminStore::record`] (`old_name`: renamed or deleted group).
    pub fn record_group(
        &self,
        old_name: Option<&str>,
        group: Option<&GroupSpec>,
    ) -> Result<(), ProxyError> {
        self.change(|next| next.record_group(old_name, group))
    }

    /// Applies `f` to a copy of the overlay, writes it durably, then makes it current: one
    /// write for a change that touches several entities (a group rename and its members, a
    /// backup import).
    pub fn change(&self, f: impl FnOnce(&mut AdminOverlay)) -> Result<(), ProxyError> {
        if self.is_locked() {
            return Err(ProxyError::Internal(LOCKED.into()));
        }
        let mut cur = self.overlay.lock();
        let mut next = cur.clone();
        next.version = 1;
        f(&mut next);
        write_sealed(&self.path, &self.key.lock(), &next)?;
        *cur = next;
        self.changed.notify_one();
        Ok(())
    }

    /// External-auth changes (see [`crate::oidc`]): `f` edits a copy of the overlay (its
    /// providers, mapping rules, identities and the users it provisions); the copy is written
    /// durably and made current only when `f` succeeds and changed something.
    pub fn change_ext_auth<T, E: From<ProxyError>>(
        &self,
        f: impl FnOnce(&mut AdminOverlay) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut cur = self.overlay.lock();
        let mut next = cur.clone();
        next.version = 1;
        let out = f(&mut next)?;
        if next != *cur {
            if self.is_locked() {
                return Err(ProxyError::Internal(LOCKED.into()).into());
            }
            write_sealed(&self.path, &self.key.lock(), &next)?;
            *cur = next;
            self.changed.notify_one();
        }
        Ok(out)
    }

    /// Replaces the whole overlay durably if it is still `seen`; false (nothing written)
    /// when it is unchanged or changed meanwhile.
    pub fn replace(&self, next: AdminOverlay, seen: &AdminOverlay) -> Result<bool, ProxyError> {
        if self.is_locked() {
            return Ok(false);
        }
        let mut cur = self.overlay.lock();
        if *cur == next || *cur != *seen {
            return Ok(false);
        }
        write_sealed(&self.path, &self.key.lock(), &next)?;
        *cur = next;
        Ok(true)
    }

    /// Re-seals the store under `key` as one crash-safe step with `commit` (which writes the
    /// new bootstrap hash): see [`AdminStore::change_rekeyed`], with no overlay change.
    pub fn rekey(
        &self,
        key: [u8; 32],
        commit: impl FnOnce() -> Result<(), ProxyError>,
    ) -> Result<(), ProxyError> {
        self.change_rekeyed(key, commit, |_| {})
    }

    /// Applies `f` to a copy of the overlay and seals the copy under `key` as one crash-safe
    /// step with `commit` (which writes the new bootstrap hash): the copy is written beside
    /// the store first, `commit` is the commit point, then the copy is renamed over the store.
    /// Before the commit point every failure leaves the old store, key and overlay (the staged
    /// copy is removed). After it the change has happened: the new key and overlay become
    /// current even if the rename fails (logged), since the next start rolls the staged copy
    /// forward under the new hash, and the next write replaces the store under the new key.
    /// Used by the password change (no overlay change) and by a backup import that adopts the
    /// zip's bootstrap hash (its users and groups and the re-key are one step).
    pub fn change_rekeyed(
        &self,
        key: [u8; 32],
        commit: impl FnOnce() -> Result<(), ProxyError>,
        f: impl FnOnce(&mut AdminOverlay),
    ) -> Result<(), ProxyError> {
        if self.is_locked() {
            return Err(ProxyError::Internal(LOCKED.into()));
        }
        let mut cur = self.overlay.lock();
        let mut next = cur.clone();
        f(&mut next);
        let changed = next != *cur;
        if changed {
            next.version = 1;
        }
        let pending = rekey_path(&self.path);
        write_sealed(&pending, &key, &next)?;
        if let Err(e) = commit() {
            let _ = std::fs::remove_file(&pending);
            return Err(e);
        }
        let finish =
            std::fs::rename(&pending, &self.path).and_then(|()| match self.path.parent() {
                Some(dir) => std::fs::File::open(dir)?.sync_all(),
                None => Ok(()),
            });
        if let Err(e) = finish {
            tracing::error!(error = %e, path = %self.path.display(), "config store re-key committed but not renamed into place; the next start finishes it");
        }
        *self.key.lock() = key;
        *cur = next;
        if changed {
            self.changed.notify_one();
        }
        Ok(())
    }

    /// `recover-db`: moves a locked store aside (kept, renamed with a timestamp) and starts
    /// empty. Returns where the old file went.
    pub fn reset(&self) -> Result<PathBuf, ProxyError> {
        let cur = self.overlay.lock();
        let aside = self.path.with_file_name(format!(
            "{}.unreadable-{}",
            crate::config_store::FILE,
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        ));
        match std::fs::rename(&self.path, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        drop(cur);
        *self.overlay.lock() = AdminOverlay::default();
        self.locked
            .store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(aside)
    }
}

/// Where [`AdminStore::rekey`] stages the re-sealed store.
fn rekey_path(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("store");
    path.with_file_name(format!("{name}.rekey"))
}

/// Finishes a re-key that crashed after its commit point: the staged copy opens with the
/// current key, so it becomes the store.
fn roll_forward(path: &Path, pending: &Path, key: &[u8; 32]) -> Option<AdminOverlay> {
    let bytes = std::fs::read(pending).ok()?;
    let plain = crate::config_store::open(key, &bytes).ok()?;
    let overlay = serde_json::from_slice(&plain).ok()?;
    std::fs::rename(pending, path).ok()?;
    tracing::warn!(path = %path.display(), "finished an interrupted config store re-key");
    Some(overlay)
}

fn write_sealed(path: &Path, key: &[u8; 32], overlay: &AdminOverlay) -> Result<(), ProxyError> {
    let body =
        serde_json::to_vec(overlay).map_err(|e| ProxyError::Internal(format!("iam store: {e}")))?;
    crate::config_store::write_atomic(path, &crate::config_store::seal(key, &body))?;
    Ok(())
}

/// The synthesized admin for the bootstrap credential pair.
pub fn bootstrap_user(access_key: &str, secret: &str) -> UserSpec {
    UserSpec {
        name: "$bootstrap".into(),
        access_key_id: access_key.into(),
        secret_access_key: secret.into(),
        enabled: true,
        groups: vec![],
        permissions: vec![Permission {
            effect: "Allow".into(),
            actions: vec!["*".into()],
            resources: vec!["*".into()],
            conditions: None,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(perms: Vec<Permission>) -> UserSpec {
        UserSpec {
            name: "u".into(),
            access_key_id: "k".into(),
            secret_access_key: "s".into(),
            enabled: true,
            groups: vec!["g".into()],
            permissions: perms,
        }
    }

    #[test]
    fn a_deny_of_admin_removes_admin_and_conditions_do_not_grant_it() {
        let allow_all = Permission {
            effect: "Allow".into(),
            actions: vec!["*".into()],
            resources: vec!["*".into()],
            conditions: None,
        };
        let iam = Iam::new(
            vec![],
            vec![GroupSpec {
                name: "g".into(),
                description: String::new(),
                permissions: vec![allow_all.clone()],
            }],
        );
        assert!(iam.is_admin(&user(vec![])));
        for deny in [("admin", "b/*"), ("*", "*")] {
            let u = user(vec![Permission {
                effect: "Deny".into(),
                actions: vec![deny.0.into()],
                resources: vec![deny.1.into()],
                conditions: None,
            }]);
            assert!(!iam.is_admin(&u), "{deny:?}");
        }
        // A Deny of some data keeps admin.
        let u = user(vec![Permission {
            effect: "Deny".into(),
            actions: vec!["*".into()],
            resources: vec!["b/secret/*".into()],
            conditions: None,
        }]);
        assert!(iam.is_admin(&u));
        let conditional = Iam::new(vec![], vec![]);
        let u = UserSpec {
            groups: vec![],
            ..user(vec![Permission {
                conditions: Some(
                    serde_json::from_str(r#"{"IpAddress": {"aws:SourceIp": "0.0.0.0/0"}}"#)
                        .unwrap(),
                ),
                ..allow_all
            }])
        };
        assert!(!conditional.is_admin(&u));
    }

    #[test]
    fn deny_wins_and_prefix_is_exact() {
        let iam = Iam::new(
            vec![],
            vec![GroupSpec {
                name: "g".into(),
                description: String::new(),
                permissions: vec![Permission {
                    effect: "Deny".into(),
                    actions: vec!["read".into()],
                    resources: vec!["b/secret/*".into()],
                    conditions: None,
                }],
            }],
        );
        let u = user(vec![Permission {
            effect: "Allow".into(),
            actions: vec!["read".into()],
            resources: vec!["b/*".into()],
            conditions: None,
        }]);
        assert_eq!(
            iam.evaluate(
                &u,
                Action::Read,
                "b",
                "public/x.zip",
                &RequestContext::default()
            ),
            Decision::Allow
        );
        assert_eq!(
            iam.evaluate(
                &u,
                Action::Read,
                "b",
                "secret/x.zip",
                &RequestContext::default()
            ),
            Decision::Deny
        );
        assert_eq!(
            iam.evaluate(
                &u,
                Action::Write,
                "b",
                "public/x.zip",
                &RequestContext::default()
            ),
            Decision::Deny
        );
        let p = user(vec![Permission {
            effect: "Allow".into(),
            actions: vec!["read".into()],
            resources: vec!["b/public/*".into()],
            conditions: None,
        }]);
        assert_eq!(
            iam.evaluate(
                &p,
                Action::Read,
                "b",
                "publicish/x",
                &RequestContext::default()
            ),
            Decision::Deny
        );
        let mut d = u.clone();
        d.enabled = false;
        assert_eq!(
            iam.evaluate(
                &d,
                Action::Read,
                "b",
                "public/x.zip",
                &RequestContext::default()
            ),
            Decision::Deny
        );
    }
}
