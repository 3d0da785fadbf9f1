//! Addresses for a policy's endpoints under the lab's test site
//! (`emis_lab::site::TEST_SITE`), for tests that build one frame per rule.

use std::net::{IpAddr, Ipv4Addr};

use emis_lab::site::{CLINICAL_SERVER, OTHER_LOCAL_SITE_HOST, SITE_HOST};
use emis_policy::policy::{Endpoint, Policy, Role};

/// An address inside `endpoint` of a rule: ten past the start of a network's first prefix,
/// or the site host of a role. `other_side` picks the other local site for
/// `local-sites`, so a rule between local sites gets two different hosts.
pub fn address_in(policy: &Policy, endpoint: Endpoint, other_side: bool) -> IpAddr {
    let v4 = |a: Ipv4Addr| IpAddr::V4(a);
    match endpoint {
        Endpoint::Network(id) => match policy.networks[id as usize].prefixes[0].network() {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 10).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 10).into()),
        },
        Endpoint::Role(role) if role == Role::CLINICAL_SERVER => v4(CLINICAL_SERVER),
        Endpoint::Role(role) if role == Role::LOCAL_SITES && other_side => {
            v4(OTHER_LOCAL_SITE_HOST)
        }
        Endpoint::Role(_) => v4(SITE_HOST),
    }
}
