//! Bucket-to-bucket replication (`storage.replication.rules[]`): each rule copies the
//! objects under a source bucket/prefix to a destination bucket/prefix on its interval or on
//! demand. Copies go through the engine (read reconstructs, write re-deltas), so the
//! destination stores deltas like any other upload; an object whose destination ETag already
//! equals the source ETag is skipped. A rule with `replicate_deletes` also removes
//! destination objects whose source is gone. Pause state, run history and failures are kept
//! in `$DGP_DATA_DIR/replication_state.json` (rewritten atomically on every change) so a
//! restart neither un-pauses a rule nor forgets its history.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::delta::{Engine, PutOptions};
use crate::error::ProxyError;

/// Runs and failures kept per rule (newest first when read).
const KEEP: usize = 100;

/// The state file in the data dir (local for every backend kind, like the config store).
pub const STATE_FILE: &str = "replication_state.json";

/// `storage.replication`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplicationSection {
    pub rules: Vec<ReplicationRule>,
}

/// One side of a rule.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Location {
    pub bucket: String,
    pub prefix: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicationRule {
    pub name: String,
    pub source: Location,
    pub destination: Location,
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Opt-in: after the copy pass, delete destination objects whose source key is gone.
    #[serde(default)]
    pub replicate_deletes: bool,
}

fn default_interval() -> u64 {
    3600
}

fn default_enabled() -> bool {
    true
}

/// Rejects what would make a rule ambiguous or self-feeding: empty or duplicate names,
/// missing buckets, a zero interval, and a destination inside its own source (each run
/// would copy the previous run's copies).
pub fn validate(section: &ReplicationSection) -> Result<(), ProxyError> {
    let mut names = std::collections::HashSet::new();
    for r in &section.rules {
        let bad = |m: &str| {
            Err(ProxyError::Config(format!(
                "storage.replication.rules.{}: {m}",
                r.name
            )))
        };
        if !crate::config::valid_backend_name(&r.name) {
            return bad(
                "name must be 1-64 characters [A-Za-z0-9_.-], starting with a letter or digit",
            );
        }
        if !names.insert(r.name.as_str()) {
            return bad("duplicate rule name");
        }
        if r.source.bucket.is_empty() || r.destination.bucket.is_empty() {
            return bad("source.bucket and destination.bucket are required");
        }
        if r.interval_secs == 0 {
            return bad("interval_secs must be at least 1");
        }
        let (s, d) = (&r.source, &r.destination);
        if s.bucket == d.bucket
            && (d.prefix.starts_with(&s.prefix) || s.prefix.starts_with(&d.prefix))
        {
            return bad("source and destination overlap in the same bucket");
        }
    }
    Ok(())
}

/// One run of a rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub rule: String,
    /// `schedule` or `manual`.
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub scanned: u64,
    pub copied: u64,
    pub skipped: u64,
    pub failed: u64,
    pub bytes_copied: u64,
    /// Destination objects removed because their source is gone (`replicate_deletes`).
    /// Defaulted so state files written before the field existed still load.
    #[serde(default)]
    pub deleted: u64,
    /// Set when the run could not list its source (nothing copied or deleted), or when the
    /// delete pass was skipped because a listing failed or was incomplete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One object that failed to copy (or, with `replicate_deletes`, to delete).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    pub rule: String,
    pub at: DateTime<Utc>,
    pub source_key: String,
    pub destination_key: String,
    pub error: String,
}

struct RuleState {
    rule: ReplicationRule,
    paused: bool,
    /// Serialises runs of one rule (a manual run waits for a scheduled one and vice versa).
    running: Arc<tokio::sync::Mutex<()>>,
    history: VecDeque<RunRecord>,
    failures: VecDeque<Failure>,
}

/// Why a manual run did not happen.
#[derive(Debug)]
pub enum RunError {
    NoSuchRule,
    Paused,
}

/// Why a pause or resume did not happen.
#[derive(Debug)]
pub enum PauseError {
    NoSuchRule,
    /// The state file could not be written; the in-memory flag was put back.
    Persist(String),
}

/// One rule's entry in the state file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct PersistedRule {
    paused: bool,
    history: VecDeque<RunRecord>,
    failures: VecDeque<Failure>,
}

/// The state file: `{"rules": {name: {paused, history, failures}}}`, newest first.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct PersistedState {
    rules: BTreeMap<String, PersistedRule>,
}

