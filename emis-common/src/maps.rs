//! The maps the kernel program and the loader share: their names, sizes, and the layout
//! of the address, port and counter entries, with the class bits an address entry holds.
//!
//! Every value is `#[repr(C)]` plain data with explicit padding, so the loader writes
//! exactly the bytes the kernel program reads.

/// Where bit `bit` of a bit filter lives: an array of `u64` words (the learned filter,
/// the IPv6 count filter), the bit being `mask` in word `index`. The kernel program
/// spells out the same arithmetic at its two reads (`learned::may_be_learned`,
/// `count_classes`): routed through this function, LLVM laid the program out anew and
/// the flow classes measured about 9 ns slower, for the same work.
#[inline(always)]
pub const fn filter_word(bit: u32) -> (u32, u64) {
    (bit / 64, 1 << (bit % 64))
}

/// Sets bit `bit` of the bit filter `words` (built in userspace before it is written).
#[inline(always)]
pub fn filter_mark(words: &mut [u64], bit: u32) {
    let (index, mask) = filter_word(bit);
    words[index as usize] |= mask;
}

/// Name of the map from IPv4 prefix to [`AddrInfo`].
pub const MAP_ADDR_V4: &str = "EMIS_ADDR_V4";
/// Name of the map from IPv6 prefix to [`AddrInfo`].
pub const MAP_ADDR_V6: &str = "EMIS_ADDR_V6";
/// Name of the map from IPv4 prefix to the classes of count-scope networks (`u64`). Kept
/// apart so Amazon-sized ranges never deepen the walk for traffic to the EMIS networks.
pub const MAP_COUNT_V4: &str = "EMIS_COUNT_V4";
/// Name of the map from IPv6 prefix to the classes of count-scope networks (`u64`).
pub const MAP_COUNT_V6: &str = "EMIS_COUNT_V6";
/// Name of the array from a port's slot ([`port_slot`]) to the index of its [`RuleSet`]
/// in [`MAP_RULE_SETS`] (`u16`; 0: no rule lists the port). An array the verifier
/// inlines, where a hash map would cost a helper call per packet.
pub const MAP_PORTS: &str = "EMIS_PORT_INDEX";
/// Name of the array of distinct [`RuleSet`]s, from index 1; the loader sizes it to fit.
pub const MAP_RULE_SETS: &str = "EMIS_RULE_SETS";
/// Slots of [`MAP_PORTS`]: every TCP port, then every UDP port.
pub const PORT_SLOTS: u32 = 2 * 65_536;
/// Entries [`MAP_RULE_SETS`] may need: one per port entry, plus the unused index 0.
pub const MAX_RULE_SETS: u32 = MAX_PORT_ENTRIES + 1;

/// The slot of (`proto`, `port`) in [`MAP_PORTS`]; only TCP and UDP have ports.
#[inline(always)]
pub const fn port_slot(proto: u8, port: u16) -> Option<u32> {
    match proto {
        crate::PROTO_TCP => Some(port as u32),
        crate::PROTO_UDP => Some(65_536 + port as u32),
        _ => None,
    }
}
/// Name of the one-entry array holding [`Config`](crate::Config).
pub const MAP_CONFIG: &str = "EMIS_CONFIG";
/// Name of the per-CPU array of [`Counter`]s, laid out by [`stats_index`](crate::stats_index).
pub const MAP_STATS: &str = "EMIS_STATS";
/// Name of the LRU map from [`FlowKey`](crate::FlowKey) to [`FlowValue`](crate::FlowValue):
/// established flows, those a rule allowed that are assured (see
/// [`FlowValue::assured`](crate::FlowValue::assured)). Only a flow promoted from
/// [`MAP_FLOWS_NEW`] enters it, so floods of new flows cannot push these out.
pub const MAP_FLOWS: &str = "EMIS_FLOWS";
/// Name of the LRU map of new and half-open flows (same key and value as [`MAP_FLOWS`]):
/// a flow enters it on its first allowed packet and leaves it for [`MAP_FLOWS`] once
/// assured. Sized by [`new_flow_table_size`].
pub const MAP_FLOWS_NEW: &str = "EMIS_FLOWS_NEW";
/// Name of the LRU map from [`FragKey`](crate::FragKey) to [`FragValue`](crate::FragValue):
/// datagrams whose first fragment was allowed.
pub const MAP_FRAGS: &str = "EMIS_FRAGS";
/// Name of the per-CPU array of flow-table events, indexed by `FLOW_EVENT_*`.
pub const MAP_FLOW_EVENTS: &str = "EMIS_FLOW_EVENTS";
/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "emis";
/// Name of the TC egress program (Ethernet devices) that records flows under the tuple
/// they leave with, so replies match behind source NAT and for flows the router opens.
pub const PROGRAM_NAME_EGRESS: &str = "emis_egress";
/// Name of the TC egress program for devices without a link header.
pub const PROGRAM_NAME_EGRESS_L3: &str = "emis_egress_l3";

