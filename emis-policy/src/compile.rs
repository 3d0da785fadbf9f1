//! Turns a validated [`Policy`] into the entries of the kernel maps: flattened
//! address tries (one lookup gives every class of an address) and per-port rule sets.

use std::collections::BTreeMap;

use emis_common::{
    network_bit, role_bit, AddrInfo, Config, PortKey, RuleEntry, RuleSet, NO_NETWORK,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::capacity::{CapacityError, Limits};
use crate::hostnames::HostnameGroups;
use crate::policy::{Endpoint, Policy, Scope};

/// Everything the loader writes into the maps, except the mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    /// Enforce-scope networks and site roles.
    pub v4: Vec<(Ipv4Net, AddrInfo)>,
    pub v6: Vec<(Ipv6Net, AddrInfo)>,
    /// Count-scope networks, in tries of their own: their classes only.
    pub count_v4: CountTrie<Ipv4Net>,
    pub count_v6: CountTrie<Ipv6Net>,
    pub ports: BTreeMap<PortKey, RuleSet>,
    pub config: Config,
    /// The rules' hostname groups: what an address learned for a name means.
    pub hostnames: HostnameGroups,
}

/// The entries of a count-scope trie, kept compact as these are the ones that run to a
/// million (AWS regions): each prefix with the index of its classes in a short table of
/// the distinct class sets (12 bytes an IPv4 entry, 24 an IPv6 one, instead of 16 and 32).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CountTrie<N> {
    /// Sorted by address, then length; no two equal.
    pub entries: Vec<(N, u32)>,
    /// The distinct class sets the entries name.
    pub classes: Vec<u64>,
}

impl<N: Copy> CountTrie<N> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Each prefix with its classes, as the trie holds them.
    pub fn iter(&self) -> impl Iterator<Item = (N, u64)> + '_ {
        self.entries
            .iter()
            .map(|&(net, id)| (net, self.classes[id as usize]))
    }
}

impl CountTrie<Ipv4Net> {
    /// The flattened IPv4 trie of `prefixes`, each with its classes, as [`compile`] builds
    /// a count-scope network's.
    pub fn v4(prefixes: impl IntoIterator<Item = (Ipv4Net, u64)>) -> CountTrie<Ipv4Net> {
        let mut trie = CountTrie::default();
        for (net, classes) in prefixes {
            let id = intern(&mut trie.classes, classes);
            trie.entries.push((net.trunc(), id));
        }
        count_trie(
            trie,
            |n| (u32::from(n.network()) as u128, n.prefix_len()),
            |a, b| a.contains(b),
        )
    }
}

/// The index of `classes` in `table`, added if new (the table stays a handful long).
fn intern(table: &mut Vec<u64>, classes: u64) -> u32 {
    match table.iter().position(|&c| c == classes) {
        Some(i) => i as u32,
        None => {
            table.push(classes);
            (table.len() - 1) as u32
        }
    }
}

/// Builds the count trie of one family in place: sorts, merges equal prefixes and folds
/// each prefix's enclosing prefixes' classes into it, with no copy of the entries.
fn count_trie<N: Copy + Eq>(
    mut trie: CountTrie<N>,
    sort_key: impl Fn(&N) -> (u128, u8),
    contains: impl Fn(&N, &N) -> bool,
) -> CountTrie<N> {
    let table = &mut trie.classes;
    trie.entries.sort_unstable_by_key(|(net, _)| sort_key(net));
    trie.entries.dedup_by(|(net, id), (kept, kept_id)| {
        let same = net == kept;
        if same {
            let union = table[*kept_id as usize] | table[*id as usize];
            *kept_id = intern(table, union);
        }
        same
    });
    // Sorted by address then length, a prefix's enclosing prefixes are on the stack.
    let mut stack: Vec<usize> = Vec::new();
    for i in 0..trie.entries.len() {
        let net = trie.entries[i].0;
        while stack
            .last()
            .is_some_and(|&outer| !contains(&trie.entries[outer].0, &net))
        {
            stack.pop();
        }
        if let Some(&outer) = stack.last() {
            let union = table[trie.entries[outer].1 as usize] | table[trie.entries[i].1 as usize];
            trie.entries[i].1 = intern(table, union);
        }
        stack.push(i);
    }
    trie.entries.shrink_to_fit();
    trie
}

/// Compiling fails only when the policy does not fit the maps.
pub type CompileError = CapacityError;

