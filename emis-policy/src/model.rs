//! The reference verdict: what docs/DECISIONS.md says the enforcer must decide for a frame,
//! computed straight from the policy (no maps), so tests can hold the kernel to it.
//! [`Model`] keeps its own flow and fragment tables for stateful sequences.
//!
//! What the model owns is the policy evaluation: classes come from the policy's networks
//! and roles, and the matching rule is the first in spec order, never a compiled map, so
//! agreement with the kernel checks the compiler too.
//!
//! Where the kernel's behaviour is a fact rather than a policy, the model mirrors it on
//! purpose and takes it from `emis_common`, as the kernel does: the parser's header
//! layouts and bounds (VLAN tags, IPv6 extension headers, [`MAX_L4_OFFSET`]), the
//! flow-state transitions and lifetimes, flow and fragment keys, which ICMP types are
//! echo or errors, and deny-or-pass by enforce-scope network. The parser below reads
//! frames header by header as the kernel's `parse` does, with the same bounds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use emis_common::{
    denial_network, deny_or_pass, expired, icmp_class, ip_version, ipv4_header_len,
    ipv6_ext_header_len, is_bare_syn, is_ipv6_ext_header, is_vlan, network_bit,
    new_flow_table_size, non_ip_reason, ppp_protocol, role_bit, stateless_reply, tcp_header_len,
    Addr, Decision, DenyReason, FlowKey, FlowValue, FragKey, FragValue, IcmpClass, Link,
    PassReason, Path, Segment, DEFAULT_FLOW_TABLE_SIZE, ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6,
    ETH_P_PPP_SES, ETH_TYPE_OFFSET, FRAG_TABLE_SIZE, ICMP_HLEN, IPV4_FRAGMENT_MASK,
    IPV4_FRAG_OFFSET_MASK, IPV4_HLEN, IPV6_EXT_MIN_LEN, IPV6_FRAGMENT, IPV6_FRAGMENT_MASK,
    IPV6_HLEN, MAX_IPV6_EXT_HEADERS, MAX_L4_OFFSET, MAX_QUOTED_PORTS_OFFSET, MAX_VLAN_TAGS,
    MIN_TCP_FRAG_OFFSET, NO_NETWORK, PPPOE_HLEN, PPP_IPV4, PPP_IPV6, PPP_PROTO_LEN, PROTO_ICMP,
    PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_HLEN, UDP_HLEN, VLAN_HLEN,
};

mod egress;
mod flows;
mod learned;
mod lru;

pub use flows::FlowEvents;
pub use learned::LearnedNames;
use lru::Lru;

use crate::{
    compile::endpoint_mask,
    policy::{Policy, Replies, Role, Scope},
};

