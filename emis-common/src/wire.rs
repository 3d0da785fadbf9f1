//! Header layouts as they appear on the wire: the link a program starts at (Ethernet or
//! bare IP), Ethernet and VLAN tags, PPPoE, the EtherType classes of frames that are not
//! IP, the IPv4 and IPv6 headers and the IPv6 extension headers, IP protocol numbers, TCP
//! flags, and the bounds the parsers keep to. The kernel's parser and the reference
//! model's read frames with these, so both agree on where every header starts and ends.

use crate::decision::PassReason;

/// An Ethernet header without VLAN tags.
pub const ETH_HLEN: usize = 14;
/// Offset of the EtherType within the Ethernet header.
pub const ETH_TYPE_OFFSET: usize = 12;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
/// An 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// An 802.1ad service tag (the outer tag of QinQ).
pub const ETH_P_8021AD: u16 = 0x88a8;
/// One VLAN tag: TPID and TCI; the EtherType after it is at offset 2.
pub const VLAN_HLEN: usize = 4;
/// VLAN tags read before the EtherType; a frame with more is not IP to the program.
pub const MAX_VLAN_TAGS: usize = 2;

/// Whether `ethertype` announces a VLAN tag.
#[inline(always)]
pub const fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

/// What the frame handed to a program starts with.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Link {
    /// An Ethernet header (ARPHRD_ETHER): the `emis` program.
    Ethernet = 0,
    /// The IP header itself, on devices without a link header (tun, wireguard, PPP) or
    /// whose receive path resets it to the inner IP header (ipip, ip6tnl, sit): the
    /// `emis_l3` program.
    Ip = 1,
}

/// Name of the XDP program for devices without a link header ([`Link::Ip`]).
pub const PROGRAM_NAME_L3: &str = "emis_l3";

/// Pre-standard QinQ outer tags (0x9100, 0x9200, 0x9300): no Linux VLAN device reads them.
pub const ETH_P_QINQ1: u16 = 0x9100;
pub const ETH_P_QINQ2: u16 = 0x9200;
pub const ETH_P_QINQ3: u16 = 0x9300;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_RARP: u16 = 0x8035;
/// LLDP, 802.1X (EAPOL), slow protocols (LACP), PTP, MACsec key agreement and the 802.3
/// length-field frames (STP and other LLC): protocols of the link itself.
pub const ETH_P_LLDP: u16 = 0x88cc;
pub const ETH_P_PAE: u16 = 0x888e;
pub const ETH_P_SLOW: u16 = 0x8809;
pub const ETH_P_1588: u16 = 0x88f7;
/// EtherType values below this are 802.3 lengths (LLC frames such as STP).
pub const ETH_P_802_3_MIN: u16 = 0x0600;
pub const ETH_P_MPLS_UC: u16 = 0x8847;
pub const ETH_P_MPLS_MC: u16 = 0x8848;
/// PPPoE discovery (PADI, PADO, PADR, PADS, PADT).
pub const ETH_P_PPP_DISC: u16 = 0x8863;
/// PPPoE session: a PPPoE header, then a PPP frame.
pub const ETH_P_PPP_SES: u16 = 0x8864;
/// The PPPoE session header: version and type, code, session id, length.
pub const PPPOE_HLEN: usize = 6;
/// The PPP protocol field after it: two bytes, or one when compressed (an odd first byte).
pub const PPP_PROTO_LEN: usize = 2;
pub const PPP_IPV4: u16 = 0x0021;
pub const PPP_IPV6: u16 = 0x0057;

/// The PPP protocol number at the start of a PPP frame whose first bytes are `b0 b1`, and
/// the length of the field: a compressed field (RFC 1661 protocol-field compression) is
/// one byte, recognisable by its odd value.
#[inline(always)]
pub const fn ppp_protocol(b0: u8, b1: u8) -> (u16, usize) {
    if b0 & 1 == 1 {
        (b0 as u16, 1)
    } else {
        (((b0 as u16) << 8) | b1 as u16, 2)
    }
}

