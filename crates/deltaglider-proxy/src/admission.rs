//! Admission chain: the operator's `admission.blocks[]` followed by one synthesized
//! `public-prefix:<bucket>` block per bucket with public prefixes, evaluated first-match-wins
//! on every S3 request before authentication (deny / reject / allow-anonymous / continue),
//! plus the validation of the YAML and the trace of a synthetic request.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use crate::config::BucketPolicy;
use crate::state::AppState;

/// Prefix of the names the proxy gives its synthesized public-prefix blocks.
pub const RESERVED_PREFIX: &str = "public-prefix:";
/// Most entries one `source_ip_list` may hold.
pub const MAX_SOURCE_IPS: usize = 4096;
const METHODS: [&str; 7] = ["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"];

/// `admission:` in the YAML.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionSection {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<BlockSpec>,
    /// Named switches that a block's `match.config_flag` tests (e.g. `maintenance: true`);
    /// flipping one through the section PUT turns its blocks on or off without editing them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub flags: BTreeMap<String, bool>,
}

/// One `admission.blocks[]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockSpec {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matcher: MatchSpec,
    pub action: BlockAction,
}

/// AND-combined conditions; an absent condition matches everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatchSpec {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub method: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_ip_list: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_glob: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authenticated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_flag: Option<String>,
}

/// `allow-anonymous` | `deny` | `continue` | `{type: reject, status, message?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ActionRepr", into = "ActionRepr")]
pub enum BlockAction {
    AllowAnonymous,
    Deny,
    Continue,
    Reject {
        status: u16,
        message: Option<String>,
    },
}

/// The YAML spelling of an action: a bare word, or a `{type: …}` map.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ActionRepr {
    Word(String),
    Map {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
}

impl TryFrom<ActionRepr> for BlockAction {
    type Error = String;
    fn try_from(r: ActionRepr) -> Result<Self, String> {
        let (kind, status, message) = match r {
            ActionRepr::Word(w) => (w, None, None),
            ActionRepr::Map {
                kind,
                status,
                message,
            } => (kind, status, message),
        };
        match kind.as_str() {
            "allow-anonymous" => Ok(BlockAction::AllowAnonymous),
            "deny" => Ok(BlockAction::Deny),
            "continue" => Ok(BlockAction::Continue),
            "reject" => match status {
                Some(s) if (400..=599).contains(&s) => Ok(BlockAction::Reject { status: s, message }),
                Some(s) => Err(format!("reject status {s} must be within 400..599")),
                None => Err("reject needs a status".into()),
            },
            other => Err(format!(
                "unknown action {other:?}: expected allow-anonymous, deny, continue or {{type: reject, status}}"
            )),
        }
    }
}

impl From<BlockAction> for ActionRepr {
    fn from(a: BlockAction) -> Self {
        match a {
            BlockAction::AllowAnonymous => ActionRepr::Word("allow-anonymous".into()),
            BlockAction::Deny => ActionRepr::Word("deny".into()),
            BlockAction::Continue => ActionRepr::Word("continue".into()),
            BlockAction::Reject { status, message } => ActionRepr::Map {
                kind: "reject".into(),
                status: Some(status),
                message,
            },
        }
    }
}

impl BlockAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            BlockAction::AllowAnonymous => "allow-anonymous",
            BlockAction::Deny => "deny",
            BlockAction::Continue => "continue",
            BlockAction::Reject { .. } => "reject",
        }
    }
}

/// An IP network (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub(crate) fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, bits) = match s.trim().split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s.trim(), None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..{max}"))?,
            None => max,
        };
        Ok(Cidr {
            net: net.to_canonical(),
            bits,
        })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let (a, b, width) = match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (u32::from(n) as u128, u32::from(i) as u128, 32),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128),
            _ => return false,
        };
        if self.bits == 0 {
            return true;
        }
        let shift = width - self.bits as u32;
        (a >> shift) == (b >> shift)
    }
}