/// What the parser read from a frame, before any policy applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Not IPv4 or IPv6 after at most two VLAN tags and PPPoE, counted by its class.
    NonIp(PassReason),
    /// Too short to read both addresses.
    Unparsed,
    Ip(IpFacts),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpFacts {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub malformed: bool,
    pub fragment: bool,
    /// In 8-byte units; non-zero for a later fragment.
    pub frag_offset: u16,
    pub frag_id: u32,
    /// Ports and flags, when the L4 header is TCP or UDP and whole.
    pub l4: Option<L4Facts>,
    /// Type, code and the quoted packet, for ICMP of the packet's own family.
    pub icmp: Option<IcmpFacts>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4Facts {
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    /// TCP: sequence and acknowledgement numbers and payload bytes; zero for UDP.
    pub seq: u32,
    pub ack: u32,
    pub len: u32,
}

impl L4Facts {
    pub fn bare_syn(&self) -> bool {
        is_bare_syn(self.flags)
    }

    /// What the flow tracker reads of the segment.
    pub fn segment(&self) -> Segment {
        Segment {
            flags: self.flags,
            seq: self.seq,
            ack: self.ack,
            len: self.len,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpFacts {
    pub kind: u8,
    pub code: u8,
    pub quoted: Option<Quoted>,
}

/// The TCP or UDP packet an ICMP error quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn ipv4_at(b: &[u8], i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(b[i], b[i + 1], b[i + 2], b[i + 3]))
}

fn ipv6_at(b: &[u8], i: usize) -> IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[i..i + 16]);
    IpAddr::V6(Ipv6Addr::from(a))
}

/// Reads a frame the way the kernel program does, header by header.
pub fn parse(frame: &[u8]) -> Frame {
    parse_link(Link::Ethernet, frame)
}

/// Reads a frame as the program for `link` does: from an Ethernet header, or (devices
/// without a link header) from the IP header, whose version decides the family.
pub fn parse_link(link: Link, frame: &[u8]) -> Frame {
    match link {
        Link::Ethernet => parse_ethernet(frame),
        Link::Ip => parse_ip(frame, 0),
    }
}

/// An IP header at `offset`; shorter than the smallest IP header, unparsed, as in the kernel.
fn parse_ip(frame: &[u8], offset: usize) -> Frame {
    match frame
        .get(offset..offset + IPV4_HLEN)
        .map(|ip| ip_version(ip[0]))
    {
        None => Frame::Unparsed,
        Some(4) => parse_ipv4(frame, offset),
        Some(6) => parse_ipv6(frame, offset),
        Some(_) => Frame::NonIp(PassReason::NonIp),
    }
}

fn parse_ethernet(frame: &[u8]) -> Frame {
    if frame.len() < ETH_HLEN {
        return Frame::Unparsed;
    }
    let mut ethertype = be16(frame, ETH_TYPE_OFFSET);
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ethertype) {
            break;
        }
        if frame.len() < offset + VLAN_HLEN {
            return Frame::Unparsed;
        }
        ethertype = be16(frame, offset + 2);
        offset += VLAN_HLEN;
    }
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(frame, offset),
        ETH_P_IPV6 => parse_ipv6(frame, offset),
        ETH_P_PPP_SES => parse_pppoe(frame, offset),
        _ => Frame::NonIp(non_ip_reason(ethertype)),
    }
}

/// A PPPoE session header, then PPP whose protocol field may be compressed to one byte.
fn parse_pppoe(frame: &[u8], offset: usize) -> Frame {
    let Some(ppp) = frame.get(offset..offset + PPPOE_HLEN + PPP_PROTO_LEN) else {
        return Frame::Unparsed;
    };
    let (protocol, len) = ppp_protocol(ppp[PPPOE_HLEN], ppp[PPPOE_HLEN + 1]);
    let offset = offset + PPPOE_HLEN + len;
    match protocol {
        PPP_IPV4 => parse_ipv4(frame, offset),
        PPP_IPV6 => parse_ipv6(frame, offset),
        _ => Frame::NonIp(PassReason::PppControl),
    }
}

fn parse_ipv4(frame: &[u8], offset: usize) -> Frame {
    let Some(ip) = frame.get(offset..offset + IPV4_HLEN) else {
        return Frame::Unparsed;
    };
    let header_len = ipv4_header_len(ip[0]);
    let total_len = be16(ip, 2) as usize;
    let frame_left = frame.len() - offset;
    let malformed = ip_version(ip[0]) != 4
        || header_len < IPV4_HLEN
        || total_len < header_len
        || total_len > frame_left;
    let flags_fragment = be16(ip, 6);
    let mut facts = IpFacts {
        src: ipv4_at(ip, 12),
        dst: ipv4_at(ip, 16),
        proto: ip[9],
        malformed,
        fragment: flags_fragment & IPV4_FRAGMENT_MASK != 0,
        frag_offset: flags_fragment & IPV4_FRAG_OFFSET_MASK,
        frag_id: be16(ip, 4) as u32,
        l4: None,
        icmp: None,
    };
    if !facts.malformed {
        parse_l4(
            frame,
            &mut facts,
            offset + header_len,
            total_len - header_len,
            false,
        );
    }
    Frame::Ip(facts)
}