/// The class bits of one side of a rule.
pub fn endpoint_mask(endpoints: &[Endpoint]) -> u64 {
    endpoints.iter().fold(0, |mask, endpoint| {
        mask | match *endpoint {
            Endpoint::Network(id) => network_bit(id),
            Endpoint::Role(role) => role_bit(role.0),
        }
    })
}

/// The map entries of `policy`, or which map it overflows.
pub fn compile(policy: &Policy) -> Result<Compiled, CapacityError> {
    let limits = Limits::KERNEL;
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    // Sized up front: the count tries can hold a million entries, so no doubling growth.
    let count_of = |v6: bool| {
        policy
            .networks
            .iter()
            .filter(|n| n.scope == Scope::Count)
            .flat_map(|n| &n.prefixes)
            .filter(|p| matches!(p, IpNet::V6(_)) == v6)
            .count()
    };
    let mut count_v4 = CountTrie {
        entries: Vec::with_capacity(count_of(false)),
        classes: Vec::new(),
    };
    let mut count_v6 = CountTrie {
        entries: Vec::with_capacity(count_of(true)),
        classes: Vec::new(),
    };
    let mut count_mask = 0;
    for (id, network) in policy.networks.iter().enumerate() {
        let id = id as u32;
        let bit = network_bit(id);
        for prefix in &network.prefixes {
            match (network.scope, prefix.trunc()) {
                (Scope::Enforce, IpNet::V4(net)) => v4.push((net, addr_info(bit, id))),
                (Scope::Enforce, IpNet::V6(net)) => v6.push((net, addr_info(bit, id))),
                (Scope::Count, IpNet::V4(net)) => {
                    let id = intern(&mut count_v4.classes, bit);
                    count_v4.entries.push((net, id));
                }
                (Scope::Count, IpNet::V6(net)) => {
                    let id = intern(&mut count_v6.classes, bit);
                    count_v6.entries.push((net, id));
                }
            }
        }
        if network.scope == Scope::Count {
            count_mask |= bit;
        }
    }
    let mut unset_roles = 0;
    for role in crate::policy::Role::ALL {
        match policy.role(role) {
            Some(prefixes) => {
                for prefix in prefixes {
                    match prefix.trunc() {
                        IpNet::V4(net) => v4.push((net, addr_info(role_bit(role.0), NO_NETWORK))),
                        IpNet::V6(net) => v6.push((net, addr_info(role_bit(role.0), NO_NETWORK))),
                    }
                }
            }
            None => unset_roles |= role_bit(role.0),
        }
    }
    let key4 = |n: &Ipv4Net| (u32::from(n.network()) as u128, n.prefix_len());
    let key6 = |n: &Ipv6Net| (u128::from(n.network()), n.prefix_len());
    let v4 = flatten(v4, key4, |a, b| a.contains(b));
    let v6 = flatten(v6, key6, |a, b| a.contains(b));
    let count_v4 = count_trie(count_v4, key4, |a, b| a.contains(b));
    let count_v6 = count_trie(count_v6, key6, |a, b| a.contains(b));
    for (family, count) in [
        ("IPv4", v4.len()),
        ("IPv6", v6.len()),
        ("count-scope IPv4", count_v4.len()),
        ("count-scope IPv6", count_v6.len()),
    ] {
        limits.check_trie(family, count)?;
    }
    let hostnames = HostnameGroups::of(policy)?;
    let ports = port_sets(policy, &limits, &hostnames.rule_bits)?;
    Ok(Compiled {
        v4,
        v6,
        count_v4,
        count_v6,
        ports,
        config: config(policy, unset_roles, count_mask),
        hostnames,
    })
}

/// Like [`compile`], but rule `i` is counted and remembered in flows under `slots[i]`
/// instead of `i`: a daemon that reloads keeps each rule's counter slot while the rule
/// exists. Every slot must be below `MAX_RULES` and distinct.
pub fn compile_with_slots(policy: &Policy, slots: &[u32]) -> Result<Compiled, CompileError> {
    assert_eq!(slots.len(), policy.rules.len(), "one slot per rule");
    let mut compiled = compile(policy)?;
    for set in compiled.ports.values_mut() {
        for entry in &mut set.entries[..set.len as usize] {
            entry.rule = slots[entry.rule as usize];
        }
    }
    compiled.hostnames.set_slots(slots);
    Ok(compiled)
}

fn addr_info(classes: u64, network: u32) -> AddrInfo {
    AddrInfo {
        classes,
        network,
        _pad: 0,
    }
}

