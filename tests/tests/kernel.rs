//! The loaded kernel program, driven through BPF_PROG_TEST_RUN, must give the verdict
//! docs/DECISIONS.md gives and the reference model computes, and count it once. Needs root.

use std::net::IpAddr;

use emis_common::{Decision, DenyReason, PassReason, Path, PROTO_TCP};
use emis_lab::site::TEST_SITE;
use emis_policy::{
    model,
    packet::{PacketSpec, TCP_ACK, TCP_FIN, TCP_SYN},
    policy::{Mode, Policy, Replies, Scope},
};
use emis_testkit::{fixture::address_in, VERIFIER_BUDGET, XDP_DROP, XDP_PASS};
use emis_tests::{default_policy, generate::Generator, ip, Harness};

fn frame(proto: u8, src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    match proto {
        PROTO_TCP => PacketSpec::tcp(src, dst, sport, dport, flags).build(),
        _ => PacketSpec::udp(src, dst, sport, dport).build(),
    }
}

fn in_enforce_scope(policy: &Policy, addr: IpAddr) -> bool {
    policy
        .networks
        .iter()
        .any(|n| n.scope == Scope::Enforce && n.prefixes.iter().any(|p| p.contains(&addr)))
}

#[test]
fn every_rule_allows_its_traffic_and_its_replies_and_denies_a_neighbouring_port() {
    let policy = default_policy(TEST_SITE, true);
    for replies in [Replies::Stateful, Replies::Stateless] {
        every_rule(&policy, replies);
    }
}

fn every_rule(policy: &Policy, replies: Replies) {
    let mut h = Harness::new(policy, Mode::Enforce, replies);
    for (id, rule) in policy.rules.iter().enumerate() {
        let src = address_in(policy, rule.from[0], false);
        let dst = address_in(policy, rule.to[0], true);
        let proto = rule.protocol.number();
        let port = rule.ports[0].first;

        let forward = frame(proto, src, dst, 40000, port, TCP_SYN);
        let decision = h.check(&forward).unwrap();
        let Decision::Allow {
            rule: counted,
            path: Path::Forward,
        } = decision
        else {
            panic!(
                "rule {}: forward packet {src} -> {dst}:{port} got {decision:?}",
                rule.slug
            );
        };
        // Rules that match the same packets count under the first of them in spec order.
        let counted_rule = &policy.rules[counted as usize];
        assert!(
            counted as usize <= id
                && counted_rule.protocol == rule.protocol
                && counted_rule.has_port(port)
        );

        let reply = frame(proto, dst, src, port, 40000, TCP_SYN | TCP_ACK);
        let decision = h.check(&reply).unwrap();
        // A stateful flow with both ends out of enforce scope keeps no entry: its replies
        // pass as out of scope.
        let untracked = replies == Replies::Stateful
            && !in_enforce_scope(policy, src)
            && !in_enforce_scope(policy, dst);
        assert!(
            matches!(
                decision,
                Decision::Allow {
                    path: Path::Reply,
                    ..
                } | Decision::Allow {
                    path: Path::Forward,
                    ..
                }
            ) || (untracked
                && decision
                    == Decision::Pass {
                        reason: PassReason::OutOfScope
                    }),
            "rule {}: reply got {decision:?}",
            rule.slug
        );

        let neighbour = (1..100u16)
            .flat_map(|d| [port.wrapping_add(d), port.wrapping_sub(d)])
            .find(|&p| {
                !policy
                    .rules
                    .iter()
                    .any(|r| r.protocol == rule.protocol && r.has_port(p))
            })
            .unwrap();
        let denied = frame(proto, src, dst, 40000, neighbour, TCP_SYN);
        let decision = h.check(&denied).unwrap();
        if in_enforce_scope(policy, src) || in_enforce_scope(policy, dst) {
            assert!(
                matches!(
                    decision,
                    Decision::Deny {
                        reason: DenyReason::NoRule,
                        ..
                    }
                ),
                "rule {}: neighbouring port {neighbour} got {decision:?}",
                rule.slug
            );
            assert_eq!(h.prog.run(&denied).unwrap(), XDP_DROP);
        } else {
            // Site-to-site and count-scope (AWS) traffic is never dropped for lack of a rule.
            assert_eq!(
                decision,
                Decision::Pass {
                    reason: PassReason::OutOfScope
                },
                "rule {}",
                rule.slug
            );
        }
    }
}