fn parse_ipv6(frame: &[u8], offset: usize) -> Frame {
    let Some(ip) = frame.get(offset..offset + IPV6_HLEN) else {
        return Frame::Unparsed;
    };
    let mut facts = IpFacts {
        src: ipv6_at(ip, 8),
        dst: ipv6_at(ip, 24),
        proto: ip[6],
        malformed: false,
        fragment: false,
        frag_offset: 0,
        frag_id: 0,
        l4: None,
        icmp: None,
    };
    let mut l4_offset = offset + IPV6_HLEN;
    let mut l4_len = be16(ip, 4) as usize;
    if ip_version(ip[0]) != 6 || l4_len > frame.len() - l4_offset {
        facts.malformed = true;
        return Frame::Ip(facts);
    }
    // Where the fragmentable part starts, once a fragment header is met.
    let mut fragmentable_at = None;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_ipv6_ext_header(facts.proto) {
            break;
        }
        if l4_len < IPV6_EXT_MIN_LEN || frame.len() < l4_offset + IPV6_EXT_MIN_LEN {
            facts.malformed = true;
            return Frame::Ip(facts);
        }
        let kind = facts.proto;
        let ext = &frame[l4_offset..l4_offset + IPV6_EXT_MIN_LEN];
        if kind == IPV6_FRAGMENT {
            let field = be16(ext, 2);
            if field & IPV6_FRAGMENT_MASK != 0 {
                facts.fragment = true;
                facts.frag_offset = field >> 3;
                facts.frag_id = u32::from_be_bytes([ext[4], ext[5], ext[6], ext[7]]);
            }
        }
        let ext_len = ipv6_ext_header_len(kind, ext[1]);
        facts.proto = ext[0];
        if ext_len > l4_len || l4_offset + ext_len > MAX_L4_OFFSET {
            facts.malformed = true;
            return Frame::Ip(facts);
        }
        l4_offset += ext_len;
        l4_len -= ext_len;
        if kind == IPV6_FRAGMENT {
            // One fragment header at most (RFC 8200); a second hides the real offset.
            if fragmentable_at.is_some() {
                facts.malformed = true;
                return Frame::Ip(facts);
            }
            fragmentable_at = Some(l4_offset);
            // A later fragment carries data, not headers, after its fragment header.
            if facts.frag_offset != 0 {
                return Frame::Ip(facts);
            }
        }
    }
    if is_ipv6_ext_header(facts.proto) {
        facts.malformed = true;
    } else if facts.fragment && fragmentable_at != Some(l4_offset) {
        // Offsets count from the fragmentable part: the overlap guard of later fragments
        // holds only if the L4 header starts it.
        facts.malformed = true;
    } else {
        parse_l4(frame, &mut facts, l4_offset, l4_len, true);
    }
    Frame::Ip(facts)
}

/// The L4 facts of a first fragment or whole datagram; later fragments carry no L4 header.
fn parse_l4(frame: &[u8], facts: &mut IpFacts, offset: usize, l4_len: usize, v6: bool) {
    if facts.frag_offset != 0 || offset > MAX_L4_OFFSET {
        return;
    }
    let window = |n: usize| frame.get(offset..offset + n).filter(|_| l4_len >= n);
    match facts.proto {
        PROTO_TCP => {
            if let Some(tcp) = window(TCP_HLEN) {
                let data_offset = tcp_header_len(tcp[12]);
                if data_offset >= TCP_HLEN && data_offset <= l4_len {
                    facts.l4 = Some(L4Facts {
                        sport: be16(tcp, 0),
                        dport: be16(tcp, 2),
                        flags: tcp[13],
                        seq: be32(tcp, 4),
                        ack: be32(tcp, 8),
                        len: (l4_len - data_offset) as u32,
                    });
                }
            }
        }
        PROTO_UDP => {
            if let Some(udp) = window(UDP_HLEN) {
                let udp_len = be16(udp, 4) as usize;
                // A first fragment holds only part of the datagram the UDP length describes.
                if udp_len >= UDP_HLEN && (facts.fragment || udp_len <= l4_len) {
                    facts.l4 = Some(L4Facts {
                        sport: be16(udp, 0),
                        dport: be16(udp, 2),
                        flags: 0,
                        seq: 0,
                        ack: 0,
                        len: 0,
                    });
                }
            }
        }
        PROTO_ICMP if !v6 => {
            facts.icmp = window(ICMP_HLEN).map(|h| icmp_facts(frame, h, offset, l4_len, false))
        }
        PROTO_ICMPV6 if v6 => {
            facts.icmp = window(ICMP_HLEN).map(|h| icmp_facts(frame, h, offset, l4_len, true))
        }
        _ => {}
    }
}

fn icmp_facts(frame: &[u8], header: &[u8], offset: usize, l4_len: usize, v6: bool) -> IcmpFacts {
    IcmpFacts {
        kind: header[0],
        code: header[1],
        quoted: parse_quoted(frame, offset, l4_len, v6),
    }
}