/// Run-time settings from the spec; the loader sets the mode and the reply tracking.
fn config(policy: &Policy, unset_roles: u64, count_mask: u64) -> Config {
    let t = &policy.options.timeouts;
    let ns = |seconds: u64| seconds * 1_000_000_000;
    Config {
        unset_roles,
        count_mask,
        mode: emis_common::MODE_ENFORCE,
        replies: emis_common::REPLIES_STATEFUL,
        icmp_echo: policy.options.icmp_echo as u32,
        _pad: 0,
        // In the order of the FLOW_* states.
        flow_timeouts_ns: [
            ns(t.tcp_syn),
            ns(t.tcp_established),
            ns(t.tcp_closing),
            ns(t.udp),
        ],
        fragment_timeout_ns: ns(t.fragment),
        // The daemon turns events on while it has clients for them.
        events: 0,
        event_rate: emis_common::DEFAULT_EVENT_RATE,
        sample_allowed: 0,
        trace: 0,
    }
}

/// Folds every enclosing prefix's classes into each prefix, so the longest match alone
/// answers for all of them. Addresses inside an enforce-scope network never hold a role.
fn flatten<N: Copy + Eq>(
    mut entries: Vec<(N, AddrInfo)>,
    sort_key: impl Fn(&N) -> (u128, u8),
    contains: impl Fn(&N, &N) -> bool,
) -> Vec<(N, AddrInfo)> {
    entries.sort_by_key(|(net, _)| sort_key(net));
    let mut merged: Vec<(N, AddrInfo)> = Vec::with_capacity(entries.len());
    for (net, info) in entries {
        match merged.last_mut() {
            Some((last, last_info)) if *last == net => {
                last_info.classes |= info.classes;
                last_info.network = last_info.network.min(info.network);
            }
            _ => merged.push((net, info)),
        }
    }
    // Sorted by address then length, a prefix's enclosing prefixes are on the stack.
    let mut stack: Vec<(N, AddrInfo)> = Vec::new();
    let mut out = Vec::with_capacity(merged.len());
    for (net, info) in merged {
        while stack
            .last()
            .is_some_and(|(outer, _)| !contains(outer, &net))
        {
            stack.pop();
        }
        let mut folded = info;
        if let Some((_, outer)) = stack.last() {
            folded.classes |= outer.classes;
            if folded.network == NO_NETWORK {
                folded.network = outer.network;
            }
        }
        stack.push((net, folded));
        let mut value = folded;
        if value.network != NO_NETWORK {
            value.classes &= !emis_common::ALL_ROLE_BITS;
        }
        out.push((net, value));
    }
    out
}

