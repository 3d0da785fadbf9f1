//! The egress program (`emis_egress`) through BPF_PROG_TEST_RUN beside the XDP program it
//! serves, against the reference model's egress step; and what the verifier spends on
//! every program of the object. Needs root.

use std::net::IpAddr;

use aya::programs::{SchedClassifier, Xdp};
use emis_common::{
    Decision, FlowKey, FlowValue, Path, FLOW_EVENT_CREATED, FLOW_EVENT_EGRESS_CREATED,
    FLOW_EVENT_NEW_CREATED, FLOW_EVENT_NEW_PROMOTED, FLOW_ORIGIN_EGRESS, FLOW_ORIGIN_INGRESS,
    PROTO_TCP,
};
use emis_lab::site::TEST_SITE;
use emis_policy::{
    compile::compile,
    packet::{PacketSpec, TCP_ACK, TCP_SYN},
    policy::{Mode, Replies},
};
use emis_tests::{default_policy, ip, Harness};

/// Prints the instructions the verifier processed for each program of the emis object,
/// so a change's cost shows in the test log (docs/DEVELOPMENT.md gives the budget).
#[test]
fn every_program_verifies_and_prints_its_cost() {
    let policy = default_policy(TEST_SITE, true);
    let compiled = compile(&policy).unwrap();
    let mut ebpf = emis::loader::load(&compiled, Default::default()).expect("loading (as root)");
    let names: Vec<String> = ebpf.programs().map(|(name, _)| name.to_string()).collect();
    for name in names {
        let program = ebpf.program_mut(&name).unwrap();
        let info = match program {
            aya::programs::Program::Xdp(p) => {
                let p: &mut Xdp = p;
                if p.fd().is_err() {
                    p.load()
                        .unwrap_or_else(|e| panic!("verifying {name}: {e:?}"));
                }
                p.info().unwrap()
            }
            aya::programs::Program::SchedClassifier(p) => {
                let p: &mut SchedClassifier = p;
                if p.fd().is_err() {
                    p.load()
                        .unwrap_or_else(|e| panic!("verifying {name}: {e:?}"));
                }
                p.info().unwrap()
            }
            other => panic!("unexpected program type {:?} for {name}", other.prog_type()),
        };
        println!(
            "verifier: {name}: {} instructions processed, {} translated",
            info.verified_instruction_count().unwrap_or(0),
            info.size_translated().unwrap_or(0)
        );
    }
}

const LAN: &str = "192.168.10.2";
/// The router's WAN address, which masquerade puts in the source.
const WAN: &str = "198.18.0.1";
const EMIS: &str = "10.207.116.10";
/// TCX_NEXT (-1): egress never decides a packet.
const TCX_NEXT: u32 = u32::MAX;

fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let mut p = PacketSpec::tcp(ip(src), ip(dst), sport, dport, flags);
    p.seq = seq;
    p.ack = ack;
    p.build()
}

fn key(src: &str, dst: &str, sport: u16, dport: u16) -> FlowKey {
    let addr = |s: &str| {
        let mut a = [0u8; 16];
        match ip(s) {
            IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => a = v6.octets(),
        }
        a
    };
    FlowKey::new(addr(src), addr(dst), false, PROTO_TCP, sport, dport)
}

/// A packet leaving the router, through the kernel's egress program and the model's step.
fn egress(h: &mut Harness, frame: &[u8]) {
    assert_eq!(h.prog.run_egress(frame).unwrap(), TCX_NEXT);
    h.model.egress(frame);
}

/// The kernel's and the model's flow under `key` agree (the clocks differ, so not the time).
fn same_flow(h: &mut Harness, key: &FlowKey) -> Option<FlowValue> {
    let kernel = h.prog.flow(key).unwrap();
    let model = h.model.flow(key);
    match (kernel, model) {
        (None, None) => None,
        (Some((k, established)), Some(m)) => {
            let strip = |f: FlowValue| FlowValue {
                last_seen_ns: 0,
                ..f
            };
            assert_eq!(strip(k), strip(m), "flow {key:?}");
            assert_eq!(
                established,
                h.model.established(key),
                "the table holding {key:?}"
            );
            Some(m)
        }
        (k, m) => panic!("flow {key:?}: kernel {k:?}, model {m:?}"),
    }
}

