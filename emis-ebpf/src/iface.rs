//! Per-interface counters: one inlined per-CPU array update a packet, at the slot of the
//! ingress ifindex (or the overflow slot, see `emis_common::iface`) x what became of the
//! packet.

use aya_ebpf::{macros::map, maps::PerCpuArray, programs::XdpContext};
use emis_common::{
    Counter, Decision, IfaceAction, IFACE_ACTION_COUNT, IFACE_SLOTS, IFACE_STATS_LEN,
};

#[map(name = "EMIS_IFACE_STATS")]
static IFACE_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(IFACE_STATS_LEN, 0);

const _: () = assert!(IFACE_SLOTS.is_power_of_two());
const _: () = assert!(IfaceAction::Audit as u32 == IfaceAction::Drop as u32 + 1);

/// The per-interface counters.
#[inline(always)]
pub fn stats() -> &'static PerCpuArray<Counter> {
    &IFACE_STATS
}

/// The packet's slot in the per-interface counters.
///
/// Branch-free where the verifier does not know the value (the ifindex, the mode): a
/// branch there would split every path that reaches it in two, and the program is near
/// the verifier's budget. So the overflow slot comes from a mask, and a denial's action
/// is `Drop + (mode & 1)`, equal to `IfaceAction::of` for the two modes the loader writes.
#[inline(always)]
pub fn slot(ctx: &XdpContext, decision: Decision, mode: u32) -> u32 {
    let action = match decision {
        Decision::Allow { .. } => IfaceAction::Allow as u32,
        Decision::Pass { .. } => IfaceAction::Pass as u32,
        Decision::Deny { .. } => IfaceAction::Drop as u32 + (mode & 1),
    };
    let ifindex = ctx.ingress_ifindex() as u32;
    // All ones when the ifindex has a slot of its own, else zero: the overflow slot 0.
    let own = ((ifindex / IFACE_SLOTS) as u64).wrapping_sub(1) >> 32;
    (ifindex & own as u32) * IFACE_ACTION_COUNT + action
}

/// Adds the packet to counter `slot` of `map`.
#[inline(always)]
pub fn add(map: &PerCpuArray<Counter>, slot: u32, ctx: &XdpContext) {
    if let Some(counter) = map.get_ptr_mut(slot) {
        let bytes = (ctx.data_end() - ctx.data()) as u64;
        // Per-CPU slot: no other writer, so plain adds are exact.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}
