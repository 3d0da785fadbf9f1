//! What the lab needs from the machine (root, iproute2), checked up front with errors
//! that say what to do.

use std::io;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Whether the process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails unless we are root, saying that `what` needs it and how to run as root.
pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        // SAFETY: as in is_root.
        let euid = unsafe { libc::geteuid() };
        bail!(
            "{what}, which needs root (effective uid is {euid}): run as root, e.g. \
             `sudo -E env PATH=\"$PATH\" cargo xtask ...` or \
             `sudo -E env PATH=\"$PATH\" cargo test`"
        );
    }
    Ok(())
}

/// Checks we are root and `ip` exists, with an error that says what to do.
pub fn require_root_and_tools() -> Result<()> {
    require_root("the emis lab creates network namespaces and attaches XDP programs")?;
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => bail!(
            "`ip -V` failed ({}): {}; reinstall iproute2 (`cargo xtask setup`)",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "`ip` (iproute2) is not on PATH: run `cargo xtask setup` or \
             `apt-get install iproute2`"
        ),
        Err(e) => Err(e).context("cannot run `ip -V`"),
    }
}
