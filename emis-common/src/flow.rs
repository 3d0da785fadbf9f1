//! The flow and fragment tables: their keys and values, the states a flow moves through
//! on forward packets and replies, how long each state lives, each TCP direction's
//! sequence window (which RSTs and FINs count), and when a flow is assured enough to
//! leave the new-flow table for the established one. The kernel program and the
//! reference model both track flows with these functions ([`track`]), so they agree on
//! every transition, window and lifetime.

use crate::maps::{
    FLOW_EVENT_TCP_FIN_IGNORED, FLOW_EVENT_TCP_RST_HONOURED, FLOW_EVENT_TCP_RST_IGNORED,
};
use crate::wire::{is_bare_syn, PROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// An address as the tables key it: IPv4 in the first four bytes, or IPv6.
pub type Addr = [u8; 16];

/// [`FlowKey::family`] and [`FragKey::family`] of IPv4 and IPv6.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// The family byte of a key.
#[inline(always)]
pub const fn family(v6: bool) -> u8 {
    if v6 {
        FAMILY_V6
    } else {
        FAMILY_V4
    }
}

/// A flow as its first allowed packet saw it; addresses are IPv4 in the first 4 bytes or IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 2],
}

impl FlowKey {
    /// The key of a packet from `src`:`sport` to `dst`:`dport`.
    #[inline(always)]
    pub const fn new(src: Addr, dst: Addr, v6: bool, proto: u8, sport: u16, dport: u16) -> Self {
        FlowKey {
            src,
            dst,
            sport,
            dport,
            proto,
            family: family(v6),
            _pad: [0; 2],
        }
    }

    /// The key of the other direction of this flow.
    #[inline(always)]
    pub const fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            family: self.family,
            _pad: [0; 2],
        }
    }
}

/// No state yet: the flow is new, or its entry expired.
pub const FLOW_NEW: u32 = 0;
pub const FLOW_TCP_SYN_SENT: u32 = 1;
pub const FLOW_TCP_ESTABLISHED: u32 = 2;
pub const FLOW_TCP_CLOSING: u32 = 3;
pub const FLOW_UDP: u32 = 4;
/// States a stored flow can be in, each with its own lifetime.
pub const FLOW_STATE_COUNT: usize = 4;

/// The slot of `Config::flow_timeouts_ns` for a flow state.
#[inline(always)]
pub const fn flow_state_slot(state: u32) -> usize {
    (state as usize).wrapping_sub(1)
}

/// Lifetimes in the order of [`flow_state_slot`], from seconds.
pub const fn flow_timeouts_ns(
    tcp_syn: u64,
    tcp_established: u64,
    tcp_closing: u64,
    udp: u64,
) -> [u64; FLOW_STATE_COUNT] {
    const NS: u64 = 1_000_000_000;
    let mut out = [0; FLOW_STATE_COUNT];
    out[flow_state_slot(FLOW_TCP_SYN_SENT)] = tcp_syn * NS;
    out[flow_state_slot(FLOW_TCP_ESTABLISHED)] = tcp_established * NS;
    out[flow_state_slot(FLOW_TCP_CLOSING)] = tcp_closing * NS;
    out[flow_state_slot(FLOW_UDP)] = udp * NS;
    out
}

/// How long a flow in `state` lives without packets; a state without a slot lives not at all.
#[inline(always)]
pub fn lifetime_ns(timeouts_ns: &[u64; FLOW_STATE_COUNT], state: u32) -> u64 {
    match timeouts_ns.get(flow_state_slot(state)) {
        Some(ns) => *ns,
        None => 0,
    }
}

/// Whether an entry last seen at `last_seen_ns` has outlived `lifetime_ns` at `now_ns`.
#[inline(always)]
pub const fn expired(last_seen_ns: u64, lifetime_ns: u64, now_ns: u64) -> bool {
    now_ns.saturating_sub(last_seen_ns) > lifetime_ns
}

/// A flow's two directions: index [`DIR_FORWARD`] is the side whose packet a rule
/// allowed, [`DIR_REPLY`] the side answering it.
pub const DIR_FORWARD: usize = 0;
pub const DIR_REPLY: usize = 1;

