//! One small, bounded parser per header: Ethernet with up to two VLAN tags and a PPPoE
//! session header, or a bare IP header on devices without a link header; IPv4 with
//! options, IPv6 with a bounded extension-header walk, TCP, UDP, and the packet an ICMP
//! error quotes. Every read is bounds-checked; no parser looks anything up.

use core::mem::MaybeUninit;

use aya_ebpf::programs::{TcContext, XdpContext};
use emis_common::{
    ip_version, ipv4_header_len, ipv6_ext_header_len, is_bare_syn, is_ipv6_ext_header, is_vlan,
    non_ip_reason, ppp_protocol, tcp_header_len, Addr, Link, PassReason, ETH_HLEN, ETH_P_IPV4,
    ETH_P_IPV6, ETH_P_PPP_SES, ETH_TYPE_OFFSET, ICMP_HLEN, IPV4_FRAGMENT_MASK,
    IPV4_FRAG_OFFSET_MASK, IPV4_HLEN, IPV6_EXT_MIN_LEN, IPV6_FRAGMENT, IPV6_FRAGMENT_MASK,
    IPV6_HLEN, MAX_IPV6_EXT_HEADERS, MAX_L4_OFFSET, MAX_QUOTED_PORTS_OFFSET, MAX_VLAN_TAGS,
    PPPOE_HLEN, PPP_IPV4, PPP_IPV6, PPP_PROTO_LEN, PROTO_TCP, PROTO_UDP, TCP_HLEN, UDP_HLEN,
    VLAN_HLEN,
};

use crate::zero::zero;

/// What the parsers read of a program's context: where the frame starts and ends. XDP
/// and TC (the egress program) both hand over a linear window of the packet.
pub trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

/// A fixed-size window of the frame at `offset`, or `None` if the frame is shorter.
#[inline(always)]
pub fn bytes_at<const N: usize>(ctx: &impl Frame, offset: usize) -> Option<&[u8; N]> {
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

/// An IPv4 address in the 16-byte form, from two words: written byte by byte, the
/// twelve zero bytes became a `memset` call (see `crate::zero`).
#[inline(always)]
fn v4_addr(b: &[u8], i: usize) -> Addr {
    // Native order: the word goes back to bytes in the same order, on any target.
    let low = u64::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3], 0, 0, 0, 0]);
    let words: [u64; 2] = [low, 0];
    unsafe { core::mem::transmute::<[u64; 2], Addr>(words) }
}

#[inline(always)]
fn v6_addr(b: &[u8], i: usize) -> Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[i..i + 16]);
    a
}

/// What the IP parsers learn.
#[derive(Clone, Copy)]
pub struct L3 {
    pub src: Addr,
    pub dst: Addr,
    pub v6: bool,
    pub proto: u8,
    pub l4_offset: usize,
    /// Bytes of L4 header and payload the IP header vouches for and the frame holds.
    pub l4_len: usize,
    pub malformed: bool,
    pub fragment: bool,
    /// In 8-byte units; non-zero for a later fragment.
    pub frag_offset: u16,
    pub frag_id: u32,
}

impl L3 {
    /// What [`parse_frame`] fills in: all zero (every field's "nothing yet"), so no path
    /// leaves a byte undefined for the verifier to reject. Zeroed in place word by word,
    /// as a constant it was a `memset` call on every packet (see `crate::zero`).
    #[inline(always)]
    pub fn zeroed(slot: &mut MaybeUninit<L3>) -> &mut L3 {
        zero(slot.as_mut_ptr());
        unsafe { slot.assume_init_mut() }
    }
}

/// A frame that is not IP to the program: why it passes (the EtherType's class, or
/// `Unparsed` when too short to tell). A plain one-byte value rather than an enum
/// carrying [`L3`]: LLVM leaves such a payload undefined on the paths that do not set
/// it, and the verifier refuses to copy an undefined register.
pub type Parsed = Result<(), PassReason>;

