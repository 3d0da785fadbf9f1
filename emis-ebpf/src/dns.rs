//! The DNS hand-off: each UDP datagram from port 53 the program sees goes to the daemon,
//! which learns hostnames from it (`emis_common::learned`), when the daemon has switched
//! it on and the CPU's token bucket has a token. Packets to or from the DoT port are
//! counted, so an operator can see when learning is blind. The packet's verdict is
//! decided as if none of this happened.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_xdp_load_bytes},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use emis_common::{
    DnsConfig, DnsMessage, EventBucket, DNS_COUNT_DOT, DNS_COUNT_HANDED, DNS_COUNT_RING_FULL,
    DNS_COUNT_SLOTS, DNS_COUNT_SUPPRESSED, DNS_PORT, DNS_RING_BYTES, DNS_SNAP_LEN, DOT_PORT,
    PROTO_UDP, UDP_HLEN,
};

#[map(name = "EMIS_DNS")]
static DNS: RingBuf = RingBuf::with_byte_size(DNS_RING_BYTES, 0);
#[map(name = "EMIS_DNS_CONFIG")]
static DNS_CONFIG: Array<DnsConfig> = Array::with_max_entries(1, 0);
#[map(name = "EMIS_DNS_BUCKET")]
static BUCKET: PerCpuArray<EventBucket> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "EMIS_DNS_COUNTS")]
static COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DNS_COUNT_SLOTS, 0);

#[inline(always)]
fn bump(slot: u32) {
    if let Some(n) = COUNTS.get_ptr_mut(slot) {
        unsafe { *n += 1 };
    }
}

/// Looks at a TCP or UDP packet's ports; `l4_offset` and `l4_len` locate its L4 header.
#[inline(always)]
pub fn observe(
    ctx: &XdpContext,
    proto: u8,
    sport: u16,
    dport: u16,
    l4_offset: usize,
    l4_len: usize,
) {
    if sport == DOT_PORT || dport == DOT_PORT {
        bump(DNS_COUNT_DOT);
    }
    if proto == PROTO_UDP && sport == DNS_PORT {
        hand_off(ctx, l4_offset as u32, l4_len as u32);
    }
}

/// Out of line, so the packet path carries one call; its frame is small (the message is
/// written straight into the ring buffer), as the main frame leaves little of the 512 bytes.
#[inline(never)]
fn hand_off(ctx: &XdpContext, l4_offset: u32, l4_len: u32) {
    let Some(cfg) = DNS_CONFIG.get(0) else {
        return;
    };
    if cfg.enabled == 0 || l4_len <= UDP_HLEN as u32 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(bucket) = BUCKET.get_ptr_mut(0) else {
        return;
    };
    if !unsafe { (*bucket).take(now, cfg.rate) } {
        bump(DNS_COUNT_SUPPRESSED);
        return;
    }
    let payload = l4_len - UDP_HLEN as u32;
    // The verifier must see the copy's length bounded by the buffer and non-zero.
    let len = if payload as usize >= DNS_SNAP_LEN {
        DNS_SNAP_LEN as u64
    } else {
        core::hint::black_box(payload as u64) & (DNS_SNAP_LEN as u64 - 1)
    };
    if len == 0 {
        return;
    }
    let Some(mut entry) = DNS.reserve::<DnsMessage>(0) else {
        bump(DNS_COUNT_RING_FULL);
        return;
    };
    let message = entry.as_mut_ptr();
    let copied = unsafe {
        (*message).time_ns = now;
        (*message).ifindex = ctx.ingress_ifindex() as u32;
        (*message).len = payload;
        (*message)._pad = 0;
        bpf_xdp_load_bytes(
            ctx.ctx,
            l4_offset + UDP_HLEN as u32,
            (*message).data.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if copied < 0 {
        entry.discard(0);
        return;
    }
    unsafe { (*message).captured_len = len as u32 };
    entry.submit(0);
    bump(DNS_COUNT_HANDED);
}
