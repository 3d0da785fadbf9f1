//! Per-packet cost with BPF_PROG_TEST_RUN: the no-op, parse-only and full enforcer
//! programs loaded side by side, each packet class run on each in turn, medians kept.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context as _, Result};
use emis_policy::{
    packet::{PacketSpec, TCP_ACK, TCP_SYN},
    policy::{Mode, Policy},
    spec::{load_policy, SiteOptions, Source},
};
use emis_testkit::{
    programs::{self, BenchPrograms},
    run_repeat, TestProgram, XDP_DROP, XDP_PASS,
};
use serde::Serialize;

use emis_lab::site::{SITE_HOST, SITE_HOST_V6, TEST_SITE};
use emis_lab::{EMIS_PRIMARY, OUT_OF_SCOPE as INTERNET_HOST};
/// An IPv6 internet host outside every enforce-scope network.
pub const INTERNET_HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0x10);

/// The embedded spec with the test site (the tests' and the lab's) and, optionally, an
/// ip-ranges.json.
pub fn policy(aws_ip_ranges: Option<Source>) -> Result<Policy> {
    let site = SiteOptions {
        site_nets: TEST_SITE.iter().map(|s| s.to_string()).collect(),
        aws_ip_ranges,
        ..Default::default()
    };
    Ok(load_policy(&Source::default_spec(), &site)?)
}

/// One packet class: a frame and the action the enforcer must give it.
#[derive(Clone, Debug)]
pub struct Class {
    pub name: &'static str,
    pub frame: Vec<u8>,
    pub expect: u32,
    /// Frames run once before the class is measured (a handshake that establishes its flow).
    pub prelude: Vec<Vec<u8>>,
}

/// The class whose drop the tighter target is about.
pub const DENIED_CLASS: &str = "denied in scope";

fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

/// The classes of the issue, in the order they are run (the reply follows the flow its
/// forward packet opened, so it is a reply in stateful mode too).
pub fn classes() -> Vec<Class> {
    let tcp = |src: IpAddr, dst: IpAddr, sport, dport, flags| {
        PacketSpec::tcp(src, dst, sport, dport, flags).build()
    };
    let segment = |src: Ipv4Addr, dst: Ipv4Addr, sport, dport, flags, seq, ack| {
        PacketSpec {
            seq,
            ack,
            ..PacketSpec::tcp(v4(src), v4(dst), sport, dport, flags)
        }
        .build()
    };
    // A completed handshake, so the measured ACK belongs to an established flow.
    let (client, server) = (1000u32, 5000u32);
    let established = Class {
        name: "allowed (established flow)",
        frame: segment(
            SITE_HOST,
            EMIS_PRIMARY,
            40002,
            443,
            TCP_ACK,
            client + 1,
            server + 1,
        ),
        expect: XDP_PASS,
        prelude: vec![
            segment(SITE_HOST, EMIS_PRIMARY, 40002, 443, TCP_SYN, client, 0),
            segment(
                EMIS_PRIMARY,
                SITE_HOST,
                443,
                40002,
                TCP_SYN | TCP_ACK,
                server,
                client + 1,
            ),
        ],
    };
    let mut out = vec![
        Class {
            name: "allowed outbound",
            frame: tcp(v4(SITE_HOST), v4(EMIS_PRIMARY), 40000, 443, TCP_SYN),
            expect: XDP_PASS,
            prelude: vec![],
        },
        Class {
            name: "reply",
            frame: tcp(
                v4(EMIS_PRIMARY),
                v4(SITE_HOST),
                443,
                40000,
                TCP_SYN | TCP_ACK,
            ),
            expect: XDP_PASS,
            prelude: vec![],
        },
        Class {
            name: "denied in scope",
            frame: tcp(v4(SITE_HOST), v4(EMIS_PRIMARY), 40000, 444, TCP_SYN),
            expect: XDP_DROP,
            prelude: vec![],
        },
        Class {
            name: "out of scope",
            frame: tcp(v4(SITE_HOST), v4(INTERNET_HOST), 40000, 443, TCP_SYN),
            expect: XDP_PASS,
            prelude: vec![],
        },
        Class {
            name: "IPv6",
            frame: tcp(
                IpAddr::V6(SITE_HOST_V6),
                IpAddr::V6(INTERNET_HOST_V6),
                40000,
                443,
                TCP_SYN,
            ),
            expect: XDP_PASS,
            prelude: vec![],
        },
        Class {
            name: "VLAN-tagged",
            frame: PacketSpec::tcp(v4(SITE_HOST), v4(EMIS_PRIMARY), 40000, 443, TCP_SYN)
                .with_vlans(&[(0x8100, 100)])
                .build(),
            expect: XDP_PASS,
            prelude: vec![],
        },
    ];
    out.insert(1, established);
    out
}

