//! `emis export nft`: the policy as an nftables ruleset, for hosts that cannot run XDP and
//! as the benchmark's nftables contender.
//!
//! The ruleset decides what the XDP program decides with stateless replies (see
//! docs/DECISIONS.md), in the same order:
//!
//! 1. not IP: accept (`netdev` family only; an `inet` chain sees only IP);
//! 2. a later fragment (IPv4 offset, IPv6 fragment header with an offset), ICMP/ICMPv6
//!    (echo passes when the spec's `[icmp] echo` is on) and any protocol other than TCP
//!    and UDP: denied when either address is in an enforce-scope network, else accepted;
//! 3. forward match: a verdict map from (protocol, destination port) jumps to a chain
//!    holding, in spec order, the rules that list the port; a rule there matches the
//!    source in its `from` and the destination in its `to`;
//! 4. reply match: the same from the *source* port, addresses reversed, and for TCP not a
//!    bare SYN;
//! 5. in scope: denied; otherwise accepted as out of scope.
//!
//! Each network and each site role is a named interval set per address family. A role
//! set holds the role's prefixes (or every address, when the role is unset) minus the
//! enforce-scope networks, as the XDP program's classes do. Every decision increments one
//! named counter: `rule_<slug>_forward`/`_reply`, `<action>_<reason>_<network>` (action
//! `drop` or `audit`), `passed_out_of_scope`, `passed_non_ip`, `passed_unparsed`,
//! `passed_icmp_echo`. The
//! network of a denied packet is its destination's if that is in an enforce-scope
//! network, else its source's; objref maps from the enforce-scope prefixes to the
//! counters pick it.
//!
//! What nftables cannot say the same way (the verdict differs only for the first two):
//! - a later fragment in scope is denied; emis passes it when it allowed the first
//!   fragment (tracking that needs state this hook does not have);
//! - an ICMP error about an allowed flow in scope is denied; emis allows it (`related`);
//! - a malformed header in scope is denied, but only a TCP data offset below 5 or a UDP
//!   length below 8 is counted as `malformed`; an inconsistent IP header counts as
//!   `protocol`. A TCP data offset or UDP length beyond the payload is not checked, so
//!   such a packet can match a rule that emis would not apply to it;
//! - in the netdev family the kernel has removed the outer VLAN tag before the hook, so a
//!   frame with two tags is not IP to the ruleset (emis judges the inner packet);
//! - IPv6 extension headers are walked without the XDP program's bound of six.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use emis_common::{DenyReason, NO_NETWORK};
use ipnet::IpNet;

use crate::policy::{Endpoint, Mode, Policy, Protocol, Role, Rule, Scope};

/// Where the ruleset hooks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `table inet`, a chain on the prerouting hook (every interface, IP only), at
    /// priority -450: before connection tracking and defragmentation.
    Inet,
    /// `table netdev`, a chain on the ingress hook of the `--iface` devices: every frame,
    /// as early as nftables can see it, as XDP does.
    Netdev,
}

/// What `emis export nft` takes besides the policy.
#[derive(Clone, Debug)]
pub struct NftOptions {
    /// enforce drops what the policy denies; audit accepts it and counts it as would-deny.
    pub mode: Mode,
    /// Name of the nftables table (replaced as a whole when the ruleset is loaded).
    pub table: String,
    /// inet: prerouting on every interface; netdev: ingress on the `ifaces` devices.
    pub family: Family,
    /// Devices for the netdev ingress chain; required with [`Family::Netdev`].
    pub ifaces: Vec<String>,
}

impl Default for NftOptions {
    fn default() -> Self {
        NftOptions {
            mode: Mode::Enforce,
            table: "emis".into(),
            family: Family::Inet,
            ifaces: Vec::new(),
        }
    }
}

