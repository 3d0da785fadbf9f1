//! `cargo xtask bench [--quick]`: setup, the benchmark's own tools (xdp-tools for
//! xdp-filter, nftables), then the benchmark crate `emis-bench` in release mode.
//!
//! The benchmark lives in its own crate because it depends on emis-user (whose build
//! script needs bpf-linker), and xtask must build on a fresh machine before setup has
//! installed it. docs/BENCHMARKS.md explains what is measured.

use anyhow::Result;

use crate::setup;
use crate::util::{cargo, run};

/// Debian packages the benchmark needs beyond setup's, with a binary each provides.
pub const BENCH_PACKAGES: [(&str, &str); 2] = [("xdp-tools", "xdp-filter"), ("nftables", "nft")];

/// The arguments of `cargo run` for the benchmark.
pub fn bench_args(quick: bool, out: &str) -> Vec<String> {
    let mut args: Vec<String> = ["run", "--release", "-p", "emis-bench", "--"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if quick {
        args.push("--quick".into());
    }
    args.push("--out".into());
    args.push(out.into());
    args
}

pub fn bench(quick: bool) -> Result<()> {
    setup::setup()?;
    setup::apt_install_missing(&BENCH_PACKAGES)?;
    run(cargo().args(bench_args(quick, "target/bench")))
}

/// The short run `cargo xtask test` ends with (after setup), into target/bench-quick.
pub fn quick() -> Result<()> {
    setup::apt_install_missing(&BENCH_PACKAGES)?;
    run(cargo().args(bench_args(true, "target/bench-quick")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_the_bench_crate() {
        assert_eq!(
            bench_args(true, "target/bench-quick").join(" "),
            "run --release -p emis-bench -- --quick --out target/bench-quick"
        );
        assert_eq!(
            bench_args(false, "target/bench").join(" "),
            "run --release -p emis-bench -- --out target/bench"
        );
    }
}