fn events_agree(h: &mut Harness) {
    let model = h.model.flow_events();
    for (slot, expected) in [
        (FLOW_EVENT_EGRESS_CREATED, model.egress_created),
        (FLOW_EVENT_NEW_CREATED, model.new_created),
        (FLOW_EVENT_NEW_PROMOTED, model.new_promoted),
        (FLOW_EVENT_CREATED, model.created),
    ] {
        assert_eq!(
            h.prog.flow_event(slot).unwrap(),
            expected,
            "flow event {slot}"
        );
    }
}

#[test]
fn egress_records_masqueraded_and_router_opened_flows_as_the_model_does() {
    let policy = default_policy(TEST_SITE, true);
    let mut h = Harness::new(&policy, Mode::Enforce, Replies::Stateful);

    // Masquerade: the LAN's SYN comes in, leaves with the WAN address, is answered there.
    h.check(&tcp(LAN, EMIS, 40000, 443, TCP_SYN, 1000, 0))
        .unwrap();
    egress(&mut h, &tcp(WAN, EMIS, 40000, 443, TCP_SYN, 1000, 0));
    let post_nat = key(WAN, EMIS, 40000, 443);
    let flow = same_flow(&mut h, &post_nat).expect("recorded under the post-NAT tuple");
    assert_eq!(flow.origin, FLOW_ORIGIN_EGRESS);
    let syn_ack = tcp(EMIS, WAN, 443, 40000, TCP_SYN | TCP_ACK, 5000, 1001);
    let verdict = h.check(&syn_ack).unwrap();
    assert!(
        matches!(verdict, Decision::Allow { path: Path::Reply, rule } if policy.rules[rule as usize].slug == "client-spine-messaging"),
        "{verdict:?}"
    );
    h.check(&tcp(LAN, EMIS, 40000, 443, TCP_ACK, 1001, 5001))
        .unwrap();
    egress(&mut h, &tcp(WAN, EMIS, 40000, 443, TCP_ACK, 1001, 5001));
    let flow = same_flow(&mut h, &post_nat).unwrap();
    assert!(
        flow.assured() && h.model.established(&post_nat),
        "promoted on the forward ACK"
    );
    let pre_nat = same_flow(&mut h, &key(LAN, EMIS, 40000, 443)).unwrap();
    assert_eq!(pre_nat.origin, FLOW_ORIGIN_INGRESS);
    let data = tcp(EMIS, WAN, 443, 40000, TCP_ACK, 5001, 1001);
    assert!(matches!(
        h.check(&data).unwrap(),
        Decision::Allow {
            path: Path::Reply,
            ..
        }
    ));

    // Without NAT the egress program finds the ingress flow and leaves it alone.
    h.check(&tcp(LAN, EMIS, 40001, 443, TCP_SYN, 1, 0)).unwrap();
    let before = same_flow(&mut h, &key(LAN, EMIS, 40001, 443)).unwrap();
    egress(&mut h, &tcp(LAN, EMIS, 40001, 443, TCP_SYN, 1, 0));
    assert_eq!(same_flow(&mut h, &key(LAN, EMIS, 40001, 443)), Some(before));

    // The router's own connection, a port no rule lists, and both ends out of scope.
    egress(&mut h, &tcp(WAN, EMIS, 50000, 443, TCP_SYN, 7, 0));
    let syn_ack = tcp(EMIS, WAN, 443, 50000, TCP_SYN | TCP_ACK, 90, 8);
    assert!(matches!(
        h.check(&syn_ack).unwrap(),
        Decision::Allow {
            path: Path::Reply,
            ..
        }
    ));
    egress(&mut h, &tcp(WAN, EMIS, 50001, 444, TCP_SYN, 7, 0));
    assert_eq!(same_flow(&mut h, &key(WAN, EMIS, 50001, 444)), None);
    let syn_ack = tcp(EMIS, WAN, 444, 50001, TCP_SYN | TCP_ACK, 90, 8);
    assert!(matches!(h.check(&syn_ack).unwrap(), Decision::Deny { .. }));
    egress(
        &mut h,
        &tcp(WAN, "198.51.100.10", 50002, 443, TCP_SYN, 7, 0),
    );
    assert_eq!(
        same_flow(&mut h, &key(WAN, "198.51.100.10", 50002, 443)),
        None
    );
    // A replies' way out (to an ephemeral port) touches nothing.
    egress(&mut h, &tcp(EMIS, LAN, 443, 40000, TCP_ACK, 5001, 1001));
    assert_eq!(same_flow(&mut h, &key(EMIS, LAN, 443, 40000)), None);
    events_agree(&mut h);
    assert_eq!(h.model.flow_events().egress_created, 2);
}
