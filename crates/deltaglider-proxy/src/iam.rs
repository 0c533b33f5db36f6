//! IAM: users (access key pairs), groups, Allow/Deny permission rules on `bucket/key-glob`
//! resources, and their evaluation (Deny wins; group rules merge with the user's own).

use std::collections::BTreeMap;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Permission {
    #[serde(default = "allow")]
    pub effect: String,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
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

fn rule_matches(p: &Permission, action: Action, resource: &str) -> bool {
    let act = p
        .actions
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(action.as_str()));
    act && p.resources.iter().any(|r| r == "*" || glob(r, resource))
}

/// The IAM store: users by access key and groups by name.
#[derive(Default)]
pub struct Iam {
    pub users: RwLock<BTreeMap<String, UserSpec>>,
    pub groups: RwLock<BTreeMap<String, GroupSpec>>,
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

    /// Evaluates `action` on `bucket/key` for the user. Deny wins over Allow; no match denies.
    pub fn evaluate(&self, user: &UserSpec, action: Action, bucket: &str, key: &str) -> Decision {
        if !user.enabled {
            return Decision::Deny;
        }
        let resource = format!("{bucket}/{key}");
        let rules = self.rules_of(user);
        let matching = rules.iter().filter(|r| rule_matches(r, action, &resource));
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
    /// per-key filter runs).
    pub fn may_list_bucket(&self, user: &UserSpec, bucket: &str) -> bool {
        if !user.enabled {
            return false;
        }
        self.rules_of(user).iter().any(|r| {
            !r.effect.eq_ignore_ascii_case("deny")
                && r.actions
                    .iter()
                    .any(|a| a == "*" || a == "list" || a == "read")
                && r.resources
                    .iter()
                    .any(|res| res == "*" || res.split('/').next().is_some_and(|b| glob(b, bucket)))
        })
    }

    pub fn is_admin(&self, user: &UserSpec) -> bool {
        user.enabled
            && self.rules_of(user).iter().any(|r| {
                !r.effect.eq_ignore_ascii_case("deny")
                    && r.actions.iter().any(|a| a == "*" || a == "admin")
                    && r.resources.iter().any(|x| x == "*")
            })
    }
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
                }],
            }],
        );
        let u = user(vec![Permission {
            effect: "Allow".into(),
            actions: vec!["read".into()],
            resources: vec!["b/*".into()],
        }]);
        assert_eq!(
            iam.evaluate(&u, Action::Read, "b", "public/x.zip"),
            Decision::Allow
        );
        assert_eq!(
            iam.evaluate(&u, Action::Read, "b", "secret/x.zip"),
            Decision::Deny
        );
        assert_eq!(
            iam.evaluate(&u, Action::Write, "b", "public/x.zip"),
            Decision::Deny
        );
        let p = user(vec![Permission {
            effect: "Allow".into(),
            actions: vec!["read".into()],
            resources: vec!["b/public/*".into()],
        }]);
        assert_eq!(
            iam.evaluate(&p, Action::Read, "b", "publicish/x"),
            Decision::Deny
        );
        let mut d = u.clone();
        d.enabled = false;
        assert_eq!(
            iam.evaluate(&d, Action::Read, "b", "public/x.zip"),
            Decision::Deny
        );
    }
}
