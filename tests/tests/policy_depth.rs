//! Stateful replies, fragments, ICMP, and hostile input: the loaded kernel program and the
//! reference model must reach the verdict docs/DECISIONS.md gives, packet by packet and over
//! long sequences, and never abort. Needs root.

use std::time::Duration;

use emis_common::{Decision, DenyReason, PassReason, Path};
use emis_lab::site::TEST_SITE;
use emis_policy::{
    packet::{PacketSpec, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN},
    policy::{Mode, Policy, Replies, Timeouts},
};
use emis_tests::{default_policy, generate::Conversations, ip, Harness};

const SITE: &str = "192.168.10.2";
const N3: &str = "10.207.116.10";
/// client-spine-messaging: tcp 443 from lan to emis-n3, the third rule of the spec.
const SPINE: u32 = 3;

fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    PacketSpec::tcp(ip(src), ip(dst), sport, dport, flags).build()
}

fn allow(rule: u32, path: Path) -> Decision {
    Decision::Allow { rule, path }
}

fn denied(reason: DenyReason) -> impl Fn(&Decision) -> bool {
    move |d| matches!(d, Decision::Deny { reason: r, .. } if *r == reason)
}

#[test]
fn stateful_replies_follow_only_flows_a_rule_allowed() {
    let policy = default_policy(TEST_SITE, false);
    let mut h = Harness::new(&policy, Mode::Enforce, Replies::Stateful);
    // A reply-shaped packet before any forward packet: no flow, so no reply.
    let early = tcp(N3, SITE, 443, 40001, TCP_SYN | TCP_ACK);
    assert!(denied(DenyReason::NoRule)(&h.check(&early).unwrap()));
    // The handshake and data both ways, then the close.
    assert_eq!(
        h.check(&tcp(SITE, N3, 40001, 443, TCP_SYN)).unwrap(),
        allow(SPINE, Path::Forward)
    );
    assert_eq!(h.check(&early).unwrap(), allow(SPINE, Path::Reply));
    assert_eq!(
        h.check(&tcp(SITE, N3, 40001, 443, TCP_ACK)).unwrap(),
        allow(SPINE, Path::Forward)
    );
    assert_eq!(
        h.check(&tcp(N3, SITE, 443, 40001, TCP_ACK | 0x08)).unwrap(),
        allow(SPINE, Path::Reply)
    );
    assert_eq!(
        h.check(&tcp(N3, SITE, 443, 40001, TCP_FIN | TCP_ACK))
            .unwrap(),
        allow(SPINE, Path::Reply)
    );
    // Another client port is another flow.
    assert!(denied(DenyReason::NoRule)(
        &h.check(&tcp(N3, SITE, 443, 40002, TCP_ACK)).unwrap()
    ));
    // The EMIS side cannot open a connection to the site from the service port.
    assert!(denied(DenyReason::NoRule)(
        &h.check(&tcp(N3, SITE, 443, 40003, TCP_SYN)).unwrap()
    ));
    // UDP: the local-sites rules work both ways by themselves; a UDP reply from EMIS needs a flow.
    let udp = |s: &str, d: &str, sp, dp| PacketSpec::udp(ip(s), ip(d), sp, dp).build();
    assert!(matches!(
        h.check(&udp(SITE, "192.168.20.7", 5000, 8088)).unwrap(),
        Decision::Allow {
            path: Path::Forward,
            ..
        }
    ));
    assert!(matches!(
        h.check(&udp("192.168.20.7", SITE, 8088, 5000)).unwrap(),
        Decision::Pass { .. } | Decision::Allow { .. }
    ));
    assert!(denied(DenyReason::NoRule)(
        &h.check(&udp(N3, SITE, 33962, 5000)).unwrap()
    ));
    // Only the TCP flow with a complete handshake is established; the local-sites flows
    // keep no entry.
    let stats = h.prog.flow_stats().unwrap();
    assert!(stats.created >= 1 && stats.entries >= 1, "{stats:?}");
    assert_eq!((stats.evicted, stats.insert_failures), (0, 0), "{stats:?}");
}

fn short_lived(policy: &mut Policy) {
    policy.options.timeouts = Timeouts {
        tcp_syn: 1,
        tcp_established: 3600,
        tcp_closing: 1,
        udp: 1,
        fragment: 1,
    };
}

