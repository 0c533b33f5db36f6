//! Permission conditions in AWS policy syntax: `{Operator: {key: value | [values]}}` on a
//! rule, which then applies only to requests for which every operator/key pair holds.
//!
//! Keys: `aws:SourceIp` (the client address the admission chain computed, so
//! `DGP_TRUST_PROXY_HEADERS` applies) with `IpAddress`/`NotIpAddress`, and `s3:prefix` (the
//! `prefix` parameter of a ListObjects/ListObjectsV2 request, `""` when absent) with the
//! `String*` operators. Semantics follow AWS: several values of one key are ORed (a negated
//! operator holds when none matches), keys and operators are ANDed, a key the request does
//! not carry makes a positive operator fail and a negated one hold, and the `…IfExists`
//! form holds when the key is absent. Anything else is refused when the rule is loaded,
//! never ignored: an unknown condition silently skipped would widen an Allow.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::admission::Cidr;

/// `{operator: {key: values}}`, kept as written so exports round-trip.
pub type Conditions = BTreeMap<String, BTreeMap<String, Values>>;

/// One value or a list, as AWS policies allow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Values {
    One(String),
    Many(Vec<String>),
}

impl Values {
    fn iter(&self) -> impl Iterator<Item = &str> {
        let s: &[String] = match self {
            Values::One(v) => std::slice::from_ref(v),
            Values::Many(v) => v,
        };
        s.iter().map(String::as_str)
    }
}

/// What a request brings to condition evaluation.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestContext<'a> {
    pub source_ip: Option<IpAddr>,
    /// `s3:prefix`: set for ListObjects/ListObjectsV2 only.
    pub prefix: Option<&'a str>,
}

