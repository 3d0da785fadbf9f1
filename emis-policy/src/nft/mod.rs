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
//! 4. reply match: the same from the *source* port, addresses reversed, and for TCP only
//!    with ACK (as every real reply carries);
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
//!
//! # Modules
//! - this module: the options, the errors, the counter names and [`ruleset`], which checks
//!   the options and writes the sections in order;
//! - `sections`: header, counters, sets, deny maps, the hook chain and the per-family
//!   chains, one function each;
//! - `ports`: the per-port chains and the verdict maps that dispatch to them;
//! - `addr`: prefixes as address ranges, merged and subtracted, written as set elements.

mod addr;
mod ports;
mod sections;

use std::fmt::Write as _;

use emis_common::{Decision, DenyReason, PassReason, Path, NO_NETWORK};

use crate::policy::{Mode, Policy, Rule};
use addr::Af;
use sections::Sets;

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

impl Family {
    /// The nftables family keyword.
    fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Netdev => "netdev",
        }
    }
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

/// The counter the exported ruleset increments for a packet the XDP program decided as
/// `decision`, or `None` when the ruleset cannot tell that reason apart (malformed
/// headers, a deny outside any network). The tests hold the two enforcers to the same
/// verdicts with it.
pub fn decision_counter(policy: &Policy, mode: Mode, decision: Decision) -> Option<String> {
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
            // nft rules see IP only (the non-IP classes are the XDP program's counters).
            PassReason::NonIp
            | PassReason::Arp
            | PassReason::LinkLocal
            | PassReason::PppoeDiscovery
            | PassReason::PppControl
            | PassReason::Mpls
            | PassReason::VlanTooDeep => Some(COUNTER_NON_IP.into()),
            PassReason::IcmpEcho => Some(COUNTER_ICMP_ECHO.into()),
            PassReason::Unparsed => Some(COUNTER_UNPARSED.into()),
        },
    }
}

fn check_options(options: &NftOptions) -> Result<()> {
    let table = &options.table;
    if table.is_empty()
        || !table
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        || !table.starts_with(|c: char| c.is_ascii_alphabetic())
    {
        return Err(NftError::TableName(table.clone()));
    }
    if options.family == Family::Netdev && options.ifaces.is_empty() {
        return Err(NftError::NetdevWithoutIface);
    }
    if options.family == Family::Inet && !options.ifaces.is_empty() {
        return Err(NftError::IfaceWithInet);
    }
    Ok(())
}

/// The ruleset, as `nft -f` reads it.
pub fn ruleset(policy: &Policy, options: &NftOptions) -> Result<String> {
    check_options(options)?;
    let mut out = String::new();
    let w = &mut out;
    sections::header(w, policy, options)?;
    sections::counters(w, policy, options)?;
    let mut sets = Sets::default();
    for af in Af::ALL {
        sections::sets(w, policy, af, &mut sets)?;
        sections::deny_maps(w, policy, options.mode, af)?;
    }
    ports::dispatch(w, policy, &sets)?;
    sections::hook_chain(w, options)?;
    for af in Af::ALL {
        sections::family_chains(w, policy, options.mode, af, &sets)?;
    }
    writeln!(w, "}}")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{load_policy, SiteOptions, Source};

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