/// Flow-table entries unless `emis run --flow-table-size` says otherwise.
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 131_072;
/// Entries of the new-flow table for a flow table of `flow_table_size` established flows:
/// a quarter, at least 64, so a handshake in progress finds room even in a small table.
pub const fn new_flow_table_size(flow_table_size: u32) -> u32 {
    let quarter = flow_table_size / 4;
    if quarter < 64 {
        64
    } else {
        quarter
    }
}
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

impl AddrInfo {
    /// What an address no prefix holds stands for: no class, no network.
    pub const OUTSIDE: AddrInfo = AddrInfo {
        classes: 0,
        network: NO_NETWORK,
        _pad: 0,
    };

    /// The classes rules see: an address outside every enforce-scope network also holds
    /// `unset_roles`, the roles the site left unset (an unset role stands for everyone
    /// outside the enforce scope).
    #[inline(always)]
    pub const fn classes_with(&self, unset_roles: u64) -> u64 {
        if self.network == NO_NETWORK {
            self.classes | unset_roles
        } else {
            self.classes
        }
    }
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

impl RuleEntry {
    /// Whether a packet from classes `from` to classes `to` matches this rule.
    #[inline(always)]
    pub const fn matches(&self, from: u64, to: u64) -> bool {
        self.src & from != 0 && self.dst & to != 0
    }
}

/// The rules that list one (protocol, port), in spec order; the first that matches wins.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RuleSet {
    pub len: u32,
    /// The hostname-group bits ([`crate::learned`]) of the rules naming hostnames that list
    /// this port: zero means no destination's learned names can change the match here.
    pub hostnames: u32,
    pub entries: [RuleEntry; MAX_CANDIDATES],
}

/// Slots of the flow-event array. The established table ([`MAP_FLOWS`]): a flow entered it
/// (a promotion), an insert failed, an expired flow was removed when met. Its evictions
/// are `created - expired - entries`.
pub const FLOW_EVENT_CREATED: u32 = 0;
pub const FLOW_EVENT_INSERT_FAILED: u32 = 1;
pub const FLOW_EVENT_EXPIRED: u32 = 2;
/// The new-flow table ([`MAP_FLOWS_NEW`]): a flow entered it, an insert failed, an expired
/// flow was removed when met, a flow left it for the established table once
/// assured. Its evictions are `created - expired - promoted - entries`.
pub const FLOW_EVENT_NEW_CREATED: u32 = 3;
pub const FLOW_EVENT_NEW_INSERT_FAILED: u32 = 4;
pub const FLOW_EVENT_NEW_EXPIRED: u32 = 5;
pub const FLOW_EVENT_NEW_PROMOTED: u32 = 6;
/// An allowed flow got no entry because both its ends are outside the enforce scope, so
/// its replies pass anyway.
pub const FLOW_EVENT_UNTRACKED: u32 = 7;
/// TCP window checks: a RST within its window closed a flow; a RST or a FIN outside its
/// window changed nothing.
pub const FLOW_EVENT_TCP_RST_HONOURED: u32 = 8;
pub const FLOW_EVENT_TCP_RST_IGNORED: u32 = 9;
pub const FLOW_EVENT_TCP_FIN_IGNORED: u32 = 10;
/// The egress program recorded a flow under the tuple it left with (after source NAT, or
/// opened by the router itself) in the new-flow table; that insert is also counted as
/// [`FLOW_EVENT_NEW_CREATED`] (or [`FLOW_EVENT_NEW_INSERT_FAILED`]), so the table's
/// evictions stay `created - expired - promoted - entries`.
pub const FLOW_EVENT_EGRESS_CREATED: u32 = 11;
pub const FLOW_EVENT_COUNT: u32 = 12;

/// Packets and bytes of one decision.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
