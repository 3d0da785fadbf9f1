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
    denial_network, deny_or_pass, expired, icmp_class, on_forward, on_reply, stats_index, Addr,
    AddrInfo, Config, Counter, Decision, DenyReason, FlowKey, FlowValue, FragKey, FragValue,
    IcmpClass, PassReason, Path, PortKey, RuleSet, DEFAULT_FLOW_TABLE_SIZE, FLOW_EVENT_COUNT,
    FLOW_EVENT_CREATED, FLOW_EVENT_EXPIRED, FLOW_EVENT_INSERT_FAILED, FLOW_NEW, FRAG_TABLE_SIZE,
    MAX_CANDIDATES, MAX_PORT_ENTRIES, MAX_PREFIXES, MIN_TCP_FRAG_OFFSET, NO_NETWORK, PROTO_ICMP,
    PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, STATS_LEN,
};

mod events;
mod parse;

use parse::{parse_frame, parse_icmp, parse_quoted, parse_tcp, parse_udp, Parsed, L3, L4};

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
    events::report(&ctx, decision, cfg);
    if decision.drops(cfg.mode) {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
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

/// One address, looked up only when a decision needs it, since the trie walk is the
/// dearest step of the per-packet path.
struct AddrLookup<'a> {
    addr: &'a Addr,
    v6: bool,
    info: Option<AddrInfo>,
    /// Count-scope classes, wanted only by rules that name a count-scope network.
    count: Option<u64>,
}

impl<'a> AddrLookup<'a> {
    #[inline(always)]
    fn new(addr: &'a Addr, v6: bool) -> Self {
        AddrLookup {
            addr,
            v6,
            info: None,
            count: None,
        }
    }

    #[inline(always)]
    fn info(&mut self) -> AddrInfo {
        match self.info {
            Some(info) => info,
            None => {
                let info = lookup(self.addr, self.v6);
                self.info = Some(info);
                info
            }
        }
    }

    #[inline(always)]
    fn count_classes(&mut self) -> u64 {
        match self.count {
            Some(classes) => classes,
            None => {
                let classes = count_classes(self.addr, self.v6);
                self.count = Some(classes);
                classes
            }
        }
    }
}

/// Where a packet's addresses stand: their classes and the enforce-scope network they
/// touch, each looked up on demand. A reply of a tracked flow needs neither; a denied
/// packet to an EMIS network only its destination.
struct Standing<'a> {
    src: AddrLookup<'a>,
    dst: AddrLookup<'a>,
    unset_roles: u64,
    count_mask: u64,
}

impl<'a> Standing<'a> {
    #[inline(always)]
    fn new(src: &'a Addr, dst: &'a Addr, v6: bool, cfg: &Config) -> Self {
        Standing {
            src: AddrLookup::new(src, v6),
            dst: AddrLookup::new(dst, v6),
            unset_roles: cfg.unset_roles,
            count_mask: cfg.count_mask,
        }
    }

    /// The first rule listing `proto`/`port` that the packet matches, forward or (`reply`)
    /// reversed. The count-scope tries are walked only once an entry names a count-scope
    /// network.
    #[inline(always)]
    fn first_match(&mut self, proto: u8, port: u16, reply: bool) -> Option<u32> {
        let set: &RuleSet = unsafe { PORTS.get(PortKey::new(proto, port)) }?;
        let mut src = self.src.info().classes_with(self.unset_roles);
        let mut dst = self.dst.info().classes_with(self.unset_roles);
        let mut with_count = false;
        let len = set.len as usize;
        for i in 0..MAX_CANDIDATES {
            if i >= len {
                break;
            }
            let entry = &set.entries[i];
            if !with_count && (entry.src | entry.dst) & self.count_mask != 0 {
                src |= self.src.count_classes();
                dst |= self.dst.count_classes();
                with_count = true;
            }
            let (from, to) = if reply { (dst, src) } else { (src, dst) };
            if entry.matches(from, to) {
                return Some(entry.rule);
            }
        }
        None
    }

    /// The enforce-scope network a denial is counted under.
    #[inline(always)]
    fn network(&mut self) -> u32 {
        denial_network(self.dst.info().network, || self.src.info().network)
    }

