//! `cargo xtask test [ARGS]`: setup, the `emis` binary the lab tests run, `cargo test
//! --all-targets` over the default members, then the benchmark's short version and a
//! short run of every fuzz target.

use anyhow::Result;

use crate::util::{self, cargo, run};
use crate::{bench, fuzz, setup};

/// `cargo xtask test`: exits with cargo's own status if the tests fail.
pub fn test(args: &[String]) -> Result<()> {
    setup::setup()?;
    if !emis_lab::is_root() {
        println!("note: not running as root; the namespace and XDP integration tests will fail");
    }
    // The lab tests run the `emis` binary itself, from target/debug.
    run(cargo().args(["build", "-p", "emis-user", "--bins"]))?;
    // The packaging test packages the release binary (`cargo xtask deb`); building it
    // here keeps that test short. The benchmark below shares these release builds.
    run(cargo().args(["build", "--release", "-p", "emis-user", "--bins"]))?;
    let mut cmd = cargo();
    // The default members, not `--workspace`: emis-ebpf and emis-test-ebpf are members
    // that build only for bpfel-unknown-none (emis-user's and emis-testkit's build.rs
    // drive them); see Cargo.toml.
    cmd.args(["test", "--all-targets"]).args(args);
    println!("==> {}", util::show(&cmd));
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run cargo: {e}"))?;
    if !status.success() {
        eprintln!("error: `{}` failed ({status})", util::show(&cmd));
        std::process::exit(util::exit_code(status));
    }
    // The benchmark's short version: fails only when a measurement cannot be made.
    bench::quick()?;
    // A short fuzz run of every target (20 s each; EMIS_FUZZ_SECONDS, 0 skips).
    fuzz::fuzz_for_test()
}
