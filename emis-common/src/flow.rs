//! The flow and fragment tables: their keys and values, the states a flow moves through
//! on forward packets and replies, and how long each state lives. The kernel program and
//! the reference model both track flows with these functions, so they agree on every
//! transition and lifetime.

use crate::wire::{is_bare_syn, is_closing, PROTO_TCP, TCP_ACK};

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

/// The state a flow in `state` ([`FLOW_NEW`] if untracked or expired) moves to on a
/// packet a rule allowed in its forward direction.
#[inline(always)]
pub const fn on_forward(state: u32, proto: u8, flags: u8) -> u32 {
    if proto != PROTO_TCP {
        FLOW_UDP
    } else if is_closing(flags) {
        FLOW_TCP_CLOSING
    } else if is_bare_syn(flags) {
        FLOW_TCP_SYN_SENT
    } else if state == FLOW_NEW {
        // Picked up mid-stream (emis started after the handshake): the rule allows it anyway.
        FLOW_TCP_ESTABLISHED
    } else {
        state
    }
}

/// The state a live flow in `state` moves to on a reply.
#[inline(always)]
pub const fn on_reply(state: u32, proto: u8, flags: u8) -> u32 {
    if proto != PROTO_TCP {
        FLOW_UDP
    } else if is_closing(flags) {
        FLOW_TCP_CLOSING
    } else if state == FLOW_TCP_SYN_SENT && flags & TCP_ACK != 0 {
        FLOW_TCP_ESTABLISHED
    } else {
        state
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub last_seen_ns: u64,
    /// The rule that allowed the flow; its replies are counted under it.
    pub rule: u32,
    /// One of the `FLOW_*` states.
    pub state: u32,
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
    use crate::wire::{TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN};

    #[test]
    fn handshake_and_close() {
        let s = on_forward(FLOW_NEW, PROTO_TCP, TCP_SYN);
        assert_eq!(s, FLOW_TCP_SYN_SENT);
        assert_eq!(on_reply(s, PROTO_TCP, TCP_SYN), FLOW_TCP_SYN_SENT);
        let s = on_reply(s, PROTO_TCP, TCP_SYN | TCP_ACK);
        assert_eq!(s, FLOW_TCP_ESTABLISHED);
        assert_eq!(on_forward(s, PROTO_TCP, TCP_ACK | TCP_PSH), s);
        assert_eq!(on_reply(s, PROTO_TCP, TCP_FIN | TCP_ACK), FLOW_TCP_CLOSING);
        assert_eq!(on_forward(s, PROTO_TCP, TCP_RST), FLOW_TCP_CLOSING);
        assert_eq!(
            on_forward(FLOW_NEW, PROTO_TCP, TCP_ACK),
            FLOW_TCP_ESTABLISHED,
            "picked up mid-stream"
        );
        assert_eq!(on_forward(FLOW_NEW, 17, 0), FLOW_UDP);
        assert_eq!(on_reply(FLOW_UDP, 17, 0), FLOW_UDP);
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
