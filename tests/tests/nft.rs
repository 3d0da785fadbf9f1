//! `emis export nft` against the XDP program, in a namespace lab. The same frames are sent
//! from the site to the gateway's `gw-site` (one at a time, by the live-frames generator),
//! once with emis attached there (enforce mode, stateless replies) and once with the
//! exported ruleset on gw-site's netdev ingress hook. For each frame the counter emis
//! increments must be the reference model's, and the counter the ruleset increments must
//! name the same decision (or, where the ruleset cannot name it, give the same verdict).
//! Needs root, nftables and network namespaces.

use std::time::{Duration, Instant};

use emis::{
    loader::{self, LoadOptions},
    stats::Snapshot,
};
use emis_common::{stats_index, Counter, Decision, MAP_STATS, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP};
use emis_lab::{in_netns_scoped, site::TEST_SITE, Host, Lab};
use emis_policy::{
    compile::compile,
    model::{self, Frame},
    nft::{self, Family, NftOptions},
    packet::{PacketSpec, TCP_ACK, TCP_SYN},
    policy::{Mode, Policy, Replies},
};
use emis_testkit::{
    attach::attach_native,
    fixture::address_in,
    programs::{self, BenchPrograms},
    testrun::live_frames,
};
use emis_tests::{default_policy, generate::Generator, hex, ip};

const TABLE: &str = "emistest";

/// Every rule forward and as a reply, a bare-SYN "reply", a neighbouring port, the other
/// protocols, a few malformed headers nftables can check, then seeded random frames.
fn frames(policy: &Policy) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for rule in &policy.rules {
        let src = address_in(policy, rule.from[0], false);
        let dst = address_in(policy, rule.to[0], true);
        let port = rule.ports[0].first;
        let spec = |s, d, sport, dport, flags| match rule.protocol.number() {
            PROTO_TCP => PacketSpec::tcp(s, d, sport, dport, flags),
            _ => PacketSpec::udp(s, d, sport, dport),
        };
        out.push(spec(src, dst, 40000, port, TCP_SYN).build());
        out.push(spec(dst, src, port, 40000, TCP_SYN | TCP_ACK).build());
        out.push(spec(dst, src, port, 40000, TCP_SYN).build());
        out.push(spec(src, dst, 40000, port.wrapping_add(1000), TCP_SYN).build());
    }
    let site = ip("192.168.10.2");
    let emis = ip("10.207.116.10");
    let internet = ip("198.51.100.10");
    out.push(PacketSpec::icmp_echo(site, emis).build());
    out.push(PacketSpec::icmp_echo(site, internet).build());
    out.push(PacketSpec::new(site, emis, 47, 0, 0).build());
    out.push(PacketSpec::new(internet, site, 47, 0, 0).build());
    out.push(
        PacketSpec::tcp(site, emis, 40000, 443, TCP_SYN)
            .with_vlans(&[(0x8100, 7)])
            .build(),
    );
    out.push(
        PacketSpec::tcp(
            ip("2001:db8:10::2"),
            ip("2001:db8:ffff::1"),
            40000,
            443,
            TCP_ACK,
        )
        .build(),
    );
    // A TCP data offset below 5, a UDP length below 8, in scope.
    let mut bad_tcp = PacketSpec::tcp(site, emis, 40000, 443, TCP_SYN).build();
    bad_tcp[14 + 20 + 12] = 4 << 4;
    out.push(bad_tcp);
    let mut bad_udp = PacketSpec::udp(site, emis, 40000, 53).build();
    bad_udp[14 + 20 + 5] = 4;
    out.push(bad_udp);
    // ARP.
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    out.push(arp);
    let mut generator = Generator::new(0x6e66_7465_7374);
    let mut random = 0;
    while random < 250 {
        let frame = generator.frame();
        if comparable(&frame) {
            out.push(frame);
            random += 1;
        }
    }
    out
}

/// Frames whose verdicts the ruleset is documented to match (emis-user/src/nft.rs):
/// not later fragments or ICMP errors (emis tracks what they belong to), not two VLAN
/// tags, not TCP/UDP headers the ruleset cannot check.
fn comparable(frame: &[u8]) -> bool {
    let tag = |at: usize| {
        frame
            .get(at..at + 2)
            .is_some_and(|b| matches!(u16::from_be_bytes([b[0], b[1]]), 0x8100 | 0x88a8))
    };
    if tag(12) && tag(16) {
        return false;
    }
    match model::parse(frame) {
        Frame::Ip(facts) => {
            if facts.malformed || (facts.fragment && facts.frag_offset != 0) {
                return false;
            }
            if matches!(facts.proto, 6 | 17) && facts.l4.is_none() {
                return false;
            }
            if facts.proto == PROTO_ICMP || facts.proto == PROTO_ICMPV6 {
                let kind = facts.icmp.map(|i| i.kind);
                return matches!(kind, Some(0 | 8 | 128 | 129));
            }
            true
        }
        _ => true,
    }
}

/// Sends one frame from site0 with the live-frames generator (a thread in the site namespace).
fn send(programs: &BenchPrograms, site_ns: &str, frame: &[u8]) {
    let tx = programs.program(programs::TX).unwrap();
    in_netns_scoped(site_ns, || {
        let index = emis_lab::ifindex(emis_lab::SITE_IFACE)?;
        live_frames(tx, frame, index, 1, 1)
    })
    .and_then(|sent| sent)
    .unwrap_or_else(|e| panic!("sending frame {}: {e:#}", hex(frame)));
}