#[test]
fn flows_expire_by_state_after_their_lifetimes() {
    let mut policy = default_policy(TEST_SITE, false);
    short_lived(&mut policy);
    let mut h = Harness::new(&policy, Mode::Enforce, Replies::Stateful);
    // Half open: the SYN's flow lives one second.
    assert_eq!(
        h.check(&tcp(SITE, N3, 41000, 443, TCP_SYN)).unwrap(),
        allow(SPINE, Path::Forward)
    );
    // Established: lives an hour.
    h.check(&tcp(SITE, N3, 41001, 443, TCP_SYN)).unwrap();
    h.check(&tcp(N3, SITE, 443, 41001, TCP_SYN | TCP_ACK))
        .unwrap();
    h.check(&tcp(SITE, N3, 41001, 443, TCP_ACK)).unwrap();
    // Reset: one second.
    h.check(&tcp(SITE, N3, 41002, 443, TCP_SYN)).unwrap();
    h.check(&tcp(N3, SITE, 443, 41002, TCP_SYN | TCP_ACK))
        .unwrap();
    h.check(&tcp(SITE, N3, 41002, 443, TCP_ACK)).unwrap();
    h.check(&tcp(SITE, N3, 41002, 443, TCP_RST)).unwrap();

    std::thread::sleep(Duration::from_millis(1500));
    h.model.set_time(1_500_000_000);
    let expired = h.prog.flow_stats().unwrap().expired;
    assert!(
        denied(DenyReason::NoRule)(
            &h.check(&tcp(N3, SITE, 443, 41000, TCP_SYN | TCP_ACK))
                .unwrap()
        ),
        "half-open flow expired"
    );
    assert_eq!(
        h.check(&tcp(N3, SITE, 443, 41001, TCP_ACK)).unwrap(),
        allow(SPINE, Path::Reply),
        "established flow lives on"
    );
    assert!(
        denied(DenyReason::NoRule)(&h.check(&tcp(N3, SITE, 443, 41002, TCP_ACK)).unwrap()),
        "reset flow expired"
    );
    // The reset flow was established; the half-open one expires from the new-flow table.
    assert_eq!(
        h.prog.flow_stats().unwrap().expired,
        expired + 1,
        "the expired established flow was removed and counted"
    );
    let events = h.model.flow_events();
    assert_eq!((events.expired, events.new_expired), (1, 1), "{events:?}");
}

fn tcp_seq(src: &str, dst: &str, sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let mut p = PacketSpec::tcp(ip(src), ip(dst), sport, dport, flags);
    (p.seq, p.ack) = (seq, ack);
    p.build()
}

/// A handshake on client port `port`: the client's next byte is 1001, the server's 7001.
fn handshake(h: &mut Harness, port: u16) {
    h.check(&tcp_seq(SITE, N3, port, 443, TCP_SYN, 1000, 0))
        .unwrap();
    h.check(&tcp_seq(N3, SITE, 443, port, TCP_SYN | TCP_ACK, 7000, 1001))
        .unwrap();
    h.check(&tcp_seq(SITE, N3, port, 443, TCP_ACK, 1001, 7001))
        .unwrap();
}

