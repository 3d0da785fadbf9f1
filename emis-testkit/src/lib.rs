//! Test support for the kernel program, shared by the integration tests (`tests/`) and
//! the benchmark (`bench/`); the `emis` binary never links it.
//!
//! - [`testrun`]: BPF_PROG_TEST_RUN on any loaded XDP program: one frame many times
//!   ([`run_repeat`]), or as a packet generator ([`testrun::live_frames`]).
//! - [`enforcer`]: the enforcer loaded with a policy, not attached ([`TestProgram`]).
//! - [`programs`]: the benchmark's own programs (no-op, parse-only, XDP_TX generator),
//!   from an object of their own built from emis-test-ebpf ([`BenchPrograms`]).
//! - [`attach`]: attaching a program inside a lab namespace.
//! - [`fixture`]: addresses for a policy's endpoints under the lab's test site.
//!
//! Namespaces, the lab and the test site itself are `emis_lab`'s.

pub mod attach;
pub mod enforcer;
pub mod fixture;
pub mod programs;
pub mod testrun;

pub use enforcer::{ProgramStats, TestProgram, VERIFIER_BUDGET};
pub use programs::BenchPrograms;
pub use testrun::{run_repeat, RunResult, XDP_ABORTED, XDP_DROP, XDP_PASS};
