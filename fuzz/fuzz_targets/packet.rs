//! The reference model's packet parser and verdict.
//!
//! 1. The input bytes as a frame: `model::parse` and `model::decide` (with the embedded
//!    spec, roles unset and roles set) must not panic.
//! 2. The same bytes read as a few flow descriptions (`arbitrary`): the frame
//!    `packet::PacketSpec` builds from each must parse back to the same addresses and,
//!    for an unfragmented TCP or UDP packet whose L4 header is within the parser's
//!    bounds, the same ports. The frames, some reversed, then go in sequence through a
//!    stateful and a stateless `model::Model` (flow table, fragment tracking, ICMP),
//!    which must not panic either.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use emis_policy::policy::Replies;
use emis_policy::model::{self, Frame, Model};
use emis_policy::packet::PacketSpec;
use emis_policy::policy::Policy;
use emis_policy::spec::{load_policy, SiteOptions, Source};
use emis_common::{MAX_IPV6_EXT_HEADERS, MAX_L4_OFFSET};
use libfuzzer_sys::fuzz_target;

const SITE: &str = r#"[roles]
lan = ["192.168.10.0/24", "2001:db8:10::/48"]
clinical-server = ["192.168.10.5/32"]
surgery = ["192.168.10.0/24"]
local-sites = ["192.168.10.0/24", "192.168.20.0/24"]
"#;

/// The embedded spec with every role unset, and with the roles of `SITE`.
fn policies() -> &'static [Policy; 2] {
    static POLICIES: OnceLock<[Policy; 2]> = OnceLock::new();
    POLICIES.get_or_init(|| {
        let spec = Source::default_spec();
        let load = |site: &SiteOptions| {
            load_policy(&spec, site).unwrap_or_else(|e| panic!("embedded spec: {e}"))
        };
        [
            load(&SiteOptions::default()),
            load(&SiteOptions {
                site_file: Some(Source::new("site.toml", SITE)),
                ..SiteOptions::default()
            }),
        ]
    })
}

#[derive(Arbitrary, Debug)]
enum Proto {
    Tcp,
    Udp,
    Icmp,
    Other(u8),
}

/// IPv6 extension headers the parser walks (hop-by-hop, routing, fragment, AH, destination options).
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Ext {
    HopByHop,
    Routing,
    Fragment,
    Auth,
    DestOpts,
}

impl Ext {
    fn kind(self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::Routing => 43,
            Ext::Fragment => 44,
            Ext::Auth => 51,
            Ext::DestOpts => 60,
        }
    }

    /// The bytes `PacketSpec::build` writes for a requested length.
    fn built_len(self, len: u8) -> usize {
        let len = usize::from(len).max(8);
        match self {
            Ext::Fragment => 8,
            Ext::Auth => len.div_ceil(4) * 4,
            _ => len.div_ceil(8) * 8,
        }
    }
}

/// A packet the builder can make: what `PacketSpec` takes, kept to values it encodes exactly.
#[derive(Arbitrary, Debug)]
struct Flow {
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    proto: Proto,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    /// Up to two tags; `true` is an 802.1ad tag, `false` an 802.1Q one.
    vlans: Vec<(bool, u16)>,
    /// IPv4 only; at most 40 bytes.
    ipv4_options: Vec<u8>,
    /// IPv6 only; at most 8 headers.
    ipv6_ext: Vec<(Ext, u8)>,
    payload_len: u8,
    frag_offset: u16,
    more_fragments: bool,
}

impl Flow {
    fn addrs(&self) -> (IpAddr, IpAddr) {
        if self.v6 {
            (
                IpAddr::V6(Ipv6Addr::from(self.src)),
                IpAddr::V6(Ipv6Addr::from(self.dst)),
            )
        } else {
            let v4 = |a: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
            (v4(&self.src), v4(&self.dst))
        }
    }

    fn proto(&self) -> u8 {
        match self.proto {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Icmp if self.v6 => 58,
            Proto::Icmp => 1,
            Proto::Other(p) => p,
        }
    }

    fn vlans(&self) -> Vec<(u16, u16)> {
        self.vlans
            .iter()
            .take(2)
            .map(|&(ad, vid)| (if ad { 0x88a8 } else { 0x8100 }, vid & 0x0fff))
            .collect()
    }

    fn ipv6_ext(&self) -> &[(Ext, u8)] {
        if self.v6 {
            &self.ipv6_ext[..self.ipv6_ext.len().min(8)]
        } else {
            &[]
        }
    }

