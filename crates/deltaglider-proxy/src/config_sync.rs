//! Multi-instance sync of the admin-API IAM overlay (`DGP_CONFIG_SYNC_BUCKET`, S3 backend
//! only). Owns the object `<bucket>/.deltaglider/config.db` on the default S3 backend's
//! upstream: every local admin-API change is uploaded there, sealed exactly like the local
//! config store (so instances must share the bootstrap password hash), and the object is
//! polled (ETag, every `DGP_CONFIG_SYNC_INTERVAL_SECS`) so a newer overlay written by another
//! instance replaces this one's, in memory and in the local store. The whole overlay is the
//! unit: the last writer wins (see docs/deltaglider-proxy.md, "Multi-instance IAM sync").

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::Client;

use crate::backend::s3::S3BackendConfig;
use crate::config::Config;
use crate::error::ProxyError;
use crate::iam::AdminOverlay;
use crate::state::AppState;

/// Key of the shared overlay inside the sync bucket.
pub const SYNC_KEY: &str = ".deltaglider/config.db";

/// The upstream the sync bucket lives on: the default backend, which must be S3.
fn upstream(cfg: &Config) -> Result<S3BackendConfig, ProxyError> {
    let st = &cfg.file.storage;
    let refuse = |what: &str| {
        ProxyError::Config(format!(
            "DGP_CONFIG_SYNC_BUCKET needs the S3 backend, but the default backend is {what}: \
             unset DGP_CONFIG_SYNC_BUCKET or set DGP_S3_ENDPOINT"
        ))
    };
    if st.backends.is_empty() {
        return cfg.default_s3()?.ok_or_else(|| refuse("the filesystem"));
    }
    let name = st
        .default_backend
        .clone()
        .unwrap_or_else(|| st.backends[0].name.clone());
    let b = st
        .backends
        .iter()
        .find(|b| b.name == name)
        .ok_or_else(|| refuse("not configured"))?;
    if b.kind != "s3" {
        return Err(refuse(&format!("{name:?} of type {}", b.kind)));
    }
    Ok(S3BackendConfig {
        endpoint: b
            .endpoint
            .clone()
            .ok_or_else(|| refuse("without endpoint"))?,
        region: b.region.clone().unwrap_or_else(|| "us-east-1".into()),
        path_style: b.force_path_style.unwrap_or(true),
        access_key_id: b.access_key_id.clone().unwrap_or_default(),
        secret_access_key: b.secret_access_key.clone().unwrap_or_default(),
    })
}

/// Checks the configuration (S3 backend) before anything starts; `None` when sync is off.
pub fn validate(cfg: &Config) -> Result<Option<S3BackendConfig>, ProxyError> {
    match &cfg.config_sync_bucket {
        Some(_) => upstream(cfg).map(Some),
        None => Ok(None),
    }
}

struct Syncer {
    state: Arc<AppState>,
    client: Client,
    bucket: String,
    /// ETag of the object as this instance last wrote or applied it.
    etag: Option<String>,
    /// The overlay as last pushed or pulled: a different local overlay is an unpushed change.
    synced: AdminOverlay,
}

/// Starts the sync task (after one synchronous round, so an instance starts with the
/// shared overlay). A no-op when `DGP_CONFIG_SYNC_BUCKET` is unset or IAM is declarative.
pub async fn start(state: Arc<AppState>) -> Result<(), ProxyError> {
    let Some(s3) = validate(&state.cfg)? else {
        return Ok(());
    };
    let bucket = state.cfg.config_sync_bucket.clone().unwrap_or_default();
    let Some(store) = &state.iam.admin_store else {
        tracing::warn!("iam_mode: declarative: DGP_CONFIG_SYNC_BUCKET is ignored");
        return Ok(());
    };
    let changed = store.changed.clone();
    let synced = store.overlay();
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .credentials_provider(Credentials::new(
            &s3.access_key_id,
            &s3.secret_access_key,
            None,
            None,
            "deltaglider-proxy",
        ))
        .region(Region::new(s3.region.clone()))
        .endpoint_url(&s3.endpoint)
        .force_path_style(s3.path_style)
        .build();
    let client = Client::from_conf(conf);
    if client.head_bucket().bucket(&bucket).send().await.is_err() {
        // Two instances may race to create it: "already exists" is success.
        if let Err(e) = client.create_bucket().bucket(&bucket).send().await {
            let exists = e.as_service_error().is_some_and(|s| {
                s.is_bucket_already_exists() || s.is_bucket_already_owned_by_you()
            });
            if !exists {
                return Err(ProxyError::Startup(format!(
                    "DGP_CONFIG_SYNC_BUCKET {bucket}: cannot create it: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )));
            }
        }
    }
    let interval = Duration::from_secs(state.cfg.config_sync_interval_secs);
    tracing::info!(bucket = %bucket, key = SYNC_KEY, interval_secs = interval.as_secs(), "IAM config sync on");
    let mut s = Syncer {
        state,
        client,
        bucket,
        etag: None,
        synced,
    };
    s.round().await;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = changed.notified() => {}
                _ = tokio::time::sleep(interval) => {}
            }
            s.round().await;
        }
    });
    Ok(())
}

