//! Address arithmetic for the sets: prefixes as inclusive ranges per address family,
//! merged and subtracted, and written back as nftables set elements.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// An address family, as nftables spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Af {
    V4,
    V6,
}

impl Af {
    pub(super) const ALL: [Af; 2] = [Af::V4, Af::V6];

    fn bits(self) -> u32 {
        match self {
            Af::V4 => 32,
            Af::V6 => 128,
        }
    }

    pub(super) fn max(self) -> u128 {
        match self {
            Af::V4 => u32::MAX as u128,
            Af::V6 => u128::MAX,
        }
    }

    /// Suffix of set and chain names.
    pub(super) fn tag(self) -> &'static str {
        match self {
            Af::V4 => "v4",
            Af::V6 => "v6",
        }
    }

    /// The address match keyword (`ip saddr`, `ip6 saddr`).
    pub(super) fn ip(self) -> &'static str {
        match self {
            Af::V4 => "ip",
            Af::V6 => "ip6",
        }
    }

    pub(super) fn addr_type(self) -> &'static str {
        match self {
            Af::V4 => "ipv4_addr",
            Af::V6 => "ipv6_addr",
        }
    }

    fn format(self, value: u128) -> String {
        match self {
            Af::V4 => Ipv4Addr::from(value as u32).to_string(),
            Af::V6 => Ipv6Addr::from(value).to_string(),
        }
    }
}

/// Inclusive address ranges, sorted and disjoint.
pub(super) type Ranges = Vec<(u128, u128)>;

fn range_of(net: &IpNet) -> (Af, u128, u128) {
    match net.trunc() {
        IpNet::V4(n) => (
            Af::V4,
            u32::from(n.network()) as u128,
            u32::from(n.broadcast()) as u128,
        ),
        IpNet::V6(n) => (Af::V6, u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// The ranges of `nets` in family `af`, merged.
pub(super) fn ranges(nets: &[IpNet], af: Af) -> Ranges {
    let mut out: Ranges = nets
        .iter()
        .map(range_of)
        .filter(|(a, _, _)| *a == af)
        .map(|(_, lo, hi)| (lo, hi))
        .collect();
    merge(&mut out);
    out
}

fn merge(ranges: &mut Ranges) {
    ranges.sort_unstable();
    let mut merged: Ranges = Vec::with_capacity(ranges.len());
    for &(lo, hi) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    *ranges = merged;
}

/// `a` without the addresses in `b` (both sorted and disjoint).
pub(super) fn subtract(a: &Ranges, b: &Ranges) -> Ranges {
    let mut out = Vec::new();
    for &(lo, hi) in a {
        let mut start = lo;
        let mut done = false;
        for &(blo, bhi) in b {
            if bhi < start || blo > hi {
                continue;
            }
            if blo > start {
                out.push((start, blo - 1));
            }
            if bhi >= hi {
                done = true;
                break;
            }
            start = bhi + 1;
        }
        if !done {
            out.push((start, hi));
        }
    }
    out
}

/// A set element: `addr/len` when the range is one prefix, `first-last` otherwise.
pub(super) fn element(af: Af, (lo, hi): (u128, u128)) -> String {
    let size = hi.wrapping_sub(lo).wrapping_add(1);
    if size == 0 && lo == 0 && hi == af.max() {
        // The whole space (only u128 wraps to 0).
        return format!("{}/0", af.format(0));
    }
    if size.is_power_of_two() && lo % size == 0 {
        let len = af.bits() - size.trailing_zeros();
        if len == af.bits() {
            return af.format(lo);
        }
        return format!("{}/{len}", af.format(lo));
    }
    if af == Af::V4 && lo == 0 && hi == af.max() {
        return "0.0.0.0/0".into();
    }
    format!("{}-{}", af.format(lo), af.format(hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(lo: u128, hi: u128) -> (u128, u128) {
        (lo, hi)
    }

    #[test]
    fn range_arithmetic() {
        let mut a = vec![r(10, 20), r(5, 9), r(30, 40), r(35, 50)];
        merge(&mut a);
        assert_eq!(a, vec![r(5, 20), r(30, 50)]);
        assert_eq!(
            subtract(&a, &vec![r(0, 6), r(15, 31), r(45, 45)]),
            vec![r(7, 14), r(32, 44), r(46, 50)]
        );
        assert_eq!(subtract(&vec![r(0, 10)], &vec![r(0, 10)]), vec![]);
        assert_eq!(subtract(&vec![r(0, 10)], &vec![]), vec![r(0, 10)]);
    }

    #[test]
    fn elements_are_prefixes_where_they_can_be() {
        let net = |s: &str| {
            let (_, lo, hi) = range_of(&s.parse().unwrap());
            (lo, hi)
        };
        assert_eq!(element(Af::V4, net("10.207.112.0/22")), "10.207.112.0/22");
        assert_eq!(element(Af::V4, net("10.0.0.1/32")), "10.0.0.1");
        assert_eq!(element(Af::V4, (0, u32::MAX as u128)), "0.0.0.0/0");
        assert_eq!(element(Af::V6, (0, u128::MAX)), "::/0");
        assert_eq!(element(Af::V6, net("2001:db8::/32")), "2001:db8::/32");
        assert_eq!(element(Af::V4, (1, 2)), "0.0.0.1-0.0.0.2");
    }
}
