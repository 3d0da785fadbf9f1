//! The reference verdict: what POLICY.md says the enforcer must decide for a frame,
//! computed straight from the policy (no maps), so tests can hold the kernel to it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use emis_common::{
    network_bit, role_bit, Decision, DenyReason, PassReason, Path, MAX_IPV6_EXT_HEADERS,
    MAX_L4_OFFSET, NO_NETWORK, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};

use crate::policy::{Policy, Role, Scope};

const ETH_HLEN: usize = 14;
const MAX_VLAN_TAGS: usize = 2;

/// What the parser read from a frame, before any policy applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Not IPv4 or IPv6 after at most two VLAN tags.
    NonIp,
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
    /// Ports and flags, when the L4 header is TCP or UDP and whole.
    pub l4: Option<L4Facts>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4Facts {
    pub sport: u16,
    pub dport: u16,
    pub bare_syn: bool,
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

/// Reads a frame the way the kernel program does, header by header.
pub fn parse(frame: &[u8]) -> Frame {
    if frame.len() < ETH_HLEN {
        return Frame::Unparsed;
    }
    let mut ethertype = be16(frame, 12);
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        if frame.len() < offset + 4 {
            return Frame::Unparsed;
        }
        ethertype = be16(frame, offset + 2);
        offset += 4;
    }
    match ethertype {
        0x0800 => parse_ipv4(frame, offset),
        0x86dd => parse_ipv6(frame, offset),
        _ => Frame::NonIp,
    }
}

fn parse_ipv4(frame: &[u8], offset: usize) -> Frame {
    let Some(ip) = frame.get(offset..offset + 20) else {
        return Frame::Unparsed;
    };
    let header_len = (ip[0] & 0x0f) as usize * 4;
    let total_len = be16(ip, 2) as usize;
    let frame_left = frame.len() - offset;
    let malformed =
        ip[0] >> 4 != 4 || header_len < 20 || total_len < header_len || total_len > frame_left;
    let mut facts = IpFacts {
        src: IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15])),
        dst: IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19])),
        proto: ip[9],
        malformed,
        fragment: be16(ip, 6) & 0x3fff != 0,
        l4: None,
    };
    if !facts.malformed && !facts.fragment {
        let l4_offset = offset + header_len;
        facts.l4 = parse_l4(frame, facts.proto, l4_offset, total_len - header_len);
    }
    Frame::Ip(facts)
}

fn parse_ipv6(frame: &[u8], offset: usize) -> Frame {
    let Some(ip) = frame.get(offset..offset + 40) else {
        return Frame::Unparsed;
    };
    let addr = |at: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&ip[at..at + 16]);
        IpAddr::V6(Ipv6Addr::from(a))
    };
    let mut facts = IpFacts {
        src: addr(8),
        dst: addr(24),
        proto: ip[6],
        malformed: false,
        fragment: false,
        l4: None,
    };
    let mut l4_offset = offset + 40;
    let mut l4_len = be16(ip, 4) as usize;
    if ip[0] >> 4 != 6 || l4_len > frame.len() - l4_offset {
        facts.malformed = true;
        return Frame::Ip(facts);
    }
    let is_ext = |next: u8| matches!(next, 0 | 43 | 44 | 51 | 60);
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_ext(facts.proto) {
            break;
        }
        if l4_len < 8 || frame.len() < l4_offset + 8 {
            facts.malformed = true;
            return Frame::Ip(facts);
        }
        let ext = &frame[l4_offset..l4_offset + 8];
        let ext_len = match facts.proto {
            44 => {
                if be16(ext, 2) & 0xfff9 != 0 {
                    facts.fragment = true;
                }
                8
            }
            51 => (ext[1] as usize + 2) * 4,
            _ => (ext[1] as usize + 1) * 8,
        };
        facts.proto = ext[0];
        if ext_len > l4_len || l4_offset + ext_len > MAX_L4_OFFSET {
            facts.malformed = true;
            return Frame::Ip(facts);
        }
        l4_offset += ext_len;
        l4_len -= ext_len;
    }
    if is_ext(facts.proto) {
        facts.malformed = true;
    }
    if !facts.malformed && !facts.fragment {
        facts.l4 = parse_l4(frame, facts.proto, l4_offset, l4_len);
    }
    Frame::Ip(facts)
}

fn parse_l4(frame: &[u8], proto: u8, offset: usize, l4_len: usize) -> Option<L4Facts> {
    if offset > MAX_L4_OFFSET {
        return None;
    }
    match proto {
        PROTO_TCP => {
            let tcp = frame.get(offset..offset + 20).filter(|_| l4_len >= 20)?;
            let data_offset = (tcp[12] >> 4) as usize * 4;
            if data_offset < 20 || data_offset > l4_len {
                return None;
            }
            Some(L4Facts {
                sport: be16(tcp, 0),
                dport: be16(tcp, 2),
                bare_syn: tcp[13] & 0x12 == 0x02,
            })
        }
        PROTO_UDP => {
            let udp = frame.get(offset..offset + 8).filter(|_| l4_len >= 8)?;
            let udp_len = be16(udp, 4) as usize;
            if udp_len < 8 || udp_len > l4_len {
                return None;
            }
            Some(L4Facts {
                sport: be16(udp, 0),
                dport: be16(udp, 2),
                bare_syn: false,
            })
        }
        _ => None,
    }
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
                && crate::compile::endpoint_mask(&rule.from) & from != 0
                && crate::compile::endpoint_mask(&rule.to) & to != 0
        })
        .map(|i| i as u32)
}

/// The verdict POLICY.md requires for `frame`, with stateless replies.
pub fn decide(policy: &Policy, frame: &[u8]) -> Decision {
    match parse(frame) {
        Frame::NonIp => Decision::Pass {
            reason: PassReason::NonIp,
        },
        Frame::Unparsed => Decision::Pass {
            reason: PassReason::Unparsed,
        },
        Frame::Ip(facts) => decide_ip(policy, &facts),
    }
}

pub fn decide_ip(policy: &Policy, facts: &IpFacts) -> Decision {
    let (src, src_net) = classify(policy, facts.src);
    let (dst, dst_net) = classify(policy, facts.dst);
    let network = if dst_net != NO_NETWORK {
        dst_net
    } else {
        src_net
    };
    let deny_or_pass = |reason| {
        if network != NO_NETWORK {
            Decision::Deny { reason, network }
        } else {
            Decision::Pass {
                reason: PassReason::OutOfScope,
            }
        }
    };
    if facts.malformed {
        return deny_or_pass(DenyReason::Malformed);
    }
    if facts.fragment {
        return deny_or_pass(DenyReason::Fragment);
    }
    match facts.proto {
        PROTO_TCP | PROTO_UDP => {}
        PROTO_ICMP | PROTO_ICMPV6 => return deny_or_pass(DenyReason::Icmp),
        _ => return deny_or_pass(DenyReason::Protocol),
    }
    let Some(l4) = facts.l4 else {
        return deny_or_pass(DenyReason::Malformed);
    };
    if let Some(rule) = first_rule(policy, facts.proto, l4.dport, src, dst) {
        return Decision::Allow {
            rule,
            path: Path::Forward,
        };
    }
    if !l4.bare_syn {
        if let Some(rule) = first_rule(policy, facts.proto, l4.sport, dst, src) {
            return Decision::Allow {
                rule,
                path: Path::Reply,
            };
        }
    }
    deny_or_pass(DenyReason::NoRule)
}
