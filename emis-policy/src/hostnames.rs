//! The spec's hostnames as matchers, and the hostname groups the compiler gives rules.
//!
//! A hostname is an exact name (`openapi.emishealth.com`) or a wildcard (`*.emis-x.uk`)
//! that matches one or more labels in front of its suffix (`a.emis-x.uk`,
//! `a.b.emis-x.uk`, never `emis-x.uk` itself). Matching ignores ASCII case and one
//! trailing dot, as DNS does.
//!
//! Rules naming the same set of hostnames on the same protocol and ports share a group;
//! each group owns one bit, which a port's
//! [`RuleSet::hostnames`](emis_common::RuleSet::hostnames) holds for the groups listing
//! it, so a learned address's rules need no ports of their own.

use emis_common::{LearnedEntry, LearnedValue, MAX_HOSTNAME_GROUPS, MAX_LEARNED_ENTRIES};

use crate::capacity::CapacityError;
use crate::compile::endpoint_mask;
use crate::policy::{Endpoint, Policy, Scope};

/// The longest name DNS carries, in presentation form without the trailing dot.
pub const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// One hostname of a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pattern {
    /// Lower case, without a trailing dot; for a wildcard, the part after `*.`.
    suffix: String,
    wildcard: bool,
}

/// A hostname the spec cannot use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not a hostname: {why}")]
pub struct HostnameError {
    pub given: String,
    pub why: &'static str,
}

impl Pattern {
    /// An exact name or `*.` followed by one; labels of letters, digits, `-` and `_`.
    pub fn parse(given: &str) -> Result<Pattern, HostnameError> {
        let error = |why| HostnameError {
            given: given.to_string(),
            why,
        };
        let (wildcard, rest) = match given.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, given),
        };
        if rest.contains('*') {
            return Err(error(
                "a wildcard is allowed only as the whole first label (`*.example.com`)",
            ));
        }
        let suffix = normalize(rest).ok_or_else(|| {
            error("use labels of letters, digits, '-' and '_' separated by dots, at most 253 characters")
        })?;
        Ok(Pattern { suffix, wildcard })
    }

    /// Whether `name` (any case, trailing dot or not) is this hostname or, for a
    /// wildcard, one or more labels in front of it.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        if !self.wildcard {
            return name.eq_ignore_ascii_case(&self.suffix);
        }
        let (n, s) = (name.len(), self.suffix.len());
        n > s + 1
            && name.as_bytes()[n - s - 1] == b'.'
            && name[n - s..].eq_ignore_ascii_case(&self.suffix)
            // The labels in front must be real labels: `.example.com` is no name.
            && !name[..n - s - 1].is_empty()
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.suffix)
    }
}

/// `name` in lower case without its trailing dot, if it is a well-formed hostname.
pub fn normalize(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return None;
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    name.split('.')
        .all(label_ok)
        .then(|| name.to_ascii_lowercase())
}

/// Rules naming the same hostnames on the same protocol and ports, and what an address
/// learned for one of them means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostnameGroup {
    /// Sorted and without repeats: with the protocol and ports, the group's identity.
    pub patterns: Vec<Pattern>,
    pub protocol: crate::policy::Protocol,
    pub ports: Vec<crate::policy::PortRange>,
    /// Rule ids, in spec order.
    pub rules: Vec<u32>,
    /// Classes of the count-scope networks the rules name as destination.
    pub count_classes: u64,
}

/// One rule naming hostnames, as a learned address carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RuleShape {
    id: u32,
    src: u64,
    dst: u64,
    group: u32,
}

/// Every hostname group of a policy; group `i` owns bit `i`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostnameGroups {
    pub groups: Vec<HostnameGroup>,
    /// Per rule id: its group's bit, or 0.
    pub rule_bits: Vec<u32>,
    /// The rules naming hostnames, in spec order.
    shapes: Vec<RuleShape>,
    /// Per rule id, the counter slot the kernel knows it by (the id itself unless the
    /// daemon compiled with stable slots).
    slots: Vec<u32>,
}

