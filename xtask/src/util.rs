//! Running and printing commands, and where things are.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// Cargo's target directory: `cargo metadata` knows about CARGO_TARGET_DIR and
/// `build.target-dir`; falls back to `<root>/target`.
pub fn target_dir() -> PathBuf {
    let out = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .output();
    if let Ok(out) = out {
        if out.status.success() {
            if let Some(dir) =
                json_string_field(&String::from_utf8_lossy(&out.stdout), "target_directory")
            {
                return PathBuf::from(dir);
            }
        }
    }
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => workspace_root().join(d),
        None => workspace_root().join("target"),
    }
}

/// The value of `"field":"..."` in a JSON text (no escapes beyond `\\` and `\"`).
pub fn json_string_field(json: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\":\"");
    let start = json.find(&key)? + key.len();
    let mut out = String::new();
    let mut chars = json[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

/// `cargo` (the rustup proxy, so `+nightly` works) run from the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    cmd
}

/// A command line for printing: the program's file name, then the arguments
/// (quoted if they contain spaces).
pub fn show(cmd: &Command) -> String {
    let prog = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or_else(|| cmd.get_program())
        .to_string_lossy()
        .into_owned();
    let mut parts = vec![prog];
    parts.extend(
        cmd.get_args()
            .map(|arg| emis_lab::quote(&arg.to_string_lossy()).into_owned()),
    );
    parts.join(" ")
}

/// Prints `==> CMD`, runs it with inherited stdio, and fails if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = show(cmd);
    println!("==> {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// A process exit code for `status` (128+signal if killed by a signal).
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

/// `$CARGO_HOME/bin`, where `cargo install` puts bpf-linker.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    match std::env::var_os("CARGO_HOME") {
        Some(h) if !h.is_empty() => Some(PathBuf::from(h).join("bin")),
        _ => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")),
    }
}

/// Puts `$CARGO_HOME/bin` on PATH (for this process and its children) if it is
/// missing, so a freshly installed bpf-linker is found by us and by aya-build.
/// Called first thing in main, before any thread exists.
pub fn ensure_cargo_bin_on_path() {
    let Some(bin) = cargo_bin_dir() else { return };
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let joined = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)));
    if let Ok(joined) = joined {
        std::env::set_var("PATH", joined);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_commands_readably() {
        let mut c = Command::new("/root/.cargo/bin/cargo");
        c.args(["+nightly", "install", "bpf-linker@0.10.0", "--locked"]);
        assert_eq!(
            show(&c),
            "cargo +nightly install bpf-linker@0.10.0 --locked"
        );
        let mut c = Command::new("sh");
        c.args(["-c", "echo hi", ""]);
        assert_eq!(show(&c), "sh -c 'echo hi' ''");
    }

    #[test]
    fn run_reports_failure_with_the_command() {
        let err = run(Command::new("false").arg("x")).unwrap_err();
        assert!(
            format!("{err}").starts_with("`false x` failed (exit status: 1)"),
            "{err}"
        );
        let err = run(&mut Command::new("xtask-no-such-program")).unwrap_err();
        assert!(format!("{err}").contains("cannot run `xtask-no-such-program`"));
        run(&mut Command::new("true")).unwrap();
    }

    #[test]
    fn exit_codes() {
        let st = Command::new("sh").args(["-c", "exit 3"]).status().unwrap();
        assert_eq!(exit_code(st), 3);
        let st = Command::new("sh")
            .args(["-c", "kill -9 $$"])
            .status()
            .unwrap();
        assert_eq!(exit_code(st), 137);
    }

    #[test]
    fn json_fields() {
        let j = r#"{"packages":[],"target_directory":"/work/main/target","version":1}"#;
        assert_eq!(
            json_string_field(j, "target_directory").as_deref(),
            Some("/work/main/target")
        );
        assert_eq!(
            json_string_field(r#"{"a":"x\"y"}"#, "a").as_deref(),
            Some("x\"y")
        );
        assert_eq!(json_string_field(j, "nope"), None);
    }

    #[test]
    fn target_dir_is_found() {
        let dir = target_dir();
        assert!(dir.is_absolute(), "{}", dir.display());
        assert!(dir.ends_with("target") || std::env::var_os("CARGO_TARGET_DIR").is_some());
    }
}
