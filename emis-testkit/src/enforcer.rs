//! The enforcer loaded with one policy through emis's own loader and run on frames with
//! BPF_PROG_TEST_RUN, without attaching it: what the kernel tests and the benchmark use
//! to get real verdicts, counters and timings.

use anyhow::{Context as _, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use emis_common::{
    iface_index, Config, Counter, FlowKey, FlowValue, IfaceAction, Link, MAP_CONFIG, MAP_FLOWS,
    MAP_FLOWS_NEW, MAP_FLOW_EVENTS, MAP_IFACE_STATS, MAP_STATS, PROGRAM_NAME, PROGRAM_NAME_L3,
};

use emis_policy::{
    compile::compile,
    policy::{Mode, Policy},
};

use emis::{
    flows::FlowTableStats,
    loader::{self, LoadOptions},
    stats::{sum_cpus, Snapshot},
};

use crate::testrun::{self, RunResult};

/// The verifier's and the JIT's view of one loaded program.
#[derive(Clone, Debug)]
pub struct ProgramStats {
    pub program: String,
    /// Instructions the verifier processed, out of its budget of 1,000,000.
    pub verified_insns: u32,
    /// Instructions after the verifier's rewrites.
    pub xlated_insns: u32,
    pub jited_bytes: u32,
}

/// The verifier's limit on processed instructions per program.
pub const VERIFIER_BUDGET: u32 = 1_000_000;

impl ProgramStats {
    fn of(name: &str, program: &Xdp) -> Result<ProgramStats> {
        let info = program
            .info()
            .with_context(|| format!("reading the kernel's info on {name}"))?;
        Ok(ProgramStats {
            program: name.to_string(),
            verified_insns: info
                .verified_instruction_count()
                .context("the kernel does not report verified instructions (needs 5.16+)")?,
            xlated_insns: info.size_translated().unwrap_or(0) / 8,
            jited_bytes: info.size_jitted(),
        })
    }
}

/// The kernel program loaded with one policy, not attached anywhere.
pub struct TestProgram {
    ebpf: Ebpf,
    options: LoadOptions,
    hostnames: emis_policy::hostnames::HostnameGroups,
}

impl TestProgram {
    pub fn load(policy: &Policy, mode: Mode) -> Result<TestProgram> {
        Self::load_with(
            policy,
            LoadOptions {
                mode,
                ..LoadOptions::default()
            },
        )
    }

    pub fn load_with(policy: &Policy, options: LoadOptions) -> Result<TestProgram> {
        let compiled = compile(policy)?;
        Ok(TestProgram {
            ebpf: loader::load(&compiled, options)?,
            options,
            hostnames: compiled.hostnames,
        })
    }

    /// Writes `addr` into the learned map as the daemon would once DNS answers taught it
    /// `names`; no rule naming any of them removes it.
    pub fn learn(&mut self, names: &[&str], addr: std::net::IpAddr) -> Result<()> {
        let value = emis::learned::value_for(&self.hostnames, names.iter().copied());
        // The filter's bit first, as the daemon sets it (a stale bit costs only a lookup).
        let filter = self
            .ebpf
            .map_mut(emis_common::MAP_LEARNED_FILTER)
            .context("no learned filter map")?;
        emis::learned::set_filter_bit(filter, addr)
            .with_context(|| format!("setting {addr}'s learned filter bit"))?;
        let name = emis::learned::map_name(addr);
        let map = self
            .ebpf
            .map_mut(name)
            .with_context(|| format!("no map {name}"))?;
        emis::learned::write(map, addr, value.as_ref().map(|(v, _)| v))
            .with_context(|| format!("writing {addr} into {name}"))
    }

    /// Switches the DNS hand-off on or off, as the daemon does while it learns.
    pub fn set_dns_handoff(&mut self, on: bool) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(emis_common::MAP_DNS_CONFIG)
            .context("no DNS config map")?;
        let mut config: Array<&mut MapData, emis_common::DnsConfig> = Array::try_from(map)?;
        let value = emis_common::DnsConfig {
            enabled: on as u32,
            rate: emis_common::DEFAULT_DNS_RATE,
        };
        config.set(0, value, 0).context("writing the DNS config")
    }

    /// Takes every DNS message the program handed over since the last call.
    pub fn dns_messages(&mut self) -> Result<Vec<emis_common::DnsMessage>> {
        let map = self
            .ebpf
            .map_mut(emis_common::MAP_DNS)
            .context("no DNS ring buffer")?;
        let mut ring = aya::maps::RingBuf::try_from(map)?;
        let mut messages = Vec::new();
        while let Some(item) = ring.next() {
            anyhow::ensure!(
                item.len() >= emis_common::DNS_MESSAGE_SIZE,
                "a short ring item"
            );
            // The ring buffer gives no alignment promise.
            messages.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
        }
        Ok(messages)
    }

    /// Runs the program `repeat` times on `frame`.
    pub fn run_repeat(&mut self, frame: &[u8], repeat: u32) -> Result<RunResult> {
        testrun::run_repeat(loader::program_mut(&mut self.ebpf)?, frame, repeat)
    }

    pub fn run(&mut self, frame: &[u8]) -> Result<u32> {
        Ok(self.run_repeat(frame, 1)?.action)
    }

    /// Runs the program for `link` once on `frame`: `emis` for Ethernet, `emis_l3` (loaded
    /// on first use, sharing every map with `emis`) for devices without a link header.
    pub fn run_link(&mut self, link: Link, frame: &[u8]) -> Result<u32> {
        match link {
            Link::Ethernet => self.run(frame),
            Link::Ip => Ok(testrun::run_repeat(self.program_l3()?, frame, 1)?.action),
        }
    }

    /// The loaded `emis` program, to attach it.
    pub fn program_mut(&mut self) -> Result<&mut Xdp> {
        Ok(loader::program_mut(&mut self.ebpf)?)
    }

    /// The `emis_l3` program of the same object, loaded on first use.
    pub fn program_l3(&mut self) -> Result<&mut Xdp> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM_NAME_L3)
            .context("the emis object has no emis_l3 program")?
            .try_into()?;
        if program.fd().is_err() {
            program
                .load()
                .context("the kernel verifier rejected emis_l3")?;
        }
        Ok(program)
    }

    /// The TC egress program for `link` (`emis_egress`, `emis_egress_l3`), loaded on first
    /// use and sharing every map with the XDP programs.
    pub fn program_egress(&mut self, link: Link) -> Result<&mut SchedClassifier> {
        Ok(loader::program_egress_mut(&mut self.ebpf, link)?)
    }

    /// Runs the Ethernet egress program `repeat` times on `frame`, as if it left an
    /// interface; returns what it returned (TCX_NEXT, -1, always) and the mean time.
    pub fn run_egress_repeat(&mut self, frame: &[u8], repeat: u32) -> Result<RunResult> {
        let result = self
            .program_egress(Link::Ethernet)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..TestRunOptions::new()
            })
            .with_context(|| {
                format!(
                    "BPF_PROG_TEST_RUN of emis_egress on a {}-byte frame",
                    frame.len()
                )
            })?;
        Ok(RunResult {
            action: result.return_value,
            ns_per_run: result.duration.as_nanos() as u64,
        })
    }

    /// Runs the Ethernet egress program once on `frame`.
    pub fn run_egress(&mut self, frame: &[u8]) -> Result<u32> {
        Ok(self.run_egress_repeat(frame, 1)?.action)
    }

    /// The flow under `key` and whether it is in the established table (else the new one).
    pub fn flow(&mut self, key: &FlowKey) -> Result<Option<(FlowValue, bool)>> {
        for (name, established) in [(MAP_FLOWS, true), (MAP_FLOWS_NEW, false)] {
            let table: HashMap<&MapData, FlowKey, FlowValue> =
                HashMap::try_from(self.ebpf.map(name).context("no flow map")?)?;
            if let Ok(value) = table.get(key, 0) {
                return Ok(Some((value, established)));
            }
        }
        Ok(None)
    }

    /// One flow-event slot (`FLOW_EVENT_*`), summed over CPUs.
    pub fn flow_event(&mut self, slot: u32) -> Result<u64> {
        let events: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(MAP_FLOW_EVENTS)
                .context("no flow event map")?,
        )?;
        Ok(events.get(&slot, 0)?.iter().sum())
    }

    pub fn stats_map(&mut self) -> Result<PerCpuArray<&mut MapData, Counter>> {
        Ok(PerCpuArray::try_from(
            self.ebpf.map_mut(MAP_STATS).context("no stats map")?,
        )?)
    }

    /// Every counter, summed over CPUs.
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        Snapshot::read(&self.stats_map()?)
    }

    /// One counter slot, summed over CPUs.
    pub fn counter(&mut self, index: u32) -> Result<Counter> {
        let map = self.stats_map()?;
        Ok(sum_cpus(&map.get(&index, 0)?))
    }

    /// The per-interface counter of `ifindex` (or of the overflow slot it falls in) and
    /// `action`, summed over CPUs.
    pub fn iface_counter(&mut self, ifindex: u32, action: IfaceAction) -> Result<Counter> {
        let map: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(
            self.ebpf
                .map(MAP_IFACE_STATS)
                .context("no per-interface counter map")?,
        )?;
        Ok(sum_cpus(&map.get(&iface_index(ifindex, action), 0)?))
    }

    /// The kernel log's reader (load with `LoadOptions::trace` for the program to write
    /// to it); `flush` hands what arrived to `logger`.
    pub fn kernel_log<T: log::Log>(&mut self, logger: T) -> Result<aya_log::EbpfLogger<T>> {
        Ok(aya_log::EbpfLogger::init_with_logger(
            &mut self.ebpf,
            logger,
        )?)
    }

    /// The flow table's fill and events.
    pub fn flow_stats(&mut self) -> Result<FlowTableStats> {
        let flows: HashMap<&MapData, FlowKey, FlowValue> =
            HashMap::try_from(self.ebpf.map(MAP_FLOWS).context("no flow map")?)?;
        let events: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(MAP_FLOW_EVENTS)
                .context("no flow event map")?,
        )?;
        FlowTableStats::read(&flows, &events, self.options.flow_table_size)
    }

    /// What the kernel reports of the loaded `emis` and `emis_l3` programs: the
    /// instructions its verifier processed (the log's "processed N insns") and the size
    /// of the JIT-compiled code.
    pub fn program_stats(&mut self) -> Result<Vec<ProgramStats>> {
        let l3 = ProgramStats::of(PROGRAM_NAME_L3, self.program_l3()?)?;
        let main = ProgramStats::of(PROGRAM_NAME, self.program_mut()?)?;
        Ok(vec![main, l3])
    }

    pub fn set_mode(&mut self, mode: Mode) -> Result<()> {
        let mut config: Array<&mut MapData, Config> =
            Array::try_from(self.ebpf.map_mut(MAP_CONFIG).context("no config map")?)?;
        loader::set_mode(&mut config, mode)
    }
}
