//! Shared application state and the authorization questions the S3 and admin layers ask.

use std::sync::Arc;

use crate::audit::AuditRing;
use crate::config::Config;
use crate::delta::Engine;
use crate::iam::{Action, Decision, Iam};
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
    pub login_limiter: crate::admin::LoginLimiter,
    /// SigV4 replay detection (`DGP_REPLAY_WINDOW_SECS`).
    pub replay: crate::s3::auth::ReplayGuard,
    pub started: std::time::Instant,
}

impl AppState {
    /// Public prefixes of a bucket (`public: true` is the same as `[""]`).
    fn public_prefixes(&self, bucket: &str) -> Vec<String> {
        match self.engine.policies.read().get(bucket) {
            Some(p) if p.public => vec![String::new()],
            Some(p) => p.public_prefixes.clone(),
            None => vec![],
        }
    }

    /// Anonymous GET/HEAD: the key must start with a public prefix (a trailing `/` matters:
    /// `builds/public/` does not admit `builds/publicish/x`).
    pub fn public_allows(&self, bucket: &str, key: &str) -> bool {
        self.public_prefixes(bucket)
            .iter()
            .any(|p| key.starts_with(p.as_str()))
    }

    /// Anonymous LIST is admitted when the requested prefix is inside a public prefix or
    /// leads to one; the listing is then filtered to public keys.
    pub fn public_allows_list(&self, bucket: &str, prefix: &str) -> bool {
        self.public_prefixes(bucket)
            .iter()
            .any(|p| prefix.starts_with(p.as_str()) || p.starts_with(prefix))
    }

    pub fn allowed(&self, p: &Principal, action: Action, bucket: &str, key: &str) -> bool {
        match p {
            Principal::Open => true,
            Principal::Anonymous => {
                matches!(action, Action::Read | Action::List) && self.public_allows(bucket, key)
            }
            Principal::User(u) => self.iam.evaluate(u, action, bucket, key) == Decision::Allow,
        }
    }

    /// Per-key LIST filter: read-or-list permission on the key (or prefix).
    pub fn can_see(&self, p: &Principal, bucket: &str, key: &str) -> bool {
        match p {
            Principal::Open => true,
            Principal::Anonymous => self.public_allows(bucket, key),
            Principal::User(u) => {
                self.iam.evaluate(u, Action::List, bucket, key) == Decision::Allow
                    || self.iam.evaluate(u, Action::Read, bucket, key) == Decision::Allow
            }
        }
    }

    pub fn can_list_bucket(&self, p: &Principal, bucket: &str) -> bool {
        match p {
            Principal::Open => true,
            Principal::Anonymous => !self.public_prefixes(bucket).is_empty(),
            Principal::User(u) => self.iam.may_list_bucket(u, bucket),
        }
    }

    pub fn audit_denial(&self, p: &Principal, op: &str, bucket: &str, key: &str) {
        let user = match p {
            Principal::User(u) => u.name.clone(),
            Principal::Anonymous => "$anonymous".into(),
            Principal::Open => "$open".into(),
        };
        self.audit
            .record("access_denied", &user, op, "", "", bucket, key);
    }
}
