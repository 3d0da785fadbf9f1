//! `cargo xtask setup`: idempotent; prints what it found and what it did.

use crate::util::{cargo, run};
use anyhow::{bail, Context, Result};
use emis_lab::is_root;
use std::io;
use std::process::Command;

/// bpf-linker release that works with the nightly's LLVM here (docs: TOOLCHAIN.md).
pub const BPF_LINKER_VERSION: &str = "0.10.0";

/// cargo-deb release that `cargo xtask deb` uses; its rust-version (1.85) fits stable.
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// Debian packages that building and checking the package needs, with a binary each
/// provides: dpkg-deb lists and extracts it, systemd-analyze verifies the unit, man
/// renders the pages (tests/tests/packaging.rs).
pub const PACKAGING_PACKAGES: [(&str, &str); 3] = [
    ("dpkg", "dpkg-deb"),
    ("systemd", "systemd-analyze"),
    ("man-db", "man"),
];

/// Debian packages needed at run time, with a binary each provides.
pub const APT_PACKAGES: [(&str, &str); 7] = [
    ("iproute2", "ip"),
    ("ethtool", "ethtool"),
    ("bpftool", "bpftool"),
    ("curl", "curl"),
    // `nft -c` checks `emis export nft` output in the tests.
    ("nftables", "nft"),
    // A real Prometheus scrapes `emis run` and evaluates the dashboard's queries and the
    // alerting rules (tests/tests/prometheus.rs); promtool lints the scrape and unit-tests
    // the rules. On a host with systemd the package also starts its own service on :9090.
    ("prometheus", "promtool"),
    // Reads the pcap `emis capture` writes (tests/tests/events.rs).
    ("tcpdump", "tcpdump"),
];

pub fn setup() -> Result<()> {
    println!("==> setup (checks first; installs only what is missing)");
    apt_packages().context("setup: run-time packages")?;
    apt_install_missing(&PACKAGING_PACKAGES).context("setup: packaging tools")?;
    bpffs().context("setup: bpffs")?;
    rust_src().context("setup: rust-src for nightly")?;
    bpf_linker().context("setup: bpf-linker")?;
    cargo_deb().context("setup: cargo-deb")?;
    println!("    setup: done");
    Ok(())
}

fn found(what: &str) {
    println!("    found: {what}");
}

fn need_root(action: &str) -> Result<()> {
    if !is_root() {
        bail!("{action} needs root: rerun as root, e.g. `sudo -E env PATH=\"$PATH\" cargo xtask setup`");
    }
    Ok(())
}

/// Whether `dpkg -s` output says the package is installed.
pub fn dpkg_says_installed(status_output: &str) -> bool {
    status_output
        .lines()
        .any(|l| l.trim() == "Status: install ok installed")
}

fn apt_packages() -> Result<()> {
    apt_install_missing(&APT_PACKAGES)
}

/// Installs with apt-get whichever of `packages` (package, a binary it provides) are missing.
pub fn apt_install_missing(packages: &[(&str, &str)]) -> Result<()> {
    let mut missing = Vec::new();
    for &(pkg, binary) in packages {
        match Command::new("dpkg").args(["-s", pkg]).output() {
            Ok(out)
                if out.status.success()
                    && dpkg_says_installed(&String::from_utf8_lossy(&out.stdout)) =>
            {
                found(&format!("package {pkg}"))
            }
            Ok(_) => missing.push(pkg),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Not Debian: check the binary instead and say what to install.
                if Command::new(binary).arg("--version").output().is_ok() {
                    found(&format!("{binary} (from {pkg})"));
                } else {
                    bail!("`{binary}` is missing and this is not a Debian system (no dpkg): install {pkg} with your package manager");
                }
            }
            Err(e) => return Err(e).context("cannot run `dpkg -s`"),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    need_root(&format!("installing {}", missing.join(" ")))?;
    run(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

/// Whether /proc/mounts has a bpf filesystem on /sys/fs/bpf.
pub fn bpffs_mounted(proc_mounts: &str) -> bool {
    proc_mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 3 && f[1] == "/sys/fs/bpf" && f[2] == "bpf"
    })
}

fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if bpffs_mounted(&mounts) {
        found("bpffs on /sys/fs/bpf");
        return Ok(());
    }
    need_root("mounting bpffs on /sys/fs/bpf")?;
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    if !bpffs_mounted(&mounts) {
        bail!("`mount -t bpf bpf /sys/fs/bpf` succeeded but /proc/mounts shows no bpf mount there");
    }
    Ok(())
}

fn rust_src() -> Result<()> {
    let out = match Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "`rustup` is not on PATH: install it from https://rustup.rs (the eBPF crate \
             needs a nightly toolchain with rust-src)"
        ),
        Err(e) => return Err(e).context("cannot run `rustup`"),
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("not installed") {
            // No nightly at all: install a minimal one with rust-src.
            return run(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]));
        }
        bail!(
            "`rustup component list --toolchain nightly --installed` failed ({}): {}",
            out.status,
            err.trim()
        );
    }
    let listed = String::from_utf8_lossy(&out.stdout);
    if listed.lines().any(|l| l.trim() == "rust-src") {
        found("rust-src (nightly)");
        return Ok(());
    }
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The version in `bpf-linker --version` output ("bpf-linker 0.10.0").
pub fn parse_bpf_linker_version(out: &str) -> Option<&str> {
    let line = out.lines().next()?;
    let mut words = line.split_whitespace();
    (words.next()? == "bpf-linker").then_some(())?;
    words.next()
}

fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker").arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_bpf_linker_version(&String::from_utf8_lossy(&out.stdout)).map(str::to_string)
}

fn bpf_linker() -> Result<()> {
    let have = bpf_linker_version();
    if have.as_deref() == Some(BPF_LINKER_VERSION) {
        found(&format!("bpf-linker {BPF_LINKER_VERSION}"));
        return Ok(());
    }
    match &have {
        Some(v) => println!("    bpf-linker {v} found; {BPF_LINKER_VERSION} is needed"),
        None => println!(
            "    bpf-linker not found; installing {BPF_LINKER_VERSION} (takes a few minutes)"
        ),
    }
    let mut cmd = cargo();
    cmd.args([
        "+nightly",
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
    ]);
    if have.is_some() {
        cmd.arg("--force");
    }
    run(&mut cmd)?;
    match bpf_linker_version() {
        Some(v) if v == BPF_LINKER_VERSION => Ok(()),
        Some(v) => bail!(
            "after installing, `bpf-linker --version` says {v}: another bpf-linker comes \
             first on PATH ({})",
            std::env::var("PATH").unwrap_or_default()
        ),
        None => bail!(
            "bpf-linker was installed but `bpf-linker --version` does not run; is \
             $CARGO_HOME/bin on PATH?"
        ),
    }
}

/// The version in `cargo deb --version` output ("3.8.0"; older releases print
/// "cargo-deb 2.x.y").
pub fn parse_cargo_deb_version(out: &str) -> Option<&str> {
    let word = out.lines().next()?.split_whitespace().last()?;
    word.split('.')
        .all(|n| n.parse::<u32>().is_ok())
        .then_some(word)
}

fn cargo_deb_version() -> Option<String> {
    let out = cargo().args(["deb", "--version"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_cargo_deb_version(&String::from_utf8_lossy(&out.stdout)).map(str::to_string)
}

/// Installs cargo-deb unless a 3.x is already there (any 3.x reads the metadata in
/// emis-user/Cargo.toml the same way).
fn cargo_deb() -> Result<()> {
    let have = cargo_deb_version();
    if let Some(v) = &have {
        if v.starts_with("3.") {
            found(&format!("cargo-deb {v}"));
            return Ok(());
        }
        println!("    cargo-deb {v} found; 3.x is needed, installing {CARGO_DEB_VERSION}");
    } else {
        println!("    cargo-deb not found; installing {CARGO_DEB_VERSION} (takes a few minutes)");
    }
    let mut cmd = cargo();
    cmd.args([
        "install",
        &format!("cargo-deb@{CARGO_DEB_VERSION}"),
        "--locked",
    ]);
    if have.is_some() {
        cmd.arg("--force");
    }
    run(&mut cmd)?;
    match cargo_deb_version() {
        Some(v) if v.starts_with("3.") => Ok(()),
        Some(v) => bail!(
            "after installing, `cargo deb --version` says {v}: another cargo-deb comes first on PATH"
        ),
        None => bail!(
            "cargo-deb was installed but `cargo deb --version` does not run; is $CARGO_HOME/bin on PATH?"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status() {
        let yes = "Package: curl\nStatus: install ok installed\nPriority: optional\n";
        let no = "Package: curl\nStatus: deinstall ok config-files\n";
        assert!(dpkg_says_installed(yes));
        assert!(!dpkg_says_installed(no));
        assert!(!dpkg_says_installed(""));
    }

    #[test]
    fn bpffs_in_proc_mounts() {
        let with = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,nosuid,nodev,noexec,relatime,mode=700 0 0\n";
        let without =
            "sysfs /sys sysfs rw 0 0\nnone /sys/fs/bpf tmpfs rw 0 0\nbpf /mnt/bpf bpf rw 0 0\n";
        assert!(bpffs_mounted(with));
        assert!(!bpffs_mounted(without));
    }

    #[test]
    fn cargo_deb_versions() {
        assert_eq!(parse_cargo_deb_version("3.8.0\n"), Some("3.8.0"));
        assert_eq!(parse_cargo_deb_version("cargo-deb 2.12.1"), Some("2.12.1"));
        assert_eq!(
            parse_cargo_deb_version("error: no such command: `deb`"),
            None
        );
        assert_eq!(parse_cargo_deb_version(""), None);
    }

    #[test]
    fn bpf_linker_versions() {
        assert_eq!(
            parse_bpf_linker_version("bpf-linker 0.10.0\n"),
            Some("0.10.0")
        );
        assert_eq!(
            parse_bpf_linker_version("bpf-linker 0.11.1"),
            Some("0.11.1")
        );
        assert_eq!(parse_bpf_linker_version("something 0.10.0"), None);
        assert_eq!(parse_bpf_linker_version(""), None);
    }
}