/// What an address learned for a set of names holds, and whether its rules overflowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Learned {
    pub value: LearnedValue,
    /// More rules (port ranges) than [`MAX_LEARNED_ENTRIES`]: the first ones in spec order
    /// were kept.
    pub overflow: bool,
}

impl HostnameGroups {
    /// The groups of `policy`'s rules; more distinct hostname sets than bits is an error.
    pub fn of(policy: &Policy) -> Result<HostnameGroups, CapacityError> {
        let mut groups: Vec<HostnameGroup> = Vec::new();
        let mut rule_bits = Vec::with_capacity(policy.rules.len());
        let mut shapes = Vec::new();
        for (id, rule) in policy.rules.iter().enumerate() {
            let patterns = rule_patterns(&rule.hostnames);
            if patterns.is_empty() {
                rule_bits.push(0);
                continue;
            }
            let mut ports = rule.ports.clone();
            ports.sort();
            let index = match groups.iter().position(|g| {
                g.patterns == patterns && g.protocol == rule.protocol && g.ports == ports
            }) {
                Some(i) => i,
                None => {
                    if groups.len() == MAX_HOSTNAME_GROUPS as usize {
                        return Err(CapacityError::HostnameGroups {
                            count: distinct_sets(policy),
                            max: MAX_HOSTNAME_GROUPS as usize,
                        });
                    }
                    groups.push(HostnameGroup {
                        patterns,
                        protocol: rule.protocol,
                        ports,
                        rules: Vec::new(),
                        count_classes: 0,
                    });
                    groups.len() - 1
                }
            };
            groups[index].rules.push(id as u32);
            groups[index].count_classes |= count_classes(policy, &rule.to);
            rule_bits.push(1 << index);
            shapes.push(RuleShape {
                id: id as u32,
                src: endpoint_mask(&rule.from),
                dst: endpoint_mask(&rule.to),
                group: 1 << index,
            });
        }
        let slots = (0..policy.rules.len() as u32).collect();
        Ok(HostnameGroups {
            groups,
            rule_bits,
            shapes,
            slots,
        })
    }

    /// Rule `i` is known to the kernel as `slots[i]`.
    pub fn set_slots(&mut self, slots: &[u32]) {
        self.slots = slots.to_vec();
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The group bits of the groups with a hostname matching `name`.
    pub fn groups_of(&self, name: &str) -> u32 {
        self.groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.patterns.iter().any(|p| p.matches(name)))
            .fold(0, |bits, (i, _)| bits | 1 << i)
    }

    /// What the kernel's learned map holds for an address learned for the groups
    /// `groups`: their count-scope classes and their rules in spec order, leaving out one
    /// that an earlier one of its group covers (same ports, wider classes), at most
    /// [`MAX_LEARNED_ENTRIES`]. `None` if `groups` is empty.
    pub fn learned(&self, groups: u32) -> Option<Learned> {
        if groups == 0 {
            return None;
        }
        let mut value = LearnedValue {
            groups,
            ..LearnedValue::default()
        };
        let mut overflow = false;
        for (i, group) in self.groups.iter().enumerate() {
            if groups & 1 << i != 0 {
                value.count_classes |= group.count_classes;
            }
        }
        let mut kept: Vec<RuleShape> = Vec::new();
        for shape in &self.shapes {
            if groups & shape.group == 0 {
                continue;
            }
            let covered = kept.iter().any(|k| {
                k.group == shape.group
                    && k.src & shape.src == shape.src
                    && k.dst & shape.dst == shape.dst
            });
            if covered {
                continue;
            }
            if kept.len() == MAX_LEARNED_ENTRIES {
                overflow = true;
                break;
            }
            kept.push(*shape);
        }
        for (slot, shape) in value.entries.iter_mut().zip(&kept) {
            *slot = LearnedEntry {
                src: shape.src,
                dst: shape.dst,
                rule: self
                    .slots
                    .get(shape.id as usize)
                    .copied()
                    .unwrap_or(shape.id),
                group: shape.group,
            };
        }
        value.len = kept.len() as u32;
        Some(Learned { value, overflow })
    }

