//! emis: an XDP enforcer for the EMIS Web network requirements.
//!
//! `spec` reads the TOML spec and site into a validated `policy`; `compile` turns it into
//! kernel map entries; `loader` loads and attaches the XDP program; `stats` and `metrics`
//! read its counters; `model` is the userspace reference verdict the kernel is tested against.

pub mod benchprog;
pub mod compile;
pub mod explain;
pub mod flows;
pub mod loader;
pub mod metrics;
pub mod model;
pub mod nft;
pub mod packet;
pub mod policy;
pub mod spec;
pub mod stats;
pub mod testrun;
