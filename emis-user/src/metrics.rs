//! The Prometheus endpoint: each scrape reads the kernel counters and encodes them
//! with prometheus-client, so the numbers are never staler than the scrape.
//!
//! - [`exposition`]: the classic text format or OpenMetrics, as the client asks.
//! - [`endpoint`]: the HTTP listener.
//! - [`events`]: the drop-event counters.
//! - [`interfaces`]: packets and bytes by interface and action.
//! - [`program`]: build info and the program's run-time statistics (`--bpf-stats`).
//!
//! Every denial series (action, reason, network) is exported from the start, at zero
//! until it counts: a series that appears only with its first packets hides that first
//! increase from `rate()` and `increase()`, and with it a service's first denials.

pub mod endpoint;
pub mod events;
pub mod exposition;
pub mod interfaces;
pub mod learned;
pub mod program;

use std::sync::{Arc, Mutex};

use emis_common::{deny_index, Action, DenyReason, MAX_NETWORKS};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Unit,
};

pub use endpoint::{bind, serve, MetricsError};
pub use exposition::{render, Format};

use crate::{
    daemon::pins::PinnedMaps,
    flows::{FlowTableStats, NewFlowStats},
    stats::{DenyRow, Labels, Report, RuleRow, Snapshot},
};
use emis_policy::policy::Mode;
use program::{build_info, Cost, ProgramCost};

/// What the metrics export besides the counters, from `emis run`'s flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsOptions {
    /// Turn on the kernel's BPF run-time statistics and export the program's cost.
    pub bpf_stats: bool,
}

/// What the collector reads at scrape time; the daemon swaps labels and the config map
/// in it after a reload.
pub struct EnforcerView {
    pub maps: PinnedMaps,
    pub labels: Labels,
    pub spec_sha256: String,
    /// When the policy in force was installed, unix seconds.
    pub loaded_at: u64,
    pub reloads: Reloads,
    /// What the event fan-out counts (clients, events slow clients lost).
    pub event_fanout: Arc<crate::daemon::events::FanoutStats>,
    /// The per-interface counter slots exported, and their `iface` labels.
    pub interface_slots: Vec<(u32, String)>,
}

/// Reloads since the daemon started, by outcome, and the last one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reloads {
    pub ok: u64,
    pub refused: u64,
    /// When the last reload was tried (unix seconds) and whether it succeeded; `None`
    /// before the first, when the start's load counts as the last, successful one.
    pub last: Option<(u64, bool)>,
}

impl Reloads {
    /// Counts one reload tried at `at`.
    pub fn record(&mut self, at: u64, ok: bool) {
        if ok {
            self.ok += 1;
        } else {
            self.refused += 1;
        }
        self.last = Some((at, ok));
    }
}

/// Reads the maps of one running enforcer at scrape time.
pub struct EnforcerCollector {
    pub view: Arc<Mutex<EnforcerView>>,
    /// Read when `--bpf-stats` is on.
    pub cost: Option<ProgramCost>,
}

impl std::fmt::Debug for EnforcerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnforcerCollector").finish_non_exhaustive()
    }
}

/// One scrape's numbers, read under the lock and encoded after it.
struct Scrape {
    report: Report,
    denied: Vec<DenyRow>,
    mode: Option<Mode>,
    flows: Option<FlowTableStats>,
    new_flows: Option<NewFlowStats>,
    spec_sha256: String,
    loaded_at: u64,
    reloads: Reloads,
    cost: Option<Cost>,
    events: Option<events::EventCounts>,
    interfaces: Vec<interfaces::Row>,
}

/// A metric's labels, values not yet escaped.
type LabelSet = Vec<(&'static str, String)>;

/// `labels` with every value escaped for the text formats.
fn escaped(labels: LabelSet) -> LabelSet {
    labels
        .into_iter()
        .map(|(key, value)| (key, exposition::escape_label_value(&value)))
        .collect()
}

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (LabelSet, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(value).encode(family.encode_family(&escaped(labels))?)?;
    }
    Ok(())
}

/// A gauge whose labels carry the information and whose value is 1.
fn info_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    labels: LabelSet,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(1i64).encode(family.encode_family(&escaped(labels))?)
}

fn rule_labels(r: &RuleRow) -> LabelSet {
    vec![
        ("rule", r.rule.clone()),
        ("direction", r.direction.clone()),
        ("path", r.path.to_string()),
    ]
}

fn deny_labels(d: &DenyRow) -> LabelSet {
    vec![
        ("reason", d.reason.to_string()),
        ("network", d.network.clone()),
        ("action", d.action.to_string()),
    ]
}

fn encode_rules(encoder: &mut DescriptorEncoder, report: &Report) -> Result<(), std::fmt::Error> {
    counter_family(
        encoder,
        "emis_rule_packets",
        "Packets allowed by each rule, forward or as a reply",
        report.rules.iter().map(|r| (rule_labels(r), r.packets)),
    )?;
    counter_family(
        encoder,
        "emis_rule_bytes",
        "Bytes allowed by each rule, forward or as a reply",
        report.rules.iter().map(|r| (rule_labels(r), r.bytes)),
    )
}