/// A glob over object keys: `*` (and `**`) any run of characters including `/`, `?` one
/// character, `\x` a literal `x`.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Star,
    Any,
    Lit(char),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Glob(Vec<Tok>);

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        let mut out = Vec::new();
        let mut it = pattern.chars();
        while let Some(c) = it.next() {
            match c {
                '*' if out.last() == Some(&Tok::Star) => {}
                '*' => out.push(Tok::Star),
                '?' => out.push(Tok::Any),
                '\\' => out.push(Tok::Lit(it.next().unwrap_or('\\'))),
                c => out.push(Tok::Lit(c)),
            }
        }
        Glob(out)
    }

    /// The glob of everything under a literal key prefix (public prefixes).
    pub fn prefix(p: &str) -> Glob {
        let mut toks: Vec<Tok> = p.chars().map(Tok::Lit).collect();
        toks.push(Tok::Star);
        Glob(toks)
    }

    /// Whole-text match; with `partial`, whether some extension of `text` matches (a LIST
    /// prefix that leads into the glob's keys).
    pub fn matches(&self, text: &str, partial: bool) -> bool {
        // Walks `text` by byte offset (no char vector per call: this runs per request and
        // per key of an anonymous LIST); `star` is where the last `*` resumes.
        let p = &self.0;
        let (mut pi, mut ti) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while let Some(c) = text[ti..].chars().next() {
            if pi < p.len() {
                match p[pi] {
                    Tok::Star => {
                        star = Some((pi, ti));
                        pi += 1;
                        continue;
                    }
                    Tok::Any => {
                        pi += 1;
                        ti += c.len_utf8();
                        continue;
                    }
                    Tok::Lit(l) if l == c => {
                        pi += 1;
                        ti += c.len_utf8();
                        continue;
                    }
                    Tok::Lit(_) => {}
                }
            }
            match star {
                Some((sp, st)) => {
                    let next = st + text[st..].chars().next().map_or(1, char::len_utf8);
                    pi = sp + 1;
                    ti = next;
                    star = Some((sp, next));
                }
                None => return false,
            }
        }
        partial || p[pi..].iter().all(|t| *t == Tok::Star)
    }
}

/// A validated block, ready to match.
#[derive(Debug, Clone)]
struct Block {
    name: String,
    methods: Vec<String>,
    sources: Vec<Cidr>,
    bucket: Option<String>,
    /// Any of these (the synthesized public-prefix blocks hold one per prefix).
    globs: Vec<Glob>,
    authenticated: Option<bool>,
    config_flag: Option<String>,
    action: BlockAction,
}

/// What the chain looks at in a request.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub method: String,
    pub bucket: String,
    pub key: String,
    /// `Some(prefix)` for a LIST (GET on a bucket): the glob only has to lead somewhere
    /// from this prefix, and the listing is then filtered key by key.
    pub list_prefix: Option<String>,
    pub source_ip: Option<IpAddr>,
    /// The request carries SigV4 credentials (header, presigned query or a POST form).
    pub authenticated: bool,
}

/// [`Facts`] borrowed: what matching reads, so the per-key LIST filter allocates nothing.
struct Probe<'a> {
    method: &'a str,
    bucket: &'a str,
    key: &'a str,
    list_prefix: Option<&'a str>,
    source_ip: Option<IpAddr>,
    authenticated: bool,
}

impl Facts {
    fn probe(&self) -> Probe<'_> {
        Probe {
            method: &self.method,
            bucket: &self.bucket,
            key: &self.key,
            list_prefix: self.list_prefix.as_deref(),
            source_ip: self.source_ip,
            authenticated: self.authenticated,
        }
    }
}

/// The chain's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// allow-anonymous | deny | reject | continue
    pub decision: &'static str,
    pub matched_block: Option<String>,
    pub reason: String,
    #[serde(skip)]
    pub action: Option<BlockAction>,
}

/// The compiled chain.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    blocks: Vec<Block>,
    flags: BTreeMap<String, bool>,
}

fn valid_name(n: &str) -> bool {
    (1..=128).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.' | '-'))
}

/// Checks the operator blocks; the error names the block (`admission.blocks[i] 'name': …`).
pub fn validate(sec: &AdmissionSection) -> Result<(), String> {
    compile_operator(sec).map(|_| ())
}

/// Non-fatal findings (flags that are referenced but never declared).
pub fn lint(sec: &AdmissionSection) -> Vec<String> {
    sec.blocks
        .iter()
        .filter_map(|b| {
            let f = b.matcher.config_flag.as_ref()?;
            (!sec.flags.contains_key(f)).then(|| {
                format!(
                    "admission.blocks '{}': config_flag {f:?} is not declared in admission.flags (the block never matches)",
                    b.name
                )
            })
        })
        .collect()
}

