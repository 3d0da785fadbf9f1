//! The IPv4 classes of the enforce-scope networks and site roles, laid out so the kernel
//! finds them with two array reads (which the verifier inlines) instead of a trie walk
//! through a helper call: an index by the address's top 16 bits, then that /16's
//! bucket, holding the longest prefix of /16 or shorter covering it and its few longer
//! prefixes, longest first. A /16 with more longer prefixes than a bucket holds is
//! marked [`BUCKET_IN_TRIE`] and looked up in the trie ([`MAP_ADDR_V4`](crate::MAP_ADDR_V4)),
//! which the loader fills as before. Count-scope networks keep their tries: they can hold
//! millions of prefixes.

use crate::AddrInfo;

/// Name of the array from an address's top 16 bits to its bucket's index in
/// [`MAP_ADDR_V4_BUCKETS`] (`u32`; 0: no prefix touches that /16).
pub const MAP_ADDR_V4_INDEX: &str = "EMIS_ADDR_V4_INDEX";
/// Name of the array of [`AddrBucket`]s, from index 1; the loader sizes it to fit.
pub const MAP_ADDR_V4_BUCKETS: &str = "EMIS_ADDR_V4_BUCKETS";
/// Slots of [`MAP_ADDR_V4_INDEX`]: one per /16.
pub const ADDR_V4_SLOTS: u32 = 65_536;
/// Entries [`MAP_ADDR_V4_BUCKETS`] may need: one per /16, plus the unused index 0.
pub const MAX_ADDR_V4_BUCKETS: u32 = ADDR_V4_SLOTS + 1;
/// Prefixes longer than /16 one bucket holds.
pub const BUCKET_PREFIXES: usize = 8;
/// [`AddrBucket::len`] of a /16 whose prefixes did not fit: look it up in the trie.
pub const BUCKET_IN_TRIE: u32 = u32::MAX;

/// The slot of an IPv4 address (host order) in [`MAP_ADDR_V4_INDEX`].
#[inline(always)]
pub const fn addr_v4_slot(addr: u32) -> u32 {
    addr >> 16
}

/// A prefix longer than /16: its network and mask (host order) and its classes. An
/// unused slot is [`BucketPrefix::UNUSED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BucketPrefix {
    pub net: u32,
    pub mask: u32,
    pub info: AddrInfo,
}

impl BucketPrefix {
    /// Matches no address: nothing masked by 0 equals 1.
    pub const UNUSED: BucketPrefix = BucketPrefix {
        net: 1,
        mask: 0,
        info: AddrInfo::OUTSIDE,
    };
}

/// One /16's prefixes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AddrBucket {
    /// Prefixes in use (the rest are [`BucketPrefix::UNUSED`]), or [`BUCKET_IN_TRIE`].
    pub len: u32,
    pub _pad: u32,
    /// The classes of the longest prefix of /16 or shorter covering the /16
    /// ([`AddrInfo::OUTSIDE`] if none): the answer when no longer prefix holds the address.
    pub shorter: AddrInfo,
    /// Longer prefixes within the /16, longest first, so the first holding an address is
    /// its longest match.
    pub prefixes: [BucketPrefix; BUCKET_PREFIXES],
}

impl AddrBucket {
    /// The classes of `addr` (host order, inside this bucket's /16); `None` when the
    /// bucket defers to the trie.
    #[inline(always)]
    pub fn find(&self, addr: u32) -> Option<AddrInfo> {
        if self.len == BUCKET_IN_TRIE {
            return None;
        }
        // Every slot is checked (unused ones never match), so the loop has a constant trip
        // count that LLVM unrolls: a loop bounded by `len` compiles to pointer arithmetic
        // the verifier cannot bound.
        for prefix in &self.prefixes {
            if addr & prefix.mask == prefix.net {
                return Some(prefix.info);
            }
        }
        Some(self.shorter)
    }
}

/// Name of the one-entry array holding the IPv6 enforce-scope classes as an
/// [`AddrListV6`]: a site has a handful of IPv6 prefixes, checked in a fixed loop
/// instead of a trie walk through a helper call.
pub const MAP_ADDR_V6_LIST: &str = "EMIS_ADDR_V6_LIST";
/// IPv6 prefixes the list holds; with more, every IPv6 address goes to the trie.
pub const V6_LIST_PREFIXES: usize = 8;

/// An IPv6 prefix as two 64-bit halves in the byte order of the address read as
/// native-endian words (masking is bitwise, so any order both sides share will do).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct V6Prefix {
    pub net: [u64; 2],
    pub mask: [u64; 2],
    pub info: AddrInfo,
}

impl V6Prefix {
    /// Matches no address: nothing masked by 0 equals 1.
    pub const UNUSED: V6Prefix = V6Prefix {
        net: [1, 0],
        mask: [0, 0],
        info: AddrInfo::OUTSIDE,
    };
}

/// Every IPv6 enforce-scope prefix, longest first, or [`BUCKET_IN_TRIE`] in `len`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrListV6 {
    pub len: u32,
    pub _pad: u32,
    pub prefixes: [V6Prefix; V6_LIST_PREFIXES],
}

impl AddrListV6 {
    /// No prefix: every address is outside.
    pub const EMPTY: AddrListV6 = AddrListV6 {
        len: 0,
        _pad: 0,
        prefixes: [V6Prefix::UNUSED; V6_LIST_PREFIXES],
    };

    /// An address's halves as [`V6Prefix`] stores them.
    #[inline(always)]
    pub fn halves(addr: &[u8; 16]) -> [u64; 2] {
        let mut hi = [0u8; 8];
        let mut lo = [0u8; 8];
        hi.copy_from_slice(&addr[..8]);
        lo.copy_from_slice(&addr[8..]);
        [u64::from_ne_bytes(hi), u64::from_ne_bytes(lo)]
    }

    /// The classes of `addr` (from [`AddrListV6::halves`]); `None` when the trie must answer.
    #[inline(always)]
    pub fn find(&self, addr: [u64; 2]) -> Option<AddrInfo> {
        if self.len == BUCKET_IN_TRIE {
            return None;
        }
        // Only the prefixes in use: an address outside them all (most IPv6 traffic) would
        // otherwise test every slot.
        let len = self.len as usize;
        for i in 0..V6_LIST_PREFIXES {
            if i >= len {
                break;
            }
            let prefix = &self.prefixes[i];
            if addr[0] & prefix.mask[0] == prefix.net[0]
                && addr[1] & prefix.mask[1] == prefix.net[1]
            {
                return Some(prefix.info);
            }
        }
        Some(AddrInfo::OUTSIDE)
    }
}