/// How far (in sequence space) a segment, an acknowledgement or a first reply may lie from
/// what the tracker saw of a side and still count. The tracker does not parse window
/// scaling, so this stands in for the receiver's window: wide enough for reordering and
/// loss on a fast link, narrow enough that a blind guess lands with odds of 2^-13.
pub const TCP_SEQ_SLACK: u32 = 1 << 18;

/// Bits of [`FlowValue::tcp`]: a side was seen (for TCP, its `end` is known; UDP keeps
/// only these), it acknowledged something (its `acked` is known), it sent a FIN within
/// its window.
const fn seen_bit(dir: usize) -> u32 {
    1 << dir
}
const fn acked_bit(dir: usize) -> u32 {
    1 << (2 + dir)
}
const fn fin_bit(dir: usize) -> u32 {
    1 << (4 + dir)
}

/// What the tracker reads of a TCP segment (UDP flows use the default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Segment {
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// Payload bytes after the TCP header.
    pub len: u32,
}

impl Segment {
    /// The sequence number just past this segment: SYN and FIN count one each.
    #[inline(always)]
    pub const fn end(&self) -> u32 {
        let mut end = self.seq.wrapping_add(self.len);
        if self.flags & TCP_SYN != 0 {
            end = end.wrapping_add(1);
        }
        if self.flags & TCP_FIN != 0 {
            end = end.wrapping_add(1);
        }
        end
    }
}

/// What tracking one packet did, for the event counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracked {
    /// The flow took the packet (or it changed nothing worth counting).
    Updated,
    /// A RST within the window closed the flow.
    RstHonoured,
    /// A RST outside the window: the flow is unchanged.
    RstIgnored,
    /// A FIN outside the window: the flow is unchanged.
    FinIgnored,
}

impl Tracked {
    /// The flow-event slot this outcome is counted in, if any.
    #[inline(always)]
    pub const fn event(self) -> Option<u32> {
        match self {
            Tracked::Updated => None,
            Tracked::RstHonoured => Some(FLOW_EVENT_TCP_RST_HONOURED),
            Tracked::RstIgnored => Some(FLOW_EVENT_TCP_RST_IGNORED),
            Tracked::FinIgnored => Some(FLOW_EVENT_TCP_FIN_IGNORED),
        }
    }
}

/// Whether `x` lies in the closed range `[lo, hi]` of sequence space (which wraps).
#[inline(always)]
pub const fn seq_within(x: u32, lo: u32, hi: u32) -> bool {
    x.wrapping_sub(lo) <= hi.wrapping_sub(lo)
}

/// Whether `a` is after `b` in sequence space.
#[inline(always)]
pub const fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Whether `x` lies within [`TCP_SEQ_SLACK`] of `mark` either way.
#[inline(always)]
const fn seq_near(x: u32, mark: u32) -> bool {
    seq_within(
        x,
        mark.wrapping_sub(TCP_SEQ_SLACK),
        mark.wrapping_add(TCP_SEQ_SLACK),
    )
}

/// One direction of a TCP flow, in simplified `tcp_in_window` form.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TcpSide {
    /// The highest sequence number this side has sent, plus its length.
    pub end: u32,
    /// The highest acknowledgement this side has sent: where the other side's window starts.
    pub acked: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub last_seen_ns: u64,
    /// The rule that allowed the flow; its replies are counted under it.
    pub rule: u32,
    /// One of the `FLOW_*` states.
    pub state: u32,
    /// TCP only: each direction's window, indexed by `DIR_*`.
    pub sides: [TcpSide; 2],
    /// TCP only: which sides were seen, acknowledged, and sent a FIN.
    pub tcp: u32,
    /// Which program recorded the flow: [`FLOW_ORIGIN_INGRESS`] (the XDP program, on the
    /// packet's way in) or [`FLOW_ORIGIN_EGRESS`] (the egress program, under the tuple the
    /// packet left with: after source NAT, or opened by the router itself).
    pub origin: u32,
}

