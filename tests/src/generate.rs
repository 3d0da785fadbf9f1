//! Structured random frames: valid packets drawn from the addresses and ports the policy
//! cares about, then sometimes truncated or mutated, from a seed so failures replay.

use std::net::IpAddr;

use emis_common::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use emis_policy::packet::PacketSpec;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Addresses on and around every boundary of the embedded spec and the test site.
const V4: &[&str] = &[
    "192.168.10.2",
    "192.168.10.5",
    "192.168.10.200",
    "192.168.20.7",
    "192.168.30.1",
    "10.207.112.0",
    "10.207.115.255",
    "10.207.116.10",
    "10.207.119.255",
    "10.207.111.255",
    "10.207.120.0",
    "194.189.117.64",
    "194.189.117.127",
    "194.189.117.63",
    "194.189.117.128",
    "185.13.72.10",
    "185.13.75.255",
    "185.13.76.0",
    "149.11.42.48",
    "149.11.42.55",
    "149.11.42.56",
    "3.8.0.1",
    "18.130.5.5",
    "52.95.1.1",
    "198.51.100.10",
    "8.8.8.8",
    "0.0.0.0",
    "255.255.255.255",
];
const SITE_V4: &[&str] = &[
    "192.168.10.2",
    "192.168.10.5",
    "192.168.10.200",
    "192.168.20.7",
];
const RULE_FLOWS: &[(&str, u8, u16)] = &[
    ("10.207.116.10", PROTO_TCP, 443),
    ("10.207.112.10", PROTO_TCP, 80),
    ("185.13.72.10", PROTO_TCP, 8080),
    ("185.13.72.10", PROTO_TCP, 443),
    ("149.11.42.50", PROTO_TCP, 443),
    ("10.207.116.10", PROTO_TCP, 33962),
    ("10.207.116.10", PROTO_TCP, 33972),
    ("10.207.116.10", PROTO_TCP, 33957),
    ("3.8.0.1", PROTO_TCP, 443),
    ("192.168.20.7", PROTO_UDP, 8090),
    ("192.168.20.7", PROTO_TCP, 8221),
];
const V6: &[&str] = &[
    "2001:db8:10::2",
    "2001:db8:11::2",
    "2a05:d01c::1",
    "2a05:d01d::1",
    "::1",
    "fe80::1",
];
const PORTS: &[u16] = &[
    0, 1, 22, 53, 79, 80, 81, 443, 444, 3389, 5900, 8080, 8087, 8088, 8090, 8092, 8093, 8221,
    33953, 33956, 33957, 33962, 33963, 33964, 33966, 33969, 33972, 40000, 65535,
];