#[test]
fn stateless_replies_need_the_rule_port_as_source_and_no_bare_syn() {
    let policy = default_policy(TEST_SITE, false);
    let mut h = Harness::new(&policy, Mode::Enforce, Replies::Stateless);
    let emis = ip("10.207.116.10");
    let site = ip("192.168.10.2");
    let syn = PacketSpec::tcp(emis, site, 443, 40000, TCP_SYN).build();
    assert!(matches!(
        h.check(&syn).unwrap(),
        Decision::Deny {
            reason: DenyReason::NoRule,
            ..
        }
    ));
    assert_eq!(h.prog.run(&syn).unwrap(), XDP_DROP);
    let fin = PacketSpec::tcp(emis, site, 443, 40000, TCP_FIN | TCP_ACK).build();
    assert_eq!(
        h.check(&fin).unwrap(),
        Decision::Allow {
            rule: 3,
            path: Path::Reply
        }
    );
    let other_port = PacketSpec::tcp(emis, site, 444, 40000, TCP_ACK).build();
    assert!(matches!(
        h.check(&other_port).unwrap(),
        Decision::Deny {
            reason: DenyReason::NoRule,
            ..
        }
    ));
}

/// The header variants a frame can take; each must reach the same verdict as the plain packet.
fn variants(base: &PacketSpec) -> Vec<(String, PacketSpec)> {
    let mut out = vec![("plain".to_string(), base.clone())];
    out.push(("802.1Q".into(), base.clone().with_vlans(&[(0x8100, 10)])));
    out.push((
        "QinQ 802.1ad+802.1Q".into(),
        base.clone().with_vlans(&[(0x88a8, 100), (0x8100, 10)]),
    ));
    out.push((
        "double 802.1Q".into(),
        base.clone().with_vlans(&[(0x8100, 100), (0x8100, 10)]),
    ));
    out.push(("PPPoE".into(), base.clone().in_pppoe()));
    out.push((
        "PPPoE in QinQ".into(),
        base.clone()
            .with_vlans(&[(0x88a8, 100), (0x8100, 10)])
            .in_pppoe(),
    ));
    if base.src.is_ipv4() {
        for len in [1usize, 3, 4, 8, 20, 40] {
            let mut p = base.clone();
            p.ipv4_options = vec![1; len];
            out.push((format!("IPv4 options {len} bytes"), p));
        }
    } else {
        for chain in [
            vec![(0u8, 8usize)],
            vec![(0, 8), (60, 16), (43, 24)],
            vec![(60, 8); 6],
        ] {
            let mut p = base.clone();
            p.ipv6_ext = chain.clone();
            out.push((format!("IPv6 extension headers {chain:?}"), p));
        }
    }
    out
}