/// The TCP or UDP packet quoted after the 8-byte ICMP header at `offset`.
fn parse_quoted(frame: &[u8], offset: usize, l4_len: usize, v6: bool) -> Option<Quoted> {
    let inner = offset + ICMP_HLEN;
    if inner > MAX_L4_OFFSET {
        return None;
    }
    let (src, dst, proto, ports_at, header_len) = if v6 {
        let ip = frame.get(inner..inner + IPV6_HLEN)?;
        if ip_version(ip[0]) != 6 {
            return None;
        }
        (
            ipv6_at(ip, 8),
            ipv6_at(ip, 24),
            ip[6],
            inner + IPV6_HLEN,
            IPV6_HLEN,
        )
    } else {
        let ip = frame.get(inner..inner + IPV4_HLEN)?;
        let header_len = ipv4_header_len(ip[0]);
        if ip_version(ip[0]) != 4
            || header_len < IPV4_HLEN
            || be16(ip, 6) & IPV4_FRAG_OFFSET_MASK != 0
        {
            return None;
        }
        (
            ipv4_at(ip, 12),
            ipv4_at(ip, 16),
            ip[9],
            inner + header_len,
            header_len,
        )
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    if ICMP_HLEN + header_len + 4 > l4_len || ports_at > MAX_QUOTED_PORTS_OFFSET {
        return None;
    }
    let ports = frame.get(ports_at..ports_at + 4)?;
    Some(Quoted {
        src,
        dst,
        proto,
        sport: be16(ports, 0),
        dport: be16(ports, 2),
    })
}

/// The classes an address belongs to and the enforce-scope network holding it.
pub fn classify(policy: &Policy, addr: IpAddr) -> (u64, u32) {
    let mut classes = 0;
    let mut network = NO_NETWORK;
    for (id, net) in policy.networks.iter().enumerate() {
        if net.prefixes.iter().any(|p| p.contains(&addr)) {
            classes |= network_bit(id as u32);
            if net.scope == Scope::Enforce && network == NO_NETWORK {
                network = id as u32;
            }
        }
    }
    if network == NO_NETWORK {
        for role in Role::ALL {
            let member = match policy.role(role) {
                None => true,
                Some(prefixes) => prefixes.iter().any(|p| p.contains(&addr)),
            };
            if member {
                classes |= role_bit(role.0);
            }
        }
    }
    (classes, network)
}

/// The first rule (in spec order) for `proto`/`port` whose sources touch `from` and destinations touch `to`.
fn first_rule(policy: &Policy, proto: u8, port: u16, from: u64, to: u64) -> Option<u32> {
    policy
        .rules
        .iter()
        .position(|rule| {
            rule.protocol.number() == proto
                && rule.has_port(port)
                && endpoint_mask(&rule.from) & from != 0
                && endpoint_mask(&rule.to) & to != 0
        })
        .map(|i| i as u32)
}

/// The verdict for one frame seen alone, with stateless replies: what `emis explain` and
/// single-packet tests use.
pub fn decide(policy: &Policy, frame: &[u8]) -> Decision {
    Model::new(policy, Replies::Stateless).decide(frame)
}

/// An address as the kernel's tables key it.
fn octets(addr: IpAddr) -> Addr {
    let mut out = [0u8; 16];
    match addr {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out = a.octets(),
    }
    out
}

fn flow_key(src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16) -> FlowKey {
    FlowKey::new(octets(src), octets(dst), src.is_ipv6(), proto, sport, dport)
}

/// The enforcer as a userspace model: the policy plus the flows and fragments it has allowed,
/// on a clock the caller sets. Its tables are bounded as the kernel's are: established
/// flows, new flows and fragments each in an LRU of the kernel table's capacity. (The
/// kernel's LRU is approximate, so once a table overflows the two may evict different
/// entries; what is never evicted by what is the same in both.)
pub struct Model<'p> {
    policy: &'p Policy,
    replies: Replies,
    flows: Lru<FlowKey, FlowValue>,
    new_flows: Lru<FlowKey, FlowValue>,
    frags: Lru<FragKey, FragValue>,
    events: FlowEvents,
    now_ns: u64,
    learned: LearnedNames,
}

