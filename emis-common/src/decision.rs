//! The decision for one packet, why it was made, and where it is counted: the layout of
//! the counter array, and whether the packet is dropped or passed under a mode.
//!
//! Each decision owns exactly one counter, so the kernel program, the reference model and
//! the stats reader agree on what every slot means.

use crate::{
    config::MODE_AUDIT,
    maps::{MAX_NETWORKS, MAX_RULES, NO_NETWORK},
};

/// How an allowed packet matched its rule.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Path {
    /// The packet itself matches the rule.
    Forward = 0,
    /// The packet answers a flow the rule allowed.
    Reply = 1,
    /// An ICMP error about a flow the rule allowed (path MTU discovery, unreachable, ...).
    Related = 2,
}
pub const PATH_COUNT: u32 = 3;

impl Path {
    pub const ALL: [Path; PATH_COUNT as usize] = [Path::Forward, Path::Reply, Path::Related];
    pub const fn name(self) -> &'static str {
        match self {
            Path::Forward => "forward",
            Path::Reply => "reply",
            Path::Related => "related",
        }
    }
    pub const fn from_raw(raw: u32) -> Path {
        match raw {
            0 => Path::Forward,
            1 => Path::Reply,
            _ => Path::Related,
        }
    }
}

/// Why an in-scope packet was denied.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DenyReason {
    /// No rule allows it, forward or as a reply.
    NoRule = 0,
    /// A truncated or inconsistent header, or more IPv6 extension headers than the bound.
    Malformed = 1,
    /// A later fragment of an in-scope datagram whose first fragment was not allowed.
    Fragment = 2,
    /// ICMP or ICMPv6 that is neither an error about an allowed flow nor permitted echo.
    Icmp = 3,
    /// An IP protocol other than TCP, UDP and ICMP.
    Protocol = 4,
}
pub const DENY_REASON_COUNT: u32 = 5;
/// Slots reserved per action in the counter array, so new reasons keep the layout.
pub const DENY_REASON_SLOTS: u32 = 8;

impl DenyReason {
    pub const ALL: [DenyReason; DENY_REASON_COUNT as usize] = [
        DenyReason::NoRule,
        DenyReason::Malformed,
        DenyReason::Fragment,
        DenyReason::Icmp,
        DenyReason::Protocol,
    ];
    pub const fn name(self) -> &'static str {
        match self {
            DenyReason::NoRule => "no_rule",
            DenyReason::Malformed => "malformed",
            DenyReason::Fragment => "fragment",
            DenyReason::Icmp => "icmp",
            DenyReason::Protocol => "protocol",
        }
    }
}

/// What became of a denied packet: dropped in enforce mode, passed in audit mode.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Drop = 0,
    Audit = 1,
}
pub const ACTION_COUNT: u32 = 2;

impl Action {
    pub const ALL: [Action; ACTION_COUNT as usize] = [Action::Drop, Action::Audit];
    pub const fn name(self) -> &'static str {
        match self {
            Action::Drop => "drop",
            Action::Audit => "audit",
        }
    }
    /// What becomes of a denied packet under `mode`.
    #[inline(always)]
    pub const fn under(mode: u32) -> Action {
        if mode == MODE_AUDIT {
            Action::Audit
        } else {
            Action::Drop
        }
    }
}

/// Why a packet passed without a rule.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PassReason {
    /// Not IPv4 or IPv6, and of no class below: an EtherType the program does not know.
    NonIp = 0,
    /// Neither address is in an enforce-scope network.
    OutOfScope = 1,
    /// The frame is too short to read both addresses, so no scope can apply.
    Unparsed = 2,
    /// ICMP echo to or from an enforce-scope network, which the spec permits.
    IcmpEcho = 3,
    /// ARP or RARP.
    Arp = 4,
    /// A protocol of the link itself: LLDP, 802.1X, LACP, PTP, STP and other LLC frames.
    LinkLocal = 5,
    /// PPPoE discovery (PADI ... PADT), which sets a PPPoE session up or down.
    PppoeDiscovery = 6,
    /// A PPPoE session frame carrying PPP other than IP (LCP, IPCP, IPV6CP, ...).
    PppControl = 7,
    /// MPLS (unicast or multicast), whose payload the program does not read.
    Mpls = 8,
    /// A VLAN tag past the two the program reads, or a 0x9100/0x9200/0x9300 tag.
    VlanTooDeep = 9,
}
pub const PASS_REASON_COUNT: u32 = 10;
/// Slots reserved for pass reasons at the end of the counter array; growing it appends.
pub const PASS_REASON_SLOTS: u32 = 16;
const _: () = assert!(PASS_REASON_COUNT <= PASS_REASON_SLOTS);

impl PassReason {
    pub const ALL: [PassReason; PASS_REASON_COUNT as usize] = [
        PassReason::NonIp,
        PassReason::OutOfScope,
        PassReason::Unparsed,
        PassReason::IcmpEcho,
        PassReason::Arp,
        PassReason::LinkLocal,
        PassReason::PppoeDiscovery,
        PassReason::PppControl,
        PassReason::Mpls,
        PassReason::VlanTooDeep,
    ];
    pub const fn name(self) -> &'static str {
        match self {
            PassReason::NonIp => "non_ip",
            PassReason::OutOfScope => "out_of_scope",
            PassReason::Unparsed => "unparsed",
            PassReason::IcmpEcho => "icmp_echo",
            PassReason::Arp => "arp",
            PassReason::LinkLocal => "link_local",
            PassReason::PppoeDiscovery => "pppoe_discovery",
            PassReason::PppControl => "ppp_control",
            PassReason::Mpls => "mpls",
            PassReason::VlanTooDeep => "vlan_too_deep",
        }
    }
}

