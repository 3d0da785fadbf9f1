//! The front of the IPv4 count-scope trie (DIR-16-8): the count-scope classes of an
//! IPv4 address from an index by its top 16 bits and, where a /16 is not uniform, a
//! 256-byte chunk by its /24, each an array read the verifier inlines. The trie
//! ([`MAP_COUNT_V4`](crate::MAP_COUNT_V4), a walk through a helper call whose depth grows
//! with the prefixes: about 90 ns more at a million) is asked only for a /24 holding a
//! prefix longer than /24, or a class set the table has no code for.
//!
//! The loader builds the table from the flattened count trie (each prefix's classes
//! hold its enclosing prefixes' too), so a lookup gives what the trie's longest match
//! would. [`count_v4_lookup`] is the lookup itself, for the kernel and the tests alike.

/// Name of the array from an address's top 16 bits to its entry (`u32`, see [`COUNT_V4_NONE`]).
pub const MAP_COUNT_V4_INDEX: &str = "EMIS_COUNT_V4_INDEX";
/// Name of the array of [`CountChunk`]s; the loader sizes it to the chunks it writes.
pub const MAP_COUNT_V4_CHUNKS: &str = "EMIS_COUNT_V4_CHUNKS";
/// Name of the array from a class-set code to its classes (`u64`).
pub const MAP_COUNT_V4_SETS: &str = "EMIS_COUNT_V4_SETS";
/// Slots of [`MAP_COUNT_V4_INDEX`]: one per /16.
pub const COUNT_V4_SLOTS: u32 = 65_536;
/// Chunks [`MAP_COUNT_V4_CHUNKS`] may hold: one per /16.
pub const MAX_COUNT_V4_CHUNKS: u32 = COUNT_V4_SLOTS;
/// Class sets the table can name; prefixes of any other set are left to the trie.
pub const COUNT_V4_CODES: u32 = 254;

/// Index entry: no count-scope prefix covers any address of the /16.
pub const COUNT_V4_NONE: u32 = 0;
/// Index entry flag: the whole /16 has the class set in the low bits.
pub const COUNT_V4_SET: u32 = 1 << 30;
/// Index entry flag: the /16's chunk is the one numbered in the low bits.
pub const COUNT_V4_CHUNK: u32 = 1 << 31;
/// Index entry and chunk byte meaning "ask the trie" (as an index entry, all ones).
pub const COUNT_V4_ASK: u32 = u32::MAX;
/// Chunk byte: no count-scope prefix covers the /24.
pub const COUNT_BYTE_NONE: u8 = 0;
/// Chunk byte: a prefix longer than /24 is in the /24, or its set has no code.
pub const COUNT_BYTE_ASK: u8 = u8::MAX;

/// One /16 that is not uniform: per /24, [`COUNT_BYTE_NONE`], [`COUNT_BYTE_ASK`], or
/// its class-set code plus one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountChunk {
    pub bytes: [u8; 256],
}

/// The slot of an IPv4 address (host order) in [`MAP_COUNT_V4_INDEX`].
#[inline(always)]
pub const fn count_v4_slot(addr: u32) -> u32 {
    addr >> 16
}

/// The byte of an IPv4 address (host order) in its /16's chunk.
#[inline(always)]
pub const fn count_v4_byte(addr: u32) -> usize {
    ((addr >> 8) & 0xff) as usize
}

/// The count-scope classes of `addr` (host order) from the table, read through `index`,
/// `chunk_byte` (chunk number, byte) and `set`; `None` where the trie must answer (or a
/// read found nothing, which the loader rules out).
#[inline(always)]
pub fn count_v4_lookup(
    addr: u32,
    index: impl FnOnce(u32) -> Option<u32>,
    chunk_byte: impl FnOnce(u32, usize) -> Option<u8>,
    set: impl FnOnce(u32) -> Option<u64>,
) -> Option<u64> {
    let entry = index(count_v4_slot(addr))?;
    let code = if entry == COUNT_V4_NONE {
        return Some(0);
    } else if entry == COUNT_V4_ASK {
        return None;
    } else if entry & COUNT_V4_CHUNK != 0 {
        match chunk_byte(entry & !COUNT_V4_CHUNK, count_v4_byte(addr))? {
            COUNT_BYTE_NONE => return Some(0),
            COUNT_BYTE_ASK => return None,
            byte => byte as u32 - 1,
        }
    } else {
        entry & !COUNT_V4_SET
    };
    set(code)
}

/// Name of the IPv6 count filter: an array of `u64` words, [`COUNT_V6_FILTER_WORDS`] of
/// them, one bit per /16 of the IPv6 space, set where some count-scope prefix covers
/// part of that /16. The IPv6 count trie is walked only for an address whose bit is set:
/// the count-scope networks (Amazon's ranges) sit in a few /16s, so most IPv6 traffic
/// skips the walk.
pub const MAP_COUNT_V6_FILTER: &str = "EMIS_COUNT_V6_FILTER";
/// Words of [`MAP_COUNT_V6_FILTER`]: 65,536 bits.
pub const COUNT_V6_FILTER_WORDS: u32 = 1024;

/// The bit of an IPv6 address in [`MAP_COUNT_V6_FILTER`]: its top 16 bits.
#[inline(always)]
pub const fn count_v6_bit(addr: &crate::Addr) -> u32 {
    (addr[0] as u32) << 8 | addr[1] as u32
}