fn emis_counters(ebpf: &aya::Ebpf) -> Vec<Counter> {
    let map = ebpf.map(MAP_STATS).expect("stats map");
    let stats: aya::maps::PerCpuArray<_, Counter> = aya::maps::PerCpuArray::try_from(map).unwrap();
    Snapshot::read(&stats).unwrap().counters
}

fn nft_counters(lab: &Lab) -> Vec<(String, u64)> {
    let out = lab
        .exec(
            Host::Gateway,
            "nft",
            &["-j", "list", "counters", "table", "netdev", TABLE],
        )
        .expect("nft list counters");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| {
            let c = &o["counter"];
            Some((c["name"].as_str()?.to_string(), c["packets"].as_u64()?))
        })
        .collect()
}

/// Polls `read` until its total grows by exactly one; returns the (before, after) pair.
fn one_more<T: Clone>(
    before: T,
    total: impl Fn(&T) -> u64,
    read: impl Fn() -> T,
    what: &str,
    frame: &[u8],
) -> T {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let now = read();
        let grown = total(&now) - total(&before);
        if grown == 1 {
            return now;
        }
        assert!(
            grown == 0 && Instant::now() < deadline,
            "{what} counted {grown} packets for one frame {}",
            hex(frame)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn exported_ruleset_decides_as_the_xdp_program() {
    let policy = default_policy(TEST_SITE, true);
    let frames = frames(&policy);
    let lab = Lab::create("emisnfttest").expect("creating the lab (run as root)");
    let gw = lab.ns(Host::Gateway);
    let site = lab.ns(Host::Site);
    // Nothing but the test's frames may reach gw-site: no IPv6 chatter, no forwarding
    // (so nothing answers a forwarded frame through the site).
    for host in Host::ALL {
        in_netns_scoped(&lab.ns(host), || {
            std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1")
        })
        .unwrap()
        .unwrap();
    }
    in_netns_scoped(&gw, || std::fs::write("/proc/sys/net/ipv4/ip_forward", "0"))
        .unwrap()
        .unwrap();
    // A veth without XDP takes XDP-transmitted frames only with GRO on.
    lab.exec(Host::Gateway, "ethtool", &["-K", "gw-site", "gro", "on"])
        .unwrap();
    let programs = BenchPrograms::load().expect("loading the benchmark programs");

    // 1. emis, enforce, stateless replies.
    let options = LoadOptions {
        mode: Mode::Enforce,
        replies: Replies::Stateless,
        ..LoadOptions::default()
    };
    let mut ebpf = loader::load(&compile(&policy).unwrap(), options).unwrap();
    attach_native(loader::program_mut(&mut ebpf).unwrap(), &gw, "gw-site").unwrap();
    let total = |c: &Vec<Counter>| c.iter().map(|c| c.packets).sum::<u64>();
    let mut decisions = Vec::new();
    for frame in &frames {
        let decision = model::decide(&policy, frame);
        let before = emis_counters(&ebpf);
        send(&programs, &site, frame);
        let after = one_more(
            before.clone(),
            total,
            || emis_counters(&ebpf),
            "emis",
            frame,
        );
        let index = stats_index(decision, Mode::Enforce.raw()) as usize;
        assert_eq!(
            after[index].packets,
            before[index].packets + 1,
            "emis did not count {decision:?} for frame {}",
            hex(frame)
        );
        decisions.push(decision);
    }
    drop(ebpf);

    // 2. The exported ruleset on the same interface.
    let text = nft::ruleset(
        &policy,
        &NftOptions {
            family: Family::Netdev,
            ifaces: vec!["gw-site".into()],
            table: TABLE.into(),
            ..Default::default()
        },
    )
    .unwrap();
    let path = std::env::temp_dir().join("emis-nft-test.nft");
    std::fs::write(&path, text).unwrap();
    let loaded = lab.exec(Host::Gateway, "nft", &["-f", &path.display().to_string()]);
    let _ = std::fs::remove_file(&path);
    loaded.expect("loading the exported ruleset (is nftables installed?)");
    let ntotal = |c: &Vec<(String, u64)>| c.iter().map(|c| c.1).sum::<u64>();
    let mut compared = 0;
    for (frame, decision) in frames.iter().zip(&decisions) {
        let before = nft_counters(&lab);
        send(&programs, &site, frame);
        let after = one_more(
            before.clone(),
            ntotal,
            || nft_counters(&lab),
            "nftables",
            frame,
        );
        let moved = before
            .iter()
            .zip(&after)
            .find(|(b, a)| a.1 > b.1)
            .map(|(_, a)| a.0.clone())
            .unwrap();
        let denied = matches!(decision, Decision::Deny { .. });
        assert_eq!(
            moved.starts_with("drop_"),
            denied,
            "verdicts differ for frame {}: emis {decision:?}, nftables counter {moved}",
            hex(frame)
        );
        if let Some(expected) = nft::decision_counter(&policy, Mode::Enforce, *decision) {
            assert_eq!(
                moved,
                expected,
                "counters differ for frame {}: emis {decision:?}",
                hex(frame)
            );
            compared += 1;
        }
    }
    assert!(
        compared > frames.len() / 2,
        "only {compared} of {} frames compared by counter",
        frames.len()
    );
}
