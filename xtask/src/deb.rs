//! `cargo xtask deb`: the Debian package. Builds the release binary (which embeds the
//! eBPF program), has it write its man pages and shell completions into
//! `target/deb-assets/`, then runs cargo-deb on emis-user, whose
//! `[package.metadata.deb]` lists what goes where (binary, unit, conffile, pages,
//! completions, docs). Prints the path of the `.deb`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{cargo, run, show, target_dir, workspace_root};

/// Where the generated assets go. Fixed relative to the workspace (not the cargo target
/// dir) because emis-user/Cargo.toml names them as `../target/deb-assets/...`.
pub fn assets_dir(root: &Path) -> PathBuf {
    root.join("target").join("deb-assets")
}

/// The completion files the package carries, relative to [`assets_dir`]: a missing one
/// means `emis generate completions` and emis-user/Cargo.toml disagree.
pub const COMPLETION_FILES: [&str; 3] = [
    "completions/emis",
    "completions/_emis",
    "completions/emis.fish",
];

pub fn deb() -> Result<()> {
    crate::build()?;
    let root = workspace_root();
    let emis = target_dir().join("release").join("emis");
    generate_assets(&emis, &assets_dir(&root))?;
    let deb = cargo_deb()?;
    println!("==> package: {}", deb.display());
    Ok(())
}

/// Runs the built binary's hidden `generate` subcommands into `dir` (emptied first, so
/// a page of a command that no longer exists is not packaged).
pub fn generate_assets(emis: &Path, dir: &Path) -> Result<()> {
    if !emis.exists() {
        bail!(
            "{} is missing: `cargo build --release -p emis-user` should have built it",
            emis.display()
        );
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let man = dir.join("man");
    run(Command::new(emis).arg("generate").arg("man").arg(&man))?;
    run(Command::new(emis)
        .args(["generate", "completions", "--dir"])
        .arg(dir.join("completions")))?;
    if !man.join("emis.1").exists() {
        bail!("`emis generate man` wrote no emis.1 into {}", man.display());
    }
    for file in COMPLETION_FILES {
        if !dir.join(file).exists() {
            bail!(
                "`emis generate completions` wrote no {file} into {}",
                dir.display()
            );
        }
    }
    Ok(())
}

/// `cargo deb -p emis-user --no-build`; returns the path of the package it wrote.
fn cargo_deb() -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["deb", "-p", "emis-user", "--no-build"]);
    let line = show(&cmd);
    println!("==> {line}");
    let out = cmd.output().with_context(|| {
        format!("cannot run `{line}`: is cargo-deb installed? (`cargo xtask setup`)")
    })?;
    for warning in String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !is_expected_warning(l))
    {
        eprintln!("{warning}");
    }
    // cargo-deb prints the package's path on stdout.
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    if !out.status.success() {
        bail!("`{line}` failed ({})", out.status);
    }
    let deb =
        deb_path(&stdout).with_context(|| format!("`{line}` printed no .deb path:\n{stdout}"))?;
    let deb = if deb.is_absolute() {
        deb
    } else {
        workspace_root().join(deb)
    };
    if !deb.exists() {
        bail!("`{line}` named {} but there is no such file", deb.display());
    }
    Ok(deb)
}

/// cargo-deb warns about every asset under a `target/` directory that does not use its
/// `target/release/` prefix, that it "will not be built". For the generated assets that
/// is the point (see emis-user/Cargo.toml), so that one warning is not repeated; every
/// other line of its stderr is.
pub fn is_expected_warning(line: &str) -> bool {
    line.contains("'../target/deb-assets/")
        && line.ends_with("does not match the pattern, and will not be built")
}

/// The last line of cargo-deb's stdout that names a `.deb` file.
pub fn deb_path(stdout: &str) -> Option<PathBuf> {
    stdout
        .lines()
        .map(str::trim)
        .rfind(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_package_path() {
        let out = "/w/target/debian/emis_0.1.0-1_amd64.deb\n";
        assert_eq!(
            deb_path(out),
            Some(PathBuf::from("/w/target/debian/emis_0.1.0-1_amd64.deb"))
        );
        assert_eq!(deb_path("nothing here\n"), None);
        assert_eq!(deb_path(""), None);
    }

    #[test]
    fn only_the_generated_assets_warning_is_dropped() {
        assert!(is_expected_warning("warning: Only source paths starting with exactly 'target/release/' are detected as Cargo target dir. '../target/deb-assets/completions/_emis' does not match the pattern, and will not be built"));
        assert!(!is_expected_warning("warning: Only source paths starting with exactly 'target/release/' are detected as Cargo target dir. '../target/other/x' does not match the pattern, and will not be built"));
        assert!(!is_expected_warning(
            "warning: No usable systemd units found for `emis`"
        ));
    }

    #[test]
    fn cargo_toml_names_the_generated_assets_where_deb_writes_them() {
        let manifest =
            std::fs::read_to_string(workspace_root().join("emis-user/Cargo.toml")).unwrap();
        for file in COMPLETION_FILES.iter().chain(&["man/*.1"]) {
            let source = format!("\"../target/deb-assets/{file}\"");
            assert!(
                manifest.contains(&source),
                "emis-user/Cargo.toml has no asset {source}"
            );
        }
        assert!(assets_dir(&workspace_root()).ends_with("target/deb-assets"));
    }
}