/// Where a packet's addresses stand before any rule: their classes and the
/// enforce-scope network a denial is counted under.
struct Standing {
    src: u64,
    dst: u64,
    network: u32,
}

impl Standing {
    fn deny_or_pass(&self, reason: DenyReason) -> Decision {
        deny_or_pass(reason, self.network)
    }
}

impl<'p> Model<'p> {
    pub fn new(policy: &'p Policy, replies: Replies) -> Self {
        Self::with_flow_table_size(policy, replies, DEFAULT_FLOW_TABLE_SIZE)
    }

    /// A model whose established-flow table holds `flow_table_size` entries, as the
    /// kernel's does after `--flow-table-size`; the new-flow table gets its share.
    pub fn with_flow_table_size(
        policy: &'p Policy,
        replies: Replies,
        flow_table_size: u32,
    ) -> Self {
        Model {
            policy,
            replies,
            flows: Lru::new(flow_table_size as usize),
            new_flows: Lru::new(new_flow_table_size(flow_table_size) as usize),
            frags: Lru::new(FRAG_TABLE_SIZE as usize),
            events: FlowEvents::default(),
            now_ns: 0,
            learned: LearnedNames::default(),
        }
    }

    /// The flow-table events so far.
    pub fn flow_events(&self) -> FlowEvents {
        self.events
    }

