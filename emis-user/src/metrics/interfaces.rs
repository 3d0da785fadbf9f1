//! Packets and bytes by the interface they arrived on and what became of them
//! (`emis_interface_packets_total{iface,action}`). The kernel counts by ingress ifindex;
//! the daemon names the interfaces it attached, and the overflow slot (ifindexes past the
//! array, see `emis_common::iface`) is exported as `iface="other"`.

use aya::maps::{MapData, PerCpuArray};
use emis_common::{iface_index, Counter, IfaceAction, IFACE_OVERFLOW_SLOT, IFACE_SLOTS};

use super::{counter_family, LabelSet};
use crate::stats::sum_cpus;

/// The label of the overflow slot.
pub const OTHER: &str = "other";

/// Which slot each exported interface reads: the attached interfaces whose ifindex has a
/// slot of its own, by name, then the overflow slot.
pub fn slots(interfaces: &std::collections::HashMap<u32, String>) -> Vec<(u32, String)> {
    let mut slots: Vec<(u32, String)> = interfaces
        .iter()
        .filter(|(index, _)| **index < IFACE_SLOTS && **index != IFACE_OVERFLOW_SLOT)
        .map(|(index, name)| (*index, name.clone()))
        .collect();
    slots.sort_by(|a, b| a.1.cmp(&b.1));
    for (index, name) in interfaces {
        if *index >= IFACE_SLOTS {
            tracing::warn!(
                iface = %name,
                ifindex = index,
                "ifindex past the per-interface counters ({IFACE_SLOTS}): counted as iface=\"{OTHER}\""
            );
        }
    }
    slots.push((IFACE_OVERFLOW_SLOT, OTHER.to_string()));
    slots
}

/// One row a (slot, action): its labels and counter.
pub struct Row {
    pub iface: String,
    pub action: IfaceAction,
    pub counter: Counter,
}

/// Reads every exported slot, zero or not.
pub fn read(map: &PerCpuArray<MapData, Counter>, slots: &[(u32, String)]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (slot, iface) in slots {
        for action in IfaceAction::ALL {
            let counter = map
                .get(&iface_index(*slot, action), 0)
                .map(|values| sum_cpus(&values))
                .unwrap_or_default();
            rows.push(Row {
                iface: iface.clone(),
                action,
                counter,
            });
        }
    }
    rows
}

fn labels(row: &Row) -> LabelSet {
    vec![
        ("iface", row.iface.clone()),
        ("action", row.action.name().to_string()),
    ]
}

pub fn encode(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    rows: &[Row],
) -> Result<(), std::fmt::Error> {
    counter_family(
        encoder,
        "emis_interface_packets",
        "Packets by the interface they arrived on: allowed by a rule, passed without one, dropped, or denied and passed in audit mode; iface=\"other\" holds interfaces whose ifindex has no slot",
        rows.iter().map(|r| (labels(r), r.counter.packets)),
    )?;
    counter_family(
        encoder,
        "emis_interface_bytes",
        "Bytes by the interface they arrived on and what became of them (as emis_interface_packets)",
        rows.iter().map(|r| (labels(r), r.counter.bytes)),
    )
}
