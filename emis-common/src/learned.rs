//! Hostnames learned from DNS: the maps of addresses the daemon learned from answers
//! that crossed the router, the hostname-group bits a rule entry carries, and the DNS
//! hand-off (the kernel copies each DNS response it sees to the daemon, rate-limited).
//!
//! A rule whose spec names hostnames gets a hostname-group bit (rules naming the same set
//! of hostnames on the same protocol and ports share one); a port's [`RuleSet::hostnames`](crate::RuleSet::hostnames)
//! holds the bits of the rules listing it, so the learned map is asked only there. A
//! learned address carries, from the daemon, the rules of the groups its names matched
//! ([`LearnedEntry`], spec order), so the kernel's walk is over that address's few rules
//! rather than over every rule of the port.

use crate::flow::Addr;

/// Hash map from an IPv4 address (4 bytes) to [`LearnedValue`].
pub const MAP_LEARNED_V4: &str = "EMIS_LEARNED_V4";
/// Hash map from an IPv6 address (16 bytes) to [`LearnedValue`].
pub const MAP_LEARNED_V6: &str = "EMIS_LEARNED_V6";
/// Array of `u64` words, [`LEARNED_FILTER_WORDS`] of them: bit [`learned_filter_bit`] of
/// every address in either learned map is set, so the program asks a learned map (a
/// hash lookup, a helper call) only for an address whose bit is set.
pub const MAP_LEARNED_FILTER: &str = "EMIS_LEARNED_FILTER";
/// Ring buffer of [`DnsMessage`]s: DNS responses the program saw.
pub const MAP_DNS: &str = "EMIS_DNS";
/// One-entry array of [`DnsConfig`].
pub const MAP_DNS_CONFIG: &str = "EMIS_DNS_CONFIG";
/// Per-CPU [`EventBucket`](crate::EventBucket) bounding the hand-off.
pub const MAP_DNS_BUCKET: &str = "EMIS_DNS_BUCKET";
/// Per-CPU `u64` counters, indexed by the `DNS_COUNT_*` slots.
pub const MAP_DNS_COUNTS: &str = "EMIS_DNS_COUNTS";

/// Hostname groups a policy may have: one bit each in [`crate::RuleSet::hostnames`].
pub const MAX_HOSTNAME_GROUPS: u32 = 32;
/// Rules one learned address may be counted under; the daemon keeps the first in spec
/// order and counts an address that needed more.
pub const MAX_LEARNED_ENTRIES: usize = 4;
/// Learned addresses each family's map holds.
pub const MAX_LEARNED: u32 = 16 * 1024;

/// Words of the learned filter: 65,536 bits, so with the maps full (16,384 addresses a
/// family) most addresses still find their bit clear.
pub const LEARNED_FILTER_WORDS: u32 = 1024;
/// Bits of the learned filter.
pub const LEARNED_FILTER_BITS: u32 = LEARNED_FILTER_WORDS * 64;

/// An address's bit in the learned filter: a multiplicative hash of the IPv4 address (the
/// first 4 bytes of `addr`), or of the IPv6 address's four words folded into one, kept to
/// its top 16 bits. The daemon sets the bit before it writes the address into a learned
/// map and clears bits only after the addresses behind them are gone, so a clear bit
/// means "not learned" and a set one "ask the map".
#[inline(always)]
pub const fn learned_filter_bit(addr: &Addr, v6: bool) -> u32 {
    const fn word(addr: &Addr, i: usize) -> u32 {
        u32::from_le_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]])
    }
    let folded = if v6 {
        word(addr, 0) ^ word(addr, 4) ^ word(addr, 8) ^ word(addr, 12)
    } else {
        word(addr, 0)
    };
    folded.wrapping_mul(0x9E37_79B1) >> 16
}

/// The port DNS answers come from.
pub const DNS_PORT: u16 = 53;
/// DNS over TLS: answers the program cannot read, counted so an operator knows learning is blind.
pub const DOT_PORT: u16 = 853;
/// Bytes of a DNS response the hand-off copies (the classic UDP limit; a longer answer
/// is cut and the daemon keeps the records before the cut).
pub const DNS_SNAP_LEN: usize = 512;
/// Bytes of the hand-off ring buffer: about 500 messages.
pub const DNS_RING_BYTES: u32 = 256 * 1024;
/// Default of [`DnsConfig::rate`]: responses a second each CPU hands off.
pub const DEFAULT_DNS_RATE: u32 = 1_000;

