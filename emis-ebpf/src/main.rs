//! The emis XDP program: parses each frame (`parse`), decides it from the policy maps the
//! loader filled and the flows it has allowed, and counts every decision once.
#![no_std]
#![no_main]
// Map keys go by reference: a copy per call would cost BPF stack, of which there is 512 bytes.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use emis_common::{
    flow_state_slot, stats_index, AddrInfo, Config, Counter, Decision, DenyReason, FlowKey,
    FlowValue, FragKey, FragValue, PassReason, Path, PortKey, RuleSet, DEFAULT_FLOW_TABLE_SIZE,
    FLOW_EVENT_COUNT, FLOW_EVENT_CREATED, FLOW_EVENT_EXPIRED, FLOW_EVENT_INSERT_FAILED,
    FLOW_TCP_CLOSING, FLOW_TCP_ESTABLISHED, FLOW_TCP_SYN_SENT, FLOW_UDP, FRAG_TABLE_SIZE,
    MAX_CANDIDATES, MAX_PORT_ENTRIES, MAX_PREFIXES, MODE_AUDIT, NO_NETWORK, PROTO_ICMP,
    PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, REPLIES_STATEFUL, STATS_LEN,
};

mod parse;

use parse::{
    parse_frame, parse_icmp, parse_quoted, parse_tcp, parse_udp, Addr, Parsed, L3, L4, TCP_ACK,
    TCP_FIN, TCP_RST, TCP_SYN,
};

#[map(name = "EMIS_ADDR_V4")]
static ADDR_V4: LpmTrie<[u8; 4], AddrInfo> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map(name = "EMIS_ADDR_V6")]
static ADDR_V6: LpmTrie<[u8; 16], AddrInfo> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map(name = "EMIS_COUNT_V4")]
static COUNT_V4: LpmTrie<[u8; 4], u64> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map(name = "EMIS_COUNT_V6")]
static COUNT_V6: LpmTrie<[u8; 16], u64> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map(name = "EMIS_PORTS")]
static PORTS: HashMap<PortKey, RuleSet> = HashMap::with_max_entries(MAX_PORT_ENTRIES, 0);
#[map(name = "EMIS_CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map(name = "EMIS_STATS")]
static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_LEN, 0);
/// Shared by every interface the program is attached to, so a reply may arrive on another one.
#[map(name = "EMIS_FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, 0);
#[map(name = "EMIS_FRAGS")]
static FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::with_max_entries(FRAG_TABLE_SIZE, 0);
#[map(name = "EMIS_FLOW_EVENTS")]
static FLOW_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(FLOW_EVENT_COUNT, 0);

#[xdp]
pub fn emis(ctx: XdpContext) -> u32 {
    // The loader fills the config before it attaches the program; read it in place.
    let Some(cfg) = CONFIG.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let decision = decide(&ctx, cfg);
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

#[inline(always)]
fn flow_event(event: u32) {
    if let Some(n) = FLOW_EVENTS.get_ptr_mut(event) {
        unsafe { *n += 1 };
    }
}

/// Where the packet's addresses stand: their classes and the enforce-scope network they
/// touch. Each address is looked up only when a decision needs it, since the trie walk is
/// the dearest step of the per-packet path: a reply of a tracked flow needs neither, a
/// denied packet to an EMIS network only its destination.
struct Scope<'a> {
    l3: &'a L3,
    unset_roles: u64,
    count_mask: u64,
    src: Option<AddrInfo>,
    dst: Option<AddrInfo>,
    /// Count-scope classes, wanted only by rules that name a count-scope network.
    src_count: Option<u64>,
    dst_count: Option<u64>,
}

impl<'a> Scope<'a> {
    #[inline(always)]
    fn new(l3: &'a L3, cfg: &Config) -> Self {
        Scope {
            l3,
            unset_roles: cfg.unset_roles,
            count_mask: cfg.count_mask,
            src: None,
            dst: None,
            src_count: None,
            dst_count: None,
        }
    }

    #[inline(always)]
    fn src_info(&mut self) -> AddrInfo {
        match self.src {
            Some(info) => info,
            None => {
                let info = lookup(&self.l3.src, self.l3.v6);
                self.src = Some(info);
                info
            }
        }
    }

    #[inline(always)]
    fn dst_info(&mut self) -> AddrInfo {
        match self.dst {
            Some(info) => info,
            None => {
                let info = lookup(&self.l3.dst, self.l3.v6);
                self.dst = Some(info);
                info
            }
        }
    }

    #[inline(always)]
    fn src_classes(&mut self) -> u64 {
        classes(&self.src_info(), self.unset_roles)
    }

    #[inline(always)]
    fn dst_classes(&mut self) -> u64 {
        classes(&self.dst_info(), self.unset_roles)
    }

