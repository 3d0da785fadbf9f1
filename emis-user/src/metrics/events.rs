//! The drop-event counters: what the kernel wrote to the event ring buffer, what its
//! rate limit suppressed, what found the ring full, and what slow clients lost.

use std::sync::atomic::Ordering;

use aya::maps::{MapData, PerCpuArray};
use emis_common::{EVENT_COUNT_EMITTED, EVENT_COUNT_RING_FULL, EVENT_COUNT_SUPPRESSED};
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, MetricType},
};

use crate::daemon::events::FanoutStats;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCounts {
    pub emitted: u64,
    pub suppressed: u64,
    pub ring_full: u64,
    pub client_dropped: u64,
}

impl EventCounts {
    /// Sums the per-CPU kernel counters.
    pub fn read(counts: &PerCpuArray<MapData, u64>, fanout: &FanoutStats) -> EventCounts {
        let sum = |slot: u32| {
            counts
                .get(&slot, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        EventCounts {
            emitted: sum(EVENT_COUNT_EMITTED),
            suppressed: sum(EVENT_COUNT_SUPPRESSED),
            ring_full: sum(EVENT_COUNT_RING_FULL),
            client_dropped: fanout.client_dropped.load(Ordering::Relaxed),
        }
    }
}

pub fn encode(encoder: &mut DescriptorEncoder, counts: EventCounts) -> Result<(), std::fmt::Error> {
    for (name, help, value) in [
        (
            "emis_events",
            "Drop events the kernel program wrote for `emis watch` and `emis capture`",
            counts.emitted,
        ),
        (
            "emis_events_suppressed",
            "Drop events not written because the per-CPU rate limit (--event-rate) was spent",
            counts.suppressed,
        ),
        (
            "emis_events_ring_full",
            "Drop events not written because the ring buffer was full (the daemon fell behind)",
            counts.ring_full,
        ),
        (
            "emis_events_client_dropped",
            "Drop events a slow watch or capture client lost, summed over clients",
            counts.client_dropped,
        ),
    ] {
        let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(value).encode(metric)?;
    }
    Ok(())
}