/// A RST or FIN outside its window changes nothing; one inside it closes the flow; a
/// half-close keeps it; a closed flow is not kept alive by stray ACKs. Closing flows live
/// one second here, established ones an hour.
#[test]
fn resets_and_fins_count_only_within_the_window() {
    let mut policy = default_policy(TEST_SITE, false);
    short_lived(&mut policy);
    let mut h = Harness::new(&policy, Mode::Enforce, Replies::Stateful);
    let (blind, honoured, half, closed, refused) = (42001, 42002, 42003, 42004, 42005);
    for port in [blind, honoured, half, closed] {
        handshake(&mut h, port);
    }
    let reply = allow(SPINE, Path::Reply);
    // Blind: RSTs and a FIN far from both windows, from either side, pass and change nothing.
    for seq in [0, 7001 + (1 << 20), 0x8000_0000] {
        assert_eq!(
            h.check(&tcp_seq(N3, SITE, 443, blind, TCP_RST, seq, 0))
                .unwrap(),
            reply
        );
        assert_eq!(
            h.check(&tcp_seq(
                SITE,
                N3,
                blind,
                443,
                TCP_RST | TCP_ACK,
                seq ^ 0x4000_0000,
                7001
            ))
            .unwrap(),
            allow(SPINE, Path::Forward)
        );
    }
    h.check(&tcp_seq(
        N3,
        SITE,
        443,
        blind,
        TCP_FIN | TCP_ACK,
        0x9000_0000,
        1001,
    ))
    .unwrap();
    // Honoured: the server's RST at its next byte.
    assert_eq!(
        h.check(&tcp_seq(N3, SITE, 443, honoured, TCP_RST, 7001, 0))
            .unwrap(),
        reply
    );
    // Half-closed: the client is done sending; the server is not.
    h.check(&tcp_seq(SITE, N3, half, 443, TCP_FIN | TCP_ACK, 1001, 7001))
        .unwrap();
    // Closed both ways.
    h.check(&tcp_seq(
        SITE,
        N3,
        closed,
        443,
        TCP_FIN | TCP_ACK,
        1001,
        7001,
    ))
    .unwrap();
    h.check(&tcp_seq(
        N3,
        SITE,
        443,
        closed,
        TCP_FIN | TCP_ACK,
        7001,
        1002,
    ))
    .unwrap();
    // Refused: the server answers the SYN with RST, ACK.
    h.check(&tcp_seq(SITE, N3, refused, 443, TCP_SYN, 1000, 0))
        .unwrap();
    assert_eq!(
        h.check(&tcp_seq(N3, SITE, 443, refused, TCP_RST | TCP_ACK, 0, 1001))
            .unwrap(),
        reply
    );

    // Stray ACKs on the closed flow half-way through its closing time do not refresh it.
    std::thread::sleep(Duration::from_millis(700));
    h.model.set_time(700_000_000);
    assert_eq!(
        h.check(&tcp_seq(SITE, N3, closed, 443, TCP_ACK, 1002, 7002))
            .unwrap(),
        allow(SPINE, Path::Forward)
    );
    assert_eq!(
        h.check(&tcp_seq(N3, SITE, 443, closed, TCP_ACK, 7002, 1002))
            .unwrap(),
        reply
    );
    assert_eq!(
        h.check(&tcp_seq(N3, SITE, 443, half, TCP_ACK | TCP_PSH, 7001, 1002))
            .unwrap(),
        reply
    );
    std::thread::sleep(Duration::from_millis(700));
    h.model.set_time(1_400_000_000);

    let data = |port| tcp_seq(N3, SITE, 443, port, TCP_ACK | TCP_PSH, 7001, 1001);
    assert_eq!(
        h.check(&data(blind)).unwrap(),
        reply,
        "out-of-window RSTs and FIN ignored"
    );
    assert_eq!(
        h.check(&data(half)).unwrap(),
        reply,
        "a half-closed flow lives on"
    );
    for (port, what) in [
        (honoured, "in-window RST"),
        (closed, "FINs both ways"),
        (refused, "refusal"),
    ] {
        assert!(
            denied(DenyReason::NoRule)(&h.check(&data(port)).unwrap()),
            "{what} closed the flow"
        );
    }
    let events = h.model.flow_events();
    assert_eq!(
        (events.rst_honoured, events.rst_ignored, events.fin_ignored),
        (2, 6, 1),
        "{events:?}"
    );
}

#[test]
fn stateless_tcp_replies_must_carry_ack() {
    let policy = default_policy(TEST_SITE, false);
    let mut h = Harness::new(&policy, Mode::Enforce, Replies::Stateless);
    // NULL, FIN and Xmas scans from the service port do not pass as replies.
    for scan in [0, TCP_FIN, TCP_FIN | 0x08 | 0x20] {
        assert!(
            denied(DenyReason::NoRule)(&h.check(&tcp(N3, SITE, 443, 40000, scan)).unwrap()),
            "flags {scan:#x}"
        );
    }
    for real in [
        TCP_ACK,
        TCP_ACK | 0x08,
        TCP_FIN | TCP_ACK,
        TCP_RST | TCP_ACK,
    ] {
        assert_eq!(
            h.check(&tcp(N3, SITE, 443, 40000, real)).unwrap(),
            allow(SPINE, Path::Reply)
        );
    }
}

/// `p` split after `cut` bytes of its L4 header and payload: (first fragment, later fragment).
fn split(p: &PacketSpec, cut: usize, id: u16) -> (Vec<u8>, Vec<u8>) {
    let mut first = p.clone();
    first.more_fragments = true;
    first.frag_offset = 0;
    let whole = p.build();
    let v6 = p.src.is_ipv6();
    let l4_at = 14 + if v6 { 40 } else { 20 };
    let l4 = &whole[l4_at..];
    let mut first_frame = whole[..l4_at].to_vec();
    first_frame.extend_from_slice(&l4[..cut]);
    let mut later_frame = whole[..l4_at].to_vec();
    later_frame.extend_from_slice(&l4[cut..]);
    for (frame, offset, more, len) in [
        (&mut first_frame, 0, true, cut),
        (&mut later_frame, cut / 8, false, l4.len() - cut),
    ] {
        if v6 {
            // Insert a fragment header after the fixed header.
            let next = frame[14 + 6];
            frame[14 + 6] = 44;
            frame[14 + 4..14 + 6].copy_from_slice(&((8 + len) as u16).to_be_bytes());
            let field = ((offset as u16) << 3) | u16::from(more);
            let mut header = vec![next, 0];
            header.extend_from_slice(&field.to_be_bytes());
            header.extend_from_slice(&(id as u32).to_be_bytes());
            frame.splice(54..54, header);
        } else {
            frame[14 + 2..14 + 4].copy_from_slice(&((20 + len) as u16).to_be_bytes());
            frame[14 + 4..14 + 6].copy_from_slice(&id.to_be_bytes());
            let field = offset as u16 | if more { 0x2000 } else { 0 };
            frame[14 + 6..14 + 8].copy_from_slice(&field.to_be_bytes());
        }
    }
    (first_frame, later_frame)
}

