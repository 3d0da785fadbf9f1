//! Network namespaces by name: their handle files, running code inside one (a thread
//! that joins it), and listing the ones `ip netns` knows.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};

use crate::command::run;

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// The handle file of a namespace: `/run/netns/NAME`, or `ns` itself if it contains
/// a `/` (e.g. `/proc/1234/ns/net`).
pub fn netns_path(ns: &str) -> PathBuf {
    if ns.contains('/') {
        PathBuf::from(ns)
    } else {
        PathBuf::from(NETNS_RUN_DIR).join(ns)
    }
}

/// Opens the handle of namespace `ns`, with an error that says how to check it exists.
fn open(ns: &str) -> Result<File> {
    let path = netns_path(ns);
    File::open(&path).with_context(|| {
        format!(
            "cannot open network namespace {} (is the lab up? `ip netns list`)",
            path.display()
        )
    })
}

/// Moves the calling thread into the namespace behind `handle` (CLONE_NEWNET only).
fn setns(handle: &File, ns: &str) -> Result<()> {
    // SAFETY: `handle` is an open namespace handle; setns only changes this thread's
    // network namespace.
    let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("setns into network namespace {ns}"));
    }
    Ok(())
}

/// Moves the calling thread into namespace `ns` for good. For a thread that was made to
/// live there (a generator, a server); everything else wants [`in_netns`] or
/// [`in_netns_scoped`], which leave the caller where it is.
pub fn enter_netns(ns: &str) -> Result<()> {
    setns(&open(ns)?, ns)
}

/// Runs `f` on a new thread that has joined the namespace (setns on
/// /run/netns/NAME, CLONE_NEWNET only); sockets created inside stay in that
/// namespace. A panic in `f` becomes an error carrying the panic message.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let handle = open(ns)?;
    let name = ns.to_string();
    let thread = std::thread::Builder::new()
        .name(format!("netns {ns}"))
        .spawn(move || -> Result<T> {
            setns(&handle, &name)?;
            drop(handle);
            Ok(f())
        })
        .context("spawning a thread")?;
    joined(ns, thread.join())
}

/// Like [`in_netns`], but `f` may borrow from the caller (a loaded program, a frame): the
/// thread is scoped and joined before this returns.
pub fn in_netns_scoped<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let handle = open(ns)?;
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name(format!("netns {ns}"))
            .spawn_scoped(scope, || -> Result<T> {
                setns(&handle, ns)?;
                Ok(f())
            })
            .context("spawning a thread")?;
        joined(ns, thread.join())
    })
}

/// The outcome of a namespace thread, its panic turned into an error.
fn joined<T>(ns: &str, outcome: std::thread::Result<Result<T>>) -> Result<T> {
    outcome.unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic".into());
        Err(anyhow!(
            "code run in network namespace {ns} panicked: {msg}"
        ))
    })
}

/// The index of `iface` in the calling thread's namespace (inside [`in_netns_scoped`] for
/// a lab interface).
pub fn ifindex(iface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(iface).context("interface name")?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("no interface {iface} in this network namespace"));
    }
    Ok(index)
}

/// The namespace names `ip netns list` reports.
pub fn netns_list() -> Result<Vec<String>> {
    Ok(parse_netns_list(&run("ip", &["netns", "list"])?))
}

/// Parses `ip netns list` output (`name` or `name (id: N)` per line).
pub fn parse_netns_list(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_list_is_parsed() {
        let out = "emisdemo-emis (id: 2)\nemisdemo-gw (id: 1)\nplain\n\n";
        assert_eq!(
            parse_netns_list(out),
            ["emisdemo-emis", "emisdemo-gw", "plain"]
        );
        assert!(parse_netns_list("").is_empty());
    }

    #[test]
    fn netns_paths() {
        assert_eq!(netns_path("a-gw"), PathBuf::from("/run/netns/a-gw"));
        assert_eq!(
            netns_path("/proc/1/ns/net"),
            PathBuf::from("/proc/1/ns/net")
        );
    }

    #[test]
    fn in_netns_names_a_missing_namespace() {
        let err = in_netns("emis-lab-no-such-ns", || ()).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("/run/netns/emis-lab-no-such-ns"), "{msg}");
        let err = in_netns_scoped("emis-lab-no-such-ns", || ()).unwrap_err();
        assert!(format!("{err:#}").contains("/run/netns/emis-lab-no-such-ns"));
        assert!(enter_netns("emis-lab-no-such-ns").is_err());
    }

    #[test]
    fn interfaces_are_found_by_name() {
        assert_eq!(ifindex("lo").unwrap(), 1);
        let err = ifindex("emis-no-such").unwrap_err();
        assert!(format!("{err:#}").contains("no interface emis-no-such"));
    }
}
