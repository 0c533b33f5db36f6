//! SigV4 credential lookup (s3s verifies signatures, presigned URLs, chunked payloads and
//! clock skew), replay detection (`DGP_REPLAY_WINDOW_SECS`) and per-request authorization:
//! IAM for signed requests, public prefixes for anonymous GET/HEAD/LIST. Unknown keys get the
//! same generic AccessDenied as bad ones.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::path::S3Path;
use s3s::{s3_error, S3Result};

use crate::iam::{Action, UserSpec};
use crate::state::AppState;

/// Who is making the request; stored in the request extensions for the handlers.
#[derive(Clone, Debug)]
pub enum Principal {
    /// No signature, admitted by an allow-anonymous admission block (a public prefix is
    /// one); carries the client address the chain saw, for the per-key LIST filter.
    Anonymous(Option<std::net::IpAddr>),
    /// `DGP_AUTHENTICATION=none`: everything is allowed.
    Open,
    /// A signed request: the user and the client address its conditions see (`aws:SourceIp`).
    User(Box<UserSpec>, Option<std::net::IpAddr>),
}

pub struct Auth(pub Arc<AppState>);

#[async_trait::async_trait]
impl S3Auth for Auth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.0.iam.user_by_key(access_key) {
            // An empty secret would let anyone who knows the access key id sign (a
            // declarative export has its secrets blanked; applied as-is elsewhere it yields
            // such users): such a user cannot sign until it gets a secret.
            Some(u) if u.secret_access_key.is_empty() => {
                tracing::warn!(user = %u.name, "SigV4 refused: the user has an empty secret_access_key");
                metrics::counter!("deltaglider_auth_failures_total", "reason" => "invalid_signature").increment(1);
                metrics::counter!("deltaglider_auth_attempts_total", "result" => "failure")
                    .increment(1);
                Err(s3_error!(AccessDenied, "Access Denied"))
            }
            Some(u) => Ok(SecretKey::from(u.secret_access_key)),
            None => {
                metrics::counter!("deltaglider_auth_failures_total", "reason" => "invalid_signature").increment(1);
                metrics::counter!("deltaglider_auth_attempts_total", "result" => "failure")
                    .increment(1);
                Err(s3_error!(AccessDenied, "Access Denied"))
            }
        }
    }
}

/// Replay detection: the signatures of header-signed, state-changing requests accepted in
/// the last `DGP_REPLAY_WINDOW_SECS`. The same signature again inside the window is a
/// captured request sent twice and is refused. GET/HEAD (idempotent reads) and presigned
/// URLs (meant to be reused until they expire) are exempt, as the guide says. Only
/// signatures that s3s already verified are recorded, so a forger cannot fill the table
/// to block a legitimate request.
pub struct ReplayGuard {
    window: Duration,
    seen: parking_lot::Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    by_sig: HashMap<String, Instant>,
    /// Arrival order, to expire old signatures in amortised O(1).
    order: VecDeque<(Instant, String)>,
}

impl ReplayGuard {
    pub fn new(window_secs: u64) -> Self {
        ReplayGuard {
            window: Duration::from_secs(window_secs),
            seen: Default::default(),
        }
    }

    /// Forgets `sig` (the request that recorded it failed, so a client retry of it is not a
    /// replay).
    pub fn release(&self, sig: &str) {
        self.seen.lock().by_sig.remove(sig);
    }

    /// Records `sig`; false when it was already accepted within the window.
    pub fn admit(&self, sig: &str) -> bool {
        if self.window.is_zero() {
            return true;
        }
        let now = Instant::now();
        let mut g = self.seen.lock();
        while let Some((t, _)) = g.order.front() {
            if now.duration_since(*t) < self.window {
                break;
            }
            if let Some((t, s)) = g.order.pop_front() {
                if g.by_sig.get(&s) == Some(&t) {
                    g.by_sig.remove(&s);
                }
            }
        }
        if g.by_sig.contains_key(sig) {
            return false;
        }
        g.by_sig.insert(sig.to_string(), now);
        g.order.push_back((now, sig.to_string()));
        true
    }
}

/// The `Signature=` of a header-signed request that replay detection applies to: not
/// GET/HEAD, not presigned (no Authorization header).
fn replay_checked_signature(cx: &S3AccessContext<'_>) -> Option<String> {
    if matches!(*cx.method(), http::Method::GET | http::Method::HEAD) {
        return None;
    }
    let auth = cx
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256")?;
    rest.split(',')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("Signature="))
        .map(str::to_string)
}

/// Put in the request extensions by the HTTP layer before s3s runs; the access check fills
/// in the signature it recorded, so that the HTTP layer can release it when the request
/// fails. Without this, an SDK retry of a throttled or failed write (re-signed within the
/// same second, hence byte-identical) would be refused as a replay.
#[derive(Clone, Default)]
pub struct ReplayTicket(pub Arc<parking_lot::Mutex<Option<String>>>);

/// Set by the access check once s3s has verified a request's signature: a 403 on a request
/// that carried credentials but never got here is an authentication failure (unknown key,
/// bad signature, skewed clock), which feeds the per-address lockout; an IAM denial of a
/// verified user is not.
#[derive(Clone, Default)]
pub struct AuthOutcome(pub Arc<std::sync::atomic::AtomicBool>);