pub struct Generator {
    rng: StdRng,
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.random_range(0..items.len())]
    }

    fn port(&mut self) -> u16 {
        if self.rng.random_bool(0.8) {
            *self.pick(PORTS)
        } else {
            self.rng.random()
        }
    }

    /// A well-formed packet.
    pub fn packet(&mut self) -> PacketSpec {
        let v6 = self.rng.random_bool(0.2);
        let pool = if v6 { V6 } else { V4 };
        let (mut src, mut dst): (IpAddr, IpAddr) = (
            self.pick(pool).parse().unwrap(),
            self.pick(pool).parse().unwrap(),
        );
        if !v6 && self.rng.random_bool(0.6) {
            // A site host talking to a remote one, either way: where the rules are.
            src = self.pick(SITE_V4).parse().unwrap();
            dst = self.pick(V4).parse().unwrap();
            if self.rng.random_bool(0.4) {
                std::mem::swap(&mut src, &mut dst);
            }
        }
        let proto = match self.rng.random_range(0..10) {
            0..=4 => PROTO_TCP,
            5..=7 => PROTO_UDP,
            8 => {
                if v6 {
                    PROTO_ICMPV6
                } else {
                    PROTO_ICMP
                }
            }
            _ => *self.pick(&[47u8, 50, 4, 132, 41, 0, 255]),
        };
        let (mut sport, mut dport) = (self.port(), self.port());
        if self.rng.random_bool(0.3) {
            sport = self.rng.random_range(32768..61000);
        }
        if self.rng.random_bool(0.3) {
            std::mem::swap(&mut sport, &mut dport);
        }
        let mut p = PacketSpec::new(src, dst, proto, sport, dport);
        if !v6 && self.rng.random_bool(0.3) {
            // A flow some rule of the embedded spec allows, forward or as a reply.
            p = self.rule_flow();
            if self.rng.random_bool(0.4) {
                std::mem::swap(&mut p.src, &mut p.dst);
                std::mem::swap(&mut p.sport, &mut p.dport);
            }
        }
        p.tcp_flags = self.rng.random::<u8>() & 0x3f;
        if self.rng.random_bool(0.5) {
            p.tcp_flags = *self.pick(&[0x02u8, 0x12, 0x10, 0x18, 0x11, 0x04]);
        }
        let tags = *self.pick(&[0usize, 0, 0, 1, 2, 3]);
        for _ in 0..tags {
            let tpid = *self.pick(&[0x8100u16, 0x88a8]);
            let vid = self.rng.random_range(0..4096);
            p.vlans.push((tpid, vid));
        }
        if !v6 && self.rng.random_bool(0.2) {
            let len = self.rng.random_range(0..=40);
            p.ipv4_options = (0..len).map(|_| self.rng.random()).collect();
        }
        if v6 && self.rng.random_bool(0.4) {
            let count = self.rng.random_range(0..=8);
            for _ in 0..count {
                let kind = *self.pick(&[0u8, 43, 44, 51, 60]);
                let len = self.rng.random_range(8..=64);
                p.ipv6_ext.push((kind, len));
            }
        }
        if self.rng.random_bool(0.1) {
            p.frag_offset = self.rng.random_range(0..3);
            p.more_fragments = self.rng.random_bool(0.5);
        }
        p.payload_len = self.rng.random_range(0..64);
        p
    }

    /// A packet from the site to a flow of [`RULE_FLOWS`], from a random client port; the
    /// streaming ports are the clinical server's.
    fn rule_flow(&mut self) -> PacketSpec {
        let &(remote, proto, port) = self.pick(RULE_FLOWS);
        let site = if port == 33953 || port == 33957 {
            "192.168.10.5"
        } else {
            "192.168.10.2"
        };
        let client_port = self.rng.random_range(1024..65535);
        PacketSpec::new(
            site.parse().unwrap(),
            remote.parse().unwrap(),
            proto,
            client_port,
            port,
        )
    }

    /// A frame: usually whole, sometimes truncated, sometimes with bytes changed.
    pub fn frame(&mut self) -> Vec<u8> {
        let mut frame = self.packet().build();
        match self.rng.random_range(0..10) {
            0 => {
                let len = self.rng.random_range(14..=frame.len());
                frame.truncate(len);
            }
            1 | 2 => {
                for _ in 0..self.rng.random_range(1..4) {
                    let at = self.rng.random_range(12..frame.len());
                    frame[at] = self.rng.random();
                }
            }
            3 => {
                // Padding after the IP datagram, as short Ethernet frames carry.
                let pad = self.rng.random_range(1..32);
                frame.extend(std::iter::repeat_n(0, pad));
            }
            _ => {}
        }
        frame
    }
}

/// One flow of a conversation: who opened it, to where, and how.
#[derive(Clone, Debug)]
struct Conversation {
    client: IpAddr,
    server: IpAddr,
    proto: u8,
    client_port: u16,
    server_port: u16,
    next_frag_id: u16,
    /// TCP: the next sequence number each side sends.
    client_next: u32,
    server_next: u32,
}

/// Sequences of packets that exercise state: handshakes, data both ways, FIN and RST with
/// the sequence numbers a real conversation carries (and some RSTs, FINs and ACKs far off
/// the window, as a blind attacker sends them),
/// replies without a forward packet, fragmented datagrams (in and out of order), and ICMP
/// errors quoting real and invented flows, interleaved with the random frames of
/// [`Generator::frame`].
pub struct Conversations {
    generator: Generator,
    flows: Vec<Conversation>,
    /// Frames built but not yet handed out (the rest of a fragmented datagram).
    pending: Vec<Vec<u8>>,
}