/// Why a frame that is not IP to the program passes: its EtherType's class (see
/// DECISIONS.md). `ethertype` is the one after at most [`MAX_VLAN_TAGS`] tags.
#[inline(always)]
pub const fn non_ip_reason(ethertype: u16) -> PassReason {
    match ethertype {
        ETH_P_ARP | ETH_P_RARP => PassReason::Arp,
        ETH_P_LLDP | ETH_P_PAE | ETH_P_SLOW | ETH_P_1588 => PassReason::LinkLocal,
        t if t < ETH_P_802_3_MIN => PassReason::LinkLocal,
        ETH_P_PPP_DISC => PassReason::PppoeDiscovery,
        ETH_P_MPLS_UC | ETH_P_MPLS_MC => PassReason::Mpls,
        ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ1 | ETH_P_QINQ2 | ETH_P_QINQ3 => {
            PassReason::VlanTooDeep
        }
        _ => PassReason::NonIp,
    }
}

/// An IPv4 header without options.
pub const IPV4_HLEN: usize = 20;
/// An IPv6 header.
pub const IPV6_HLEN: usize = 40;

/// The IP version in the first byte of an IP header.
#[inline(always)]
pub const fn ip_version(first: u8) -> u8 {
    first >> 4
}

/// The IPv4 header length, options included, from its first byte (IHL in 4-byte words).
#[inline(always)]
pub const fn ipv4_header_len(first: u8) -> usize {
    ((first & 0x0f) as usize) * 4
}

/// In the IPv4 flags-and-fragment-offset field: more-fragments or a non-zero offset.
pub const IPV4_FRAGMENT_MASK: u16 = 0x3fff;
/// In the IPv4 flags-and-fragment-offset field: the offset, in 8-byte units.
pub const IPV4_FRAG_OFFSET_MASK: u16 = 0x1fff;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// IPv6 extension headers (next-header numbers) the parsers walk.
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_AUTH: u8 = 51;
pub const IPV6_DEST_OPTS: u8 = 60;
/// The fixed part of every extension header, and the whole of a fragment header.
pub const IPV6_EXT_MIN_LEN: usize = 8;
/// IPv6 extension headers walked before an in-scope packet is denied as malformed.
pub const MAX_IPV6_EXT_HEADERS: u32 = 6;
/// In a fragment header's offset-and-flags field: a non-zero offset or more-fragments.
/// With both clear the fragment is atomic: the whole datagram.
pub const IPV6_FRAGMENT_MASK: u16 = 0xfff9;

/// Whether the next header `next` is an extension header the parsers walk.
#[inline(always)]
pub const fn is_ipv6_ext_header(next: u8) -> bool {
    matches!(
        next,
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_AUTH | IPV6_DEST_OPTS
    )
}

/// The length in bytes of extension header `kind` whose length field (its second byte)
/// is `len_field`: AH counts 4-byte words less two, the others 8-byte units less one, and
/// a fragment header is always 8 bytes.
#[inline(always)]
pub const fn ipv6_ext_header_len(kind: u8, len_field: u8) -> usize {
    match kind {
        IPV6_FRAGMENT => IPV6_EXT_MIN_LEN,
        IPV6_AUTH => (len_field as usize + 2) * 4,
        _ => (len_field as usize + 1) * 8,
    }
}

/// No L4 header is read further into the frame than this; it keeps offsets bounded for the verifier.
pub const MAX_L4_OFFSET: usize = 1024;
/// The ports of a packet an ICMP error quotes are read no further in than this.
pub const MAX_QUOTED_PORTS_OFFSET: usize = MAX_L4_OFFSET + 64;

/// A TCP header without options.
pub const TCP_HLEN: usize = 20;
/// A UDP header.
pub const UDP_HLEN: usize = 8;
/// An ICMP or ICMPv6 header: type, code, checksum and four bytes the type defines.
pub const ICMP_HLEN: usize = 8;

/// The TCP header length, options included, from its data-offset byte (offset 12).
#[inline(always)]
pub const fn tcp_header_len(data_offset_byte: u8) -> usize {
    ((data_offset_byte >> 4) as usize) * 4
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// A SYN without ACK opens a connection; it is never a reply.
#[inline(always)]
pub const fn is_bare_syn(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// FIN or RST: the connection is closing.
#[inline(always)]
pub const fn is_closing(flags: u8) -> bool {
    flags & (TCP_FIN | TCP_RST) != 0
}
