//! The kernel log's per-decision trace (`emis run --kernel-log debug`), through aya-log:
//! one line per decided packet whose source or destination the filter
//! (`EMIS_TRACE_MATCH`, see `emis_common::trace`) holds.
//!
//! `events::emit` calls it, under the config flag `events::report` already reads for the
//! events (which the daemon sets while it runs), before writing the event as usual: off,
//! the trace costs an event one more load and compare of the config it has in hand. On, it
//! runs in one out-of-line (global) function whose frame must fit beside the program's
//! own in the 512 bytes of stack a call chain may use: it reads the addresses straight
//! from the frame (no copy on the stack) and leaves their formatting and the names of
//! rules, reasons and interfaces to the daemon. See docs/DECISIONS.md, The kernel log.

use aya_ebpf::{bindings::xdp_md, macros::map, maps::Array, programs::XdpContext};
use aya_log_ebpf::debug;
use emis_common::{
    TraceMatch, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, TRACE_ANY, TRACE_V4, TRACE_V6,
};

use crate::parse::{be16, bytes_at};

#[map(name = "EMIS_TRACE_MATCH")]
static TRACE_MATCH: Array<TraceMatch> = Array::with_max_entries(1, 0);

/// Traces a decision: `code` and `id` as `events::report` passes them to `emit` (a
/// denial's reason and network; [`TRACE_CODE_ALLOWED`] plus an allowed packet's path,
/// and its rule). A global BPF function (exported, so its BTF linkage is global): the
/// verifier checks it once, on its own, with the context and two unknown scalars,
/// rather than once for every path of the program that reaches it.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn emis_trace_decision(ctx: *mut xdp_md, code: u32, id: u32) -> u32 {
    let mode = match crate::CONFIG.get(0) {
        Some(cfg) => cfg.mode,
        None => 0,
    };
    log_decision(&XdpContext::new(ctx), code, id, mode);
    0
}

/// Whether the 4 or 16 bytes of an address (`WORDS` words at `at` in `header`) are inside
/// the filter.
#[inline(always)]
fn holds<const N: usize, const WORDS: usize>(m: &TraceMatch, header: &[u8; N], at: usize) -> bool {
    let mut i = 0;
    while i < WORDS * 4 {
        if header[at + i] & m.mask[i] != m.addr[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[inline(always)]
fn log_decision(ctx: &XdpContext, code: u32, id: u32, mode: u32) {
    let Some(m) = TRACE_MATCH.get(0) else {
        return;
    };
    let ifindex = ctx.ingress_ifindex() as u32;
    let (mut ethertype, mut offset) = (0u16, 0usize);
    if !m.bare_ip(ifindex) {
        let Some(eth) = bytes_at::<14>(ctx, 0) else {
            return;
        };
        ethertype = be16(eth, 12);
        offset = 14;
        for _ in 0..2 {
            if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
                break;
            }
            let Some(tag) = bytes_at::<4>(ctx, offset) else {
                return;
            };
            ethertype = be16(tag, 2);
            offset += 4;
        }
    } else if let Some(first) = bytes_at::<20>(ctx, 0) {
        // A window of the shortest IP header: a 1-byte check compiles to a compare the
        // verifier does not take as a bound.
        ethertype = match first[0] >> 4 {
            4 => ETH_P_IPV4,
            6 => ETH_P_IPV6,
            _ => 0,
        };
    }
    if ethertype == ETH_P_IPV4 && m.family != TRACE_V6 {
        let Some(ip) = bytes_at::<20>(ctx, offset) else {
            return;
        };
        if m.family == TRACE_ANY || holds::<20, 1>(m, ip, 12) || holds::<20, 1>(m, ip, 16) {
            let (src, dst): (&[u8], &[u8]) = (&ip[12..16], &ip[16..20]);
            debug!(
                ctx,
                "decided if={} src={:x} dst={:x} proto={} code={} id={} mode={}",
                ifindex,
                src,
                dst,
                ip[9],
                code,
                id,
                mode
            );
        }
    } else if ethertype == ETH_P_IPV6 && m.family != TRACE_V4 {
        let Some(ip) = bytes_at::<40>(ctx, offset) else {
            return;
        };
        if m.family == TRACE_ANY || holds::<40, 4>(m, ip, 8) || holds::<40, 4>(m, ip, 24) {
            let (src, dst): (&[u8], &[u8]) = (&ip[8..24], &ip[24..40]);
            debug!(
                ctx,
                "decided if={} src={:x} dst={:x} proto={} code={} id={} mode={}",
                ifindex,
                src,
                dst,
                ip[6],
                code,
                id,
                mode
            );
        }
    }
    // Anything else carries no address the trace can read here (PPPoE, MPLS, a third
    // VLAN tag): it is not traced. Allowed and denied packets are always IP.
}