/// Per (protocol, port), the rules listing it in spec order. A rule whose sources and
/// destinations are covered by an earlier rule's on that port can never be the first
/// match there, so it is left out. The set's `hostnames` holds the hostname-group bits of
/// every rule listing the port, left out or not: a learned address may still pick it.
fn port_sets(
    policy: &Policy,
    limits: &Limits,
    hostname_bits: &[u32],
) -> Result<BTreeMap<PortKey, RuleSet>, CapacityError> {
    let mut sets: BTreeMap<PortKey, RuleSet> = BTreeMap::new();
    for (id, rule) in policy.rules.iter().enumerate() {
        let entry = RuleEntry {
            src: endpoint_mask(&rule.from),
            dst: endpoint_mask(&rule.to),
            rule: id as u32,
            _pad: 0,
        };
        for range in &rule.ports {
            for port in range.first..=range.last {
                let key = PortKey::new(rule.protocol.number(), port);
                let set = sets.entry(key).or_default();
                set.hostnames |= hostname_bits[id];
                let existing = &set.entries[..set.len as usize];
                if existing
                    .iter()
                    .any(|e| e.src & entry.src == entry.src && e.dst & entry.dst == entry.dst)
                {
                    continue;
                }
                if set.len as usize == limits.candidates {
                    let mut rules: Vec<&str> = existing
                        .iter()
                        .map(|e| policy.rules[e.rule as usize].slug.as_str())
                        .collect();
                    rules.push(&rule.slug);
                    return Err(CapacityError::Candidates {
                        proto: rule.protocol.name(),
                        port,
                        rules: rules.join(", "),
                        max: limits.candidates,
                    });
                }
                set.entries[set.len as usize] = entry;
                set.len += 1;
            }
        }
        limits.check_port_entries(sets.len())?;
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Direction, Network, PortRange, Protocol, Role, Rule};
    use emis_common::{MAX_CANDIDATES, MAX_HOSTNAME_GROUPS};

    /// What the kernel learns of `addr` from the compiled tries: the longest match in the
    /// enforce/role trie, with the longest count-scope match's classes added. The userspace
    /// twin of the kernel's lookups.
    fn lookup(compiled: &Compiled, addr: std::net::IpAddr) -> Option<AddrInfo> {
        fn longest<N: Copy, V: Copy>(
            entries: &[(N, V)],
            contains: impl Fn(&N) -> bool,
            len: impl Fn(&N) -> u8,
        ) -> Option<V> {
            entries
                .iter()
                .filter(|(n, _)| contains(n))
                .max_by_key(|(n, _)| len(n))
                .map(|(_, v)| *v)
        }
        let (core, count) = match addr {
            std::net::IpAddr::V4(a) => (
                longest(&compiled.v4, |n| n.contains(&a), |n| n.prefix_len()),
                longest(
                    &compiled.count_v4.iter().collect::<Vec<_>>(),
                    |n| n.contains(&a),
                    |n| n.prefix_len(),
                ),
            ),
            std::net::IpAddr::V6(a) => (
                longest(&compiled.v6, |n| n.contains(&a), |n| n.prefix_len()),
                longest(
                    &compiled.count_v6.iter().collect::<Vec<_>>(),
                    |n| n.contains(&a),
                    |n| n.prefix_len(),
                ),
            ),
        };
        match (core, count) {
            (None, None) => None,
            (core, count) => {
                let mut info = core.unwrap_or(AddrInfo {
                    classes: 0,
                    network: NO_NETWORK,
                    _pad: 0,
                });
                info.classes |= count.unwrap_or(0);
                Some(info)
            }
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn policy(roles: [Option<Vec<IpNet>>; 4], rules: Vec<Rule>) -> Policy {
        Policy {
            networks: vec![
                Network {
                    name: "n3".into(),
                    scope: Scope::Enforce,
                    description: String::new(),
                    prefixes: vec![net("10.207.112.0/22"), net("10.207.116.0/22")],
                },
                Network {
                    name: "aws".into(),
                    scope: Scope::Count,
                    description: String::new(),
                    prefixes: vec![net("3.0.0.0/8"), net("3.5.0.0/16"), net("2001:db8::/32")],
                },
            ],
            roles,
            rules,
            sha256: String::new(),
            warnings: vec![],
            shadowed: vec![],
            options: Default::default(),
        }
    }

    fn rule(
        slug: &str,
        proto: Protocol,
        ports: &[(u16, u16)],
        from: Endpoint,
        to: Endpoint,
    ) -> Rule {
        Rule {
            slug: slug.into(),
            description: String::new(),
            hostnames: vec![],
            protocol: proto,
            ports: ports
                .iter()
                .map(|&(first, last)| PortRange { first, last })
                .collect(),
            direction: Direction::Outbound,
            from: vec![from],
            to: vec![to],
            note: None,
        }
    }

    #[test]
    fn nested_prefixes_inherit_classes_and_roles_stop_at_enforce_networks() {
        let p = policy(
            [
                Some(vec![net("10.0.0.0/8"), net("3.5.1.0/24")]),
                None,
                None,
                None,
            ],
            vec![],
        );
        let c = compile(&p).unwrap();
        let at = |s: &str| lookup(&c, s.parse().unwrap()).unwrap();
        let lan = role_bit(Role::LAN.0);
        assert_eq!(
            at("10.1.2.3"),
            AddrInfo {
                classes: lan,
                network: NO_NETWORK,
                _pad: 0
            }
        );
        assert_eq!(
            at("10.207.116.9"),
            AddrInfo {
                classes: network_bit(0),
                network: 0,
                _pad: 0
            }
        );
        assert_eq!(at("3.5.1.1").classes, network_bit(1) | lan);
        assert_eq!(at("3.5.2.1").classes, network_bit(1));
        assert_eq!(at("3.9.9.9").classes, network_bit(1));
        assert_eq!(at("2001:db8::1").classes, network_bit(1));
        assert!(lookup(&c, "8.8.8.8".parse().unwrap()).is_none());
        let unset = role_bit(1) | role_bit(2) | role_bit(3);
        assert_eq!(c.config.unset_roles, unset);
    }

    #[test]
    fn covered_rules_are_left_out_of_a_port_and_order_is_kept() {
        let lan = Endpoint::Role(Role::LAN);
        let p = policy(
            [None, None, None, None],
            vec![
                rule("a", Protocol::Tcp, &[(443, 443)], lan, Endpoint::Network(0)),
                rule("b", Protocol::Tcp, &[(443, 444)], lan, Endpoint::Network(0)),
                rule("c", Protocol::Tcp, &[(443, 443)], lan, Endpoint::Network(1)),
            ],
        );
        let c = compile(&p).unwrap();
        let s443 = c.ports[&PortKey::new(6, 443)];
        assert_eq!(s443.len, 2);
        assert_eq!((s443.entries[0].rule, s443.entries[1].rule), (0, 2));
        let s444 = c.ports[&PortKey::new(6, 444)];
        assert_eq!((s444.len, s444.entries[0].rule), (1, 1));
    }

    #[test]
    fn slots_replace_rule_ids_in_the_port_sets() {
        let lan = Endpoint::Role(Role::LAN);
        let p = policy(
            [None, None, None, None],
            vec![
                rule("a", Protocol::Tcp, &[(443, 443)], lan, Endpoint::Network(0)),
                rule("b", Protocol::Tcp, &[(443, 443)], lan, Endpoint::Network(1)),
            ],
        );
        let c = compile_with_slots(&p, &[7, 3]).unwrap();
        let s443 = c.ports[&PortKey::new(6, 443)];
        assert_eq!((s443.entries[0].rule, s443.entries[1].rule), (7, 3));
        assert_eq!(compile(&p).unwrap().v4, c.v4);
    }

    #[test]
    fn capacity_limits_are_errors() {
        let rules = (0..=MAX_CANDIDATES as u32)
            .map(|i| {
                rule(
                    &format!("r{i}"),
                    Protocol::Udp,
                    &[(53, 53)],
                    Endpoint::Role(Role::LAN),
                    Endpoint::Network(i % 2),
                )
            })
            .collect::<Vec<_>>();
        // Only two distinct pairs: fits.
        assert!(compile(&policy([None, None, None, None], rules)).is_ok());
        let mut p = policy([None, None, None, None], vec![]);
        for i in 0..=MAX_CANDIDATES as u32 {
            p.networks.push(Network {
                name: format!("x{i}"),
                scope: Scope::Count,
                description: String::new(),
                prefixes: vec![],
            });
            p.rules.push(rule(
                &format!("r{i}"),
                Protocol::Udp,
                &[(53, 53)],
                Endpoint::Role(Role::LAN),
                Endpoint::Network(2 + i),
            ));
        }
        let err = compile(&p).unwrap_err().to_string();
        assert!(err.contains("udp/53") && err.contains("r8"), "{err}");
        let wide = policy(
            [None, None, None, None],
            vec![rule(
                "wide",
                Protocol::Tcp,
                &[(1, 65535)],
                Endpoint::Role(Role::LAN),
                Endpoint::Network(0),
            )],
        );
        assert!(matches!(
            compile(&wide),
            Err(CapacityError::PortEntries { .. })
        ));
    }

    #[test]
    fn hostname_groups_share_a_bit_and_have_a_limit() {
        let lan = Endpoint::Role(Role::LAN);
        let named = |slug: &str, port: u16, hostnames: &[&str]| {
            let mut r = rule(
                slug,
                Protocol::Tcp,
                &[(port, port)],
                lan,
                Endpoint::Network(0),
            );
            r.hostnames = hostnames.iter().map(|h| h.to_string()).collect();
            r
        };
        let p = policy(
            [None, None, None, None],
            vec![
                named("a", 443, &["a.example.com"]),
                named("b", 443, &["A.example.com."]),
                named("c", 8443, &["a.example.com"]),
                named("d", 443, &["*.example.com"]),
            ],
        );
        let c = compile(&p).unwrap();
        let bits = &c.hostnames.rule_bits;
        assert_eq!(
            bits[0], bits[1],
            "same names, protocol and ports: one group"
        );
        assert_ne!(bits[0], bits[2], "other ports: another group");
        assert_eq!(c.ports[&PortKey::new(6, 443)].hostnames, bits[0] | bits[3]);
        assert_eq!(c.ports[&PortKey::new(6, 8443)].hostnames, bits[2]);
        let learned = c
            .hostnames
            .learned(c.hostnames.groups_of("a.example.com"))
            .unwrap();
        // b is covered by a (same group, same classes); c and d follow in spec order.
        let rules: Vec<u32> = learned.value.entries[..learned.value.len as usize]
            .iter()
            .map(|e| e.rule)
            .collect();
        assert_eq!(rules, vec![0, 2, 3]);
        let many: Vec<Rule> = (0..=MAX_HOSTNAME_GROUPS)
            .map(|i| named(&format!("r{i}"), 443, &[&format!("h{i}.example.com")]))
            .collect();
        let err = compile(&policy([None, None, None, None], many)).unwrap_err();
        assert!(
            matches!(err, CapacityError::HostnameGroups { count: 33, max: 32 }),
            "{err}"
        );
    }
}