#[test]
fn later_fragments_follow_their_allowed_first_fragment_and_nothing_else() {
    let policy = default_policy(TEST_SITE, true);
    for replies in [Replies::Stateful, Replies::Stateless] {
        let mut h = Harness::new(&policy, Mode::Enforce, replies);
        for (src, dst) in [(SITE, N3), ("2001:db8:10::2", "2a05:d01c::10")] {
            let mut p = PacketSpec::tcp(ip(src), ip(dst), 42000, 443, TCP_ACK);
            p.payload_len = 100;
            let (first, later) = split(&p, 24, 7);
            // A later fragment before its first: nothing allowed it yet.
            let early = h.check(&later).unwrap();
            if src == SITE {
                assert!(denied(DenyReason::Fragment)(&early), "{early:?}");
            } else {
                assert_eq!(
                    early,
                    Decision::Pass {
                        reason: PassReason::OutOfScope
                    },
                    "count scope is never dropped"
                );
            }
            assert!(matches!(
                h.check(&first).unwrap(),
                Decision::Allow {
                    path: Path::Forward,
                    ..
                }
            ));
            assert!(
                matches!(
                    h.check(&later).unwrap(),
                    Decision::Allow {
                        path: Path::Forward,
                        ..
                    }
                ),
                "{src}"
            );
        }
        // A first fragment no rule allows: its later fragments are denied too.
        let mut p = PacketSpec::tcp(ip(SITE), ip(N3), 42001, 444, TCP_ACK);
        p.payload_len = 100;
        let (first, later) = split(&p, 24, 8);
        assert!(denied(DenyReason::NoRule)(&h.check(&first).unwrap()));
        assert!(denied(DenyReason::Fragment)(&h.check(&later).unwrap()));
        // Tiny: the first fragment stops inside the TCP header.
        let mut p = PacketSpec::tcp(ip(SITE), ip(N3), 42002, 443, TCP_SYN);
        p.payload_len = 40;
        let (tiny, _) = split(&p, 8, 9);
        assert!(denied(DenyReason::Malformed)(&h.check(&tiny).unwrap()));
        // Overlapping: a later fragment at offset 8 or 16 would rewrite the ports or flags.
        let (first, _) = split(&p, 24, 10);
        h.check(&first).unwrap();
        for offset in [1u16, 2] {
            let mut overlap = PacketSpec::tcp(ip(SITE), ip(N3), 42002, 443, TCP_SYN);
            overlap.frag_offset = offset;
            let mut frame = overlap.build();
            frame[14 + 4..14 + 6].copy_from_slice(&10u16.to_be_bytes());
            assert!(
                denied(DenyReason::Malformed)(&h.check(&frame).unwrap()),
                "offset {offset}"
            );
        }
    }
}

/// An ICMP error from `from` to `to` quoting the first bytes of `quoted`.
fn icmp_error(from: &str, to: &str, kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let v6 = ip(from).is_ipv6();
    let quote = &quoted[14..14 + if v6 { 48 } else { 28 }];
    let mut p = PacketSpec::new(ip(from), ip(to), if v6 { 58 } else { 1 }, 0, 0);
    p.icmp = Some((kind, code, quote.to_vec()));
    p.build()
}