#[test]
fn vlan_tags_ip_options_and_ipv6_extension_headers_do_not_change_the_verdict() {
    let policy = default_policy(TEST_SITE, true);
    let mut h = Harness::new(&policy, Mode::Enforce, Replies::Stateless);
    let cases = [
        PacketSpec::tcp(ip("192.168.10.2"), ip("10.207.116.10"), 40000, 443, TCP_SYN),
        PacketSpec::tcp(ip("192.168.10.2"), ip("10.207.116.10"), 40000, 444, TCP_SYN),
        PacketSpec::tcp(
            ip("10.207.116.10"),
            ip("192.168.10.2"),
            443,
            40000,
            TCP_SYN | TCP_ACK,
        ),
        PacketSpec::udp(ip("192.168.10.2"), ip("192.168.20.7"), 40000, 8090),
        PacketSpec::tcp(ip("192.168.10.2"), ip("198.51.100.10"), 40000, 22, TCP_SYN),
        PacketSpec::tcp(
            ip("2001:db8:10::2"),
            ip("2a05:d01c::10"),
            40000,
            443,
            TCP_SYN,
        ),
        PacketSpec::tcp(
            ip("2001:db8:10::2"),
            ip("2a05:d01c::10"),
            40000,
            22,
            TCP_SYN,
        ),
    ];
    for base in cases {
        let expected = model::decide(&policy, &base.build());
        for (name, variant) in variants(&base) {
            assert_eq!(
                h.check(&variant.build()).unwrap(),
                expected,
                "{name} of {base:?}"
            );
        }
    }
    // A third tag is beyond what is parsed: the frame is not IP as far as the policy
    // goes, and counted as such (DECISIONS.md, encapsulations).
    let triple = PacketSpec::tcp(ip("192.168.10.2"), ip("10.207.116.10"), 40000, 444, TCP_SYN)
        .with_vlans(&[(0x88a8, 1), (0x8100, 2), (0x8100, 3)])
        .build();
    assert_eq!(
        h.check(&triple).unwrap(),
        Decision::Pass {
            reason: PassReason::VlanTooDeep
        }
    );
}

/// Half the verifier's budget: the headroom later features on the per-packet path spend.
const VERIFIER_CEILING: u32 = VERIFIER_BUDGET / 2;

#[test]
fn both_programs_leave_the_verifier_half_its_budget() {
    let policy = default_policy(TEST_SITE, false);
    let mut h = Harness::new(&policy, Mode::Enforce, Replies::Stateful);
    let all = h.prog.program_stats().unwrap();
    for stats in &all {
        eprintln!(
            "{}: verifier processed {} insns, {} after rewrites, JIT {} bytes",
            stats.program, stats.verified_insns, stats.xlated_insns, stats.jited_bytes
        );
    }
    for stats in &all {
        assert!(
            stats.verified_insns <= VERIFIER_CEILING,
            "{} took {} of the verifier's {VERIFIER_BUDGET} instructions, above the ceiling \
             of {VERIFIER_CEILING} (docs/DEVELOPMENT.md, the verifier's budget)",
            stats.program,
            stats.verified_insns
        );
    }
}

#[test]
fn audit_mode_passes_denied_packets_and_counts_them_and_switches_without_reload() {
    let policy = default_policy(TEST_SITE, false);
    let mut h = Harness::new(&policy, Mode::Audit, Replies::Stateful);
    let denied =
        PacketSpec::tcp(ip("192.168.10.2"), ip("10.207.116.10"), 40000, 444, TCP_SYN).build();
    assert!(matches!(h.check(&denied).unwrap(), Decision::Deny { .. }));
    assert_eq!(h.prog.run(&denied).unwrap(), XDP_PASS);
    h.set_mode(Mode::Enforce);
    assert_eq!(h.prog.run(&denied).unwrap(), XDP_DROP);
    h.check(&denied).unwrap();
}

