//! The compiled IPv4 count-scope trie laid out as `emis_common::count_table` describes:
//! an index by /16 and a 256-byte chunk for each /16 that is not uniform, so the kernel
//! answers most addresses with array reads and asks the trie only inside a /24 holding
//! a longer prefix. Built from the flattened trie, whose entries are sorted by address
//! then length: an enclosing prefix comes before the prefixes it holds, so painting them
//! in that order leaves each address with its longest match.

use emis_common::{
    filter_mark, CountChunk, COUNT_BYTE_ASK, COUNT_BYTE_NONE, COUNT_V4_ASK, COUNT_V4_CHUNK,
    COUNT_V4_CODES, COUNT_V4_NONE, COUNT_V4_SET, COUNT_V4_SLOTS, COUNT_V6_FILTER_WORDS,
};
use ipnet::{Ipv4Net, Ipv6Net};

use crate::compile::CountTrie;

/// What the loader writes, less the chunks, which [`CountTableV4::for_each_chunk`] builds
/// one at a time (a million prefixes touch tens of thousands of /16s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountTableV4 {
    /// Per /16, its entry: [`COUNT_V4_NONE`], `COUNT_V4_SET | code`, `COUNT_V4_CHUNK | chunk`
    /// or [`COUNT_V4_ASK`].
    pub index: Vec<u32>,
    /// The /16s with a chunk, in chunk order: the slot and the entry the /16's prefixes of
    /// /16 or shorter give it, which its chunk starts from.
    pub chunked: Vec<(u32, u32)>,
    /// The classes of each class-set code.
    pub sets: Vec<u64>,
}

/// The index entry for a prefix of /16 or shorter with class set `id`.
fn entry_for(id: u32) -> u32 {
    if id < COUNT_V4_CODES {
        COUNT_V4_SET | id
    } else {
        COUNT_V4_ASK
    }
}

/// The chunk byte for class set `id`.
fn byte_for(id: u32) -> u8 {
    if id < COUNT_V4_CODES {
        (id + 1) as u8
    } else {
        COUNT_BYTE_ASK
    }
}

/// The chunk byte every /24 of a /16 with index entry `entry` starts from.
fn byte_of_entry(entry: u32) -> u8 {
    match entry {
        COUNT_V4_NONE => COUNT_BYTE_NONE,
        COUNT_V4_ASK => COUNT_BYTE_ASK,
        set => byte_for(set & !COUNT_V4_SET),
    }
}

fn slot(net: &Ipv4Net) -> u32 {
    u32::from(net.network()) >> 16
}

impl CountTableV4 {
    pub fn new(trie: &CountTrie<Ipv4Net>) -> CountTableV4 {
        let mut index = vec![COUNT_V4_NONE; COUNT_V4_SLOTS as usize];
        let mut chunked = vec![false; COUNT_V4_SLOTS as usize];
        for &(net, id) in &trie.entries {
            if net.prefix_len() <= 16 {
                let first = slot(&net);
                let last = u32::from(net.broadcast()) >> 16;
                index[first as usize..=last as usize].fill(entry_for(id));
            } else {
                chunked[slot(&net) as usize] = true;
            }
        }
        let mut with_chunks = Vec::new();
        for (slot, entry) in index.iter_mut().enumerate() {
            if chunked[slot] {
                with_chunks.push((slot as u32, *entry));
                *entry = COUNT_V4_CHUNK | (with_chunks.len() as u32 - 1);
            }
        }
        let codes = trie.classes.len().min(COUNT_V4_CODES as usize);
        CountTableV4 {
            index,
            chunked: with_chunks,
            sets: trie.classes[..codes].to_vec(),
        }
    }

    /// Builds each chunk in turn from `trie` (the one [`CountTableV4::new`] was given)
    /// and hands it to `write` with its number; stops at `write`'s first error.
    pub fn for_each_chunk<E>(
        &self,
        trie: &CountTrie<Ipv4Net>,
        mut write: impl FnMut(u32, &CountChunk) -> Result<(), E>,
    ) -> Result<(), E> {
        let entries = &trie.entries;
        let mut at = 0;
        for (number, &(chunk_slot, base)) in self.chunked.iter().enumerate() {
            let mut chunk = CountChunk {
                bytes: [byte_of_entry(base); 256],
            };
            while at < entries.len() && slot(&entries[at].0) < chunk_slot {
                at += 1;
            }
            while at < entries.len() && slot(&entries[at].0) == chunk_slot {
                let (net, id) = entries[at];
                at += 1;
                let len = net.prefix_len();
                if len <= 16 {
                    continue;
                }
                let first = (u32::from(net.network()) >> 8 & 0xff) as usize;
                if len <= 24 {
                    let last = (u32::from(net.broadcast()) >> 8 & 0xff) as usize;
                    chunk.bytes[first..=last].fill(byte_for(id));
                } else {
                    chunk.bytes[first] = COUNT_BYTE_ASK;
                }
            }
            write(number as u32, &chunk)?;
        }
        Ok(())
    }
}