impl Conversations {
    /// `flows` distinct flows are cycled through, so the flow tables never fill.
    pub fn new(seed: u64, flows: usize) -> Self {
        let mut generator = Generator::new(seed);
        let flows = (0..flows)
            .map(|_| {
                let mut p = generator.packet();
                if !matches!(p.proto, PROTO_TCP | PROTO_UDP) || generator.rng.random_bool(0.6) {
                    // Mostly flows a rule names, so replies and fragments have something to follow.
                    p = generator.rule_flow();
                    if generator.rng.random_bool(0.15) {
                        // The other way round: something no rule opens from that side.
                        std::mem::swap(&mut p.src, &mut p.dst);
                    }
                }
                Conversation {
                    client: p.src,
                    server: p.dst,
                    proto: p.proto,
                    client_port: generator.rng.random_range(1024..65535),
                    server_port: p.dport,
                    next_frag_id: generator.rng.random(),
                    client_next: generator.rng.random(),
                    server_next: generator.rng.random(),
                }
            })
            .collect();
        Conversations {
            generator,
            flows,
            pending: Vec::new(),
        }
    }

    pub fn frame(&mut self) -> Vec<u8> {
        if let Some(frame) = self.pending.pop() {
            return frame;
        }
        if self.generator.rng.random_bool(0.2) {
            return self.generator.frame();
        }
        let rng = &mut self.generator.rng;
        let index = rng.random_range(0..self.flows.len());
        let flow = self.flows[index].clone();
        let from_client = rng.random_bool(0.55);
        let (src, dst, sport, dport) = if from_client {
            (flow.client, flow.server, flow.client_port, flow.server_port)
        } else {
            (flow.server, flow.client, flow.server_port, flow.client_port)
        };
        let mut p = PacketSpec::new(src, dst, flow.proto, sport, dport);
        p.tcp_flags = match (from_client, rng.random_range(0..10)) {
            (true, 0..=2) => 0x02,  // SYN
            (false, 0..=2) => 0x12, // SYN-ACK
            (_, 3..=6) => 0x18,     // data
            (_, 7) => 0x11,         // FIN-ACK
            (_, 8) => 0x04,         // RST
            _ => 0x10,              // ACK
        };
        p.payload_len = rng.random_range(0..200);
        // PPPoE sessions, as on a broadband WAN: the same packet one header further in.
        p.pppoe = rng.random_bool(0.1);
        self.sequence(&mut p, index, from_client);
        match self.generator.rng.random_range(0..20) {
            0 | 1 => self.fragmented(p, index),
            2 => self.icmp_error(p, false),
            3 => self.icmp_error(p, true),
            _ => p.build(),
        }
    }

    /// Sequence and acknowledgement numbers as the sending side of flow `index` would put
    /// them: a SYN starts its side afresh, data and FIN advance it; now and then a number
    /// far off, as a blind attacker or a stale segment carries.
    fn sequence(&mut self, p: &mut PacketSpec, index: usize, from_client: bool) {
        let rng = &mut self.generator.rng;
        let flow = &mut self.flows[index];
        let (own, other) = if from_client {
            (&mut flow.client_next, flow.server_next)
        } else {
            (&mut flow.server_next, flow.client_next)
        };
        if p.tcp_flags & 0x02 != 0 {
            *own = rng.random();
        }
        p.seq = *own;
        p.ack = if p.tcp_flags & 0x10 != 0 { other } else { 0 };
        let mut advance = p.payload_len as u32;
        if p.tcp_flags & 0x03 != 0 {
            advance += 1;
        }
        if p.tcp_flags & 0x04 != 0 && rng.random_bool(0.5) {
            // A RST outside the window (or, rarely, just inside it).
            p.seq = if rng.random_bool(0.1) {
                own.wrapping_sub(rng.random_range(0..4))
            } else {
                rng.random()
            };
            return;
        }
        if rng.random_bool(0.05) {
            p.seq = rng.random();
            p.ack = rng.random();
            return;
        }
        *own = own.wrapping_add(advance);
    }