    /// The flow under the forward key `key`, established or new, as stored.
    pub fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        self.flows
            .peek(key)
            .or_else(|| self.new_flows.peek(key))
            .copied()
    }

    /// `addr` was learned from a DNS answer for `name` (as the daemon writes it for the kernel).
    pub fn learn(&mut self, name: &str, addr: IpAddr) {
        self.learned.learn(name, addr);
    }

    /// `addr`'s learned names expired.
    pub fn forget(&mut self, addr: IpAddr) {
        self.learned.forget(addr);
    }

    /// Sets the model's clock, in nanoseconds, for flow and fragment lifetimes.
    pub fn set_time(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
    }

    /// Flows in both tables.
    pub fn flows(&self) -> usize {
        self.flows.len() + self.new_flows.len()
    }

    /// Flows in the established table.
    pub fn established_flows(&self) -> usize {
        self.flows.len()
    }

    /// The verdict for an Ethernet frame, as the `emis` program gives it.
    pub fn decide(&mut self, frame: &[u8]) -> Decision {
        self.decide_link(Link::Ethernet, frame)
    }

    /// The verdict for a frame handed over by a `link` device: what `emis` (Ethernet) or
    /// `emis_l3` (bare IP) gives.
    pub fn decide_link(&mut self, link: Link, frame: &[u8]) -> Decision {
        match parse_link(link, frame) {
            Frame::NonIp(reason) => Decision::Pass { reason },
            Frame::Unparsed => Decision::Pass {
                reason: PassReason::Unparsed,
            },
            Frame::Ip(facts) => self.decide_ip(&facts),
        }
    }

    pub fn decide_ip(&mut self, facts: &IpFacts) -> Decision {
        let (src, src_net) = classify(self.policy, facts.src);
        let (dst, dst_net) = classify(self.policy, facts.dst);
        let standing = Standing {
            src,
            dst,
            network: denial_network(dst_net, || src_net),
        };
        if facts.malformed {
            return standing.deny_or_pass(DenyReason::Malformed);
        }
        if facts.fragment && facts.frag_offset != 0 {
            return self
                .later_fragment(facts)
                .unwrap_or_else(|reason| standing.deny_or_pass(reason));
        }
        let v6 = facts.src.is_ipv6();
        let judged = match facts.proto {
            PROTO_TCP | PROTO_UDP => match facts.l4 {
                Some(l4) => self.transport(facts, &l4, &standing),
                None => Err(DenyReason::Malformed),
            },
            PROTO_ICMP if !v6 => self.icmp(facts, &standing),
            PROTO_ICMPV6 if v6 => self.icmp(facts, &standing),
            _ => Err(DenyReason::Protocol),
        };
        match judged {
            Ok(decision) => {
                if facts.fragment {
                    if let Decision::Allow { rule, path } = decision {
                        let value = FragValue {
                            last_seen_ns: self.now_ns,
                            rule,
                            path: path as u32,
                        };
                        self.frags.insert(frag_key(facts), value);
                    }
                }
                decision
            }
            Err(reason) => standing.deny_or_pass(reason),
        }
    }

    fn stateful(&self) -> bool {
        self.replies == Replies::Stateful
    }

    fn transport(
        &mut self,
        facts: &IpFacts,
        l4: &L4Facts,
        standing: &Standing,
    ) -> Result<Decision, DenyReason> {
        let learned = self.learned.rule(
            self.policy,
            facts.proto,
            l4.dport,
            facts.dst,
            (standing.src, standing.dst),
            standing.network == NO_NETWORK,
        );
        let forward = learned.or_else(|| {
            first_rule(
                self.policy,
                facts.proto,
                l4.dport,
                standing.src,
                standing.dst,
            )
        });
        if let Some(rule) = forward {
            if self.stateful() {
                if standing.network == NO_NETWORK {
                    // Both ends out of enforce scope: the replies pass anyway.
                    self.events.untracked += 1;
                } else {
                    self.track_forward(
                        flow_key(facts.src, facts.dst, facts.proto, l4.sport, l4.dport),
                        rule,
                        &l4.segment(),
                    );
                }
            }
            return Ok(Decision::Allow {
                rule,
                path: Path::Forward,
            });
        }
        if l4.bare_syn() {
            return Err(DenyReason::NoRule);
        }
        let rule = if self.stateful() {
            self.track_reply(
                flow_key(facts.dst, facts.src, facts.proto, l4.dport, l4.sport),
                &l4.segment(),
            )
        } else if !stateless_reply(facts.proto, l4.flags) {
            None
        } else {
            first_rule(
                self.policy,
                facts.proto,
                l4.sport,
                standing.dst,
                standing.src,
            )
        };
        rule.map(|rule| Decision::Allow {
            rule,
            path: Path::Reply,
        })
        .ok_or(DenyReason::NoRule)
    }

    fn icmp(&mut self, facts: &IpFacts, standing: &Standing) -> Result<Decision, DenyReason> {
        let icmp = facts.icmp.ok_or(DenyReason::Malformed)?;
        match icmp_class(icmp.kind, facts.src.is_ipv6()) {
            IcmpClass::Echo if self.policy.options.icmp_echo && standing.network != NO_NETWORK => {
                return Ok(Decision::Pass {
                    reason: PassReason::IcmpEcho,
                })
            }
            IcmpClass::Error => {}
            IcmpClass::Echo | IcmpClass::Other => return Err(DenyReason::Icmp),
        }
        let quoted = icmp.quoted.ok_or(DenyReason::Icmp)?;
        if quoted.src != facts.dst {
            return Err(DenyReason::Icmp);
        }
        let rule = if self.stateful() {
            let key = flow_key(
                quoted.src,
                quoted.dst,
                quoted.proto,
                quoted.sport,
                quoted.dport,
            );
            self.tracked_rule(&key)
                .or_else(|| self.tracked_rule(&key.reversed()))
        } else {
            let (from, _) = classify(self.policy, quoted.src);
            let (to, _) = classify(self.policy, quoted.dst);
            first_rule(self.policy, quoted.proto, quoted.dport, from, to)
                .or_else(|| first_rule(self.policy, quoted.proto, quoted.sport, to, from))
        };
        rule.map(|rule| Decision::Allow {
            rule,
            path: Path::Related,
        })
        .ok_or(DenyReason::Icmp)
    }

    fn later_fragment(&mut self, facts: &IpFacts) -> Result<Decision, DenyReason> {
        if facts.proto == PROTO_TCP && facts.frag_offset < MIN_TCP_FRAG_OFFSET {
            return Err(DenyReason::Malformed);
        }
        let key = frag_key(facts);
        let mut entry = *self.frags.peek(&key).ok_or(DenyReason::Fragment)?;
        let timeout = self.policy.options.timeouts.fragment * 1_000_000_000;
        if expired(entry.last_seen_ns, timeout, self.now_ns) {
            self.frags.remove(&key);
            return Err(DenyReason::Fragment);
        }
        entry.last_seen_ns = self.now_ns;
        self.frags.update(&key, entry);
        Ok(Decision::Allow {
            rule: entry.rule,
            path: Path::from_raw(entry.path),
        })
    }
}