/// The frame as `link` hands it over: Ethernet (with VLAN tags and PPPoE) or bare IP,
/// its IP header read into `l3`.
#[inline(always)]
pub fn parse_frame(ctx: &impl Frame, link: Link, l3: &mut L3) -> Parsed {
    match link {
        Link::Ethernet => parse_ethernet(ctx, l3),
        Link::Ip => parse_ip(ctx, 0, l3),
    }
}

/// An IP header at `offset`, its version deciding the family. Shorter than the smallest
/// IP header it is unparsed (the window is that size, as the verifier learns the bound
/// only from a read that ends past the header's first byte).
#[inline(always)]
fn parse_ip(ctx: &impl Frame, offset: usize, l3: &mut L3) -> Parsed {
    let Some(first) = bytes_at::<IPV4_HLEN>(ctx, offset) else {
        return Err(PassReason::Unparsed);
    };
    match ip_version(first[0]) {
        4 => parse_ipv4(ctx, offset, l3),
        6 => parse_ipv6(ctx, offset, l3),
        _ => Err(PassReason::NonIp),
    }
}

/// Ethernet and up to two VLAN tags, then a PPPoE session header or the IP header.
#[inline(always)]
fn parse_ethernet(ctx: &impl Frame, l3: &mut L3) -> Parsed {
    let Some(eth) = bytes_at::<ETH_HLEN>(ctx, 0) else {
        return Err(PassReason::Unparsed);
    };
    let mut ethertype = be16(eth, ETH_TYPE_OFFSET);
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ethertype) {
            break;
        }
        let Some(tag) = bytes_at::<VLAN_HLEN>(ctx, offset) else {
            return Err(PassReason::Unparsed);
        };
        ethertype = be16(tag, 2);
        offset += VLAN_HLEN;
    }
    // One call site per IP parser: each is inlined, so a second would double the program.
    let (v6, offset) = match ethertype {
        ETH_P_IPV4 => (false, offset),
        ETH_P_IPV6 => (true, offset),
        ETH_P_PPP_SES => pppoe_payload(ctx, offset)?,
        _ => return Err(non_ip_reason(ethertype)),
    };
    if v6 {
        parse_ipv6(ctx, offset, l3)
    } else {
        parse_ipv4(ctx, offset, l3)
    }
}

/// After a PPPoE session header and the PPP protocol field (two bytes, or one
/// compressed): whether the IP packet is IPv6, and where it starts.
#[inline(always)]
fn pppoe_payload(ctx: &impl Frame, offset: usize) -> Result<(bool, usize), PassReason> {
    let Some(ppp) = bytes_at::<{ PPPOE_HLEN + PPP_PROTO_LEN }>(ctx, offset) else {
        return Err(PassReason::Unparsed);
    };
    let (protocol, len) = ppp_protocol(ppp[PPPOE_HLEN], ppp[PPPOE_HLEN + 1]);
    let offset = offset + PPPOE_HLEN + len;
    match protocol {
        PPP_IPV4 => Ok((false, offset)),
        PPP_IPV6 => Ok((true, offset)),
        _ => Err(PassReason::PppControl),
    }
}

/// IPv4 with options (through IHL); lengths are checked against the frame.
#[inline(always)]
fn parse_ipv4(ctx: &impl Frame, offset: usize, l3: &mut L3) -> Parsed {
    let Some(ip) = bytes_at::<IPV4_HLEN>(ctx, offset) else {
        return Err(PassReason::Unparsed);
    };
    let header_len = ipv4_header_len(ip[0]);
    let total_len = be16(ip, 2) as usize;
    let frame_left = (ctx.data_end() - ctx.data()).saturating_sub(offset);
    let malformed = ip_version(ip[0]) != 4
        || header_len < IPV4_HLEN
        || total_len < header_len
        || total_len > frame_left;
    let flags_fragment = be16(ip, 6);
    *l3 = L3 {
        src: v4_addr(ip, 12),
        dst: v4_addr(ip, 16),
        v6: false,
        proto: ip[9],
        l4_offset: offset + header_len,
        l4_len: total_len.saturating_sub(header_len),
        malformed,
        // More-fragments set or a non-zero offset.
        fragment: flags_fragment & IPV4_FRAGMENT_MASK != 0,
        frag_offset: flags_fragment & IPV4_FRAG_OFFSET_MASK,
        frag_id: be16(ip, 4) as u32,
    };
    Ok(())
}

