//! The pure half of emis: everything that decides what the policy means, with no kernel,
//! runtime or command line in sight.
//!
//! - `spec` reads the TOML spec, the site file and Amazon's ip-ranges into a validated
//!   [`policy::Policy`], with file:line:column errors.
//! - `compile` turns a policy into the entries of the kernel maps; `capacity` holds the
//!   maps' limits and the one error for a policy that does not fit them.
//! - `model` is the reference verdict the kernel program is tested against; it decides
//!   from the policy directly, so agreement checks the compiler too.
//! - `packet` builds frames for tests, `explain` judges one packet for `emis explain`, and
//!   `nft` writes the same policy as an nftables ruleset.
//! - `hostnames` matches the spec's hostnames and groups the rules naming them; `dns`
//!   reads DNS responses into learned (name, address, TTL) answers.

pub mod addr_table;
pub mod capacity;
pub mod compile;
pub mod count_table;
pub mod dns;
pub mod explain;
pub mod hostnames;
pub mod model;
pub mod nft;
pub mod packet;
pub mod policy;
pub mod spec;

/// Addresses the address-table tests probe, shared by `addr_table` and `count_table`.
#[cfg(test)]
mod probes {
    /// Each range's first and last address and their outer neighbours, then `random`
    /// xorshift addresses from `seed`.
    pub fn edges_and_random(
        ranges: impl IntoIterator<Item = (u32, u32)>,
        seed: u32,
        random: usize,
    ) -> Vec<u32> {
        let mut probes = Vec::new();
        for (a, b) in ranges {
            probes.extend([a, b, a.wrapping_sub(1), b.wrapping_add(1)]);
        }
        let mut x = seed;
        for _ in 0..random {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            probes.push(x);
        }
        probes
    }
}
