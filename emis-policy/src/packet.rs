//! Builds Ethernet frames from a flow description, with VLAN tags, PPPoE or an MPLS label
//! stack between Ethernet and IP, or bare IP packets for devices without a link header:
//! what `emis explain` judges, and what the kernel tests and the benchmark feed to the
//! program.

use std::net::IpAddr;

use emis_common::{
    ETH_P_IPV4, ETH_P_IPV6, ETH_P_MPLS_UC, ETH_P_PPP_SES, ICMPV6_ECHO_REQUEST, ICMP_ECHO_REQUEST,
    IPV6_AUTH, IPV6_FRAGMENT, PPP_IPV4, PPP_IPV6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};
/// The TCP flags a [`PacketSpec`] may carry, as the kernel reads them.
pub use emis_common::{TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN};

/// One packet to build. Defaults: no VLAN tags, no IP options, TCP flags SYN, 0 payload bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketSpec {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, anything else).
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    /// TCP sequence and acknowledgement numbers (defaults 1 and 0).
    pub seq: u32,
    pub ack: u32,
    /// Outer to inner (802.1ad then 802.1Q for QinQ): (TPID, VLAN id).
    pub vlans: Vec<(u16, u16)>,
    /// IPv4 option bytes, padded to a multiple of 4 with end-of-list.
    pub ipv4_options: Vec<u8>,
    /// IPv6 extension headers before the L4 header: (header type, length in bytes, rounded
    /// up to the header's unit: 8 bytes, 4 for AH; a fragment header is always 8).
    pub ipv6_ext: Vec<(u8, usize)>,
    pub payload_len: usize,
    /// Fragment offset in 8-byte units and the more-fragments flag: in the IPv4 header, or in
    /// the first IPv6 fragment header (type 44) of `ipv6_ext`.
    pub frag_offset: u16,
    pub more_fragments: bool,
    /// For ICMP and ICMPv6: type, code and the body after the 8-byte header (an error's quote).
    /// `None` builds an echo request.
    pub icmp: Option<(u8, u8, Vec<u8>)>,
    /// A PPPoE session header and PPP protocol field between the VLAN tags and IP.
    pub pppoe: bool,
    /// MPLS labels between the VLAN tags and IP, outer first (EtherType 0x8847).
    pub mpls_labels: Vec<u32>,
}

impl PacketSpec {
    pub fn new(src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16) -> Self {
        Self {
            src,
            dst,
            proto,
            sport,
            dport,
            tcp_flags: TCP_SYN,
            seq: 1,
            ack: 0,
            vlans: vec![],
            ipv4_options: vec![],
            ipv6_ext: vec![],
            payload_len: 0,
            frag_offset: 0,
            more_fragments: false,
            icmp: None,
            pppoe: false,
            mpls_labels: vec![],
        }
    }

    pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Self {
        Self {
            tcp_flags: flags,
            ..Self::new(src, dst, PROTO_TCP, sport, dport)
        }
    }

    pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Self {
        Self::new(src, dst, PROTO_UDP, sport, dport)
    }

    /// Echo request for the address family of `src`.
    pub fn icmp_echo(src: IpAddr, dst: IpAddr) -> Self {
        let proto = if src.is_ipv4() {
            PROTO_ICMP
        } else {
            PROTO_ICMPV6
        };
        Self::new(src, dst, proto, 0, 0)
    }

    pub fn with_vlans(mut self, vlans: &[(u16, u16)]) -> Self {
        self.vlans = vlans.to_vec();
        self
    }

    /// Carried in a PPPoE session (`pppoe`).
    pub fn in_pppoe(mut self) -> Self {
        self.pppoe = true;
        self
    }

