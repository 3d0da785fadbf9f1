//! The pin dir (bpffs): what is pinned where, and opening each pinned map by name.
//!
//! ```text
//! <pin dir>/EMIS_STATS EMIS_FLOWS EMIS_FRAGS EMIS_FLOW_EVENTS   shared by every program
//! <pin dir>/EMIS_CONFIG                                         the current program's config
//! <pin dir>/emis                                                the current program
//! <pin dir>/link-<iface>                                        one XDP link per interface
//! <pin dir>/egress-<iface>                                      one TC egress link per interface
//! ```
//! A pinned link keeps its program attached after every process has closed it; removing
//! the pin detaches it.

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use emis_common::{
    Config, Counter, FlowKey, FlowValue, MAP_CONFIG, MAP_FLOWS, MAP_FLOWS_NEW, MAP_FLOW_EVENTS,
    MAP_STATS, STATS_LEN,
};
use emis_policy::policy::Mode;

use super::{error::What as _, Error};
use crate::{
    flows::{FlowTableStats, NewFlowStats},
    stats::{mode_of, Snapshot},
};

/// The name of the program's pin.
pub const PROGRAM_PIN: &str = "emis";
const LINK_PREFIX: &str = "link-";
const EGRESS_PREFIX: &str = "egress-";
/// statfs(2)'s f_type of a bpffs mount.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The layout of one pin dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pins {
    dir: PathBuf,
}

