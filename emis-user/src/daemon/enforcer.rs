//! Installing a policy: at start (fresh, or adopting what an earlier `emis run` left
//! pinned) and on every reload. Each install loads a new program that shares the pinned
//! counters and flow table, fills its own policy maps and config, then swaps it in behind
//! the existing links in one `bpf_link_update` per interface: each packet is decided
//! wholly by the old program or wholly by the new one, and counted once.

use std::time::{Duration, Instant};

use aya::{
    maps::{Array, HashMap, PerCpuArray},
    Ebpf,
};
use emis_common::{
    Config, Counter, FlowKey, FlowValue, Link, MAP_CONFIG, MAP_FLOWS, MAP_FLOWS_NEW, MAP_STATS,
    STATS_LEN,
};
use emis_policy::{
    compile::compile_with_slots,
    policy::{Mode, Policy},
    spec::load_policy,
};
use serde::Serialize;

use super::{
    config::{policy_inputs, restart_keys_changed, DnsSettings, EventSettings, RunSettings},
    diff::PolicyDiff,
    egress,
    error::What as _,
    links::{self, AttachMode, Installed},
    lock::ModeLock,
    pins::{self, Pins},
    state::{now, LastReload, State},
    Error,
};
use crate::{
    loader::{self, LoadOptions},
    stats::Labels,
};

/// The daemon's hold on the installed program.
pub struct Enforcer {
    pub settings: RunSettings,
    pub pins: Pins,
    pub policy: Policy,
    pub state: State,
    pub installed: Vec<Installed>,
    /// Interfaces the TC egress program runs on (stateful replies behind NAT).
    pub egress: Vec<String>,
    /// Interfaces an earlier run attached that are no longer listed (detached at start).
    pub dropped: Vec<String>,
    /// The compiled rules' hostname groups (with their counter slots), for learning.
    pub hostnames: emis_policy::hostnames::HostnameGroups,
    /// Kept open so the program lives while the daemon runs; the pins keep it after.
    _ebpf: Ebpf,
}

/// What a successful reload did.
#[derive(Clone, Debug, Serialize)]
pub struct ReloadReport {
    pub diff: PolicyDiff,
    pub spec_sha256: String,
    /// From the first link update to the last: the only time two programs run side by side.
    pub swap_us: u64,
    /// Reading, checking, compiling, loading and swapping.
    pub total_ms: u64,
    /// The drop-event settings, if the reload changed them: "rate 1000/s, sampling off".
    pub events_changed: Option<String>,
    /// The DNS learning settings, if the reload changed them.
    pub dns_changed: Option<String>,
    /// Config-file keys whose change waits for a restart of `emis run`.
    pub restart_keys_changed: Vec<String>,
}

impl ReloadReport {
    pub fn summary(&self) -> String {
        let mut summary = format!(
            "reloaded: policy sha256 {}; swap took {:.2} ms (reload {} ms)\n{}",
            &self.spec_sha256[..self.spec_sha256.len().min(16)],
            self.swap_us as f64 / 1000.0,
            self.total_ms,
            self.diff.summary()
        );
        if let Some(events) = &self.events_changed {
            summary.push_str(&format!("\ndrop events now: {events}"));
        }
        if let Some(dns) = &self.dns_changed {
            summary.push_str(&format!("\nDNS learning now: {dns}"));
        }
        if !self.restart_keys_changed.is_empty() {
            summary.push_str(&format!(
                "\nnot applied: {} changed in the config file and takes effect when emis run restarts",
                self.restart_keys_changed.join(", ")
            ));
        }
        summary
    }
}

/// Reads and checks the policy the settings name.
pub fn read_policy(settings: &RunSettings) -> Result<Policy, Error> {
    let (spec, site) = policy_inputs(&settings.sources)?;
    Ok(load_policy(&spec, &site)?)
}

struct Install {
    ebpf: Ebpf,
    hostnames: emis_policy::hostnames::HostnameGroups,
    state: State,
    installed: Vec<Installed>,
    egress: Vec<String>,
    swap: Duration,
}

