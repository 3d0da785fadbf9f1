//! Helpers of the integration tests alone: the embedded policy with the test site
//! (`emis_lab::site::TEST_SITE`), a seeded generator of structured random frames, and a
//! kernel-versus-model comparison. What the benchmark shares with the tests is in
//! `emis_testkit` (kernel program) and `emis_lab` (namespaces, the test site).

use std::net::IpAddr;

use anyhow::{ensure, Result};
use emis::loader::LoadOptions;
use emis_common::{stats_index, Decision};
use emis_policy::{
    model::Model,
    policy::{Mode, Policy, Replies, Timeouts},
    spec::{load_policy, SiteOptions, Source},
};
use emis_testkit::{TestProgram, XDP_ABORTED, XDP_DROP, XDP_PASS};

pub mod generate;

/// A small stand-in for Amazon's ip-ranges.json: two eu-west-2 ranges and one elsewhere.
pub const TEST_AWS_RANGES: &str = r#"{
  "syncToken": "1", "createDate": "2026-11-01-00-00-00",
  "prefixes": [
    {"ip_prefix": "3.8.0.0/14", "region": "eu-west-2", "service": "AMAZON", "network_border_group": "eu-west-2"},
    {"ip_prefix": "18.130.0.0/16", "region": "eu-west-2", "service": "EC2", "network_border_group": "eu-west-2"},
    {"ip_prefix": "52.95.0.0/16", "region": "us-east-1", "service": "AMAZON", "network_border_group": "us-east-1"}
  ],
  "ipv6_prefixes": [
    {"ipv6_prefix": "2a05:d01c::/36", "region": "eu-west-2", "service": "AMAZON", "network_border_group": "eu-west-2"}
  ]
}"#;

/// The embedded spec, with the site roles given as `ROLE=CIDR` strings and, if asked, the
/// test AWS ranges. Flow lifetimes are a day, so nothing expires while a test runs unless
/// the test sets shorter ones.
pub fn default_policy(site_nets: &[&str], with_aws: bool) -> Policy {
    let site = SiteOptions {
        site_nets: site_nets.iter().map(|s| s.to_string()).collect(),
        aws_ip_ranges: with_aws.then(|| Source::new("test-ip-ranges.json", TEST_AWS_RANGES)),
        ..Default::default()
    };
    let mut policy = load_policy(&Source::default_spec(), &site).expect("the embedded spec loads");
    let day = 86_400;
    policy.options.timeouts = Timeouts {
        tcp_syn: day,
        tcp_established: day,
        tcp_closing: day,
        udp: day,
        fragment: day,
    };
    policy
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// The XDP action the policy requires for `decision` under `mode`.
pub fn expected_action(decision: Decision, mode: Mode) -> u32 {
    match decision {
        Decision::Deny { .. } if mode == Mode::Enforce => XDP_DROP,
        _ => XDP_PASS,
    }
}

/// The kernel program and the reference model side by side, fed the same frames.
pub struct Harness<'p> {
    pub prog: TestProgram,
    pub model: Model<'p>,
    pub options: LoadOptions,
}

impl<'p> Harness<'p> {
    pub fn new(policy: &'p Policy, mode: Mode, replies: Replies) -> Harness<'p> {
        let options = LoadOptions {
            mode,
            replies,
            ..LoadOptions::default()
        };
        let prog = TestProgram::load_with(policy, options)
            .expect("loading the kernel program (run the tests as root)");
        Harness {
            prog,
            model: Model::new(policy, replies),
            options,
        }
    }

    /// Runs `frame` through both and checks the kernel's action and counter against the
    /// model's decision, which it returns.
    pub fn check(&mut self, frame: &[u8]) -> Result<Decision> {
        let decision = self.model.decide(frame);
        check_kernel(&mut self.prog, decision, self.options.mode, frame)?;
        Ok(decision)
    }

    /// `addr` was learned from DNS for `names` (replacing what it was learned for), in the
    /// kernel's learned map and in the model alike.
    pub fn learn(&mut self, names: &[&str], addr: IpAddr) {
        self.prog
            .learn(names, addr)
            .expect("writing the learned map");
        self.model.forget(addr);
        for name in names {
            self.model.learn(name, addr);
        }
    }

    /// Switches the mode of the loaded program.
    pub fn set_mode(&mut self, mode: Mode) {
        self.prog.set_mode(mode).expect("switching the mode");
        self.options.mode = mode;
    }
}

/// Runs `frame` through the kernel and checks that its action and counter are `decision`'s.
pub fn check_kernel(
    prog: &mut TestProgram,
    decision: Decision,
    mode: Mode,
    frame: &[u8],
) -> Result<()> {
    let index = stats_index(decision, mode.raw());
    let before = prog.counter(index)?;
    let action = prog.run(frame)?;
    let after = prog.counter(index)?;
    ensure!(
        action != XDP_ABORTED,
        "XDP_ABORTED for frame {}",
        hex(frame)
    );
    ensure!(
        action == expected_action(decision, mode),
        "kernel action {action} but the model decided {decision:?} for frame {}",
        hex(frame)
    );
    ensure!(
        after.packets == before.packets + 1 && after.bytes == before.bytes + frame.len() as u64,
        "counter {index} for {decision:?} went from {before:?} to {after:?} for frame {}",
        hex(frame)
    );
    Ok(())
}

/// The `emis` binary of this build (`cargo xtask test` builds it first); `EMIS_BIN` overrides it.
pub fn emis_bin() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("EMIS_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/emis
    let path = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("emis");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p emis-user` (cargo xtask test does)",
        path.display()
    );
    path
}

/// The seed of the random tests: `EMIS_SEED` (decimal, or hex with 0x, as failures print
/// it) or a fixed default, so every run is the same unless asked otherwise.
pub fn seed() -> u64 {
    match std::env::var("EMIS_SEED") {
        Ok(s) => match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        }
        .unwrap_or_else(|_| panic!("EMIS_SEED={s} is not a number")),
        Err(_) => 0x5eed_2026,
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of the `/metrics` samples whose name and labels contain every one of
/// `parts`, summed.
pub fn metric_sample(metrics: &str, name: &str, parts: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && parts.iter().all(|p| l.contains(p)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// The value of a `/metrics` sample without labels.
pub fn metric_value(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
        .parse()
        .unwrap()
}
