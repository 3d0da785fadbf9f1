//! Synthetic `ip-ranges.json` files shaped like Amazon's: two thirds IPv4, one third
//! IPv6, prefix lengths weighted as in Amazon's list (mostly /22-/24 for IPv4, /48 and
//! /56 for IPv6, a few very large blocks), every entry in region eu-west-2 so the
//! embedded spec's `aws` network takes all of them. Prefixes are distinct, do not
//! nest, and avoid the EMIS networks, the site and the lab, so every one is a trie entry.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

/// (prefix length, weight) for IPv4.
const V4_LENGTHS: [(u8, u32); 9] = [
    (16, 1),
    (17, 1),
    (18, 2),
    (19, 3),
    (20, 5),
    (21, 8),
    (22, 15),
    (23, 10),
    (24, 40),
];
/// (prefix length, weight) for IPv6.
const V6_LENGTHS: [(u8, u32); 8] = [
    (32, 1),
    (36, 3),
    (40, 6),
    (44, 10),
    (48, 30),
    (52, 10),
    (56, 25),
    (64, 15),
];

/// IPv4 space the generator never hands out: private, lab, EMIS networks, multicast.
const V4_AVOID: [(Ipv4Addr, u8); 11] = [
    (Ipv4Addr::new(0, 0, 0, 0), 6), // 0/8 .. 3/8: leave the low space alone
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(149, 11, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(185, 13, 0, 0), 16),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(194, 189, 0, 0), 16),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(198, 51, 100, 0), 24),
];
const V4_END: u64 = 224 << 24;

/// One synthetic prefix list.
pub struct Synthetic {
    pub v4: Vec<(Ipv4Addr, u8)>,
    pub v6: Vec<(Ipv6Addr, u8)>,
}

fn counts(total: usize, weights: &[(u8, u32)]) -> Vec<(u8, usize)> {
    let sum: u32 = weights.iter().map(|w| w.1).sum();
    let mut out: Vec<(u8, usize)> = weights
        .iter()
        .map(|&(len, w)| (len, total * w as usize / sum as usize))
        .collect();
    let given: usize = out.iter().map(|c| c.1).sum();
    // The rounding remainder goes to the most common length.
    let most = weights
        .iter()
        .enumerate()
        .max_by_key(|(_, w)| w.1)
        .map(|(i, _)| i)
        .unwrap_or(0);
    out[most].1 += total - given;
    out
}

impl Synthetic {
    /// `total` prefixes: `total * 2 / 3` IPv4 (at least one), the rest IPv6.
    pub fn new(total: usize) -> Synthetic {
        let n4 = (total * 2 / 3).max(1).min(total);
        let n6 = total - n4;
        Synthetic {
            v4: v4_prefixes(n4),
            v6: v6_prefixes(n6),
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Amazon's file format, the fields emis reads and the ones it ignores.
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(self.len() * 120 + 200);
        s.push_str("{\n  \"syncToken\": \"1700000000\",\n  \"createDate\": \"2024-01-01-00-00-00\",\n  \"prefixes\": [");
        for (i, (addr, len)) in self.v4.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(
                s,
                "\n    {{\n      \"ip_prefix\": \"{addr}/{len}\",\n      \"region\": \"eu-west-2\",\n      \"service\": \"AMAZON\",\n      \"network_border_group\": \"eu-west-2\"\n    }}"
            );
        }
        s.push_str("\n  ],\n  \"ipv6_prefixes\": [");
        for (i, (addr, len)) in self.v6.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(
                s,
                "\n    {{\n      \"ipv6_prefix\": \"{addr}/{len}\",\n      \"region\": \"eu-west-2\",\n      \"service\": \"AMAZON\",\n      \"network_border_group\": \"eu-west-2\"\n    }}"
            );
        }
        s.push_str("\n  ]\n}\n");
        s
    }

    /// An address inside the IPv4 prefix in the middle of the list (for a packet to `aws`).
    pub fn v4_inside(&self) -> Ipv4Addr {
        let (addr, _) = self.v4[self.v4.len() / 2];
        Ipv4Addr::from(u32::from(addr) + 1)
    }
}

fn v4_prefixes(n: usize) -> Vec<(Ipv4Addr, u8)> {
    let avoid: Vec<(u64, u64)> = V4_AVOID
        .iter()
        .map(|&(a, len)| {
            let lo = u32::from(a) as u64;
            (lo, lo + (1u64 << (32 - len)))
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    // Largest blocks first: the cursor then stays aligned for every later, smaller one.
    let mut cursor: u64 = 0;
    for (len, count) in counts(n, &V4_LENGTHS) {
        let size = 1u64 << (32 - len);
        let mut made = 0;
        while made < count {
            cursor = cursor.div_ceil(size) * size;
            if let Some(&(_, end)) = avoid
                .iter()
                .find(|&&(lo, hi)| cursor < hi && cursor + size > lo)
            {
                cursor = end;
                continue;
            }
            assert!(
                cursor + size <= V4_END,
                "synthetic IPv4 space exhausted after {} prefixes",
                out.len()
            );
            out.push((Ipv4Addr::from(cursor as u32), len));
            cursor += size;
            made += 1;
        }
    }
    out
}

fn v6_prefixes(n: usize) -> Vec<(Ipv6Addr, u8)> {
    // Inside 2600::/12, where Amazon's own IPv6 space is.
    let base: u128 = 0x2600u128 << 112;
    let mut out = Vec::with_capacity(n);
    let mut cursor: u128 = 0;
    for (len, count) in counts(n, &V6_LENGTHS) {
        let size = 1u128 << (128 - len);
        for _ in 0..count {
            cursor = cursor.div_ceil(size) * size;
            assert!(
                cursor + size <= 1u128 << 116,
                "synthetic IPv6 space exhausted"
            );
            out.push((Ipv6Addr::from(base + cursor), len));
            cursor += size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_no_overlap() {
        let s = Synthetic::new(30_000);
        assert_eq!(s.len(), 30_000);
        assert_eq!(s.v4.len(), 20_000);
        let mut ranges: Vec<(u64, u64)> =
            s.v4.iter()
                .map(|&(a, l)| {
                    let lo = u32::from(a) as u64;
                    (lo, lo + (1u64 << (32 - l)))
                })
                .collect();
        ranges.sort();
        for w in ranges.windows(2) {
            assert!(w[0].1 <= w[1].0, "overlap {w:?}");
        }
        for &(a, _) in &s.v4 {
            assert!(
                !a.is_private() && a.octets()[0] >= 4 && a.octets()[0] < 224,
                "{a}"
            );
        }
        let json = s.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["prefixes"].as_array().unwrap().len(), 20_000);
        assert_eq!(v["ipv6_prefixes"].as_array().unwrap().len(), 10_000);
    }

    #[test]
    fn a_million_fit() {
        let s = Synthetic::new(1_000_000);
        assert_eq!(s.len(), 1_000_000);
    }
}
