//! Loads the embedded kernel program and fills its maps from a compiled policy. Attaching,
//! pinning and swapping programs belong to the daemon (`crate::daemon`); a program loaded
//! here and dropped without being attached leaves nothing behind.

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::AsRawFd,
    path::Path,
};

use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, MapData, MapError},
    programs::{ProgramError, SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use emis_common::{
    new_flow_table_size, port_slot, AddrBucket, AddrListV6, Config, CountChunk, PortKey, RuleSet,
    TraceMatch, MAP_ADDR_V4, MAP_ADDR_V4_BUCKETS, MAP_ADDR_V4_INDEX, MAP_ADDR_V6, MAP_ADDR_V6_LIST,
    MAP_CONFIG, MAP_COUNT_V4, MAP_COUNT_V4_CHUNKS, MAP_COUNT_V4_INDEX, MAP_COUNT_V4_SETS,
    MAP_COUNT_V6, MAP_COUNT_V6_FILTER, MAP_FLOWS, MAP_FLOWS_NEW, MAP_FLOW_EVENTS, MAP_FRAGS,
    MAP_PORTS, MAP_RULE_SETS, MAP_STATS, MAP_TRACE_MATCH, PROGRAM_NAME, PROGRAM_NAME_EGRESS,
    PROGRAM_NAME_EGRESS_L3, PROGRAM_NAME_L3,
};

use emis_policy::{
    addr_table::{addr_list_v6, AddrTableV4},
    compile::Compiled,
    count_table::{count_v6_filter, CountTableV4},
    policy::{Mode, Replies},
};

/// The kernel program, built by build.rs (aya-build) and embedded in this binary.
pub static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/emis"));

/// The maps that outlive a program: counters, flows, fragments and flow events. A program
/// loaded with [`load_sharing`] reuses the pinned ones, so a reload keeps them. The policy
/// maps (address tries, ports) and the config are new with every program.
/// The event ring buffer and its counters are shared too, so `emis watch` clients keep
/// reading across a reload.
/// So are the learned addresses and the DNS hand-off (ring, counters, switch): what the
/// daemon learned outlives a reload, which rewrites the values for the new rules.
pub const SHARED_MAPS: [&str; 15] = [
    MAP_STATS,
    MAP_FLOWS,
    MAP_FLOWS_NEW,
    MAP_FRAGS,
    MAP_FLOW_EVENTS,
    emis_common::MAP_EVENTS,
    emis_common::MAP_EVENT_COUNTS,
    emis_common::MAP_IFACE_STATS,
    // The kernel log's ring buffer: one reader follows it across reloads.
    emis_common::MAP_KERNEL_LOG,
    emis_common::MAP_LEARNED_V4,
    emis_common::MAP_LEARNED_V6,
    emis_common::MAP_LEARNED_FILTER,
    emis_common::MAP_DNS,
    emis_common::MAP_DNS_COUNTS,
    emis_common::MAP_DNS_CONFIG,
];

/// What a load sets besides the compiled policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    pub mode: Mode,
    pub replies: Replies,
    pub flow_table_size: u32,
    /// Whether denied packets produce events (only a daemon reads them).
    pub events: bool,
    /// Events a second each CPU may produce.
    pub event_rate: u32,
    /// N: one allowed packet in N produces an event; 0: none.
    pub sample_allowed: u32,
    /// The kernel log's per-decision trace, for the packets this selects; `None`: off.
    /// It takes the place of the events while on (see docs/DECISIONS.md).
    pub trace: Option<TraceMatch>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            mode: Mode::Enforce,
            replies: Replies::Stateful,
            flow_table_size: emis_common::DEFAULT_FLOW_TABLE_SIZE,
            events: false,
            event_rate: emis_common::DEFAULT_EVENT_RATE,
            sample_allowed: 0,
            trace: None,
        }
    }
}

