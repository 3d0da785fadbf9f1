//! Writing learned addresses into the kernel's maps (`EMIS_LEARNED_V4`/`_V6`): one value
//! per address, the union of what its live names mean ([`HostnameGroups::learned`]).

use std::net::IpAddr;

use aya::maps::{HashMap, Map, MapData, MapError};
use emis_common::{LearnedValue, MAP_LEARNED_V4, MAP_LEARNED_V6};
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
