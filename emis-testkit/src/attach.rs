//! Attaching a loaded XDP program to an interface inside a lab namespace.

use anyhow::{Context as _, Result};
use aya::programs::{xdp::XdpLinkId, Xdp, XdpMode};

/// Attaches `program` in native (driver) mode to `iface` in network namespace `netns`;
/// the attachment lasts until the program is detached or unloaded.
pub fn attach_native(program: &mut Xdp, netns: &str, iface: &str) -> Result<XdpLinkId> {
    emis_lab::in_netns_scoped(netns, || {
        let index = emis_lab::ifindex(iface)?;
        program
            .attach_to_if_index(index, XdpMode::Driver)
            .with_context(|| format!("attaching in native mode to {iface} in {netns}"))
    })?
}