/// IPv6, walking at most `MAX_IPV6_EXT_HEADERS` extension headers.
#[inline(always)]
fn parse_ipv6(ctx: &impl Frame, offset: usize, l3: &mut L3) -> Parsed {
    let Some(ip) = bytes_at::<IPV6_HLEN>(ctx, offset) else {
        return Err(PassReason::Unparsed);
    };
    *l3 = L3 {
        src: v6_addr(ip, 8),
        dst: v6_addr(ip, 24),
        v6: true,
        proto: ip[6],
        l4_offset: offset + IPV6_HLEN,
        l4_len: be16(ip, 4) as usize,
        malformed: false,
        fragment: false,
        frag_offset: 0,
        frag_id: 0,
    };
    let frame_left = (ctx.data_end() - ctx.data()).saturating_sub(l3.l4_offset);
    if ip_version(ip[0]) != 6 || l3.l4_len > frame_left {
        l3.malformed = true;
        return Ok(());
    }
    // Where the fragmentable part starts: just after the fragment header, once one is met.
    let mut fragmentable_at = 0usize;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let kind = l3.proto;
        let Some(ext_len) = step_ipv6_ext_header(ctx, l3) else {
            break;
        };
        if ext_len > l3.l4_len || l3.l4_offset + ext_len > MAX_L4_OFFSET {
            l3.malformed = true;
            return Ok(());
        }
        l3.l4_offset += ext_len;
        l3.l4_len -= ext_len;
        if kind == IPV6_FRAGMENT {
            // RFC 8200 allows one fragment header; a second hides the real offset.
            if fragmentable_at != 0 {
                l3.malformed = true;
                return Ok(());
            }
            fragmentable_at = l3.l4_offset;
            // A later fragment holds data after its fragment header, not headers: its
            // next header names the first header of the fragmentable part.
            if l3.frag_offset != 0 {
                return Ok(());
            }
        }
    }
    // Still an extension header after the bound: the L4 header is out of reach.
    if is_ipv6_ext_header(l3.proto) {
        l3.malformed = true;
    }
    // Fragment offsets count from the fragmentable part; the overlap guard of later
    // fragments holds only if the L4 header starts it, and a later fragment names only
    // that part's first header, so a first fragment with headers before its L4 header is
    // malformed.
    if l3.fragment && fragmentable_at != l3.l4_offset {
        l3.malformed = true;
    }
    Ok(())
}

/// The length of the extension header at `l3.l4_offset`, moving `l3.proto` on to the
/// header after it; `None` once the next header is not an extension header, or the
/// extension header is cut short (then `l3.malformed` is set).
#[inline(always)]
fn step_ipv6_ext_header(ctx: &impl Frame, l3: &mut L3) -> Option<usize> {
    if !is_ipv6_ext_header(l3.proto) {
        return None;
    }
    let ext = match bytes_at::<IPV6_EXT_MIN_LEN>(ctx, l3.l4_offset) {
        Some(ext) if l3.l4_len >= IPV6_EXT_MIN_LEN => ext,
        _ => {
            l3.malformed = true;
            return None;
        }
    };
    if l3.proto == IPV6_FRAGMENT {
        let field = be16(ext, 2);
        if field & IPV6_FRAGMENT_MASK != 0 {
            l3.fragment = true;
            l3.frag_offset = field >> 3;
            l3.frag_id = u32::from_be_bytes([ext[4], ext[5], ext[6], ext[7]]);
        }
    }
    let len = ipv6_ext_header_len(l3.proto, ext[1]);
    l3.proto = ext[0];
    Some(len)
}

pub struct L4 {
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
}