    #[inline(always)]
    fn src_count(&mut self) -> u64 {
        match self.src_count {
            Some(classes) => classes,
            None => {
                let classes = count_classes(&self.l3.src, self.l3.v6);
                self.src_count = Some(classes);
                classes
            }
        }
    }

    #[inline(always)]
    fn dst_count(&mut self) -> u64 {
        match self.dst_count {
            Some(classes) => classes,
            None => {
                let classes = count_classes(&self.l3.dst, self.l3.v6);
                self.dst_count = Some(classes);
                classes
            }
        }
    }

    /// The first rule of `set` that the packet matches, forward or (`reply`) reversed. The
    /// count-scope tries are walked only once an entry names a count-scope network.
    #[inline(always)]
    fn first_match(&mut self, set: &RuleSet, reply: bool) -> Option<u32> {
        let (mut src, mut dst) = (self.src_classes(), self.dst_classes());
        let mut with_count = false;
        let len = set.len as usize;
        for i in 0..MAX_CANDIDATES {
            if i >= len {
                break;
            }
            let entry = &set.entries[i];
            if !with_count && (entry.src | entry.dst) & self.count_mask != 0 {
                src |= self.src_count();
                dst |= self.dst_count();
                with_count = true;
            }
            let (from, to) = if reply { (dst, src) } else { (src, dst) };
            if entry.src & from != 0 && entry.dst & to != 0 {
                return Some(entry.rule);
            }
        }
        None
    }

    /// The enforce-scope network a denial is counted under: the destination's, else the source's.
    #[inline(always)]
    fn network(&mut self) -> u32 {
        let dst = self.dst_info().network;
        if dst != NO_NETWORK {
            dst
        } else {
            self.src_info().network
        }
    }

    /// A denial in scope; outside it nothing is denied.
    #[inline(always)]
    fn deny_or_pass(&mut self, reason: DenyReason) -> Decision {
        let network = self.network();
        if network != NO_NETWORK {
            Decision::Deny { reason, network }
        } else {
            Decision::Pass {
                reason: PassReason::OutOfScope,
            }
        }
    }
}

#[inline(always)]
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
    let mut scope = Scope::new(&l3, cfg);
    if l3.malformed {
        return scope.deny_or_pass(DenyReason::Malformed);
    }
    if l3.fragment && l3.frag_offset != 0 {
        return later_fragment(&l3, cfg).unwrap_or_else(|reason| scope.deny_or_pass(reason));
    }
    let judged = match l3.proto {
        PROTO_TCP | PROTO_UDP => match transport_header(ctx, &l3) {
            Some(l4) => transport(&l3, &l4, &mut scope, cfg),
            None => Err(DenyReason::Malformed),
        },
        PROTO_ICMP if !l3.v6 => icmp(ctx, &l3, &mut scope, cfg),
        PROTO_ICMPV6 if l3.v6 => icmp(ctx, &l3, &mut scope, cfg),
        _ => Err(DenyReason::Protocol),
    };
    match judged {
        Ok(decision) => {
            if l3.fragment {
                remember_first_fragment(&l3, decision);
            }
            decision
        }
        Err(reason) => scope.deny_or_pass(reason),
    }
}

#[inline(always)]
fn lookup(addr: &Addr, v6: bool) -> AddrInfo {
    let found = if v6 {
        ADDR_V6.get(Key::new(128, *addr))
    } else {
        ADDR_V4.get(Key::new(32, [addr[0], addr[1], addr[2], addr[3]]))
    };
    match found {
        Some(info) => *info,
        None => AddrInfo {
            classes: 0,
            network: NO_NETWORK,
            _pad: 0,
        },
    }
}

/// The classes of the count-scope networks holding an address.
#[inline(always)]
fn count_classes(addr: &Addr, v6: bool) -> u64 {
    let found = if v6 {
        COUNT_V6.get(Key::new(128, *addr))
    } else {
        COUNT_V4.get(Key::new(32, [addr[0], addr[1], addr[2], addr[3]]))
    };
    found.copied().unwrap_or(0)
}

/// The classes of an address, with unset roles standing for every address outside the enforce scope.
#[inline(always)]
fn classes(info: &AddrInfo, unset_roles: u64) -> u64 {
    if info.network == NO_NETWORK {
        info.classes | unset_roles
    } else {
        info.classes
    }
}

/// The rules that list `port`, if any.
#[inline(always)]
fn rules_for(proto: u8, port: u16) -> Option<&'static RuleSet> {
    unsafe { PORTS.get(PortKey::new(proto, port)) }
}

