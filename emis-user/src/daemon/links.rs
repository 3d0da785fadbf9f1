//! XDP links: checking interfaces, attaching new links and pinning them, adopting pinned
//! links with a new program (`bpf_link_update`: no instant without a program), detaching.

use std::collections::BTreeMap;

use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
    ProgramError, Xdp, XdpMode,
};

use emis_common::Link;

use crate::linktype;

use super::{
    error::{chain as error_chain, What as _},
    pins::Pins,
    Error,
};

/// How to attach a new link: native with a generic fallback, or one forced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Auto,
    Native,
    Skb,
}

impl AttachMode {
    pub const ALL: [AttachMode; 3] = [AttachMode::Auto, AttachMode::Native, AttachMode::Skb];

    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Auto => "auto",
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        }
    }
}

impl std::str::FromStr for AttachMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AttachMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("`{s}` is not an attach mode: auto, native or skb"))
    }
}

/// One interface the program now runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    pub iface: String,
    /// native or skb.
    pub mode: String,
    /// The link existed and now runs the new program.
    pub adopted: bool,
}

/// Runs `f` on a thread inside network namespace `netns` (or here), borrowing from the
/// caller: emis itself stays where it runs, so the metrics listener does too.
pub fn in_netns<T: Send>(
    netns: Option<&str>,
    f: impl FnOnce() -> Result<T, Error> + Send,
) -> Result<T, Error> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Some(netns) = netns {
                    crate::loader::join_netns(netns)?;
                }
                f()
            })
            .join()
            .map_err(|_| Error::Refused("the attaching thread panicked".into()))?
    })
}

fn where_(netns: Option<&str>) -> String {
    netns
        .map(|ns| format!(" in network namespace {ns}"))
        .unwrap_or_default()
}

/// Every interface exists and has a link type the program reads (checked before anything
/// in the kernel changes); returns which program each one takes.
pub fn check_interfaces(
    ifaces: &[String],
    netns: Option<&str>,
) -> Result<BTreeMap<String, Link>, Error> {
    in_netns(netns, || {
        let mut links = BTreeMap::new();
        for iface in ifaces {
            let name = std::ffi::CString::new(iface.as_str())
                .map_err(|_| Error::Refused(format!("interface name {iface:?} has a NUL byte")))?;
            if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
                return Err(Error::Refused(format!(
                    "no interface named {iface}{}: check `ip link`",
                    where_(netns)
                )));
            }
            // Never attach where the program would misread the headers: an unknown
            // link type is refused by name.
            let link = linktype::link_of(iface)
                .map_err(|e| Error::Refused(format!("{e}{}", where_(netns))))?;
            links.insert(iface.clone(), link);
        }
        Ok(links)
    })
}

/// Puts `program` on every interface of `ifaces`: pinned links are swapped to it first
/// (each atomically), then new interfaces get a new pinned link. If attaching a new one
/// fails, the links pinned by this call are removed again.
pub fn install(
    program: &mut Xdp,
    pins: &Pins,
    ifaces: &[String],
    mode: AttachMode,
    netns: Option<&str>,
    modes_before: &BTreeMap<String, String>,
) -> Result<Vec<Installed>, Error> {
    let mut installed = Vec::new();
    let (pinned, mut fresh): (Vec<&String>, Vec<&String>) =
        ifaces.iter().partition(|iface| pins.link(iface).exists());
    for iface in pinned {
        let path = pins.link(iface);
        let link = PinnedLink::from_pin(&path).what(|| format!("opening {}", path.display()))?;
        let link = XdpLink::try_from(FdLink::from(link))
            .what(|| format!("{} is not an XDP link", path.display()))?;
        match program.attach_to_link(link) {
            Ok(_) => {}
            // The link's interface is gone (its namespace or device was deleted and made
            // again): nothing runs behind it, so attach anew.
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOLINK) =>
            {
                tracing::info!(%iface, "the pinned link's interface is gone; attaching anew");
                std::fs::remove_file(&path).what(|| format!("removing {}", path.display()))?;
                fresh.push(iface);
                continue;
            }
            Err(e) => {
                return Err(e)
                    .what(|| format!("replacing the program on {iface} (bpf_link_update)"))
            }
        }
        installed.push(Installed {
            iface: iface.clone(),
            mode: modes_before
                .get(iface.as_str())
                .cloned()
                .unwrap_or_else(|| "unknown".into()),
            adopted: true,
        });
    }
    if fresh.is_empty() {
        return Ok(installed);
    }
    let attached = in_netns(netns, || {
        let mut done: Vec<(String, String)> = Vec::new();
        for iface in &fresh {
            match attach_pinned(program, pins, iface, mode) {
                Ok(how) => done.push(((*iface).clone(), how.into())),
                Err(e) => {
                    for (iface, _) in &done {
                        let _ = std::fs::remove_file(pins.link(iface));
                    }
                    let text = error_chain(&e);
                    let hint = if text.contains("File exists") || text.contains("busy") {
                        format!(
                            " (another XDP program is attached there: `ip link show {iface}`; \
                             one an earlier emis pinned elsewhere goes with `emis detach --pin-dir DIR`)"
                        )
                    } else {
                        String::new()
                    };
                    return Err(Error::Refused(format!(
                        "attaching to {iface}{}: {text}{hint}",
                        where_(netns)
                    )));
                }
            }
        }
        Ok(done)
    })?;
    installed.extend(attached.into_iter().map(|(iface, mode)| Installed {
        iface,
        mode,
        adopted: false,
    }));
    Ok(installed)
}

/// Attaches a new link to `iface` and pins it; returns native or skb.
fn attach_pinned(
    program: &mut Xdp,
    pins: &Pins,
    iface: &str,
    mode: AttachMode,
) -> Result<&'static str, Error> {
    let attach = |program: &mut Xdp, m: XdpMode| program.attach(iface, m);
    let (id, how) = match mode {
        AttachMode::Native => (attach(program, XdpMode::Driver), "native"),
        AttachMode::Skb => (attach(program, XdpMode::Skb), "skb"),
        AttachMode::Auto => match attach(program, XdpMode::Driver) {
            Ok(id) => (Ok(id), "native"),
            Err(ProgramError::UnknownInterface { name }) => {
                return Err(Error::Refused(format!(
                    "no interface named {name}: check `ip link`"
                )))
            }
            Err(native) => {
                tracing::warn!(%iface, error = %native, "native XDP refused; using generic (skb) mode");
                (attach(program, XdpMode::Skb), "skb")
            }
        },
    };
    let id = id.what(|| "attaching the XDP program".into())?;
    let link = program
        .take_link(id)
        .what(|| "taking the new link".into())?;
    let link = FdLink::try_from(link).map_err(|_| {
        Error::Refused(
            "the kernel attached through netlink, not a bpf_link, so the attachment could not \
             be pinned; emis needs XDP bpf_links (Linux 5.9 or later)"
                .into(),
        )
    })?;
    let path = pins.link(iface);
    link.pin(&path)
        .what(|| format!("pinning the link at {}", path.display()))?;
    Ok(how)
}

/// Removes the pinned links of interfaces not in `keep`, which detaches them; returns them.
pub fn detach_except(pins: &Pins, keep: &[String]) -> Result<Vec<String>, Error> {
    let mut detached = Vec::new();
    for iface in pins.linked_interfaces() {
        if keep.contains(&iface) {
            continue;
        }
        let path = pins.link(&iface);
        std::fs::remove_file(&path).what(|| format!("removing {}", path.display()))?;
        detached.push(iface);
    }
    Ok(detached)
}
