//! Encapsulations, interface types and IPv6 fragments, in the kernel through
//! BPF_PROG_TEST_RUN against the reference model: PPPoE sessions are looked into, frames
//! the program cannot read are passed and counted by class, devices without a link header
//! are read from the IP header by `emis_l3`, and IPv6 later fragments are neither walked
//! nor let through an overlap. Needs root.

use anyhow::{ensure, Result};
use emis_common::{stats_index, Decision, DenyReason, Link, PassReason, Path, PROTO_TCP};
use emis_lab::site::TEST_SITE;
use emis_policy::{
    model,
    packet::{PacketSpec, TCP_ACK, TCP_SYN},
    policy::{Mode, Replies},
};
use emis_testkit::XDP_ABORTED;
use emis_tests::{default_policy, expected_action, hex, ip, Harness};

const SITE: &str = "192.168.10.2";
const N3: &str = "10.207.116.10";
const SITE6: &str = "2001:db8:10::2";
const AWS6: &str = "2a05:d01c::10";

/// Runs `frame` through the program for `link` and the model, checking action and counter.
fn check_link(h: &mut Harness, link: Link, frame: &[u8]) -> Result<Decision> {
    let decision = h.model.decide_link(link, frame);
    let index = stats_index(decision, h.options.mode.raw());
    let before = h.prog.counter(index)?;
    let action = h.prog.run_link(link, frame)?;
    let after = h.prog.counter(index)?;
    ensure!(action != XDP_ABORTED, "aborted on {}", hex(frame));
    ensure!(
        action == expected_action(decision, h.options.mode),
        "{link:?}: kernel action {action} but the model decided {decision:?} for {}",
        hex(frame)
    );
    ensure!(
        after.packets == before.packets + 1,
        "{link:?}: counter {index} for {decision:?} not counted once for {}",
        hex(frame)
    );
    Ok(decision)
}

fn pass(reason: PassReason) -> Decision {
    Decision::Pass { reason }
}

fn denied_no_rule(d: Decision) -> bool {
    matches!(
        d,
        Decision::Deny {
            reason: DenyReason::NoRule,
            ..
        }
    )
}

