//! What a reload changes: rules added, removed and changed (by slug), prefixes added and
//! removed (per network or site role).

use std::collections::{BTreeMap, BTreeSet};

use emis_policy::policy::{Endpoint, Policy, Role, Rule};
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

fn prefixes(policy: &Policy) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for network in &policy.networks {
        for prefix in &network.prefixes {
            out.insert(format!("{} {prefix}", network.name));
        }
    }
    for role in Role::ALL {
        for prefix in policy.role(role).unwrap_or_default() {
            out.insert(format!("{} {prefix}", role.name()));
        }
    }
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
            prefixes_added: new_prefixes.difference(&old_prefixes).cloned().collect(),
            prefixes_removed: old_prefixes.difference(&new_prefixes).cloned().collect(),
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
        let back = PolicyDiff::between(&b, &a);
        assert_eq!(back.rules_added, diff.rules_removed);
        assert!(
            back.summary().contains("rules added (1)"),
            "{}",
            back.summary()
        );
    }
}
