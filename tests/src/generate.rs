//! Structured random frames: valid packets drawn from the addresses and ports the policy
//! cares about, then sometimes truncated or mutated, from a seed so failures replay.

use std::net::IpAddr;

use emis::packet::PacketSpec;
use emis_common::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
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
            let &(remote, proto, port) = self.pick(RULE_FLOWS);
            let site = if port == 33953 || port == 33957 {
                "192.168.10.5"
            } else {
                "192.168.10.2"
            };
            p = PacketSpec::new(
                site.parse().unwrap(),
                remote.parse().unwrap(),
                proto,
                self.rng.random_range(1024..65535),
                port,
            );
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