impl AuthOutcome {
    pub fn verified(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub struct Access(pub Arc<AppState>);

/// The longest presigned URL lifetime S3 accepts.
const MAX_PRESIGNED_EXPIRY_SECS: u64 = 7 * 24 * 3600;

fn header(cx: &S3AccessContext<'_>, name: &str) -> String {
    cx.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let st = &self.0;
        let ticket = cx.extensions_mut().get::<ReplayTicket>().cloned();
        let outcome = cx.extensions_mut().get::<AuthOutcome>().cloned();
        let adm = cx
            .extensions_mut()
            .get::<crate::admission::Admission>()
            .cloned();
        let op = cx.s3_op().name();
        let (bucket, key) = match cx.s3_path() {
            S3Path::Root => (String::new(), String::new()),
            S3Path::Bucket { bucket } => (bucket.to_string(), String::new()),
            S3Path::Object { bucket, key } => (bucket.to_string(), key.to_string()),
        };
        let ip = header(cx, "x-forwarded-for");
        let ua = header(cx, "user-agent");
        if st.cfg.auth_none {
            cx.extensions_mut().insert(Principal::Open);
            return Ok(());
        }
        let Some(creds) = cx.credentials() else {
            // The admission chain already ran (crate::admission::enforce); it admits
            // anonymous GET/HEAD/LIST only, as for public prefixes.
            let ip_addr = adm.as_ref().and_then(|a| a.source_ip);
            let admitted = adm.is_some_and(|a| a.allow_anonymous)
                && matches!(
                    op,
                    "GetObject" | "HeadObject" | "ListObjects" | "ListObjectsV2"
                );
            if admitted {
                // The spec: anonymous access is audited as `$anonymous`, reads included.
                let ip_s = ip_addr.map(|i| i.to_string()).unwrap_or(ip);
                st.audit.record(
                    "anonymous_access",
                    "$anonymous",
                    op,
                    &ip_s,
                    &ua,
                    &bucket,
                    &key,
                );
                cx.extensions_mut().insert(Principal::Anonymous(ip_addr));
                return Ok(());
            }
            metrics::counter!("deltaglider_auth_failures_total", "reason" => "missing_header")
                .increment(1);
            metrics::counter!("deltaglider_auth_attempts_total", "result" => "failure")
                .increment(1);
            st.audit
                .record("access_denied", "$anonymous", op, &ip, &ua, &bucket, &key);
            return Err(s3_error!(AccessDenied, "Access Denied"));
        };
        // Presigned URLs live at most 7 days, as on S3 (s3s checks only that the URL's own
        // X-Amz-Expires has not passed).
        if let Some(secs) = super::query_param(cx.uri(), "X-Amz-Expires") {
            if secs
                .parse::<u64>()
                .map_or(true, |s| s > MAX_PRESIGNED_EXPIRY_SECS)
            {
                return Err(s3_error!(
                    InvalidArgument,
                    "X-Amz-Expires must be a number of seconds no greater than 604800 (7 days)"
                ));
            }
        }
        if let Some(o) = &outcome {
            o.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        metrics::counter!("deltaglider_auth_attempts_total", "result" => "success").increment(1);
        let Some(user) = st.iam.user_by_key(&creds.access_key) else {
            return Err(s3_error!(AccessDenied, "Access Denied"));
        };
        if let Some(sig) = replay_checked_signature(cx) {
            if !st.replay.admit(&sig) {
                metrics::counter!("deltaglider_auth_failures_total", "reason" => "replay")
                    .increment(1);
                st.audit
                    .record("replay_rejected", &user.name, op, &ip, &ua, &bucket, &key);
                tracing::warn!(user = %user.name, op, "SigV4 replay refused: the same signature was accepted within DGP_REPLAY_WINDOW_SECS");
                return Err(s3_error!(
                    AccessDenied,
                    "Request replay detected: this signature was already used"
                ));
            }
            if let Some(t) = &ticket {
                *t.0.lock() = Some(sig);
            }
        }
        let principal = Principal::User(Box::new(user), adm.as_ref().and_then(|a| a.source_ip));
        let action = Action::of_op(op);
        // `s3:prefix` exists for the listing operations only ("" when the request has none).
        let list_prefix = matches!(op, "ListObjects" | "ListObjectsV2")
            .then(|| super::query_param(cx.uri(), "prefix").unwrap_or_default());
        let ok = match (op, cx.s3_path()) {
            (_, S3Path::Root) => true,
            // The key of a browser form upload is a form field the access layer cannot see:
            // the signature is verified by now, and the handler decides on the key.
            ("PostObject", _) => true,
            ("DeleteObjects", _) => {
                st.can_list_bucket(&principal, &bucket, None)
                    || st.allowed(&principal, Action::Delete, &bucket, "")
            }
            (_, S3Path::Bucket { .. }) if action == Action::List => {
                st.can_list_bucket(&principal, &bucket, list_prefix.as_deref())
            }
            ("CreateBucket", _) => st.allowed(&principal, Action::Write, &bucket, ""),
            ("DeleteBucket", _) => st.allowed(&principal, Action::Delete, &bucket, ""),
            _ => st.allowed(&principal, action, &bucket, &key),
        };
        if !ok {
            let name = match &principal {
                Principal::User(u, _) => u.name.clone(),
                _ => String::new(),
            };
            st.audit
                .record("access_denied", &name, op, &ip, &ua, &bucket, &key);
            return Err(s3_error!(AccessDenied, "Access Denied"));
        }
        cx.extensions_mut().insert(principal);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::ReplayGuard;

    #[test]
    fn replay_guard_refuses_a_signature_seen_within_the_window_only() {
        let g = ReplayGuard::new(600);
        assert!(g.admit("sig-a"));
        assert!(!g.admit("sig-a"), "same signature inside the window");
        assert!(g.admit("sig-b"), "another signature is fresh");
        let off = ReplayGuard::new(0);
        assert!(
            off.admit("sig-a") && off.admit("sig-a"),
            "window 0 turns it off"
        );
    }
}