/// [`FlowValue::origin`]: recorded by the XDP program as the packet came in.
pub const FLOW_ORIGIN_INGRESS: u32 = 0;
/// [`FlowValue::origin`]: recorded by the egress program as the packet left, so the egress
/// program tracks its forward direction (the XDP program never sees it under this key).
pub const FLOW_ORIGIN_EGRESS: u32 = 1;

impl FlowValue {
    /// A flow no packet has touched yet.
    #[inline(always)]
    pub const fn new(rule: u32) -> FlowValue {
        FlowValue {
            last_seen_ns: 0,
            rule,
            state: FLOW_NEW,
            sides: [TcpSide { end: 0, acked: 0 }; 2],
            tcp: 0,
            origin: FLOW_ORIGIN_INGRESS,
        }
    }

    #[inline(always)]
    const fn has(&self, bit: u32) -> bool {
        self.tcp & bit != 0
    }

    /// Whether the flow has seen traffic both ways that belongs to it (conntrack's
    /// "assured"): for UDP a reply; for TCP a reply that acknowledged what the forward
    /// side sent, itself acknowledged by the forward side (the handshake's third packet).
    /// A spoofed SYN that a server answers never gets there. Only assured flows enter
    /// the established table, so new and half-open flows cannot push them out.
    #[inline(always)]
    pub const fn assured(&self) -> bool {
        self.has(seen_bit(DIR_REPLY))
            && (self.state == FLOW_UDP || self.has(acked_bit(DIR_FORWARD)))
    }

    /// Whether sequence number `seq` from side `dir` lies in that side's window: no lower
    /// than what the other side acknowledged (or the slack below what `dir` sent, while
    /// nothing was acknowledged), and no higher than `dir`'s end plus `ahead`.
    #[inline(always)]
    const fn in_window(&self, dir: usize, seq: u32, ahead: u32) -> bool {
        let other = 1 - dir;
        let end = self.sides[dir].end;
        let lo = if self.has(acked_bit(other)) {
            self.sides[other].acked
        } else {
            end.wrapping_sub(TCP_SEQ_SLACK)
        };
        self.has(seen_bit(dir)) && seq_within(seq, lo, end.wrapping_add(ahead))
    }
}

/// Tracks one packet of `flow` from side `dir` at `now_ns`. `flow` is the stored value,
/// or [`FlowValue::new`] when untracked or expired (only forward packets meet those).
///
/// TCP: a bare SYN forward (re)starts a flow that is not established; the first reply
/// counts only if it acknowledges what the forward side sent (that makes a SYN_SENT
/// flow established); a RST closes the flow only within its sender's window (no lower
/// than what the receiver acknowledged, no higher than what the sender sent); a FIN
/// marks its side only within the window, and FINs both ways close the flow, so a
/// half-close keeps it; a closing flow is not refreshed, so stray packets cannot keep it.
// Inlined at each call site: a BPF-to-BPF call cost the packet path 7 to 8 ns
// (measured), more than the copies cost the verifier (both programs stay near 30% of
// its budget).
#[inline(always)]
pub fn track(flow: &mut FlowValue, dir: usize, proto: u8, seg: &Segment, now_ns: u64) -> Tracked {
    if proto != PROTO_TCP {
        flow.state = FLOW_UDP;
        // Only the seen bits: a forward packet alone, however many, must not assure a flow.
        flow.tcp |= seen_bit(dir);
        flow.last_seen_ns = now_ns;
        return Tracked::Updated;
    }
    let was = flow.state;
    let syn = is_bare_syn(seg.flags);
    if dir == DIR_FORWARD && (was == FLOW_NEW || (syn && was != FLOW_TCP_ESTABLISHED)) {
        *flow = FlowValue::new(flow.rule);
        flow.state = if syn {
            FLOW_TCP_SYN_SENT
        } else if seg.flags & TCP_RST != 0 {
            FLOW_TCP_CLOSING
        } else {
            // Picked up mid-stream (emis started after the handshake): the rule allows it anyway.
            FLOW_TCP_ESTABLISHED
        };
        flow.sides[DIR_FORWARD].end = seg.end();
        flow.tcp = seen_bit(DIR_FORWARD);
        if seg.flags & TCP_FIN != 0 {
            flow.tcp |= fin_bit(DIR_FORWARD);
        }
        flow.last_seen_ns = now_ns;
        return Tracked::Updated;
    }
    let tracked = segment(flow, dir, seg);
    if !(was == FLOW_TCP_CLOSING && flow.state == FLOW_TCP_CLOSING) {
        flow.last_seen_ns = now_ns;
    }
    tracked
}

