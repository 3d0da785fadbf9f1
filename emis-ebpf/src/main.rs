//! The emis XDP program: parses each frame, one bounded parser per header, and
//! decides it from the policy maps the loader filled; every decision is counted once.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
    programs::XdpContext,
};
use emis_common::{
    stats_index, AddrInfo, Config, Counter, Decision, DenyReason, PassReason, Path, PortKey,
    RuleSet, MAX_CANDIDATES, MAX_PORT_ENTRIES, MAX_PREFIXES, MODE_AUDIT, NO_NETWORK, PROTO_ICMP,
    PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, STATS_LEN,
};

mod parse;

use parse::{parse_frame, parse_tcp, parse_udp, Parsed};

#[map(name = "EMIS_ADDR_V4")]
static ADDR_V4: LpmTrie<[u8; 4], AddrInfo> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map(name = "EMIS_ADDR_V6")]
static ADDR_V6: LpmTrie<[u8; 16], AddrInfo> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map(name = "EMIS_PORTS")]
static PORTS: HashMap<PortKey, RuleSet> = HashMap::with_max_entries(MAX_PORT_ENTRIES, 0);
#[map(name = "EMIS_CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map(name = "EMIS_STATS")]
static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_LEN, 0);

#[xdp]
pub fn emis(ctx: XdpContext) -> u32 {
    let cfg = match CONFIG.get(0) {
        Some(cfg) => *cfg,
        None => Config::default(),
    };
    let decision = decide(&ctx, &cfg);
    count(&ctx, decision, cfg.mode);
    match decision {
        Decision::Deny { .. } if cfg.mode != MODE_AUDIT => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn count(ctx: &XdpContext, decision: Decision, mode: u32) {
    if let Some(counter) = STATS.get_ptr_mut(stats_index(decision, mode)) {
        let bytes = (ctx.data_end() - ctx.data()) as u64;
        // Per-CPU slot: no other writer, so plain adds are exact.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}

fn decide(ctx: &XdpContext, cfg: &Config) -> Decision {
    let l3 = match parse_frame(ctx) {
        Parsed::NonIp => {
            return Decision::Pass {
                reason: PassReason::NonIp,
            }
        }
        Parsed::Unparsed => {
            return Decision::Pass {
                reason: PassReason::Unparsed,
            }
        }
        Parsed::Ip(l3) => l3,
    };
    let src_classes = classes(&l3.src, cfg);
    let dst_classes = classes(&l3.dst, cfg);
    let network = if l3.dst.network != NO_NETWORK {
        l3.dst.network
    } else {
        l3.src.network
    };
    let in_scope = network != NO_NETWORK;
    let deny_or_pass = |reason| {
        if in_scope {
            Decision::Deny { reason, network }
        } else {
            Decision::Pass {
                reason: PassReason::OutOfScope,
            }
        }
    };
    if l3.malformed {
        return deny_or_pass(DenyReason::Malformed);
    }
    if l3.fragment {
        return deny_or_pass(DenyReason::Fragment);
    }
    let ports = match l3.proto {
        PROTO_TCP => parse_tcp(ctx, l3.l4_offset, l3.l4_len),
        PROTO_UDP => parse_udp(ctx, l3.l4_offset, l3.l4_len),
        PROTO_ICMP | PROTO_ICMPV6 => return deny_or_pass(DenyReason::Icmp),
        _ => return deny_or_pass(DenyReason::Protocol),
    };
    let Some(l4) = ports else {
        return deny_or_pass(DenyReason::Malformed);
    };
    if let Some(rule) = match_rule(l3.proto, l4.dport, src_classes, dst_classes) {
        return Decision::Allow {
            rule,
            path: Path::Forward,
        };
    }
    if !l4.bare_syn {
        if let Some(rule) = match_rule(l3.proto, l4.sport, dst_classes, src_classes) {
            return Decision::Allow {
                rule,
                path: Path::Reply,
            };
        }
    }
    deny_or_pass(DenyReason::NoRule)
}

/// The classes of an address, with unset roles standing for every address outside the enforce scope.
#[inline(always)]
fn classes(info: &AddrInfo, cfg: &Config) -> u64 {
    if info.network == NO_NETWORK {
        info.classes | cfg.unset_roles
    } else {
        info.classes
    }
}

/// The first rule listing `port` whose sources touch `from` and destinations touch `to`.
#[inline(always)]
fn match_rule(proto: u8, port: u16, from: u64, to: u64) -> Option<u32> {
    let set = unsafe { PORTS.get(PortKey::new(proto, port)) }?;
    let len = set.len as usize;
    for i in 0..MAX_CANDIDATES {
        if i >= len {
            break;
        }
        let entry = &set.entries[i];
        if entry.src & from != 0 && entry.dst & to != 0 {
            return Some(entry.rule);
        }
    }
    None
}

/// The kernel checks the license before it lets a program call GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