    /// A denial in scope; outside it nothing is denied.
    #[inline(always)]
    fn deny_or_pass(&mut self, reason: DenyReason) -> Decision {
        deny_or_pass(reason, self.network())
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
    let mut standing = Standing::new(&l3.src, &l3.dst, l3.v6, cfg);
    if l3.malformed {
        return standing.deny_or_pass(DenyReason::Malformed);
    }
    if l3.fragment && l3.frag_offset != 0 {
        return later_fragment(&l3, cfg).unwrap_or_else(|reason| standing.deny_or_pass(reason));
    }
    let judged = match l3.proto {
        PROTO_TCP | PROTO_UDP => match transport_header(ctx, &l3) {
            Some(l4) => transport(&l3, &l4, &mut standing, cfg),
            None => Err(DenyReason::Malformed),
        },
        PROTO_ICMP if !l3.v6 => icmp(ctx, &l3, &mut standing, cfg),
        PROTO_ICMPV6 if l3.v6 => icmp(ctx, &l3, &mut standing, cfg),
        _ => Err(DenyReason::Protocol),
    };
    match judged {
        Ok(decision) => {
            if l3.fragment {
                remember_first_fragment(&l3, decision);
            }
            decision
        }
        Err(reason) => standing.deny_or_pass(reason),
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
        None => AddrInfo::OUTSIDE,
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
fn flow_key(l3: &L3, l4: &L4) -> FlowKey {
    FlowKey::new(l3.src, l3.dst, l3.v6, l3.proto, l4.sport, l4.dport)
}

/// TCP and UDP: a forward match, else a reply to a tracked flow (stateful) or to a rule (stateless).
#[inline(always)]
fn transport(
    l3: &L3,
    l4: &L4,
    standing: &mut Standing,
    cfg: &Config,
) -> Result<Decision, DenyReason> {
    if let Some(rule) = standing.first_match(l3.proto, l4.dport, false) {
        if cfg.stateful() {
            track_forward(&flow_key(l3, l4), rule, l4.flags, cfg);
        }
        return Ok(Decision::Allow {
            rule,
            path: Path::Forward,
        });
    }
    if l4.bare_syn() {
        return Err(DenyReason::NoRule);
    }
    let rule = if cfg.stateful() {
        track_reply(&flow_key(l3, l4).reversed(), l4.flags, cfg)
    } else {
        standing.first_match(l3.proto, l4.sport, true)
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
fn flow_expired(flow: &FlowValue, now: u64, cfg: &Config) -> bool {
    expired(flow.last_seen_ns, cfg.lifetime_ns(flow.state), now)
}

/// Records or refreshes the flow a forward packet belongs to.
#[inline(always)]
fn track_forward(key: &FlowKey, rule: u32, flags: u8, cfg: &Config) {
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(flow) = FLOWS.get_ptr_mut(key) {
        let flow = unsafe { &mut *flow };
        let state = if flow_expired(flow, now, cfg) {
            FLOW_NEW
        } else {
            flow.state
        };
        flow.state = on_forward(state, key.proto, flags);
        flow.rule = rule;
        flow.last_seen_ns = now;
        return;
    }
    let flow = FlowValue {
        last_seen_ns: now,
        rule,
        state: on_forward(FLOW_NEW, key.proto, flags),
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
    if flow_expired(unsafe { &*flow }, now, cfg) {
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
    flow.state = on_reply(flow.state, key.proto, flags);
    flow.last_seen_ns = now;
    Some(flow.rule)
}

/// ICMP and ICMPv6: permitted echo, or an error about an allowed flow; nothing else.
#[inline(always)]
fn icmp(
    ctx: &XdpContext,
    l3: &L3,
    standing: &mut Standing,
    cfg: &Config,
) -> Result<Decision, DenyReason> {
    let (kind, _code) = parse_icmp(ctx, l3.l4_offset, l3.l4_len).ok_or(DenyReason::Malformed)?;
    match icmp_class(kind, l3.v6) {
        IcmpClass::Echo if cfg.icmp_echo != 0 && standing.network() != NO_NETWORK => {
            return Ok(Decision::Pass {
                reason: PassReason::IcmpEcho,
            })
        }
        IcmpClass::Error => {}
        IcmpClass::Echo | IcmpClass::Other => return Err(DenyReason::Icmp),
    }
    let quoted = parse_quoted(ctx, l3.l4_offset, l3.l4_len, l3.v6).ok_or(DenyReason::Icmp)?;
    // An error goes back to the sender of the packet it quotes.
    if quoted.src != l3.dst {
        return Err(DenyReason::Icmp);
    }
    let rule = if cfg.stateful() {
        let key = FlowKey::new(
            quoted.src,
            quoted.dst,
            l3.v6,
            quoted.proto,
            quoted.sport,
            quoted.dport,
        );
        let now = unsafe { bpf_ktime_get_ns() };
        match live_flow(&key, now, cfg) {
            Some(flow) => Some(unsafe { (*flow).rule }),
            None => live_flow(&key.reversed(), now, cfg).map(|flow| unsafe { (*flow).rule }),
        }
    } else {
        let mut about = Standing::new(&quoted.src, &quoted.dst, l3.v6, cfg);
        about
            .first_match(quoted.proto, quoted.dport, false)
            .or_else(|| about.first_match(quoted.proto, quoted.sport, true))
    };
    rule.map(|rule| Decision::Allow {
        rule,
        path: Path::Related,
    })
    .ok_or(DenyReason::Icmp)
}

#[inline(always)]
fn frag_key(l3: &L3) -> FragKey {
    FragKey::new(l3.src, l3.dst, l3.v6, l3.proto, l3.frag_id)
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
    if l3.proto == PROTO_TCP && l3.frag_offset < MIN_TCP_FRAG_OFFSET {
        return Err(DenyReason::Malformed);
    }
    let key = frag_key(l3);
    let entry = FRAGS.get_ptr_mut(&key).ok_or(DenyReason::Fragment)?;
    let now = unsafe { bpf_ktime_get_ns() };
    let entry = unsafe { &mut *entry };
    if expired(entry.last_seen_ns, cfg.fragment_timeout_ns, now) {
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