/// An Ethernet frame of `ethertype` whose payload is `payload`, after `tags` VLAN tags.
fn raw_frame(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    for &(tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

fn cases() -> Vec<PacketSpec> {
    vec![
        PacketSpec::tcp(ip(SITE), ip(N3), 40000, 443, TCP_SYN),
        PacketSpec::tcp(ip(SITE), ip(N3), 40000, 444, TCP_SYN),
        PacketSpec::tcp(ip(N3), ip(SITE), 443, 40000, TCP_SYN | TCP_ACK),
        PacketSpec::udp(ip(SITE), ip("192.168.20.7"), 40000, 8090),
        PacketSpec::tcp(ip(SITE6), ip(AWS6), 40000, 443, TCP_SYN),
        PacketSpec::tcp(ip(SITE6), ip(AWS6), 40000, 22, TCP_SYN),
    ]
}

#[test]
fn pppoe_sessions_are_judged_on_their_inner_packet_with_and_without_vlan_tags() {
    let policy = default_policy(TEST_SITE, true);
    let mut h = Harness::new(&policy, Mode::Enforce, Replies::Stateless);
    for base in cases() {
        let expected = model::decide(&policy, &base.build());
        for tags in [
            &[][..],
            &[(0x8100, 10)][..],
            &[(0x88a8, 100), (0x8100, 10)][..],
        ] {
            let frame = base.clone().with_vlans(tags).in_pppoe().build();
            assert_eq!(
                h.check(&frame).unwrap(),
                expected,
                "PPPoE after {tags:?} of {base:?}"
            );
        }
        // Protocol-field compression: PPP protocol 0x21/0x57 in one byte.
        let mut compressed = base.clone().in_pppoe().build();
        compressed.remove(20);
        let len = u16::from_be_bytes([compressed[18], compressed[19]]) - 1;
        compressed[18..20].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            h.check(&compressed).unwrap(),
            expected,
            "compressed {base:?}"
        );
    }
    // The denied port is dropped inside PPPoE as outside it.
    let denied = PacketSpec::tcp(ip(SITE), ip(N3), 40000, 444, TCP_SYN)
        .in_pppoe()
        .build();
    assert!(denied_no_rule(h.check(&denied).unwrap()));
    assert_eq!(h.prog.run(&denied).unwrap(), emis_testkit::XDP_DROP);
}

#[test]
fn pppoe_stream_keeps_stateful_flows_like_plain_ethernet() {
    let policy = default_policy(TEST_SITE, true);
    let mut h = Harness::new(&policy, Mode::Enforce, Replies::Stateful);
    let (site, n3) = (ip(SITE), ip(N3));
    let mut stream = vec![];
    for port in 40000..40050u16 {
        stream.push(PacketSpec::tcp(site, n3, port, 443, TCP_SYN));
        stream.push(PacketSpec::tcp(n3, site, 443, port, TCP_SYN | TCP_ACK));
        stream.push(PacketSpec::tcp(site, n3, port, 443, TCP_ACK));
        stream.push(PacketSpec::tcp(n3, site, 2222, port, TCP_ACK));
    }
    let mut replies = 0;
    for p in stream {
        let d = h.check(&p.in_pppoe().build()).unwrap();
        if matches!(
            d,
            Decision::Allow {
                path: Path::Reply,
                ..
            }
        ) {
            replies += 1;
        }
    }
    assert_eq!(replies, 50, "every SYN-ACK in the session is a reply");
}

#[test]
fn non_ip_frames_pass_counted_by_their_class() {
    let policy = default_policy(TEST_SITE, false);
    let mut h = Harness::new(&policy, Mode::Enforce, Replies::Stateful);
    let inner = PacketSpec::tcp(ip(SITE), ip(N3), 40000, 444, TCP_SYN);
    let ip_packet = inner.build_ip();
    let mut mpls = inner.clone();
    mpls.mpls_labels = vec![100, 200];
    let lcp = [
        0x11, 0x00, 0x00, 0x01, 0x00, 0x06, 0xc0, 0x21, 0x01, 0x01, 0x00, 0x04,
    ];
    let padi = [0x11, 0x09, 0x00, 0x00, 0x00, 0x04, 0x01, 0x01, 0x00, 0x00];
    let cases: Vec<(&str, Vec<u8>, PassReason)> = vec![
        ("ARP", raw_frame(&[], 0x0806, &[0; 28]), PassReason::Arp),
        (
            "ARP in a VLAN",
            raw_frame(&[(0x8100, 5)], 0x0806, &[0; 28]),
            PassReason::Arp,
        ),
        (
            "LLDP",
            raw_frame(&[], 0x88cc, &[0; 40]),
            PassReason::LinkLocal,
        ),
        (
            "STP (802.3 length)",
            raw_frame(&[], 0x0026, &[0x42; 38]),
            PassReason::LinkLocal,
        ),
        (
            "PPPoE discovery",
            raw_frame(&[], 0x8863, &padi),
            PassReason::PppoeDiscovery,
        ),
        (
            "PPPoE LCP",
            raw_frame(&[], 0x8864, &lcp),
            PassReason::PppControl,
        ),
        ("MPLS", mpls.build(), PassReason::Mpls),
        (
            "third VLAN tag",
            inner
                .clone()
                .with_vlans(&[(0x88a8, 1), (0x8100, 2), (0x8100, 3)])
                .build(),
            PassReason::VlanTooDeep,
        ),
        (
            "0x9100 tag",
            inner.clone().with_vlans(&[(0x9100, 1)]).build(),
            PassReason::VlanTooDeep,
        ),
        (
            "0x9100 after 802.1ad",
            inner
                .clone()
                .with_vlans(&[(0x88a8, 1), (0x9100, 2)])
                .build(),
            PassReason::VlanTooDeep,
        ),
        (
            "unknown EtherType",
            raw_frame(&[], 0x88b5, &ip_packet),
            PassReason::NonIp,
        ),
    ];
    for (name, frame, reason) in cases {
        assert_eq!(h.check(&frame).unwrap(), pass(reason), "{name}");
    }
}

#[test]
fn l3_devices_are_read_from_the_ip_header_by_emis_l3() {
    let policy = default_policy(TEST_SITE, true);
    for replies in [Replies::Stateless, Replies::Stateful] {
        let mut h = Harness::new(&policy, Mode::Enforce, replies);
        for base in cases() {
            let expected = model::decide(&policy, &base.build());
            let packet = base.build_ip();
            let got = check_link(&mut h, Link::Ip, &packet).unwrap();
            if replies == Replies::Stateless {
                assert_eq!(got, expected, "emis_l3 on {base:?}");
            }
        }
        // Both programs share the flow table: a flow allowed on an L3 device is answered
        // on an Ethernet one.
        let fwd = PacketSpec::tcp(ip(SITE), ip(N3), 41000, 443, TCP_SYN).build_ip();
        check_link(&mut h, Link::Ip, &fwd).unwrap();
        let reply = PacketSpec::tcp(ip(N3), ip(SITE), 443, 41000, TCP_SYN | TCP_ACK).build();
        assert!(matches!(
            check_link(&mut h, Link::Ethernet, &reply).unwrap(),
            Decision::Allow { .. }
        ));
        // Not IP at all, and cut short.
        let mut junk = PacketSpec::tcp(ip(SITE), ip(N3), 1, 2, TCP_SYN).build_ip();
        junk[0] = 0x55;
        assert_eq!(
            check_link(&mut h, Link::Ip, &junk).unwrap(),
            pass(PassReason::NonIp)
        );
        let full = PacketSpec::tcp(ip(SITE), ip(N3), 40000, 444, TCP_SYN).build_ip();
        for len in 14..=full.len() {
            check_link(&mut h, Link::Ip, &full[..len]).unwrap();
        }
    }
}

#[test]
fn the_ethernet_program_on_an_ip_packet_would_misread_it() {
    // Why emis_l3 exists: the denied packet, read as Ethernet, is not denied.
    let policy = default_policy(TEST_SITE, false);
    let denied = PacketSpec::tcp(ip(SITE), ip(N3), 40000, 444, TCP_SYN).build_ip();
    let mut m = model::Model::new(&policy, Replies::Stateful);
    assert!(denied_no_rule(m.decide_link(Link::Ip, &denied)));
    assert!(!matches!(m.decide(&denied), Decision::Deny { .. }));
}

fn v6_fragment(proto: u8, ext: Vec<(u8, usize)>, offset: u16, more: bool) -> PacketSpec {
    let mut p = if proto == PROTO_TCP {
        PacketSpec::tcp(ip(SITE6), ip(AWS6), 40000, 443, TCP_SYN)
    } else {
        PacketSpec::udp(ip(SITE6), ip(AWS6), 40000, 443)
    };
    p.ipv6_ext = ext;
    p.frag_offset = offset;
    p.more_fragments = more;
    p.payload_len = 64;
    p
}

#[test]
fn ipv6_later_fragments_are_not_walked_guarded_from_the_fragmentable_part_and_single() {
    let policy = default_policy(TEST_SITE, true);
    let aws_https = model::decide(
        &policy,
        &PacketSpec::tcp(ip(SITE6), ip(AWS6), 40000, 443, TCP_SYN).build(),
    );
    assert!(matches!(aws_https, Decision::Allow { .. }), "{aws_https:?}");
    let out = pass(PassReason::OutOfScope);
    let mut h = Harness::new(&policy, Mode::Enforce, Replies::Stateful);

    // An allowed first fragment lets its later fragments through under its rule.
    let first = v6_fragment(PROTO_TCP, vec![(44, 8)], 0, true).build();
    assert_eq!(h.check(&first).unwrap(), aws_https);
    let later = v6_fragment(PROTO_TCP, vec![(44, 8)], 100, false).build();
    assert_eq!(h.check(&later).unwrap(), aws_https);
    // An overlap into the TCP header is refused (malformed; this address pair is not in
    // enforce scope, so it passes uncounted under the rule).
    let overlap = v6_fragment(PROTO_TCP, vec![(44, 8)], 1, true).build();
    assert_eq!(h.check(&overlap).unwrap(), out);

    // A later fragment's payload is data: bytes that look like a destination-options
    // header and then TCP to port 443 must not be read as such.
    let disguised = v6_fragment(PROTO_TCP, vec![(44, 8), (60, 8)], 100, false).build();
    let frag = 14 + 40;
    assert_eq!(
        disguised[frag], 60,
        "the fragmentable part starts with options"
    );
    assert_eq!(
        h.check(&disguised).unwrap(),
        out,
        "no first fragment under 60"
    );
    let facts = match model::parse(&disguised) {
        model::Frame::Ip(f) => f,
        other => panic!("{other:?}"),
    };
    assert_eq!(facts.proto, 60, "the walk stops at the fragment header");
    assert!(facts.l4.is_none() && !facts.malformed);

    // A first fragment whose fragmentable part starts with options: the L4 header is
    // out of the guard's sight, so it is malformed.
    let hidden = v6_fragment(PROTO_TCP, vec![(44, 8), (60, 8)], 0, true).build();
    assert_eq!(h.check(&hidden).unwrap(), out);
    match model::parse(&hidden) {
        model::Frame::Ip(f) => assert!(f.malformed),
        other => panic!("{other:?}"),
    }
    // Two fragment headers are malformed, first fragment or atomic (a later fragment's
    // payload, where a second would sit, is not read).
    for (offset, more) in [(0, true), (0, false)] {
        let twice = v6_fragment(17, vec![(44, 8), (44, 8)], offset, more).build();
        match model::parse(&twice) {
            model::Frame::Ip(f) => assert!(f.malformed, "{offset} {more}"),
            other => panic!("{other:?}"),
        }
        h.check(&twice).unwrap();
    }
    // Options before the fragment header are fine.
    let with_hbh = v6_fragment(PROTO_TCP, vec![(0, 8), (44, 8)], 0, true).build();
    assert_eq!(h.check(&with_hbh).unwrap(), aws_https);
}

#[test]
fn ipv6_fragment_cases_agree_with_the_model_through_emis_l3_too() {
    let policy = default_policy(TEST_SITE, true);
    let mut h = Harness::new(&policy, Mode::Enforce, Replies::Stateful);
    for (ext, offset, more) in [
        (vec![(44u8, 8usize)], 0u16, true),
        (vec![(44, 8)], 100, false),
        (vec![(44, 8)], 1, true),
        (vec![(44, 8), (60, 8)], 0, true),
        (vec![(44, 8), (60, 8)], 100, true),
        (vec![(44, 8), (44, 8)], 0, true),
        (vec![(0, 8), (44, 8), (43, 16)], 0, true),
    ] {
        for proto in [PROTO_TCP, 17] {
            let p = v6_fragment(proto, ext.clone(), offset, more);
            check_link(&mut h, Link::Ip, &p.build_ip()).unwrap();
            check_link(&mut h, Link::Ethernet, &p.clone().in_pppoe().build()).unwrap();
        }
    }
}
