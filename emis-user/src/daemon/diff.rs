//! What a reload changes: rules added, removed and changed (by slug), prefixes added and
//! removed (per network or site role).

use std::collections::BTreeMap;

use emis_policy::policy::{Endpoint, Policy, Role, Rule};
use ipnet::IpNet;
use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyDiff {
    pub rules_added: Vec<String>,
    pub rules_removed: Vec<String>,
    pub rules_changed: Vec<String>,
    pub prefixes_added: Vec<String>,
    pub prefixes_removed: Vec<String>,
}

/// A rule with its endpoints by name, so a renumbered network does not look like a change.
fn rule_meaning(policy: &Policy, rule: &Rule) -> String {
    let side = |ends: &[Endpoint]| {
        ends.iter()
            .map(|e| match *e {
                Endpoint::Network(id) => policy.networks[id as usize].name.clone(),
                Endpoint::Role(role) => role.name().to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let ports: Vec<String> = rule.ports.iter().map(|p| p.to_string()).collect();
    format!(
        "{} {} {} {} -> {}",
        rule.direction.name(),
        rule.protocol.name(),
        ports.join(","),
        side(&rule.from),
        side(&rule.to)
    )
}

/// Each network's and site role's prefixes, by name, sorted. Borrowed: a count-scope
/// network may hold a million prefixes, and a string per prefix for both policies was
/// most of a reload's time and memory at that size.
fn prefixes(policy: &Policy) -> BTreeMap<&str, Vec<&IpNet>> {
    let mut out: BTreeMap<&str, Vec<&IpNet>> = BTreeMap::new();
    for network in &policy.networks {
        out.entry(network.name.as_str())
            .or_default()
            .extend(&network.prefixes);
    }
    for role in Role::ALL {
        out.entry(role.name())
            .or_default()
            .extend(policy.role(role).unwrap_or_default());
    }
    for list in out.values_mut() {
        list.sort_unstable();
        list.dedup();
    }
    out
}

/// `"owner prefix"` for each prefix `new` has and `old` has not, owner by owner, sorted.
fn added(old: &BTreeMap<&str, Vec<&IpNet>>, new: &BTreeMap<&str, Vec<&IpNet>>) -> Vec<String> {
    let mut out = Vec::new();
    for (owner, list) in new {
        let before = old.get(owner).map(Vec::as_slice).unwrap_or_default();
        for prefix in list {
            if before.binary_search(prefix).is_err() {
                out.push(format!("{owner} {prefix}"));
            }
        }
    }
    out.sort_unstable();
    out
}

impl PolicyDiff {
    pub fn between(old: &Policy, new: &Policy) -> PolicyDiff {
        let rules = |p: &Policy| -> BTreeMap<String, String> {
            p.rules
                .iter()
                .map(|r| (r.slug.clone(), rule_meaning(p, r)))
                .collect()
        };
        let (before, after) = (rules(old), rules(new));
        let (old_prefixes, new_prefixes) = (prefixes(old), prefixes(new));
        PolicyDiff {
            rules_added: after
                .keys()
                .filter(|s| !before.contains_key(*s))
                .cloned()
                .collect(),
            rules_removed: before
                .keys()
                .filter(|s| !after.contains_key(*s))
                .cloned()
                .collect(),
            rules_changed: after
                .iter()
                .filter(|(s, m)| before.get(*s).is_some_and(|old| old != *m))
                .map(|(s, _)| s.clone())
                .collect(),
            prefixes_added: added(&old_prefixes, &new_prefixes),
            prefixes_removed: added(&new_prefixes, &old_prefixes),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == PolicyDiff::default()
    }

    /// One line per kind of change; long lists are cut after ten names.
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "no change in rules or prefixes".into();
        }
        let list = |names: &[String]| {
            let mut text = names
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if names.len() > 10 {
                text.push_str(&format!(", ... ({} more)", names.len() - 10));
            }
            text
        };
        let mut lines = Vec::new();
        for (what, names) in [
            ("rules added", &self.rules_added),
            ("rules removed", &self.rules_removed),
            ("rules changed", &self.rules_changed),
            ("prefixes added", &self.prefixes_added),
            ("prefixes removed", &self.prefixes_removed),
        ] {
            if !names.is_empty() {
                lines.push(format!("{what} ({}): {}", names.len(), list(names)));
            }
        }
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emis_policy::spec::{load_policy, SiteOptions, Source};

    fn policy(spec: &str) -> Policy {
        load_policy(&Source::new("spec.toml", spec), &SiteOptions::default()).unwrap()
    }

    #[test]
    fn the_embedded_spec_against_a_trimmed_copy() {
        let full = Source::default_spec().text;
        let a = policy(&full);
        assert!(PolicyDiff::between(&a, &a).is_empty());
        let mut b = a.clone();
        let gone = b.rules.remove(0).slug;
        b.rules[0].ports[0].last = b.rules[0].ports[0].last.saturating_add(1);
        b.networks[0].prefixes.pop();
        let diff = PolicyDiff::between(&a, &b);
        assert_eq!(diff.rules_removed, [gone]);
        assert_eq!(diff.rules_changed, [b.rules[0].slug.clone()]);
        assert_eq!(diff.prefixes_removed.len(), 1);
        assert!(diff.prefixes_removed[0].starts_with(&format!("{} ", a.networks[0].name)));
        let back = PolicyDiff::between(&b, &a);
        assert_eq!(back.rules_added, diff.rules_removed);
        assert!(
            back.summary().contains("rules added (1)"),
            "{}",
            back.summary()
        );
    }

    #[test]
    fn a_prefix_moved_between_networks_is_removed_from_one_and_added_to_the_other() {
        let a = policy(&Source::default_spec().text);
        let mut b = a.clone();
        let moved = b.networks[0].prefixes.remove(0);
        b.networks[1].prefixes.push(moved);
        let diff = PolicyDiff::between(&a, &b);
        assert_eq!(
            diff.prefixes_removed,
            [format!("{} {moved}", a.networks[0].name)]
        );
        assert_eq!(
            diff.prefixes_added,
            [format!("{} {moved}", a.networks[1].name)]
        );
    }
}