/// Why the program could not be loaded, with what to try next.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this emis binary was built with AYA_BUILD_SKIP=1 and carries no kernel program; \
         rebuild it with `cargo xtask build`"
    )]
    NoProgram,
    #[error("loading an XDP program needs root (CAP_BPF and CAP_NET_ADMIN): run emis as root")]
    NotRoot,
    #[error("--flow-table-size must be at least 1")]
    EmptyFlowTable,
    #[error(
        "loading the emis kernel object (a flow table of {size} entries may not fit: try a \
         smaller --flow-table-size)"
    )]
    Object {
        size: u32,
        #[source]
        source: aya::EbpfError,
    },
    #[error("the kernel verifier rejected the emis program")]
    Verifier(#[source] ProgramError),
    #[error("the kernel object has no {kind} named {name}")]
    Missing { kind: &'static str, name: String },
    #[error("the emis program is not an XDP program")]
    NotXdp(#[source] ProgramError),
    #[error("the emis egress program is not a TC classifier")]
    NotTc(#[source] ProgramError),
    #[error("{what}")]
    Map {
        what: String,
        #[source]
        source: MapError,
    },
    #[error("opening {path}: is there a network namespace {name}? (ip netns list)")]
    NoNetns {
        name: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("joining network namespace {name}")]
    JoinNetns {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

fn map_error(what: impl Into<String>) -> impl FnOnce(MapError) -> LoadError {
    let what = what.into();
    move |source| LoadError::Map { what, source }
}

/// Checks what loading needs, with errors that say what to do.
pub fn preflight() -> Result<(), LoadError> {
    if PROGRAM_OBJECT.is_empty() {
        return Err(LoadError::NoProgram);
    }
    if unsafe { libc::geteuid() } != 0 {
        return Err(LoadError::NotRoot);
    }
    // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    Ok(())
}

/// Loads the program through the verifier and fills every map from `compiled`; its maps
/// are its own and end with it.
pub fn load(compiled: &Compiled, options: LoadOptions) -> Result<Ebpf, LoadError> {
    load_sharing(compiled, options, None)
}

/// As [`load`]; with `shared_pins`, the [`SHARED_MAPS`] pinned in that directory are
/// reused (and pinned there first if absent), so the new program counts into the same
/// counters and tracks the same flows as the one it replaces.
pub fn load_sharing(
    compiled: &Compiled,
    options: LoadOptions,
    shared_pins: Option<&Path>,
) -> Result<Ebpf, LoadError> {
    let loader = new_loader(options)?;
    load_with(loader, compiled, options, shared_pins)
}

/// As [`load_sharing`], calling `compile` only once the loader is set up: setting it up
/// parses the kernel's BTF (about 18 MB at its peak, whatever the policy), and with a
/// million count-scope prefixes compiled beside it that parse was the daemon's peak memory.
/// Returns the program and what `compile` gave.
pub fn load_compiling<E: From<LoadError>>(
    compile: impl FnOnce() -> Result<Compiled, E>,
    options: LoadOptions,
    shared_pins: Option<&Path>,
) -> Result<(Ebpf, Compiled), E> {
    let loader = new_loader(options)?;
    let compiled = compile()?;
    let ebpf = load_with(loader, &compiled, options, shared_pins)?;
    Ok((ebpf, compiled))
}

/// A loader without the kernel's BTF: `EbpfLoader::new` parses it for CO-RE relocations,
/// which the object has none of (a test checks), so it is dropped at once.
fn new_loader(options: LoadOptions) -> Result<EbpfLoader<'static>, LoadError> {
    preflight()?;
    if options.flow_table_size == 0 {
        return Err(LoadError::EmptyFlowTable);
    }
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    // Hand the parse's freed pages back now, or they stay resident beside what comes next.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0)
    };
    Ok(loader)
}

fn load_with(
    mut loader: EbpfLoader<'static>,
    compiled: &Compiled,
    options: LoadOptions,
    shared_pins: Option<&Path>,
) -> Result<Ebpf, LoadError> {
    loader.map_max_entries(MAP_FLOWS, options.flow_table_size);
    // New and half-open flows live apart, so however many arrive they never push out a
    // flow that has seen traffic both ways.
    loader.map_max_entries(MAP_FLOWS_NEW, new_flow_table_size(options.flow_table_size));
    let ports = PortTables::new(&compiled.ports);
    loader.map_max_entries(MAP_RULE_SETS, ports.sets.len() as u32);
    let addr_v4 = AddrTableV4::new(&compiled.v4);
    loader.map_max_entries(MAP_ADDR_V4_BUCKETS, addr_v4.buckets.len() as u32);
    let count_v4 = CountTableV4::new(&compiled.count_v4);
    loader.map_max_entries(MAP_COUNT_V4_CHUNKS, count_v4.chunked.len().max(1) as u32);
    if let Some(dir) = shared_pins {
        for name in SHARED_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    let mut ebpf = loader
        .load(PROGRAM_OBJECT)
        .map_err(|source| LoadError::Object {
            size: options.flow_table_size,
            source,
        })?;
    drop(loader);
    fill_maps(&mut ebpf, compiled, &ports, options)?;
    fill_addr_v4_table(&mut ebpf, &addr_v4)?;
    fill_count_v4_table(&mut ebpf, &count_v4, compiled)?;
    let mut list: Array<_, AddrListV6> = Array::try_from(map_mut(&mut ebpf, MAP_ADDR_V6_LIST)?)
        .map_err(map_error(format!("opening {MAP_ADDR_V6_LIST}")))?;
    list.set(0, addr_list_v6(&compiled.v6), 0)
        .map_err(map_error(format!("writing {MAP_ADDR_V6_LIST}")))?;
    program_mut(&mut ebpf)?
        .load()
        .map_err(LoadError::Verifier)?;
    Ok(ebpf)
}

/// The program for interfaces without a link header (`emis_l3`), loaded on first use: it
/// shares every map with `emis`, so a router with both kinds of interface keeps one policy,
/// one flow table and one set of counters.
pub fn program_l3_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, LoadError> {
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME_L3)
        .ok_or_else(|| LoadError::Missing {
            kind: "program",
            name: PROGRAM_NAME_L3.into(),
        })?
        .try_into()
        .map_err(LoadError::NotXdp)?;
    if program.fd().is_err() {
        program.load().map_err(LoadError::Verifier)?;
    }
    Ok(program)
}

/// The TC egress program for `link` (`emis_egress`, or `emis_egress_l3` for devices without
/// a link header), loaded on first use. It shares every map with the XDP programs and
/// records allowed flows under the tuple they leave with (docs/DECISIONS.md, NAT).
pub fn program_egress_mut(
    ebpf: &mut Ebpf,
    link: emis_common::Link,
) -> Result<&mut SchedClassifier, LoadError> {
    let name = match link {
        emis_common::Link::Ethernet => PROGRAM_NAME_EGRESS,
        emis_common::Link::Ip => PROGRAM_NAME_EGRESS_L3,
    };
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or_else(|| LoadError::Missing {
            kind: "program",
            name: name.into(),
        })?
        .try_into()
        .map_err(LoadError::NotTc)?;
    if program.fd().is_err() {
        program.load().map_err(LoadError::Verifier)?;
    }
    Ok(program)
}

pub fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, LoadError> {
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or_else(|| LoadError::Missing {
            kind: "program",
            name: PROGRAM_NAME.into(),
        })?
        .try_into()
        .map_err(LoadError::NotXdp)
}

pub fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map, LoadError> {
    ebpf.map_mut(name).ok_or_else(|| LoadError::Missing {
        kind: "map",
        name: name.into(),
    })
}

/// Inserts `entries` into the longest-prefix trie `name`.
fn fill_trie<const N: usize, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    entries: impl Iterator<Item = (u8, [u8; N], V)>,
) -> Result<(), LoadError> {
    let mut trie: LpmTrie<_, [u8; N], V> =
        LpmTrie::try_from(map_mut(ebpf, name)?).map_err(map_error(format!("opening {name}")))?;
    for (len, addr, value) in entries {
        trie.insert(&Key::new(len.into(), addr), value, 0)
            .map_err(map_error(format!("inserting a /{len} prefix into {name}")))?;
    }
    Ok(())
}

/// The compiled port sets as the kernel reads them: each distinct set once (index 0 is
/// the unused "no set"), and per port slot the index of its set.
struct PortTables {
    sets: Vec<RuleSet>,
    slots: Vec<(u32, u16)>,
}

impl PortTables {
    fn new(ports: &BTreeMap<PortKey, RuleSet>) -> PortTables {
        let mut sets = vec![RuleSet::default()];
        let mut index: HashMap<&[u8], u16> = HashMap::new();
        let mut slots = Vec::with_capacity(ports.len());
        for (key, set) in ports {
            // Rules are TCP or UDP, so every key has a slot.
            let Some(slot) = port_slot(key.proto, key.port) else {
                continue;
            };
            // Plain `repr(C)` data with explicit padding (aya::Pod): its bytes are its value.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (set as *const RuleSet).cast::<u8>(),
                    std::mem::size_of::<RuleSet>(),
                )
            };
            let i = *index.entry(bytes).or_insert_with(|| {
                sets.push(*set);
                // At most MAX_PORT_ENTRIES (capacity) sets, so the index fits.
                (sets.len() - 1) as u16
            });
            slots.push((slot, i));
        }
        PortTables { sets, slots }
    }
}

