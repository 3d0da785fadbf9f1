//! The Prometheus endpoint: each scrape reads the kernel counters and encodes them
//! with prometheus-client, so the numbers are never staler than the scrape.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{text::encode, DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use crate::{
    daemon::pins::PinnedMaps,
    flows::FlowTableStats,
    stats::{DenyRow, Labels, Report, RuleRow},
};
use emis_policy::policy::Mode;

/// What the collector reads at scrape time; the daemon swaps labels and the config map
/// in it after a reload.
pub struct EnforcerView {
    pub maps: PinnedMaps,
    pub labels: Labels,
    pub spec_sha256: String,
    /// When the policy in force was installed, unix seconds.
    pub loaded_at: u64,
    pub reloads: Reloads,
}

/// Reloads since the daemon started, by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reloads {
    pub ok: u64,
    pub refused: u64,
}

/// Reads the maps of one running enforcer at scrape time.
pub struct EnforcerCollector {
    pub view: Arc<Mutex<EnforcerView>>,
}

impl std::fmt::Debug for EnforcerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnforcerCollector").finish_non_exhaustive()
    }
}

/// One scrape's numbers, read under the lock and encoded after it.
struct Scrape {
    report: Report,
    mode: Option<Mode>,
    flows: Option<FlowTableStats>,
    spec_sha256: String,
    loaded_at: u64,
    reloads: Reloads,
}

fn counter_family<L: prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn rule_labels(r: &RuleRow) -> Vec<(&'static str, String)> {
    vec![
        ("rule", r.rule.clone()),
        ("direction", r.direction.clone()),
        ("path", r.path.to_string()),
    ]
}

fn deny_labels(d: &DenyRow) -> Vec<(&'static str, String)> {
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

fn encode_denied(encoder: &mut DescriptorEncoder, report: &Report) -> Result<(), std::fmt::Error> {
    counter_family(
        encoder,
        "emis_denied_packets",
        "In-scope packets denied, by reason and EMIS network; action=audit were passed in audit mode",
        report.denied.iter().map(|d| (deny_labels(d), d.packets)),
    )?;
    counter_family(
        encoder,
        "emis_denied_bytes",
        "In-scope bytes denied, by reason and EMIS network; action=audit were passed in audit mode",
        report.denied.iter().map(|d| (deny_labels(d), d.bytes)),
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

fn encode_policy_info(
    encoder: &mut DescriptorEncoder,
    mode: Option<Mode>,
    spec_sha256: &str,
) -> Result<(), std::fmt::Error> {
    let mut info = encoder.encode_descriptor(
        "emis_policy_info",
        "The loaded policy: mode and SHA-256 of the spec",
        None,
        MetricType::Gauge,
    )?;
    let labels = vec![
        ("mode", mode.map_or("unknown", |m| m.name()).to_string()),
        ("spec_sha256", spec_sha256.to_string()),
    ];
    ConstGauge::new(1i64).encode(info.encode_family(&labels)?)
}

fn encode_reloads(
    encoder: &mut DescriptorEncoder,
    loaded_at: u64,
    reloads: Reloads,
) -> Result<(), std::fmt::Error> {
    let loaded = encoder.encode_descriptor(
        "emis_policy_loaded_timestamp_seconds",
        "When the policy in force was installed (start, restart or reload)",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(loaded_at as i64).encode(loaded)?;
    counter_family(
        encoder,
        "emis_reloads",
        "Reloads since the daemon started; result=refused left the policy unchanged",
        [("ok", reloads.ok), ("refused", reloads.refused)]
            .into_iter()
            .map(|(result, n)| (vec![("result", result.to_string())], n)),
    )
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
            mode: view.maps.mode().ok(),
            flows: view.maps.flow_stats().ok(),
            spec_sha256: view.spec_sha256.clone(),
            loaded_at: view.loaded_at,
            reloads: view.reloads,
        })
    }
}

impl Collector for EnforcerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(scrape) = self.scrape() else {
            return Ok(());
        };
        encode_rules(&mut encoder, &scrape.report)?;
        encode_denied(&mut encoder, &scrape.report)?;
        encode_passed(&mut encoder, &scrape.report)?;
        if let Some(flows) = &scrape.flows {
            encode_flows(&mut encoder, flows)?;
        }
        encode_policy_info(&mut encoder, scrape.mode, &scrape.spec_sha256)?;
        encode_reloads(&mut encoder, scrape.loaded_at, scrape.reloads)
    }
}

/// Why the metrics endpoint could not run.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("binding the metrics listener to {addr} (is another emis or exporter using it? pass --metrics-addr)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving metrics")]
    Serve(#[source] std::io::Error),
}

/// Encodes a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut body = String::new();
    encode(&mut body, registry)?;
    Ok(body)
}

/// Serves `/metrics` on `listener` until the future is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
) -> Result<(), MetricsError> {
    use axum::{http::header, routing::get, Router};
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                match render(&registry) {
                    Ok(body) => (
                        axum::http::StatusCode::OK,
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    ),
                    Err(e) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                        format!("encoding metrics: {e}\n"),
                    ),
                }
            }
        }),
    );
    axum::serve(listener, app)
        .await
        .map_err(MetricsError::Serve)
}

/// Binds the metrics listener now (before anything in the kernel changes), non-blocking
/// for tokio.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, MetricsError> {
    let bound = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| MetricsError::Bind { addr, source })?;
    Ok(bound)
}
