//! BPF_PROG_TEST_RUN on a loaded XDP program, without attaching it: the kernel runs the
//! program on a frame and reports the verdict and the time, or (live frames) transmits
//! what the program returns XDP_TX for.

use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};

/// One run's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunResult {
    /// The XDP action (1 drop, 2 pass; 0 would be aborted).
    pub action: u32,
    /// Mean nanoseconds per run, as the kernel measured it.
    pub ns_per_run: u64,
}

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

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
/// (an XDP_TX program, [`crate::programs::TX`]) runs as if each frame arrived on
/// `ifindex`, and the kernel transmits it back out of that interface, `batch` frames at a
/// time. Must be called from a thread inside the network namespace that holds `ifindex`
/// (`emis_lab::in_netns_scoped`). Returns the kernel's time.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_frames_context_names_the_frame_and_the_interface() {
        let ctx = xdp_md(60, 7);
        assert_eq!(ctx[..4], 0u32.to_ne_bytes());
        assert_eq!(ctx[4..8], 60u32.to_ne_bytes());
        assert_eq!(ctx[12..16], 7u32.to_ne_bytes());
        assert!(ctx[16..].iter().all(|&b| b == 0));
    }
}