/// The decision for one packet; each one owns exactly one counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    Allow { rule: u32, path: Path },
    Deny { reason: DenyReason, network: u32 },
    Pass { reason: PassReason },
}

impl Decision {
    /// Whether the packet is dropped under `mode`: a denial in enforce mode.
    #[inline(always)]
    pub const fn drops(self, mode: u32) -> bool {
        matches!(self, Decision::Deny { .. }) && matches!(Action::under(mode), Action::Drop)
    }
}

/// A denial for `reason`, counted under `network`; outside the enforce scope
/// ([`NO_NETWORK`]) nothing is denied and the packet passes as out of scope.
#[inline(always)]
pub const fn deny_or_pass(reason: DenyReason, network: u32) -> Decision {
    if network != NO_NETWORK {
        Decision::Deny { reason, network }
    } else {
        Decision::Pass {
            reason: PassReason::OutOfScope,
        }
    }
}

/// The enforce-scope network a denial is counted under: the destination's, else the
/// source's. The source's is asked for only when needed, since the kernel looks it up.
#[inline(always)]
pub fn denial_network(dst: u32, src: impl FnOnce() -> u32) -> u32 {
    if dst != NO_NETWORK {
        dst
    } else {
        src()
    }
}

const RULE_BASE: u32 = 0;
const DENY_BASE: u32 = RULE_BASE + MAX_RULES * PATH_COUNT;
const PASS_BASE: u32 = DENY_BASE + ACTION_COUNT * DENY_REASON_SLOTS * MAX_NETWORKS;
/// Length of the counter array.
pub const STATS_LEN: u32 = PASS_BASE + PASS_REASON_SLOTS;

/// Index in the counter array of an allowed packet.
#[inline(always)]
pub const fn rule_index(rule: u32, path: Path) -> u32 {
    RULE_BASE + rule * PATH_COUNT + path as u32
}

/// Index in the counter array of a denied packet.
#[inline(always)]
pub const fn deny_index(action: Action, reason: DenyReason, network: u32) -> u32 {
    DENY_BASE + ((action as u32) * DENY_REASON_SLOTS + reason as u32) * MAX_NETWORKS + network
}

/// Index in the counter array of a packet passed without a rule.
#[inline(always)]
pub const fn pass_index(reason: PassReason) -> u32 {
    PASS_BASE + reason as u32
}

/// Index in the counter array of `decision`, taken under `mode`.
#[inline(always)]
pub const fn stats_index(decision: Decision, mode: u32) -> u32 {
    match decision {
        Decision::Allow { rule, path } => rule_index(rule, path),
        Decision::Deny { reason, network } => deny_index(Action::under(mode), reason, network),
        Decision::Pass { reason } => pass_index(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MODE_ENFORCE;

    #[test]
    fn denials_drop_only_in_enforce_mode() {
        let deny = deny_or_pass(DenyReason::NoRule, 3);
        assert_eq!(
            deny,
            Decision::Deny {
                reason: DenyReason::NoRule,
                network: 3
            }
        );
        assert!(deny.drops(MODE_ENFORCE) && !deny.drops(MODE_AUDIT));
        let out = deny_or_pass(DenyReason::NoRule, NO_NETWORK);
        assert_eq!(
            out,
            Decision::Pass {
                reason: PassReason::OutOfScope
            }
        );
        assert!(!out.drops(MODE_ENFORCE));
        let allow = Decision::Allow {
            rule: 0,
            path: Path::Forward,
        };
        assert!(!allow.drops(MODE_ENFORCE));
        assert_eq!(denial_network(2, || unreachable!()), 2);
        assert_eq!(denial_network(NO_NETWORK, || 5), 5);
    }

    #[test]
    fn every_decision_has_its_own_counter() {
        let mut seen = [false; STATS_LEN as usize];
        let mut mark = |i: u32| {
            assert!(!seen[i as usize], "slot {i} taken twice");
            seen[i as usize] = true;
        };
        for rule in 0..MAX_RULES {
            for path in Path::ALL {
                mark(stats_index(Decision::Allow { rule, path }, MODE_ENFORCE));
            }
        }
        for mode in [MODE_ENFORCE, MODE_AUDIT] {
            for reason in DenyReason::ALL {
                for network in 0..MAX_NETWORKS {
                    mark(stats_index(Decision::Deny { reason, network }, mode));
                }
            }
        }
        for reason in PassReason::ALL {
            mark(stats_index(Decision::Pass { reason }, MODE_ENFORCE));
        }
    }

    #[test]
    fn pass_reasons_are_in_slot_order_and_name_themselves_once() {
        for (i, reason) in PassReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "ALL is in slot order");
            assert!(PassReason::ALL[..i]
                .iter()
                .all(|r| r.name() != reason.name()));
        }
    }

    #[test]
    fn non_ip_ethertypes_fall_in_their_class() {
        use crate::wire::non_ip_reason;
        assert_eq!(non_ip_reason(0x0806), PassReason::Arp);
        assert_eq!(non_ip_reason(0x88cc), PassReason::LinkLocal);
        assert_eq!(
            non_ip_reason(0x0026),
            PassReason::LinkLocal,
            "802.3 length (STP)"
        );
        assert_eq!(non_ip_reason(0x8863), PassReason::PppoeDiscovery);
        assert_eq!(non_ip_reason(0x8847), PassReason::Mpls);
        assert_eq!(non_ip_reason(0x8848), PassReason::Mpls);
        assert_eq!(non_ip_reason(0x8100), PassReason::VlanTooDeep);
        assert_eq!(non_ip_reason(0x9100), PassReason::VlanTooDeep);
        assert_eq!(non_ip_reason(0x88b5), PassReason::NonIp);
    }
}