/// Why a ruleset cannot be written; each says which option to change.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("invalid table name {0:?}: use letters, digits, '_' and '-', starting with a letter")]
    TableName(String),
    #[error("--family netdev needs at least one --iface: the ingress hook is per device")]
    NetdevWithoutIface,
    #[error("--iface is for --family netdev; an inet prerouting chain sees every interface")]
    IfaceWithInet,
    #[error("writing the ruleset: {0}")]
    Format(#[from] std::fmt::Error),
}

type Result<T, E = NftError> = std::result::Result<T, E>;

/// The deny reasons of the ruleset; `malformed` covers only the TCP and UDP header
/// checks nftables can make (data offset, UDP length below 8).
const REASONS: [DenyReason; 5] = [
    DenyReason::NoRule,
    DenyReason::Malformed,
    DenyReason::Fragment,
    DenyReason::Icmp,
    DenyReason::Protocol,
];

/// Name of the counter of a rule's forward or reply packets.
pub fn rule_counter(rule: &Rule, reply: bool) -> String {
    let path = if reply { "reply" } else { "forward" };
    format!("rule_{}_{path}", rule.slug)
}

/// Name of the counter of packets denied for `reason` in `network`.
pub fn deny_counter(mode: Mode, reason: DenyReason, network: &str) -> String {
    let action = match mode {
        Mode::Enforce => "drop",
        Mode::Audit => "audit",
    };
    format!("{action}_{}_{network}", reason.name())
}

pub const COUNTER_OUT_OF_SCOPE: &str = "passed_out_of_scope";
pub const COUNTER_NON_IP: &str = "passed_non_ip";
pub const COUNTER_UNPARSED: &str = "passed_unparsed";
pub const COUNTER_ICMP_ECHO: &str = "passed_icmp_echo";

/// An address family, as nftables spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Af {
    V4,
    V6,
}

impl Af {
    const ALL: [Af; 2] = [Af::V4, Af::V6];
    fn bits(self) -> u32 {
        match self {
            Af::V4 => 32,
            Af::V6 => 128,
        }
    }
    fn max(self) -> u128 {
        match self {
            Af::V4 => u32::MAX as u128,
            Af::V6 => u128::MAX,
        }
    }
    /// Suffix of set and chain names.
    fn tag(self) -> &'static str {
        match self {
            Af::V4 => "v4",
            Af::V6 => "v6",
        }
    }
    /// The address match keyword (`ip saddr`, `ip6 saddr`).
    fn ip(self) -> &'static str {
        match self {
            Af::V4 => "ip",
            Af::V6 => "ip6",
        }
    }
    fn addr_type(self) -> &'static str {
        match self {
            Af::V4 => "ipv4_addr",
            Af::V6 => "ipv6_addr",
        }
    }
    fn format(self, value: u128) -> String {
        match self {
            Af::V4 => Ipv4Addr::from(value as u32).to_string(),
            Af::V6 => Ipv6Addr::from(value).to_string(),
        }
    }
}

/// Inclusive address ranges, sorted and disjoint.
type Ranges = Vec<(u128, u128)>;

