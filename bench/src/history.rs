//! One line per benchmark run appended to `bench/history.jsonl` (committed), so a
//! regression in the verifier's work or in a class's cost shows against earlier runs.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::report::Report;

/// Relative to the workspace root, where `cargo xtask bench` runs.
pub const HISTORY: &str = "bench/history.jsonl";

#[derive(Serialize)]
struct Line<'a> {
    /// Seconds since the Unix epoch.
    time: u64,
    commit: String,
    quick: bool,
    cpu: &'a str,
    kernel: &'a str,
    /// Per program: processed insns and JIT bytes.
    programs: Vec<(&'a str, u32, u32)>,
    /// Per class: emis/no-op ratio, emis ns.
    cost: Vec<(&'a str, f64, f64)>,
    /// Per veth contender: ratio to the no-op XDP_DROP.
    throughput: Vec<(&'a str, f64)>,
}

fn git(args: &[&str]) -> Option<String> {
    std::process::Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// HEAD, with `-dirty` when the measured tree had uncommitted changes.
fn commit() -> String {
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{head}-dirty")
    } else {
        head
    }
}

/// Appends `report`'s summary to `path`, if its directory exists (a run outside the
/// workspace root keeps no history).
pub fn append(report: &Report, path: &Path) -> Result<()> {
    if !path.parent().is_some_and(Path::exists) {
        return Ok(());
    }
    let line = Line {
        time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        commit: commit(),
        quick: report.quick,
        cpu: &report.machine.cpu_model,
        kernel: &report.machine.kernel,
        programs: report
            .programs
            .iter()
            .map(|p| (p.program.as_str(), p.verified_insns, p.jited_bytes))
            .collect(),
        cost: report
            .cost
            .iter()
            .map(|c| {
                (
                    c.class.as_str(),
                    (c.emis_ratio * 100.0).round() / 100.0,
                    c.emis_ns,
                )
            })
            .collect(),
        throughput: report
            .throughput
            .iter()
            .map(|t| {
                (
                    t.short.as_str(),
                    (t.ratio_to_noop * 1000.0).round() / 1000.0,
                )
            })
            .collect(),
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(file, "{}", serde_json::to_string(&line)?)
        .with_context(|| format!("appending to {}", path.display()))?;
    eprintln!("Appended this run to {}", path.display());
    Ok(())
}
