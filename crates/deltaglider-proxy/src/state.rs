//! Shared application state and the authorization questions the S3 and admin layers ask.

use std::sync::Arc;

use crate::audit::AuditRing;
use crate::config::Config;
use crate::delta::Engine;
use crate::iam::{Action, Decision, Iam, RequestContext};
use crate::multipart::Multipart;
use crate::s3::auth::Principal;

pub struct AppState {
    pub cfg: Config,
    /// The file configuration as edited at runtime by the admin config PUT/apply.
    pub file: parking_lot::RwLock<crate::config::FileConfig>,
    pub engine: Arc<Engine>,
    pub multipart: Arc<Multipart>,
    /// `storage.replication` rules: schedulers, pause state, history.
    pub replication: Arc<crate::replication::Replicator>,
    pub iam: Iam,
    pub audit: AuditRing,
    pub sessions: crate::admin::Sessions,
    /// The bootstrap password hash in use (login, the config store key).
    pub bootstrap: crate::bootstrap::Bootstrap,
    pub login_limiter: crate::admin::LoginLimiter,
    /// The last `/_/stats` answer and when it was computed (served for 10 s).
    pub stats_cache: parking_lot::Mutex<Option<(std::time::Instant, serde_json::Value)>>,
    /// SigV4 failures per client address (the S3 side of the same lockout).
    pub sigv4_limiter: crate::admin::LoginLimiter,
    /// SigV4 replay detection (`DGP_REPLAY_WINDOW_SECS`).
    pub replay: crate::s3::auth::ReplayGuard,
    /// External authentication (OIDC) flows in flight and the issuer key cache.
    pub oidc: crate::oidc::Oidc,
    pub started: std::time::Instant,
    /// Prefix usage scans and their cached results (admin usage API).
    pub usage: crate::usage::UsageScans,
    /// The compiled admission chain (operator blocks, then public-prefix blocks).
    pub admission: parking_lot::RwLock<crate::admission::Chain>,
}

impl AppState {
    /// Rebuilds the admission chain from the live file config and bucket policies (after a
    /// config PUT/apply); an invalid section keeps the previous chain.
    pub fn rebuild_admission(&self) -> Result<(), String> {
        let chain = crate::admission::Chain::build(
            &self.file.read().admission,
            &self.engine.policies.read(),
        )?;
        *self.admission.write() = chain;
        Ok(())
    }

    pub fn allowed(&self, p: &Principal, action: Action, bucket: &str, key: &str) -> bool {
        match p {
            Principal::Open => true,
            Principal::Anonymous(ip) => {
                matches!(action, Action::Read | Action::List)
                    && self.admission.read().anonymous_may_read(bucket, key, *ip)
            }
            Principal::User(u, ip) => {
                let cx = RequestContext::new(*ip, None);
                self.iam.evaluate(u, action, bucket, key, &cx) == Decision::Allow
            }
        }
    }

    /// Per-key LIST filter: read-or-list permission on the key (or prefix), in the context
    /// of the listing request (`list_prefix` is its `prefix` parameter, for `s3:prefix`).
    pub fn can_see(&self, p: &Principal, bucket: &str, key: &str, list_prefix: &str) -> bool {
        match p {
            Principal::Open => true,
            Principal::Anonymous(ip) => self.admission.read().anonymous_may_read(bucket, key, *ip),
            Principal::User(u, ip) => {
                let cx = RequestContext::new(*ip, Some(list_prefix));
                self.iam.evaluate(u, Action::List, bucket, key, &cx) == Decision::Allow
                    || self.iam.evaluate(u, Action::Read, bucket, key, &cx) == Decision::Allow
            }
        }
    }

    /// Whether a bucket-level listing request may run; `list_prefix` is the `prefix`
    /// parameter of a ListObjects(V2) (None for the other listing operations).
    pub fn can_list_bucket(&self, p: &Principal, bucket: &str, list_prefix: Option<&str>) -> bool {
        match p {
            Principal::Open => true,
            Principal::Anonymous(ip) => self.admission.read().anonymous_may_list(bucket, "", *ip),
            Principal::User(u, ip) => {
                let cx = RequestContext::new(*ip, list_prefix);
                self.iam.may_list_bucket(u, bucket, &cx)
            }
        }
    }

    pub fn audit_denial(&self, p: &Principal, op: &str, bucket: &str, key: &str) {
        let user = match p {
            Principal::User(u, _) => u.name.clone(),
            Principal::Anonymous(_) => "$anonymous".into(),
            Principal::Open => "$open".into(),
        };
        self.audit
            .record("access_denied", &user, op, "", "", bucket, key);
    }
}
