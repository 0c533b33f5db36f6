//! The sync engine. A pass pulls the change log from the persisted cursor and applies it to
//! the folder, then scans the folder against the last agreed state (`entries`) and pushes
//! what changed through `apply` (strategy `KEEP_BOTH`). Rules that keep user data safe:
//! downloads go to a temp file, are fsynced, then renamed into place; a local file that
//! changed since the last agreement is never overwritten or deleted — it is renamed to a
//! conflict copy (and uploaded as such) instead; state rows are written after the disk step.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::Context;
use futures::StreamExt;
use serde_json::{json, Value};
use sha2::Digest;

use crate::ignore::Ignore;
use crate::remote::{file_sha256, http_code, Remote};
use crate::state::{Entry, State};

/// Files pushed at a time (small files are bound by round trips, not bandwidth).
pub const PARALLEL_FILES: usize = 8;
/// Files up to this size go up in one request (a simple upload), not through a session.
pub const SIMPLE_UPLOAD_MAX: u64 = crate::remote::CHUNK_SIZE;

/// What a pass did (0 everywhere: in step).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub pulled: usize,
    pub downloaded: usize,
    pub uploaded: usize,
    pub pushed: usize,
    pub conflicts: usize,
    pub errors: usize,
}

impl PassReport {
    fn add(&mut self, o: &PassReport) {
        self.pulled += o.pulled;
        self.downloaded += o.downloaded;
        self.uploaded += o.uploaded;
        self.pushed += o.pushed;
        self.conflicts += o.conflicts;
        self.errors += o.errors;
    }

    pub fn quiet(&self) -> bool {
        self.downloaded == 0
            && self.uploaded == 0
            && self.pushed == 0
            && self.conflicts == 0
            && self.errors == 0
    }
}

/// A finished download: (temp file, version id, sha256).
type Fetched = (PathBuf, Option<String>, String);

pub struct Engine {
    pub dir: PathBuf,
    pub state: State,
    pub remote: Remote,
    pub device_name: String,
    pub ignore: Ignore,
    /// Downloads fetched ahead of their turn by `prefetch`: file id → (temp file, version,
    /// sha256). `fetch_file` takes its file from here when present.
    prefetched: std::sync::Mutex<HashMap<String, Fetched>>,
}

#[derive(Debug, Clone)]
struct Local {
    folder: bool,
    size: i64,
    mtime: i64,
}

fn raw_mtime(m: &std::fs::Metadata) -> i64 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The mtime to record for a file. A file modified in the last two seconds is "racily
/// clean" (a same-size edit within the clock's granularity would look unchanged), so 0 is
/// recorded and the next scan compares content instead.
fn mtime_of(m: &std::fs::Metadata) -> i64 {
    let t = raw_mtime(m);
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    if now - t < 2_000_000_000 {
        0
    } else {
        t
    }
}

fn parent_of(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &p[..i],
    }
}

