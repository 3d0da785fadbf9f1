//! The validated policy: networks, site roles and rules, resolved to ids.
//! `spec` builds it from TOML; `compile` turns it into map entries and `model` judges packets with it.

use emis_common::{ROLE_COUNT, ROLE_NAMES};
use ipnet::IpNet;

/// Whether a network's traffic must match a rule (`Enforce`) or is only counted (`Count`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Enforce,
    Count,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Enforce => "enforce",
            Scope::Count => "count",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    pub scope: Scope,
    pub description: String,
    pub prefixes: Vec<IpNet>,
}

/// A site role: the operator's addresses for it, or `None` for "any address
/// outside the enforce-scope networks".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Role(pub u32);

impl Role {
    pub const LAN: Role = Role(emis_common::ROLE_LAN);
    pub const CLINICAL_SERVER: Role = Role(emis_common::ROLE_CLINICAL_SERVER);
    pub const SURGERY: Role = Role(emis_common::ROLE_SURGERY);
    pub const LOCAL_SITES: Role = Role(emis_common::ROLE_LOCAL_SITES);
    pub const ALL: [Role; ROLE_COUNT as usize] = [
        Role::LAN,
        Role::CLINICAL_SERVER,
        Role::SURGERY,
        Role::LOCAL_SITES,
    ];

    pub fn name(self) -> &'static str {
        ROLE_NAMES[self.0 as usize]
    }

    pub fn from_name(name: &str) -> Option<Role> {
        ROLE_NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| Role(i as u32))
    }
}

/// One side of a rule: a network (by index into `Policy::networks`) or a site role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Network(u32),
    Role(Role),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => emis_common::PROTO_TCP,
            Protocol::Udp => emis_common::PROTO_UDP,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Outbound,
    Inbound,
    Local,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
            Direction::Local => "local",
        }
    }
}

/// An inclusive port range; a single port is `first == last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub slug: String,
    pub description: String,
    pub hostnames: Vec<String>,
    pub protocol: Protocol,
    pub ports: Vec<PortRange>,
    pub direction: Direction,
    pub from: Vec<Endpoint>,
    pub to: Vec<Endpoint>,
    /// Where the document is inconsistent or incomplete for this row.
    pub note: Option<String>,
}

impl Rule {
    pub fn has_port(&self, port: u16) -> bool {
        self.ports.iter().any(|r| r.contains(port))
    }
}

/// How long tracked flows and fragments live without packets, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A TCP flow that has seen only its SYN.
    pub tcp_syn: u64,
    pub tcp_established: u64,
    /// A TCP flow after a FIN or RST.
    pub tcp_closing: u64,
    pub udp: u64,
    /// A datagram whose first fragment was allowed, awaiting the rest.
    pub fragment: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn: 30,
            tcp_established: 7200,
            tcp_closing: 10,
            udp: 60,
            fragment: 30,
        }
    }
}

/// Settings of the spec outside networks and rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// ICMP echo (ping) to and from enforce-scope networks passes.
    pub icmp_echo: bool,
    pub timeouts: Timeouts,
}

/// A spec and a site, validated. Rule ids are indices into `rules`; network ids into `networks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub networks: Vec<Network>,
    /// Indexed by `Role.0`.
    pub roles: [Option<Vec<IpNet>>; ROLE_COUNT as usize],
    pub rules: Vec<Rule>,
    /// SHA-256 of the spec text (and site, if any), hex; shown in `emis_policy_info`.
    pub sha256: String,
    /// Findings that do not stop the policy from loading (redundant or overlapping prefixes).
    pub warnings: Vec<String>,
    /// (rule, earlier rule): the rule matches only packets the earlier one already matches,
    /// so its traffic is counted under the earlier one.
    pub shadowed: Vec<(u32, u32)>,
    pub options: Options,
}

impl Policy {
    pub fn role(&self, role: Role) -> Option<&[IpNet]> {
        self.roles[role.0 as usize].as_deref()
    }

    pub fn network_id(&self, name: &str) -> Option<u32> {
        self.networks
            .iter()
            .position(|n| n.name == name)
            .map(|i| i as u32)
    }

    pub fn endpoint_name(&self, endpoint: Endpoint) -> &str {
        match endpoint {
            Endpoint::Network(id) => &self.networks[id as usize].name,
            Endpoint::Role(role) => role.name(),
        }
    }
}

/// Whether denied packets are dropped or only counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Audit,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Enforce, Mode::Audit];

    pub fn raw(self) -> u32 {
        match self {
            Mode::Enforce => emis_common::MODE_ENFORCE,
            Mode::Audit => emis_common::MODE_AUDIT,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// How replies are recognised: from the flow table, or from ports and addresses alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Replies {
    /// A reply must belong to a flow a rule allowed (the default).
    Stateful,
    /// For asymmetric routing, where one direction of a flow may not cross this router.
    Stateless,
}

impl Replies {
    pub const ALL: [Replies; 2] = [Replies::Stateful, Replies::Stateless];

    pub fn raw(self) -> u32 {
        match self {
            Replies::Stateful => emis_common::REPLIES_STATEFUL,
            Replies::Stateless => emis_common::REPLIES_STATELESS,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Replies::Stateful => "stateful",
            Replies::Stateless => "stateless",
        }
    }
}

/// A word on the command line or in a config file that names none of the choices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?}; use {choices}")]
pub struct UnknownChoice {
    pub what: &'static str,
    pub given: String,
    pub choices: String,
}

fn parse_choice<T: Copy>(
    what: &'static str,
    given: &str,
    all: &[T],
    name: impl Fn(T) -> &'static str,
) -> Result<T, UnknownChoice> {
    all.iter()
        .copied()
        .find(|c| name(*c).eq_ignore_ascii_case(given))
        .ok_or_else(|| UnknownChoice {
            what,
            given: given.to_string(),
            choices: all
                .iter()
                .map(|c| name(*c))
                .collect::<Vec<_>>()
                .join(" or "),
        })
}

impl std::str::FromStr for Mode {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_choice("mode", s, &Mode::ALL, Mode::name)
    }
}

impl std::str::FromStr for Replies {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_choice("replies", s, &Replies::ALL, Replies::name)
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for Replies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