#[test]
fn icmp_errors_about_allowed_flows_pass_and_others_do_not() {
    let policy = default_policy(TEST_SITE, true);
    let router = "10.207.116.1";
    for replies in [Replies::Stateful, Replies::Stateless] {
        let mut h = Harness::new(&policy, Mode::Enforce, replies);
        let syn = tcp(SITE, N3, 43000, 443, TCP_SYN);
        assert_eq!(h.check(&syn).unwrap(), allow(SPINE, Path::Forward));
        // Fragmentation needed (path MTU discovery), from a router in the EMIS network.
        let frag_needed = icmp_error(router, SITE, 3, 4, &syn);
        assert_eq!(
            h.check(&frag_needed).unwrap(),
            allow(SPINE, Path::Related),
            "{replies:?}"
        );
        // Time exceeded about the server's reply, sent to the server.
        let reply = tcp(N3, SITE, 443, 43000, TCP_SYN | TCP_ACK);
        h.check(&reply).unwrap();
        assert_eq!(
            h.check(&icmp_error("192.168.10.1", N3, 11, 0, &reply))
                .unwrap(),
            allow(SPINE, Path::Related)
        );
        // An error about a flow nobody allowed.
        let never = tcp(SITE, N3, 43001, 444, TCP_SYN);
        assert!(denied(DenyReason::Icmp)(
            &h.check(&icmp_error(router, SITE, 3, 1, &never)).unwrap()
        ));
        // An error sent to someone other than the quoted packet's sender.
        assert!(denied(DenyReason::Icmp)(
            &h.check(&icmp_error(router, "192.168.10.3", 3, 4, &syn))
                .unwrap()
        ));
        // Other ICMP types are not errors: redirect.
        assert!(denied(DenyReason::Icmp)(
            &h.check(&icmp_error(router, SITE, 5, 1, &syn)).unwrap()
        ));
        // ICMPv6 packet too big about an allowed IPv6 flow in count scope: counted under the
        // rule when stateless; a stateful flow with both ends out of enforce scope keeps no
        // entry, so the error passes as out of scope.
        let syn6 = tcp("2001:db8:10::2", "2a05:d01c::10", 43002, 443, TCP_SYN);
        let rule6 = match h.check(&syn6).unwrap() {
            Decision::Allow { rule, .. } => rule,
            other => panic!("{other:?}"),
        };
        let expected = match replies {
            Replies::Stateless => allow(rule6, Path::Related),
            Replies::Stateful => Decision::Pass {
                reason: PassReason::OutOfScope,
            },
        };
        assert_eq!(
            h.check(&icmp_error("2a05:d01c::1", "2001:db8:10::2", 2, 0, &syn6))
                .unwrap(),
            expected
        );
    }
}

#[test]
fn echo_is_denied_in_scope_unless_the_spec_permits_it() {
    let mut policy = default_policy(TEST_SITE, false);
    let ping = |s: &str, d: &str| PacketSpec::icmp_echo(ip(s), ip(d)).build();
    {
        let mut h = Harness::new(&policy, Mode::Enforce, Replies::Stateful);
        assert!(denied(DenyReason::Icmp)(&h.check(&ping(SITE, N3)).unwrap()));
        assert!(denied(DenyReason::Icmp)(&h.check(&ping(N3, SITE)).unwrap()));
        assert_eq!(
            h.check(&ping(SITE, "198.51.100.10")).unwrap(),
            Decision::Pass {
                reason: PassReason::OutOfScope
            }
        );
    }
    policy.options.icmp_echo = true;
    let mut h = Harness::new(&policy, Mode::Enforce, Replies::Stateful);
    assert_eq!(
        h.check(&ping(SITE, N3)).unwrap(),
        Decision::Pass {
            reason: PassReason::IcmpEcho
        }
    );
    assert_eq!(
        h.check(&ping(N3, SITE)).unwrap(),
        Decision::Pass {
            reason: PassReason::IcmpEcho
        }
    );
}

