//! The emis XDP programs: parse each frame (`parse`), decide it from the policy maps the
//! loader filled and the flows they have allowed, and count every decision once. `emis`
//! reads frames from an Ethernet header, `emis_l3` from the IP header (devices without a
//! link header); both share every map and every line after the first header.
#![no_std]
#![no_main]
// Map keys go by reference: a copy per call would cost BPF stack, of which there is 512 bytes.
#![allow(clippy::needless_borrows_for_generic_args)]

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_ktime_get_coarse_ns,
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, LpmTrie, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use emis_common::{
    addr_v4_slot, count_v4_lookup, count_v6_bit, denial_network, deny_or_pass, expired, icmp_class,
    is_bare_syn, new_flow_table_size, port_slot, stateless_reply, stats_index, tcp_header_len,
    track, Addr, AddrBucket, AddrInfo, AddrListV6, Config, CountChunk, Counter, Decision,
    DenyReason, FlowKey, FlowValue, FragKey, FragValue, IcmpClass, Link, PassReason, Path, RuleSet,
    Segment, Tracked, ADDR_V4_SLOTS, COUNT_V4_CODES, COUNT_V4_SLOTS, COUNT_V6_FILTER_WORDS,
    DEFAULT_FLOW_TABLE_SIZE, DIR_FORWARD, DIR_REPLY, FLOW_EVENT_COUNT, FLOW_EVENT_CREATED,
    FLOW_EVENT_EXPIRED, FLOW_EVENT_INSERT_FAILED, FLOW_EVENT_NEW_CREATED, FLOW_EVENT_NEW_EXPIRED,
    FLOW_EVENT_NEW_INSERT_FAILED, FLOW_EVENT_NEW_PROMOTED, FLOW_EVENT_UNTRACKED, FRAG_TABLE_SIZE,
    MAX_ADDR_V4_BUCKETS, MAX_CANDIDATES, MAX_COUNT_V4_CHUNKS, MAX_L4_OFFSET, MAX_LEARNED_ENTRIES,
    MAX_PREFIXES, MAX_RULE_SETS, MIN_TCP_FRAG_OFFSET, NO_NETWORK, PORT_SLOTS, PROTO_ICMP,
    PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, STATS_LEN, TCP_ACK, TCP_HLEN, TCP_SYN,
};

mod dns;
mod egress;
mod events;
mod iface;
mod learned;
mod parse;
mod trace;
mod zero;

use parse::{bytes_at, parse_frame, parse_icmp, parse_quoted, parse_tcp, parse_udp, Frame, L3, L4};