fn compile_operator(sec: &AdmissionSection) -> Result<Vec<Block>, String> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(sec.blocks.len());
    for (i, b) in sec.blocks.iter().enumerate() {
        let fail = |msg: String| format!("admission.blocks[{i}] '{}': {msg}", b.name);
        if !valid_name(&b.name) {
            return Err(fail(
                "name must be 1-128 characters of A-Z a-z 0-9 _ : . -".into(),
            ));
        }
        if b.name.starts_with(RESERVED_PREFIX) {
            return Err(fail(format!(
                "names starting with {RESERVED_PREFIX:?} are reserved for the synthesized public-prefix blocks"
            )));
        }
        if !seen.insert(b.name.as_str()) {
            return Err(fail("duplicate block name".into()));
        }
        let m = &b.matcher;
        let mut methods = Vec::new();
        for meth in &m.method {
            let up = meth.to_ascii_uppercase();
            if !METHODS.contains(&up.as_str()) {
                return Err(fail(format!("unknown method {meth:?}")));
            }
            methods.push(up);
        }
        if m.source_ip.is_some() && !m.source_ip_list.is_empty() {
            return Err(fail("set source_ip or source_ip_list, not both".into()));
        }
        if m.source_ip_list.len() > MAX_SOURCE_IPS {
            return Err(fail(format!(
                "source_ip_list holds {} entries (at most {MAX_SOURCE_IPS})",
                m.source_ip_list.len()
            )));
        }
        let sources = m
            .source_ip
            .iter()
            .chain(&m.source_ip_list)
            .map(|s| Cidr::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        if m.bucket.as_deref() == Some("") {
            return Err(fail("bucket must not be empty".into()));
        }
        if m.path_glob.as_deref() == Some("") {
            return Err(fail("path_glob must not be empty".into()));
        }
        if m.config_flag.as_deref() == Some("") {
            return Err(fail("config_flag must not be empty".into()));
        }
        out.push(Block {
            name: b.name.clone(),
            methods,
            sources,
            bucket: m.bucket.clone(),
            globs: m.path_glob.iter().map(|g| Glob::new(g)).collect(),
            authenticated: m.authenticated,
            config_flag: m.config_flag.clone(),
            action: b.action.clone(),
        });
    }
    Ok(out)
}

/// The synthesized block of one bucket's public prefixes (`public: true` is `[""]`):
/// anonymous GET/HEAD (and LIST) of keys under a prefix, trailing `/` significant.
fn public_block(bucket: &str, p: &BucketPolicy) -> Option<Block> {
    let prefixes: Vec<String> = if p.public {
        vec![String::new()]
    } else {
        p.public_prefixes.clone()
    };
    if prefixes.is_empty() {
        return None;
    }
    Some(Block {
        name: format!("{RESERVED_PREFIX}{bucket}"),
        methods: vec!["GET".into(), "HEAD".into()],
        sources: vec![],
        bucket: Some(bucket.to_string()),
        globs: prefixes.iter().map(|p| Glob::prefix(p)).collect(),
        authenticated: Some(false),
        config_flag: None,
        action: BlockAction::AllowAnonymous,
    })
}

impl Chain {
    /// Operator blocks first, then one public-prefix block per bucket (in name order).
    pub fn build(
        sec: &AdmissionSection,
        buckets: &BTreeMap<String, BucketPolicy>,
    ) -> Result<Chain, String> {
        let mut blocks = compile_operator(sec)?;
        blocks.extend(buckets.iter().filter_map(|(b, p)| public_block(b, p)));
        Ok(Chain {
            blocks,
            flags: sec.flags.clone(),
        })
    }

    /// Whether every condition of `b` holds for `f`.
    fn matches(&self, b: &Block, f: &Probe) -> bool {
        if !b.methods.is_empty() && !b.methods.iter().any(|m| m == f.method) {
            return false;
        }
        if !b.sources.is_empty()
            && !f
                .source_ip
                .is_some_and(|ip| b.sources.iter().any(|c| c.contains(ip)))
        {
            return false;
        }
        if b.bucket.as_ref().is_some_and(|x| x != f.bucket) {
            return false;
        }
        if !b.globs.is_empty() {
            // A LIST is admitted anonymously when its prefix leads into the glob (the keys
            // are then filtered one by one); any other action needs the prefix itself to
            // match, so a deny on `legal/*` does not refuse listing the bucket root.
            let hit = match f.list_prefix {
                Some(p) => {
                    let partial = b.action == BlockAction::AllowAnonymous;
                    b.globs.iter().any(|g| g.matches(p, partial))
                }
                None => b.globs.iter().any(|g| g.matches(f.key, false)),
            };
            if !hit {
                return false;
            }
        }
        if b.authenticated.is_some_and(|a| a != f.authenticated) {
            return false;
        }
        if let Some(flag) = &b.config_flag {
            if !self.flags.get(flag).copied().unwrap_or(false) {
                return false;
            }
        }
        true
    }