#[test]
fn every_truncation_of_every_packet_kind_is_decided_like_the_model_and_never_aborts() {
    let policy = default_policy(TEST_SITE, true);
    let site = ip("192.168.10.2");
    let n3 = ip("10.207.116.10");
    let mut kinds = vec![
        PacketSpec::tcp(site, n3, 40000, 443, TCP_SYN),
        PacketSpec::tcp(n3, site, 443, 40000, TCP_SYN | TCP_ACK),
        PacketSpec::udp(site, ip("192.168.20.7"), 40000, 8088),
        PacketSpec::icmp_echo(site, n3),
        PacketSpec::new(site, n3, 47, 0, 0),
        PacketSpec::tcp(
            ip("2001:db8:10::2"),
            ip("2a05:d01c::10"),
            40000,
            443,
            TCP_SYN,
        ),
        PacketSpec::udp(ip("2001:db8:10::2"), ip("2001:db8:10::3"), 1, 8090),
    ];
    let mut with_options =
        PacketSpec::tcp(site, n3, 40000, 443, TCP_SYN).with_vlans(&[(0x88a8, 1), (0x8100, 2)]);
    with_options.ipv4_options = vec![1; 12];
    kinds.push(with_options);
    let mut with_ext = PacketSpec::tcp(
        ip("2001:db8:10::2"),
        ip("2a05:d01c::10"),
        40000,
        443,
        TCP_SYN,
    );
    with_ext.ipv6_ext = vec![(0, 8), (44, 8), (60, 24)];
    kinds.push(with_ext);
    let mut first_fragment = PacketSpec::udp(site, n3, 40000, 33962);
    first_fragment.more_fragments = true;
    kinds.push(first_fragment);
    kinds.push(PacketSpec::tcp(site, n3, 40000, 443, TCP_SYN).in_pppoe());
    kinds.push(
        PacketSpec::tcp(
            ip("2001:db8:10::2"),
            ip("2a05:d01c::10"),
            40000,
            443,
            TCP_SYN,
        )
        .with_vlans(&[(0x8100, 7)])
        .in_pppoe(),
    );
    for replies in [Replies::Stateful, Replies::Stateless] {
        let mut h = Harness::new(&policy, Mode::Enforce, replies);
        let mut runs = 0u64;
        for kind in &kinds {
            let full = kind.build();
            // BPF_PROG_TEST_RUN refuses XDP frames shorter than an Ethernet header.
            for len in 14..=full.len() {
                h.check(&full[..len])
                    .unwrap_or_else(|e| panic!("{kind:?} cut to {len} bytes: {e:#}"));
                runs += 1;
            }
        }
        assert_eq!(
            h.prog.snapshot().unwrap().total_packets(),
            runs,
            "each packet is counted exactly once"
        );
    }
}

#[test]
fn kernel_agrees_with_the_reference_model_on_ten_thousand_random_frames() {
    let policy = default_policy(TEST_SITE, true);
    let seed = emis_tests::seed();
    for (mode, replies) in [
        (Mode::Enforce, Replies::Stateless),
        (Mode::Audit, Replies::Stateless),
        (Mode::Enforce, Replies::Stateful),
    ] {
        let mut h = Harness::new(&policy, mode, replies);
        let mut generator = Generator::new(seed);
        let (mut allowed, mut denied) = (0, 0);
        let count = 10_000u64;
        for _ in 0..count {
            let frame = generator.frame();
            match h
                .check(&frame)
                .unwrap_or_else(|e| panic!("seed {seed:#x}, {mode:?}, {replies:?}: {e:#}"))
            {
                Decision::Allow { .. } => allowed += 1,
                Decision::Deny { .. } => denied += 1,
                Decision::Pass { .. } => {}
            }
        }
        assert_eq!(
            h.prog.snapshot().unwrap().total_packets(),
            count,
            "each packet is counted exactly once"
        );
        // The generator must exercise both sides of the policy, or this test proves little.
        assert!(
            allowed > count / 50 && denied > count / 10,
            "allowed {allowed}, denied {denied} of {count}"
        );
    }
}