fn name_of(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

impl Engine {
    /// Open an initialised folder.
    pub async fn open(dir: &Path) -> anyhow::Result<Engine> {
        let state = State::open(dir).await?;
        let remote = Remote {
            http: reqwest::Client::builder().build()?,
            base: state.require("server").await?,
            token: state.require("token").await?,
            share_id: state.require("share_id").await?,
            device_id: state.require("device_id").await?,
        };
        let device_name = state
            .get("device_name")
            .await?
            .unwrap_or_else(|| remote.device_id.clone());
        Ok(Engine {
            dir: dir.to_path_buf(),
            ignore: Ignore::load(&dir.join(crate::STATE_DIR).join("ignore")),
            prefetched: Default::default(),
            state,
            remote,
            device_name,
        })
    }

    /// `init`: store settings, register the device, pick the share.
    pub async fn init(
        dir: &Path,
        server: &str,
        token: &str,
        share: Option<&str>,
        device_name: Option<&str>,
    ) -> anyhow::Result<Engine> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let state = State::open(dir).await?;
        let device_id = match state.get("device_id").await? {
            Some(d) => d,
            None => format!("dev-{}", uuid::Uuid::new_v4()),
        };
        let name = device_name
            .map(str::to_string)
            .or(std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| device_id.chars().take(12).collect());
        let mut remote = Remote {
            http: reqwest::Client::new(),
            base: server.to_string(),
            token: token.to_string(),
            share_id: String::new(),
            device_id: device_id.clone(),
        };
        remote.share_id = match share {
            Some(s) => s.to_string(),
            None => remote.personal_share().await?,
        };
        remote.register_device(&name).await?;
        for (k, v) in [
            ("server", server),
            ("token", token),
            ("share_id", remote.share_id.as_str()),
            ("device_id", device_id.as_str()),
            ("device_name", name.as_str()),
        ] {
            state.set(k, v).await?;
        }
        drop(state);
        Engine::open(dir).await
    }

    fn local(&self, p: &str) -> PathBuf {
        self.dir.join(p.trim_start_matches('/'))
    }

    fn tmp(&self) -> PathBuf {
        self.dir
            .join(crate::STATE_DIR)
            .join("tmp")
            .join(uuid::Uuid::new_v4().to_string())
    }

    /// Every file and folder below the root (state dir and ignored names skipped).
    fn scan(&self) -> anyhow::Result<BTreeMap<String, Local>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![("/".to_string(), self.dir.clone())];
        while let Some((sp, dp)) = stack.pop() {
            let rd = match std::fs::read_dir(&dp) {
                Ok(rd) => rd,
                Err(_) => continue,
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if sp == "/" && name == crate::STATE_DIR {
                    continue;
                }
                let p = join(&sp, &name);
                if self.ignore.ignored(&p) {
                    continue;
                }
                let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                    continue;
                };
                if m.is_dir() {
                    out.insert(
                        p.clone(),
                        Local {
                            folder: true,
                            size: 0,
                            mtime: 0,
                        },
                    );
                    stack.push((p, e.path()));
                } else if m.is_file() {
                    out.insert(
                        p,
                        Local {
                            folder: false,
                            size: m.len() as i64,
                            mtime: raw_mtime(&m),
                        },
                    );
                }
            }
        }
        Ok(out)
    }

    /// True when the local file at `p` still is what `e` recorded (no local edit).
    fn clean(&self, p: &str, e: &Entry) -> bool {
        let Ok(m) = std::fs::metadata(self.local(p)) else {
            return false;
        };
        if m.len() as i64 == e.size && e.mtime != 0 && raw_mtime(&m) == e.mtime {
            return true;
        }
        matches!((file_sha256(&self.local(p)), &e.sha256), (Ok(a), Some(b)) if a == *b)
    }

    /// Free conflict-copy path next to `p`.
    fn copy_path(&self, p: &str) -> String {
        let base = crate::conflict_name(name_of(p), &self.device_name, chrono::Utc::now());
        let mut cand = join(parent_of(p), &base);
        let mut i = 2;
        while self.local(&cand).exists() {
            let n = match base.rfind('.') {
                Some(d) if d > 0 => format!("{} {i}{}", &base[..d], &base[d..]),
                _ => format!("{base} {i}"),
            };
            cand = join(parent_of(p), &n);
            i += 1;
        }
        cand
    }

    /// Move the local item at `p` aside as a conflict copy (it is pushed as a new file).
    async fn set_aside(&self, p: &str, rep: &mut PassReport) -> anyhow::Result<String> {
        let c = self.copy_path(p);
        std::fs::rename(self.local(p), self.local(&c))?;
        self.state.remove(p).await?;
        rep.conflicts += 1;
        tracing::info!(event = "conflict_copy", path = %p, copy = %c);
        Ok(c)
    }

    // ---------------- pull ----------------

    /// Apply remote changes from the persisted cursor until the log is drained; the cursor is
    /// stored locally and committed to the server after each page.
    pub async fn pull(&self, rep: &mut PassReport) -> anyhow::Result<()> {
        let mut cursor = self
            .state
            .get("cursor")
            .await?
            .unwrap_or_else(|| "0".into());
        loop {
            let (changes, next, more) = match self.remote.changes(&cursor, 1000).await {
                Ok(x) => x,
                Err(e) if http_code(&e).map(|c| c.1) == Some("SYNC_CURSOR_INVALID") => {
                    tracing::warn!(event = "cursor_invalid", cursor = %cursor, "full resync");
                    cursor = "0".into();
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.prefetch(&changes).await?;
            for ch in &changes {
                rep.pulled += 1;
                if let Err(e) = self.apply_remote(ch, rep).await {
                    // A change that cannot be applied now (e.g. a file busy) is retried by the
                    // next scan/full pass; it never blocks the stream.
                    tracing::warn!(event = "apply_remote_failed", change = %ch, error = %format!("{e:#}"));
                    rep.errors += 1;
                }
            }
            self.drop_prefetched();
            self.state.set("cursor", &next).await?;
            if !next.starts_with("snap.") {
                self.remote.commit_cursor(&next).await?;
            }
            cursor = next;
            if !more {
                return Ok(());
            }
        }
    }

    /// Download, `PARALLEL_FILES` at a time, the files of a page that are new to this folder
    /// (unknown id, nothing at the path yet) — the bulk of a first sync. They land in temp
    /// files; applying the changes in log order stays sequential and takes them from there.
    async fn prefetch(&self, changes: &[Value]) -> anyhow::Result<()> {
        let mut want: Vec<String> = Vec::new();
        for ch in changes {
            if ch["resource_type"] != "file"
                || !matches!(ch["change_type"].as_str(), Some("created" | "updated"))
            {
                continue;
            }
            let (Some(id), Some(p)) = (ch["resource_id"].as_str(), ch["new_path"].as_str()) else {
                continue;
            };
            if self.ignore.ignored(p)
                || std::fs::symlink_metadata(self.local(p)).is_ok()
                || want.iter().any(|w| w == id)
                || self.state.by_id(id).await?.is_some()
            {
                continue;
            }
            want.push(id.to_string());
        }
        if want.len() < 2 {
            return Ok(());
        }
        let got: Vec<_> = futures::stream::iter(want.into_iter().map(|id| async move {
            let tmp = self.tmp();
            let r = self.remote.download(&id, &tmp).await;
            (id, tmp, r)
        }))
        .buffer_unordered(PARALLEL_FILES)
        .collect()
        .await;
        let mut map = self.prefetched.lock().unwrap_or_else(|e| e.into_inner());
        for (id, tmp, r) in got {
            match r {
                Ok((v, s)) => {
                    map.insert(id, (tmp, v, s));
                }
                // The in-order apply downloads it again (and reports a real error there).
                Err(_) => {
                    let _ = std::fs::remove_file(&tmp);
                }
            }
        }
        Ok(())
    }

    fn take_prefetched(&self, id: &str) -> Option<Fetched> {
        self.prefetched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }

    /// Temp files of prefetched downloads no change used (e.g. deleted later in the page).
    fn drop_prefetched(&self) {
        for (_, (tmp, _, _)) in self
            .prefetched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            let _ = std::fs::remove_file(tmp);
        }
    }

    async fn apply_remote(&self, ch: &Value, rep: &mut PassReport) -> anyhow::Result<()> {
        let rt = ch["resource_type"].as_str().unwrap_or("");
        let ct = ch["change_type"].as_str().unwrap_or("");
        let id = ch["resource_id"].as_str().unwrap_or("").to_string();
        let mut new_path = ch["new_path"].as_str().map(str::to_string);
        if rt == "share" {
            return Ok(());
        }
        if let Some(p) = new_path.take() {
            if ch["snapshot"] == true || ct == "deleted" {
                new_path = Some(p);
            } else {
                match self.current_path(rt, &id, p).await? {
                    Some(p) => new_path = Some(p),
                    None => return Ok(()), // gone on the server; its delete is in the log
                }
            }
        }
        if new_path.as_deref().is_some_and(|p| self.ignore.ignored(p)) {
            return Ok(());
        }
        match (rt, ct) {
            ("folder", "created") => {
                let p = new_path.unwrap_or_default();
                let lp = self.local(&p);
                if lp.is_file() {
                    self.set_aside(&p, rep).await?;
                }
                std::fs::create_dir_all(&lp)?;
                self.state
                    .put(&Entry {
                        path: p,
                        resource_id: id,
                        kind: "folder".into(),
                        version_id: None,
                        sha256: None,
                        size: 0,
                        mtime: 0,
                    })
                    .await?;
            }
            ("file", "created") | ("file", "updated") => {
                let p = new_path.unwrap_or_default();
                let version = ch["version_id"].as_str().map(str::to_string);
                let sha = ch["metadata"]["checksum_sha256"]
                    .as_str()
                    .map(str::to_string);
                let snapshot = ch["snapshot"] == true;
                let mut target = p.clone();
                if let Some(e) = self.state.by_id(&id).await? {
                    if e.version_id == version && (e.path == p || !snapshot) {
                        return Ok(()); // our own change, or already applied
                    }
                    if e.path != p {
                        if !snapshot {
                            // The log is in order, so a path that differs from ours is stale:
                            // we moved the file since (pushed), or a later change in this log
                            // moves it. The content goes where the file is now; following the
                            // stale path would undo the move and leave the file at two names.
                            target = e.path.clone();
                        } else if self.local(&e.path).is_file() && self.clean(&e.path, &e) {
                            // A snapshot lists the current path: follow it.
                            self.move_local(&e.path, &p, rep).await?;
                        }
                    }
                }
                self.fetch_file(&id, &target, sha.as_deref(), rep).await?;
            }
            (_, "moved") | (_, "renamed") => {
                let to = new_path.unwrap_or_default();
                match self.state.by_id(&id).await? {
                    Some(e) if e.path == to => {}
                    Some(e) => {
                        if self.local(&e.path).exists() {
                            self.move_local(&e.path, &to, rep).await?;
                        } else {
                            self.state.rename_tree(&e.path, &to).await?;
                        }
                    }
                    None if rt == "folder" => {
                        std::fs::create_dir_all(self.local(&to))?;
                        self.state
                            .put(&Entry {
                                path: to,
                                resource_id: id,
                                kind: "folder".into(),
                                version_id: None,
                                sha256: None,
                                size: 0,
                                mtime: 0,
                            })
                            .await?;
                    }
                    None => {
                        let sha = ch["metadata"]["checksum_sha256"]
                            .as_str()
                            .map(str::to_string);
                        self.fetch_file(&id, &to, sha.as_deref(), rep).await?;
                    }
                }
            }
            (_, "deleted") => {
                if let Some(e) = self.state.by_id(&id).await? {
                    self.delete_local(&e, rep).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Where the item of a logged change is now. A logged path is the server's path at that
    /// time; when its parent is not a folder here, a folder above it was moved since — by us
    /// (moves are pushed before the pull) or later in the log — and following the old path
    /// would put the item where the server no longer has it. Then the server is asked.
    /// `None`: deleted since.
    async fn current_path(&self, rt: &str, id: &str, p: String) -> anyhow::Result<Option<String>> {
        let parent = parent_of(&p);
        if parent == "/"
            || self
                .state
                .by_path(parent)
                .await?
                .is_some_and(|e| e.is_folder())
        {
            return Ok(Some(p));
        }
        let url = if rt == "folder" {
            format!("/api/v1/folders/{id}")
        } else {
            format!("/api/v1/files/{id}")
        };
        match self.remote.get(&url).await {
            Ok(v) if v["is_deleted"] == true => Ok(None),
            Ok(v) => Ok(Some(v["path"].as_str().map(str::to_string).unwrap_or(p))),
            Err(e) if matches!(http_code(&e), Some((404, _)) | Some((410, _))) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Rename local `from` to `to` (a local item in the way is set aside) and move the state.
    async fn move_local(&self, from: &str, to: &str, rep: &mut PassReport) -> anyhow::Result<()> {
        if self.local(to).exists() {
            self.set_aside(to, rep).await?;
        }
        if let Some(parent) = self.local(to).parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(self.local(from), self.local(to))?;
        self.state.rename_tree(from, to).await?;
        Ok(())
    }

    /// Make the local file at `p` the server's file `id` (download unless identical).
    async fn fetch_file(
        &self,
        id: &str,
        p: &str,
        sha: Option<&str>,
        rep: &mut PassReport,
    ) -> anyhow::Result<()> {
        let lp = self.local(p);
        if lp.is_dir() {
            // A local folder where the server has a file: keep the folder, file gets a copy name.
            let c = self.copy_path(p);
            return Box::pin(self.fetch_file(id, &c, sha, rep)).await;
        }
        let before = std::fs::metadata(&lp).ok();
        if before.is_some() {
            let here = self.state.by_path(p).await?;
            let local_sha = file_sha256(&lp)?;
            if sha == Some(local_sha.as_str()) {
                // Same bytes already here: just record the agreement.
                let m = std::fs::metadata(&lp)?;
                let version = self.current_version(id).await?;
                self.state
                    .put(&Entry {
                        path: p.into(),
                        resource_id: id.into(),
                        kind: "file".into(),
                        version_id: version,
                        sha256: Some(local_sha),
                        size: m.len() as i64,
                        mtime: mtime_of(&m),
                    })
                    .await?;
                return Ok(());
            }
            let dirty = match &here {
                Some(e) => e.sha256.as_deref() != Some(local_sha.as_str()),
                None => true,
            };
            if dirty {
                self.set_aside(p, rep).await?;
            }
        }
        let pre = self.take_prefetched(id);
        let (tmp, (version, got_sha)) = match pre {
            Some((tmp, v, s)) => (tmp, (v, s)),
            None => {
                let tmp = self.tmp();
                match self.remote.download(id, &tmp).await {
                    Ok(x) => (tmp, x),
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        if matches!(http_code(&e), Some((404, _)) | Some((410, _))) {
                            return Ok(()); // gone since; its delete follows in the log
                        }
                        return Err(e);
                    }
                }
            }
        };
        if let Some(parent) = lp.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Someone wrote the file while we downloaded: keep theirs as a copy.
        if lp.exists() {
            let unchanged = match self.state.by_path(p).await? {
                Some(e) => self.clean(p, &e),
                None => false,
            };
            if !unchanged {
                self.set_aside(p, rep).await?;
            }
        }
        std::fs::rename(&tmp, &lp)?;
        if let Some(parent) = lp.parent() {
            if let Ok(d) = std::fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
        let m = std::fs::metadata(&lp)?;
        self.state
            .put(&Entry {
                path: p.into(),
                resource_id: id.into(),
                kind: "file".into(),
                version_id: version,
                sha256: Some(got_sha),
                size: m.len() as i64,
                mtime: mtime_of(&m),
            })
            .await?;
        rep.downloaded += 1;
        Ok(())
    }

    async fn current_version(&self, id: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .remote
            .get(&format!("/api/v1/files/{id}"))
            .await
            .ok()
            .and_then(|f| f["version_id"].as_str().map(str::to_string)))
    }

    /// A remote delete: clean files go, edited or unknown ones stay (and get pushed back).
    async fn delete_local(&self, e: &Entry, _rep: &mut PassReport) -> anyhow::Result<()> {
        if !e.is_folder() {
            if self.local(&e.path).is_file() && self.clean(&e.path, e) {
                std::fs::remove_file(self.local(&e.path))?;
            }
            self.state.remove(&e.path).await?;
            return Ok(());
        }
        for c in self.state.under(&e.path).await? {
            if !c.is_folder() && self.local(&c.path).is_file() && self.clean(&c.path, &c) {
                std::fs::remove_file(self.local(&c.path))?;
            }
        }
        // Folders deepest first; a folder still holding something stays.
        let mut dirs: Vec<String> = self
            .state
            .under(&e.path)
            .await?
            .into_iter()
            .filter(|c| c.is_folder())
            .map(|c| c.path)
            .collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
        dirs.push(e.path.clone());
        for d in dirs {
            let _ = std::fs::remove_dir(self.local(&d));
        }
        self.state.remove_tree(&e.path).await?;
        Ok(())
    }

    // ---------------- push ----------------

    /// The agreed state as a map by path.
    async fn entry_map(&self) -> anyhow::Result<BTreeMap<String, Entry>> {
        Ok(self
            .state
            .entries()
            .await?
            .into_iter()
            .map(|e| (e.path.clone(), e))
            .collect())
    }

    /// Push local moves and renames (folders first, then files) so the server keeps the ids.
    /// Runs before a pull too: a remote edit of a file we renamed then lands on the new name
    /// instead of bringing the old name back beside it.
    pub async fn push_moves(&self, rep: &mut PassReport) -> anyhow::Result<()> {
        let local = self.scan()?;
        let entries = self.entry_map().await?;
        let entries = if self.push_folder_moves(&local, &entries, rep).await? {
            self.entry_map().await?
        } else {
            entries
        };
        self.push_file_moves(&local, &entries, rep).await
    }

    /// A vanished folder matched with a new local one holding (mostly) the same items at the
    /// same relative paths is pushed as one folder move: the folder keeps its id, nothing
    /// below it travels. Returns whether anything moved.
    async fn push_folder_moves(
        &self,
        local: &BTreeMap<String, Local>,
        entries: &BTreeMap<String, Entry>,
        rep: &mut PassReport,
    ) -> anyhow::Result<bool> {
        let mut gone: Vec<&Entry> = entries
            .values()
            .filter(|e| e.is_folder() && !local.get(&e.path).is_some_and(|l| l.folder))
            .collect();
        let new: Vec<&String> = local
            .iter()
            .filter(|(p, l)| l.folder && !entries.get(*p).is_some_and(Entry::is_folder))
            .map(|(p, _)| p)
            .collect();
        if gone.is_empty() || new.is_empty() {
            return Ok(false);
        }
        gone.sort_by_key(|e| (e.path.matches('/').count(), e.path.clone()));
        let under = |p: &str| format!("{p}/");
        let mut moved_from: Vec<String> = Vec::new();
        let mut used: Vec<String> = Vec::new();
        for g in gone {
            if moved_from.iter().any(|m| g.path.starts_with(&under(m))) {
                continue; // moved with its parent
            }
            // What the agreed state had below `g`, relative: (path, folder, size).
            let prefix = under(&g.path);
            let items: Vec<(&str, bool, i64)> = entries
                .range(prefix.clone()..)
                .take_while(|(p, _)| p.starts_with(&prefix))
                .map(|(p, e)| (&p[prefix.len() - 1..], e.is_folder(), e.size))
                .collect();
            let mut best: Option<(&String, usize)> = None;
            let mut empty_candidates = Vec::new();
            for n in &new {
                if used.iter().any(|u| *n == u || n.starts_with(&under(u))) {
                    continue;
                }
                let nprefix = under(n);
                let n_items = local
                    .range(nprefix.clone()..)
                    .take_while(|(p, _)| p.starts_with(&nprefix))
                    .count();
                if items.is_empty() {
                    if n_items == 0
                        && (parent_of(n) == parent_of(&g.path) || name_of(n) == name_of(&g.path))
                    {
                        empty_candidates.push(*n);
                    }
                    continue;
                }
                let score = items
                    .iter()
                    .filter(|(rel, folder, size)| {
                        local
                            .get(&format!("{n}{rel}"))
                            .is_some_and(|l| l.folder == *folder && (*folder || l.size == *size))
                    })
                    .count();
                // Most of what was there must be here (an edit or two inside is fine), and
                // most of what is here must come from there.
                if score == 0 || score * 2 < items.len() || score * 2 < n_items {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some((b, s)) => {
                        score > s
                            || (score == s
                                && name_of(n) == name_of(&g.path)
                                && name_of(b) != name_of(&g.path))
                    }
                };
                if better {
                    best = Some((n, score));
                }
            }
            let target = match best {
                Some((n, _)) => n.clone(),
                None if empty_candidates.len() == 1 => empty_candidates[0].clone(),
                None => continue,
            };
            let r = self
                .apply_one(json!({"resource_type": "folder", "change_type": "moved", "resource_id": g.resource_id, "new_path": target}))
                .await;
            match r {
                Ok(r) if r["status"] == "applied" => {
                    let server_path = r["new_path"].as_str().unwrap_or(&target).to_string();
                    if server_path != target {
                        // The name was taken on the server: ours got a conflict-copy name.
                        if self.local(&server_path).exists() {
                            self.set_aside(&server_path, rep).await?;
                        }
                        std::fs::rename(self.local(&target), self.local(&server_path))?;
                    }
                    self.state.rename_tree(&g.path, &server_path).await?;
                    tracing::info!(event = "folder_moved", from = %g.path, to = %server_path);
                    rep.pushed += 1;
                    moved_from.push(g.path.clone());
                    used.push(target);
                }
                // Deleted on the server meanwhile (or refused): the plain path below recreates.
                other => {
                    tracing::info!(event = "folder_move_not_applied", from = %g.path, to = %target, result = ?other.map_err(|e| format!("{e:#}")))
                }
            }
        }
        Ok(!moved_from.is_empty())
    }

    /// A new local file with the bytes of a vanished one is that file moved or renamed.
    async fn push_file_moves(
        &self,
        local: &BTreeMap<String, Local>,
        entries: &BTreeMap<String, Entry>,
        rep: &mut PassReport,
    ) -> anyhow::Result<()> {
        let mut missing: Vec<&Entry> = entries
            .values()
            .filter(|e| !e.is_folder() && local.get(&e.path).is_none_or(|l| l.folder))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        for (p, l) in local.iter() {
            if l.folder || entries.contains_key(p) || !missing.iter().any(|m| m.size == l.size) {
                continue;
            }
            let Ok(sha) = file_sha256(&self.local(p)) else {
                continue;
            };
            let Some(i) = missing
                .iter()
                .position(|m| m.sha256.as_deref() == Some(sha.as_str()) && m.size == l.size)
            else {
                continue;
            };
            let m = missing.remove(i).clone();
            let r = self.apply_one(json!({"resource_type": "file", "change_type": "moved", "resource_id": m.resource_id, "new_path": p})).await;
            match r {
                Ok(r) if r["status"] == "applied" => {
                    let server_path = r["new_path"].as_str().unwrap_or(p).to_string();
                    if server_path != *p {
                        std::fs::rename(self.local(p), self.local(&server_path))?;
                    }
                    let meta = std::fs::metadata(self.local(&server_path))?;
                    self.state.remove(&m.path).await?;
                    self.state
                        .put(&Entry {
                            path: server_path,
                            size: meta.len() as i64,
                            mtime: mtime_of(&meta),
                            ..m
                        })
                        .await?;
                    rep.pushed += 1;
                }
                Ok(r) if r["status"] == "skipped" => {
                    // Deleted on the server meanwhile: the file is uploaded as new.
                    self.state.remove(&m.path).await?;
                }
                other => self.push_failed(p, other, rep),
            }
        }
        Ok(())
    }

    /// Compare the folder with the agreed state and push the differences.
    pub async fn push(&self, rep: &mut PassReport) -> anyhow::Result<()> {
        self.push_moves(rep).await?;
        let local = self.scan()?;
        let entries = self.entry_map().await?;
        // 1. New folders, parents first.
        let mut new_dirs: Vec<&String> = local
            .iter()
            .filter(|(p, l)| l.folder && !entries.get(*p).is_some_and(Entry::is_folder))
            .map(|(p, _)| p)
            .collect();
        new_dirs.sort_by_key(|p| p.matches('/').count());
        let mut folder_ids: HashMap<String, String> = entries
            .values()
            .filter(|e| e.is_folder())
            .map(|e| (e.path.clone(), e.resource_id.clone()))
            .collect();
        for p in new_dirs {
            let r = self
                .apply_one(
                    json!({"resource_type": "folder", "change_type": "created", "new_path": p}),
                )
                .await;
            match r {
                Ok(r) if r["status"] == "applied" => {
                    let id = r["resource_id"].as_str().unwrap_or("").to_string();
                    self.state
                        .put(&Entry {
                            path: p.clone(),
                            resource_id: id.clone(),
                            kind: "folder".into(),
                            version_id: None,
                            sha256: None,
                            size: 0,
                            mtime: 0,
                        })
                        .await?;
                    folder_ids.insert(p.clone(), id);
                    rep.pushed += 1;
                }
                other => self.push_failed(p, other, rep),
            }
        }
        // 2. Files: changed and new, `PARALLEL_FILES` at a time (small files are bound by
        // round trips, not bandwidth).
        let jobs: Vec<(&String, &Local, Option<&Entry>)> = local
            .iter()
            .filter(|(_, l)| !l.folder)
            .filter_map(|(p, l)| match entries.get(p) {
                Some(e) if !e.is_folder() => (!(e.size == l.size
                    && e.mtime != 0
                    && e.mtime == l.mtime))
                    .then_some((p, l, Some(e))),
                _ => Some((p, l, None)),
            })
            .collect();
        let folder_ids = &folder_ids;
        let reports: Vec<anyhow::Result<PassReport>> =
            futures::stream::iter(jobs.into_iter().map(|(p, l, e)| async move {
                let mut r = PassReport::default();
                match e {
                    Some(e) => self.push_edit(p, l, e, &mut r).await?,
                    None => self.push_new(p, l, folder_ids, &mut r).await?,
                }
                anyhow::Ok(r)
            }))
            .buffer_unordered(PARALLEL_FILES)
            .collect()
            .await;
        for r in reports {
            rep.add(&r?);
        }
        // 3. Deletions: files first, then folders deepest first.
        let entries = self.entry_map().await?;
        let missing: Vec<&Entry> = entries
            .values()
            .filter(|e| !e.is_folder() && local.get(&e.path).is_none_or(|l| l.folder))
            .collect();
        for m in missing {
            let r = self.apply_one(json!({"resource_type": "file", "change_type": "deleted", "resource_id": m.resource_id, "base_version_id": m.version_id})).await;
            match r {
                Ok(r) if r["status"] == "applied" || r["status"] == "conflict" => {
                    // On conflict the server kept a newer edit; the next pull brings it back.
                    self.state.remove(&m.path).await?;
                    rep.pushed += 1;
                }
                Err(e) if matches!(http_code(&e), Some((404, _))) => {
                    self.state.remove(&m.path).await?
                }
                other => self.push_failed(&m.path, other, rep),
            }
        }
        let mut gone_dirs: Vec<&Entry> = entries
            .values()
            .filter(|e| e.is_folder() && !local.get(&e.path).is_some_and(|l| l.folder))
            .collect();
        gone_dirs.sort_by_key(|e| std::cmp::Reverse(e.path.len()));
        for e in gone_dirs {
            let r = self.apply_one(json!({"resource_type": "folder", "change_type": "deleted", "resource_id": e.resource_id})).await;
            match r {
                Ok(r) if r["status"] == "applied" => {
                    self.state.remove_tree(&e.path).await?;
                    rep.pushed += 1;
                }
                Err(err) if matches!(http_code(&err), Some((404, _))) => {
                    self.state.remove_tree(&e.path).await?
                }
                other => self.push_failed(&e.path, other, rep),
            }
        }
        Ok(())
    }

    /// A known file whose size or mtime changed: record a touch, or push the edit.
    async fn push_edit(
        &self,
        p: &str,
        l: &Local,
        e: &Entry,
        rep: &mut PassReport,
    ) -> anyhow::Result<()> {
        let Ok(sha) = file_sha256(&self.local(p)) else {
            return Ok(()); // gone since the scan: the next pass sees it
        };
        if e.sha256.as_deref() == Some(sha.as_str()) {
            // Touched, not changed.
            let meta = std::fs::metadata(self.local(p))?;
            self.state
                .put(&Entry {
                    mtime: mtime_of(&meta),
                    size: l.size,
                    ..e.clone()
                })
                .await?;
            return Ok(());
        }
        self.push_content(p, l, &sha, Some(e), rep).await
    }

    /// A file the server does not know. One that fits a chunk goes in one request (simple
    /// upload into its folder); a bigger one, or one whose name is taken on the server, goes
    /// through a resumable session and `apply` (which settles the name clash as KEEP_BOTH).
    async fn push_new(
        &self,
        p: &str,
        l: &Local,
        folder_ids: &HashMap<String, String>,
        rep: &mut PassReport,
    ) -> anyhow::Result<()> {
        let parent = parent_of(p);
        let folder_id = if parent == "/" {
            None
        } else {
            match folder_ids.get(parent) {
                Some(id) => Some(id.as_str()),
                None => {
                    // Its folder could not be created: reported there, retried next pass.
                    return Ok(());
                }
            }
        };
        if l.size as u64 <= SIMPLE_UPLOAD_MAX {
            let lp = self.local(p);
            let Ok(data) = std::fs::read(&lp) else {
                return Ok(()); // gone since the scan
            };
            let sha = hex::encode(sha2::Sha256::digest(&data));
            match self.remote.simple_upload(folder_id, name_of(p), data).await {
                Ok(node) => {
                    let meta = std::fs::metadata(&lp)?;
                    self.state
                        .put(&Entry {
                            path: p.to_string(),
                            resource_id: node["id"].as_str().unwrap_or("").to_string(),
                            kind: "file".into(),
                            version_id: node["version_id"].as_str().map(str::to_string),
                            // What the server stored is what we sent.
                            sha256: Some(sha),
                            size: meta.len() as i64,
                            mtime: mtime_of(&meta),
                        })
                        .await?;
                    rep.uploaded += 1;
                    return Ok(());
                }
                Err(e) if matches!(http_code(&e), Some((409, _))) => {
                    // Name taken on the server: the session path keeps both.
                }
                Err(e) => {
                    self.push_failed(p, Err(e), rep);
                    return Ok(());
                }
            }
        }
        let Ok(sha) = file_sha256(&self.local(p)) else {
            return Ok(());
        };
        self.push_content(p, l, &sha, None, rep).await
    }

    fn push_failed(&self, p: &str, r: anyhow::Result<Value>, rep: &mut PassReport) {
        rep.errors += 1;
        match r {
            Ok(v) => tracing::warn!(event = "push_failed", path = %p, result = %v),
            Err(e) => tracing::warn!(event = "push_failed", path = %p, error = %format!("{e:#}")),
        }
    }

    async fn apply_one(&self, change: Value) -> anyhow::Result<Value> {
        let mut r = self.remote.apply(vec![change]).await?;
        Ok(r.pop().unwrap_or(Value::Null))
    }

    /// Upload a new or changed file and apply it; a conflict leaves our bytes under the
    /// server's conflict-copy name, locally too.
    async fn push_content(
        &self,
        p: &str,
        l: &Local,
        sha: &str,
        base: Option<&Entry>,
        rep: &mut PassReport,
    ) -> anyhow::Result<()> {
        let sid = match self
            .remote
            .upload(&self.state, p, &self.local(p), l.size as u64, sha)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                self.push_failed(p, Err(e), rep);
                return Ok(());
            }
        };
        let change = match base {
            Some(e) => {
                json!({"resource_type": "file", "change_type": "updated", "resource_id": e.resource_id, "base_version_id": e.version_id, "session_id": sid})
            }
            None => {
                json!({"resource_type": "file", "change_type": "created", "new_path": p, "session_id": sid})
            }
        };
        let r = match self.apply_one(change).await {
            Ok(r) => r,
            Err(e) => {
                if let Some((_, code)) = http_code(&e) {
                    if code.starts_with("UPLOAD_") || code == "CHECKSUM_MISMATCH" {
                        self.state.clear_upload(p).await?;
                    }
                }
                self.push_failed(p, Err(e), rep);
                return Ok(());
            }
        };
        if r["status"] == "error" {
            let code = r["error"]["code"].as_str().unwrap_or("");
            if code.starts_with("UPLOAD_") || code == "CHECKSUM_MISMATCH" {
                self.state.clear_upload(p).await?;
            }
            if code == "NOT_FOUND" || code == "RESOURCE_DELETED" {
                // Our base vanished: forget it, the file is pushed as new next pass.
                self.state.remove(p).await?;
            }
            self.push_failed(p, Ok(r), rep);
            return Ok(());
        }
        self.state.clear_upload(p).await?;
        let id = r["resource_id"].as_str().unwrap_or("").to_string();
        let server_path = r["new_path"].as_str().unwrap_or(p).to_string();
        let version = r["version_id"].as_str().map(str::to_string);
        if r["status"] == "conflict" && server_path != p {
            // Our bytes became the conflict copy on the server: same name here; the server's
            // file at `p` comes down with the next pull.
            if let Some(parent) = self.local(&server_path).parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(self.local(p), self.local(&server_path))?;
            self.state.remove(p).await?;
            rep.conflicts += 1;
        } else if r["status"] == "conflict" && r["resolution"] == "server_kept" {
            self.state.remove(p).await?;
            rep.conflicts += 1;
            return Ok(());
        }
        let meta = std::fs::metadata(self.local(&server_path))
            .with_context(|| format!("uploaded {p:?}: server answered {r}"))?;
        self.state
            .put(&Entry {
                path: server_path,
                resource_id: id,
                kind: "file".into(),
                version_id: version,
                sha256: Some(sha.to_string()),
                size: meta.len() as i64,
                mtime: mtime_of(&meta),
            })
            .await?;
        rep.uploaded += 1;
        Ok(())
    }

    /// One full pass: pull, push, pull again (absorbing our own echoes and anything a
    /// conflict needs), repeated until quiet (at most `max` rounds).
    pub async fn once(&self) -> anyhow::Result<PassReport> {
        let mut total = PassReport::default();
        for _ in 0..5 {
            let mut rep = PassReport::default();
            self.push_moves(&mut rep).await?;
            self.pull(&mut rep).await?;
            self.push(&mut rep).await?;
            self.pull(&mut rep).await?;
            let quiet = rep.quiet();
            total.pulled += rep.pulled;
            total.downloaded += rep.downloaded;
            total.uploaded += rep.uploaded;
            total.pushed += rep.pushed;
            total.conflicts += rep.conflicts;
            total.errors = rep.errors;
            if quiet {
                break;
            }
        }
        Ok(total)
    }

    /// Local changes not yet pushed (for `status`).
    pub async fn pending_local(&self) -> anyhow::Result<usize> {
        let local = self.scan()?;
        let entries: HashMap<String, Entry> = self
            .state
            .entries()
            .await?
            .into_iter()
            .map(|e| (e.path.clone(), e))
            .collect();
        let mut n = 0;
        for (p, l) in &local {
            match entries.get(p) {
                Some(e)
                    if e.is_folder() == l.folder
                        && (l.folder
                            || (e.size == l.size && e.mtime != 0 && e.mtime == l.mtime)) => {}
                _ => n += 1,
            }
        }
        n += entries.keys().filter(|p| !local.contains_key(*p)).count();
        Ok(n)
    }
}