    /// The Ethernet frame.
    pub fn build(&self) -> Vec<u8> {
        let ip = self.build_ip();
        let mut frame = Vec::with_capacity(64 + ip.len());
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // destination MAC
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // source MAC
        for &(tpid, vid) in &self.vlans {
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        }
        if !self.mpls_labels.is_empty() {
            frame.extend_from_slice(&ETH_P_MPLS_UC.to_be_bytes());
            for (i, &label) in self.mpls_labels.iter().enumerate() {
                let bottom = u32::from(i + 1 == self.mpls_labels.len());
                let entry = (label << 12) | (bottom << 8) | 64;
                frame.extend_from_slice(&entry.to_be_bytes());
            }
        } else if self.pppoe {
            frame.extend_from_slice(&ETH_P_PPP_SES.to_be_bytes());
            // Version 1, type 1, code 0 (session data), session 0x0001, then the length
            // of the PPP frame: protocol field and IP packet.
            frame.extend_from_slice(&[0x11, 0x00, 0x00, 0x01]);
            frame.extend_from_slice(&((2 + ip.len()) as u16).to_be_bytes());
            let protocol = if self.src.is_ipv4() {
                PPP_IPV4
            } else {
                PPP_IPV6
            };
            frame.extend_from_slice(&protocol.to_be_bytes());
        } else {
            let ethertype = if self.src.is_ipv4() {
                ETH_P_IPV4
            } else {
                ETH_P_IPV6
            };
            frame.extend_from_slice(&ethertype.to_be_bytes());
        }
        frame.extend_from_slice(&ip);
        frame
    }

    /// The IP packet alone: what a device without a link header (tun, wireguard, PPP,
    /// ipip, sit) hands to XDP.
    pub fn build_ip(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let mut frame = Vec::with_capacity(64 + l4.len());
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut options = self.ipv4_options.clone();
                while !options.len().is_multiple_of(4) {
                    options.push(0);
                }
                let header_len = 20 + options.len();
                let total = (header_len + l4.len()) as u16;
                let mut ip = vec![0u8; 20];
                ip[0] = 0x40 | (header_len / 4) as u8;
                ip[2..4].copy_from_slice(&total.to_be_bytes());
                ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
                let frag =
                    (self.frag_offset & 0x1fff) | if self.more_fragments { 0x2000 } else { 0 };
                let frag = if frag == 0 { 0x4000 } else { frag }; // don't fragment when whole
                ip[6..8].copy_from_slice(&frag.to_be_bytes());
                ip[8] = 64;
                ip[9] = self.proto;
                ip[12..16].copy_from_slice(&src.octets());
                ip[16..20].copy_from_slice(&dst.octets());
                ip.extend_from_slice(&options);
                let sum = checksum(&ip);
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                frame.extend_from_slice(&ip);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let mut ext = Vec::new();
                for (i, &(kind, len)) in self.ipv6_ext.iter().enumerate() {
                    let next = self.ipv6_ext.get(i + 1).map_or(self.proto, |&(k, _)| k);
                    let mut header = ipv6_ext_header(kind, next, len);
                    if kind == IPV6_FRAGMENT {
                        let field = (self.frag_offset << 3) | u16::from(self.more_fragments);
                        header[2..4].copy_from_slice(&field.to_be_bytes());
                    }
                    ext.extend_from_slice(&header);
                }
                let ext_len = ext.len();
                let mut ip = vec![0u8; 40];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&((ext_len + l4.len()) as u16).to_be_bytes());
                ip[6] = self.ipv6_ext.first().map_or(self.proto, |&(kind, _)| kind);
                ip[7] = 64;
                ip[8..24].copy_from_slice(&src.octets());
                ip[24..40].copy_from_slice(&dst.octets());
                frame.extend_from_slice(&ip);
                frame.extend_from_slice(&ext);
            }
            _ => panic!("source and destination must be of one address family"),
        }
        frame.extend_from_slice(&l4);
        frame
    }

    fn l4_bytes(&self) -> Vec<u8> {
        let payload = vec![0xabu8; self.payload_len];
        let mut l4 = match self.proto {
            PROTO_TCP => {
                let mut tcp = vec![0u8; 20];
                tcp[0..2].copy_from_slice(&self.sport.to_be_bytes());
                tcp[2..4].copy_from_slice(&self.dport.to_be_bytes());
                tcp[4..8].copy_from_slice(&self.seq.to_be_bytes());
                tcp[8..12].copy_from_slice(&self.ack.to_be_bytes());
                tcp[12] = 5 << 4;
                tcp[13] = self.tcp_flags;
                tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
                tcp
            }
            PROTO_UDP => {
                let mut udp = vec![0u8; 8];
                udp[0..2].copy_from_slice(&self.sport.to_be_bytes());
                udp[2..4].copy_from_slice(&self.dport.to_be_bytes());
                udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                udp
            }
            PROTO_ICMP | PROTO_ICMPV6 => match &self.icmp {
                // Errors carry a next-hop MTU of 1280 where the type has one; the rest ignore it.
                Some((kind, code, body)) => {
                    let mut icmp = vec![*kind, *code, 0, 0, 0, 0, 0x05, 0x00];
                    icmp.extend_from_slice(body);
                    icmp
                }
                None if self.proto == PROTO_ICMP => vec![ICMP_ECHO_REQUEST, 0, 0, 0, 0, 1, 0, 1],
                None => vec![ICMPV6_ECHO_REQUEST, 0, 0, 0, 0, 1, 0, 1],
            },
            _ => vec![0u8; 8],
        };
        l4.extend_from_slice(&payload);
        l4
    }
}