    fn spec(&self) -> PacketSpec {
        let (src, dst) = self.addrs();
        let mut spec = PacketSpec::new(src, dst, self.proto(), self.sport, self.dport);
        spec.tcp_flags = self.tcp_flags;
        spec.vlans = self.vlans();
        if !self.v6 {
            spec.ipv4_options = self.ipv4_options.iter().take(40).copied().collect();
        }
        spec.ipv6_ext = self
            .ipv6_ext()
            .iter()
            // The length as written: the builder's payload length adds up the requested
            // lengths, so one it would round makes a frame whose lengths disagree.
            .map(|&(ext, len)| (ext.kind(), ext.built_len(len)))
            .collect();
        spec.payload_len = usize::from(self.payload_len);
        spec.frag_offset = self.frag_offset & 0x1fff;
        spec.more_fragments = self.more_fragments;
        spec
    }

    /// Whether the packet is a fragment as the builder encodes it.
    fn is_fragment(&self) -> bool {
        let fragmented = self.frag_offset & 0x1fff != 0 || self.more_fragments;
        if self.v6 {
            fragmented
                && self
                    .ipv6_ext()
                    .iter()
                    .any(|&(e, _)| matches!(e, Ext::Fragment))
        } else {
            fragmented
        }
    }

    /// Whether the L4 header lies within the parser's bounds (extension-header count and
    /// L4 offset), so the parser must read it.
    fn l4_in_bounds(&self) -> bool {
        if !self.v6 {
            return true; // at most 14 + 8 + 60 bytes before it
        }
        let ext = self.ipv6_ext();
        let offset = 14
            + 4 * self.vlans().len()
            + 40
            + ext.iter().map(|&(e, len)| e.built_len(len)).sum::<usize>();
        ext.len() <= MAX_IPV6_EXT_HEADERS as usize && offset <= MAX_L4_OFFSET
    }
}

/// Builds the flow's frame, checks what the parser reads from it, and returns it.
fn check_flow(flow: &Flow) -> Vec<u8> {
    let spec = flow.spec();
    let frame = spec.build();
    for policy in policies() {
        let _ = model::decide(policy, &frame);
    }
    let facts = match model::parse(&frame) {
        Frame::Ip(facts) => facts,
        other => panic!("{spec:?}\nbuilt {frame:02x?}\nparsed as {other:?}, not IP"),
    };
    assert_eq!(
        (facts.src, facts.dst),
        (spec.src, spec.dst),
        "addresses of {spec:?}\nbuilt {frame:02x?}\nparsed {facts:?}"
    );
    let proto = spec.proto;
    // A second IPv6 fragment header is malformed, atomic or not (DECISIONS.md, Fragments).
    let fragment_headers = flow
        .ipv6_ext()
        .iter()
        .filter(|&&(e, _)| matches!(e, Ext::Fragment))
        .count();
    if (proto == 6 || proto == 17)
        && !flow.is_fragment()
        && flow.l4_in_bounds()
        && fragment_headers <= 1
    {
        let ports = facts.l4.map(|l4| (l4.sport, l4.dport));
        assert!(
            !facts.malformed && facts.proto == proto && ports == Some((spec.sport, spec.dport)),
            "{spec:?}\nbuilt {frame:02x?}\nparsed {facts:?}\nexpected proto {proto}, not malformed, ports {:?}",
            (spec.sport, spec.dport)
        );
    }
    frame
}

/// One step of a sequence: a flow, sent as described or reversed, some time after the last.
#[derive(Arbitrary, Debug)]
struct Step {
    flow: Flow,
    reverse: bool,
    /// Milliseconds since the previous step.
    after_ms: u32,
}

fn check_sequence(steps: &[Step]) {
    let mut frames = Vec::with_capacity(steps.len());
    for step in steps {
        let frame = check_flow(&step.flow);
        let frame = if step.reverse {
            let mut spec = step.flow.spec();
            std::mem::swap(&mut spec.src, &mut spec.dst);
            std::mem::swap(&mut spec.sport, &mut spec.dport);
            spec.build()
        } else {
            frame
        };
        frames.push((frame, step.after_ms));
    }
    for policy in policies() {
        for replies in [Replies::Stateful, Replies::Stateless] {
            let mut model = Model::new(policy, replies);
            let mut now_ns = 0u64;
            for (frame, after_ms) in &frames {
                now_ns += u64::from(*after_ms) * 1_000_000;
                model.set_time(now_ns);
                let _ = model.decide(frame);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for policy in policies() {
        let _ = model::decide(policy, data);
    }
    let _ = model::parse(data);
    let mut u = Unstructured::new(data);
    let steps: Vec<Step> = u
        .arbitrary_iter()
        .map(|it| it.flatten().take(8).collect())
        .unwrap_or_default();
    check_sequence(&steps);
});