impl Enforcer {
    /// Installs `policy`, adopting the pins of an earlier run if there are any; detaches
    /// interfaces that run listed and this one does not. The caller has checked the
    /// interfaces, bound the metrics listener and taken the state lock.
    pub fn start(settings: RunSettings, policy: Policy, since: u64) -> Result<Enforcer, Error> {
        let pins = Pins::new(&settings.pin_dir);
        let adopting = pins.exist();
        let previous = State::find(&settings.state_dir).filter(|s| {
            let same = s.pin_dir == settings.pin_dir;
            if !same && adopting {
                tracing::warn!(
                    recorded = %s.pin_dir.display(),
                    "the state file describes other pins; counters here restart"
                );
            }
            same && adopting
        });
        let install = match install(&pins, &settings, &policy, previous.as_ref(), false, since) {
            Ok(install) => install,
            Err(e) => {
                if !adopting {
                    // A fresh start that failed leaves nothing behind.
                    remove_pins(&pins);
                }
                return Err(e);
            }
        };
        let dropped = links::detach_except(&pins, &settings.interfaces)?;
        let Install {
            ebpf,
            hostnames,
            state,
            installed,
            egress,
            swap: _,
        } = install;
        state.write(&settings.state_dir)?;
        Ok(Enforcer {
            settings,
            pins,
            policy,
            state,
            installed,
            egress,
            dropped,
            hostnames,
            _ebpf: ebpf,
        })
    }

    /// Re-reads the policy files and swaps the new policy in. On error nothing changes.
    pub fn reload(&mut self) -> Result<ReloadReport, Error> {
        let started = Instant::now();
        let result = EventSettings::reread(&self.settings.sources)
            .map_err(Error::from)
            .and_then(|events| {
                let dns = DnsSettings::reread(&self.settings.sources)?;
                let policy = read_policy(&self.settings)?;
                let settings = RunSettings {
                    event_rate: events.event_rate,
                    sample_allowed: events.sample_allowed,
                    dns_expiry: dns.expiry,
                    dns_rate: dns.rate,
                    ..self.settings.clone()
                };
                let install = install(
                    &self.pins,
                    &settings,
                    &policy,
                    Some(&self.state),
                    true,
                    self.state.since,
                )?;
                Ok((policy, install, settings))
            });
        let (policy, install, settings) = match result {
            Ok(done) => done,
            Err(e) => {
                self.state.last_reload = Some(LastReload {
                    at: now(),
                    ok: false,
                    message: e.to_string(),
                });
                let _ = self.state.write(&self.settings.state_dir);
                return Err(e);
            }
        };
        let report = ReloadReport {
            diff: PolicyDiff::between(&self.policy, &policy),
            spec_sha256: policy.sha256.clone(),
            swap_us: install.swap.as_micros() as u64,
            total_ms: started.elapsed().as_millis() as u64,
            events_changed: (settings.events() != self.settings.events()).then(|| {
                let events = settings.events();
                format!(
                    "rate {}/s a CPU, allowed sampling {}",
                    events.event_rate,
                    events.sampling()
                )
            }),
            dns_changed: (settings.dns() != self.settings.dns()).then(|| settings.dns().describe()),
            restart_keys_changed: restart_keys_changed(&settings)
                .into_iter()
                .map(String::from)
                .collect(),
        };
        self.settings = settings;
        self._ebpf = install.ebpf;
        self.hostnames = install.hostnames;
        self.installed = install.installed;
        self.egress = install.egress;
        self.policy = policy;
        self.state = install.state;
        self.state.last_reload = Some(LastReload {
            at: now(),
            ok: true,
            message: report.summary(),
        });
        self.state.write(&self.settings.state_dir)?;
        Ok(report)
    }

    pub fn labels(&self) -> &Labels {
        &self.state.labels
    }
}