impl Syncer {
    /// One round: push an unpushed local change, else pull a newer remote overlay. Failures
    /// are logged and retried next round (the local change stays unpushed until it lands).
    async fn round(&mut self) {
        let Some(store) = &self.state.iam.admin_store else {
            return;
        };
        if store.is_locked() {
            // Nothing local to offer, and nothing pulled could be stored until recover-db.
            return;
        }
        let local = store.overlay();
        if local != self.synced {
            return self.push(local).await;
        }
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(SYNC_KEY)
            .send()
            .await;
        match head {
            Ok(h) if h.e_tag.is_some() && h.e_tag == self.etag => {}
            Ok(h) => self.pull(h.e_tag).await,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {
                // Nothing shared yet: seed it with what this instance holds.
                if self.etag.is_none() && local != AdminOverlay::default() {
                    self.push(local).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %aws_sdk_s3::error::DisplayErrorContext(&e), "[config-sync] HEAD failed")
            }
        }
    }

    async fn push(&mut self, local: AdminOverlay) {
        let Some(store) = &self.state.iam.admin_store else {
            return;
        };
        let body = match store.seal(&local) {
            Ok(b) => b,
            Err(e) => return tracing::error!(error = %e, "[config-sync] cannot encode overlay"),
        };
        match self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(SYNC_KEY)
            .content_type("application/octet-stream")
            .body(body.into())
            .send()
            .await
        {
            Ok(out) => {
                tracing::info!(etag = ?out.e_tag, "[config-sync] IAM overlay uploaded");
                self.etag = out.e_tag;
                self.synced = local;
            }
            Err(e) => {
                tracing::warn!(error = %aws_sdk_s3::error::DisplayErrorContext(&e), "[config-sync] upload failed; retrying")
            }
        }
    }

    /// Downloads the shared overlay the HEAD just saw (`expected`): another instance that
    /// uploads in between makes the GET answer 412 (If-Match) or another ETag, and the
    /// round ends with the guide's line; the next round picks the newer object up.
    async fn pull(&mut self, expected: Option<String>) {
        const MISMATCH: &str = "[config-sync] ETag mismatch on DB download — retrying.";
        let got = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(SYNC_KEY)
            .set_if_match(expected.clone())
            .send()
            .await
        {
            Ok(g) => g,
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) => {
                return tracing::warn!("{MISMATCH}");
            }
            Err(e) => {
                return tracing::warn!(error = %aws_sdk_s3::error::DisplayErrorContext(&e), "[config-sync] download failed")
            }
        };
        let etag = got.e_tag.clone();
        if expected.is_some() && etag != expected {
            return tracing::warn!("{MISMATCH}");
        }
        let body = match got.body.collect().await {
            Ok(b) => b.into_bytes(),
            Err(e) => return tracing::warn!(error = %e, "[config-sync] download failed"),
        };
        let Some(store) = &self.state.iam.admin_store else {
            return;
        };
        let remote: AdminOverlay = match store.unseal(&body) {
            Ok(o) => o,
            Err(e) => {
                // Remember the ETag so a bad object is reported once, not every round.
                self.etag = etag;
                return tracing::error!(error = %e, key = SYNC_KEY, "[config-sync] shared store does not open with this instance's bootstrap password hash (or is corrupt): ignored");
            }
        };
        match self.state.iam.replace_overlay(remote.clone(), &self.synced) {
            Ok(changed) => {
                if changed {
                    tracing::info!(etag = ?etag, users = remote.users.len(), groups = remote.groups.len(), "[config-sync] newer IAM overlay applied");
                }
                self.etag = etag;
                self.synced = remote;
            }
            Err(e) => {
                tracing::error!(error = %e, "[config-sync] cannot persist the shared overlay locally")
            }
        }
    }
}
