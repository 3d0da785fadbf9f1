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