impl L4 {
    /// A SYN without ACK opens a connection; it is never a reply.
    #[inline(always)]
    pub fn bare_syn(&self) -> bool {
        is_bare_syn(self.flags)
    }
}

/// TCP: ports and flags, with the data offset checked against the IP payload.
#[inline(always)]
pub fn parse_tcp(ctx: &impl Frame, offset: usize, l4_len: usize) -> Option<L4> {
    if offset > MAX_L4_OFFSET || l4_len < TCP_HLEN {
        return None;
    }
    let tcp = bytes_at::<TCP_HLEN>(ctx, offset)?;
    let data_offset = tcp_header_len(tcp[12]);
    if data_offset < TCP_HLEN || data_offset > l4_len {
        return None;
    }
    Some(L4 {
        sport: be16(tcp, 0),
        dport: be16(tcp, 2),
        flags: tcp[13],
    })
}

/// UDP: ports, with the UDP length checked against the IP payload when the datagram is
/// `whole` (a first fragment holds only part of it).
#[inline(always)]
pub fn parse_udp(ctx: &impl Frame, offset: usize, l4_len: usize, whole: bool) -> Option<L4> {
    if offset > MAX_L4_OFFSET || l4_len < UDP_HLEN {
        return None;
    }
    let udp = bytes_at::<UDP_HLEN>(ctx, offset)?;
    let udp_len = be16(udp, 4) as usize;
    if udp_len < UDP_HLEN || (whole && udp_len > l4_len) {
        return None;
    }
    Some(L4 {
        sport: be16(udp, 0),
        dport: be16(udp, 2),
        flags: 0,
    })
}

/// The ICMP or ICMPv6 type and code.
#[inline(always)]
pub fn parse_icmp(ctx: &impl Frame, offset: usize, l4_len: usize) -> Option<(u8, u8)> {
    if offset > MAX_L4_OFFSET || l4_len < ICMP_HLEN {
        return None;
    }
    let icmp = bytes_at::<ICMP_HLEN>(ctx, offset)?;
    Some((icmp[0], icmp[1]))
}

/// The packet an ICMP error quotes: its addresses, protocol and ports.
pub struct Quoted {
    pub src: Addr,
    pub dst: Addr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

/// The TCP or UDP packet quoted after the 8-byte ICMP header at `offset`; `None` when the
/// quote is cut short, of another family, or not TCP/UDP straight after the IP header.
#[inline(always)]
pub fn parse_quoted(ctx: &impl Frame, offset: usize, l4_len: usize, v6: bool) -> Option<Quoted> {
    let inner = offset + ICMP_HLEN;
    if inner > MAX_L4_OFFSET {
        return None;
    }
    let (src, dst, proto, ports_at, header_len) = if v6 {
        let ip = bytes_at::<IPV6_HLEN>(ctx, inner)?;
        if ip_version(ip[0]) != 6 {
            return None;
        }
        (
            v6_addr(ip, 8),
            v6_addr(ip, 24),
            ip[6],
            inner + IPV6_HLEN,
            IPV6_HLEN,
        )
    } else {
        let ip = bytes_at::<IPV4_HLEN>(ctx, inner)?;
        let header_len = ipv4_header_len(ip[0]);
        // A quoted fragment other than the first carries no ports.
        if ip_version(ip[0]) != 4
            || header_len < IPV4_HLEN
            || be16(ip, 6) & IPV4_FRAG_OFFSET_MASK != 0
        {
            return None;
        }
        (
            v4_addr(ip, 12),
            v4_addr(ip, 16),
            ip[9],
            inner + header_len,
            header_len,
        )
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    // The quote must hold the ports within what the outer header vouches for.
    if ICMP_HLEN + header_len + 4 > l4_len || ports_at > MAX_QUOTED_PORTS_OFFSET {
        return None;
    }
    let ports = bytes_at::<4>(ctx, ports_at)?;
    Some(Quoted {
        src,
        dst,
        proto,
        sport: be16(ports, 0),
        dport: be16(ports, 2),
    })
}