/// The first rule of `set` whose sources touch `from` and destinations touch `to`.
#[inline(always)]
fn first_match(set: &RuleSet, from: u64, to: u64) -> Option<u32> {
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

#[inline(always)]
fn transport_header(ctx: &XdpContext, l3: &L3) -> Option<L4> {
    if l3.proto == PROTO_TCP {
        parse_tcp(ctx, l3.l4_offset, l3.l4_len)
    } else {
        // A first fragment holds only part of the datagram the UDP length describes.
        parse_udp(ctx, l3.l4_offset, l3.l4_len, !l3.fragment)
    }
}

#[inline(always)]
fn flow_key(l3: &L3, sport: u16, dport: u16) -> FlowKey {
    FlowKey {
        src: l3.src,
        dst: l3.dst,
        sport,
        dport,
        proto: l3.proto,
        family: if l3.v6 { 6 } else { 4 },
        _pad: [0; 2],
    }
}

/// TCP and UDP: a forward match, else a reply to a tracked flow (stateful) or to a rule (stateless).
#[inline(always)]
fn transport(l3: &L3, l4: &L4, scope: &mut Scope, cfg: &Config) -> Result<Decision, DenyReason> {
    let stateful = cfg.replies == REPLIES_STATEFUL;
    let forward = rules_for(l3.proto, l4.dport).and_then(|set| scope.first_match(set, false));
    if let Some(rule) = forward {
        if stateful {
            track_forward(&flow_key(l3, l4.sport, l4.dport), rule, l4.flags, cfg);
        }
        return Ok(Decision::Allow {
            rule,
            path: Path::Forward,
        });
    }
    if l4.bare_syn() {
        return Err(DenyReason::NoRule);
    }
    let rule = if stateful {
        track_reply(&flow_key(l3, l4.sport, l4.dport).reversed(), l4.flags, cfg)
    } else {
        rules_for(l3.proto, l4.sport).and_then(|set| scope.first_match(set, true))
    };
    match rule {
        Some(rule) => Ok(Decision::Allow {
            rule,
            path: Path::Reply,
        }),
        None => Err(DenyReason::NoRule),
    }
}

#[inline(always)]
fn lifetime_ns(state: u32, cfg: &Config) -> u64 {
    match cfg.flow_timeouts_ns.get(flow_state_slot(state)) {
        Some(ns) => *ns,
        None => 0,
    }
}

#[inline(always)]
fn expired(flow: &FlowValue, now: u64, cfg: &Config) -> bool {
    now.saturating_sub(flow.last_seen_ns) > lifetime_ns(flow.state, cfg)
}

/// The state a flow moves to on a packet in its forward direction.
#[inline(always)]
fn forward_state(state: u32, proto: u8, flags: u8) -> u32 {
    if proto != PROTO_TCP {
        FLOW_UDP
    } else if flags & (TCP_FIN | TCP_RST) != 0 {
        FLOW_TCP_CLOSING
    } else if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        FLOW_TCP_SYN_SENT
    } else if state == 0 {
        // Picked up mid-stream (emis started after the handshake): the rule allows it anyway.
        FLOW_TCP_ESTABLISHED
    } else {
        state
    }
}

/// The state a flow moves to on a reply.
#[inline(always)]
fn reply_state(state: u32, proto: u8, flags: u8) -> u32 {
    if proto != PROTO_TCP {
        FLOW_UDP
    } else if flags & (TCP_FIN | TCP_RST) != 0 {
        FLOW_TCP_CLOSING
    } else if state == FLOW_TCP_SYN_SENT && flags & TCP_ACK != 0 {
        FLOW_TCP_ESTABLISHED
    } else {
        state
    }
}

/// Records or refreshes the flow a forward packet belongs to.
#[inline(always)]
fn track_forward(key: &FlowKey, rule: u32, flags: u8, cfg: &Config) {
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(flow) = FLOWS.get_ptr_mut(key) {
        let flow = unsafe { &mut *flow };
        let state = if expired(flow, now, cfg) {
            0
        } else {
            flow.state
        };
        flow.state = forward_state(state, key.proto, flags);
        flow.rule = rule;
        flow.last_seen_ns = now;
        return;
    }
    let flow = FlowValue {
        last_seen_ns: now,
        rule,
        state: forward_state(0, key.proto, flags),
    };
    match FLOWS.insert(key, &flow, 0) {
        Ok(()) => flow_event(FLOW_EVENT_CREATED),
        Err(_) => flow_event(FLOW_EVENT_INSERT_FAILED),
    }
}

/// The live flow under `key`; an expired one is removed.
#[inline(always)]
fn live_flow(key: &FlowKey, now: u64, cfg: &Config) -> Option<*mut FlowValue> {
    let flow = FLOWS.get_ptr_mut(key)?;
    if expired(unsafe { &*flow }, now, cfg) {
        if FLOWS.remove(key).is_ok() {
            flow_event(FLOW_EVENT_EXPIRED);
        }
        return None;
    }
    Some(flow)
}

