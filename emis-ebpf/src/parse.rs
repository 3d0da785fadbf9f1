//! One small, bounded parser per header: Ethernet with up to two VLAN tags, IPv4 with
//! options, IPv6 with a bounded extension-header walk, TCP and UDP. Every read is bounds-checked.

use aya_ebpf::{maps::lpm_trie::Key, programs::XdpContext};
use emis_common::{AddrInfo, MAX_IPV6_EXT_HEADERS, MAX_L4_OFFSET, NO_NETWORK};

use crate::{ADDR_V4, ADDR_V6};

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const MAX_VLAN_TAGS: usize = 2;
const IPV6_HLEN: usize = 40;

/// A fixed-size window of the frame at `offset`, or `None` if the frame is shorter.
#[inline(always)]
pub fn bytes_at<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<&[u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + N > end {
        return None;
    }
    Some(unsafe { &*((start + offset) as *const [u8; N]) })
}

#[inline(always)]
pub fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

/// What the L3 parsers learn: enough to classify the addresses and find the L4 header.
pub struct L3 {
    pub src: AddrInfo,
    pub dst: AddrInfo,
    pub proto: u8,
    pub l4_offset: usize,
    /// Bytes of L4 header and payload the IP header vouches for and the frame holds.
    pub l4_len: usize,
    pub malformed: bool,
    pub fragment: bool,
}

pub enum Parsed {
    NonIp,
    Unparsed,
    Ip(L3),
}

/// Ethernet and up to two VLAN tags, then the IP header.
pub fn parse_frame(ctx: &XdpContext) -> Parsed {
    let Some(eth) = bytes_at::<ETH_HLEN>(ctx, 0) else {
        return Parsed::Unparsed;
    };
    let mut ethertype = be16(eth, 12);
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(tag) = bytes_at::<4>(ctx, offset) else {
            return Parsed::Unparsed;
        };
        ethertype = be16(tag, 2);
        offset += 4;
    }
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(ctx, offset),
        ETH_P_IPV6 => parse_ipv6(ctx, offset),
        _ => Parsed::NonIp,
    }
}

#[inline(always)]
fn lookup_v4(addr: [u8; 4]) -> AddrInfo {
    match ADDR_V4.get(Key::new(32, addr)) {
        Some(info) => *info,
        None => AddrInfo {
            classes: 0,
            network: NO_NETWORK,
            _pad: 0,
        },
    }
}

#[inline(always)]
fn lookup_v6(addr: [u8; 16]) -> AddrInfo {
    match ADDR_V6.get(Key::new(128, addr)) {
        Some(info) => *info,
        None => AddrInfo {
            classes: 0,
            network: NO_NETWORK,
            _pad: 0,
        },
    }
}

/// IPv4 with options (through IHL); lengths are checked against the frame.
fn parse_ipv4(ctx: &XdpContext, offset: usize) -> Parsed {
    let Some(ip) = bytes_at::<20>(ctx, offset) else {
        return Parsed::Unparsed;
    };
    let src = lookup_v4([ip[12], ip[13], ip[14], ip[15]]);
    let dst = lookup_v4([ip[16], ip[17], ip[18], ip[19]]);
    let header_len = ((ip[0] & 0x0f) as usize) * 4;
    let total_len = be16(ip, 2) as usize;
    let frame_left = (ctx.data_end() - ctx.data()).saturating_sub(offset);
    let malformed =
        ip[0] >> 4 != 4 || header_len < 20 || total_len < header_len || total_len > frame_left;
    let flags_fragment = be16(ip, 6);
    Parsed::Ip(L3 {
        src,
        dst,
        proto: ip[9],
        l4_offset: offset + header_len,
        l4_len: total_len.saturating_sub(header_len),
        malformed,
        // More-fragments set or a non-zero offset.
        fragment: flags_fragment & 0x3fff != 0,
    })
}