/// The evasion catalogue of the issue: each case must get the verdict docs/DECISIONS.md gives.
#[test]
fn hostile_headers_get_the_verdict_the_policy_requires() {
    let policy = default_policy(TEST_SITE, false);
    let mut h = Harness::new(&policy, Mode::Enforce, Replies::Stateful);
    let (site, n3) = (ip(SITE), ip(N3));
    let no_rule = PacketSpec::tcp(site, n3, 44000, 444, TCP_SYN);
    // A denied flow wrapped in one and two VLAN tags.
    for tags in [
        &[(0x8100u16, 5u16)][..],
        &[(0x88a8, 5), (0x8100, 6)],
        &[(0x8100, 5), (0x8100, 6)],
    ] {
        assert!(
            denied(DenyReason::NoRule)(
                &h.check(&no_rule.clone().with_vlans(tags).build()).unwrap()
            ),
            "{tags:?}"
        );
    }
    // IPv4 options of every length, on a denied and an allowed packet.
    for len in 0..=40 {
        let mut p = no_rule.clone();
        p.ipv4_options = vec![1; len];
        assert!(
            denied(DenyReason::NoRule)(&h.check(&p.build()).unwrap()),
            "options {len}"
        );
        let mut p = PacketSpec::tcp(site, n3, 44001, 443, TCP_SYN);
        p.ipv4_options = vec![1; len];
        assert_eq!(
            h.check(&p.build()).unwrap(),
            allow(SPINE, Path::Forward),
            "options {len}"
        );
    }
    // IPv6 extension-header chains up to and past the bound, to an in-scope IPv6 address.
    let mut v6_policy = default_policy(&["lan=2001:db8:10::/48"], false);
    v6_policy.networks[0]
        .prefixes
        .push("2001:db8:207::/48".parse().unwrap());
    let mut h6 = Harness::new(&v6_policy, Mode::Enforce, Replies::Stateful);
    for n in 0..=8 {
        let mut p = PacketSpec::tcp(
            ip("2001:db8:10::2"),
            ip("2001:db8:207::10"),
            44002,
            443,
            TCP_SYN,
        );
        p.ipv6_ext = vec![(60, 8); n];
        let decision = h6.check(&p.build()).unwrap();
        if n <= 6 {
            assert!(
                matches!(
                    decision,
                    Decision::Allow {
                        path: Path::Forward,
                        ..
                    }
                ),
                "{n} headers: {decision:?}"
            );
        } else {
            assert!(
                denied(DenyReason::Malformed)(&decision),
                "{n} headers: {decision:?}"
            );
        }
    }
    // IHL below 5.
    for ihl in 0..5u8 {
        let mut frame = no_rule.build();
        frame[14] = 0x40 | ihl;
        assert!(
            denied(DenyReason::Malformed)(&h.check(&frame).unwrap()),
            "ihl {ihl}"
        );
    }
    // Total length larger than the frame, and smaller than the header.
    for total in [41u16, 1500, 19, 0] {
        let mut frame = PacketSpec::tcp(site, n3, 44003, 443, TCP_SYN).build();
        frame[16..18].copy_from_slice(&total.to_be_bytes());
        assert!(
            denied(DenyReason::Malformed)(&h.check(&frame).unwrap()),
            "total length {total}"
        );
    }
    // Total length smaller than the frame (Ethernet padding) is fine.
    let mut padded = PacketSpec::tcp(site, n3, 44004, 443, TCP_SYN).build();
    padded.extend_from_slice(&[0; 20]);
    assert_eq!(h.check(&padded).unwrap(), allow(SPINE, Path::Forward));
    // TCP data offset below 5.
    for doff in 0..5u8 {
        let mut frame = PacketSpec::tcp(site, n3, 44005, 443, TCP_SYN).build();
        frame[14 + 20 + 12] = doff << 4;
        assert!(
            denied(DenyReason::Malformed)(&h.check(&frame).unwrap()),
            "data offset {doff}"
        );
    }
    // GRE, ESP, IPIP, SCTP (and IPv6-in-IPv4) to an enforce-scope network.
    for proto in [47u8, 50, 4, 132, 41] {
        let frame = PacketSpec::new(site, n3, proto, 0, 0).build();
        assert!(
            denied(DenyReason::Protocol)(&h.check(&frame).unwrap()),
            "protocol {proto}"
        );
    }
}

/// The slug's rule id in `policy`.
fn rule_id(policy: &Policy, slug: &str) -> u32 {
    policy
        .rules
        .iter()
        .position(|r| r.slug == slug)
        .expect(slug) as u32
}

/// Names learned from DNS for some of the generator's destinations: Table 3, Table 1 and
/// Table 2 addresses (the last a spoof into enforce scope), Amazon's ranges and beyond,
/// an address of two names, IPv6.
const LEARNED: &[(&[&str], &str)] = &[
    (&["identityservice.emishealth.com"], "185.13.72.10"),
    (
        &["a.b.service-now.com", "openapi.emishealth.com"],
        "149.11.42.48",
    ),
    (&["ewcd01.emishealth.com"], "10.207.116.10"),
    (&["evil.service-now.com"], "194.189.117.64"),
    (&["a1-ats.iot.eu-west-2.amazonaws.com"], "198.51.100.10"),
    (&["x.iot.eu-west-2.amazonaws.com"], "3.8.0.1"),
    (&["x.emis-x.uk"], "18.130.5.5"),
    (&["x.iot.eu-west-2.amazonaws.com"], "2a05:d01d::1"),
];