fn range_of(net: &IpNet) -> (Af, u128, u128) {
    match net.trunc() {
        IpNet::V4(n) => (
            Af::V4,
            u32::from(n.network()) as u128,
            u32::from(n.broadcast()) as u128,
        ),
        IpNet::V6(n) => (Af::V6, u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// The ranges of `nets` in family `af`, merged.
fn ranges(nets: &[IpNet], af: Af) -> Ranges {
    let mut out: Ranges = nets
        .iter()
        .map(range_of)
        .filter(|(a, _, _)| *a == af)
        .map(|(_, lo, hi)| (lo, hi))
        .collect();
    merge(&mut out);
    out
}

fn merge(ranges: &mut Ranges) {
    ranges.sort_unstable();
    let mut merged: Ranges = Vec::with_capacity(ranges.len());
    for &(lo, hi) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    *ranges = merged;
}

/// `a` without the addresses in `b` (both sorted and disjoint).
fn subtract(a: &Ranges, b: &Ranges) -> Ranges {
    let mut out = Vec::new();
    for &(lo, hi) in a {
        let mut start = lo;
        let mut done = false;
        for &(blo, bhi) in b {
            if bhi < start || blo > hi {
                continue;
            }
            if blo > start {
                out.push((start, blo - 1));
            }
            if bhi >= hi {
                done = true;
                break;
            }
            start = bhi + 1;
        }
        if !done {
            out.push((start, hi));
        }
    }
    out
}

/// A set element: `addr/len` when the range is one prefix, `first-last` otherwise.
fn element(af: Af, (lo, hi): (u128, u128)) -> String {
    let size = hi.wrapping_sub(lo).wrapping_add(1);
    if size == 0 && lo == 0 && hi == af.max() {
        // The whole space (only u128 wraps to 0).
        return format!("{}/0", af.format(0));
    }
    if size.is_power_of_two() && lo % size == 0 {
        let len = af.bits() - size.trailing_zeros();
        if len == af.bits() {
            return af.format(lo);
        }
        return format!("{}/{len}", af.format(lo));
    }
    if af == Af::V4 && lo == 0 && hi == af.max() {
        return "0.0.0.0/0".into();
    }
    format!("{}-{}", af.format(lo), af.format(hi))
}

/// A counter name where nftables wants a string (`counter name "..."`, map data).
fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

/// The key of the enforce-scope set in [`Sets`]: not a name a spec can give.
const ENFORCE: &str = " enforce";

struct Sets {
    /// (endpoint, family) -> set name, for endpoints with at least one address in the family.
    names: BTreeMap<(String, &'static str), String>,
}

impl Sets {
    fn get(&self, endpoint: &str, af: Af) -> Option<&str> {
        self.names
            .get(&(endpoint.to_string(), af.tag()))
            .map(String::as_str)
    }
}

/// The ruleset, as `nft -f` reads it.
pub fn ruleset(policy: &Policy, options: &NftOptions) -> Result<String> {
    let table = &options.table;
    if table.is_empty()
        || !table
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        || !table.starts_with(|c: char| c.is_ascii_alphabetic())
    {
        return Err(NftError::TableName(table.clone()));
    }
    let family = match options.family {
        Family::Inet => "inet",
        Family::Netdev => "netdev",
    };
    if options.family == Family::Netdev && options.ifaces.is_empty() {
        return Err(NftError::NetdevWithoutIface);
    }
    if options.family == Family::Inet && !options.ifaces.is_empty() {
        return Err(NftError::IfaceWithInet);
    }
    let mut out = String::new();
    let w = &mut out;
    let shadowed: std::collections::HashSet<u32> = policy.shadowed.iter().map(|s| s.0).collect();
    let enforce: Vec<IpNet> = policy
        .networks
        .iter()
        .filter(|n| n.scope == Scope::Enforce)
        .flat_map(|n| n.prefixes.iter().copied())
        .collect();

    writeln!(w, "#!/usr/sbin/nft -f")?;
    writeln!(
        w,
        "# Generated by `emis export nft` from the policy with sha256 {}.",
        policy.sha256
    )?;
    writeln!(
        w,
        "# Mode {}; replies are recognised statelessly (docs/DECISIONS.md). Load with `nft -f FILE`;",
        options.mode.name()
    )?;
    writeln!(
        w,
        "# it replaces table {family} {table} as a whole. Counters: `nft list counters table {family} {table}`."
    )?;
    writeln!(w, "table {family} {table}")?;
    writeln!(w, "delete table {family} {table}")?;
    writeln!(w, "table {family} {table} {{")?;

    // Counters.
    for rule in &policy.rules {
        writeln!(w, "\tcounter {} {{ }}", rule_counter(rule, false))?;
        writeln!(w, "\tcounter {} {{ }}", rule_counter(rule, true))?;
    }
    for network in policy.networks.iter().filter(|n| n.scope == Scope::Enforce) {
        for reason in REASONS {
            writeln!(
                w,
                "\tcounter {} {{ }}",
                deny_counter(options.mode, reason, &network.name)
            )?;
        }
    }
    writeln!(w, "\tcounter {} {{ }}", COUNTER_OUT_OF_SCOPE)?;
    writeln!(w, "\tcounter {} {{ }}", COUNTER_UNPARSED)?;
    if options.family == Family::Netdev {
        writeln!(w, "\tcounter {} {{ }}", COUNTER_NON_IP)?;
    }
    if policy.options.icmp_echo {
        writeln!(w, "\tcounter {} {{ }}", COUNTER_ICMP_ECHO)?;
    }

    // Sets: one per network and role and family.
    let mut sets = Sets {
        names: BTreeMap::new(),
    };
    for af in Af::ALL {
        let enforce_ranges = ranges(&enforce, af);
        let mut emit = |w: &mut String, kind: &str, name: &str, elements: &Ranges| -> Result<()> {
            if elements.is_empty() {
                return Ok(());
            }
            let set = format!("{kind}_{name}_{}", af.tag());
            writeln!(w, "\tset {set} {{")?;
            writeln!(w, "\t\ttype {}", af.addr_type())?;
            writeln!(w, "\t\tflags interval")?;
            write_elements(w, elements.iter().map(|&r| element(af, r)))?;
            writeln!(w, "\t}}")?;
            let key = if kind == "scope" {
                format!(" {name}")
            } else {
                name.to_string()
            };
            sets.names.insert((key, af.tag()), set);
            Ok(())
        };
        for network in &policy.networks {
            emit(w, "net", &network.name, &ranges(&network.prefixes, af))?;
        }
        if policy.options.icmp_echo {
            // The enforce scope, for permitted echo (counted apart only in scope).
            emit(w, "scope", "enforce", &enforce_ranges)?;
        }
        for role in Role::ALL {
            let base = match policy.role(role) {
                Some(prefixes) => ranges(prefixes, af),
                None => vec![(0, af.max())],
            };
            emit(w, "role", role.name(), &subtract(&base, &enforce_ranges))?;
        }
        // Deny counters by enforce-scope network, one objref map per reason.
        for reason in REASONS {
            writeln!(w, "\tmap deny_{}_{} {{", reason.name(), af.tag())?;
            writeln!(w, "\t\ttype {} : counter", af.addr_type())?;
            writeln!(w, "\t\tflags interval")?;
            let mut elements = Vec::new();
            for network in policy.networks.iter().filter(|n| n.scope == Scope::Enforce) {
                let counter = quoted(&deny_counter(options.mode, reason, &network.name));
                for r in ranges(&network.prefixes, af) {
                    elements.push(format!("{} : {counter}", element(af, r)));
                }
            }
            write_elements(w, elements.into_iter())?;
            writeln!(w, "\t}}")?;
        }
    }

    // Per-port dispatch: a chain per group of ports listed by the same rules, and a
    // verdict map from (protocol, port interval) to it, for each direction and family.
    let groups = port_groups(policy, &shadowed);
    for af in Af::ALL {
        for reply in [false, true] {
            let kind = if reply { "reply" } else { "forward" };
            let mut elements = Vec::new();
            for group in &groups {
                let lines: Vec<String> = group
                    .rules
                    .iter()
                    .flat_map(|&id| {
                        rule_lines(policy, &policy.rules[id as usize], af, reply, &sets)
                    })
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

    // The hook.
    writeln!(w)?;
    match options.family {
        Family::Inet => {
            writeln!(w, "\tchain prerouting {{")?;
            writeln!(
                w,
                "\t\ttype filter hook prerouting priority -450; policy accept;"
            )?;
            writeln!(w, "\t\tmeta nfproto ipv4 goto ipv4")?;
            writeln!(w, "\t\tmeta nfproto ipv6 goto ipv6")?;
        }
        Family::Netdev => {
            let devices: Vec<String> = options.ifaces.iter().map(|i| quoted(i)).collect();
            writeln!(w, "\tchain ingress {{")?;
            writeln!(
                w,
                "\t\ttype filter hook ingress devices = {{ {} }} priority -500; policy accept;",
                devices.join(", ")
            )?;
            writeln!(w, "\t\tmeta protocol ip goto ipv4")?;
            writeln!(w, "\t\tmeta protocol ip6 goto ipv6")?;
            writeln!(w, "\t\tcounter name {} accept", quoted(COUNTER_NON_IP))?;
        }
    }
    writeln!(w, "\t}}")?;

    let verdict = match options.mode {
        Mode::Enforce => "drop",
        Mode::Audit => "accept",
    };
    for af in Af::ALL {
        let ip = af.ip();
        let tag = af.tag();
        writeln!(w)?;
        writeln!(w, "\tchain ip{tag} {{")?;
        // Too short for both addresses: no scope can apply.
        let header = match af {
            Af::V4 => 20,
            Af::V6 => 40,
        };
        writeln!(
            w,
            "\t\tmeta length < {header} counter name {} accept",
            quoted(COUNTER_UNPARSED)
        )?;
        // A later fragment has no ports; a first fragment is judged on its L4 header.
        match af {
            Af::V4 => writeln!(w, "\t\tip frag-off & 0x1fff != 0 goto fragment_{tag}")?,
            Af::V6 => writeln!(w, "\t\tfrag frag-off != 0 goto fragment_{tag}")?,
        }
        let icmp = match af {
            Af::V4 => "icmp",
            Af::V6 => "ipv6-icmp",
        };
        if policy.options.icmp_echo {
            // Echo request and reply pass when the spec permits ping; other ICMP is denied in scope.
            let types = match af {
                Af::V4 => "meta l4proto icmp icmp type { echo-request, echo-reply }",
                Af::V6 => "meta l4proto ipv6-icmp icmpv6 type { echo-request, echo-reply }",
            };
            writeln!(w, "\t\t{types} goto icmp_echo_{tag}")?;
        }
        writeln!(w, "\t\tmeta l4proto {icmp} goto icmp_{tag}")?;
        writeln!(w, "\t\tmeta l4proto != {{ tcp, udp }} goto protocol_{tag}")?;
        writeln!(w, "\t\ttcp doff < 5 goto malformed_{tag}")?;
        writeln!(w, "\t\tudp length < 8 goto malformed_{tag}")?;
        // One lookup finds the rules listing the destination port (forward), one the
        // source port (reply); their chains return when no rule matches.
        writeln!(w, "\t\tmeta l4proto . th dport vmap @forward_ports_{tag}")?;
        writeln!(w, "\t\tmeta l4proto . th sport vmap @reply_ports_{tag}")?;
        writeln!(w, "\t\tgoto no_rule_{tag}")?;
        writeln!(w, "\t}}")?;
        if policy.options.icmp_echo {
            writeln!(w, "\tchain icmp_echo_{tag} {{")?;
            if let Some(scope) = sets.get(ENFORCE, af) {
                for field in ["daddr", "saddr"] {
                    writeln!(
                        w,
                        "\t\t{ip} {field} @{scope} counter name {} accept",
                        quoted(COUNTER_ICMP_ECHO)
                    )?;
                }
            }
            writeln!(
                w,
                "\t\tcounter name {} accept",
                quoted(COUNTER_OUT_OF_SCOPE)
            )?;
            writeln!(w, "\t}}")?;
        }
        for reason in REASONS {
            let name = reason.name();
            writeln!(w, "\tchain {name}_{tag} {{")?;
            let map = format!("@deny_{name}_{tag}");
            writeln!(w, "\t\tcounter name {ip} daddr map {map} {verdict}")?;
            writeln!(w, "\t\tcounter name {ip} saddr map {map} {verdict}")?;
            writeln!(
                w,
                "\t\tcounter name {} accept",
                quoted(COUNTER_OUT_OF_SCOPE)
            )?;
            writeln!(w, "\t}}")?;
        }
    }
    writeln!(w, "}}")?;
    Ok(out)
}

fn write_elements(w: &mut String, elements: impl Iterator<Item = String>) -> Result<()> {
    let elements: Vec<String> = elements.collect();
    if elements.is_empty() {
        return Ok(());
    }
    writeln!(w, "\t\telements = {{")?;
    for chunk in elements.chunks(4) {
        writeln!(w, "\t\t\t{},", chunk.join(", "))?;
    }
    writeln!(w, "\t\t}}")?;
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
        "tcp flags & (syn | ack) != syn "
    } else {
        ""
    };
    let counter = quoted(&rule_counter(rule, reply));
    let ip = af.ip();
    let mut lines = Vec::new();
    for from in &rule.from {
        let Some(from_set) = sets.get(endpoint_name(policy, *from), af) else {
            continue;
        };
        for to in &rule.to {
            let Some(to_set) = sets.get(endpoint_name(policy, *to), af) else {
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
fn port_groups(policy: &Policy, shadowed: &std::collections::HashSet<u32>) -> Vec<PortGroup> {
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

fn endpoint_name(policy: &Policy, endpoint: Endpoint) -> &str {
    policy.endpoint_name(endpoint)
}

/// The counter the exported ruleset increments for a packet the XDP program decided as
/// `decision`, or `None` when the ruleset cannot tell that reason apart (malformed
/// headers); used by the tests that hold the two to the same verdicts.
pub fn counter_for(policy: &Policy, mode: Mode, decision: emis_common::Decision) -> Option<String> {
    use emis_common::{Decision, PassReason, Path};
    match decision {
        Decision::Allow { rule, path } => match path {
            Path::Forward | Path::Reply => policy
                .rules
                .get(rule as usize)
                .map(|r| rule_counter(r, path == Path::Reply)),
            _ => None,
        },
        Decision::Deny { reason, network } => {
            if reason == DenyReason::Malformed || network == NO_NETWORK {
                return None;
            }
            let name = &policy.networks.get(network as usize)?.name;
            Some(deny_counter(mode, reason, name))
        }
        Decision::Pass { reason } => match reason {
            PassReason::OutOfScope => Some(COUNTER_OUT_OF_SCOPE.into()),
            PassReason::NonIp => Some(COUNTER_NON_IP.into()),
            PassReason::IcmpEcho => Some(COUNTER_ICMP_ECHO.into()),
            PassReason::Unparsed => Some(COUNTER_UNPARSED.into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{load_policy, SiteOptions, Source};

    fn r(lo: u128, hi: u128) -> (u128, u128) {
        (lo, hi)
    }

    #[test]
    fn range_arithmetic() {
        let mut a = vec![r(10, 20), r(5, 9), r(30, 40), r(35, 50)];
        merge(&mut a);
        assert_eq!(a, vec![r(5, 20), r(30, 50)]);
        assert_eq!(
            subtract(&a, &vec![r(0, 6), r(15, 31), r(45, 45)]),
            vec![r(7, 14), r(32, 44), r(46, 50)]
        );
        assert_eq!(subtract(&vec![r(0, 10)], &vec![r(0, 10)]), vec![]);
        assert_eq!(subtract(&vec![r(0, 10)], &vec![]), vec![r(0, 10)]);
    }

    #[test]
    fn elements_are_prefixes_where_they_can_be() {
        let net = |s: &str| {
            let (_, lo, hi) = range_of(&s.parse().unwrap());
            (lo, hi)
        };
        assert_eq!(element(Af::V4, net("10.207.112.0/22")), "10.207.112.0/22");
        assert_eq!(element(Af::V4, net("10.0.0.1/32")), "10.0.0.1");
        assert_eq!(element(Af::V4, (0, u32::MAX as u128)), "0.0.0.0/0");
        assert_eq!(element(Af::V6, (0, u128::MAX)), "::/0");
        assert_eq!(element(Af::V6, net("2001:db8::/32")), "2001:db8::/32");
        assert_eq!(element(Af::V4, (1, 2)), "0.0.0.1-0.0.0.2");
    }

    fn embedded(site_nets: &[&str]) -> Policy {
        load_policy(
            &Source::default_spec(),
            &SiteOptions {
                site_nets: site_nets.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn embedded_spec_ruleset_shape() {
        let policy = embedded(&["lan=192.168.10.0/24"]);
        let text = ruleset(&policy, &NftOptions::default()).unwrap();
        assert!(text.contains("table inet emis {"), "{text}");
        assert!(text.contains("counter rule_client-spine-messaging_forward {"));
        assert!(text.contains("counter drop_no_rule_emis-n3 {"));
        // lan is set: its set is the site's prefix; clinical-server is unset: every address
        // outside the enforce-scope networks.
        assert!(text.contains("set role_lan_v4 {"));
        assert!(text.contains("192.168.10.0/24"));
        let unset = text.split("set role_clinical-server_v4 {").nth(1).unwrap();
        assert!(unset.contains("0.0.0.0-10.207.111.255"), "{unset}");
        assert!(!unset.split('}').next().unwrap().contains("10.207.112.0/22"));
        // Shadowed rules keep their counters and get no nft rule.
        assert!(text.contains("counter rule_emis-x-openapi_forward {"));
        assert!(!text.contains("counter name \"rule_emis-x-openapi_forward\""));
        // The aws network is empty without ip-ranges.json: no set, no rule naming it.
        assert!(!text.contains("net_aws_v4"));
        let audit = ruleset(
            &policy,
            &NftOptions {
                mode: Mode::Audit,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(audit.contains("counter audit_no_rule_emis-n3 {"));
        assert!(!audit.contains(" drop\n"));
    }

    #[test]
    fn option_errors() {
        let policy = embedded(&[]);
        let netdev = NftOptions {
            family: Family::Netdev,
            ..Default::default()
        };
        assert!(ruleset(&policy, &netdev)
            .unwrap_err()
            .to_string()
            .contains("--iface"));
        let bad = NftOptions {
            table: "a b".into(),
            ..Default::default()
        };
        assert!(ruleset(&policy, &bad).is_err());
    }

    /// Runs `nft -c -f -` (check only: nothing is loaded) on the ruleset. The tests run as
    /// root with nftables installed by `cargo xtask setup`; a missing `nft` is a failure.
    fn nft_check(text: &str) {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = match Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot run `nft` ({e}): install nftables (`cargo xtask setup` does) to test `emis export nft`"
            ),
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft -c rejected the ruleset: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn nft_accepts_the_exported_rulesets() {
        let site = [
            "lan=192.168.10.0/24",
            "lan=2001:db8:10::/48",
            "clinical-server=192.168.10.5/32",
            "local-sites=192.168.10.0/24",
            "local-sites=192.168.20.0/24",
        ];
        for policy in [embedded(&[]), embedded(&site)] {
            for mode in [Mode::Enforce, Mode::Audit] {
                nft_check(
                    &ruleset(
                        &policy,
                        &NftOptions {
                            mode,
                            ..Default::default()
                        },
                    )
                    .unwrap(),
                );
            }
            nft_check(
                &ruleset(
                    &policy,
                    &NftOptions {
                        family: Family::Netdev,
                        ifaces: vec!["lo".into()],
                        table: "emis_edge".into(),
                        ..Default::default()
                    },
                )
                .unwrap(),
            );
        }
    }
}
