//! emis: an XDP enforcer for the EMIS Web network requirements; the daemon half.
//!
//! The policy itself (spec, compiler, reference model) lives in `emis-policy`. Here:
//! `loader` loads and attaches the XDP program; `stats`, `flows` and `metrics` read its
//! counters.

pub mod flows;
pub mod loader;
pub mod metrics;
pub mod stats;