    /// The datagram cut in two or three fragments; the rest are handed out next, sometimes
    /// before the first.
    fn fragmented(&mut self, mut p: PacketSpec, index: usize) -> Vec<u8> {
        // Two identifications per flow keep the fragment table (16,384 entries) from filling,
        // so the kernel's LRU never evicts what the model remembers.
        let id = self.flows[index].next_frag_id;
        self.flows[index].next_frag_id = id ^ 1;
        p.payload_len = 64;
        let whole = p.build();
        let v6 = p.src.is_ipv6();
        let l3_at = 14;
        let ip_header = if v6 { 40 } else { 20 };
        let payload = &whole[l3_at + ip_header..];
        // Offsets in 8-byte units; 1 and 2 overlap a TCP header.
        let cut = *self.generator.pick(&[1usize, 2, 3, 4, 5]) * 8;
        let cut = cut.min(payload.len() - 8);
        let mut parts = vec![
            (0usize, &payload[..cut], true),
            (cut, &payload[cut..], false),
        ];
        if self.generator.rng.random_bool(0.2) {
            parts.remove(0);
        }
        let mut frames: Vec<Vec<u8>> = parts
            .into_iter()
            .map(|(offset, data, more)| fragment_frame(&whole, v6, id as u32, offset, data, more))
            .collect();
        if self.generator.rng.random_bool(0.3) {
            frames.reverse();
        }
        let first = frames.remove(0);
        // Handed out in order: pending is a stack.
        frames.reverse();
        self.pending.extend(frames);
        first
    }

    /// An ICMP error about `p`, sent back to its sender by `p`'s destination (or by a stranger).
    fn icmp_error(&mut self, p: PacketSpec, wrong_target: bool) -> Vec<u8> {
        let quoted = p.build();
        let v6 = p.src.is_ipv6();
        let ip_header = if v6 { 40 } else { 20 };
        let quote_len = ip_header + 8;
        let quote = &quoted[14..14 + quote_len.min(quoted.len() - 14)];
        let target = if wrong_target {
            *self.generator.pick(&[p.dst, p.src])
        } else {
            p.src
        };
        let mut error = PacketSpec::new(p.dst, target, if v6 { 58 } else { 1 }, 0, 0);
        error.icmp = Some(if v6 {
            (
                *self.generator.pick(&[1u8, 2, 3, 4, 128]),
                0,
                quote.to_vec(),
            )
        } else {
            (
                *self.generator.pick(&[3u8, 11, 12, 8, 5]),
                4,
                quote.to_vec(),
            )
        });
        error.build()
    }
}

/// A fragment of the datagram in `whole` (an Ethernet frame with no VLAN tags or options).
fn fragment_frame(
    whole: &[u8],
    v6: bool,
    id: u32,
    offset: usize,
    data: &[u8],
    more: bool,
) -> Vec<u8> {
    let mut frame = whole[..14].to_vec();
    if v6 {
        let mut ip = whole[14..54].to_vec();
        let next = ip[6];
        ip[6] = 44;
        ip[4..6].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        frame.extend_from_slice(&ip);
        let field = ((offset / 8) as u16) << 3 | u16::from(more);
        frame.extend_from_slice(&[next, 0]);
        frame.extend_from_slice(&field.to_be_bytes());
        frame.extend_from_slice(&id.to_be_bytes());
    } else {
        let mut ip = whole[14..34].to_vec();
        ip[2..4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&(id as u16).to_be_bytes());
        let field = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
        ip[6..8].copy_from_slice(&field.to_be_bytes());
        ip[10..12].copy_from_slice(&[0, 0]);
        let sum = emis_policy::packet::checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        frame.extend_from_slice(&ip);
    }
    frame.extend_from_slice(data);
    frame
}
