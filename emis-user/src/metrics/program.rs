//! What the metrics say about the program itself: which build and which kernel object
//! (`emis_build_info`), and, with `--bpf-stats`, what it costs: the run time and run
//! count the kernel keeps for each BPF program while its statistics are on.

use std::{
    os::fd::OwnedFd,
    path::PathBuf,
    sync::{Mutex, OnceLock},
};

use aya::programs::ProgramInfo;
use sha2::{Digest as _, Sha256};

/// This binary's version and the SHA-256 of the kernel object embedded in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    pub version: &'static str,
    pub kernel_object_sha256: String,
}

/// Computed once: the object does not change while the binary runs.
pub fn build_info() -> &'static BuildInfo {
    static INFO: OnceLock<BuildInfo> = OnceLock::new();
    INFO.get_or_init(|| BuildInfo {
        version: env!("CARGO_PKG_VERSION"),
        kernel_object_sha256: sha256_hex(crate::loader::PROGRAM_OBJECT),
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The kernel's BPF run-time statistics are on while this is held (BPF_ENABLE_STATS);
/// they cost every BPF program on the host two clock reads per run, so only on request.
#[derive(Debug)]
pub struct StatsEnabled {
    _fd: OwnedFd,
}

/// Why `--bpf-stats` could not turn the statistics on.
#[derive(Debug, thiserror::Error)]
#[error(
    "--bpf-stats: enabling the kernel's BPF run-time statistics failed (BPF_ENABLE_STATS \
     needs Linux 5.8 and root); run without --bpf-stats, or turn them on for the whole host \
     with `sysctl kernel.bpf_stats_enabled=1`"
)]
pub struct StatsError(#[source] aya::sys::SyscallError);

impl StatsEnabled {
    pub fn enable() -> Result<StatsEnabled, StatsError> {
        aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map(|fd| StatsEnabled { _fd: fd })
            .map_err(StatsError)
    }
}

/// Run time and runs of the program, summed over every program this daemon has had
/// pinned: a reload swaps in a new program whose kernel counters start at zero.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    pub run_seconds: f64,
    pub runs: u64,
}

/// Reads the pinned program's statistics at scrape time.
#[derive(Debug)]
pub struct ProgramCost {
    program_pin: PathBuf,
    totals: Mutex<Totals>,
}

/// Nanoseconds and runs of the programs before the current one, and the current one's
/// last reading.
#[derive(Debug, Default)]
struct Totals {
    program_id: Option<u32>,
    earlier: (u64, u64),
    current: (u64, u64),
}

impl Totals {
    /// Folds in one reading of program `id`.
    fn observe(&mut self, id: u32, run_ns: u64, runs: u64) -> Cost {
        if self.program_id != Some(id) {
            if self.program_id.is_some() {
                self.earlier.0 += self.current.0;
                self.earlier.1 += self.current.1;
            }
            self.program_id = Some(id);
        }
        self.current = (run_ns, runs);
        let ns = self.earlier.0 + run_ns;
        Cost {
            run_seconds: ns as f64 / 1e9,
            runs: self.earlier.1 + runs,
        }
    }
}

impl ProgramCost {
    pub fn new(program_pin: PathBuf) -> ProgramCost {
        ProgramCost {
            program_pin,
            totals: Mutex::new(Totals::default()),
        }
    }

    /// `None` when the program cannot be read (the scrape then leaves these metrics out).
    pub fn read(&self) -> Option<Cost> {
        let info = match ProgramInfo::from_pin(&self.program_pin) {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(error = %e, pin = %self.program_pin.display(), "reading the program's run-time statistics");
                return None;
            }
        };
        let mut totals = self.totals.lock().ok()?;
        Some(totals.observe(
            info.id(),
            info.run_time().as_nanos() as u64,
            info.run_count(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_continue_across_program_swaps() {
        let mut t = Totals::default();
        assert_eq!(t.observe(7, 1_000, 10).runs, 10);
        assert_eq!(t.observe(7, 3_000, 30).runs, 30);
        // A reload: program 9 starts from zero.
        let after = t.observe(9, 500, 5);
        assert_eq!(after.runs, 35);
        assert!((after.run_seconds - 3.5e-6).abs() < 1e-12);
        assert_eq!(t.observe(9, 1_000, 12).runs, 42);
    }

    #[test]
    fn build_info_hashes_the_embedded_object() {
        let info = build_info();
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(info.kernel_object_sha256.len(), 64);
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
