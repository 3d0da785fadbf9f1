//! `cargo xtask`: developer tasks for emis. See `cargo xtask --help`.

mod bench;
mod build;
mod deb;
mod demo;
mod fuzz;
mod interrupt;
mod lab;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

// The demo builds first, as `cargo xtask build` does.
pub use build::build;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Developer tasks for emis, the XDP enforcer of the EMIS Web network requirements",
    bin_name = "cargo xtask"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install or check what building and running emis needs (idempotent): rust-src for
    /// nightly, bpf-linker 0.10.0, iproute2/ethtool/bpftool/curl/nftables, bpffs on
    /// /sys/fs/bpf; for the package: cargo-deb 3, dpkg, systemd-analyze, man.
    Setup,
    /// Setup, then `cargo build --release -p emis-user` (builds and embeds the eBPF program).
    Build,
    /// Build, then the Debian package with cargo-deb: the binary, the systemd unit, the
    /// example /etc/emis/emis.toml, man pages and shell completions. Prints its path.
    Deb,
    /// Setup and build, then run emis on the gateway of a namespace lab and drive
    /// allowed, denied and out-of-scope flows through it. Needs root.
    Demo {
        /// Leave the lab and emis running until Enter is pressed.
        #[arg(long)]
        keep: bool,
    },
    /// Setup, then `cargo test --all-targets [ARGS]` over the default members (every
    /// crate but the eBPF one). The integration tests need root. Then 20 s of each fuzz
    /// target (EMIS_FUZZ_SECONDS=N to change, 0 to skip).
    Test {
        /// Extra arguments for `cargo test` (after `--`; use `-- -- ARGS` for the test
        /// harness, e.g. `cargo xtask test -- -- --nocapture`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the cargo-fuzz targets (fuzz/) with nightly, installing cargo-fuzz if it is
    /// missing; fails with the crash file's path if a target finds a crash.
    Fuzz {
        /// Seconds to run each target for.
        #[arg(long, default_value_t = fuzz::DEFAULT_SECONDS)]
        seconds: u64,
        /// The target to run (spec or packet); every target when omitted.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(fuzz::TARGETS))]
        target: Option<String>,
    },
    /// Setup, install xdp-tools and nftables if missing, then run the benchmark lab
    /// (`emis-bench`): per-packet cost, scaling to 1,000,000 prefixes, veth throughput
    /// against the no-op limit, xdp-filter and nftables. Writes target/bench/. Needs root.
    Bench {
        /// The short version CI runs (under a minute).
        #[arg(long)]
        quick: bool,
    },
    /// Create or tear down the namespace lab for manual experiments. Needs root.
    Lab {
        /// Namespace-name prefix: namespaces are PREFIX-site, PREFIX-gw, PREFIX-emis.
        #[arg(long, global = true, default_value = "emislab")]
        prefix: String,
        #[command(subcommand)]
        action: LabAction,
    },
}

#[derive(Subcommand)]
enum LabAction {
    /// Create the lab and leave it running.
    Up,
    /// Delete the lab's namespaces.
    Down,
}

fn main() {
    util::ensure_cargo_bin_on_path();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Build => build::build(),
        Cmd::Deb => deb::deb(),
        Cmd::Demo { keep } => demo::demo(keep),
        Cmd::Test { args } => test::test(&args),
        Cmd::Bench { quick } => bench::bench(quick),
        Cmd::Fuzz { seconds, target } => fuzz::fuzz(target.as_deref(), seconds),
        Cmd::Lab { prefix, action } => match action {
            LabAction::Up => lab::up(&prefix),
            LabAction::Down => lab::down(&prefix),
        },
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(if interrupt::interrupted() { 130 } else { 1 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_args_after_double_dash_reach_cargo() {
        let cli =
            Cli::try_parse_from(["xtask", "test", "--", "-p", "emis-lab", "--", "--nocapture"])
                .unwrap();
        match cli.cmd {
            Cmd::Test { args } => assert_eq!(args, ["-p", "emis-lab", "--", "--nocapture"]),
            _ => panic!("not test"),
        }
    }

    #[test]
    fn lab_prefix_goes_either_side() {
        for argv in [
            &["xtask", "lab", "up", "--prefix", "p1"][..],
            &["xtask", "lab", "--prefix", "p1", "up"][..],
        ] {
            match Cli::try_parse_from(argv).unwrap().cmd {
                Cmd::Lab {
                    prefix,
                    action: LabAction::Up,
                } => assert_eq!(prefix, "p1"),
                _ => panic!("{argv:?}"),
            }
        }
        match Cli::try_parse_from(["xtask", "lab", "down"]).unwrap().cmd {
            Cmd::Lab {
                prefix,
                action: LabAction::Down,
            } => assert_eq!(prefix, "emislab"),
            _ => panic!(),
        }
    }

    #[test]
    fn demo_keep_flag() {
        match Cli::try_parse_from(["xtask", "demo", "--keep"])
            .unwrap()
            .cmd
        {
            Cmd::Demo { keep } => assert!(keep),
            _ => panic!(),
        }
    }
}
