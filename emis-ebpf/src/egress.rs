//! The TC egress programs (`emis_egress` for Ethernet devices, `emis_egress_l3` for
//! devices without a link header): record allowed flows under the tuple they leave the
//! router with, so their replies match the flow table on the way back in.
//!
//! The XDP program keys a flow by the packet it saw arriving. Two kinds of flow never
//! arrive under the tuple their replies answer: a flow masqueraded (source NAT) on the way
//! out, whose replies come back addressed to the router's address, and a flow the router
//! itself opens, which never crosses XDP at all. TC egress runs after POSTROUTING, so it
//! sees the tuple the replies answer. For each outgoing TCP or UDP packet:
//!
//! - both ends out of enforce scope: nothing to do (no program records such a flow);
//! - its key is in a flow table, recorded by the XDP program: nothing to do (without NAT,
//!   the common case, this costs the port lookup, the destination's address lookup and
//!   one or two flow lookups);
//! - recorded by egress: track it forward (the TCP window tracker needs the forward
//!   direction's segments; lifetimes are refreshed), and promote it once assured;
//! - absent: if the destination side of a rule listing its protocol and destination port
//!   matches, record it in the new-flow table, marked [`FLOW_ORIGIN_EGRESS`]. The source
//!   side counts as matching: the packet either passed the XDP program coming in (an
//!   attached interface), or the router itself sent it.
//!
//! Replies then match on the way in through the XDP program's usual reply path and are
//! counted under the rule as replies. Egress decides and counts no packet (the XDP
//! program counted the forward packet on the way in) and never drops one; it counts only
//! flow events. See docs/DECISIONS.md, "NAT and flows the router opens".

use core::mem::MaybeUninit;

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};
use emis_common::{
    track, AddrInfo, Config, FlowKey, FlowValue, Link, RuleSet, Segment, DIR_FORWARD,
    FLOW_EVENT_EGRESS_CREATED, FLOW_EVENT_EXPIRED, FLOW_EVENT_NEW_CREATED, FLOW_EVENT_NEW_EXPIRED,
    FLOW_EVENT_NEW_INSERT_FAILED, FLOW_ORIGIN_EGRESS, MAX_CANDIDATES, NO_NETWORK, PROTO_TCP,
    PROTO_UDP,
};

use crate::parse::{parse_frame, parse_tcp, parse_udp, L3};
use crate::{
    count_classes, flow_event, live_flow, lookup, new_flow, now, promote, rule_set, segment,
    CONFIG, FLOWS, FLOWS_NEW,
};

/// TCX_NEXT: egress never decides a packet, so programs after it on the interface run
/// as if it were not there (and with none, the packet passes).
const NEXT: i32 = TC_ACT_UNSPEC;

#[classifier]
pub fn emis_egress(ctx: TcContext) -> i32 {
    egress(&ctx, Link::Ethernet);
    NEXT
}

#[classifier]
pub fn emis_egress_l3(ctx: TcContext) -> i32 {
    egress(&ctx, Link::Ip);
    NEXT
}

#[inline(always)]
fn egress(ctx: &TcContext, link: Link) {
    let Some(cfg) = CONFIG.get(0) else {
        return;
    };
    if !cfg.stateful() {
        return;
    }
    let mut l3_slot = MaybeUninit::uninit();
    let l3 = L3::zeroed(&mut l3_slot);
    if parse_frame(ctx, link, l3).is_err() || l3.malformed {
        return;
    }
    // A later fragment has no ports; its first fragment carried the flow.
    if l3.fragment && l3.frag_offset != 0 {
        return;
    }
    let l4 = match l3.proto {
        PROTO_TCP => parse_tcp(ctx, l3.l4_offset, l3.l4_len),
        PROTO_UDP => parse_udp(ctx, l3.l4_offset, l3.l4_len, !l3.fragment),
        _ => None,
    };
    let Some(l4) = l4 else {
        return;
    };
    // Only a port some rule lists can belong to a flow a rule allowed: most packets to the
    // LAN (replies, to ephemeral ports) stop at these two array reads.
    let Some(set) = rule_set(l3.proto, l4.dport) else {
        return;
    };
    // Neither program records a flow whose ends are both out of enforce scope, so such a
    // packet (the LAN's web traffic, on ports the rules list too) needs no flow lookup.
    let dst_info = lookup(&l3.dst, l3.v6);
    if dst_info.network == NO_NETWORK && lookup(&l3.src, l3.v6).network == NO_NETWORK {
        return;
    }
    let key = FlowKey::new(l3.src, l3.dst, l3.v6, l3.proto, l4.sport, l4.dport);
    let seg = segment(ctx, l3, &l4);
    // The flows' clock: the XDP program stamps the same entries with it.
    let now = now();
    let (stored, established) = match live_flow(&FLOWS, &key, now, cfg, FLOW_EVENT_EXPIRED) {
        Some(flow) => (Some(flow), true),
        None => (
            live_flow(&FLOWS_NEW, &key, now, cfg, FLOW_EVENT_NEW_EXPIRED),
            false,
        ),
    };
    if let Some(flow) = stored {
        let flow = unsafe { &mut *flow };
        // The XDP program recorded it on the way in and tracks its forward direction.
        if flow.origin != FLOW_ORIGIN_EGRESS {
            return;
        }
        track_egress(flow, key.proto, &seg, now);
        if !established && flow.assured() {
            promote(&key, flow);
        }
        return;
    }
    let Some(rule) = destination_match(set, l3, dst_info, cfg) else {
        return;
    };
    let mut slot = MaybeUninit::uninit();
    new_flow(slot.as_mut_ptr(), rule);
    let fresh = unsafe { slot.assume_init_mut() };
    track_egress(fresh, key.proto, &seg, now);
    match FLOWS_NEW.insert(&key, fresh, 0) {
        Ok(()) => {
            flow_event(FLOW_EVENT_NEW_CREATED);
            flow_event(FLOW_EVENT_EGRESS_CREATED);
        }
        Err(_) => flow_event(FLOW_EVENT_NEW_INSERT_FAILED),
    }
}

/// Tracks a forward packet of a flow egress owns; the tracker restarts a flow as new on
/// a SYN, so the origin is set again after it.
#[inline(always)]
fn track_egress(flow: &mut FlowValue, proto: u8, seg: &Segment, now: u64) {
    let tracked = track(flow, DIR_FORWARD, proto, seg, now);
    flow.origin = FLOW_ORIGIN_EGRESS;
    if let Some(event) = tracked.event() {
        flow_event(event);
    }
}

/// The first rule of `set` whose destination side holds the packet's destination
/// (`dst_info`), the source side counting as matched.
#[inline(always)]
fn destination_match(set: &RuleSet, l3: &L3, dst_info: AddrInfo, cfg: &Config) -> Option<u32> {
    let mut dst = dst_info.classes_with(cfg.unset_roles);
    let mut with_count = false;
    let len = set.len as usize;
    for i in 0..MAX_CANDIDATES {
        if i >= len {
            break;
        }
        let entry = &set.entries[i];
        if !with_count && entry.dst & cfg.count_mask != 0 {
            dst |= count_classes(&l3.dst, l3.v6);
            with_count = true;
        }
        if entry.dst & dst != 0 {
            return Some(entry.rule);
        }
    }
    None
}