/// IPv6, walking at most `MAX_IPV6_EXT_HEADERS` extension headers.
fn parse_ipv6(ctx: &XdpContext, offset: usize) -> Parsed {
    let Some(ip) = bytes_at::<IPV6_HLEN>(ctx, offset) else {
        return Parsed::Unparsed;
    };
    let mut src_addr = [0u8; 16];
    let mut dst_addr = [0u8; 16];
    src_addr.copy_from_slice(&ip[8..24]);
    dst_addr.copy_from_slice(&ip[24..40]);
    let mut l3 = L3 {
        src: lookup_v6(src_addr),
        dst: lookup_v6(dst_addr),
        proto: ip[6],
        l4_offset: offset + IPV6_HLEN,
        l4_len: be16(ip, 4) as usize,
        malformed: false,
        fragment: false,
    };
    let frame_left = (ctx.data_end() - ctx.data()).saturating_sub(l3.l4_offset);
    if ip[0] >> 4 != 6 || l3.l4_len > frame_left {
        l3.malformed = true;
        return Parsed::Ip(l3);
    }
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let Some(ext_len) = ipv6_ext_header_len(ctx, &mut l3) else {
            return Parsed::Ip(l3);
        };
        if ext_len > l3.l4_len || l3.l4_offset + ext_len > MAX_L4_OFFSET {
            l3.malformed = true;
            return Parsed::Ip(l3);
        }
        l3.l4_offset += ext_len;
        l3.l4_len -= ext_len;
    }
    // Still an extension header after the bound: the L4 header is out of reach.
    if is_ipv6_ext_header(l3.proto) {
        l3.malformed = true;
    }
    Parsed::Ip(l3)
}

#[inline(always)]
fn is_ipv6_ext_header(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60)
}

/// The length of the extension header at `l3.l4_offset`, moving `l3.proto` on to the
/// header after it; `None` once the next header is not an extension header, or the
/// extension header is cut short (then `l3.malformed` is set).
#[inline(always)]
fn ipv6_ext_header_len(ctx: &XdpContext, l3: &mut L3) -> Option<usize> {
    if !is_ipv6_ext_header(l3.proto) {
        return None;
    }
    let ext = match bytes_at::<8>(ctx, l3.l4_offset) {
        Some(ext) if l3.l4_len >= 8 => ext,
        _ => {
            l3.malformed = true;
            return None;
        }
    };
    let len = match l3.proto {
        44 => {
            // Fragment offset or more-fragments set; an atomic fragment (both clear) is whole.
            if be16(ext, 2) & 0xfff9 != 0 {
                l3.fragment = true;
            }
            8
        }
        51 => (ext[1] as usize + 2) * 4,
        _ => (ext[1] as usize + 1) * 8,
    };
    l3.proto = ext[0];
    Some(len)
}

pub struct L4 {
    pub sport: u16,
    pub dport: u16,
    pub bare_syn: bool,
}

/// TCP: ports and flags, with the data offset checked against the IP payload.
#[inline(always)]
pub fn parse_tcp(ctx: &XdpContext, offset: usize, l4_len: usize) -> Option<L4> {
    if offset > MAX_L4_OFFSET || l4_len < 20 {
        return None;
    }
    let tcp = bytes_at::<20>(ctx, offset)?;
    let data_offset = ((tcp[12] >> 4) as usize) * 4;
    if data_offset < 20 || data_offset > l4_len {
        return None;
    }
    let flags = tcp[13];
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    Some(L4 {
        sport: be16(tcp, 0),
        dport: be16(tcp, 2),
        bare_syn: flags & (SYN | ACK) == SYN,
    })
}

/// UDP: ports, with the UDP length checked against the IP payload.
#[inline(always)]
pub fn parse_udp(ctx: &XdpContext, offset: usize, l4_len: usize) -> Option<L4> {
    if offset > MAX_L4_OFFSET || l4_len < 8 {
        return None;
    }
    let udp = bytes_at::<8>(ctx, offset)?;
    let udp_len = be16(udp, 4) as usize;
    if udp_len < 8 || udp_len > l4_len {
        return None;
    }
    Some(L4 {
        sport: be16(udp, 0),
        dport: be16(udp, 2),
        bare_syn: false,
    })
}
