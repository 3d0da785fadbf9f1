//! The compiled IPv4 address classes (enforce-scope networks and site roles, already
//! flattened so the longest match answers) laid out as `emis_common::addr_table`
//! describes: an index by /16 and one bucket per distinct /16 content.

use std::collections::{BTreeMap, HashMap};

use emis_common::{
    AddrBucket, AddrInfo, AddrListV6, BucketPrefix, V6Prefix, ADDR_V4_SLOTS, BUCKET_IN_TRIE,
    BUCKET_PREFIXES, V6_LIST_PREFIXES,
};
use ipnet::{Ipv4Net, Ipv6Net};

/// What the loader writes: `(slot, bucket index)` for every /16 a prefix touches, and
/// the buckets (index 0 unused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrTableV4 {
    pub slots: Vec<(u32, u32)>,
    pub buckets: Vec<AddrBucket>,
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

impl AddrTableV4 {
    /// The table of `v4`, a flattened list of distinct prefixes.
    pub fn new(v4: &[(Ipv4Net, AddrInfo)]) -> AddrTableV4 {
        // Per /16: the longest covering prefix of /16 or shorter, and the longer ones.
        let mut shorter: BTreeMap<u32, (u8, AddrInfo)> = BTreeMap::new();
        let mut longer: BTreeMap<u32, Vec<(u8, u32, AddrInfo)>> = BTreeMap::new();
        for &(net, info) in v4 {
            let len = net.prefix_len();
            let addr = u32::from(net.network());
            if len <= 16 {
                let first = addr >> 16;
                let count = 1u32 << (16 - len);
                for slot in first..first + count {
                    let entry = shorter.entry(slot).or_insert((len, info));
                    if len >= entry.0 {
                        *entry = (len, info);
                    }
                }
            } else {
                longer
                    .entry(addr >> 16)
                    .or_default()
                    .push((len, addr, info));
            }
        }
        let touched: std::collections::BTreeSet<u32> =
            shorter.keys().chain(longer.keys()).copied().collect();
        let mut buckets = vec![AddrBucket::default()];
        let mut index: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut slots = Vec::with_capacity(touched.len());
        for slot in touched {
            let mut bucket = AddrBucket {
                len: 0,
                _pad: 0,
                shorter: shorter
                    .get(&slot)
                    .map_or(AddrInfo::OUTSIDE, |&(_, info)| info),
                prefixes: [BucketPrefix::UNUSED; BUCKET_PREFIXES],
            };
            let mut prefixes = longer.remove(&slot).unwrap_or_default();
            if prefixes.len() > BUCKET_PREFIXES {
                bucket.len = BUCKET_IN_TRIE;
            } else {
                prefixes.sort_by_key(|p| std::cmp::Reverse(p.0));
                bucket.len = prefixes.len() as u32;
                for (i, &(len, net, info)) in prefixes.iter().enumerate() {
                    bucket.prefixes[i] = BucketPrefix {
                        net,
                        mask: mask(len),
                        info,
                    };
                }
            }
            let key = format!("{bucket:?}").into_bytes();
            let i = *index.entry(key).or_insert_with(|| {
                buckets.push(bucket);
                (buckets.len() - 1) as u32
            });
            slots.push((slot, i));
        }
        debug_assert!(slots.len() <= ADDR_V4_SLOTS as usize);
        AddrTableV4 { slots, buckets }
    }

    /// What the kernel finds for `addr`: `None` when its bucket defers to the trie.
    pub fn find(&self, addr: u32) -> Option<AddrInfo> {
        let slot = emis_common::addr_v4_slot(addr);
        match self.slots.binary_search_by_key(&slot, |&(s, _)| s) {
            Ok(i) => self.buckets[self.slots[i].1 as usize].find(addr),
            Err(_) => Some(AddrInfo::OUTSIDE),
        }
    }
}