impl Pins {
    pub fn new(dir: impl Into<PathBuf>) -> Pins {
        Pins { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn program(&self) -> PathBuf {
        self.dir.join(PROGRAM_PIN)
    }

    /// bpffs refuses names with a dot (eth0.100), and no interface name holds a colon.
    pub fn link(&self, iface: &str) -> PathBuf {
        self.dir
            .join(format!("{LINK_PREFIX}{}", iface.replace('.', ":")))
    }

    /// The TC egress link of `iface` (named as [`Pins::link`] names the XDP one).
    pub fn egress_link(&self, iface: &str) -> PathBuf {
        self.dir
            .join(format!("{EGRESS_PREFIX}{}", iface.replace('.', ":")))
    }

    /// The interfaces with a pinned link, sorted.
    pub fn linked_interfaces(&self) -> Vec<String> {
        self.interfaces_with(LINK_PREFIX)
    }

    /// The interfaces with a pinned TC egress link, sorted.
    pub fn egress_interfaces(&self) -> Vec<String> {
        self.interfaces_with(EGRESS_PREFIX)
    }

    fn interfaces_with(&self, prefix: &str) -> Vec<String> {
        let mut ifaces: Vec<String> = self
            .entries()
            .iter()
            .filter_map(|name| name.strip_prefix(prefix).map(|i| i.replace(':', ".")))
            .collect();
        ifaces.sort();
        ifaces
    }

    /// Every pin's file name.
    pub fn entries(&self) -> Vec<String> {
        std::fs::read_dir(&self.dir)
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether a program is pinned here (from an earlier `emis run`).
    pub fn exist(&self) -> bool {
        !self.entries().is_empty()
    }

    /// Creates the pin dir and checks that it is on bpffs, where pins outlive processes.
    pub fn prepare(&self) -> Result<(), Error> {
        std::fs::create_dir_all(&self.dir).what(|| {
            format!(
                "creating {} (is bpffs mounted? `mount -t bpf bpf /sys/fs/bpf`)",
                self.dir.display()
            )
        })?;
        let path = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::Refused(format!("{} has a NUL byte", self.dir.display())))?;
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statfs(path.as_ptr(), &mut fs) } != 0 {
            return Err(std::io::Error::last_os_error())
                .what(|| format!("statfs {}", self.dir.display()));
        }
        if fs.f_type as i64 != BPF_FS_MAGIC {
            return Err(Error::Refused(format!(
                "{} is not on bpffs, so nothing pinned there would outlive emis: mount one \
                 (`mount -t bpf bpf /sys/fs/bpf`) or pass a --pin-dir under /sys/fs/bpf",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Opens one pinned map by name.
    pub fn open_map(&self, name: &str) -> Result<Map, Error> {
        let path = self.map(name);
        let data = MapData::from_pin(&path).what(|| {
            format!(
                "opening pinned map {} (is an emis program pinned there? `emis status`)",
                path.display()
            )
        })?;
        Map::from_map_data(data).what(|| format!("reading pinned map {}", path.display()))
    }

    /// Pins through a temporary name and renames over `path`, so the pin is never missing.
    /// (bpffs refuses dots in names, hence the suffix.)
    pub fn replace(
        &self,
        path: &Path,
        pin: impl FnOnce(&Path) -> Result<(), aya::pin::PinError>,
    ) -> Result<(), Error> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push("-new");
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        pin(&tmp).what(|| format!("pinning {}", tmp.display()))?;
        std::fs::rename(&tmp, path).what(|| format!("renaming {} into place", tmp.display()))
    }
}

/// The pinned maps `emis stats`, `emis mode`, the metrics and the daemon read.
pub struct PinnedMaps {
    pub stats: PerCpuArray<MapData, Counter>,
    pub config: Array<MapData, Config>,
    pub flows: HashMap<MapData, FlowKey, FlowValue>,
    pub flow_events: PerCpuArray<MapData, u64>,
    pub new_flows: HashMap<MapData, FlowKey, FlowValue>,
    pub new_flow_capacity: u32,
    /// The flow table's max_entries, as the kernel has it.
    pub flow_capacity: u32,
    /// The drop-event counters; absent under pins of an emis without events.
    pub event_counts: Option<PerCpuArray<MapData, u64>>,
    /// The per-interface counters; absent under pins of an emis without them.
    pub iface_stats: Option<PerCpuArray<MapData, Counter>>,
}

impl PinnedMaps {
    pub fn open(pins: &Pins) -> Result<PinnedMaps, Error> {
        fn typed(name: &str) -> impl FnOnce(aya::maps::MapError) -> Error + '_ {
            move |source| Error::Map {
                what: format!("pinned map {name} has an unexpected type"),
                source,
            }
        }
        let flows_path = pins.map(MAP_FLOWS);
        let flows_data = MapData::from_pin(&flows_path)
            .what(|| format!("opening pinned map {}", flows_path.display()))?;
        let flow_capacity = flows_data
            .info()
            .what(|| format!("reading the size of {MAP_FLOWS}"))?
            .max_entries();
        let flows: HashMap<MapData, FlowKey, FlowValue> =
            HashMap::try_from(Map::from_map_data(flows_data).map_err(typed(MAP_FLOWS))?)
                .map_err(typed(MAP_FLOWS))?;
        let new_flows_data = MapData::from_pin(pins.map(MAP_FLOWS_NEW))
            .what(|| format!("opening pinned map {MAP_FLOWS_NEW}"))?;
        let new_flow_capacity = new_flows_data
            .info()
            .what(|| format!("reading the size of {MAP_FLOWS_NEW}"))?
            .max_entries();
        let new_flows: HashMap<MapData, FlowKey, FlowValue> =
            HashMap::try_from(Map::from_map_data(new_flows_data).map_err(typed(MAP_FLOWS_NEW))?)
                .map_err(typed(MAP_FLOWS_NEW))?;
        Ok(PinnedMaps {
            new_flows,
            new_flow_capacity,
            stats: PerCpuArray::try_from(pins.open_map(MAP_STATS)?).map_err(typed(MAP_STATS))?,
            config: Array::try_from(pins.open_map(MAP_CONFIG)?).map_err(typed(MAP_CONFIG))?,
            flows,
            flow_events: PerCpuArray::try_from(pins.open_map(MAP_FLOW_EVENTS)?)
                .map_err(typed(MAP_FLOW_EVENTS))?,
            flow_capacity,
            event_counts: pins
                .open_map(emis_common::MAP_EVENT_COUNTS)
                .ok()
                .and_then(|map| PerCpuArray::try_from(map).ok()),
            iface_stats: pins
                .open_map(emis_common::MAP_IFACE_STATS)
                .ok()
                .and_then(|map| PerCpuArray::try_from(map).ok()),
        })
    }

    /// Reopens the config map: a reload pins a new one.
    pub fn reopen_config(&mut self, pins: &Pins) -> Result<(), Error> {
        self.config = Array::try_from(pins.open_map(MAP_CONFIG)?)
            .what(|| format!("pinned map {MAP_CONFIG} has an unexpected type"))?;
        Ok(())
    }

    pub fn snapshot(&self) -> Result<Snapshot, Error> {
        Snapshot::from_map(&self.stats).what(|| format!("reading {MAP_STATS}"))
    }

    pub fn mode(&self) -> Result<Mode, Error> {
        Ok(mode_of(
            &self
                .config
                .get(&0, 0)
                .what(|| format!("reading {MAP_CONFIG}"))?,
        ))
    }

    pub fn set_mode(&mut self, mode: Mode) -> Result<(), Error> {
        crate::loader::set_mode::<_, aya::maps::MapError>(&mut self.config, mode)
            .what(|| format!("writing {MAP_CONFIG}"))
    }

    pub fn new_flow_stats(&self) -> Result<NewFlowStats, Error> {
        NewFlowStats::from_maps(&self.new_flows, &self.flow_events, self.new_flow_capacity)
            .what(|| "reading the new-flow table".into())
    }

    /// Turns drop events on or off in the config in force.
    pub fn set_events(&mut self, on: bool) -> Result<(), Error> {
        let mut value = self
            .config
            .get(&0, 0)
            .what(|| format!("reading {MAP_CONFIG}"))?;
        value.events = on as u32;
        if !on {
            // The kernel log's trace runs under the same flag; nobody reads it either.
            value.trace = 0;
        }
        self.config
            .set(0, value, 0)
            .what(|| format!("writing {MAP_CONFIG}"))
    }

    pub fn flow_stats(&self) -> Result<FlowTableStats, Error> {
        FlowTableStats::from_maps(&self.flows, &self.flow_events, self.flow_capacity)
            .what(|| "reading the flow table".into())
    }
}

/// Zeroes counter slots on every CPU (slots about to be reused by another rule).
pub fn zero_counters(
    stats: &mut PerCpuArray<MapData, Counter>,
    slots: impl IntoIterator<Item = u32>,
) -> Result<(), Error> {
    let cpus = aya::util::nr_cpus()
        .map_err(|(_, e)| e)
        .what(|| "counting CPUs".into())?;
    for slot in slots {
        if slot >= STATS_LEN {
            continue;
        }
        let zeros = PerCpuValues::try_from(vec![Counter::default(); cpus])
            .what(|| "building zero counters".into())?;
        stats
            .set(slot, zeros, 0)
            .what(|| format!("zeroing counter slot {slot}"))?;
    }
    Ok(())
}
