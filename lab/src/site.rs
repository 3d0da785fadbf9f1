//! The test site: the site roles (`emis run --site-net ROLE=CIDR`) the kernel tests, the
//! nft comparison, the benchmark and the demo give the embedded spec, and the site
//! addresses frames are built from. The site LAN is the lab's ([`SITE_NET`]), so a
//! frame built from these addresses also travels through a lab.

use std::net::{Ipv4Addr, Ipv6Addr};

#[cfg(doc)]
use crate::topology::SITE_NET;

/// Every role set, so role boundaries are exercised: the clinical server is one host of
/// the LAN, the surgery half of it, and local sites include a second LAN.
pub const TEST_SITE: &[&str] = &[
    "lan=192.168.10.0/24",
    "clinical-server=192.168.10.5/32",
    "surgery=192.168.10.0/25",
    "local-sites=192.168.10.0/24",
    "local-sites=192.168.20.0/24",
    "lan=2001:db8:10::/48",
];

/// A LAN host (in `lan`, `surgery` and `local-sites`): the lab's `site0`.
pub const SITE_HOST: Ipv4Addr = crate::topology::SITE_ADDR;
/// The clinical server: the lab's second address on `site0`.
pub const CLINICAL_SERVER: Ipv4Addr = crate::topology::CLINICAL_ADDR;
/// A host of the other local site (in `local-sites` only).
pub const OTHER_LOCAL_SITE_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 20, 7);
/// A LAN host on IPv6.
pub const SITE_HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 2);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::SITE_NET;

    fn roles(role: &str) -> Vec<&'static str> {
        TEST_SITE
            .iter()
            .filter_map(|s| s.strip_prefix(role)?.strip_prefix('='))
            .collect()
    }

    #[test]
    fn the_site_is_the_labs() {
        assert_eq!(roles("lan"), [SITE_NET, "2001:db8:10::/48"]);
        assert_eq!(roles("clinical-server"), [format!("{CLINICAL_SERVER}/32")]);
        assert_eq!(roles("local-sites"), [SITE_NET, "192.168.20.0/24"]);
        assert_eq!(roles("surgery"), ["192.168.10.0/25"]);
        // The LAN host is in the surgery half; the other site's host in the second LAN.
        assert!(u32::from(SITE_HOST) & 0xff < 128);
        assert_eq!(OTHER_LOCAL_SITE_HOST.octets()[..3], [192, 168, 20]);
        assert_eq!(SITE_HOST_V6.segments()[..3], [0x2001, 0xdb8, 0x10]);
    }
}
