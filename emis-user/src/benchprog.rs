//! The benchmark's kernel programs (emis-ebpf/src/bench.rs): loaded by name from the same
//! object as the enforcer, run with BPF_PROG_TEST_RUN, used as a live-frames packet
//! generator, and attached inside network namespaces. Shared by `emis-bench` and the tests.

use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use aya::{
    programs::{xdp::XdpLinkId, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};

use crate::loader::{self, PROGRAM_OBJECT};
use crate::testrun::RunResult;

/// XDP_PASS on every frame: the floor of a BPF_PROG_TEST_RUN measurement.
pub const NOOP_PASS: &str = "emis_noop_pass";
/// XDP_DROP on every frame: the receiver's limit on veth.
pub const NOOP_DROP: &str = "emis_noop_drop";
/// The enforcer's parsers only: no map lookup, decision or counter; XDP_PASS.
pub const PARSE_ONLY: &str = "emis_parse_only";
/// XDP_TX on every frame: the live-frames generator.
pub const TX: &str = "emis_tx";
pub const ALL: [&str; 4] = [NOOP_PASS, NOOP_DROP, PARSE_ONLY, TX];

/// The benchmark programs, loaded from the embedded object (with maps of their own that
/// they never use), not attached anywhere.
pub struct BenchPrograms {
    ebpf: Ebpf,
}

impl BenchPrograms {
    pub fn load() -> Result<BenchPrograms> {
        loader::preflight()?;
        let mut ebpf = EbpfLoader::new()
            .load(PROGRAM_OBJECT)
            .context("loading the emis kernel object for the benchmark programs")?;
        for name in ALL {
            xdp_mut(&mut ebpf, name)?
                .load()
                .with_context(|| format!("the kernel verifier rejected {name}"))?;
        }
        Ok(BenchPrograms { ebpf })
    }

    pub fn program(&self, name: &str) -> Result<&Xdp> {
        self.ebpf
            .program(name)
            .ok_or_else(|| anyhow!("the kernel object has no program named {name}"))?
            .try_into()
            .with_context(|| format!("{name} is not an XDP program"))
    }

    pub fn program_mut(&mut self, name: &str) -> Result<&mut Xdp> {
        xdp_mut(&mut self.ebpf, name)
    }
}

fn xdp_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| {
            anyhow!(
                "the kernel object has no program named {name}: rebuild with `cargo xtask build`"
            )
        })?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))
}

/// Runs `program` `repeat` times on `frame`; the kernel reports the action and the mean
/// nanoseconds per run.
pub fn run_repeat(program: &Xdp, frame: &[u8], repeat: u32) -> Result<RunResult> {
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::new()
        })
        .with_context(|| format!("BPF_PROG_TEST_RUN on a {}-byte frame", frame.len()))?;
    Ok(RunResult {
        action: result.return_value,
        ns_per_run: result.duration.as_nanos() as u64,
    })
}

/// The `struct xdp_md` a live-frames run takes: the frame arrives on `ifindex`, queue 0.
fn xdp_md(frame_len: usize, ifindex: u32) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    // data = 0, data_end = frame length, data_meta = 0, ingress_ifindex, rx_queue_index,
    // egress_ifindex = 0.
    ctx[4..8].copy_from_slice(&(frame_len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// Sends `count` copies of `frame` with BPF_PROG_TEST_RUN in live-frames mode: `program`
/// (an XDP_TX program, [`TX`]) runs as if each frame arrived on `ifindex`, and the kernel
/// transmits it back out of that interface, `batch` frames at a time. Must be called from
/// a thread inside the network namespace that holds `ifindex`. Returns the kernel's time.
pub fn live_frames(
    program: &Xdp,
    frame: &[u8],
    ifindex: u32,
    batch: u32,
    count: u32,
) -> Result<Duration> {
    let ctx = xdp_md(frame.len(), ifindex);
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: count,
            attrs: TestRunAttrs::new().xdp_live_frames(batch),
            ..TestRunOptions::new()
        })
        .with_context(|| {
            format!(
                "BPF_PROG_TEST_RUN in live-frames mode on ifindex {ifindex} (is the calling \
                 thread in the interface's network namespace, and the interface up?)"
            )
        })?;
    Ok(result.duration)
}

/// Runs `f` on a thread that has joined network namespace `netns` (`ip netns`), borrowing
/// from the caller; the caller's own thread stays where it is.
pub fn in_netns_scoped<T: Send>(netns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                loader::join_netns(netns)?;
                f()
            })
            .join()
            .map_err(|_| anyhow!("a thread in network namespace {netns} panicked"))?
    })
}

/// The index of `iface` in the calling thread's network namespace.
pub fn ifindex(iface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(iface).context("interface name")?;
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("no interface {iface} in this network namespace"));
    }
    Ok(index)
}

/// Attaches `program` in native (driver) mode to `iface` in network namespace `netns`.
pub fn attach_native(program: &mut Xdp, netns: &str, iface: &str) -> Result<XdpLinkId> {
    in_netns_scoped(netns, || {
        let index = ifindex(iface)?;
        program
            .attach_to_if_index(index, XdpMode::Driver)
            .with_context(|| format!("attaching in native mode to {iface} in {netns}"))
    })
}