impl<'a> RequestContext<'a> {
    pub fn new(source_ip: Option<IpAddr>, prefix: Option<&'a str>) -> Self {
        RequestContext { source_ip, prefix }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Test {
    Equals,
    EqualsIgnoreCase,
    Like,
    Ip,
}

/// An operator name split into its test, whether it is negated, and `IfExists`.
fn operator(name: &str) -> Option<(Test, bool, bool)> {
    let (base, if_exists) = match name.strip_suffix("IfExists") {
        Some(b) => (b, true),
        None => (name, false),
    };
    let (test, negated) = match base {
        "StringEquals" => (Test::Equals, false),
        "StringNotEquals" => (Test::Equals, true),
        "StringEqualsIgnoreCase" => (Test::EqualsIgnoreCase, false),
        "StringNotEqualsIgnoreCase" => (Test::EqualsIgnoreCase, true),
        "StringLike" => (Test::Like, false),
        "StringNotLike" => (Test::Like, true),
        "IpAddress" => (Test::Ip, false),
        "NotIpAddress" => (Test::Ip, true),
        _ => return None,
    };
    Some((test, negated, if_exists))
}

#[derive(Clone, Copy, PartialEq)]
enum Key {
    SourceIp,
    Prefix,
}

/// Condition keys are case-insensitive in AWS.
fn key(name: &str) -> Option<Key> {
    if name.eq_ignore_ascii_case("aws:SourceIp") {
        Some(Key::SourceIp)
    } else if name.eq_ignore_ascii_case("s3:prefix") {
        Some(Key::Prefix)
    } else {
        None
    }
}

/// Refuses unknown operators and keys, a key used with an operator of the wrong type, an
/// empty value list and addresses that do not parse.
pub fn validate(c: &Conditions) -> Result<(), String> {
    for (op, pairs) in c {
        let (test, _, _) = operator(op).ok_or_else(|| {
            format!("unsupported condition operator {op:?} (String[Not]Equals[IgnoreCase], String[Not]Like, [Not]IpAddress, each optionally …IfExists)")
        })?;
        if pairs.is_empty() {
            return Err(format!("condition {op:?} names no key"));
        }
        for (k, values) in pairs {
            let k_ = key(k).ok_or_else(|| {
                format!("unsupported condition key {k:?} (aws:SourceIp, s3:prefix)")
            })?;
            if (k_ == Key::SourceIp) != (test == Test::Ip) {
                return Err(format!("condition key {k:?} cannot be used with {op:?}"));
            }
            if values.iter().next().is_none() {
                return Err(format!("condition {op:?} {k:?} has no value"));
            }
            if test == Test::Ip {
                for v in values.iter() {
                    Cidr::parse(v).map_err(|e| format!("condition {op:?} {k:?}: {e}"))?;
                }
            }
        }
    }
    Ok(())
}

/// Whether every condition holds for the request. Conditions that [`validate`] would refuse
/// never hold (they cannot reach here from a validated config; failing closed is the safe
/// answer if one does).
pub fn holds(c: &Conditions, cx: &RequestContext<'_>) -> bool {
    c.iter().all(|(op, pairs)| {
        let Some((test, negated, if_exists)) = operator(op) else {
            return false;
        };
        pairs.iter().all(|(k, values)| {
            let present = match key(k) {
                Some(Key::SourceIp) => cx.source_ip.map(Present::Ip),
                Some(Key::Prefix) => cx.prefix.map(Present::Str),
                None => return false,
            };
            let Some(v) = present else {
                return if_exists || negated;
            };
            let any = values.iter().any(|want| matches(test, want, v));
            any != negated
        })
    })
}

#[derive(Clone, Copy)]
enum Present<'a> {
    Ip(IpAddr),
    Str(&'a str),
}

fn matches(test: Test, want: &str, v: Present<'_>) -> bool {
    match (test, v) {
        (Test::Ip, Present::Ip(ip)) => Cidr::parse(want).is_ok_and(|c| c.contains(ip)),
        (Test::Equals, Present::Str(s)) => want == s,
        (Test::EqualsIgnoreCase, Present::Str(s)) => want.eq_ignore_ascii_case(s),
        (Test::Like, Present::Str(s)) => super::glob(want, s),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conds(json: &str) -> Conditions {
        serde_json::from_str(json).unwrap()
    }

    fn ip(s: &str) -> RequestContext<'static> {
        RequestContext {
            source_ip: Some(s.parse().unwrap()),
            prefix: None,
        }
    }

    #[test]
    fn source_ip_matches_any_listed_network_and_negation_matches_none() {
        let c = conds(r#"{"IpAddress": {"aws:SourceIp": ["10.0.0.0/8", "192.168.1.7"]}}"#);
        validate(&c).unwrap();
        assert!(holds(&c, &ip("10.2.3.4")));
        assert!(holds(&c, &ip("192.168.1.7")));
        assert!(!holds(&c, &ip("192.168.1.8")));
        assert!(!holds(&c, &RequestContext::default()));
        let n = conds(r#"{"NotIpAddress": {"aws:sourceip": "10.0.0.0/8"}}"#);
        assert!(!holds(&n, &ip("10.2.3.4")));
        assert!(holds(&n, &ip("127.0.0.1")));
        assert!(holds(&n, &ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn prefix_is_absent_outside_a_list_and_if_exists_then_holds() {
        let c = conds(r#"{"StringLike": {"s3:prefix": ["home/alice/*", ""]}}"#);
        let list = |p: &'static str| RequestContext {
            source_ip: None,
            prefix: Some(p),
        };
        assert!(holds(&c, &list("home/alice/docs/")));
        assert!(holds(&c, &list("")));
        assert!(!holds(&c, &list("home/bob/")));
        assert!(!holds(&c, &RequestContext::default()));
        let e = conds(r#"{"StringEqualsIfExists": {"s3:prefix": "x/"}}"#);
        assert!(holds(&e, &RequestContext::default()));
        assert!(!holds(&e, &list("y/")));
        let ne = conds(r#"{"StringNotEquals": {"s3:prefix": "secret/"}}"#);
        assert!(holds(&ne, &RequestContext::default()));
        assert!(!holds(&ne, &list("secret/")));
    }

    #[test]
    fn all_pairs_must_hold() {
        let c = conds(
            r#"{"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}, "StringEquals": {"s3:prefix": "a/"}}"#,
        );
        let cx = RequestContext {
            source_ip: Some("10.0.0.1".parse().unwrap()),
            prefix: Some("a/"),
        };
        assert!(holds(&c, &cx));
        assert!(!holds(
            &c,
            &RequestContext {
                prefix: Some("b/"),
                ..cx
            }
        ));
    }

    #[test]
    fn validation_refuses_what_it_cannot_evaluate() {
        for bad in [
            r#"{"DateGreaterThan": {"aws:CurrentTime": "2020-01-01T00:00:00Z"}}"#,
            r#"{"StringEquals": {"aws:username": "bob"}}"#,
            r#"{"IpAddress": {"s3:prefix": "a/"}}"#,
            r#"{"StringLike": {"aws:SourceIp": "10.*"}}"#,
            r#"{"IpAddress": {"aws:SourceIp": "10.0.0.0/40"}}"#,
            r#"{"IpAddress": {"aws:SourceIp": []}}"#,
            r#"{"IpAddress": {}}"#,
        ] {
            assert!(validate(&conds(bad)).is_err(), "{bad}");
        }
    }
}