#[test]
fn learned_addresses_count_under_their_own_rows_and_never_open_enforce_scope() {
    let policy = default_policy(TEST_SITE, true);
    for replies in [Replies::Stateful, Replies::Stateless] {
        let mut h = Harness::new(&policy, Mode::Enforce, replies);
        let syn = |dst: &str, port: u16| tcp(SITE, dst, 40100, port, TCP_SYN);
        let forward = |slug: &str| allow(rule_id(&policy, slug), Path::Forward);
        // Unlearned: the first matching row, as before.
        assert_eq!(
            h.check(&syn("185.13.72.10", 443)).unwrap(),
            forward("web-mobile-openapi")
        );
        assert_eq!(
            h.check(&syn("10.207.116.10", 443)).unwrap(),
            forward("client-spine-messaging")
        );
        let spoofed = h.check(&syn("194.189.117.64", 443)).unwrap();
        assert!(denied(DenyReason::NoRule)(&spoofed), "{spoofed:?}");
        assert_eq!(
            h.check(&syn("198.51.100.10", 443)).unwrap(),
            Decision::Pass {
                reason: PassReason::OutOfScope
            }
        );
        for (names, addr) in LEARNED {
            h.learn(names, ip(addr));
        }
        assert_eq!(
            h.check(&syn("185.13.72.10", 443)).unwrap(),
            forward("web-mobile-identityservice")
        );
        // Two names: the first row in spec order naming either.
        assert_eq!(
            h.check(&syn("149.11.42.48", 443)).unwrap(),
            forward("web-mobile-openapi")
        );
        assert_eq!(
            h.check(&syn("10.207.116.10", 443)).unwrap(),
            forward("s3-documents")
        );
        // A learned name changes nothing on a port its rows do not list.
        assert_eq!(
            h.check(&syn("10.207.116.10", 33962)).unwrap(),
            forward("client-sds-version-check")
        );
        // The spoofed answer: a Table 2 address for *.service-now.com stays denied on 443.
        assert!(denied(DenyReason::NoRule)(
            &h.check(&syn("194.189.117.64", 443)).unwrap()
        ));
        // Count scope: the learned address counts as inside Amazon's network.
        assert_eq!(
            h.check(&syn("198.51.100.10", 443)).unwrap(),
            forward("appointment-refresh")
        );
        assert_eq!(
            h.check(&syn("3.8.0.1", 443)).unwrap(),
            forward("appointment-refresh")
        );
        // Learned for a Table 3 row, the address is still not in Table 3.
        assert_eq!(
            h.check(&syn("18.130.5.5", 443)).unwrap(),
            forward("appointment-refresh")
        );
        let v6 = PacketSpec::tcp(
            ip("2001:db8:10::2"),
            ip("2a05:d01d::1"),
            40100,
            443,
            TCP_SYN,
        )
        .build();
        assert_eq!(h.check(&v6).unwrap(), forward("appointment-refresh"));
        // Forgotten (expired): back to the first matching row.
        h.learn(&[], ip("185.13.72.10"));
        assert_eq!(
            h.check(&syn("185.13.72.10", 443)).unwrap(),
            forward("web-mobile-openapi")
        );
    }
}

/// Six rows naming hostnames, one of them covered by the row before it, and a row
/// without names on 443: an address learned for all six names holds more rules than
/// the kernel keeps.
const OVERFLOW_SPEC: &str = r#"
[[network]]
name = "hosting"
scope = "enforce"
description = "hosting"
prefixes = ["185.13.72.0/22"]

[[rule]]
slug = "any-443"
description = "443 to the hosting network"
protocol = "tcp"
ports = [443]
direction = "outbound"
from = ["lan"]
to = ["hosting"]

[[rule]]
slug = "a1"
description = "a1"
hostnames = ["a1.example.com"]
protocol = "tcp"
ports = [1001]
direction = "outbound"
from = ["lan"]
to = ["hosting"]

[[rule]]
slug = "a1-again"
description = "a1 again, covered by a1"
hostnames = ["a1.example.com"]
protocol = "tcp"
ports = [1001]
direction = "outbound"
from = ["lan"]
to = ["hosting"]

[[rule]]
slug = "a2"
description = "a2"
hostnames = ["a2.example.com"]
protocol = "tcp"
ports = [1002]
direction = "outbound"
from = ["lan"]
to = ["hosting"]

[[rule]]
slug = "a3"
description = "a3"
hostnames = ["a3.example.com"]
protocol = "tcp"
ports = [1003]
direction = "outbound"
from = ["lan"]
to = ["hosting"]

[[rule]]
slug = "a4"
description = "a4"
hostnames = ["a4.example.com"]
protocol = "tcp"
ports = [1004]
direction = "outbound"
from = ["lan"]
to = ["hosting"]

[[rule]]
slug = "a5"
description = "a5"
hostnames = ["a5.example.com"]
protocol = "tcp"
ports = [443]
direction = "outbound"
from = ["lan"]
to = ["hosting"]
"#;