/// Every packet is counted once more under the interface it arrived on and what became
/// of it. BPF_PROG_TEST_RUN delivers frames on the loopback device (ifindex 1).
#[test]
fn packets_are_counted_by_ingress_interface_and_action() {
    use emis_common::IfaceAction;
    const LO: u32 = 1;
    let policy = default_policy(TEST_SITE, false);
    let mut h = Harness::new(&policy, Mode::Enforce, Replies::Stateful);
    let denied =
        PacketSpec::tcp(ip("192.168.10.2"), ip("10.207.116.10"), 40000, 444, TCP_SYN).build();
    let allowed =
        PacketSpec::tcp(ip("192.168.10.2"), ip("10.207.116.10"), 40000, 443, TCP_SYN).build();
    let outside = PacketSpec::tcp(ip("192.0.2.1"), ip("198.51.100.1"), 1, 2, TCP_SYN).build();
    for _ in 0..3 {
        assert_eq!(h.prog.run(&denied).unwrap(), XDP_DROP);
    }
    for _ in 0..2 {
        assert_eq!(h.prog.run(&allowed).unwrap(), XDP_PASS);
    }
    assert_eq!(h.prog.run(&outside).unwrap(), XDP_PASS);
    let count = |h: &mut Harness, action| h.prog.iface_counter(LO, action).unwrap();
    let drop = count(&mut h, IfaceAction::Drop);
    assert_eq!((drop.packets, drop.bytes), (3, 3 * denied.len() as u64));
    assert_eq!(count(&mut h, IfaceAction::Allow).packets, 2);
    assert_eq!(count(&mut h, IfaceAction::Pass).packets, 1);
    assert_eq!(count(&mut h, IfaceAction::Audit).packets, 0);
    h.set_mode(Mode::Audit);
    assert_eq!(h.prog.run(&denied).unwrap(), XDP_PASS);
    assert_eq!(count(&mut h, IfaceAction::Audit).packets, 1);
    assert_eq!(count(&mut h, IfaceAction::Drop).packets, 3);
    // Nothing arrived on another interface, nor in the overflow slot.
    assert_eq!(
        h.prog
            .iface_counter(emis_common::IFACE_OVERFLOW_SLOT, IfaceAction::Drop)
            .unwrap()
            .packets,
        0
    );
}