    /// The first block matching `f` (first match wins), without building a [`Verdict`]:
    /// this runs on every S3 request and once per key of an anonymous LIST.
    fn first_match(&self, f: &Probe) -> Option<&Block> {
        self.blocks.iter().find(|b| self.matches(b, f))
    }

    /// The action of the first matching block; `None` is `continue` (normal authentication).
    fn action_for(&self, f: &Probe) -> Option<&BlockAction> {
        self.first_match(f).map(|b| &b.action)
    }

    /// First match wins; no match is `continue` (normal authentication). The explained
    /// form, for the admin trace and `config admission trace`.
    pub fn evaluate(&self, f: &Facts) -> Verdict {
        let Some(b) = self.first_match(&f.probe()) else {
            return Verdict {
                decision: "continue",
                matched_block: None,
                reason: "no block matched: normal authentication applies".into(),
                action: None,
            };
        };
        let reason = match &b.action {
            BlockAction::AllowAnonymous if f.authenticated => format!(
                "block '{}' allows anonymous access; a signed request still takes the full IAM path",
                b.name
            ),
            BlockAction::AllowAnonymous => format!(
                "block '{}' admits anonymous GET/HEAD/LIST of matching keys",
                b.name
            ),
            BlockAction::Deny => format!("block '{}' denies the request (403)", b.name),
            BlockAction::Reject { status, .. } => {
                format!("block '{}' rejects the request with HTTP {status}", b.name)
            }
            BlockAction::Continue => format!(
                "block '{}' matched: the rest of the chain is skipped, normal authentication applies",
                b.name
            ),
        };
        Verdict {
            decision: b.action.as_str(),
            matched_block: Some(b.name.clone()),
            reason,
            action: Some(b.action.clone()),
        }
    }

    /// Anonymous read of one key (GET semantics), for GETs and the LIST filter.
    pub fn anonymous_may_read(&self, bucket: &str, key: &str, ip: Option<IpAddr>) -> bool {
        let f = Probe {
            method: "GET",
            bucket,
            key,
            list_prefix: None,
            source_ip: ip,
            authenticated: false,
        };
        self.action_for(&f) == Some(&BlockAction::AllowAnonymous)
    }

    /// Anonymous LIST of `prefix` in `bucket`.
    pub fn anonymous_may_list(&self, bucket: &str, prefix: &str, ip: Option<IpAddr>) -> bool {
        let f = Probe {
            method: "GET",
            bucket,
            key: "",
            list_prefix: Some(prefix),
            source_ip: ip,
            authenticated: false,
        };
        self.action_for(&f) == Some(&BlockAction::AllowAnonymous)
    }
}

/// Decodes `%XX` escapes (invalid ones are kept as written).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The chain's view of an S3 request given as method, path (`/bucket/key`), query,
/// source address and whether it carries credentials.
pub fn facts_of(
    method: &str,
    path: &str,
    query: Option<&str>,
    source_ip: Option<IpAddr>,
    authenticated: bool,
) -> Facts {
    let trimmed = path.trim_start_matches('/');
    let (bucket, key) = match trimmed.split_once('/') {
        Some((b, k)) => (percent_decode(b), percent_decode(k)),
        None => (percent_decode(trimmed), String::new()),
    };
    let method = method.to_ascii_uppercase();
    let list_prefix = (method == "GET" && !bucket.is_empty() && key.is_empty())
        .then(|| query_value(query, "prefix").unwrap_or_default());
    Facts {
        method,
        bucket,
        key,
        list_prefix,
        source_ip,
        authenticated,
    }
}

