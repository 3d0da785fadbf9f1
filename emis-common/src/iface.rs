//! Per-interface counters: packets and bytes by the interface a frame arrived on and what
//! became of it. A per-CPU array indexed by ingress ifindex x action, so the kernel pays
//! one inlined array update a packet and no hash lookup.
//!
//! The array has [`IFACE_SLOTS`] slots of interfaces. An ifindex of `IFACE_SLOTS` or more
//! (hosts that create and remove many interfaces, e.g. containers, reach large ifindexes)
//! is counted in the overflow slot [`IFACE_OVERFLOW_SLOT`], slot 0: the kernel never gives
//! an interface ifindex 0, so that slot is free. Userspace exports it as `iface="other"`.

use crate::{config::MODE_AUDIT, decision::Decision};

/// Per-CPU [`Counter`](crate::Counter)s, indexed by [`iface_index`].
pub const MAP_IFACE_STATS: &str = "EMIS_IFACE_STATS";
/// Interfaces with an own slot: ifindex 1 to `IFACE_SLOTS - 1`.
pub const IFACE_SLOTS: u32 = 1024;
/// Where an ifindex of [`IFACE_SLOTS`] or more is counted.
pub const IFACE_OVERFLOW_SLOT: u32 = 0;

/// What became of a packet, as the per-interface counters tell it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IfaceAction {
    /// A rule allowed it.
    Allow = 0,
    /// It passed without a rule (non-IP, out of scope, permitted echo, ...).
    Pass = 1,
    /// Denied and dropped (enforce mode).
    Drop = 2,
    /// Denied and passed (audit mode): a would-be drop.
    Audit = 3,
}
pub const IFACE_ACTION_COUNT: u32 = 4;
/// Length of the per-interface counter array.
pub const IFACE_STATS_LEN: u32 = IFACE_SLOTS * IFACE_ACTION_COUNT;

impl IfaceAction {
    pub const ALL: [IfaceAction; IFACE_ACTION_COUNT as usize] = [
        IfaceAction::Allow,
        IfaceAction::Pass,
        IfaceAction::Drop,
        IfaceAction::Audit,
    ];
    pub const fn name(self) -> &'static str {
        match self {
            IfaceAction::Allow => "allow",
            IfaceAction::Pass => "pass",
            IfaceAction::Drop => "drop",
            IfaceAction::Audit => "audit",
        }
    }
    /// What became of a packet decided `decision` under `mode`.
    #[inline(always)]
    pub const fn of(decision: Decision, mode: u32) -> IfaceAction {
        match decision {
            Decision::Allow { .. } => IfaceAction::Allow,
            Decision::Pass { .. } => IfaceAction::Pass,
            Decision::Deny { .. } if mode == MODE_AUDIT => IfaceAction::Audit,
            Decision::Deny { .. } => IfaceAction::Drop,
        }
    }
}

/// The slot of an interface: its ifindex, or the overflow slot.
#[inline(always)]
pub const fn iface_slot(ifindex: u32) -> u32 {
    if ifindex < IFACE_SLOTS {
        ifindex
    } else {
        IFACE_OVERFLOW_SLOT
    }
}

/// Index in the per-interface counter array; always below [`IFACE_STATS_LEN`].
#[inline(always)]
pub const fn iface_index(ifindex: u32, action: IfaceAction) -> u32 {
    iface_slot(ifindex) * IFACE_ACTION_COUNT + action as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::MODE_ENFORCE, DenyReason, PassReason, Path};

    #[test]
    fn every_ifindex_has_a_slot_and_large_ones_share_the_overflow_slot() {
        assert_eq!(iface_index(3, IfaceAction::Drop), 3 * 4 + 2);
        assert_eq!(iface_slot(IFACE_SLOTS - 1), IFACE_SLOTS - 1);
        assert_eq!(iface_slot(IFACE_SLOTS), IFACE_OVERFLOW_SLOT);
        assert_eq!(iface_slot(u32::MAX), IFACE_OVERFLOW_SLOT);
        assert!(iface_index(u32::MAX, IfaceAction::Audit) < IFACE_STATS_LEN);
        assert!(iface_index(IFACE_SLOTS - 1, IfaceAction::Audit) < IFACE_STATS_LEN);
    }

    #[test]
    fn actions_follow_the_decision_and_the_mode() {
        let deny = Decision::Deny {
            reason: DenyReason::NoRule,
            network: 0,
        };
        assert_eq!(IfaceAction::of(deny, MODE_ENFORCE), IfaceAction::Drop);
        assert_eq!(IfaceAction::of(deny, MODE_AUDIT), IfaceAction::Audit);
        let allow = Decision::Allow {
            rule: 1,
            path: Path::Reply,
        };
        assert_eq!(IfaceAction::of(allow, MODE_AUDIT), IfaceAction::Allow);
        let pass = Decision::Pass {
            reason: PassReason::Arp,
        };
        assert_eq!(IfaceAction::of(pass, MODE_ENFORCE), IfaceAction::Pass);
    }
}
