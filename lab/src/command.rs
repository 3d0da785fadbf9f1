//! Running external commands (`ip`, `nft`, `ethtool`, ...) with errors that name the
//! command line, quoted so it can be pasted into a shell.

use std::borrow::Cow;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// `arg` as a POSIX shell word: unchanged if it is plain, else in single quotes.
pub fn quote(arg: &str) -> Cow<'_, str> {
    if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c)) {
        Cow::Owned(format!("'{}'", arg.replace('\'', "'\\''")))
    } else {
        Cow::Borrowed(arg)
    }
}

/// `program args...` as one shell line, for messages.
pub fn command_line(program: &str, args: &[&str]) -> String {
    let mut line = program.to_string();
    for arg in args {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    line
}

/// Runs a command; returns its stdout, or an error naming the command, its exit
/// status and its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    let line = command_line(program, args);
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn ip(args: &[&str]) -> Result<()> {
    run("ip", args).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_quoted() {
        assert_eq!(command_line("ip", &["-n", "x", "addr"]), "ip -n x addr");
        assert_eq!(command_line("sh", &["-c", "a b", ""]), "sh -c 'a b' ''");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn failing_commands_name_the_command_and_stderr() {
        // `ip link show dev NAME` for a missing device fails without root.
        let err = run("ip", &["link", "show", "dev", "emis-no-such"]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("`ip link show dev emis-no-such` failed"),
            "{msg}"
        );
        assert!(msg.contains("emis-no-such"), "{msg}");
        let err = run("emis-lab-no-such-program", &[]).unwrap_err();
        assert!(format!("{err:#}").contains("cannot run `emis-lab-no-such-program`"));
    }
}