fn frag_key(facts: &IpFacts) -> FragKey {
    FragKey::new(
        octets(facts.src),
        octets(facts.dst),
        facts.src.is_ipv6(),
        facts.proto,
        facts.frag_id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        compile::compile,
        spec::{load_policy, SiteOptions, Source},
    };

    fn ip_facts(frame: Frame) -> IpFacts {
        match frame {
            Frame::Ip(facts) => facts,
            other => panic!("not IP: {other:?}"),
        }
    }

    #[test]
    fn pppoe_and_bare_ip_carry_the_same_packet_as_ethernet() {
        use crate::packet::{PacketSpec, TCP_SYN};
        let base = PacketSpec::tcp(
            "192.168.10.2".parse().unwrap(),
            "10.207.116.10".parse().unwrap(),
            40000,
            443,
            TCP_SYN,
        );
        let plain = ip_facts(parse(&base.build()));
        assert_eq!(ip_facts(parse(&base.clone().in_pppoe().build())), plain);
        let tagged = base.clone().with_vlans(&[(0x88a8, 1), (0x8100, 2)]);
        assert_eq!(ip_facts(parse(&tagged.in_pppoe().build())), plain);
        assert_eq!(ip_facts(parse_link(Link::Ip, &base.build_ip())), plain);
        // Read as Ethernet, an IP packet is something else entirely.
        assert_ne!(parse(&base.build_ip()), Frame::Ip(plain));
        let mut lcp = base.clone().in_pppoe().build();
        lcp[20..22].copy_from_slice(&0xc021u16.to_be_bytes());
        assert_eq!(parse(&lcp), Frame::NonIp(PassReason::PppControl));
        let mut mpls = base.clone();
        mpls.mpls_labels = vec![16];
        assert_eq!(parse(&mpls.build()), Frame::NonIp(PassReason::Mpls));
        assert_eq!(
            parse(
                &base
                    .with_vlans(&[(0x8100, 1), (0x8100, 2), (0x8100, 3)])
                    .build()
            ),
            Frame::NonIp(PassReason::VlanTooDeep)
        );
        assert_eq!(parse_link(Link::Ip, &[0x45; 19]), Frame::Unparsed);
        assert_eq!(
            parse_link(Link::Ip, &[0x55; 40]),
            Frame::NonIp(PassReason::NonIp)
        );
    }

    #[test]
    fn ipv6_fragments_are_read_from_the_fragmentable_part() {
        use crate::packet::{PacketSpec, TCP_SYN};
        let fragment = |ext: Vec<(u8, usize)>, offset: u16, more: bool| {
            let mut p = PacketSpec::tcp(
                "2001:db8::1".parse().unwrap(),
                "2001:db8::2".parse().unwrap(),
                1,
                443,
                TCP_SYN,
            );
            p.ipv6_ext = ext;
            p.frag_offset = offset;
            p.more_fragments = more;
            ip_facts(parse(&p.build()))
        };
        let first = fragment(vec![(0, 8), (44, 8)], 0, true);
        assert!(first.fragment && !first.malformed && first.l4.is_some());
        // A later fragment stops at its fragment header; its payload is data.
        let later = fragment(vec![(44, 8), (60, 16)], 50, false);
        assert!(later.fragment && !later.malformed && later.l4.is_none());
        assert_eq!((later.proto, later.frag_offset), (60, 50));
        // Options in the fragmentable part of a first fragment hide its L4 header.
        assert!(fragment(vec![(44, 8), (60, 8)], 0, true).malformed);
        // Two fragment headers.
        assert!(fragment(vec![(44, 8), (44, 8)], 0, true).malformed);
        assert!(fragment(vec![(44, 8), (44, 8)], 0, false).malformed);
    }

    /// The model takes lifetimes from the policy, the kernel from the compiled config:
    /// both must put each state's lifetime in the same slot.
    #[test]
    fn lifetimes_match_the_compiled_config() {
        let mut policy = load_policy(&Source::default_spec(), &SiteOptions::default()).unwrap();
        let t = &mut policy.options.timeouts;
        (t.tcp_syn, t.tcp_established, t.tcp_closing, t.udp) = (1, 2, 3, 4);
        let model = Model::new(&policy, Replies::Stateful);
        let config = compile(&policy).unwrap().config;
        assert_eq!(model.flow_timeouts_ns(), config.flow_timeouts_ns);
    }
}