pub struct Replicator {
    engine: Arc<Engine>,
    rules: Mutex<BTreeMap<String, RuleState>>,
    /// `None` keeps everything in memory (no data dir to write to).
    state_path: Option<PathBuf>,
    /// Serialises snapshot + write, so an older snapshot never lands after a newer one.
    persist_lock: tokio::sync::Mutex<()>,
}

/// Reads the state file. A missing file is an empty state; an unreadable one is logged and
/// treated as empty; a corrupt one is logged, moved aside (`.corrupt`, so the next write
/// does not destroy the evidence) and treated as empty: replication state is never a reason
/// not to start.
fn load_state(path: &std::path::Path) -> PersistedState {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return PersistedState::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "replication state unreadable; starting with empty state");
            return PersistedState::default();
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => {
            let aside = path.with_extension("json.corrupt");
            let moved = std::fs::rename(path, &aside).is_ok();
            tracing::warn!(path = %path.display(), error = %e, moved_to = %if moved { aside.display().to_string() } else { "-".into() }, "replication state corrupt; starting with empty state");
            PersistedState::default()
        }
    }
}

impl Replicator {
    /// Builds the rules from the config and restores their pause state, history and failures
    /// from `state_path` (state of rules no longer configured is dropped).
    pub fn new(
        engine: Arc<Engine>,
        section: &ReplicationSection,
        state_path: Option<PathBuf>,
    ) -> Self {
        let mut saved = state_path
            .as_deref()
            .map(load_state)
            .unwrap_or_default()
            .rules;
        let rules = section
            .rules
            .iter()
            .map(|r| {
                let mut p = saved.remove(&r.name).unwrap_or_default();
                p.history.truncate(KEEP);
                p.failures.truncate(KEEP);
                if p.paused {
                    tracing::info!(rule = %r.name, "replication rule paused (restored state)");
                }
                (
                    r.name.clone(),
                    RuleState {
                        rule: r.clone(),
                        paused: p.paused,
                        running: Arc::default(),
                        history: p.history,
                        failures: p.failures,
                    },
                )
            })
            .collect();
        if !saved.is_empty() {
            let gone: Vec<&String> = saved.keys().collect();
            tracing::info!(rules = ?gone, "replication state of rules no longer configured ignored");
        }
        Replicator {
            engine,
            rules: Mutex::new(rules),
            state_path,
            persist_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Writes the current state of every rule to the state file (temp file, fsync, rename,
    /// directory fsync) and returns once it is durable.
    async fn persist(&self) -> Result<(), String> {
        let Some(path) = self.state_path.clone() else {
            return Ok(());
        };
        let _one_writer = self.persist_lock.lock().await;
        let bytes = {
            let m = self.rules.lock();
            let snap = PersistedState {
                rules: m
                    .iter()
                    .map(|(n, s)| {
                        (
                            n.clone(),
                            PersistedRule {
                                paused: s.paused,
                                history: s.history.clone(),
                                failures: s.failures.clone(),
                            },
                        )
                    })
                    .collect(),
            };
            serde_json::to_vec(&snap).map_err(|e| e.to_string())?
        };
        tokio::task::spawn_blocking(move || crate::config_store::write_atomic(&path, &bytes))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("writing replication state: {e}"))
    }

    /// Starts one scheduler per enabled rule: a run every `interval_secs` unless paused.
    pub fn start(self: &Arc<Self>) {
        let rules: Vec<ReplicationRule> =
            self.rules.lock().values().map(|s| s.rule.clone()).collect();
        for rule in rules.into_iter().filter(|r| r.enabled) {
            let me = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(rule.interval_secs));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await; // the first tick is immediate; the first run waits one interval
                loop {
                    tick.tick().await;
                    if me.is_paused(&rule.name) {
                        continue;
                    }
                    let _ = me.run(&rule.name, "schedule").await;
                }
            });
        }
    }

    fn is_paused(&self, name: &str) -> bool {
        self.rules.lock().get(name).is_some_and(|s| s.paused)
    }

    /// Status of every rule, for the admin API.
    pub fn status(&self) -> Vec<serde_json::Value> {
        self.rules
            .lock()
            .values()
            .map(|s| {
                serde_json::json!({
                    "name": s.rule.name,
                    "source": s.rule.source,
                    "destination": s.rule.destination,
                    "interval_secs": s.rule.interval_secs,
                    "enabled": s.rule.enabled,
                    "replicate_deletes": s.rule.replicate_deletes,
                    "paused": s.paused,
                    "running": s.running.try_lock().is_err(),
                    "last_run": s.history.front(),
                    "failures": s.failures.len(),
                })
            })
            .collect()
    }

    /// Pauses or resumes a rule and returns once that is durable in the state file (a
    /// restart must not silently un-pause a rule). When the write fails the flag is put back.
    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<(), PauseError> {
        let before = {
            let mut m = self.rules.lock();
            let s = m.get_mut(name).ok_or(PauseError::NoSuchRule)?;
            std::mem::replace(&mut s.paused, paused)
        };
        if let Err(e) = self.persist().await {
            tracing::error!(rule = %name, error = %e, "replication pause state not persisted");
            if let Some(s) = self.rules.lock().get_mut(name) {
                s.paused = before;
            }
            return Err(PauseError::Persist(e));
        }
        Ok(())
    }

    pub fn history(&self, name: &str, limit: usize) -> Option<Vec<RunRecord>> {
        let m = self.rules.lock();
        let s = m.get(name)?;
        Some(s.history.iter().take(limit).cloned().collect())
    }

    pub fn failures(&self, name: &str, limit: usize) -> Option<Vec<Failure>> {
        let m = self.rules.lock();
        let s = m.get(name)?;
        Some(s.failures.iter().take(limit).cloned().collect())
    }

    /// Runs a rule now (refused while it is paused) and records the run.
    pub async fn run(&self, name: &str, trigger: &'static str) -> Result<RunRecord, RunError> {
        let (rule, running) = {
            let m = self.rules.lock();
            let s = m.get(name).ok_or(RunError::NoSuchRule)?;
            if s.paused {
                return Err(RunError::Paused);
            }
            (s.rule.clone(), s.running.clone())
        };
        let _one_at_a_time = running.lock().await;
        let (record, failures) = self.copy_all(&rule, trigger).await;
        {
            let mut m = self.rules.lock();
            if let Some(s) = m.get_mut(name) {
                for f in failures {
                    s.failures.push_front(f);
                }
                s.failures.truncate(KEEP);
                s.history.push_front(record.clone());
                s.history.truncate(KEEP);
            }
        }
        // The run already happened: a failed write only costs its record after a restart,
        // so it is logged rather than turned into a failed run.
        if let Err(e) = self.persist().await {
            tracing::error!(rule = %name, error = %e, "replication run record not persisted");
        }
        Ok(record)
    }

    /// One pass over the source prefix.
    async fn copy_all(
        &self,
        rule: &ReplicationRule,
        trigger: &'static str,
    ) -> (RunRecord, Vec<Failure>) {
        let mut rec = RunRecord {
            rule: rule.name.clone(),
            trigger: trigger.to_string(),
            started_at: Utc::now(),
            finished_at: Utc::now(),
            scanned: 0,
            copied: 0,
            skipped: 0,
            failed: 0,
            bytes_copied: 0,
            deleted: 0,
            error: None,
        };
        let mut failures = vec![];
        let (src, dst) = (&rule.source, &rule.destination);
        let listing = self
            .engine
            .list(&src.bucket, &src.prefix, None, None, usize::MAX, &|_| true)
            .await;
        let (objects, source_complete) = match listing {
            Ok(page) => (page.objects, !page.truncated),
            Err(e) => {
                rec.error = Some(format!("listing {}/{}: {e}", src.bucket, src.prefix));
                rec.finished_at = Utc::now();
                return (rec, failures);
            }
        };
        let source_keys: HashSet<String> = if rule.replicate_deletes {
            objects.iter().map(|o| o.key.clone()).collect()
        } else {
            HashSet::new()
        };
        for o in objects {
            rec.scanned += 1;
            let dest_key = format!("{}{}", dst.prefix, &o.key[src.prefix.len()..]);
            match self.engine.resolve(&dst.bucket, &dest_key).await {
                Ok(d) if d.meta.etag() == o.etag => {
                    rec.skipped += 1;
                    continue;
                }
                _ => {}
            }
            match self
                .copy_one(&src.bucket, &o.key, &dst.bucket, &dest_key)
                .await
            {
                Ok(n) => {
                    rec.copied += 1;
                    rec.bytes_copied += n;
                }
                Err(e) => {
                    rec.failed += 1;
                    tracing::warn!(rule = %rule.name, key = %o.key, error = %e, "replication copy failed");
                    failures.push(Failure {
                        rule: rule.name.clone(),
                        at: Utc::now(),
                        source_key: o.key.clone(),
                        destination_key: dest_key,
                        error: e.to_string(),
                    });
                }
            }
        }
        if rule.replicate_deletes {
            if source_complete {
                self.delete_gone(rule, &source_keys, &mut rec, &mut failures)
                    .await;
            } else {
                rec.error = Some(format!(
                    "listing {}/{} was incomplete: deletes skipped this run",
                    src.bucket, src.prefix
                ));
            }
        }
        rec.finished_at = Utc::now();
        tracing::info!(rule = %rule.name, trigger, scanned = rec.scanned, copied = rec.copied, skipped = rec.skipped, failed = rec.failed, deleted = rec.deleted, "replication run finished");
        (rec, failures)
    }

    /// The delete pass of `replicate_deletes`: every destination object under
    /// `destination.prefix` whose source key (`source.prefix + rest`) is not in this run's
    /// complete source listing is deleted through the engine (so the deltaspace reference
    /// goes when its last delta does). Only keys listed under the destination prefix are
    /// candidates, so nothing outside it is ever touched; a failed or incomplete destination
    /// listing deletes nothing.
    async fn delete_gone(
        &self,
        rule: &ReplicationRule,
        source_keys: &HashSet<String>,
        rec: &mut RunRecord,
        failures: &mut Vec<Failure>,
    ) {
        let (src, dst) = (&rule.source, &rule.destination);
        let listing = self
            .engine
            .list(&dst.bucket, &dst.prefix, None, None, usize::MAX, &|_| true)
            .await;
        let objects = match listing {
            Ok(page) if !page.truncated => page.objects,
            Ok(_) => {
                rec.error = Some(format!(
                    "listing {}/{} was incomplete: deletes skipped this run",
                    dst.bucket, dst.prefix
                ));
                return;
            }
            Err(e) => {
                rec.error = Some(format!(
                    "listing {}/{}: {e}: deletes skipped this run",
                    dst.bucket, dst.prefix
                ));
                return;
            }
        };
        for o in objects {
            // The prefix's own folder marker is the destination root, not a copy.
            let Some(rest) = o.key.strip_prefix(dst.prefix.as_str()) else {
                continue;
            };
            if rest.is_empty() {
                continue;
            }
            let source_key = format!("{}{rest}", src.prefix);
            if source_keys.contains(&source_key) {
                continue;
            }
            match self.engine.delete(&dst.bucket, &o.key).await {
                Ok(()) => rec.deleted += 1,
                Err(e) => {
                    rec.failed += 1;
                    tracing::warn!(rule = %rule.name, key = %o.key, error = %e, "replication delete failed");
                    failures.push(Failure {
                        rule: rule.name.clone(),
                        at: Utc::now(),
                        source_key,
                        destination_key: o.key,
                        error: format!("delete: {e}"),
                    });
                }
            }
        }
    }

    /// Reads the source object (reconstructed) and writes it through the engine, keeping its
    /// content type, user metadata and multipart ETag so the next run sees equal ETags.
    async fn copy_one(
        &self,
        src_bucket: &str,
        key: &str,
        dst_bucket: &str,
        dest_key: &str,
    ) -> Result<u64, ProxyError> {
        let r = self.engine.resolve(src_bucket, key).await?;
        let spooled = self.engine.spool_object(src_bucket, &r, dst_bucket).await?;
        if !r.meta.file_sha256.is_empty() && spooled.sha256 != r.meta.file_sha256 {
            let _ = tokio::fs::remove_file(&spooled.path).await;
            return Err(ProxyError::Integrity(format!(
                "source {src_bucket}/{key} read back with a different SHA-256"
            )));
        }
        let size = spooled.size;
        let opts = PutOptions {
            content_type: r.meta.content_type.clone(),
            user_metadata: r.meta.user_metadata.clone(),
            multipart_etag: r.meta.multipart_etag.clone(),
        };
        self.engine.put(dst_bucket, dest_key, spooled, opts).await?;
        Ok(size)
    }
}