    /// The rule ids whose hostnames match `name`, in spec order.
    pub fn rules_for(&self, name: &str) -> Vec<u32> {
        let bits = self.groups_of(name);
        (0..self.rule_bits.len() as u32)
            .filter(|&id| self.rule_bits[id as usize] & bits != 0)
            .collect()
    }
}

/// A rule's hostnames as a group identity: parsed, sorted, without repeats. The spec
/// loader has checked them, so a name that does not parse (a policy built by hand) is
/// left out.
pub fn rule_patterns(hostnames: &[String]) -> Vec<Pattern> {
    let mut patterns: Vec<Pattern> = hostnames
        .iter()
        .filter_map(|h| Pattern::parse(h).ok())
        .collect();
    patterns.sort();
    patterns.dedup();
    patterns
}

/// The classes of the count-scope networks among `endpoints`.
pub fn count_classes(policy: &Policy, endpoints: &[Endpoint]) -> u64 {
    endpoints.iter().fold(0, |mask, endpoint| match *endpoint {
        Endpoint::Network(id) if policy.networks[id as usize].scope == Scope::Count => {
            mask | emis_common::network_bit(id)
        }
        _ => mask,
    })
}

fn distinct_sets(policy: &Policy) -> usize {
    let mut sets: Vec<Vec<Pattern>> = policy
        .rules
        .iter()
        .map(|r| rule_patterns(&r.hostnames))
        .filter(|p| !p.is_empty())
        .collect();
    sets.sort();
    sets.dedup();
    sets.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn exact_names_ignore_case_and_one_trailing_dot() {
        let exact = p("openapi.emishealth.com");
        assert!(exact.matches("openapi.emishealth.com"));
        assert!(exact.matches("OpenAPI.EmisHealth.COM."));
        assert!(!exact.matches("openapi.emishealth.com.."));
        assert!(!exact.matches("x.openapi.emishealth.com"));
        assert!(!exact.matches("emishealth.com"));
        assert!(!exact.matches(""));
        assert_eq!(
            p("OpenAPI.emishealth.com.").to_string(),
            "openapi.emishealth.com"
        );
    }

    #[test]
    fn a_wildcard_matches_one_or_more_labels_never_its_suffix() {
        let w = p("*.iot.eu-west-2.amazonaws.com");
        assert!(w.matches("a1b2-ats.iot.eu-west-2.amazonaws.com"));
        assert!(w.matches("deep.er.IOT.eu-west-2.amazonaws.com."));
        assert!(!w.matches("iot.eu-west-2.amazonaws.com"));
        assert!(!w.matches(".iot.eu-west-2.amazonaws.com"));
        assert!(!w.matches("xiot.eu-west-2.amazonaws.com"));
        assert!(!w.matches("a.iot.eu-west-1.amazonaws.com"));
        assert_eq!(w.to_string(), "*.iot.eu-west-2.amazonaws.com");
    }

    #[test]
    fn malformed_hostnames_are_refused() {
        for bad in [
            "",
            ".",
            "*",
            "*.",
            "a..b",
            "a.*.b",
            "**.b",
            "*x.b",
            "a b.c",
            "a.b/c",
            &"a".repeat(64),
            &format!("{}.com", ["a"; 130].join(".")),
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(normalize(&format!("{}.com", "a".repeat(63))).is_some());
        assert!(normalize("ünï.com").is_none());
    }

    #[test]
    fn hostile_names_never_match_or_panic() {
        let w = p("*.emis-x.uk");
        for name in [
            "é.emis-x.uk",
            "\u{0}.emis-x.uk",
            "emis-x.uké",
            "ü",
            "\u{10ffff}",
        ] {
            let _ = w.matches(name);
            let _ = p("emis-x.uk").matches(name);
        }
        assert!(!w.matches("\u{0}emis-x.uk"));
    }
}
