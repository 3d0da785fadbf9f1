//! The benchmark's own XDP programs (emis-test-ebpf), from an object built for the tests
//! and the benchmark only: loaded by name, run with BPF_PROG_TEST_RUN, used as a
//! live-frames packet generator, and attached inside network namespaces.

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    programs::{SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use emis::loader;

/// The test programs, built by build.rs (aya-build) from emis-test-ebpf and embedded here.
pub static TEST_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/emis-test"));

/// XDP_PASS on every frame: the floor of a BPF_PROG_TEST_RUN measurement.
pub const NOOP_PASS: &str = "emis_noop_pass";
/// XDP_DROP on every frame: the receiver's limit on veth.
pub const NOOP_DROP: &str = "emis_noop_drop";
/// The enforcer's parsers only: no map lookup, decision or counter; XDP_PASS.
pub const PARSE_ONLY: &str = "emis_parse_only";
/// The parsers and one lookup in an LRU flow table: the floor of a stateful program.
pub const FLOW_LOOKUP: &str = "emis_flow_lookup";
/// XDP_TX on every frame: the live-frames generator.
pub const TX: &str = "emis_tx";
pub const ALL: [&str; 5] = [NOOP_PASS, NOOP_DROP, PARSE_ONLY, FLOW_LOOKUP, TX];
/// TCX_NEXT on every packet: the floor the TC egress program is measured against.
pub const NOOP_TC: &str = "emis_noop_tc";
/// The TC programs of the object.
pub const TC_ALL: [&str; 1] = [NOOP_TC];

/// The test programs, loaded through the verifier, not attached anywhere.
pub struct BenchPrograms {
    ebpf: Ebpf,
}

impl BenchPrograms {
    pub fn load() -> Result<BenchPrograms> {
        if TEST_OBJECT.is_empty() {
            bail!(
                "emis-testkit was built with AYA_BUILD_SKIP=1 and carries no test programs; \
                 rebuild without it (`cargo xtask build` installs what the eBPF build needs)"
            );
        }
        // Root and the memlock limit, as for the enforcer.
        loader::preflight()?;
        let mut ebpf = EbpfLoader::new()
            .load(TEST_OBJECT)
            .context("loading the emis test-program object")?;
        for name in ALL {
            xdp_mut(&mut ebpf, name)?
                .load()
                .with_context(|| format!("the kernel verifier rejected {name}"))?;
        }
        for name in TC_ALL {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("the test-program object has no program named {name}"))?
                .try_into()
                .with_context(|| format!("{name} is not a TC program"))?;
            program
                .load()
                .with_context(|| format!("the kernel verifier rejected {name}"))?;
        }
        Ok(BenchPrograms { ebpf })
    }

    pub fn program(&self, name: &str) -> Result<&Xdp> {
        self.ebpf
            .program(name)
            .ok_or_else(|| anyhow!("the test-program object has no program named {name}"))?
            .try_into()
            .with_context(|| format!("{name} is not an XDP program"))
    }

    /// A TC program of the object ([`TC_ALL`]).
    pub fn tc_program(&self, name: &str) -> Result<&SchedClassifier> {
        self.ebpf
            .program(name)
            .ok_or_else(|| anyhow!("the test-program object has no program named {name}"))?
            .try_into()
            .with_context(|| format!("{name} is not a TC program"))
    }

    pub fn program_mut(&mut self, name: &str) -> Result<&mut Xdp> {
        xdp_mut(&mut self.ebpf, name)
    }
}

fn xdp_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| {
            anyhow!(
                "the test-program object has no program named {name}: rebuild with \
                 `cargo build -p emis-testkit`"
            )
        })?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))
}
