//! Types shared by the emis XDP program and its loader: map keys and values,
//! verdict and reason codes, and the layout of the counter array.
//!
//! Everything here is `#[repr(C)]` plain data with explicit padding, so the
//! loader writes exactly the bytes the kernel program reads.
#![no_std]

/// Name of the map from IPv4 prefix to [`AddrInfo`].
pub const MAP_ADDR_V4: &str = "EMIS_ADDR_V4";
/// Name of the map from IPv6 prefix to [`AddrInfo`].
pub const MAP_ADDR_V6: &str = "EMIS_ADDR_V6";
/// Name of the map from IPv4 prefix to the classes of count-scope networks (`u64`). Kept
/// apart so Amazon-sized ranges never deepen the walk for traffic to the EMIS networks.
pub const MAP_COUNT_V4: &str = "EMIS_COUNT_V4";
/// Name of the map from IPv6 prefix to the classes of count-scope networks (`u64`).
pub const MAP_COUNT_V6: &str = "EMIS_COUNT_V6";
/// Name of the map from [`PortKey`] to [`RuleSet`].
pub const MAP_PORTS: &str = "EMIS_PORTS";
/// Name of the one-entry array holding [`Config`].
pub const MAP_CONFIG: &str = "EMIS_CONFIG";
/// Name of the per-CPU array of [`Counter`]s, laid out by [`stats_index`].
pub const MAP_STATS: &str = "EMIS_STATS";
/// Name of the LRU map from [`FlowKey`] to [`FlowValue`]: flows a rule allowed.
pub const MAP_FLOWS: &str = "EMIS_FLOWS";
/// Name of the LRU map from [`FragKey`] to [`FragValue`]: datagrams whose first fragment was allowed.
pub const MAP_FRAGS: &str = "EMIS_FRAGS";
/// Name of the per-CPU array of flow-table events, indexed by `FLOW_EVENT_*`.
pub const MAP_FLOW_EVENTS: &str = "EMIS_FLOW_EVENTS";
/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "emis";

/// Flow-table entries unless `emis run --flow-table-size` says otherwise.
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 131_072;
/// Datagrams whose later fragments are awaited at once.
pub const FRAG_TABLE_SIZE: u32 = 16_384;

/// Networks a spec may name; network `i` owns class bit `i`.
pub const MAX_NETWORKS: u32 = 32;
/// Rules a spec may hold; rule ids index the counter array.
pub const MAX_RULES: u32 = 256;
/// Distinct (source, destination) pairs one protocol and port may carry.
pub const MAX_CANDIDATES: usize = 8;
/// Entries of each address trie. The tries are not preallocated, so the cap costs nothing until used.
pub const MAX_PREFIXES: u32 = 2 * 1024 * 1024;
/// Entries of the (protocol, port) map.
pub const MAX_PORT_ENTRIES: u32 = 16 * 1024;
/// IPv6 extension headers walked before an in-scope packet is denied as malformed.
pub const MAX_IPV6_EXT_HEADERS: u32 = 6;
/// No L4 header is read further into the frame than this; it keeps offsets bounded for the verifier.
pub const MAX_L4_OFFSET: usize = 1024;
/// `AddrInfo::network` when no enforce-scope network contains the address.
pub const NO_NETWORK: u32 = u32::MAX;

/// Site roles, each with a class bit above the networks' bits.
pub const ROLE_LAN: u32 = 0;
pub const ROLE_CLINICAL_SERVER: u32 = 1;
pub const ROLE_SURGERY: u32 = 2;
pub const ROLE_LOCAL_SITES: u32 = 3;
pub const ROLE_COUNT: u32 = 4;
pub const ROLE_NAMES: [&str; ROLE_COUNT as usize] =
    ["lan", "clinical-server", "surgery", "local-sites"];

/// The class bit of network `id`.
pub const fn network_bit(id: u32) -> u64 {
    1u64 << id
}

/// The class bit of site role `role`.
pub const fn role_bit(role: u32) -> u64 {
    1u64 << (MAX_NETWORKS + role)
}

/// Every role's class bit.
pub const ALL_ROLE_BITS: u64 = ((1u64 << ROLE_COUNT) - 1) << MAX_NETWORKS;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// The value of an address-trie entry: every class (network or role) the prefix
/// belongs to, with enclosing prefixes already folded in by the compiler, so one
/// longest-prefix lookup answers for all of them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AddrInfo {
    pub classes: u64,
    /// The enforce-scope network containing the prefix, or [`NO_NETWORK`].
    pub network: u32,
    pub _pad: u32,
}

/// Key of the port map: a transport protocol and a port in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl PortKey {
    pub const fn new(proto: u8, port: u16) -> Self {
        Self {
            port,
            proto,
            _pad: 0,
        }
    }
}