/// The IPv6 count filter's words (`emis_common::MAP_COUNT_V6_FILTER`): the bit of every
/// /16 that a prefix of `trie` covers, in whole or in part.
pub fn count_v6_filter(trie: &CountTrie<Ipv6Net>) -> Vec<u64> {
    let mut words = vec![0u64; COUNT_V6_FILTER_WORDS as usize];
    for &(net, _) in &trie.entries {
        let first = (u128::from(net.network()) >> 112) as u32;
        let last = (u128::from(net.broadcast()) >> 112) as u32;
        for bit in first..=last {
            filter_mark(&mut words, bit);
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use emis_common::count_v4_lookup;

    use super::*;

    /// The trie's answer: the flattened classes of the longest prefix holding `addr`.
    fn longest(trie: &CountTrie<Ipv4Net>, addr: u32) -> u64 {
        trie.iter()
            .filter(|(net, _)| net.contains(&Ipv4Addr::from(addr)))
            .max_by_key(|(net, _)| net.prefix_len())
            .map_or(0, |(_, classes)| classes)
    }

    fn check(prefixes: &[(&str, u64)], asked: impl Fn(u32) -> bool) {
        let trie = CountTrie::v4(prefixes.iter().map(|(n, c)| (n.parse().unwrap(), *c)));
        let table = CountTableV4::new(&trie);
        let mut chunks = Vec::new();
        table
            .for_each_chunk(&trie, |n, chunk| {
                assert_eq!(n as usize, chunks.len());
                chunks.push(*chunk);
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(chunks.len(), table.chunked.len());
        let ranges: Vec<(u32, u32)> = trie
            .iter()
            .map(|(net, _)| (u32::from(net.network()), u32::from(net.broadcast())))
            .collect();
        let mut probes =
            crate::probes::edges_and_random(ranges.iter().copied(), 0x2545_f491, 200_000);
        // And each range's second half, where a longer prefix often starts.
        probes.extend(ranges.iter().map(|&(a, _)| a | 0x80));
        for addr in probes {
            let found = count_v4_lookup(
                addr,
                |slot| table.index.get(slot as usize).copied(),
                |chunk, byte| chunks.get(chunk as usize).map(|c| c.bytes[byte]),
                |code| table.sets.get(code as usize).copied(),
            );
            match found {
                Some(classes) => {
                    assert_eq!(classes, longest(&trie, addr), "{}", Ipv4Addr::from(addr))
                }
                None => assert!(asked(addr), "{} asks the trie", Ipv4Addr::from(addr)),
            }
        }
    }

    #[test]
    fn every_address_gets_the_trie_s_longest_match_or_asks_it() {
        check(
            &[
                ("3.8.0.0/14", 1),
                ("3.8.16.0/20", 2),
                ("3.8.16.0/24", 4),
                ("3.8.16.64/26", 8),
                ("3.9.0.0/16", 16),
                ("18.130.0.0/16", 1),
                ("18.130.7.0/24", 2),
                ("52.0.0.0/10", 4),
                ("52.56.7.128/25", 1),
                ("54.239.0.0/17", 2),
                ("99.0.0.0/8", 1),
                ("99.1.0.0/16", 2),
            ],
            // Only the /24s holding the /26 (3.8.16/24) and the /25 (52.56.7/24) defer to the trie.
            |addr| addr >> 8 == 0x03_0810 || addr >> 8 == 0x34_3807,
        );
    }

    #[test]
    fn class_sets_past_the_table_s_codes_are_left_to_the_trie() {
        // 300 distinct class sets: the first 254 get codes, the rest ask the trie.
        let nets: Vec<(String, u64)> = (0..300u64)
            .map(|i| (format!("{}.{}.0.0/16", 20 + i / 256, i % 256), i + 1))
            .chain((0..300u64).map(|i| (format!("60.{}.{}.0/24", i / 256, i % 256), i + 1)))
            .collect();
        let prefixes: Vec<(&str, u64)> = nets.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        let trie = CountTrie::v4(prefixes.iter().map(|(n, c)| (n.parse().unwrap(), *c)));
        let table = CountTableV4::new(&trie);
        assert_eq!(table.sets.len(), COUNT_V4_CODES as usize);
        check(&prefixes, |addr| {
            let class = longest(&trie, addr);
            !table.sets.contains(&class)
        });
    }

    #[test]
    fn the_ipv6_filter_holds_the_16s_of_every_prefix_and_no_other() {
        let nets: [(&str, u64); 3] = [
            ("2a05:d01c::/36", 1),
            ("2600:1f00::/24", 2),
            ("2406::/12", 1),
        ];
        let mut trie = CountTrie::default();
        for (i, (net, _)) in nets.iter().enumerate() {
            trie.entries
                .push((net.parse::<Ipv6Net>().unwrap(), i as u32));
        }
        let words = count_v6_filter(&trie);
        let set = |top: u32| words[(top / 64) as usize] & 1 << (top % 64) != 0;
        let addr_top =
            |a: &str| emis_common::count_v6_bit(&a.parse::<std::net::Ipv6Addr>().unwrap().octets());
        for inside in ["2a05:d01c::1", "2600:1f00::5", "2400::1", "240f:ffff::1"] {
            assert!(set(addr_top(inside)), "{inside}");
        }
        for outside in ["2a06::1", "2001:db8::1", "2410::1", "2601::1"] {
            assert!(!set(addr_top(outside)), "{outside}");
        }
        // 2406::/12 covers 16 /16s, the others one each.
        assert_eq!(words.iter().map(|w| w.count_ones()).sum::<u32>(), 18);
    }

    #[test]
    fn an_empty_trie_answers_none_everywhere() {
        let table = CountTableV4::new(&CountTrie::default());
        assert!(table.index.iter().all(|&e| e == COUNT_V4_NONE));
        assert!(table.chunked.is_empty() && table.sets.is_empty());
    }
}