/// The name of the scaling-only class: not one of the packet classes.
pub const AWS_CLASS: &str = "to aws (count scope)";

/// A packet to `aws` (count scope) at `addr`, allowed by `appointment-refresh`.
pub fn aws_class(addr: Ipv4Addr) -> Class {
    Class {
        name: AWS_CLASS,
        frame: PacketSpec::tcp(v4(SITE_HOST), v4(addr), 40001, 443, TCP_SYN).build(),
        expect: XDP_PASS,
        prelude: vec![],
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ClassCost {
    pub class: String,
    pub noop_ns: f64,
    pub parse_ns: f64,
    /// The parsers and one flow-table lookup (`emis_flow_lookup`): what any program that
    /// tracks flows pays at least.
    pub flow_lookup_ns: f64,
    pub emis_ns: f64,
    pub parse_ratio: f64,
    pub flow_lookup_ratio: f64,
    pub emis_ratio: f64,
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

/// Measures every class on the three programs, `reps` times each (interleaved), with
/// `repeat` runs per BPF_PROG_TEST_RUN call. Fails if the enforcer gives a class the
/// wrong action: a wrong verdict is not a measurement.
pub fn measure(
    bench: &BenchPrograms,
    enforcer: &mut TestProgram,
    classes: &[Class],
    reps: usize,
    repeat: u32,
    mut tick: impl FnMut(),
) -> Result<Vec<ClassCost>> {
    let noop = bench.program(programs::NOOP_PASS)?;
    let parse = bench.program(programs::PARSE_ONLY)?;
    let flow_lookup = bench.program(programs::FLOW_LOOKUP)?;
    // Once each, in order: checks the verdicts and opens the flow the reply answers.
    for class in classes {
        for frame in &class.prelude {
            enforcer.run(frame)?;
        }
        let action = enforcer.run(&class.frame)?;
        if action != class.expect {
            bail!(
                "the enforcer gave `{}` action {action}, expected {}: the benchmark's packets \
                 no longer mean what it assumes",
                class.name,
                class.expect
            );
        }
    }
    let mut out = Vec::new();
    for class in classes {
        let (mut n, mut p, mut f, mut e) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            let rn = run_repeat(noop, &class.frame, repeat)?;
            let rp = run_repeat(parse, &class.frame, repeat)?;
            let rf = run_repeat(flow_lookup, &class.frame, repeat)?;
            let re = enforcer
                .run_repeat(&class.frame, repeat)
                .with_context(|| format!("running the enforcer on `{}`", class.name))?;
            if rn.action != XDP_PASS
                || rp.action != XDP_PASS
                || rf.action != XDP_PASS
                || re.action != class.expect
            {
                bail!(
                    "unexpected actions on `{}`: no-op {}, parse-only {}, flow lookup {}, emis {}",
                    class.name,
                    rn.action,
                    rp.action,
                    rf.action,
                    re.action
                );
            }
            n.push(rn.ns_per_run as f64);
            p.push(rp.ns_per_run as f64);
            f.push(rf.ns_per_run as f64);
            e.push(re.ns_per_run as f64);
            tick();
        }
        let (noop_ns, parse_ns, flow_lookup_ns, emis_ns) =
            (median(n), median(p), median(f), median(e));
        if noop_ns <= 0.0 {
            bail!(
                "the kernel reported 0 ns per run for the no-op program on `{}`",
                class.name
            );
        }
        out.push(ClassCost {
            class: class.name.to_string(),
            noop_ns,
            parse_ns,
            flow_lookup_ns,
            emis_ns,
            parse_ratio: parse_ns / noop_ns,
            flow_lookup_ratio: flow_lookup_ns / noop_ns,
            emis_ratio: emis_ns / noop_ns,
        });
    }
    Ok(out)
}

/// Loads the enforcer with `policy` in enforce mode, ready for BPF_PROG_TEST_RUN.
pub fn load_enforcer(policy: &Policy) -> Result<TestProgram> {
    TestProgram::load(policy, Mode::Enforce).context("loading the enforcer for BPF_PROG_TEST_RUN")
}
