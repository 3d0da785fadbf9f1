//! The TC egress program's per-packet cost (`emis_egress`, docs/DECISIONS.md "NAT and
//! flows the router opens"): each class of packet leaving the router run with
//! BPF_PROG_TEST_RUN on the egress program and on a no-op TC program, medians kept.
//! Written to `egress-cost.json` beside the main report; `emis-bench egress-cost` runs
//! this step alone.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use aya::programs::{TestRun, TestRunOptions};
use emis_lab::site::SITE_HOST;
use emis_lab::{EMIS_PRIMARY, OUT_OF_SCOPE};
use emis_policy::packet::{PacketSpec, TCP_ACK, TCP_SYN};
use emis_policy::policy::Policy;
use emis_testkit::{programs, BenchPrograms, TestProgram, XDP_PASS};
use serde::Serialize;

/// The router's WAN address, which masquerade puts in the source.
const WAN: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// TCX_NEXT (-1), what both programs return.
const TCX_NEXT: u32 = u32::MAX;

#[derive(Clone, Debug, Serialize)]
pub struct EgressCost {
    pub class: &'static str,
    pub noop_ns: f64,
    pub egress_ns: f64,
    /// What the egress program adds to a packet, over the no-op.
    pub added_ns: f64,
}

fn tcp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
) -> Vec<u8> {
    let mut p = PacketSpec::tcp(IpAddr::V4(src), IpAddr::V4(dst), sport, dport, flags);
    p.seq = seq;
    p.ack = ack;
    p.build()
}

/// A class's name, the ingress frames that set its flow table up first, and its frame.
type Class = (&'static str, Vec<Vec<u8>>, Vec<u8>);

fn classes() -> Vec<Class> {
    let (lan, emis) = (SITE_HOST, EMIS_PRIMARY);
    vec![
        (
            "no NAT: the XDP program's established flow",
            vec![
                tcp(lan, emis, 40000, 443, TCP_SYN, 1000, 0),
                tcp(emis, lan, 443, 40000, TCP_SYN | TCP_ACK, 5000, 1001),
                tcp(lan, emis, 40000, 443, TCP_ACK, 1001, 5001),
            ],
            tcp(lan, emis, 40000, 443, TCP_ACK, 1001, 5001),
        ),
        (
            "masqueraded: its egress-owned flow, tracked",
            Vec::new(),
            tcp(WAN, emis, 40001, 443, TCP_ACK, 1001, 5001),
        ),
        (
            "to the internet on a listed port (443)",
            Vec::new(),
            tcp(lan, OUT_OF_SCOPE, 40002, 443, TCP_ACK, 1, 1),
        ),
        (
            "towards the LAN (an ephemeral port)",
            Vec::new(),
            tcp(emis, lan, 443, 40000, TCP_ACK, 5001, 1001),
        ),
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Measures each class `reps` times (interleaved with the no-op), `repeat` runs a call.
pub fn measure(
    bench: &BenchPrograms,
    policy: &Policy,
    reps: usize,
    repeat: u32,
) -> Result<Vec<EgressCost>> {
    let noop = bench.tc_program(programs::NOOP_TC)?;
    let mut enforcer = TestProgram::load(policy, emis_policy::policy::Mode::Enforce)
        .context("loading the enforcer for BPF_PROG_TEST_RUN")?;
    let mut out = Vec::new();
    for (class, setup, frame) in classes() {
        for f in &setup {
            if enforcer.run(f)? != XDP_PASS {
                bail!("the enforcer dropped a setup packet of `{class}`");
            }
        }
        let (mut n, mut e) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let rn = noop
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    repeat,
                    ..TestRunOptions::new()
                })
                .context("BPF_PROG_TEST_RUN of the no-op TC program")?;
            let re = enforcer.run_egress_repeat(&frame, repeat)?;
            if rn.return_value != TCX_NEXT || re.action != TCX_NEXT {
                bail!(
                    "unexpected return on `{class}`: no-op {}, egress {}",
                    rn.return_value,
                    re.action
                );
            }
            n.push(rn.duration.as_nanos() as f64);
            e.push(re.ns_per_run as f64);
        }
        let (noop_ns, egress_ns) = (median(n), median(e));
        out.push(EgressCost {
            class,
            noop_ns,
            egress_ns,
            added_ns: egress_ns - noop_ns,
        });
    }
    Ok(out)
}

/// Prints the table and writes `egress-cost.json` under `out`.
pub fn report(rows: &[EgressCost], out: &Path) -> Result<()> {
    eprintln!("egress program (emis_egress) per packet, medians:");
    for r in rows {
        eprintln!(
            "  {:<45} no-op {:>6.1} ns   egress {:>6.1} ns   +{:.1} ns",
            r.class, r.noop_ns, r.egress_ns, r.added_ns
        );
    }
    let path = out.join("egress-cost.json");
    std::fs::write(&path, serde_json::to_string_pretty(rows)?)
        .with_context(|| format!("writing {}", path.display()))
}