/// `--kernel-log debug` with a match: the program writes one aya-log line for a packet
/// from or to the matched address, allowed or denied, and none for another host's.
#[test]
fn the_kernel_log_traces_the_decisions_of_matching_packets_only() {
    use emis::kernel_log::{parse_match, Collect, TraceFilter, TraceLine};
    use emis_common::TRACE_CODE_ALLOWED;
    let policy = default_policy(TEST_SITE, false);
    let denied =
        |src: &str| PacketSpec::tcp(ip(src), ip("10.207.116.10"), 40000, 444, TCP_SYN).build();
    let allowed =
        PacketSpec::tcp(ip("192.168.10.2"), ip("10.207.116.10"), 40000, 443, TCP_SYN).build();

    let filter = TraceFilter {
        prefix: Some(parse_match("192.168.10.2").unwrap()),
    };
    let mut prog = emis_testkit::TestProgram::load_with(
        &policy,
        emis::loader::LoadOptions {
            trace: Some(filter.to_kernel([])),
            ..Default::default()
        },
    )
    .expect("the program with its trace loads");
    let lines = Collect::default();
    let mut log = prog.kernel_log(lines.clone()).unwrap();
    assert_eq!(prog.run(&denied("192.168.10.2")).unwrap(), XDP_DROP);
    assert_eq!(prog.run(&denied("192.168.10.3")).unwrap(), XDP_DROP);
    assert_eq!(prog.run(&allowed).unwrap(), XDP_PASS);
    log.flush();
    let got = lines.0.lock().unwrap().clone();
    let traced: Vec<TraceLine> = got
        .iter()
        .map(|l| TraceLine::parse(l).unwrap_or_else(|| panic!("not a trace line: {l}")))
        .collect();
    assert_eq!(traced.len(), 2, "the matching packets only: {got:?}");
    assert!(
        traced.iter().all(|t| t.src == ip("192.168.10.2")),
        "{got:?}"
    );
    assert_eq!(traced[0].code, DenyReason::NoRule as u32, "{got:?}");
    assert_eq!((traced[0].proto, traced[0].mode), (PROTO_TCP, 0));
    assert_eq!(traced[0].dst, ip("10.207.116.10"));
    assert_ne!(traced[1].code & TRACE_CODE_ALLOWED, 0, "{got:?}");

    // On an interface marked as bare IP (the daemon marks emis_l3's), the trace reads the
    // addresses from the first byte: BPF_PROG_TEST_RUN's frames arrive on ifindex 1.
    let mut l3 = emis_testkit::TestProgram::load_with(
        &policy,
        emis::loader::LoadOptions {
            trace: Some(filter.to_kernel([1])),
            ..Default::default()
        },
    )
    .unwrap();
    let lines = Collect::default();
    let mut log = l3.kernel_log(lines.clone()).unwrap();
    let bare =
        PacketSpec::tcp(ip("192.168.10.2"), ip("10.207.116.10"), 40000, 444, TCP_SYN).build_ip();
    assert_eq!(l3.run_link(emis_common::Link::Ip, &bare).unwrap(), XDP_DROP);
    log.flush();
    let got = lines.0.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let line = TraceLine::parse(&got[0]).unwrap();
    assert_eq!(
        (line.src, line.dst),
        (ip("192.168.10.2"), ip("10.207.116.10"))
    );

    // IPv6: a /48 holds the site's address; the v4 packet of another family is not traced.
    let policy6 = default_policy(TEST_SITE, true);
    let v6 = PacketSpec::tcp(
        ip("2001:db8:10::2"),
        ip("2a05:d01c::10"),
        40000,
        443,
        TCP_SYN,
    )
    .build();
    assert!(
        !matches!(model::decide(&policy6, &v6), Decision::Pass { .. }),
        "the IPv6 packet is decided by a rule or denied"
    );
    let mut p6 = emis_testkit::TestProgram::load_with(
        &policy6,
        emis::loader::LoadOptions {
            trace: Some(
                TraceFilter {
                    prefix: Some(parse_match("2001:db8:10::/48").unwrap()),
                }
                .to_kernel([]),
            ),
            ..Default::default()
        },
    )
    .unwrap();
    let lines = Collect::default();
    let mut log = p6.kernel_log(lines.clone()).unwrap();
    p6.run(&v6).unwrap();
    p6.run(&denied("192.168.10.2")).unwrap();
    log.flush();
    let got = lines.0.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let line = TraceLine::parse(&got[0]).unwrap();
    assert_eq!(
        (line.src, line.dst),
        (ip("2001:db8:10::2"), ip("2a05:d01c::10"))
    );

    // Off (the default), nothing is written.
    let mut quiet = emis_testkit::TestProgram::load(&policy, Mode::Enforce).unwrap();
    let lines = Collect::default();
    let mut log = quiet.kernel_log(lines.clone()).unwrap();
    quiet.run(&denied("192.168.10.2")).unwrap();
    log.flush();
    assert!(lines.0.lock().unwrap().is_empty());
}