/// The IPv4 enforce-scope classes by /16 (the trie stays filled for the buckets that defer to it).
fn fill_addr_v4_table(ebpf: &mut Ebpf, table: &AddrTableV4) -> Result<(), LoadError> {
    let mut buckets: Array<_, AddrBucket> = Array::try_from(map_mut(ebpf, MAP_ADDR_V4_BUCKETS)?)
        .map_err(map_error(format!("opening {MAP_ADDR_V4_BUCKETS}")))?;
    for (i, bucket) in table.buckets.iter().enumerate().skip(1) {
        buckets.set(i as u32, bucket, 0).map_err(map_error(format!(
            "writing bucket {i} into {MAP_ADDR_V4_BUCKETS}"
        )))?;
    }
    let mut index: Array<_, u32> = Array::try_from(map_mut(ebpf, MAP_ADDR_V4_INDEX)?)
        .map_err(map_error(format!("opening {MAP_ADDR_V4_INDEX}")))?;
    for &(slot, bucket) in &table.slots {
        index.set(slot, bucket, 0).map_err(map_error(format!(
            "writing /16 slot {slot} into {MAP_ADDR_V4_INDEX}"
        )))?;
    }
    Ok(())
}

/// The front of the IPv4 count trie (the chunks built and written one at a time), and the
/// IPv6 count filter.
fn fill_count_v4_table(
    ebpf: &mut Ebpf,
    table: &CountTableV4,
    compiled: &Compiled,
) -> Result<(), LoadError> {
    let mut sets: Array<_, u64> = Array::try_from(map_mut(ebpf, MAP_COUNT_V4_SETS)?)
        .map_err(map_error(format!("opening {MAP_COUNT_V4_SETS}")))?;
    for (code, &classes) in table.sets.iter().enumerate() {
        sets.set(code as u32, classes, 0)
            .map_err(map_error(format!(
                "writing class set {code} into {MAP_COUNT_V4_SETS}"
            )))?;
    }
    let mut chunks: Array<_, CountChunk> = Array::try_from(map_mut(ebpf, MAP_COUNT_V4_CHUNKS)?)
        .map_err(map_error(format!("opening {MAP_COUNT_V4_CHUNKS}")))?;
    table.for_each_chunk(&compiled.count_v4, |number, chunk| {
        chunks.set(number, chunk, 0).map_err(map_error(format!(
            "writing chunk {number} into {MAP_COUNT_V4_CHUNKS}"
        )))
    })?;
    // The index last: until it points at them, the chunks are never read.
    let mut index: Array<_, u32> = Array::try_from(map_mut(ebpf, MAP_COUNT_V4_INDEX)?)
        .map_err(map_error(format!("opening {MAP_COUNT_V4_INDEX}")))?;
    for (slot, &entry) in table.index.iter().enumerate() {
        if entry != emis_common::COUNT_V4_NONE {
            index.set(slot as u32, entry, 0).map_err(map_error(format!(
                "writing /16 slot {slot} into {MAP_COUNT_V4_INDEX}"
            )))?;
        }
    }
    let mut filter: Array<_, u64> = Array::try_from(map_mut(ebpf, MAP_COUNT_V6_FILTER)?)
        .map_err(map_error(format!("opening {MAP_COUNT_V6_FILTER}")))?;
    for (i, &word) in count_v6_filter(&compiled.count_v6).iter().enumerate() {
        if word != 0 {
            filter.set(i as u32, word, 0).map_err(map_error(format!(
                "writing word {i} into {MAP_COUNT_V6_FILTER}"
            )))?;
        }
    }
    Ok(())
}