/// One rule as seen from one port: the classes its sources and destinations must touch.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RuleEntry {
    pub src: u64,
    pub dst: u64,
    pub rule: u32,
    pub _pad: u32,
}

/// The rules that list one (protocol, port), in spec order; the first that matches wins.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RuleSet {
    pub len: u32,
    pub _pad: u32,
    pub entries: [RuleEntry; MAX_CANDIDATES],
}

pub const MODE_ENFORCE: u32 = 0;
pub const MODE_AUDIT: u32 = 1;
/// Replies are packets of a flow a rule allowed, remembered in the flow table.
pub const REPLIES_STATEFUL: u32 = 0;
/// Replies are recognised from ports and addresses alone (for asymmetric routing).
pub const REPLIES_STATELESS: u32 = 1;

/// Run-time settings, changed in place without reloading the program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Role bits an address outside every enforce-scope network gets because the role is unset.
    pub unset_roles: u64,
    /// Class bits of the count-scope networks: a rule naming one needs the count tries.
    pub count_mask: u64,
    /// [`MODE_ENFORCE`] or [`MODE_AUDIT`].
    pub mode: u32,
    /// [`REPLIES_STATEFUL`] or [`REPLIES_STATELESS`].
    pub replies: u32,
    /// Non-zero: ICMP echo to and from enforce-scope networks passes.
    pub icmp_echo: u32,
    pub _pad: u32,
    /// How long a flow lives without packets, in nanoseconds, indexed by [`flow_state_slot`].
    pub flow_timeouts_ns: [u64; FLOW_STATE_COUNT],
    /// How long an allowed first fragment's datagram waits for its later fragments.
    pub fragment_timeout_ns: u64,
}

/// A flow as its first allowed packet saw it; addresses are IPv4 in the first 4 bytes or IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 2],
}

impl FlowKey {
    /// The key of the other direction of this flow.
    pub const fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            family: self.family,
            _pad: [0; 2],
        }
    }
}

pub const FLOW_TCP_SYN_SENT: u32 = 1;
pub const FLOW_TCP_ESTABLISHED: u32 = 2;
pub const FLOW_TCP_CLOSING: u32 = 3;
pub const FLOW_UDP: u32 = 4;
pub const FLOW_STATE_COUNT: usize = 4;

/// The slot of `Config::flow_timeouts_ns` for a flow state.
#[inline(always)]
pub const fn flow_state_slot(state: u32) -> usize {
    (state as usize).wrapping_sub(1)
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub last_seen_ns: u64,
    /// The rule that allowed the flow; its replies are counted under it.
    pub rule: u32,
    /// One of the `FLOW_*` states.
    pub state: u32,
}

/// A fragmented datagram: addresses, protocol and IP identification.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// The decision its first fragment got, which its later fragments share.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragValue {
    pub last_seen_ns: u64,
    pub rule: u32,
    pub path: u32,
}

/// Slots of the flow-event array: a new flow entered the table, an insert failed,
/// an expired flow was removed when met.
pub const FLOW_EVENT_CREATED: u32 = 0;
pub const FLOW_EVENT_INSERT_FAILED: u32 = 1;
pub const FLOW_EVENT_EXPIRED: u32 = 2;
pub const FLOW_EVENT_COUNT: u32 = 4;

/// Packets and bytes of one decision.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

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
}

/// Why a packet passed without a rule.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PassReason {
    /// Not IPv4 or IPv6 (ARP, LLDP, a third VLAN tag, ...).
    NonIp = 0,
    /// Neither address is in an enforce-scope network.
    OutOfScope = 1,
    /// The frame is too short to read both addresses, so no scope can apply.
    Unparsed = 2,
    /// ICMP echo to or from an enforce-scope network, which the spec permits.
    IcmpEcho = 3,
}
pub const PASS_REASON_COUNT: u32 = 4;
pub const PASS_REASON_SLOTS: u32 = 8;

impl PassReason {
    pub const ALL: [PassReason; PASS_REASON_COUNT as usize] = [
        PassReason::NonIp,
        PassReason::OutOfScope,
        PassReason::Unparsed,
        PassReason::IcmpEcho,
    ];
    pub const fn name(self) -> &'static str {
        match self {
            PassReason::NonIp => "non_ip",
            PassReason::OutOfScope => "out_of_scope",
            PassReason::Unparsed => "unparsed",
            PassReason::IcmpEcho => "icmp_echo",
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
        Decision::Deny { reason, network } => {
            let action = if mode == MODE_AUDIT {
                Action::Audit
            } else {
                Action::Drop
            };
            deny_index(action, reason, network)
        }
        Decision::Pass { reason } => pass_index(reason),
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for AddrInfo {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for RuleEntry {}
    unsafe impl aya::Pod for RuleSet {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragValue {}
}
