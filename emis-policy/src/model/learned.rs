//! Learned names in the reference model: the addresses DNS answers taught, and the rule a
//! forward packet to one of them is counted under, decided from the policy's rules and
//! hostnames directly (the kernel reads what the daemon compiled from them).

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use emis_common::MAX_LEARNED_ENTRIES;

use crate::{
    compile::endpoint_mask,
    hostnames::{count_classes, rule_patterns, Pattern},
    policy::{Policy, Rule, Scope},
};

/// Names learned per address.
#[derive(Clone, Debug, Default)]
pub struct LearnedNames {
    names: HashMap<IpAddr, BTreeSet<String>>,
}

impl LearnedNames {
    pub fn learn(&mut self, name: &str, addr: IpAddr) {
        self.names
            .entry(addr)
            .or_default()
            .insert(name.trim_end_matches('.').to_ascii_lowercase());
    }

    pub fn forget(&mut self, addr: IpAddr) {
        self.names.remove(&addr);
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The rule a forward packet of `proto` to `dst`:`port` is counted under because of
    /// what `dst` was learned for: the first rule in spec order that names one of its
    /// names, lists the port, and whose networks match, among the first
    /// [`MAX_LEARNED_ENTRIES`] the kernel keeps ([`kernel_cut`]). In this walk the
    /// destination's count-scope classes are those of all the learned rules'
    /// destinations, and only when the packet is out of enforce scope (`out_of_scope`);
    /// the source's are none.
    pub fn rule(
        &self,
        policy: &Policy,
        proto: u8,
        port: u16,
        dst: IpAddr,
        (from, to): (u64, u64),
        out_of_scope: bool,
    ) -> Option<u32> {
        let names = self.names.get(&dst)?;
        let named = |hostnames: &[String]| {
            hostnames
                .iter()
                .filter_map(|h| Pattern::parse(h).ok())
                .any(|p| names.iter().any(|n| p.matches(n)))
        };
        let learned: Vec<usize> = (0..policy.rules.len())
            .filter(|&i| named(&policy.rules[i].hostnames))
            .collect();
        let count_mask = policy
            .networks
            .iter()
            .enumerate()
            .filter(|(_, n)| n.scope == Scope::Count)
            .fold(0u64, |m, (i, _)| m | emis_common::network_bit(i as u32));
        let widen = if out_of_scope {
            learned
                .iter()
                .fold(0, |m, &i| m | count_classes(policy, &policy.rules[i].to))
        } else {
            0
        };
        let (from, to) = (from & !count_mask, (to & !count_mask) | widen);
        kernel_cut(policy, learned)
            .into_iter()
            .find(|&i| {
                let rule = &policy.rules[i];
                rule.protocol.number() == proto
                    && rule.has_port(port)
                    && endpoint_mask(&rule.from) & from != 0
                    && endpoint_mask(&rule.to) & to != 0
            })
            .map(|i| i as u32)
    }
}

/// The learned rules an address's kernel entry keeps, as the daemon writes them
/// (`HostnameGroups::learned`): spec order, leaving out a rule that an earlier kept one
/// covers (same hostnames, protocol and ports, and networks at least as wide, so it could
/// never be the first to match), at most [`MAX_LEARNED_ENTRIES`]. A packet only a later
/// rule would match falls back to the first matching row, as the kernel does.
fn kernel_cut(policy: &Policy, learned: Vec<usize>) -> Vec<usize> {
    let shape = |rule: &Rule| {
        let mut ports = rule.ports.clone();
        ports.sort();
        (rule_patterns(&rule.hostnames), rule.protocol, ports)
    };
    let mut kept: Vec<usize> = Vec::new();
    for i in learned {
        let rule = &policy.rules[i];
        let (src, dst) = (endpoint_mask(&rule.from), endpoint_mask(&rule.to));
        let covered = kept.iter().any(|&k| {
            let earlier = &policy.rules[k];
            shape(earlier) == shape(rule)
                && endpoint_mask(&earlier.from) & src == src
                && endpoint_mask(&earlier.to) & dst == dst
        });
        if covered {
            continue;
        }
        if kept.len() == MAX_LEARNED_ENTRIES {
            break;
        }
        kept.push(i);
    }
    kept
}