/// Count-scope IPv4 classes come from the /16 index and its chunks, and from the trie only
/// in a /24 holding a longer prefix; IPv6 ones from the trie, only in a /16 the IPv6
/// filter marks (emis_common::count_table). Every way through gives the model's decision
/// and counter: nested AWS prefixes from /14 to /26 and IPv6 ones, on both sides of every
/// edge, and IPv6 addresses in a marked /16 but outside its prefixes.
#[test]
fn count_scope_addresses_decide_alike_through_the_index_the_chunks_and_the_trie() {
    use emis_policy::spec::{load_policy, SiteOptions, Source};
    const RANGES: &str = r#"{
  "syncToken": "1", "createDate": "2026-11-01-00-00-00",
  "prefixes": [
    {"ip_prefix": "3.8.0.0/14", "region": "eu-west-2", "service": "AMAZON", "network_border_group": "eu-west-2"},
    {"ip_prefix": "3.8.16.0/20", "region": "eu-west-2", "service": "EC2", "network_border_group": "eu-west-2"},
    {"ip_prefix": "3.8.16.64/26", "region": "eu-west-2", "service": "EC2", "network_border_group": "eu-west-2"},
    {"ip_prefix": "18.130.0.0/16", "region": "eu-west-2", "service": "EC2", "network_border_group": "eu-west-2"},
    {"ip_prefix": "35.176.4.0/24", "region": "eu-west-2", "service": "EC2", "network_border_group": "eu-west-2"},
    {"ip_prefix": "35.176.9.128/25", "region": "eu-west-2", "service": "EC2", "network_border_group": "eu-west-2"},
    {"ip_prefix": "52.95.0.0/16", "region": "us-east-1", "service": "AMAZON", "network_border_group": "us-east-1"}
  ],
  "ipv6_prefixes": [
    {"ipv6_prefix": "2a05:d01c::/36", "region": "eu-west-2", "service": "AMAZON", "network_border_group": "eu-west-2"},
    {"ipv6_prefix": "2a05:d07a:a000::/40", "region": "eu-west-2", "service": "EC2", "network_border_group": "eu-west-2"}
  ]
}"#;
    let site = SiteOptions {
        site_nets: TEST_SITE.iter().map(|s| s.to_string()).collect(),
        aws_ip_ranges: Some(Source::new("nested-ip-ranges.json", RANGES)),
        ..Default::default()
    };
    let policy = load_policy(&Source::default_spec(), &site).expect("the embedded spec loads");
    let mut h = Harness::new(&policy, Mode::Enforce, Replies::Stateless);
    let edges = [
        "3.8.0.0/14",
        "3.8.16.0/20",
        "3.8.16.64/26",
        "18.130.0.0/16",
        "35.176.4.0/24",
        "35.176.9.128/25",
        "52.95.0.0/16",
    ];
    let mut probes: Vec<std::net::Ipv4Addr> = Vec::new();
    for net in edges {
        let (addr, len) = net.split_once('/').unwrap();
        let first = u32::from(addr.parse::<std::net::Ipv4Addr>().unwrap());
        let last = first | (u32::MAX >> len.parse::<u32>().unwrap());
        for a in [
            first - 1,
            first,
            first + 1,
            (first + last) / 2,
            last,
            last + 1,
        ] {
            probes.push(a.into());
        }
    }
    let (mut counted, mut outside) = (0, 0);
    for dst in probes {
        for dport in [443, 444] {
            let syn =
                PacketSpec::tcp(ip("192.168.10.2"), IpAddr::V4(dst), 40000, dport, TCP_SYN).build();
            match h
                .check(&syn)
                .unwrap_or_else(|e| panic!("to {dst}:{dport}: {e:#}"))
            {
                Decision::Allow { .. } => counted += 1,
                _ => outside += 1,
            }
        }
    }
    let v6_probes = [
        "2a05:d01c::1",
        "2a05:d01c:fff:ffff::1",
        "2a05:d01b:ffff::1",
        "2a05:d01d::1",
        "2a05:d07a:a000::7",
        "2a05:d07a:a100::7",
        "2a05:d100::1",
        "2a06::1",
        "2001:db8:ffff::10",
    ];
    for dst in v6_probes {
        for dport in [443, 444] {
            let syn = PacketSpec::tcp(ip("2001:db8:10::2"), ip(dst), 40000, dport, TCP_SYN).build();
            match h
                .check(&syn)
                .unwrap_or_else(|e| panic!("to [{dst}]:{dport}: {e:#}"))
            {
                Decision::Allow { .. } => counted += 1,
                _ => outside += 1,
            }
        }
    }
    // The probes must reach both the count-scope rule and the traffic outside it.
    assert!(
        counted >= 20 && outside >= 20,
        "counted {counted}, outside {outside}"
    );
}
