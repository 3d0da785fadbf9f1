//! Header layouts as they appear on the wire: Ethernet and VLAN tags, the IPv4 and IPv6
//! headers and the IPv6 extension headers, IP protocol numbers, TCP flags, and the bounds
//! the parsers keep to. The kernel's parser and the reference model's read frames with
//! these, so both agree on where every header starts and ends.

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
