//! How full the flow table is and what happened to its entries: read from the kernel's
//! flow map and event counters for `emis stats`, the metrics and the tests.

use std::borrow::Borrow;

use aya::maps::{HashMap, MapData, MapError, PerCpuArray};
use emis_common::{
    FlowKey, FlowValue, FLOW_EVENT_CREATED, FLOW_EVENT_EGRESS_CREATED, FLOW_EVENT_EXPIRED,
    FLOW_EVENT_INSERT_FAILED, FLOW_EVENT_NEW_CREATED, FLOW_EVENT_NEW_EXPIRED,
    FLOW_EVENT_NEW_INSERT_FAILED, FLOW_EVENT_NEW_PROMOTED, FLOW_EVENT_TCP_FIN_IGNORED,
    FLOW_EVENT_TCP_RST_HONOURED, FLOW_EVENT_TCP_RST_IGNORED, FLOW_EVENT_UNTRACKED,
};
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowTableStats {
    pub capacity: u32,
    /// Entries in the table now, live or expired but not yet met again.
    pub entries: u64,
    pub created: u64,
    pub insert_failures: u64,
    /// Expired flows removed when a packet met them.
    pub expired: u64,
    /// Flows the LRU pushed out to make room: every created flow is in the table, expired or evicted.
    pub evicted: u64,
}

impl FlowTableStats {
    /// [`FlowTableStats::from_maps`] for callers that use anyhow (the test harness).
    pub fn read<F: Borrow<MapData>, V: Borrow<MapData>>(
        flows: &HashMap<F, FlowKey, FlowValue>,
        events: &PerCpuArray<V, u64>,
        capacity: u32,
    ) -> anyhow::Result<FlowTableStats> {
        Ok(FlowTableStats::from_maps(flows, events, capacity)?)
    }

    /// `capacity` is the flow map's max_entries, which the loader set.
    pub fn from_maps<F: Borrow<MapData>, V: Borrow<MapData>>(
        flows: &HashMap<F, FlowKey, FlowValue>,
        events: &PerCpuArray<V, u64>,
        capacity: u32,
    ) -> Result<FlowTableStats, MapError> {
        // One syscall per entry: fine at scrape intervals for tables of this size.
        let entries = flows.keys().filter(|k| k.is_ok()).count() as u64;
        let event = |slot: u32| -> Result<u64, MapError> { Ok(events.get(&slot, 0)?.iter().sum()) };
        let created = event(FLOW_EVENT_CREATED)?;
        let expired = event(FLOW_EVENT_EXPIRED)?;
        Ok(FlowTableStats {
            capacity,
            entries,
            created,
            insert_failures: event(FLOW_EVENT_INSERT_FAILED)?,
            expired,
            evicted: created.saturating_sub(expired).saturating_sub(entries),
        })
    }
}

/// The table of new and half-open flows, and what the TCP window checks did: read from the
/// new-flow map and the same event counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NewFlowStats {
    pub capacity: u32,
    pub entries: u64,
    pub created: u64,
    pub insert_failures: u64,
    pub expired: u64,
    /// Flows that completed their handshake (or got a UDP reply) and moved to the
    /// established table.
    pub promoted: u64,
    /// Pushed out by other new flows (a flood of SYNs lands here, never in the established table).
    pub evicted: u64,
    /// Allowed flows given no entry: both ends out of enforce scope, so replies pass anyway.
    pub untracked: u64,
    pub tcp_resets_honoured: u64,
    pub tcp_resets_ignored: u64,
    pub tcp_fins_ignored: u64,
    /// Of `created`, flows the egress program recorded under the tuple they left with
    /// (masqueraded, or opened by the router itself).
    pub egress_created: u64,
}

impl NewFlowStats {
    pub fn from_maps<F: Borrow<MapData>, V: Borrow<MapData>>(
        new_flows: &HashMap<F, FlowKey, FlowValue>,
        events: &PerCpuArray<V, u64>,
        capacity: u32,
    ) -> Result<NewFlowStats, MapError> {
        let entries = new_flows.keys().filter(|k| k.is_ok()).count() as u64;
        let event = |slot: u32| -> Result<u64, MapError> { Ok(events.get(&slot, 0)?.iter().sum()) };
        let created = event(FLOW_EVENT_NEW_CREATED)?;
        let expired = event(FLOW_EVENT_NEW_EXPIRED)?;
        let promoted = event(FLOW_EVENT_NEW_PROMOTED)?;
        Ok(NewFlowStats {
            capacity,
            entries,
            created,
            insert_failures: event(FLOW_EVENT_NEW_INSERT_FAILED)?,
            expired,
            promoted,
            evicted: created
                .saturating_sub(expired)
                .saturating_sub(promoted)
                .saturating_sub(entries),
            untracked: event(FLOW_EVENT_UNTRACKED)?,
            tcp_resets_honoured: event(FLOW_EVENT_TCP_RST_HONOURED)?,
            tcp_resets_ignored: event(FLOW_EVENT_TCP_RST_IGNORED)?,
            tcp_fins_ignored: event(FLOW_EVENT_TCP_FIN_IGNORED)?,
            egress_created: event(FLOW_EVENT_EGRESS_CREATED)?,
        })
    }
}