/// Slots of the per-CPU DNS counter array: responses handed off, suppressed by the rate
/// limit, lost to a full ring; packets to or from the DoT port.
pub const DNS_COUNT_HANDED: u32 = 0;
pub const DNS_COUNT_SUPPRESSED: u32 = 1;
pub const DNS_COUNT_RING_FULL: u32 = 2;
pub const DNS_COUNT_DOT: u32 = 3;
pub const DNS_COUNT_SLOTS: u32 = 4;

/// One rule a learned address may be counted under.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LearnedEntry {
    /// The rule's source and destination classes, as in [`crate::RuleEntry`].
    pub src: u64,
    pub dst: u64,
    /// The rule's counter slot.
    pub rule: u32,
    /// The rule's hostname-group bit. A group is the rules naming the same hostnames on
    /// the same protocol and ports, so the bit in a port's
    /// [`RuleSet::hostnames`](crate::RuleSet::hostnames) says the rule lists that port.
    pub group: u32,
}

impl LearnedEntry {
    /// Whether a packet on a port whose rules' groups are `port_groups`, from classes
    /// `from` to classes `to`, matches.
    #[inline(always)]
    pub const fn matches(&self, port_groups: u32, from: u64, to: u64) -> bool {
        self.group & port_groups != 0 && self.src & from != 0 && self.dst & to != 0
    }
}

/// What an address was learned for: the hostname groups (bits) of the names it answered;
/// the classes of the count-scope networks those groups' rules name as destination (a
/// learned address counts as inside them when the packet is out of enforce scope); and
/// those rules, in spec order, the first `len` of `entries`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LearnedValue {
    pub count_classes: u64,
    pub groups: u32,
    pub len: u32,
    pub entries: [LearnedEntry; MAX_LEARNED_ENTRIES],
}

/// Set by the daemon while it learns.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DnsConfig {
    /// Non-zero: hand DNS responses to the daemon.
    pub enabled: u32,
    /// Responses a second each CPU may hand off; the rest are counted as suppressed.
    pub rate: u32,
}

/// One DNS response as the program saw it: the UDP payload's first [`DNS_SNAP_LEN`] bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsMessage {
    /// `bpf_ktime_get_ns`.
    pub time_ns: u64,
    pub ifindex: u32,
    /// The UDP payload's length.
    pub len: u32,
    /// Bytes of `data` that hold the payload: `min(len, DNS_SNAP_LEN)`.
    pub captured_len: u32,
    pub _pad: u32,
    pub data: [u8; DNS_SNAP_LEN],
}

pub const DNS_MESSAGE_SIZE: usize = core::mem::size_of::<DnsMessage>();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_bits_stay_in_the_filter_and_spread() {
        let mut seen = [false; LEARNED_FILTER_BITS as usize];
        let mut distinct = 0;
        for i in 0..4096u32 {
            let mut addr = [0u8; 16];
            // Neighbouring addresses of one network, as a CDN answers with.
            addr[..4].copy_from_slice(&(0x0d20_0000 + i).to_be_bytes());
            let bit = learned_filter_bit(&addr, false);
            assert!(bit < LEARNED_FILTER_BITS);
            distinct += !seen[bit as usize] as u32;
            seen[bit as usize] = true;
        }
        assert!(
            distinct > 3_900,
            "4096 neighbours share too few bits: {distinct}"
        );
        // IPv4 reads only its 4 bytes; IPv6 reads all 16.
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[192, 0, 2, 1]);
        let mut noisy = v4;
        noisy[15] = 9;
        assert_eq!(
            learned_filter_bit(&v4, false),
            learned_filter_bit(&noisy, false)
        );
        assert_ne!(
            learned_filter_bit(&v4, true),
            learned_filter_bit(&noisy, true)
        );
    }

    #[test]
    fn records_keep_their_layout() {
        assert_eq!(core::mem::size_of::<LearnedEntry>(), 24);
        assert_eq!(
            core::mem::size_of::<LearnedValue>(),
            16 + 24 * MAX_LEARNED_ENTRIES
        );
        assert_eq!(core::mem::size_of::<DnsConfig>(), 8);
        assert_eq!(DNS_MESSAGE_SIZE, 24 + DNS_SNAP_LEN);
        assert_eq!(DNS_MESSAGE_SIZE % 8, 0);
    }
}