#[map(name = "EMIS_ADDR_V4")]
static ADDR_V4: LpmTrie<[u8; 4], AddrInfo> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map(name = "EMIS_ADDR_V6")]
static ADDR_V6: LpmTrie<[u8; 16], AddrInfo> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map(name = "EMIS_ADDR_V4_INDEX")]
static ADDR_V4_INDEX: Array<u32> = Array::with_max_entries(ADDR_V4_SLOTS, 0);
#[map(name = "EMIS_ADDR_V4_BUCKETS")]
static ADDR_V4_BUCKETS: Array<AddrBucket> = Array::with_max_entries(MAX_ADDR_V4_BUCKETS, 0);
#[map(name = "EMIS_ADDR_V6_LIST")]
static ADDR_V6_LIST: Array<AddrListV6> = Array::with_max_entries(1, 0);
#[map(name = "EMIS_COUNT_V4")]
static COUNT_V4: LpmTrie<[u8; 4], u64> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map(name = "EMIS_COUNT_V4_INDEX")]
static COUNT_V4_INDEX: Array<u32> = Array::with_max_entries(COUNT_V4_SLOTS, 0);
#[map(name = "EMIS_COUNT_V4_CHUNKS")]
static COUNT_V4_CHUNKS: Array<CountChunk> = Array::with_max_entries(MAX_COUNT_V4_CHUNKS, 0);
#[map(name = "EMIS_COUNT_V4_SETS")]
static COUNT_V4_SETS: Array<u64> = Array::with_max_entries(COUNT_V4_CODES, 0);
#[map(name = "EMIS_COUNT_V6_FILTER")]
static COUNT_V6_FILTER: Array<u64> = Array::with_max_entries(COUNT_V6_FILTER_WORDS, 0);
#[map(name = "EMIS_COUNT_V6")]
static COUNT_V6: LpmTrie<[u8; 16], u64> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map(name = "EMIS_PORT_INDEX")]
static PORTS: Array<u16> = Array::with_max_entries(PORT_SLOTS, 0);
#[map(name = "EMIS_RULE_SETS")]
static RULE_SETS: Array<RuleSet> = Array::with_max_entries(MAX_RULE_SETS, 0);
#[map(name = "EMIS_CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map(name = "EMIS_STATS")]
static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_LEN, 0);
/// Established flows. Both flow tables are shared by every interface the program is
/// attached to, so a reply may arrive on another one.
#[map(name = "EMIS_FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, 0);
/// New and half-open flows, until they are assured and promoted into [`FLOWS`].
#[map(name = "EMIS_FLOWS_NEW")]
static FLOWS_NEW: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(new_flow_table_size(DEFAULT_FLOW_TABLE_SIZE), 0);
#[map(name = "EMIS_FRAGS")]
static FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::with_max_entries(FRAG_TABLE_SIZE, 0);
#[map(name = "EMIS_FLOW_EVENTS")]
static FLOW_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(FLOW_EVENT_COUNT, 0);
/// Per-CPU room for what would not fit the 512-byte stack a call chain shares (see [`Scratch`]).
#[map(name = "EMIS_SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Working memory of one packet, in a per-CPU map value rather than on the stack: the
/// flow tracker's key, segment and new entry (120 bytes the main frame would otherwise
/// carry beside the parser's), and where the L4 header starts (see [`forget_parse_path`]).
/// A CPU runs one XDP program at a time, so one slot per CPU is enough.
#[repr(C)]
struct Scratch {
    l4_at: [u64; 2],
    key: FlowKey,
    fresh: FlowValue,
    seg: Segment,
    frag: FragKey,
    frag_value: FragValue,
    lpm_v4: Key<[u8; 4]>,
    lpm_v6: Key<[u8; 16]>,
}

/// This CPU's [`Scratch`]; `None` only if the one-slot array were missing, which the
/// loader rules out.
#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

// Inline into the entry the macro wraps it in: left as a function of its own, every
// packet paid a BPF-to-BPF call (7 to 8 ns, measured) before its first instruction.
#[xdp]
#[inline(always)]
pub fn emis(ctx: XdpContext) -> u32 {
    enforce(&ctx, Link::Ethernet)
}

#[xdp]
#[inline(always)]
pub fn emis_l3(ctx: XdpContext) -> u32 {
    enforce(&ctx, Link::Ip)
}