/// A segment of a tracked TCP flow.
#[inline(always)]
fn segment(flow: &mut FlowValue, dir: usize, seg: &Segment) -> Tracked {
    let other = 1 - dir;
    let rst = seg.flags & TCP_RST != 0;
    let fin = seg.flags & TCP_FIN != 0;
    let ack = seg.flags & TCP_ACK != 0;
    let ignored = if rst {
        Tracked::RstIgnored
    } else if fin {
        Tracked::FinIgnored
    } else {
        Tracked::Updated
    };
    if !flow.has(seen_bit(dir)) {
        // The first packet of a side must acknowledge what the other side sent.
        let acks_other =
            ack && flow.has(seen_bit(other)) && seq_near(seg.ack, flow.sides[other].end);
        if !acks_other {
            return ignored;
        }
        if rst {
            flow.state = FLOW_TCP_CLOSING;
            return Tracked::RstHonoured;
        }
        flow.sides[dir] = TcpSide {
            end: seg.end(),
            acked: seg.ack,
        };
        flow.tcp |= seen_bit(dir) | acked_bit(dir);
        if fin {
            flow.tcp |= fin_bit(dir);
        }
        if flow.state == FLOW_TCP_SYN_SENT {
            flow.state = FLOW_TCP_ESTABLISHED;
        }
        return Tracked::Updated;
    }
    if rst {
        if flow.in_window(dir, seg.seq, 0) {
            flow.state = FLOW_TCP_CLOSING;
            return Tracked::RstHonoured;
        }
        return Tracked::RstIgnored;
    }
    // An acknowledgement tells what the other side sent, even segments the tracker missed.
    if ack && flow.has(seen_bit(other)) && seq_near(seg.ack, flow.sides[other].end) {
        if seq_after(seg.ack, flow.sides[other].end) {
            flow.sides[other].end = seg.ack;
        }
        if !flow.has(acked_bit(dir)) || seq_after(seg.ack, flow.sides[dir].acked) {
            flow.sides[dir].acked = seg.ack;
            flow.tcp |= acked_bit(dir);
        }
    }
    if !flow.in_window(dir, seg.seq, TCP_SEQ_SLACK) {
        return ignored;
    }
    if seq_after(seg.end(), flow.sides[dir].end) {
        flow.sides[dir].end = seg.end();
    }
    if fin {
        flow.tcp |= fin_bit(dir);
        if flow.has(fin_bit(other)) {
            flow.state = FLOW_TCP_CLOSING;
        }
    }
    Tracked::Updated
}

/// Whether a packet that matches a rule reversed may pass as a stateless reply: a TCP
/// reply always carries ACK, so NULL, FIN and Xmas scans do not.
#[inline(always)]
pub const fn stateless_reply(proto: u8, flags: u8) -> bool {
    proto != PROTO_TCP || flags & TCP_ACK != 0
}

/// A fragmented datagram: addresses, protocol and IP identification.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    pub src: Addr,
    pub dst: Addr,
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

impl FragKey {
    /// The key of datagram `id` from `src` to `dst`.
    #[inline(always)]
    pub const fn new(src: Addr, dst: Addr, v6: bool, proto: u8, id: u32) -> Self {
        FragKey {
            src,
            dst,
            id,
            proto,
            family: family(v6),
            _pad: [0; 2],
        }
    }
}

/// The decision its first fragment got, which its later fragments share.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragValue {
    pub last_seen_ns: u64,
    pub rule: u32,
    pub path: u32,
}

