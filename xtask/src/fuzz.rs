//! `cargo xtask fuzz`: runs the cargo-fuzz targets in `fuzz/` (its own workspace) with
//! nightly, installing cargo-fuzz first if it is missing.

use crate::util::{cargo, run, show, workspace_root};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The targets in fuzz/fuzz_targets/, in the order they run.
pub const TARGETS: [&str; 3] = ["spec", "packet", "dns"];
/// `--seconds` when not given.
pub const DEFAULT_SECONDS: u64 = 60;
/// Seconds per target in `cargo xtask test` (CI); `EMIS_FUZZ_SECONDS` overrides, 0 skips.
pub const TEST_SECONDS: u64 = 20;
/// Installed when `cargo fuzz` is missing (the version these targets were written with).
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// libFuzzer's limit for one input, in seconds: a slower input is reported as a timeout.
const INPUT_TIMEOUT_SECONDS: u64 = 30;

/// Runs `target` (every target when `None`) for `seconds` each; fails on the first crash.
pub fn fuzz(target: Option<&str>, seconds: u64) -> Result<()> {
    let targets: Vec<&str> = match target {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!(
            "no fuzz target `{t}`: the targets are {}",
            TARGETS.join(", ")
        ),
        None => TARGETS.to_vec(),
    };
    nightly().context("fuzz: nightly toolchain")?;
    cargo_fuzz().context("fuzz: cargo-fuzz")?;
    for t in targets {
        run_target(t, seconds)?;
    }
    Ok(())
}

/// The fuzz step of `cargo xtask test`: every target for [`TEST_SECONDS`] (or
/// `EMIS_FUZZ_SECONDS`) each.
pub fn fuzz_for_test() -> Result<()> {
    let seconds = match std::env::var("EMIS_FUZZ_SECONDS") {
        Ok(s) => s
            .trim()
            .parse()
            .with_context(|| format!("EMIS_FUZZ_SECONDS={s:?} is not a number of seconds"))?,
        Err(_) => TEST_SECONDS,
    };
    if seconds == 0 {
        println!("==> fuzz: skipped (EMIS_FUZZ_SECONDS=0)");
        return Ok(());
    }
    fuzz(None, seconds)
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

fn nightly() -> Result<()> {
    let have = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output();
    match have {
        Ok(out) if out.status.success() => Ok(()),
        Ok(_) => run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ])),
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "`rustup` is not on PATH: install it from https://rustup.rs (cargo-fuzz needs a \
             nightly toolchain)"
        ),
        Err(e) => Err(e).context("cannot run `rustup`"),
    }
}

fn cargo_fuzz_version() -> Option<String> {
    let out = cargo().args(["fuzz", "--version"]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn cargo_fuzz() -> Result<()> {
    if let Some(v) = cargo_fuzz_version() {
        println!("    found: {v}");
        return Ok(());
    }
    println!("    cargo-fuzz not found; installing {CARGO_FUZZ_VERSION} (takes a minute or two)");
    run(cargo().args([
        "install",
        &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        "--locked",
    ]))?;
    match cargo_fuzz_version() {
        Some(_) => Ok(()),
        None => bail!(
            "cargo-fuzz was installed but `cargo fuzz --version` does not run; is \
             $CARGO_HOME/bin on PATH?"
        ),
    }
}

/// The files in `dir` (none if it does not exist).
fn files_in(dir: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect()
}

/// The `cargo +nightly fuzz run` command for `target`: new inputs go to `work` (kept
/// between runs, ignored by git), the committed seeds are read from `seeds`.
pub fn run_command(target: &str, work: &Path, seeds: &Path, seconds: u64) -> Command {
    let mut cmd = cargo();
    cmd.arg("+nightly")
        .args(["fuzz", "run", "--fuzz-dir"])
        .arg(fuzz_dir())
        .arg(target)
        .arg(work)
        .arg(seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"));
    cmd
}

fn run_target(target: &str, seconds: u64) -> Result<()> {
    let dir = fuzz_dir();
    let work = dir.join("target/corpus").join(target);
    let seeds = dir.join("corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let before = files_in(&artifacts);
    let mut cmd = run_command(target, &work, &seeds, seconds);
    let line = show(&cmd);
    println!("==> fuzz {target} for {seconds} s: {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run `{line}`"))?;
    if status.success() {
        println!("    fuzz {target}: no crash in {seconds} s");
        return Ok(());
    }
    let found: Vec<PathBuf> = files_in(&artifacts).difference(&before).cloned().collect();
    if found.is_empty() {
        bail!("`{line}` failed ({status}) and wrote no crash file: see its output above");
    }
    let list: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "fuzz target `{target}` FOUND A CRASH; the input is in {}\n  replay it (in the \
         workspace root): cargo +nightly fuzz run {target} {}",
        list.join(", "),
        list[0]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_exist() {
        for t in TARGETS {
            let file = fuzz_dir().join("fuzz_targets").join(format!("{t}.rs"));
            assert!(file.is_file(), "{}", file.display());
            assert!(fuzz_dir().join("corpus").join(t).is_dir(), "seeds of {t}");
        }
    }

    #[test]
    fn command_line() {
        let cmd = run_command("spec", Path::new("/w"), Path::new("/s"), 7);
        let line = show(&cmd);
        assert!(
            line.starts_with("cargo +nightly fuzz run --fuzz-dir "),
            "{line}"
        );
        assert!(
            line.ends_with("spec /w /s -- -max_total_time=7 -timeout=30"),
            "{line}"
        );
        // The targets depend on emis-policy alone: no eBPF build to skip.
        assert!(!cmd.get_envs().any(|(k, _)| k == "AYA_BUILD_SKIP"));
    }

    #[test]
    fn unknown_target_is_an_error() {
        let err = fuzz(Some("nope"), 1).unwrap_err().to_string();
        assert!(err.contains("spec, packet, dns"), "{err}");
    }
}
