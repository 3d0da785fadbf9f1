//! Time and memory of compile and load, measured in a child process (`emis-bench
//! load-child FILE`) so its peak resident set (VmHWM) is the loader's alone: reading the
//! ip-ranges file, validating the policy, compiling it and filling the kernel maps,
//! exactly as `emis run --aws-ip-ranges FILE` does. The kernel maps themselves live in
//! kernel memory, which no process's RSS includes.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use emis::loader::{self, LoadOptions};
use emis_policy::{compile::compile, spec::Source};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadStats {
    /// Bytes of the ip-ranges.json file.
    pub file_bytes: u64,
    /// Opening the file: it is streamed, so its reading is part of `policy_ms`.
    pub read_ms: f64,
    /// Parsing and validating spec, site and ip-ranges into a policy.
    pub policy_ms: f64,
    /// Setting up the loader (it parses and drops the kernel's BTF) and compiling.
    pub compile_ms: f64,
    /// Loading the object through the verifier and filling every map.
    pub load_ms: f64,
    /// From opening the file to a loaded program.
    pub total_ms: f64,
    pub v4_entries: usize,
    pub v6_entries: usize,
    /// Peak resident set of the process (VmHWM), in KiB.
    pub peak_rss_kib: u64,
    /// The peak so far after each stage, in KiB: where the peak is reached.
    #[serde(default)]
    pub peak_after_policy_kib: u64,
    #[serde(default)]
    pub peak_after_compile_kib: u64,
}

fn status_kib(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix(field) {
            let kib = rest
                .trim_start_matches(':')
                .split_whitespace()
                .next()
                .unwrap_or("0");
            return Ok(kib.parse()?);
        }
    }
    bail!("no {field} in /proc/self/status")
}

/// The child's side: measure and print one JSON line.
pub fn child(path: &Path) -> Result<()> {
    let start = Instant::now();
    // As `emis run` does: the file is streamed, never held whole.
    let source = Source::stream(path)?;
    let file_bytes = std::fs::metadata(path)?.len();
    let read = start.elapsed();
    let policy = crate::cost::policy(Some(source))?;
    let policy_done = start.elapsed();
    let peak_after_policy_kib = status_kib("VmHWM")?;
    // Compiled inside the load, as the daemon does (the loader sets up first).
    let mut compile_done = policy_done;
    let mut peak_after_compile_kib = 0;
    let (ebpf, compiled) = loader::load_compiling(
        || -> Result<_> {
            let compiled = compile(&policy)?;
            compile_done = start.elapsed();
            peak_after_compile_kib = status_kib("VmHWM")?;
            Ok(compiled)
        },
        LoadOptions::default(),
        None,
    )?;
    let load_done = start.elapsed();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let stats = LoadStats {
        file_bytes,
        read_ms: ms(read),
        policy_ms: ms(policy_done - read),
        compile_ms: ms(compile_done - policy_done),
        load_ms: ms(load_done - compile_done),
        total_ms: ms(load_done),
        // Both tries of each family: enforce-scope and roles, and count scope.
        v4_entries: compiled.v4.len() + compiled.count_v4.len(),
        v6_entries: compiled.v6.len() + compiled.count_v6.len(),
        peak_rss_kib: status_kib("VmHWM")?,
        peak_after_policy_kib,
        peak_after_compile_kib,
    };
    drop(ebpf);
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}

/// The parent's side: run this binary as `load-child FILE` and read its measurement.
pub fn measure(path: &Path) -> Result<LoadStats> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let out = Command::new(exe)
        .arg("load-child")
        .arg(path)
        .output()
        .context("running the load child")?;
    if !out.status.success() {
        bail!(
            "loading {} in a child process failed ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("reading the load child's output {line:?}"))
}
