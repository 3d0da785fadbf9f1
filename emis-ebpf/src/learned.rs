//! Addresses learned from DNS answers (`emis_common::learned`): the daemon writes and
//! expires them; the decision reads them, and only for a port whose candidate rules name
//! hostnames, and only for an address whose bit in the learned filter is set (an array
//! read the verifier inlines, where the map is a hash lookup through a helper call).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};
use emis_common::{learned_filter_bit, Addr, LearnedValue, LEARNED_FILTER_WORDS, MAX_LEARNED};

#[map(name = "EMIS_LEARNED_V4")]
static LEARNED_V4: HashMap<[u8; 4], LearnedValue> = HashMap::with_max_entries(MAX_LEARNED, 0);
#[map(name = "EMIS_LEARNED_V6")]
static LEARNED_V6: HashMap<[u8; 16], LearnedValue> = HashMap::with_max_entries(MAX_LEARNED, 0);
#[map(name = "EMIS_LEARNED_FILTER")]
static FILTER: Array<u64> = Array::with_max_entries(LEARNED_FILTER_WORDS, 0);

/// Whether `addr` may have been learned: its bit in the learned filter is set. A clear
/// bit means it was not, and the packet needs no map lookup (nor the out-of-line walk).
#[inline(always)]
pub fn may_be_learned(addr: &Addr, v6: bool) -> bool {
    let bit = learned_filter_bit(addr, v6);
    FILTER
        .get(bit / 64)
        .is_some_and(|word| *word & (1u64 << (bit % 64)) != 0)
}

/// What `addr` was learned for, if it was: the rules of the names it answered and the
/// count-scope classes they name. Read in place (the value is too large to copy to the
/// stack). Asked after [`may_be_learned`].
#[inline(always)]
pub fn lookup(addr: &Addr, v6: bool) -> Option<&'static LearnedValue> {
    if v6 {
        unsafe { LEARNED_V6.get(addr) }
    } else {
        unsafe { LEARNED_V4.get(&[addr[0], addr[1], addr[2], addr[3]]) }
    }
}
