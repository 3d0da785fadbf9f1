//! emis: an XDP enforcer for the EMIS Web network requirements; the daemon half.
//!
//! The policy itself (spec, compiler, reference model) lives in `emis-policy`. Here:
//! `loader` loads the XDP program and fills its maps; `daemon` owns the lifecycle (pins,
//! state file, lock, attach and swap, reload, status, detach); `stats`, `flows` and
//! `metrics` read its counters; `kernel_log` reads the program's per-decision trace.
//! `metrics` read its counters; `learned` writes addresses learned from DNS.

pub mod daemon;
pub mod events;
pub mod flows;
pub mod kernel_log;
pub mod learned;
pub mod linktype;
pub mod loader;
pub mod metrics;
pub mod stats;
