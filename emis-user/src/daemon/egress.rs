//! TC egress links (TCX, Linux 6.6+): the egress program beside the XDP program on every
//! attached interface, so stateful replies match behind source NAT and for flows the
//! router itself opens (docs/DECISIONS.md, NAT). Each link follows the XDP links'
//! lifecycle: pinned as `egress-IFACE` (it outlives the daemon), swapped to a new program
//! with one `bpf_link_update` on reload or restart, removed by `emis detach` with every
//! other pin, and removed when its interface is no longer listed.
//!
//! Only stateful replies need it: with `--replies stateless` no egress link is made, and
//! one an earlier run left is removed.

use std::collections::BTreeMap;

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
    Ebpf,
};
use emis_common::Link;

use super::{
    error::{chain as error_chain, What as _},
    links::in_netns,
    pins::Pins,
    Error,
};
use crate::loader;

/// Whether this kernel attaches TC programs through pinnable links (TCX, 6.6 and later).
/// Without it the egress program is not attached: emis warns, and NAT replies and flows
/// the router opens are not tracked.
pub fn tcx_supported() -> bool {
    match KernelVersion::current() {
        Ok(version) => version >= KernelVersion::new(6, 6, 0),
        // Unknown: try, and let the attach say what failed.
        Err(_) => true,
    }
}

/// Puts the egress program for each interface's link type on `ifaces`: pinned links are
/// swapped to it first, then new interfaces get a new pinned link. If attaching a new
/// link fails, the egress links pinned by this call are removed again and the error names
/// the interface. Returns the interfaces egress now runs on.
pub fn install(
    ebpf: &mut Ebpf,
    pins: &Pins,
    ifaces: &BTreeMap<String, Link>,
    netns: Option<&str>,
) -> Result<Vec<String>, Error> {
    let mut fresh: Vec<(&String, Link)> = Vec::new();
    let mut installed = Vec::new();
    for (iface, &link) in ifaces {
        let path = pins.egress_link(iface);
        if !path.exists() {
            fresh.push((iface, link));
            continue;
        }
        let program = loader::program_egress_mut(ebpf, link)?;
        let pinned = PinnedLink::from_pin(&path).what(|| format!("opening {}", path.display()))?;
        let tc = SchedClassifierLink::try_from(FdLink::from(pinned))
            .what(|| format!("{} is not a TCX link", path.display()))?;
        match program.attach_to_link(tc) {
            Ok(_) => installed.push(iface.clone()),
            // The interface is gone (its namespace or device was made again): attach anew.
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOLINK) =>
            {
                std::fs::remove_file(&path).what(|| format!("removing {}", path.display()))?;
                fresh.push((iface, link));
            }
            Err(e) => {
                return Err(e)
                    .what(|| format!("replacing the egress program on {iface} (bpf_link_update)"))
            }
        }
    }
    if fresh.is_empty() {
        return Ok(installed);
    }
    // Load both programs the fresh interfaces need before entering the namespace thread.
    for (_, link) in &fresh {
        loader::program_egress_mut(ebpf, *link)?;
    }
    let attached = in_netns(netns, || {
        let mut done: Vec<String> = Vec::new();
        for (iface, link) in &fresh {
            let program = loader::program_egress_mut(ebpf, *link)?;
            if let Err(e) = attach_pinned(program, pins, iface) {
                for iface in &done {
                    let _ = std::fs::remove_file(pins.egress_link(iface));
                }
                let netns = netns
                    .map(|ns| format!(" in network namespace {ns}"))
                    .unwrap_or_default();
                return Err(Error::Refused(format!(
                    "attaching the egress program (TC egress, tcx) to {iface}{netns}: {}; \
                     emis needs it for stateful replies behind NAT: check `bpftool net show \
                     dev {iface}`, or run with --replies stateless",
                    error_chain(&e)
                )));
            }
            done.push((*iface).clone());
        }
        Ok(done)
    })?;
    installed.extend(attached);
    Ok(installed)
}

/// Attaches a new TCX egress link to `iface`, last in its chain (after any other TC
/// program, such as one that translates addresses), and pins it.
fn attach_pinned(program: &mut SchedClassifier, pins: &Pins, iface: &str) -> Result<(), Error> {
    let id = program
        .attach_with_options(
            iface,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .what(|| "attaching the TC egress program".into())?;
    let link = program
        .take_link(id)
        .what(|| "taking the new egress link".into())?;
    let link = FdLink::try_from(link).map_err(|_| {
        Error::Refused(
            "the kernel attached the egress program through netlink, not a tcx link, so it \
             could not be pinned; emis needs tcx (Linux 6.6 or later)"
                .into(),
        )
    })?;
    let path = pins.egress_link(iface);
    link.pin(&path)
        .what(|| format!("pinning the egress link at {}", path.display()))?;
    Ok(())
}

/// Removes the pinned egress links of interfaces not in `keep`, which detaches them.
pub fn detach_except(pins: &Pins, keep: &[String]) -> Result<Vec<String>, Error> {
    let mut detached = Vec::new();
    for iface in pins.egress_interfaces() {
        if keep.contains(&iface) {
            continue;
        }
        let path = pins.egress_link(&iface);
        std::fs::remove_file(&path).what(|| format!("removing {}", path.display()))?;
        detached.push(iface);
    }
    Ok(detached)
}