/// The client address: the peer, or with `DGP_TRUST_PROXY_HEADERS` the first
/// `X-Forwarded-For` entry (else `X-Real-IP`).
pub fn source_ip(
    trust_proxy: bool,
    headers: &http::HeaderMap,
    peer: Option<IpAddr>,
) -> Option<IpAddr> {
    if trust_proxy {
        let fwd = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .or_else(|| headers.get("x-real-ip").and_then(|v| v.to_str().ok()));
        if let Some(ip) = fwd.and_then(|v| v.trim().parse::<IpAddr>().ok()) {
            return Some(ip.to_canonical());
        }
    }
    peer.map(|p| p.to_canonical())
}

/// Claims SigV4 credentials: an Authorization header, a presigned query, or a browser POST
/// form (its policy is signed inside the body, checked later by the S3 layer).
fn carries_credentials(req: &Request) -> bool {
    if req.headers().contains_key(http::header::AUTHORIZATION) {
        return true;
    }
    if req
        .uri()
        .query()
        .is_some_and(|q| q.contains("X-Amz-Signature") || q.contains("X-Amz-Credential"))
    {
        return true;
    }
    req.method() == http::Method::POST
        && req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("multipart/form-data"))
}

/// Put in the request extensions for the S3 layer: the client address the chain saw and
/// whether it admitted anonymous access.
#[derive(Debug, Clone)]
pub struct Admission {
    pub source_ip: Option<IpAddr>,
    pub allow_anonymous: bool,
}

/// The S3 error code shown with a reject status.
fn reject_code(status: u16) -> &'static str {
    match status {
        401 | 403 => "AccessDenied",
        405 => "MethodNotAllowed",
        429 => "SlowDown",
        503 => "ServiceUnavailable",
        _ => "RequestRejected",
    }
}

fn s3_error(status: u16, code: &str, message: &str, resource: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{}</Message><Resource>{}</Resource><RequestId>{}</RequestId></Error>",
        crate::s3::xml_escape(message),
        crate::s3::xml_escape(resource),
        uuid::Uuid::new_v4()
    );
    let mut r = Response::new(axum::body::Body::from(body));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::FORBIDDEN);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/xml"),
    );
    r
}