/// An IPv6 extension header of `kind` and total `len` bytes (rounded to its unit).
fn ipv6_ext_header(kind: u8, next: u8, len: usize) -> Vec<u8> {
    let (unit, bias) = if kind == IPV6_AUTH { (4, 2) } else { (8, 1) };
    let len = if kind == IPV6_FRAGMENT {
        8
    } else {
        len.max(8).div_ceil(unit) * unit
    };
    let mut header = vec![0u8; len];
    header[0] = next;
    if kind != IPV6_FRAGMENT {
        header[1] = (len / unit - bias) as u8;
    }
    header
}

/// The Internet checksum of `bytes`.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            (chunk[0] as u16) << 8
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{parse, parse_link, Frame};
    use emis_common::Link;

    #[test]
    fn built_frames_parse_back() {
        let src: IpAddr = "192.168.10.2".parse().unwrap();
        let dst: IpAddr = "10.207.116.10".parse().unwrap();
        let mut p = PacketSpec::tcp(src, dst, 40000, 443, TCP_SYN)
            .with_vlans(&[(0x88a8, 10), (0x8100, 20)]);
        p.ipv4_options = vec![1, 1, 1];
        let Frame::Ip(facts) = parse(&p.build()) else {
            panic!()
        };
        assert!(!facts.malformed && !facts.fragment);
        let l4 = facts.l4.unwrap();
        assert_eq!((l4.sport, l4.dport, l4.bare_syn()), (40000, 443, true));
        let frame = p.build();
        assert_eq!(checksum(&frame[22..46]), 0, "IPv4 header checksum verifies");
        assert_eq!(
            &frame[22..],
            &p.build_ip()[..],
            "the frame ends in the IP packet"
        );
        assert_eq!(parse_link(Link::Ip, &p.build_ip()), parse(&frame));

        let pppoe = p.clone().in_pppoe();
        let frame = pppoe.build();
        assert_eq!(&frame[20..22], &[0x88, 0x64]);
        assert_eq!(
            u16::from_be_bytes([frame[26], frame[27]]) as usize,
            frame.len() - 28
        );
        assert_eq!(
            parse(&frame),
            parse(&p.build()),
            "PPPoE carries the same packet"
        );

        let mut p6 = PacketSpec::udp(
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            1,
            2,
        );
        p6.ipv6_ext = vec![(0, 8), (60, 24), (43, 16)];
        let Frame::Ip(facts) = parse(&p6.build()) else {
            panic!()
        };
        assert_eq!(facts.l4.map(|l| l.dport), Some(2));
        p6.ipv6_ext = vec![(60, 8); 7];
        let Frame::Ip(facts) = parse(&p6.build()) else {
            panic!()
        };
        assert!(facts.malformed, "past the extension-header bound");
    }
}