/// The rule of the tracked flow a reply answers, refreshing it; `key` is the flow's forward key.
#[inline(always)]
fn track_reply(key: &FlowKey, flags: u8, cfg: &Config) -> Option<u32> {
    let now = unsafe { bpf_ktime_get_ns() };
    let flow = unsafe { &mut *live_flow(key, now, cfg)? };
    flow.state = reply_state(flow.state, key.proto, flags);
    flow.last_seen_ns = now;
    Some(flow.rule)
}

/// ICMP and ICMPv6: permitted echo, or an error about an allowed flow; nothing else.
#[inline(always)]
fn icmp(
    ctx: &XdpContext,
    l3: &L3,
    scope: &mut Scope,
    cfg: &Config,
) -> Result<Decision, DenyReason> {
    let (kind, _code) = parse_icmp(ctx, l3.l4_offset, l3.l4_len).ok_or(DenyReason::Malformed)?;
    let (echo, error) = if l3.v6 {
        (kind == 128 || kind == 129, (1..=4).contains(&kind))
    } else {
        (
            kind == 8 || kind == 0,
            kind == 3 || kind == 11 || kind == 12,
        )
    };
    if echo {
        return if cfg.icmp_echo != 0 && scope.network() != NO_NETWORK {
            Ok(Decision::Pass {
                reason: PassReason::IcmpEcho,
            })
        } else {
            Err(DenyReason::Icmp)
        };
    }
    if !error {
        return Err(DenyReason::Icmp);
    }
    let quoted = parse_quoted(ctx, l3.l4_offset, l3.l4_len, l3.v6).ok_or(DenyReason::Icmp)?;
    // An error goes back to the sender of the packet it quotes.
    if quoted.src != l3.dst {
        return Err(DenyReason::Icmp);
    }
    let rule = if cfg.replies == REPLIES_STATEFUL {
        let key = FlowKey {
            src: quoted.src,
            dst: quoted.dst,
            sport: quoted.sport,
            dport: quoted.dport,
            proto: quoted.proto,
            family: if l3.v6 { 6 } else { 4 },
            _pad: [0; 2],
        };
        let now = unsafe { bpf_ktime_get_ns() };
        match live_flow(&key, now, cfg) {
            Some(flow) => Some(unsafe { (*flow).rule }),
            None => live_flow(&key.reversed(), now, cfg).map(|flow| unsafe { (*flow).rule }),
        }
    } else {
        let from = classes(&lookup(&quoted.src, l3.v6), cfg.unset_roles)
            | count_classes(&quoted.src, l3.v6);
        let to = classes(&lookup(&quoted.dst, l3.v6), cfg.unset_roles)
            | count_classes(&quoted.dst, l3.v6);
        rules_for(quoted.proto, quoted.dport)
            .and_then(|set| first_match(set, from, to))
            .or_else(|| {
                rules_for(quoted.proto, quoted.sport).and_then(|set| first_match(set, to, from))
            })
    };
    rule.map(|rule| Decision::Allow {
        rule,
        path: Path::Related,
    })
    .ok_or(DenyReason::Icmp)
}

#[inline(always)]
fn frag_key(l3: &L3) -> FragKey {
    FragKey {
        src: l3.src,
        dst: l3.dst,
        id: l3.frag_id,
        proto: l3.proto,
        family: if l3.v6 { 6 } else { 4 },
        _pad: [0; 2],
    }
}

/// An allowed first fragment lets the rest of its datagram through under the same rule.
#[inline(always)]
fn remember_first_fragment(l3: &L3, decision: Decision) {
    if let Decision::Allow { rule, path } = decision {
        let value = FragValue {
            last_seen_ns: unsafe { bpf_ktime_get_ns() },
            rule,
            path: path as u32,
        };
        let _ = FRAGS.insert(&frag_key(l3), &value, 0);
    }
}

/// A later fragment shares its first fragment's decision, if that was an allowance.
#[inline(always)]
fn later_fragment(l3: &L3, cfg: &Config) -> Result<Decision, DenyReason> {
    // A TCP fragment at offset 8 or 16 would overwrite the ports or flags the first one showed.
    if l3.proto == PROTO_TCP && l3.frag_offset < 3 {
        return Err(DenyReason::Malformed);
    }
    let key = frag_key(l3);
    let entry = FRAGS.get_ptr_mut(&key).ok_or(DenyReason::Fragment)?;
    let now = unsafe { bpf_ktime_get_ns() };
    let entry = unsafe { &mut *entry };
    if now.saturating_sub(entry.last_seen_ns) > cfg.fragment_timeout_ns {
        let _ = FRAGS.remove(&key);
        return Err(DenyReason::Fragment);
    }
    entry.last_seen_ns = now;
    Ok(Decision::Allow {
        rule: entry.rule,
        path: Path::from_raw(entry.path),
    })
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
