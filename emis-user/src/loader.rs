//! Loads the embedded kernel program, fills its maps from a compiled policy and
//! attaches it to interfaces; dropping the returned [`aya::Ebpf`] detaches it.

use std::{os::fd::AsRawFd, path::Path};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData},
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use emis_common::{
    Config, PortKey, RuleSet, MAP_ADDR_V4, MAP_ADDR_V6, MAP_CONFIG, MAP_COUNT_V4, MAP_COUNT_V6,
    MAP_PORTS, PROGRAM_NAME,
};

use emis_policy::{
    compile::Compiled,
    policy::{Mode, Replies},
};

/// The kernel program, built by build.rs (aya-build) and embedded in this binary.
pub static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/emis"));

/// What a load sets besides the compiled policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    pub mode: Mode,
    pub replies: Replies,
    pub flow_table_size: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            mode: Mode::Enforce,
            replies: Replies::Stateful,
            flow_table_size: emis_common::DEFAULT_FLOW_TABLE_SIZE,
        }
    }
}

/// How to attach: let the kernel choose native with a generic fallback, or force one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    Auto,
    Native,
    Skb,
}

/// Checks what loading needs, with errors that say what to do.
pub fn preflight() -> Result<()> {
    if PROGRAM_OBJECT.is_empty() {
        bail!(
            "this emis binary was built with AYA_BUILD_SKIP=1 and carries no kernel program; \
             rebuild it with `cargo xtask build`"
        );
    }
    if unsafe { libc::geteuid() } != 0 {
        bail!("loading an XDP program needs root (CAP_BPF and CAP_NET_ADMIN): run emis as root");
    }
    // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    Ok(())
}

/// Loads the program through the verifier and fills every map from `compiled`.
pub fn load(compiled: &Compiled, options: LoadOptions) -> Result<Ebpf> {
    preflight()?;
    if options.flow_table_size == 0 {
        bail!("--flow-table-size must be at least 1");
    }
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(emis_common::MAP_FLOWS, options.flow_table_size)
        .load(PROGRAM_OBJECT)
        .with_context(|| {
            format!(
                "loading the emis kernel object (a flow table of {} entries may not fit: try a smaller --flow-table-size)",
                options.flow_table_size
            )
        })?;
    fill_maps(&mut ebpf, compiled, options)?;
    let program: &mut Xdp = program_mut(&mut ebpf)?;
    program
        .load()
        .context("the kernel verifier rejected the emis program")?;
    Ok(ebpf)
}

pub fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or_else(|| anyhow!("the kernel object has no program named {PROGRAM_NAME}"))?
        .try_into()
        .context("the emis program is not an XDP program")
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("the kernel object has no map named {name}"))
}

/// Inserts `entries` into the longest-prefix trie `name`.
fn fill_trie<const N: usize, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    entries: impl Iterator<Item = (u8, [u8; N], V)>,
) -> Result<()> {
    let mut trie: LpmTrie<_, [u8; N], V> = LpmTrie::try_from(map_mut(ebpf, name)?)?;
    for (len, addr, value) in entries {
        trie.insert(&Key::new(len.into(), addr), value, 0)
            .with_context(|| format!("inserting a /{len} prefix into {name}"))?;
    }
    Ok(())
}

fn fill_maps(ebpf: &mut Ebpf, compiled: &Compiled, options: LoadOptions) -> Result<()> {
    let v4 = |n: &ipnet::Ipv4Net| (n.prefix_len(), n.network().octets());
    let v6 = |n: &ipnet::Ipv6Net| (n.prefix_len(), n.network().octets());
    fill_trie(
        ebpf,
        MAP_ADDR_V4,
        compiled.v4.iter().map(|(n, i)| (v4(n).0, v4(n).1, *i)),
    )?;
    fill_trie(
        ebpf,
        MAP_ADDR_V6,
        compiled.v6.iter().map(|(n, i)| (v6(n).0, v6(n).1, *i)),
    )?;
    fill_trie(
        ebpf,
        MAP_COUNT_V4,
        compiled
            .count_v4
            .iter()
            .map(|(n, c)| (v4(n).0, v4(n).1, *c)),
    )?;
    fill_trie(
        ebpf,
        MAP_COUNT_V6,
        compiled
            .count_v6
            .iter()
            .map(|(n, c)| (v6(n).0, v6(n).1, *c)),
    )?;
    let mut ports: HashMap<_, PortKey, RuleSet> = HashMap::try_from(map_mut(ebpf, MAP_PORTS)?)?;
    for (key, set) in &compiled.ports {
        ports
            .insert(key, set, 0)
            .with_context(|| format!("inserting port {} into {MAP_PORTS}", key.port))?;
    }
    let mut config: Array<_, Config> = Array::try_from(map_mut(ebpf, MAP_CONFIG)?)?;
    let value = Config {
        mode: options.mode.raw(),
        replies: options.replies.raw(),
        ..compiled.config
    };
    config.set(0, value, 0)?;
    Ok(())
}

/// Switches a loaded program between enforce and audit through its config map.
pub fn set_mode<T: std::borrow::BorrowMut<MapData>>(
    config: &mut Array<T, Config>,
    mode: Mode,
) -> Result<()> {
    let mut value = config.get(&0, 0)?;
    value.mode = mode.raw();
    config.set(0, value, 0)?;
    Ok(())
}

/// Attaches the loaded program to each interface, inside network namespace `netns` if given
/// (only the attaching thread joins it, so the metrics listener stays where emis runs).
pub fn attach(
    ebpf: &mut Ebpf,
    ifaces: &[String],
    mode: AttachMode,
    netns: Option<&str>,
) -> Result<Vec<(String, &'static str)>> {
    let program = program_mut(ebpf)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Some(netns) = netns {
                    join_netns(netns)?;
                }
                let mut attached = Vec::new();
                for iface in ifaces {
                    let how = attach_one(program, iface, mode).with_context(|| match netns {
                        Some(ns) => format!("attaching to {iface} in network namespace {ns}"),
                        None => format!("attaching to {iface}"),
                    })?;
                    attached.push((iface.clone(), how));
                }
                Ok(attached)
            })
            .join()
            .map_err(|_| anyhow!("the attaching thread panicked"))?
    })
}

fn attach_one(program: &mut Xdp, iface: &str, mode: AttachMode) -> Result<&'static str> {
    match mode {
        AttachMode::Native => program.attach(iface, XdpMode::Driver).map(|_| "native"),
        AttachMode::Skb => program.attach(iface, XdpMode::Skb).map(|_| "skb"),
        AttachMode::Auto => match program.attach(iface, XdpMode::Driver) {
            Ok(_) => Ok("native"),
            Err(aya::programs::ProgramError::UnknownInterface { name }) => {
                return Err(anyhow!("no interface named {name}: check `ip link`"))
            }
            Err(native) => {
                tracing::warn!(%iface, error = %native, "native XDP refused; using generic (skb) mode");
                program.attach(iface, XdpMode::Skb).map(|_| "skb")
            }
        },
    }
    .map_err(|e| match e {
        aya::programs::ProgramError::UnknownInterface { name } => {
            anyhow!("no interface named {name}: check `ip link`")
        }
        other => anyhow!(other),
    })
}

/// Moves the calling thread into the named network namespace.
pub fn join_netns(name: &str) -> Result<()> {
    let path = Path::new("/run/netns").join(name);
    let file = std::fs::File::open(&path).with_context(|| {
        format!(
            "opening {}: is there a network namespace {name}? (ip netns list)",
            path.display()
        )
    })?;
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("joining network namespace {name}"));
    }
    Ok(())
}