fn fill_maps(
    ebpf: &mut Ebpf,
    compiled: &Compiled,
    ports: &PortTables,
    options: LoadOptions,
) -> Result<(), LoadError> {
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
            .map(|(n, c)| (v4(&n).0, v4(&n).1, c)),
    )?;
    fill_trie(
        ebpf,
        MAP_COUNT_V6,
        compiled
            .count_v6
            .iter()
            .map(|(n, c)| (v6(&n).0, v6(&n).1, c)),
    )?;
    let mut sets: Array<_, RuleSet> = Array::try_from(map_mut(ebpf, MAP_RULE_SETS)?)
        .map_err(map_error(format!("opening {MAP_RULE_SETS}")))?;
    for (i, set) in ports.sets.iter().enumerate().skip(1) {
        sets.set(i as u32, set, 0).map_err(map_error(format!(
            "writing rule set {i} into {MAP_RULE_SETS}"
        )))?;
    }
    let mut index: Array<_, u16> = Array::try_from(map_mut(ebpf, MAP_PORTS)?)
        .map_err(map_error(format!("opening {MAP_PORTS}")))?;
    for &(slot, set) in &ports.slots {
        index.set(slot, set, 0).map_err(map_error(format!(
            "writing port slot {slot} into {MAP_PORTS}"
        )))?;
    }
    let mut config: Array<_, Config> = Array::try_from(map_mut(ebpf, MAP_CONFIG)?)
        .map_err(map_error(format!("opening {MAP_CONFIG}")))?;
    let value = Config {
        mode: options.mode.raw(),
        replies: options.replies.raw(),
        // The trace runs under the events' flag (one check on the packet path for both).
        events: (options.events || options.trace.is_some()) as u32,
        event_rate: options.event_rate,
        sample_allowed: options.sample_allowed,
        trace: options.trace.is_some() as u32,
        ..compiled.config
    };
    config
        .set(0, value, 0)
        .map_err(map_error(format!("writing {MAP_CONFIG}")))?;
    if let Some(filter) = options.trace {
        let mut trace: Array<_, TraceMatch> = Array::try_from(map_mut(ebpf, MAP_TRACE_MATCH)?)
            .map_err(map_error(format!("opening {MAP_TRACE_MATCH}")))?;
        trace
            .set(0, filter, 0)
            .map_err(map_error(format!("writing {MAP_TRACE_MATCH}")))?;
    }
    Ok(())
}

/// Switches a loaded program between enforce and audit through its config map. Generic
/// in its error so callers with their own error type use it as their last expression.
pub fn set_mode<T, E>(config: &mut Array<T, Config>, mode: Mode) -> Result<(), E>
where
    T: std::borrow::BorrowMut<MapData>,
    E: From<MapError>,
{
    let mut value = config.get(&0, 0)?;
    value.mode = mode.raw();
    config.set(0, value, 0)?;
    Ok(())
}

/// Moves the calling thread into the named network namespace.
pub fn join_netns(name: &str) -> Result<(), LoadError> {
    let path = Path::new("/run/netns").join(name);
    let file = std::fs::File::open(&path).map_err(|source| LoadError::NoNetns {
        name: name.into(),
        path: path.display().to_string(),
        source,
    })?;
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(LoadError::JoinNetns {
            name: name.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod btf_tests {
    /// The loader drops the kernel's BTF ([`super::new_loader`]): only CO-RE relocations
    /// would need it.
    #[test]
    fn object_has_no_btf_relocations() {
        let object = aya_obj::Object::parse(super::PROGRAM_OBJECT).expect("the object parses");
        assert!(!object.has_btf_relocations());
    }
}