/// Every (action, reason, network) slot of the counter array, zero or not.
fn every_denial(snapshot: &Snapshot, labels: &Labels) -> Vec<DenyRow> {
    let networks = MAX_NETWORKS.min(labels.networks.len() as u32);
    let mut rows = Vec::new();
    for action in Action::ALL {
        for reason in DenyReason::ALL {
            for network in 0..networks {
                let c = snapshot.at(deny_index(action, reason, network));
                rows.push(DenyRow {
                    reason: reason.name(),
                    network: labels.networks[network as usize].clone(),
                    action: action.name(),
                    packets: c.packets,
                    bytes: c.bytes,
                });
            }
        }
    }
    rows
}

fn encode_denied(
    encoder: &mut DescriptorEncoder,
    denied: &[DenyRow],
) -> Result<(), std::fmt::Error> {
    counter_family(
        encoder,
        "emis_denied_packets",
        "In-scope packets denied, by reason and EMIS network; action=audit were passed in audit mode",
        denied.iter().map(|d| (deny_labels(d), d.packets)),
    )?;
    counter_family(
        encoder,
        "emis_denied_bytes",
        "In-scope bytes denied, by reason and EMIS network; action=audit were passed in audit mode",
        denied.iter().map(|d| (deny_labels(d), d.bytes)),
    )
}

fn encode_passed(encoder: &mut DescriptorEncoder, report: &Report) -> Result<(), std::fmt::Error> {
    let reason = |p: &crate::stats::PassRow| vec![("reason", p.reason.to_string())];
    counter_family(
        encoder,
        "emis_passed_packets",
        "Packets passed without a rule: non-IP, out of scope, or unreadable addresses",
        report.passed.iter().map(|p| (reason(p), p.packets)),
    )?;
    counter_family(
        encoder,
        "emis_passed_bytes",
        "Bytes passed without a rule: non-IP, out of scope, or unreadable addresses",
        report.passed.iter().map(|p| (reason(p), p.bytes)),
    )
}

fn encode_flows(
    encoder: &mut DescriptorEncoder,
    flows: &FlowTableStats,
) -> Result<(), std::fmt::Error> {
    for (name, help, value) in [
        (
            "emis_flow_table_entries",
            "Entries in the flow table",
            flows.entries,
        ),
        (
            "emis_flow_table_capacity",
            "Entries the flow table holds (--flow-table-size)",
            flows.capacity as u64,
        ),
    ] {
        let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(value as i64).encode(metric)?;
    }
    for (name, help, value) in [
        (
            "emis_flows_created",
            "Flows a rule allowed that entered the flow table",
            flows.created,
        ),
        (
            "emis_flow_insert_failures",
            "Flows the kernel could not insert into the flow table",
            flows.insert_failures,
        ),
        (
            "emis_flows_expired",
            "Expired flows removed when a packet met them",
            flows.expired,
        ),
        (
            "emis_flows_evicted",
            "Flows evicted to make room (the table was full)",
            flows.evicted,
        ),
    ] {
        let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(value).encode(metric)?;
    }
    Ok(())
}

