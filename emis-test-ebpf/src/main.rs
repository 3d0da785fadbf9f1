//! XDP programs for the benchmark (`cargo xtask bench`) and the tests, in an object of
//! their own so the object the `emis` binary embeds holds the enforcer alone. Built like
//! emis-ebpf (nightly, bpfel, bpf-linker) by emis-testkit's build.rs; `emis_testkit::programs`
//! loads them by name.
//!
//! - `emis_noop_pass`, `emis_noop_drop`: the floor of BPF_PROG_TEST_RUN and the receiver
//!   limit on veth.
//! - `emis_parse_only`: the enforcer's own parsers (Ethernet, VLAN, IPv4/IPv6, TCP/UDP) and
//!   nothing else: no map lookup, no decision, no counter.
//! - `emis_flow_lookup`: those parsers, then one lookup of the frame's flow key in an LRU
//!   flow table of the enforcer's default size (the key inserted on first sight, so every
//!   later run finds it): the least any stateful program pays per packet, which the
//!   benchmark sets beside the enforcer's classes that track flows.
//! - `emis_tx`: the live-frames packet generator; every frame goes back out (XDP_TX) of
//!   the interface named in the test run's context.
//! - `emis_noop_tc`: a TC classifier that returns TCX_NEXT at once: the floor the egress
//!   program (`emis_egress`) is measured against.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_UNSPEC},
    macros::{classifier, map, xdp},
    maps::LruHashMap,
    programs::{TcContext, XdpContext},
};
use emis_common::{FlowKey, FlowValue, Link, DEFAULT_FLOW_TABLE_SIZE, PROTO_TCP, PROTO_UDP};

// The enforcer's parser itself, not a copy: what `emis_parse_only` measures is what the
// enforcer runs. Only part of it is used here.
#[allow(dead_code)]
#[path = "../../emis-ebpf/src/parse.rs"]
mod parse;
#[path = "../../emis-ebpf/src/zero.rs"]
mod zero;

use parse::{parse_frame, parse_tcp, parse_udp, L3};

#[xdp]
pub fn emis_noop_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn emis_noop_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[classifier]
pub fn emis_noop_tc(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[xdp]
pub fn emis_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[xdp]
pub fn emis_parse_only(ctx: XdpContext) -> u32 {
    let mut sink: u32 = 0;
    let mut slot = core::mem::MaybeUninit::uninit();
    let l3 = L3::zeroed(&mut slot);
    if parse_frame(&ctx, Link::Ethernet, l3).is_ok() {
        let whole = !l3.fragment;
        let l4 = match l3.proto {
            PROTO_TCP => parse_tcp(&ctx, l3.l4_offset, l3.l4_len),
            PROTO_UDP => parse_udp(&ctx, l3.l4_offset, l3.l4_len, whole),
            _ => None,
        };
        sink = (l3.src[0] ^ l3.dst[15]) as u32 | (l3.malformed as u32) << 8;
        if let Some(l4) = l4 {
            sink ^= (l4.sport as u32) << 16 | l4.dport as u32 ^ l4.flags as u32;
        }
    }
    // A volatile store keeps every read above: the parse is the work being measured.
    unsafe { core::ptr::write_volatile(&mut sink, sink) };
    xdp_action::XDP_PASS
}

#[map(name = "EMIS_BENCH_FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, 0);

#[xdp]
pub fn emis_flow_lookup(ctx: XdpContext) -> u32 {
    let mut slot = core::mem::MaybeUninit::uninit();
    let l3 = L3::zeroed(&mut slot);
    if parse_frame(&ctx, Link::Ethernet, l3).is_err() {
        return xdp_action::XDP_PASS;
    }
    let l4 = match l3.proto {
        PROTO_TCP => parse_tcp(&ctx, l3.l4_offset, l3.l4_len),
        PROTO_UDP => parse_udp(&ctx, l3.l4_offset, l3.l4_len, !l3.fragment),
        _ => None,
    };
    if let Some(l4) = l4 {
        let key = FlowKey::new(l3.src, l3.dst, l3.v6, l3.proto, l4.sport, l4.dport);
        if FLOWS.get_ptr(&key).is_none() {
            let _ = FLOWS.insert(&key, &FlowValue::new(0), 0);
        }
    }
    xdp_action::XDP_PASS
}

/// The same license as the enforcer's object.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
