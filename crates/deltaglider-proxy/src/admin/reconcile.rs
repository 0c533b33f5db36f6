//! Declarative IAM reconciler: when `iam_mode: declarative` and a config apply or an
//! `access` section PUT changes `iam_users` / `iam_groups`, the running IAM is replaced by
//! the YAML's (entities matched by name), each change is audited as
//! `iam_reconcile_{user,group,provider}_{create,update,delete}` (plus
//! `iam_reconcile_mapping_rules_replaced`), and the dry run reports the spec's preview line.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{AccessSection, FileConfig};
use crate::state::AppState;

/// Creates, updates and deletes of one entity kind, by name.
#[derive(Default)]
struct Diff {
    create: Vec<String>,
    update: Vec<String>,
    delete: Vec<String>,
}

impl Diff {
    fn of<T: Serialize>(old: &[T], new: &[T], name: impl Fn(&T) -> &str) -> Diff {
        let index = |v: &[T]| -> BTreeMap<String, serde_json::Value> {
            v.iter()
                .map(|x| {
                    (
                        name(x).to_string(),
                        serde_json::to_value(x).unwrap_or_default(),
                    )
                })
                .collect()
        };
        let (o, n) = (index(old), index(new));
        let mut d = Diff::default();
        for (k, v) in &n {
            match o.get(k) {
                None => d.create.push(k.clone()),
                Some(ov) if ov != v => d.update.push(k.clone()),
                Some(_) => {}
            }
        }
        d.delete = o.keys().filter(|k| !n.contains_key(*k)).cloned().collect();
        d
    }

    fn summary(&self) -> String {
        format!(
            "(+{}/~{}/-{})",
            self.create.len(),
            self.update.len(),
            self.delete.len()
        )
    }
}

struct Plan {
    users: Diff,
    groups: Diff,
    providers: Diff,
    rules_replaced: bool,
}

fn plan(old: &AccessSection, new: &AccessSection) -> Plan {
    Plan {
        users: Diff::of(&old.iam_users, &new.iam_users, |u| &u.name),
        groups: Diff::of(&old.iam_groups, &new.iam_groups, |g| &g.name),
        providers: Diff::of(&old.auth_providers, &new.auth_providers, |p| &p.name),
        rules_replaced: old.group_mapping_rules != new.group_mapping_rules,
    }
}

fn declarative(fc: &FileConfig) -> bool {
    fc.access.iam_mode.as_deref() == Some("declarative")
}

/// Refuses a declared user that takes the access key of a user the same change deletes
/// (the spec's reconciler check): clients still signing with that key would silently act
/// as the new user. Delete in one apply, re-create in the next.
pub(super) fn check_key_reuse(old: &AccessSection, new: &AccessSection) -> Result<(), String> {
    for u in &new.iam_users {
        let taken = old.iam_users.iter().find(|o| {
            o.access_key_id == u.access_key_id
                && o.name != u.name
                && !new.iam_users.iter().any(|n| n.name == o.name)
        });
        if let Some(o) = taken {
            return Err(format!(
                "access: iam_users: user {:?} takes access key {:?} from user {:?}, which this change deletes; delete {:?} first, then create {:?} in a separate apply",
                u.name, u.access_key_id, o.name, o.name, u.name
            ));
        }
    }
    Ok(())
}

/// The spec's preview line, when `new` is declarative:
/// `declarative IAM preview: users(+a/~b/-c) groups(...) providers(...) mapping_rules=keep`.
pub(super) fn preview(old: &FileConfig, new: &FileConfig) -> Option<String> {
    if !declarative(new) {
        return None;
    }
    let p = plan(&old.access, &new.access);
    Some(format!(
        "declarative IAM preview: users{} groups{} providers{} mapping_rules={}",
        p.users.summary(),
        p.groups.summary(),
        p.providers.summary(),
        if p.rules_replaced { "replace" } else { "keep" }
    ))
}

/// Applies a declarative `new` over a running declarative proxy: IAM users and groups are
/// replaced live (the bootstrap pair stays), and every change is audited. Returns whether
/// anything was reconciled. A gui-mode proxy only takes declarative IAM at its next start.
pub(super) fn apply(st: &AppState, old: &FileConfig, new: &FileConfig) -> bool {
    if !(st.cfg.iam_declarative && declarative(new)) {
        return false;
    }
    let p = plan(&old.access, &new.access);
    {
        let mut users = st.iam.users.write();
        let mut groups = st.iam.groups.write();
        let bootstrap = st
            .cfg
            .access_key_id
            .as_ref()
            .and_then(|k| users.get(k).cloned());
        users.clear();
        for u in &new.access.iam_users {
            users.insert(u.access_key_id.clone(), u.clone());
        }
        if let Some(b) = bootstrap {
            users.entry(b.access_key_id.clone()).or_insert(b);
        }
        *groups = new
            .access
            .iam_groups
            .iter()
            .map(|g| (g.name.clone(), g.clone()))
            .collect();
    }
    let audit = |kind: &str, verb: &str, names: &[String]| {
        for n in names {
            st.audit.record(
                &format!("iam_reconcile_{kind}_{verb}"),
                "$config",
                n,
                "",
                "",
                "",
                "",
            );
        }
    };
    for (kind, d) in [
        ("user", &p.users),
        ("group", &p.groups),
        ("provider", &p.providers),
    ] {
        audit(kind, "create", &d.create);
        audit(kind, "update", &d.update);
        audit(kind, "delete", &d.delete);
    }
    if p.rules_replaced {
        st.audit.record(
            "iam_reconcile_mapping_rules_replaced",
            "$config",
            "group_mapping_rules",
            "",
            "",
            "",
            "",
        );
    }
    if let Some(line) = preview(old, new) {
        tracing::info!(target: "deltaglider_proxy::config", "{line}");
    }
    true
}
