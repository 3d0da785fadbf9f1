//! Drop events: for a denied packet (and one allowed packet in `sample_allowed`), when
//! the config's `events` flag is set and the CPU's token bucket has a token, one
//! [`Event`] in the ring buffer the daemon reads. With the flag clear the packet path
//! pays one config lookup (an array the verifier inlines), one load and one compare.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, generated::bpf_xdp_load_bytes},
    macros::map,
    maps::{PerCpuArray, RingBuf},
    programs::XdpContext,
};
use emis_common::{
    Action, Config, Decision, Event, EventBucket, EVENT_COUNT_EMITTED, EVENT_COUNT_RING_FULL,
    EVENT_COUNT_SLOTS, EVENT_COUNT_SUPPRESSED, EVENT_KIND_ALLOWED, EVENT_KIND_DENIED, EVENT_NONE,
    EVENT_RING_BYTES, EVENT_SNAP_LEN, NO_NETWORK, TRACE_CODE_ALLOWED,
};

#[map(name = "EMIS_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);
#[map(name = "EMIS_EVENT_BUCKET")]
static BUCKET: PerCpuArray<EventBucket> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "EMIS_EVENT_COUNTS")]
static COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_COUNT_SLOTS, 0);

/// `emit`'s `code` for an allowed packet: this bit, plus its path.
const ALLOWED: u32 = TRACE_CODE_ALLOWED;

/// Reports a final decision if it denies the packet (or samples an allowed one) and
/// someone listens; with the kernel log's trace on, traces it too (inside `emit`, so the
/// packet path keeps one call site and one check when both are off).
#[inline(always)]
pub fn report(ctx: &XdpContext, decision: Decision) {
    // Looked up again rather than passed in: the caller then keeps no config pointer live
    // across `count`, which would take a spill slot in its frame (464 bytes with this,
    // 472 without, when written; 376 since issue 10). That frame plus emit's (48) and the
    // trace's (40, called from emit) must fit the 512 bytes of a call chain.
    let Some(cfg) = crate::CONFIG.get(0) else {
        return;
    };
    if cfg.events == 0 {
        return;
    }
    // Two scalars, so the call passes few registers and the caller spills little: its
    // stack and emit's share the 512 bytes a call chain may use.
    let (code, id) = match decision {
        Decision::Deny { reason, network } => (reason as u32, network),
        Decision::Allow { rule, path } => (ALLOWED | path as u32, rule),
        Decision::Pass { .. } => return,
    };
    emit(ctx, cfg, code, id);
}

#[inline(always)]
fn bump(slot: u32) {
    if let Some(n) = COUNTS.get_ptr_mut(slot) {
        unsafe { *n += 1 };
    }
}

/// Out of line, so the packet path carries one call. It parses nothing: the program's
/// own frame already takes most of the 512 bytes of BPF stack a call chain may use, so
/// the daemon reads addresses and ports from the captured bytes instead.
#[inline(never)]
fn emit(ctx: &XdpContext, cfg: &Config, code: u32, id: u32) {
    // The trace sees every decision it matches, before the sampling and the rate limit
    // below; the event is written as if it were off. Here rather than in `report`: a
    // branch there made LLVM lay out `emit` twice, and the verifier walk it twice.
    if cfg.trace != 0 {
        crate::trace::emis_trace_decision(ctx.ctx, code, id);
    }
    let allowed = code & ALLOWED != 0;
    if allowed {
        let n = cfg.sample_allowed;
        if n == 0 || unsafe { bpf_get_prandom_u32() } % n != 0 {
            return;
        }
    }
    let (kind, reason, network, action, rule) = if allowed {
        (
            EVENT_KIND_ALLOWED,
            code & !ALLOWED,
            NO_NETWORK,
            EVENT_NONE,
            id,
        )
    } else {
        (
            EVENT_KIND_DENIED,
            code,
            id,
            Action::under(cfg.mode) as u32,
            EVENT_NONE,
        )
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(bucket) = BUCKET.get_ptr_mut(0) else {
        return;
    };
    if !unsafe { (*bucket).take(now, cfg.event_rate) } {
        bump(EVENT_COUNT_SUPPRESSED);
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(EVENT_COUNT_RING_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    let frame_len = (ctx.data_end() - ctx.data()) as u32;
    // Word by word, not a `memset` call (see `crate::zero`); the ring's memory holds
    // earlier events, and a frame shorter than the snapshot leaves its tail zero.
    crate::zero::zero(event);
    unsafe {
        (*event).time_ns = now;
        (*event).ifindex = ctx.ingress_ifindex() as u32;
        (*event).frame_len = frame_len;
        (*event).reason = reason;
        (*event).network = network;
        (*event).action = action;
        (*event).kind = kind;
        (*event).rule = rule;
    }
    let captured = copy_frame(ctx, unsafe { &mut (*event).frame }, frame_len);
    unsafe { (*event).captured_len = captured };
    entry.submit(0);
    bump(EVENT_COUNT_EMITTED);
}

/// The frame's first bytes into `buf`; how many. The verifier must see the length the
/// helper gets bounded by `buf`: a constant, or a value masked below it and non-zero.
#[inline(always)]
fn copy_frame(ctx: &XdpContext, buf: &mut [u8; EVENT_SNAP_LEN], frame_len: u32) -> u32 {
    let len = if frame_len as usize >= EVENT_SNAP_LEN {
        EVENT_SNAP_LEN as u64
    } else {
        // Hidden from the optimiser so the mask survives for the verifier to see.
        core::hint::black_box(frame_len as u64) & (EVENT_SNAP_LEN as u64 - 1)
    };
    if len == 0 {
        return 0;
    }
    let ret = unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, buf.as_mut_ptr().cast(), len as u32) };
    if ret < 0 {
        0
    } else {
        len as u32
    }
}
