//! Per-port dispatch: the policy's rules grouped by the ports they list, a chain per group
//! holding those rules, and a verdict map from (protocol, port interval) to the chains,
//! for each direction (forward by destination port, reply by source port) and family.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use super::addr::Af;
use super::sections::{quoted, write_elements, Sets};
use super::{rule_counter, Result};
use crate::policy::{Policy, Protocol, Rule};

/// The port chains and the `forward_ports_*`/`reply_ports_*` maps. Shadowed rules get no
/// nft rule (they keep their counters).
pub(super) fn dispatch(w: &mut String, policy: &Policy, sets: &Sets) -> Result<()> {
    let shadowed: HashSet<u32> = policy.shadowed.iter().map(|s| s.0).collect();
    let groups = port_groups(policy, &shadowed);
    for af in Af::ALL {
        for reply in [false, true] {
            let kind = if reply { "reply" } else { "forward" };
            let mut elements = Vec::new();
            for group in &groups {
                let lines: Vec<String> = group
                    .rules
                    .iter()
                    .flat_map(|&id| rule_lines(policy, &policy.rules[id as usize], af, reply, sets))
                    .collect();
                if lines.is_empty() {
                    continue;
                }
                let chain = format!("{kind}_{}_{}_{}", group.proto, group.ports[0].0, af.tag());
                writeln!(w, "\tchain {chain} {{")?;
                for line in lines {
                    writeln!(w, "\t\t{line}")?;
                }
                writeln!(w, "\t}}")?;
                for &(first, last) in &group.ports {
                    let ports = if first == last {
                        first.to_string()
                    } else {
                        format!("{first}-{last}")
                    };
                    elements.push(format!("{} . {ports} : jump {chain}", group.proto));
                }
            }
            writeln!(w, "\tmap {kind}_ports_{} {{", af.tag())?;
            writeln!(w, "\t\ttype inet_proto . inet_service : verdict")?;
            writeln!(w, "\t\tflags interval")?;
            write_elements(w, elements.into_iter())?;
            writeln!(w, "\t}}")?;
        }
    }
    Ok(())
}

/// The nft rules of one rule in one direction: one per (source, destination) endpoint
/// pair with addresses in `af`. The cheap protocol and port tests come first.
fn rule_lines(policy: &Policy, rule: &Rule, af: Af, reply: bool, sets: &Sets) -> Vec<String> {
    let (src_field, dst_field) = if reply {
        ("daddr", "saddr")
    } else {
        ("saddr", "daddr")
    };
    let flags = if reply && rule.protocol == Protocol::Tcp {
        "tcp flags & ack == ack "
    } else {
        ""
    };
    let counter = quoted(&rule_counter(rule, reply));
    let ip = af.ip();
    let mut lines = Vec::new();
    for from in &rule.from {
        let Some(from_set) = sets.get(policy.endpoint_name(*from), af) else {
            continue;
        };
        for to in &rule.to {
            let Some(to_set) = sets.get(policy.endpoint_name(*to), af) else {
                continue;
            };
            lines.push(format!(
                "{flags}{ip} {src_field} @{from_set} {ip} {dst_field} @{to_set} counter name {counter} accept"
            ));
        }
    }
    lines
}

/// Ports of one protocol that the same rules list, in spec order.
struct PortGroup {
    proto: &'static str,
    /// Disjoint inclusive intervals.
    ports: Vec<(u16, u16)>,
    rules: Vec<u32>,
}

/// Splits each protocol's port space at every rule's range boundaries and groups the
/// pieces by the (non-shadowed) rules that list them, so one map lookup finds, in order,
/// every rule a port can match.
fn port_groups(policy: &Policy, shadowed: &HashSet<u32>) -> Vec<PortGroup> {
    let mut out: Vec<PortGroup> = Vec::new();
    for (protocol, proto) in [(Protocol::Tcp, "tcp"), (Protocol::Udp, "udp")] {
        let rules: Vec<(u32, &Rule)> = policy
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| (i as u32, r))
            .filter(|(i, r)| r.protocol == protocol && !shadowed.contains(i))
            .collect();
        let mut cuts: Vec<u32> = Vec::new();
        for (_, rule) in &rules {
            for range in &rule.ports {
                cuts.push(range.first as u32);
                cuts.push(range.last as u32 + 1);
            }
        }
        cuts.sort_unstable();
        cuts.dedup();
        let mut by_rules: BTreeMap<Vec<u32>, usize> = BTreeMap::new();
        for pair in cuts.windows(2) {
            let (first, last) = (pair[0] as u16, (pair[1] - 1) as u16);
            let listed: Vec<u32> = rules
                .iter()
                .filter(|(_, r)| r.has_port(first))
                .map(|(i, _)| *i)
                .collect();
            if listed.is_empty() {
                continue;
            }
            match by_rules.get(&listed) {
                Some(&g) => {
                    let group: &mut PortGroup = &mut out[g];
                    match group.ports.last_mut() {
                        Some(prev) if prev.1 as u32 + 1 == first as u32 => prev.1 = last,
                        _ => group.ports.push((first, last)),
                    }
                }
                None => {
                    by_rules.insert(listed.clone(), out.len());
                    out.push(PortGroup {
                        proto,
                        ports: vec![(first, last)],
                        rules: listed,
                    });
                }
            }
        }
    }
    out
}