/// Loads, fills and swaps in one program for `policy`.
fn install(
    pins: &Pins,
    settings: &RunSettings,
    policy: &Policy,
    previous: Option<&State>,
    carry_mode: bool,
    since: u64,
) -> Result<Install, Error> {
    let slugs: Vec<&str> = policy.rules.iter().map(|r| r.slug.as_str()).collect();
    let assignment = previous
        .map(|s| s.slots.clone())
        .unwrap_or_default()
        .assign(&slugs)?;
    // Which program each interface takes, asked again here since a reload may follow a
    // change of the interfaces themselves.
    let link_types = links::check_interfaces(&settings.interfaces, settings.netns.as_deref())?;
    let (ethernet, ip_only): (Vec<String>, Vec<String>) = settings
        .interfaces
        .iter()
        .cloned()
        .partition(|iface| link_types.get(iface) != Some(&Link::Ip));
    pins.prepare()?;
    let shared_existed = pins.map(MAP_STATS).exists();
    // Compiled once the loader is set up, so a million prefixes never sit beside the
    // kernel BTF it parses (the daemon's peak memory, docs/BENCHMARKS.md).
    let (mut ebpf, compiled) = loader::load_compiling(
        || compile_with_slots(policy, &assignment.of_rule).map_err(Error::from),
        LoadOptions {
            mode: settings.mode,
            replies: settings.replies,
            flow_table_size: settings.flow_table_size,
            // The daemon reads the events while it runs; see docs/DECISIONS.md.
            events: true,
            event_rate: settings.event_rate,
            sample_allowed: settings.sample_allowed,
            trace: settings.kernel_log.map(|filter| {
                let bare_ip = super::events::interface_names(&ip_only, settings.netns.as_deref());
                filter.to_kernel(bare_ip.into_keys())
            }),
        },
        Some(pins.dir()),
    )?;
    let flow_table_size = pinned_flow_capacity(pins, settings.flow_table_size)?;
    if shared_existed && previous.is_none() {
        // Counters and flows whose rules nobody recorded: start them again.
        tracing::warn!("pins without a state file: counters and flows start again");
        zero_counters(pins, 0..STATS_LEN)?;
        delete_flows(pins, |_| true)?;
    } else {
        zero_counters(pins, assignment.to_zero.iter().copied())?;
    }

    // From reading the mode in force to pinning the new config, `emis mode` waits.
    let mode_lock = ModeLock::take(&settings.state_dir)?;
    let mode = match carry_mode {
        true => current_mode(pins).unwrap_or(settings.mode),
        false => settings.mode,
    };
    set_program_mode(&mut ebpf, mode)?;
    let modes_before = previous.map(|s| s.attach_modes.clone()).unwrap_or_default();
    // The egress program first: if it cannot attach, no XDP link has changed yet. It
    // decides no packet, so it stays out of the timed swap (its verification would not).
    let egress_on = install_egress(pins, settings, &mut ebpf, &link_types)?;
    let swap_started = Instant::now();
    let mut installed = links::install(
        loader::program_mut(&mut ebpf)?,
        pins,
        &ethernet,
        settings.xdp_mode,
        settings.netns.as_deref(),
        &modes_before,
    )?;
    if !ip_only.is_empty() {
        // Devices without a link header have no native XDP: generic (skb) mode, where the
        // frame starts at the IP header.
        installed.extend(links::install(
            loader::program_l3_mut(&mut ebpf)?,
            pins,
            &ip_only,
            AttachMode::Skb,
            settings.netns.as_deref(),
            &modes_before,
        )?);
    }
    let swap = swap_started.elapsed();
    egress::detach_except(pins, &egress_on)?;
    pin_program_and_config(pins, &mut ebpf)?;
    drop(mode_lock);

    if !assignment.removed.is_empty() {
        // Replies of flows whose rule is gone are judged afresh by the new policy.
        delete_flows(pins, |flow| assignment.removed.contains(&flow.rule))?;
    }
    let state = State {
        pid: std::process::id(),
        since,
        pin_dir: settings.pin_dir.clone(),
        netns: settings.netns.clone(),
        interfaces: settings.interfaces.clone(),
        attach_modes: installed
            .iter()
            .map(|i| (i.iface.clone(), i.mode.clone()))
            .collect(),
        spec_sha256: policy.sha256.clone(),
        loaded_at: now(),
        labels: Labels::with_slots(policy, &assignment.of_rule),
        replies: settings.replies,
        flow_table_size,
        slots: assignment.slots,
        sources: settings.sources.clone(),
        last_reload: previous.and_then(|s| s.last_reload.clone()),
    };
    Ok(Install {
        hostnames: compiled.hostnames.clone(),
        ebpf,
        state,
        installed,
        egress: egress_on,
        swap,
    })
}

