//! The Prometheus endpoint: each scrape reads the kernel counters and encodes them
//! with prometheus-client, so the numbers are never staler than the scrape.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};
use aya::maps::{Array, MapData, PerCpuArray};
use emis_common::{Config, Counter, FlowKey, FlowValue};
use prometheus_client::{
    collector::Collector,
    encoding::{text::encode, DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use std::sync::Mutex;

use crate::stats::{mode_of, Labels, Snapshot};

/// The flow table and its event counters.
pub type FlowMaps = (
    aya::maps::HashMap<MapData, FlowKey, FlowValue>,
    PerCpuArray<MapData, u64>,
);

/// Reads the maps of one running enforcer at scrape time.
pub struct EnforcerCollector {
    pub stats: Mutex<PerCpuArray<MapData, Counter>>,
    pub config: Mutex<Array<MapData, Config>>,
    pub flows: Mutex<FlowMaps>,
    pub flow_table_size: u32,
    pub labels: Labels,
    pub spec_sha256: String,
}

impl std::fmt::Debug for EnforcerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnforcerCollector")
            .field("spec_sha256", &self.spec_sha256)
            .finish()
    }
}

fn counter_family<L: prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (labels, value) in rows {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for EnforcerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = match self
            .stats
            .lock()
            .map_err(|_| ())
            .and_then(|m| Snapshot::read(&m).map_err(|_| ()))
        {
            Ok(s) => s,
            Err(()) => {
                tracing::error!("reading the counter map failed; this scrape has no counters");
                return Ok(());
            }
        };
        let mode = self
            .config
            .lock()
            .ok()
            .and_then(|c| c.get(&0, 0).ok())
            .map(|c| mode_of(&c));
        let report = snapshot.report(&self.labels);
        let rule_labels = |r: &crate::stats::RuleRow| {
            vec![
                ("rule", r.rule.clone()),
                ("direction", r.direction.clone()),
                ("path", r.path.to_string()),
            ]
        };
        counter_family(
            &mut encoder,
            "emis_rule_packets",
            "Packets allowed by each rule, forward or as a reply",
            report.rules.iter().map(|r| (rule_labels(r), r.packets)),
        )?;
        counter_family(
            &mut encoder,
            "emis_rule_bytes",
            "Bytes allowed by each rule, forward or as a reply",
            report.rules.iter().map(|r| (rule_labels(r), r.bytes)),
        )?;
        let deny_labels = |d: &crate::stats::DenyRow| {
            vec![
                ("reason", d.reason.to_string()),
                ("network", d.network.clone()),
                ("action", d.action.to_string()),
            ]
        };
        counter_family(
            &mut encoder,
            "emis_denied_packets",
            "In-scope packets denied, by reason and EMIS network; action=audit were passed in audit mode",
            report.denied.iter().map(|d| (deny_labels(d), d.packets)),
        )?;
        counter_family(
            &mut encoder,
            "emis_denied_bytes",
            "In-scope bytes denied, by reason and EMIS network; action=audit were passed in audit mode",
            report.denied.iter().map(|d| (deny_labels(d), d.bytes)),
        )?;
        counter_family(
            &mut encoder,
            "emis_passed_packets",
            "Packets passed without a rule: non-IP, out of scope, or unreadable addresses",
            report
                .passed
                .iter()
                .map(|p| (vec![("reason", p.reason.to_string())], p.packets)),
        )?;
        counter_family(
            &mut encoder,
            "emis_passed_bytes",
            "Bytes passed without a rule: non-IP, out of scope, or unreadable addresses",
            report
                .passed
                .iter()
                .map(|p| (vec![("reason", p.reason.to_string())], p.bytes)),
        )?;
        let flows = self.flows.lock().ok().and_then(|m| {
            crate::flows::FlowTableStats::read(&m.0, &m.1, self.flow_table_size).ok()
        });
        if let Some(flows) = flows {
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
                let metric = encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    prometheus_client::metrics::MetricType::Gauge,
                )?;
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
                let metric = encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    prometheus_client::metrics::MetricType::Counter,
                )?;
                ConstCounter::new(value).encode(metric)?;
            }
        }
        let mut info = encoder.encode_descriptor(
            "emis_policy_info",
            "The loaded policy: mode and SHA-256 of the spec",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        let labels = vec![
            ("mode", mode.map_or("unknown", |m| m.name()).to_string()),
            ("spec_sha256", self.spec_sha256.clone()),
        ];
        ConstGauge::new(1i64).encode(info.encode_family(&labels)?)?;
        Ok(())
    }
}

/// Encodes a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> Result<String> {
    let mut body = String::new();
    encode(&mut body, registry).context("encoding metrics")?;
    Ok(body)
}

/// Serves `/metrics` on `addr` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, registry: Arc<Registry>) -> Result<()> {
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
                        format!("{e:#}\n"),
                    ),
                }
            }
        }),
    );
    axum::serve(listener, app).await.context("serving metrics")
}

/// Binds the metrics listener, with an error that names the address.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener to {addr} (is another emis using it? pass --metrics-addr)"))
}
