//! Writing learned addresses into the kernel's maps (`EMIS_LEARNED_V4`/`_V6`): one value
//! per address, the union of what its live names mean ([`HostnameGroups::learned`]); and
//! the learned filter (`EMIS_LEARNED_FILTER`), whose bit for an address is set before the
//! address is written and cleared only after it is gone.

use std::net::IpAddr;

use aya::maps::{Array, HashMap, Map, MapData, MapError};
use emis_common::{
    filter_mark, filter_word, learned_filter_bit, LearnedValue, LEARNED_FILTER_WORDS,
    MAP_LEARNED_V4, MAP_LEARNED_V6,
};
use emis_policy::hostnames::HostnameGroups;

/// Writes `value` for `addr` into `map`, the learned map of `addr`'s family
/// ([`map_name`]); `None` removes it (an address not there is no error).
pub fn write(map: &mut Map, addr: IpAddr, value: Option<&LearnedValue>) -> Result<(), MapError> {
    let result = match addr {
        IpAddr::V4(a) => {
            let mut m: HashMap<&mut MapData, [u8; 4], LearnedValue> = HashMap::try_from(map)?;
            match value {
                Some(v) => m.insert(a.octets(), v, 0),
                None => m.remove(&a.octets()),
            }
        }
        IpAddr::V6(a) => {
            let mut m: HashMap<&mut MapData, [u8; 16], LearnedValue> = HashMap::try_from(map)?;
            match value {
                Some(v) => m.insert(a.octets(), v, 0),
                None => m.remove(&a.octets()),
            }
        }
    };
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

/// The learned map holding addresses of `addr`'s family.
pub fn map_name(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        MAP_LEARNED_V4
    } else {
        MAP_LEARNED_V6
    }
}

/// What the kernel holds for an address learned for `names`, or `None` if no rule names
/// any of them; the flag says some rules did not fit.
pub fn value_for<'a>(
    hostnames: &HostnameGroups,
    names: impl IntoIterator<Item = &'a str>,
) -> Option<(LearnedValue, bool)> {
    let groups = names
        .into_iter()
        .fold(0, |bits, name| bits | hostnames.groups_of(name));
    hostnames
        .learned(groups)
        .map(|learned| (learned.value, learned.overflow))
}

/// Removes every address from `map` (a learned map of either family); how many it removed.
pub fn clear(map: &mut Map, v6: bool) -> Result<usize, MapError> {
    fn clear_keys<const N: usize>(map: &mut Map) -> Result<usize, MapError> {
        let mut m: HashMap<&mut MapData, [u8; N], LearnedValue> = HashMap::try_from(map)?;
        let keys: Vec<[u8; N]> = m.keys().filter_map(Result::ok).collect();
        for key in &keys {
            match m.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(keys.len())
    }
    if v6 {
        clear_keys::<16>(map)
    } else {
        clear_keys::<4>(map)
    }
}

/// `addr`'s bit in the learned filter.
pub fn filter_bit(addr: IpAddr) -> u32 {
    let mut bytes = [0u8; 16];
    match addr {
        IpAddr::V4(a) => bytes[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => bytes = a.octets(),
    }
    learned_filter_bit(&bytes, addr.is_ipv6())
}

/// The learned filter's words with the bits of `addrs` set.
pub fn filter_words(addrs: impl IntoIterator<Item = IpAddr>) -> Vec<u64> {
    let mut words = vec![0u64; LEARNED_FILTER_WORDS as usize];
    for addr in addrs {
        filter_mark(&mut words, filter_bit(addr));
    }
    words
}

/// Writes word `index` of the learned filter `map`.
pub fn write_filter_word(map: &mut Map, index: u32, word: u64) -> Result<(), MapError> {
    let mut filter: Array<&mut MapData, u64> = Array::try_from(map)?;
    filter.set(index, word, 0)
}

/// Sets `addr`'s bit in the learned filter `map`, keeping the others (a read, then a write).
pub fn set_filter_bit(map: &mut Map, addr: IpAddr) -> Result<(), MapError> {
    let (index, mask) = filter_word(filter_bit(addr));
    let mut filter: Array<&mut MapData, u64> = Array::try_from(map)?;
    let word = filter.get(&index, 0)?;
    filter.set(index, word | mask, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_holds_each_address_bit_as_the_kernel_computes_it() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        let words = filter_words([v4, v6]);
        assert_eq!(words.len(), LEARNED_FILTER_WORDS as usize);
        let mut v4_bytes = [0u8; 16];
        v4_bytes[..4].copy_from_slice(&[192, 0, 2, 7]);
        let v6_bytes = "2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        for (bit, addr) in [
            (learned_filter_bit(&v4_bytes, false), v4),
            (learned_filter_bit(&v6_bytes, true), v6),
        ] {
            assert_eq!(filter_bit(addr), bit);
            assert_ne!(words[(bit / 64) as usize] & 1 << (bit % 64), 0, "{addr}");
        }
        let set: u32 = words.iter().map(|w| w.count_ones()).sum();
        assert!(set <= 2);
    }
}