/// An address learned for more rules than the kernel keeps (`MAX_LEARNED_ENTRIES`): the
/// first ones in spec order (a covered one not taking a place) decide, and a packet only
/// a cut rule would take is counted under the first matching row, in the kernel and in
/// the model alike.
#[test]
fn an_address_learned_for_more_rules_than_the_kernel_keeps_falls_back_past_the_cut() {
    use emis_policy::spec::{load_policy, SiteOptions, Source};
    let site = SiteOptions {
        site_nets: TEST_SITE.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let spec = Source::new("overflow.toml", OVERFLOW_SPEC);
    let policy = load_policy(&spec, &site).expect("the overflow spec loads");
    let names = [
        "a1.example.com",
        "a2.example.com",
        "a3.example.com",
        "a4.example.com",
        "a5.example.com",
    ];
    for replies in [Replies::Stateful, Replies::Stateless] {
        let mut h = Harness::new(&policy, Mode::Enforce, replies);
        let forward = |slug: &str| allow(rule_id(&policy, slug), Path::Forward);
        let syn = |dst: &str, port: u16| tcp(SITE, dst, 40200, port, TCP_SYN);
        // Under the limit: learned for a5 alone, 443 counts under a5.
        h.learn(&["a5.example.com"], ip("185.13.72.11"));
        assert_eq!(h.check(&syn("185.13.72.11", 443)).unwrap(), forward("a5"));
        // Above it: a1, a2, a3, a4 are kept (a1-again is covered by a1), a5 is cut.
        h.learn(&names, ip("185.13.72.10"));
        assert_eq!(h.check(&syn("185.13.72.10", 1001)).unwrap(), forward("a1"));
        assert_eq!(h.check(&syn("185.13.72.10", 1004)).unwrap(), forward("a4"));
        assert_eq!(
            h.check(&syn("185.13.72.10", 443)).unwrap(),
            forward("any-443"),
            "a5 did not fit: the first matching row"
        );
        // Learned for fewer names, a5 fits again.
        h.learn(&names[1..], ip("185.13.72.10"));
        assert_eq!(h.check(&syn("185.13.72.10", 443)).unwrap(), forward("a5"));
    }
}

#[test]
fn kernel_and_model_agree_on_a_million_packets_of_conversations() {
    let policy = default_policy(TEST_SITE, true);
    let seed: u64 = emis_tests::seed();
    let runs = [
        (Replies::Stateful, Mode::Enforce, 800_000u64),
        (Replies::Stateless, Mode::Audit, 200_000),
    ];
    let mut total = 0;
    for (replies, mode, count) in runs {
        let mut h = Harness::new(&policy, mode, replies);
        // Some destinations learned from DNS, so the learned walk is held to the model too.
        for (names, addr) in LEARNED {
            h.learn(names, ip(addr));
        }
        let mut conversations = Conversations::new(seed ^ count, 3000);
        let mut seen = std::collections::HashMap::<String, u64>::new();
        let mut disagreements = Vec::new();
        for i in 0..count {
            let frame = conversations.frame();
            let decision = match h.check(&frame) {
                Ok(decision) => decision,
                Err(e) => {
                    disagreements.push(format!("packet {i}: {e:#}"));
                    continue;
                }
            };
            let key = match decision {
                Decision::Allow { path, .. } => format!("allow {}", path.name()),
                Decision::Deny { reason, .. } => format!("deny {}", reason.name()),
                Decision::Pass { reason } => format!("pass {}", reason.name()),
            };
            *seen.entry(key).or_default() += 1;
        }
        eprintln!(
            "{replies:?} {mode:?}, seed {seed:#x}: {count} packets, {} disagreements",
            disagreements.len()
        );
        assert!(
            disagreements.is_empty(),
            "{} disagreements between the kernel and the model (seed {seed:#x}, {replies:?}); the first:\n{}",
            disagreements.len(),
            disagreements.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
        );
        assert_eq!(
            h.prog.snapshot().unwrap().total_packets(),
            count,
            "each packet counted exactly once"
        );
        if replies == Replies::Stateful {
            // The established tables agree, and the mix reaches every window outcome.
            let events = h.model.flow_events();
            let stats = h.prog.flow_stats().unwrap();
            eprintln!("{events:?}\n{stats:?}");
            assert_eq!(
                (stats.created, stats.expired, stats.entries),
                (
                    events.created,
                    events.expired,
                    h.model.established_flows() as u64
                ),
                "{events:?}"
            );
            assert!(
                events.rst_honoured > 0
                    && events.rst_ignored > 0
                    && events.fin_ignored > 0
                    && events.new_promoted > 0
                    && events.untracked > 0,
                "{events:?}"
            );
        }
        // The sequences must reach every kind of decision, or agreement proves little.
        let wanted = [
            "allow forward",
            "allow reply",
            "allow related",
            "deny no_rule",
            "deny fragment",
            "deny malformed",
            "deny icmp",
            "deny protocol",
            "pass out_of_scope",
        ];
        for w in wanted {
            assert!(
                seen.get(w).copied().unwrap_or(0) > 0,
                "{replies:?}: no '{w}' among {seen:?}"
            );
        }
        eprintln!("decisions: {seen:?}");
        total += count;
    }
    assert_eq!(total, 1_000_000);
}