/// A TCP fragment at an offset below this (in 8-byte units) would overwrite the ports or
/// flags its first fragment showed, so it is malformed whatever its first fragment got.
pub const MIN_TCP_FRAG_OFFSET: u16 = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::TCP_PSH;

    /// The kernel writes a new flow in place as zero words plus these three fields
    /// (`new_flow` in emis-ebpf, which cannot assign the value: that compiles to `memset`).
    #[test]
    fn a_new_flow_is_zero_but_its_rule_state_and_origin() {
        let mut expected = FlowValue::default();
        let new = FlowValue::new(7);
        (expected.rule, expected.state, expected.origin) = (new.rule, new.state, new.origin);
        assert_eq!(new, expected);
    }

    fn seg(flags: u8, seq: u32, ack: u32, len: u32) -> Segment {
        Segment {
            flags,
            seq,
            ack,
            len,
        }
    }

    /// A flow after a handshake: the client's next byte is 1001, the server's 5001.
    fn established() -> FlowValue {
        let mut f = FlowValue::new(7);
        track(&mut f, DIR_FORWARD, PROTO_TCP, &seg(TCP_SYN, 1000, 0, 0), 1);
        assert_eq!(f.state, FLOW_TCP_SYN_SENT);
        assert!(!f.assured());
        let syn_ack = seg(TCP_SYN | TCP_ACK, 5000, 1001, 0);
        track(&mut f, DIR_REPLY, PROTO_TCP, &syn_ack, 2);
        assert_eq!(f.state, FLOW_TCP_ESTABLISHED);
        assert!(!f.assured(), "the handshake is not complete");
        // An ACK that acknowledges nothing the server sent does not complete it.
        track(
            &mut f,
            DIR_FORWARD,
            PROTO_TCP,
            &seg(TCP_ACK, 1001, 77_000_000, 0),
            3,
        );
        assert!(!f.assured());
        track(
            &mut f,
            DIR_FORWARD,
            PROTO_TCP,
            &seg(TCP_ACK, 1001, 5001, 0),
            3,
        );
        assert!(f.assured());
        f
    }

    #[test]
    fn handshake_and_close() {
        let mut f = established();
        let data = seg(TCP_ACK | TCP_PSH, 1001, 5001, 100);
        assert_eq!(
            track(&mut f, DIR_FORWARD, PROTO_TCP, &data, 4),
            Tracked::Updated
        );
        assert_eq!(f.sides[DIR_FORWARD].end, 1101);
        let fin = seg(TCP_FIN | TCP_ACK, 5001, 1101, 0);
        track(&mut f, DIR_REPLY, PROTO_TCP, &fin, 5);
        assert_eq!(f.state, FLOW_TCP_ESTABLISHED, "half-closed");
        let fin = seg(TCP_FIN | TCP_ACK, 1101, 5002, 0);
        track(&mut f, DIR_FORWARD, PROTO_TCP, &fin, 6);
        assert_eq!(f.state, FLOW_TCP_CLOSING);
        // The last ACK does not refresh a closing flow.
        track(
            &mut f,
            DIR_REPLY,
            PROTO_TCP,
            &seg(TCP_ACK, 5002, 1102, 0),
            9,
        );
        assert_eq!((f.state, f.last_seen_ns), (FLOW_TCP_CLOSING, 6));
        // A new connection on the same ports starts over.
        track(
            &mut f,
            DIR_FORWARD,
            PROTO_TCP,
            &seg(TCP_SYN, 9000, 0, 0),
            10,
        );
        assert_eq!((f.state, f.last_seen_ns), (FLOW_TCP_SYN_SENT, 10));
    }

    #[test]
    fn half_close_keeps_the_flow_alive() {
        let mut f = established();
        let fin = seg(TCP_FIN | TCP_ACK, 1001, 5001, 0);
        track(&mut f, DIR_FORWARD, PROTO_TCP, &fin, 4);
        // The server keeps sending for a long while: the flow stays established and fresh.
        for i in 0..10u32 {
            let data = seg(TCP_ACK | TCP_PSH, 5001 + i * 1000, 1002, 1000);
            track(&mut f, DIR_REPLY, PROTO_TCP, &data, 10 + u64::from(i));
            track(
                &mut f,
                DIR_FORWARD,
                PROTO_TCP,
                &seg(TCP_ACK, 1002, 6001 + i * 1000, 0),
                10 + u64::from(i),
            );
        }
        assert_eq!((f.state, f.last_seen_ns), (FLOW_TCP_ESTABLISHED, 19));
        let fin = seg(TCP_FIN | TCP_ACK, 15001, 1002, 0);
        track(&mut f, DIR_REPLY, PROTO_TCP, &fin, 20);
        assert_eq!(f.state, FLOW_TCP_CLOSING);
    }

    #[test]
    fn resets_count_only_within_the_window() {
        let mut f = established();
        let before = f;
        for seq in [0, 1000, 1002, 5001, 1001 + (1 << 20), 0x8000_0000] {
            let rst = seg(TCP_RST, seq, 0, 0);
            assert_eq!(
                track(&mut f, DIR_FORWARD, PROTO_TCP, &rst, 4),
                Tracked::RstIgnored,
                "{seq}"
            );
            let rst = seg(TCP_RST | TCP_ACK, seq.wrapping_add(4000), 1001, 0);
            assert_eq!(
                track(&mut f, DIR_REPLY, PROTO_TCP, &rst, 4),
                Tracked::RstIgnored,
                "{seq}"
            );
        }
        assert_eq!(f.state, before.state);
        assert_eq!(f.sides, before.sides);
        // A FIN far off the window changes nothing either.
        let fin = seg(TCP_FIN | TCP_ACK, 1001 + (1 << 20), 5001, 0);
        assert_eq!(
            track(&mut f, DIR_FORWARD, PROTO_TCP, &fin, 4),
            Tracked::FinIgnored
        );
        assert_eq!((f.state, f.tcp), (before.state, before.tcp));
        // The server's RST at its next byte closes the flow.
        let rst = seg(TCP_RST, 5001, 0, 0);
        assert_eq!(
            track(&mut f, DIR_REPLY, PROTO_TCP, &rst, 5),
            Tracked::RstHonoured
        );
        assert_eq!(f.state, FLOW_TCP_CLOSING);
        // And the client's, with data in flight, anywhere between acknowledged and sent.
        let mut f = established();
        track(
            &mut f,
            DIR_FORWARD,
            PROTO_TCP,
            &seg(TCP_ACK, 1001, 5001, 500),
            4,
        );
        let rst = seg(TCP_RST, 1301, 0, 0);
        assert_eq!(
            track(&mut f, DIR_FORWARD, PROTO_TCP, &rst, 5),
            Tracked::RstHonoured
        );
    }

    #[test]
    fn a_refused_connection_closes_only_on_an_answering_reset() {
        let mut f = FlowValue::new(1);
        track(&mut f, DIR_FORWARD, PROTO_TCP, &seg(TCP_SYN, 1000, 0, 0), 1);
        let blind = seg(TCP_RST | TCP_ACK, 0, 77_000_000, 0);
        assert_eq!(
            track(&mut f, DIR_REPLY, PROTO_TCP, &blind, 2),
            Tracked::RstIgnored
        );
        assert_eq!(f.state, FLOW_TCP_SYN_SENT);
        let refused = seg(TCP_RST | TCP_ACK, 0, 1001, 0);
        assert_eq!(
            track(&mut f, DIR_REPLY, PROTO_TCP, &refused, 3),
            Tracked::RstHonoured
        );
        assert_eq!(f.state, FLOW_TCP_CLOSING);
        assert!(!f.assured(), "a refusal is no answer to promote");
    }

    #[test]
    fn picked_up_mid_stream() {
        let mut f = FlowValue::new(1);
        track(
            &mut f,
            DIR_FORWARD,
            PROTO_TCP,
            &seg(TCP_ACK, 40_000, 90_000, 10),
            1,
        );
        assert_eq!(f.state, FLOW_TCP_ESTABLISHED);
        track(
            &mut f,
            DIR_REPLY,
            PROTO_TCP,
            &seg(TCP_ACK, 90_000, 40_010, 10),
            2,
        );
        assert!(!f.assured());
        let ack = seg(TCP_ACK, 40_010, 90_010, 0);
        track(&mut f, DIR_FORWARD, PROTO_TCP, &ack, 3);
        assert!(f.assured());
        // An established flow ignores a stray SYN on its ports.
        track(&mut f, DIR_FORWARD, PROTO_TCP, &seg(TCP_SYN, 1, 0, 0), 3);
        assert_eq!(f.state, FLOW_TCP_ESTABLISHED);
        let mut u = FlowValue::new(2);
        track(&mut u, DIR_FORWARD, 17, &Segment::default(), 1);
        track(&mut u, DIR_FORWARD, 17, &Segment::default(), 2);
        assert_eq!(u.state, FLOW_UDP);
        assert!(!u.assured(), "unanswered UDP stays a new flow");
        track(&mut u, DIR_REPLY, 17, &Segment::default(), 3);
        assert!(u.assured(), "the first reply assures it");
    }

    #[test]
    fn sequence_space_wraps() {
        assert!(seq_within(2, u32::MAX - 1, 5));
        assert!(!seq_within(6, u32::MAX - 1, 5));
        assert!(seq_after(1, u32::MAX) && !seq_after(u32::MAX, 1));
        let mut f = FlowValue::new(1);
        track(
            &mut f,
            DIR_FORWARD,
            PROTO_TCP,
            &seg(TCP_SYN, u32::MAX, 0, 0),
            1,
        );
        track(
            &mut f,
            DIR_REPLY,
            PROTO_TCP,
            &seg(TCP_SYN | TCP_ACK, 7, 0, 0),
            2,
        );
        assert_eq!(f.state, FLOW_TCP_ESTABLISHED);
        assert_eq!(
            track(&mut f, DIR_FORWARD, PROTO_TCP, &seg(TCP_RST, 0, 0, 0), 3),
            Tracked::RstHonoured
        );
    }

    #[test]
    fn window_outcomes_have_their_own_counters() {
        let slots = [
            Tracked::RstHonoured,
            Tracked::RstIgnored,
            Tracked::FinIgnored,
        ]
        .map(|t| t.event().unwrap());
        assert!(slots.iter().all(|&slot| slot < crate::FLOW_EVENT_COUNT));
        assert!(slots[0] != slots[1] && slots[1] != slots[2] && slots[0] != slots[2]);
        assert_eq!(Tracked::Updated.event(), None);
        assert_eq!(crate::new_flow_table_size(131_072), 32_768);
        assert_eq!(crate::new_flow_table_size(16), 64);
    }

    #[test]
    fn stateless_tcp_replies_carry_ack() {
        assert!(stateless_reply(PROTO_TCP, TCP_ACK | TCP_PSH));
        for scan in [0, TCP_FIN, TCP_FIN | TCP_PSH | 0x20] {
            assert!(!stateless_reply(PROTO_TCP, scan));
        }
        assert!(stateless_reply(17, 0));
    }

    #[test]
    fn lifetimes_by_state() {
        let t = flow_timeouts_ns(1, 2, 3, 4);
        assert_eq!(lifetime_ns(&t, FLOW_TCP_SYN_SENT), 1_000_000_000);
        assert_eq!(lifetime_ns(&t, FLOW_TCP_ESTABLISHED), 2_000_000_000);
        assert_eq!(lifetime_ns(&t, FLOW_TCP_CLOSING), 3_000_000_000);
        assert_eq!(lifetime_ns(&t, FLOW_UDP), 4_000_000_000);
        assert_eq!(lifetime_ns(&t, FLOW_NEW), 0);
        assert!(!expired(10, 5, 15) && expired(10, 5, 16));
    }

    #[test]
    fn keys() {
        let k = FlowKey::new([1; 16], [2; 16], false, PROTO_TCP, 40000, 443);
        assert_eq!(k.family, FAMILY_V4);
        assert_eq!(
            k.reversed(),
            FlowKey::new([2; 16], [1; 16], false, PROTO_TCP, 443, 40000)
        );
        assert_eq!(k.reversed().reversed(), k);
        assert_eq!(
            FragKey::new([1; 16], [2; 16], true, 17, 7).family,
            FAMILY_V6
        );
    }
}