#[inline(always)]
fn enforce(ctx: &XdpContext, link: Link) -> u32 {
    // The loader fills the config before it attaches the program; read it in place.
    let Some(cfg) = CONFIG.get(0) else {
        return xdp_action::XDP_PASS;
    };
    // Read once: a mode switch mid-packet must not count one mode and act on the other.
    let mode = unsafe { core::ptr::read_volatile(&cfg.mode) };
    // Opaque to LLVM, so both programs compile to the same code and stack frame; the
    // verifier still sees the constant and skips the other link's parser. Specialised
    // per link, LLVM laid out emis_l3's frame 16 bytes larger, past the 512-byte stack
    // once the flow tracker's frame is added.
    let link = core::hint::black_box(link);
    let decision = decide(ctx, cfg, link);
    // The event first: from here on only scalars are live (the counter slots and the
    // verdict), so counting in two arrays takes no more of the 512-byte stack than one.
    events::report(ctx, decision);
    let drop = decision.drops(mode);
    count(ctx, decision, mode);
    if drop {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[inline(always)]
fn count(ctx: &XdpContext, decision: Decision, mode: u32) {
    let slot = stats_index(decision, mode);
    let iface_slot = iface::slot(ctx, decision, mode);
    iface::add(&STATS, slot, ctx);
    iface::add(iface::stats(), iface_slot, ctx);
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
}

impl<'a> AddrLookup<'a> {
    #[inline(always)]
    fn new(addr: &'a Addr, v6: bool) -> Self {
        AddrLookup {
            addr,
            v6,
            info: None,
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

    /// Count-scope classes, wanted only by rules that name a count-scope network. Not
    /// cached: a cache flag would double the verifier's states through the rule loop,
    /// and a packet needs each side at most once.
    #[inline(always)]
    fn count_classes(&self) -> u64 {
        count_classes(self.addr, self.v6)
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
    /// reversed. A side's count-scope trie is walked only if its classes could decide an
    /// entry before the first that matches without them (see [`count_needed`]). `LEARN`
    /// (a forward TCP or UDP packet, never `reply`): if the destination was learned from
    /// DNS for names some rule on this port names, the first of those rules that matches
    /// wins ([`learned_match`]); the learned map is read only for a port that a rule
    /// naming hostnames lists.
    #[inline(always)]
    fn first_match<const LEARN: bool>(&mut self, proto: u8, port: u16, reply: bool) -> Option<u32> {
        let set = rule_set(proto, port)?;
        let (src_info, dst_info) = (self.src.info(), self.dst.info());
        let src = src_info.classes_with(self.unset_roles);
        let dst = dst_info.classes_with(self.unset_roles);
        // In the rule's direction: a reply is the rule's traffic reversed.
        let (mut from, mut to) = if reply { (dst, src) } else { (src, dst) };
        // The port's and the filter's checks here, so most packets skip the call.
        if LEARN && set.hostnames != 0 && learned::may_be_learned(self.dst.addr, self.dst.v6) {
            // LEARN is a forward packet's walk: the destination is the rule's destination.
            let mut flags = 0;
            if self.dst.v6 {
                flags |= LEARN_V6;
            }
            if src_info.network == NO_NETWORK && dst_info.network == NO_NETWORK {
                flags |= LEARN_OUT_OF_SCOPE;
            }
            let rule = learned_match(set, self.dst.addr, flags, from, to);
            if rule != NO_RULE {
                return Some(rule);
            }
        }
        let (from_needs, to_needs) = count_needed(set, from, to, self.count_mask);
        // An address in an enforce-scope network is in no count-scope network (the spec
        // refuses such overlaps), so its count trie is never walked.
        let (src_counts, dst_counts) = (
            src_info.network == NO_NETWORK,
            dst_info.network == NO_NETWORK,
        );
        let (from_needs, to_needs) = if reply {
            (from_needs && dst_counts, to_needs && src_counts)
        } else {
            (from_needs && src_counts, to_needs && dst_counts)
        };
        if from_needs {
            from |= if reply {
                self.dst.count_classes()
            } else {
                self.src.count_classes()
            };
        }
        if to_needs {
            to |= if reply {
                self.src.count_classes()
            } else {
                self.dst.count_classes()
            };
        }
        let len = set.len as usize;
        for i in 0..MAX_CANDIDATES {
            if i >= len {
                break;
            }
            let entry = &set.entries[i];
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

/// `first_match`'s walk for a destination learned from DNS: the first of the rules
/// `addr` was learned for (spec order, as the daemon wrote them) that lists this port
/// (its group is in the port's set) and whose networks match `from` and `to`, or
/// [`NO_RULE`]. `flags` holds `LEARN_*` bits (the port stays out of them: a value the
/// walk compares would keep the verifier from merging states). In the walk the
/// destination's count-scope classes are those it was learned for, and only when the
/// packet is out of enforce scope (`LEARN_OUT_OF_SCOPE`), so a learned address never
/// allows anything there. Out of line, so the packet path carries one call; called only
/// for a port a hostname rule lists and an address whose learned-filter bit is set.
#[inline(never)]
fn learned_match(set: &RuleSet, addr: &Addr, flags: u32, from: u64, to: u64) -> u32 {
    let Some(learned) = learned::lookup(addr, flags & LEARN_V6 != 0) else {
        return NO_RULE;
    };
    let to = if flags & LEARN_OUT_OF_SCOPE != 0 {
        to | learned.count_classes
    } else {
        to
    };
    let len = learned.len as usize;
    for i in 0..MAX_LEARNED_ENTRIES {
        if i >= len {
            break;
        }
        let entry = &learned.entries[i];
        if entry.matches(set.hostnames, from, to) {
            return entry.rule;
        }
    }
    NO_RULE
}

const LEARN_V6: u32 = 1;
const LEARN_OUT_OF_SCOPE: u32 = 2;
/// [`learned_match`]'s "none".
const NO_RULE: u32 = u32::MAX;

#[inline(always)]
fn decide(ctx: &XdpContext, cfg: &Config, link: Link) -> Decision {
    let mut slot = MaybeUninit::uninit();
    let l3 = L3::zeroed(&mut slot);
    if let Err(reason) = parse_frame(ctx, link, l3) {
        return Decision::Pass { reason };
    }
    if !forget_parse_path(l3) {
        return Decision::Pass {
            reason: PassReason::Unparsed,
        };
    }
    let mut standing = Standing::new(&l3.src, &l3.dst, l3.v6, cfg);
    if l3.malformed {
        return standing.deny_or_pass(DenyReason::Malformed);
    }
    if l3.fragment && l3.frag_offset != 0 {
        return later_fragment(l3, cfg).unwrap_or_else(|reason| standing.deny_or_pass(reason));
    }
    let judged = match l3.proto {
        PROTO_TCP | PROTO_UDP => match transport_header(ctx, l3) {
            Some(l4) => {
                // DNS answers to the daemon, DoT counted; the verdict is not touched.
                dns::observe(ctx, l3.proto, l4.sport, l4.dport, l3.l4_offset, l3.l4_len);
                transport(ctx, l3, &l4, &mut standing, cfg)
            }
            None => Err(DenyReason::Malformed),
        },
        PROTO_ICMP if !l3.v6 => icmp(ctx, l3, &mut standing, cfg),
        PROTO_ICMPV6 if l3.v6 => icmp(ctx, l3, &mut standing, cfg),
        _ => Err(DenyReason::Protocol),
    };
    match judged {
        Ok(decision) => {
            if l3.fragment {
                remember_first_fragment(l3, decision);
            }
            decision
        }
        Err(reason) => standing.deny_or_pass(reason),
    }
}

/// Every parse path (VLAN tags, PPPoE, IPv4 options, IPv6 extension headers) leaves the
/// L4 header at an offset of its own, which the verifier would track exactly and so
/// verify everything after parsing once per path, most of its budget. A round trip
/// through a map value turns offset and length into values it cannot know, the same on
/// every path; the readers after this bound them again before touching the frame.
/// `false` only if the one-slot per-CPU array were missing, which the loader rules out.
#[inline(always)]
fn forget_parse_path(l3: &mut L3) -> bool {
    let Some(room) = scratch() else {
        return false;
    };
    let slot = &mut room.l4_at as *mut [u64; 2];
    unsafe {
        core::ptr::write_volatile(slot, [l3.l4_offset as u64, l3.l4_len as u64]);
        let [offset, len] = core::ptr::read_volatile(slot);
        l3.l4_offset = offset as usize;
        l3.l4_len = len as usize;
    }
    true
}

/// The rules listing `proto`/`port`: two array reads, which the verifier inlines.
#[inline(always)]
fn rule_set(proto: u8, port: u16) -> Option<&'static RuleSet> {
    let index = *PORTS.get(port_slot(proto, port)?)?;
    if index == 0 {
        return None;
    }
    RULE_SETS.get(index as u32)
}

/// The classes of an IPv4 address from the /16 index and its bucket; `None` when its
/// /16 holds more prefixes than a bucket and the trie must answer.
#[inline(always)]
fn lookup_v4_table(addr: &Addr) -> Option<AddrInfo> {
    let addr = u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]);
    let index = *ADDR_V4_INDEX.get(addr_v4_slot(addr))?;
    if index == 0 {
        return Some(AddrInfo::OUTSIDE);
    }
    ADDR_V4_BUCKETS.get(index)?.find(addr)
}

#[inline(always)]
fn lookup(addr: &Addr, v6: bool) -> AddrInfo {
    let listed = if v6 {
        ADDR_V6_LIST
            .get(0)
            .and_then(|list| list.find(AddrListV6::halves(addr)))
    } else {
        lookup_v4_table(addr)
    };
    if let Some(info) = listed {
        return info;
    }
    let Some(room) = scratch() else {
        return AddrInfo::OUTSIDE;
    };
    let found = if v6 {
        room.lpm_v6 = Key::new(128, *addr);
        ADDR_V6.get(&room.lpm_v6)
    } else {
        room.lpm_v4 = Key::new(32, [addr[0], addr[1], addr[2], addr[3]]);
        ADDR_V4.get(&room.lpm_v4)
    };
    match found {
        Some(info) => *info,
        None => AddrInfo::OUTSIDE,
    }
}

/// Whether the count-scope classes of the rule's source (`from`) and destination (`to`)
/// sides could change which entry of `set` matches first: only entries before the first
/// that matches without them can, and on one side only where the entry names a
/// count-scope network and its other side matches or might through its own. Plain bit
/// arithmetic, so the verifier meets one state after the loop.
#[inline(always)]
fn count_needed(set: &RuleSet, from: u64, to: u64, count_mask: u64) -> (bool, bool) {
    let (mut from_wants, mut to_wants) = (0u64, 0u64);
    let len = set.len as usize;
    for i in 0..MAX_CANDIDATES {
        if i >= len {
            break;
        }
        let entry = &set.entries[i];
        if entry.matches(from, to) {
            break;
        }
        if entry.dst & (to | count_mask) != 0 {
            from_wants |= entry.src;
        }
        if entry.src & (from | count_mask) != 0 {
            to_wants |= entry.dst;
        }
    }
    (from_wants & count_mask != 0, to_wants & count_mask != 0)
}

/// The classes of the count-scope networks holding an address: for IPv4 from the /16
/// index and its chunk (array reads), the trie only where they defer to it; for IPv6
/// from the trie, only if the address's /16 holds a count-scope prefix.
#[inline(always)]
fn count_classes(addr: &Addr, v6: bool) -> u64 {
    if v6 {
        let bit = count_v6_bit(addr);
        let held = COUNT_V6_FILTER
            .get(bit / 64)
            .is_some_and(|word| *word & (1u64 << (bit % 64)) != 0);
        if !held {
            return 0;
        }
    } else {
        let a = u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]);
        let found = count_v4_lookup(
            a,
            |slot| COUNT_V4_INDEX.get(slot).copied(),
            |chunk, byte| COUNT_V4_CHUNKS.get(chunk).map(|c| c.bytes[byte]),
            |code| COUNT_V4_SETS.get(code).copied(),
        );
        if let Some(classes) = found {
            return classes;
        }
    }
    let Some(room) = scratch() else {
        return 0;
    };
    let found = if v6 {
        room.lpm_v6 = Key::new(128, *addr);
        COUNT_V6.get(&room.lpm_v6)
    } else {
        room.lpm_v4 = Key::new(32, [addr[0], addr[1], addr[2], addr[3]]);
        COUNT_V4.get(&room.lpm_v4)
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

/// What the flow tracker reads of a TCP segment; UDP carries nothing. Shared with the
/// egress programs.
#[inline(always)]
fn segment(ctx: &impl Frame, l3: &L3, l4: &L4) -> Segment {
    let mut seg = Segment {
        flags: l4.flags,
        ..Segment::default()
    };
    if l3.proto != PROTO_TCP || l3.l4_offset > MAX_L4_OFFSET {
        return seg;
    }
    if let Some(tcp) = bytes_at::<TCP_HLEN>(ctx, l3.l4_offset) {
        seg.seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        seg.ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
        seg.len = l3.l4_len.saturating_sub(tcp_header_len(tcp[12])) as u32;
    }
    seg
}

/// TCP and UDP: a forward match, else a reply to a tracked flow (stateful) or to a rule (stateless).
#[inline(always)]
fn transport(
    ctx: &XdpContext,
    l3: &L3,
    l4: &L4,
    standing: &mut Standing,
    cfg: &Config,
) -> Result<Decision, DenyReason> {
    if let Some(rule) = standing.first_match::<true>(l3.proto, l4.dport, false) {
        if cfg.stateful() {
            // Both ends out of enforce scope: the replies pass anyway, so keep no state.
            if standing.network() == NO_NETWORK {
                flow_event(FLOW_EVENT_UNTRACKED);
            } else if let Some(room) = scratch() {
                room.key = flow_key(l3, l4);
                room.seg = segment(ctx, l3, l4);
                track_forward(&room.key, rule, &room.seg, cfg, &mut room.fresh);
            }
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
        let room = scratch().ok_or(DenyReason::NoRule)?;
        room.key = flow_key(l3, l4).reversed();
        room.seg = segment(ctx, l3, l4);
        track_reply(&room.key, &room.seg, cfg)
    } else if stateless_reply(l3.proto, l4.flags) {
        standing.first_match::<false>(l3.proto, l4.sport, true)
    } else {
        None
    };
    match rule {
        Some(rule) => Ok(Decision::Allow {
            rule,
            path: Path::Reply,
        }),
        None => Err(DenyReason::NoRule),
    }
}

/// The time flows and fragments are stamped with: the coarse monotonic clock (the last
/// tick), which costs a load where `bpf_ktime_get_ns` reads the clock source; lifetimes
/// are seconds, so a tick's lag changes nothing.
#[inline(always)]
fn now() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn flow_expired(flow: &FlowValue, now: u64, cfg: &Config) -> bool {
    expired(flow.last_seen_ns, cfg.lifetime_ns(flow.state), now)
}

#[inline(always)]
fn count_tracked(tracked: Tracked) {
    if let Some(event) = tracked.event() {
        flow_event(event);
    }
}

/// Records or refreshes the flow a forward packet belongs to: in the established table
/// if it is there, else in the new-flow table, which it leaves once assured. The tracker
/// is called once, on whichever entry applies, to keep the program small.
#[inline(always)]
fn track_forward(key: &FlowKey, rule: u32, seg: &Segment, cfg: &Config, fresh: &mut FlowValue) {
    let now = now();
    // A SYN opens a new flow (or retries one): its table first saves a lookup.
    let found = if is_bare_syn(seg.flags) {
        match FLOWS_NEW.get_ptr_mut(key) {
            Some(flow) => Some((flow, false)),
            None => live_flow(&FLOWS, key, now, cfg, FLOW_EVENT_EXPIRED).map(|flow| (flow, true)),
        }
    } else {
        match live_flow(&FLOWS, key, now, cfg, FLOW_EVENT_EXPIRED) {
            Some(flow) => Some((flow, true)),
            None => FLOWS_NEW.get_ptr_mut(key).map(|flow| (flow, false)),
        }
    };
    let established = matches!(found, Some((_, true)));
    let stored = found.map(|(flow, _)| flow);
    if let (Some(flow), false) = (stored, established) {
        // An expired established flow starts over as a new flow, which must earn its place
        // again; so does an expired new one.
        let flow = unsafe { &mut *flow };
        if flow_expired(flow, now, cfg) {
            new_flow(flow, rule);
        }
    }
    let flow = match stored {
        Some(flow) => unsafe { &mut *flow },
        None => {
            new_flow(fresh, rule);
            &mut *fresh
        }
    };
    flow.rule = rule;
    count_tracked(track(flow, DIR_FORWARD, key.proto, seg, now));
    if stored.is_none() {
        match FLOWS_NEW.insert(key, fresh, 0) {
            Ok(()) => flow_event(FLOW_EVENT_NEW_CREATED),
            Err(_) => flow_event(FLOW_EVENT_NEW_INSERT_FAILED),
        }
    } else if !established && flow.assured() {
        promote(key, flow);
    }
}

/// `FlowValue::new(rule)` written into `*flow` in place, which may be uninitialised:
/// an assignment of the value compiles to a `memset` call (see [`zero`]).
#[inline(always)]
fn new_flow(flow: *mut FlowValue, rule: u32) {
    // `FlowValue::new` is zero but for these (emis-common's tests hold it to that).
    let fresh = FlowValue::new(rule);
    zero::zero(flow);
    unsafe {
        (*flow).rule = fresh.rule;
        (*flow).state = fresh.state;
        (*flow).origin = fresh.origin;
    }
}

/// Moves an assured flow from the new-flow table into the established one; if the
/// established table refuses it, it stays where it is.
#[inline(always)]
fn promote(key: &FlowKey, flow: &FlowValue) {
    match FLOWS.insert(key, flow, 0) {
        Ok(()) => {
            flow_event(FLOW_EVENT_CREATED);
            if FLOWS_NEW.remove(key).is_ok() {
                flow_event(FLOW_EVENT_NEW_PROMOTED);
            }
        }
        Err(_) => flow_event(FLOW_EVENT_INSERT_FAILED),
    }
}

/// The live flow under `key` in `table`; an expired one is removed and counted as `expired_event`.
#[inline(always)]
fn live_flow(
    table: &LruHashMap<FlowKey, FlowValue>,
    key: &FlowKey,
    now: u64,
    cfg: &Config,
    expired_event: u32,
) -> Option<*mut FlowValue> {
    let flow = table.get_ptr_mut(key)?;
    if flow_expired(unsafe { &*flow }, now, cfg) {
        if table.remove(key).is_ok() {
            flow_event(expired_event);
        }
        return None;
    }
    Some(flow)
}

/// The rule of the live flow under `key`, established or new.
#[inline(always)]
fn tracked_rule(key: &FlowKey, now: u64, cfg: &Config) -> Option<u32> {
    let flow = match live_flow(&FLOWS, key, now, cfg, FLOW_EVENT_EXPIRED) {
        Some(flow) => flow,
        None => live_flow(&FLOWS_NEW, key, now, cfg, FLOW_EVENT_NEW_EXPIRED)?,
    };
    Some(unsafe { (*flow).rule })
}

/// The rule of the tracked flow a reply answers, tracking the reply; `key` is the flow's
/// forward key. The established table is tried first (the common reply needs one
/// lookup); a new flow that the reply assures moves into it (a UDP reply does).
#[inline(always)]
fn track_reply(key: &FlowKey, seg: &Segment, cfg: &Config) -> Option<u32> {
    let now = now();
    // A SYN-ACK answers a flow that is still new: its table first saves a lookup.
    let (flow, established) = if seg.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
        match live_flow(&FLOWS_NEW, key, now, cfg, FLOW_EVENT_NEW_EXPIRED) {
            Some(flow) => (flow, false),
            None => (live_flow(&FLOWS, key, now, cfg, FLOW_EVENT_EXPIRED)?, true),
        }
    } else {
        match live_flow(&FLOWS, key, now, cfg, FLOW_EVENT_EXPIRED) {
            Some(flow) => (flow, true),
            None => (
                live_flow(&FLOWS_NEW, key, now, cfg, FLOW_EVENT_NEW_EXPIRED)?,
                false,
            ),
        }
    };
    let flow = unsafe { &mut *flow };
    count_tracked(track(flow, DIR_REPLY, key.proto, seg, now));
    let rule = flow.rule;
    if !established && flow.assured() {
        promote(key, flow);
    }
    Some(rule)
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
        let room = scratch().ok_or(DenyReason::Icmp)?;
        room.key = FlowKey::new(
            quoted.src,
            quoted.dst,
            l3.v6,
            quoted.proto,
            quoted.sport,
            quoted.dport,
        );
        let now = now();
        tracked_rule(&room.key, now, cfg).or_else(|| {
            room.key = room.key.reversed();
            tracked_rule(&room.key, now, cfg)
        })
    } else {
        let mut about = Standing::new(&quoted.src, &quoted.dst, l3.v6, cfg);
        about
            .first_match::<false>(quoted.proto, quoted.dport, false)
            .or_else(|| about.first_match::<false>(quoted.proto, quoted.sport, true))
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
    if let (Decision::Allow { rule, path }, Some(room)) = (decision, scratch()) {
        room.frag_value = FragValue {
            last_seen_ns: now(),
            rule,
            path: path as u32,
        };
        room.frag = frag_key(l3);
        let _ = FRAGS.insert(&room.frag, &room.frag_value, 0);
    }
}

/// A later fragment shares its first fragment's decision, if that was an allowance.
#[inline(always)]
fn later_fragment(l3: &L3, cfg: &Config) -> Result<Decision, DenyReason> {
    if l3.proto == PROTO_TCP && l3.frag_offset < MIN_TCP_FRAG_OFFSET {
        return Err(DenyReason::Malformed);
    }
    let room = scratch().ok_or(DenyReason::Fragment)?;
    room.frag = frag_key(l3);
    let key = &room.frag;
    let entry = FRAGS.get_ptr_mut(key).ok_or(DenyReason::Fragment)?;
    let now = now();
    let entry = unsafe { &mut *entry };
    if expired(entry.last_seen_ns, cfg.fragment_timeout_ns, now) {
        let _ = FRAGS.remove(key);
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