/// The S3-side middleware: runs the chain before s3s authenticates. deny → 403
/// AccessDenied; reject → the block's status with its message; otherwise the request goes
/// on with an [`Admission`] extension that the access check reads.
pub async fn enforce(
    axum::extract::State(st): axum::extract::State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let ip = source_ip(st.cfg.trust_proxy_headers, req.headers(), peer);
    let signed = carries_credentials(&req);
    // An address locked out after repeated SigV4 failures gets SlowDown for any signed
    // request until the lockout ends (anonymous public reads are not authentication).
    // Only signed requests are counted, so only they pay for the key.
    let ip_key = signed.then(|| {
        ip.map(|i| i.to_string())
            .unwrap_or_else(|| "unknown".into())
    });
    if ip_key.as_ref().is_some_and(|k| st.sigv4_limiter.locked(k)) {
        metrics::counter!("deltaglider_auth_failures_total", "reason" => "rate_limited")
            .increment(1);
        return s3_error(
            429,
            "SlowDown",
            "Too many authentication failures from this address: try again later",
            req.uri().path(),
        );
    }
    let facts = facts_of(
        req.method().as_str(),
        req.uri().path(),
        req.uri().query(),
        ip,
        signed,
    );
    // Only what the response needs is taken from the matched block, under the read lock.
    let (action, block) = match st.admission.read().first_match(&facts.probe()) {
        Some(b) => (Some(b.action.clone()), b.name.clone()),
        None => (None, String::new()),
    };
    let audit = |event: &str| {
        let ip_s = ip.map(|i| i.to_string()).unwrap_or_default();
        st.audit
            .record(event, "", &block, &ip_s, "", &facts.bucket, &facts.key);
    };
    match &action {
        Some(BlockAction::Deny) => {
            audit("admission_denied");
            return s3_error(403, "AccessDenied", "Access Denied", req.uri().path());
        }
        Some(BlockAction::Reject { status, message }) => {
            audit("admission_rejected");
            let msg = message
                .clone()
                .unwrap_or_else(|| format!("Request rejected by admission block '{block}'"));
            return s3_error(*status, reject_code(*status), &msg, req.uri().path());
        }
        _ => {}
    }
    req.extensions_mut().insert(Admission {
        source_ip: ip,
        allow_anonymous: action == Some(BlockAction::AllowAnonymous),
    });
    let Some(ip_key) = ip_key else {
        return next.run(req).await;
    };
    let outcome = crate::s3::auth::AuthOutcome::default();
    req.extensions_mut().insert(outcome.clone());
    let resp = next.run(req).await;
    if resp.status() == http::StatusCode::FORBIDDEN && !outcome.verified() {
        st.sigv4_limiter.failure(&st, &ip_key);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sec(yaml: &str) -> AdmissionSection {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn glob_full_and_partial() {
        let g = Glob::new("builds/*.zip");
        assert!(g.matches("builds/a/b.zip", false));
        assert!(!g.matches("builds/a/b.tar", false));
        assert!(g.matches("buil", true));
        assert!(!g.matches("other", true));
        let p = Glob::prefix("builds/public/");
        assert!(p.matches("builds/public/x", false));
        assert!(!p.matches("builds/publicish/x", false));
        assert!(p.matches("builds/", true));
        assert!(!p.matches("builds/publicish", true));
        assert!(Glob::prefix("").matches("", true));
    }

    #[test]
    fn glob_steps_by_character_not_byte() {
        // `?` is one character, and `*` backtracks over whole characters.
        let g = Glob::new("r?sum?/*é.zip");
        assert!(g.matches("résumé/x/éé.zip", false));
        assert!(!g.matches("réésumé/é.zip", false));
        assert!(Glob::new("*ü*ü").matches("äüöü", false));
        assert!(!Glob::new("?").matches("üü", false));
        assert!(Glob::new("ü?").matches("ü", true));
    }

    #[test]
    fn cidr_contains() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.9.9".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn validation_names_the_block() {
        let e = validate(&sec("blocks: [{name: 'public-prefix:x', action: deny}]")).unwrap_err();
        assert!(
            e.contains("'public-prefix:x'") && e.contains("reserved"),
            "{e}"
        );
        let e = validate(&sec(
            "blocks: [{name: a, action: deny}, {name: a, action: continue}]",
        ))
        .unwrap_err();
        assert!(
            e.contains("blocks[1] 'a'") && e.contains("duplicate"),
            "{e}"
        );
        let e = validate(&sec(
            "blocks: [{name: b, match: {source_ip: 'x.y'}, action: deny}]",
        ))
        .unwrap_err();
        assert!(e.contains("'b'"), "{e}");
        assert!(serde_yaml::from_str::<AdmissionSection>(
            "blocks: [{name: c, action: {type: reject, status: 200}}]"
        )
        .is_err());
        let e = validate(&sec("blocks: [{name: 'bad name', action: deny}]")).unwrap_err();
        assert!(e.contains("'bad name'"), "{e}");
    }

    #[test]
    fn first_match_wins_and_operator_blocks_come_first() {
        let s = sec(r#"
blocks:
  - name: office
    match: {source_ip_list: ["10.0.0.0/8"], bucket: rel}
    action: continue
  - name: no-rel
    match: {bucket: rel}
    action: {type: reject, status: 451, message: gone}
"#);
        let mut buckets = BTreeMap::new();
        buckets.insert(
            "rel".to_string(),
            BucketPolicy {
                public_prefixes: vec!["pub/".into()],
                ..Default::default()
            },
        );
        let c = Chain::build(&s, &buckets).unwrap();
        let f = facts_of(
            "GET",
            "/rel/pub/a",
            None,
            Some("10.1.1.1".parse().unwrap()),
            false,
        );
        assert_eq!(c.evaluate(&f).matched_block.as_deref(), Some("office"));
        let f = facts_of(
            "GET",
            "/rel/pub/a",
            None,
            Some("192.168.1.1".parse().unwrap()),
            false,
        );
        let v = c.evaluate(&f);
        assert_eq!(
            (v.decision, v.matched_block.as_deref()),
            ("reject", Some("no-rel"))
        );
        let f = facts_of("GET", "/other/pub/a", None, None, false);
        assert_eq!(c.evaluate(&f).decision, "continue");
        let c2 = Chain::build(&AdmissionSection::default(), &buckets).unwrap();
        let v = c2.evaluate(&facts_of("GET", "/rel", Some("prefix=pub%2F"), None, false));
        assert_eq!(v.matched_block.as_deref(), Some("public-prefix:rel"));
        assert!(!c2.anonymous_may_read("rel", "pubx", None));
    }
}
