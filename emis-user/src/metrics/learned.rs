//! Hostnames learned from DNS: learned addresses by row, responses parsed and rejected by
//! reason, what the kernel handed over or could not, and DoT packets (learning is blind
//! to those).

use std::sync::{Arc, Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

use crate::daemon::learn::{DnsCounts, Learner};

/// Reads the learner and the kernel's DNS counters at each scrape.
#[derive(Debug)]
pub struct LearnCollector {
    pub learner: Arc<Mutex<Learner>>,
}

impl std::fmt::Debug for Learner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Learner")
    }
}

fn labelled<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    label: &'static str,
    rows: impl Iterator<Item = (&'a String, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (value, n) in rows {
        let labels = vec![(label, super::exposition::escape_label_value(value))];
        let metric = family.encode_family(&labels)?;
        match kind {
            MetricType::Gauge => ConstGauge::new(n as i64).encode(metric)?,
            _ => ConstCounter::new(n).encode(metric)?,
        }
    }
    Ok(())
}

impl Collector for LearnCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(learner) = self.learner.lock() else {
            return Ok(());
        };
        let by_rule = learner.addresses_by_rule();
        labelled(
            &mut encoder,
            "emis_dns_learned_addresses",
            "Addresses learned from DNS answers whose names a rule's hostnames match, by rule",
            MetricType::Gauge,
            "rule",
            by_rule.iter().map(|(k, v)| (k, *v)),
        )?;
        labelled(
            &mut encoder,
            "emis_dns_responses_rejected",
            "DNS responses that taught nothing, by reason (truncated, compression_loop, ...)",
            MetricType::Counter,
            "reason",
            learner.stats.rejected.iter().map(|(k, v)| (k, *v)),
        )?;
        let s = &learner.stats;
        let kernel = DnsCounts::read(learner.pins()).unwrap_or_default();
        for (name, help, value) in [
            ("emis_dns_responses_parsed", "DNS responses read", s.parsed),
            (
                "emis_dns_records_zero_ttl",
                "A and AAAA records ignored for a TTL of 0",
                s.zero_ttl,
            ),
            (
                "emis_dns_responses_snapped",
                "DNS responses longer than the kernel's copy, read up to the cut",
                s.snapped,
            ),
            (
                "emis_dns_answers_unnamed",
                "DNS answers for names no rule names",
                s.unnamed,
            ),
            (
                "emis_dns_learned_overflow",
                "Learned addresses whose rules did not all fit their map entry",
                s.overflow,
            ),
            (
                "emis_dns_map_errors",
                "Writes to the learned-address maps that failed (full map)",
                s.map_errors,
            ),
            (
                "emis_dns_handed",
                "DNS responses the kernel handed to the daemon",
                kernel.handed,
            ),
            (
                "emis_dns_suppressed",
                "DNS responses not handed over: the per-CPU rate limit was spent",
                kernel.suppressed,
            ),
            (
                "emis_dns_ring_full",
                "DNS responses not handed over: the ring buffer was full",
                kernel.ring_full,
            ),
            (
                "emis_dot_packets",
                "Packets to or from port 853 (DNS over TLS): answers learning cannot read",
                kernel.dot,
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        Ok(())
    }
}