/// The table of new and half-open flows (a SYN flood fills this one, never the established
/// table) and what the TCP window checks did.
fn encode_new_flows(
    encoder: &mut DescriptorEncoder,
    flows: &NewFlowStats,
) -> Result<(), std::fmt::Error> {
    for (name, help, value) in [
        (
            "emis_new_flow_table_entries",
            "Entries in the table of new and half-open flows",
            flows.entries,
        ),
        (
            "emis_new_flow_table_capacity",
            "Entries the new-flow table holds (a quarter of --flow-table-size)",
            flows.capacity as u64,
        ),
    ] {
        let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(value as i64).encode(metric)?;
    }
    for (name, help, value) in [
        (
            "emis_new_flows_created",
            "New flows a rule allowed that entered the new-flow table",
            flows.created,
        ),
        (
            "emis_new_flow_insert_failures",
            "New flows the kernel could not insert",
            flows.insert_failures,
        ),
        (
            "emis_new_flows_expired",
            "Expired new flows removed when a packet met them",
            flows.expired,
        ),
        (
            "emis_new_flows_evicted",
            "New flows pushed out by other new flows (the new-flow table was full)",
            flows.evicted,
        ),
        (
            "emis_flows_promoted",
            "Flows that saw traffic both ways and moved to the established table",
            flows.promoted,
        ),
        (
            "emis_flows_untracked",
            "Allowed flows given no entry because both ends are out of enforce scope",
            flows.untracked,
        ),
        (
            "emis_tcp_fins_ignored",
            "TCP FINs outside the flow's window, which changed nothing",
            flows.tcp_fins_ignored,
        ),
        (
            "emis_egress_flows_created",
            "New flows the egress program recorded under the tuple they left with (after source NAT, or opened by the router)",
            flows.egress_created,
        ),
    ] {
        let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(value).encode(metric)?;
    }
    let mut metric = encoder.encode_descriptor(
        "emis_tcp_resets",
        "TCP RSTs of tracked flows: honoured (inside the window, the flow closes) or ignored",
        None,
        MetricType::Counter,
    )?;
    for (result, value) in [
        ("honoured", flows.tcp_resets_honoured),
        ("ignored", flows.tcp_resets_ignored),
    ] {
        let labels = [("result", result)];
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn encode_policy_info(
    encoder: &mut DescriptorEncoder,
    mode: Option<Mode>,
    spec_sha256: &str,
) -> Result<(), std::fmt::Error> {
    info_gauge(
        encoder,
        "emis_policy_info",
        "The loaded policy: mode and SHA-256 of the spec",
        vec![
            ("mode", mode.map_or("unknown", |m| m.name()).to_string()),
            ("spec_sha256", spec_sha256.to_string()),
        ],
    )
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

fn encode_reloads(
    encoder: &mut DescriptorEncoder,
    loaded_at: u64,
    reloads: Reloads,
) -> Result<(), std::fmt::Error> {
    gauge(
        encoder,
        "emis_policy_loaded_timestamp_seconds",
        "When the policy in force was installed (start, restart or reload)",
        loaded_at as i64,
    )?;
    counter_family(
        encoder,
        "emis_reloads",
        "Reloads since the daemon started; result=refused left the policy unchanged",
        [("ok", reloads.ok), ("refused", reloads.refused)]
            .into_iter()
            .map(|(result, n)| (vec![("result", result.to_string())], n)),
    )?;
    let (at, ok) = reloads.last.unwrap_or((loaded_at, true));
    gauge(
        encoder,
        "emis_last_reload_success",
        "1 if the last reload succeeded (or none was tried since the start), 0 if it was refused",
        ok as i64,
    )?;
    gauge(
        encoder,
        "emis_last_reload_timestamp_seconds",
        "When the last reload was tried, whatever its result (the start if none was)",
        at as i64,
    )
}

fn encode_build_info(encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let info = build_info();
    info_gauge(
        encoder,
        "emis_build_info",
        "This emis: its version and the SHA-256 of the kernel object it loads",
        vec![
            ("version", info.version.to_string()),
            ("kernel_object_sha256", info.kernel_object_sha256.clone()),
        ],
    )
}

fn encode_cost(encoder: &mut DescriptorEncoder, cost: Cost) -> Result<(), std::fmt::Error> {
    let run = encoder.encode_descriptor(
        "emis_program_run",
        "Time the kernel spent running the XDP program (--bpf-stats), over every program this daemon installed",
        Some(&Unit::Seconds),
        MetricType::Counter,
    )?;
    ConstCounter::new(cost.run_seconds).encode(run)?;
    let runs = encoder.encode_descriptor(
        "emis_program_runs",
        "Times the kernel ran the XDP program, about one per packet (--bpf-stats)",
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(cost.runs).encode(runs)
}

impl EnforcerCollector {
    fn scrape(&self) -> Option<Scrape> {
        let view = self.view.lock().ok()?;
        let snapshot = match view.maps.snapshot() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "reading the counter map failed; this scrape has no counters");
                return None;
            }
        };
        Some(Scrape {
            report: snapshot.report(&view.labels),
            denied: every_denial(&snapshot, &view.labels),
            mode: view.maps.mode().ok(),
            flows: view.maps.flow_stats().ok(),
            new_flows: view.maps.new_flow_stats().ok(),
            spec_sha256: view.spec_sha256.clone(),
            loaded_at: view.loaded_at,
            reloads: view.reloads,
            cost: self.cost.as_ref().and_then(ProgramCost::read),
            events: view
                .maps
                .event_counts
                .as_ref()
                .map(|counts| events::EventCounts::read(counts, &view.event_fanout)),
            interfaces: view
                .maps
                .iface_stats
                .as_ref()
                .map(|map| interfaces::read(map, &view.interface_slots))
                .unwrap_or_default(),
        })
    }
}

impl Collector for EnforcerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_build_info(&mut encoder)?;
        let Some(scrape) = self.scrape() else {
            return Ok(());
        };
        encode_rules(&mut encoder, &scrape.report)?;
        encode_denied(&mut encoder, &scrape.denied)?;
        encode_passed(&mut encoder, &scrape.report)?;
        if !scrape.interfaces.is_empty() {
            interfaces::encode(&mut encoder, &scrape.interfaces)?;
        }
        if let Some(flows) = &scrape.flows {
            encode_flows(&mut encoder, flows)?;
        }
        if let Some(new_flows) = &scrape.new_flows {
            encode_new_flows(&mut encoder, new_flows)?;
        }
        encode_policy_info(&mut encoder, scrape.mode, &scrape.spec_sha256)?;
        encode_reloads(&mut encoder, scrape.loaded_at, scrape.reloads)?;
        if let Some(cost) = scrape.cost {
            encode_cost(&mut encoder, cost)?;
        }
        if let Some(counts) = scrape.events {
            events::encode(&mut encoder, counts)?;
        }
        Ok(())
    }
}