/// The IPv6 list of `v6`, a flattened list of distinct prefixes: longest first, or
/// deferring to the trie when there are more than it holds.
pub fn addr_list_v6(v6: &[(Ipv6Net, AddrInfo)]) -> AddrListV6 {
    let mut list = AddrListV6::EMPTY;
    if v6.len() > V6_LIST_PREFIXES {
        list.len = BUCKET_IN_TRIE;
        return list;
    }
    let mut sorted = v6.to_vec();
    sorted.sort_by_key(|p| std::cmp::Reverse(p.0.prefix_len()));
    for (i, (net, info)) in sorted.iter().enumerate() {
        list.prefixes[i] = V6Prefix {
            net: AddrListV6::halves(&net.network().octets()),
            mask: AddrListV6::halves(&net.netmask().octets()),
            info: *info,
        };
    }
    list.len = sorted.len() as u32;
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(classes: u64) -> AddrInfo {
        AddrInfo {
            classes,
            network: classes as u32,
            _pad: 0,
        }
    }

    /// The longest prefix holding `addr`, as the trie answers.
    fn longest(v4: &[(Ipv4Net, AddrInfo)], addr: u32) -> AddrInfo {
        v4.iter()
            .filter(|(net, _)| net.contains(&std::net::Ipv4Addr::from(addr)))
            .max_by_key(|(net, _)| net.prefix_len())
            .map_or(AddrInfo::OUTSIDE, |&(_, info)| info)
    }

    #[test]
    fn every_address_gets_its_longest_prefix_or_the_trie() {
        let nets = [
            "10.0.0.0/8",
            "10.207.112.0/22",
            "10.207.116.0/22",
            "10.207.116.10/32",
            "192.168.10.0/24",
            "192.168.10.0/25",
            "192.168.10.5/32",
            "192.168.0.0/16",
            "194.189.117.64/26",
            "0.0.0.0/1",
            "172.16.0.0/12",
        ];
        let mut v4: Vec<(Ipv4Net, AddrInfo)> = nets
            .iter()
            .enumerate()
            .map(|(i, n)| (n.parse().unwrap(), info(1 << i)))
            .collect();
        // Nine /24s in one /16: more than a bucket holds, so that /16 goes to the trie.
        for i in 0..9u32 {
            v4.push((format!("100.64.{i}.0/24").parse().unwrap(), info(1 << 20)));
        }
        let table = AddrTableV4::new(&v4);
        let ranges = v4
            .iter()
            .map(|(net, _)| (u32::from(net.network()), u32::from(net.broadcast())));
        for addr in crate::probes::edges_and_random(ranges, 0x9e37_79b9, 100_000) {
            match table.find(addr) {
                Some(found) => assert_eq!(found, longest(&v4, addr), "address {addr:#x}"),
                None => assert_eq!(addr >> 16, 0x6440, "only 100.64/16 defers to the trie"),
            }
        }
        assert!(table.find(0x6440_0001).is_none());
    }

    #[test]
    fn every_ipv6_address_gets_its_longest_prefix() {
        let nets = [
            "2001:db8:10::/48",
            "2001:db8:10:5::/64",
            "2001:db8::/32",
            "fd00::/8",
        ];
        let v6: Vec<(Ipv6Net, AddrInfo)> = nets
            .iter()
            .enumerate()
            .map(|(i, n)| (n.parse().unwrap(), info(1 << i)))
            .collect();
        let list = addr_list_v6(&v6);
        let probes: Vec<std::net::Ipv6Addr> = [
            "2001:db8:10::1",
            "2001:db8:10:5::9",
            "2001:db8:11::1",
            "2001:db9::1",
            "fd12::1",
            "fe80::1",
            "::",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        for addr in probes {
            let want = v6
                .iter()
                .filter(|(net, _)| net.contains(&addr))
                .max_by_key(|(net, _)| net.prefix_len())
                .map_or(AddrInfo::OUTSIDE, |&(_, info)| info);
            assert_eq!(
                list.find(AddrListV6::halves(&addr.octets())),
                Some(want),
                "{addr}"
            );
        }
        let many: Vec<(Ipv6Net, AddrInfo)> = (0..9)
            .map(|i| (format!("2001:db8:{i}::/48").parse().unwrap(), info(1)))
            .collect();
        assert_eq!(addr_list_v6(&many).find([0, 0]), None);
    }
}