/// Attaches or swaps the TC egress program on every interface when replies are stateful
/// and the kernel has tcx; returns the interfaces it runs on.
fn install_egress(
    pins: &Pins,
    settings: &RunSettings,
    ebpf: &mut Ebpf,
    link_types: &std::collections::BTreeMap<String, Link>,
) -> Result<Vec<String>, Error> {
    if settings.replies != emis_policy::policy::Replies::Stateful {
        return Ok(Vec::new());
    }
    if !egress::tcx_supported() {
        tracing::warn!(
            "this kernel has no tcx (Linux 6.6+), so the egress program is not attached: \
             stateful replies behind source NAT and of flows the router opens are denied; \
             use --replies stateless on such a router"
        );
        return Ok(Vec::new());
    }
    egress::install(ebpf, pins, link_types, settings.netns.as_deref())
}

/// The pinned flow table's size: a reused table keeps the size it was made with.
fn pinned_flow_capacity(pins: &Pins, asked: u32) -> Result<u32, Error> {
    let size = match pins.open_map(MAP_FLOWS)? {
        aya::maps::Map::LruHashMap(data) | aya::maps::Map::HashMap(data) => data
            .info()
            .what(|| format!("reading the size of {MAP_FLOWS}"))?
            .max_entries(),
        _ => asked,
    };
    if size != asked {
        tracing::warn!(
            pinned = size,
            asked,
            "the pinned flow table keeps its size (its flows are kept); `emis detach` and start again to resize it"
        );
    }
    Ok(size)
}

fn zero_counters(pins: &Pins, slots: impl IntoIterator<Item = u32>) -> Result<(), Error> {
    let mut stats: PerCpuArray<_, Counter> = PerCpuArray::try_from(pins.open_map(MAP_STATS)?)
        .what(|| format!("pinned map {MAP_STATS} has an unexpected type"))?;
    pins::zero_counters(&mut stats, slots)
}

/// Writes the mode into a loaded program's own config map (before it is swapped in).
fn set_program_mode(ebpf: &mut Ebpf, mode: Mode) -> Result<(), Error> {
    let mut config: Array<_, Config> = Array::try_from(loader::map_mut(ebpf, MAP_CONFIG)?)
        .what(|| format!("opening {MAP_CONFIG}"))?;
    loader::set_mode::<_, aya::maps::MapError>(&mut config, mode)
        .what(|| format!("writing {MAP_CONFIG}"))
}

/// Pins the program now behind the links and its config map over the previous ones.
fn pin_program_and_config(pins: &Pins, ebpf: &mut Ebpf) -> Result<(), Error> {
    let program = loader::program_mut(ebpf)?;
    pins.replace(&pins.program(), |path| program.pin(path))?;
    let config = ebpf
        .map(MAP_CONFIG)
        .ok_or_else(|| Error::Refused(format!("the kernel object has no map {MAP_CONFIG}")))?;
    pins.replace(&pins.map(MAP_CONFIG), |path| config.pin(path))
}

fn current_mode(pins: &Pins) -> Option<Mode> {
    let config: Array<_, Config> = Array::try_from(pins.open_map(MAP_CONFIG).ok()?).ok()?;
    Some(crate::stats::mode_of(&config.get(&0, 0).ok()?))
}

/// Deletes the tracked flows `doomed` picks.
fn delete_flows(pins: &Pins, doomed: impl Fn(&FlowValue) -> bool) -> Result<usize, Error> {
    let mut deleted = 0;
    // Both tables: a half-open flow of a removed rule must not be promoted afterwards.
    for table in [MAP_FLOWS, MAP_FLOWS_NEW] {
        let mut flows: HashMap<_, FlowKey, FlowValue> = HashMap::try_from(pins.open_map(table)?)
            .what(|| format!("pinned map {table} has an unexpected type"))?;
        let keys: Vec<FlowKey> = flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, value)| doomed(value))
            .map(|(key, _)| key)
            .collect();
        for key in &keys {
            // A flow the LRU evicted meanwhile is already gone.
            let _ = flows.remove(key);
        }
        deleted += keys.len();
    }
    Ok(deleted)
}

/// Removes every pin (which detaches pinned links) and the pin dir if it is then empty.
pub fn remove_pins(pins: &Pins) -> Vec<String> {
    let mut removed = Vec::new();
    for name in pins.entries() {
        if std::fs::remove_file(pins.dir().join(&name)).is_ok() {
            removed.push(name);
        }
    }
    // Only succeeds when empty, so a shared directory is left alone.
    let _ = std::fs::remove_dir(pins.dir());
    removed
}
