//! Step 4, reload: the daemon's own start and reload path (`emis::daemon`), run in this
//! process on a namespace lab's gateway, with the embedded spec alone and with the
//! largest synthetic `ip-ranges.json` of the run. Each reload re-reads, compiles and
//! loads the whole policy and swaps it in; the report gives the swap (the only time two
//! programs run side by side) and the whole reload, medians over a few reloads.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use emis::daemon::{
    config::{Given, RunSettings},
    detach::detach,
    enforcer::{read_policy, Enforcer},
};
use emis_lab::{site::TEST_SITE, Host, Lab};
use serde::Serialize;

use crate::report::median;

pub const LAB_PREFIX: &str = "emisreload";
/// Reloads measured per policy.
const RELOADS: usize = 3;

#[derive(Clone, Debug, Serialize)]
pub struct ReloadRow {
    /// Extra count-scope prefixes (0: the embedded spec alone).
    pub prefixes: usize,
    /// `emis run`'s install at start, compile and load included.
    pub start_ms: f64,
    /// Median swap: from the first link update to the last.
    pub swap_ms: f64,
    /// Median whole reload: reading, checking, compiling, loading and swapping.
    pub reload_ms: f64,
    pub swaps_ms: Vec<f64>,
    pub reloads_ms: Vec<f64>,
}

/// Starts the daemon's enforcer on the lab gateway's two interfaces with `ip_ranges`
/// (`None`: the embedded spec alone), reloads it [`RELOADS`] times, and detaches it.
pub fn measure(prefixes: usize, ip_ranges: Option<&Path>, tmp: &Path) -> Result<ReloadRow> {
    let lab = Lab::create(LAB_PREFIX)?;
    let pin_dir = PathBuf::from(emis_lab::isolated(&format!(
        "/sys/fs/bpf/emisbench-reload-{}",
        std::process::id()
    )));
    let state_dir = tmp.join("reload-state");
    let flags = Given {
        interfaces: Some(lab.gateway_ifaces().iter().map(|s| s.to_string()).collect()),
        netns: Some(lab.ns(Host::Gateway)),
        site_nets: Some(TEST_SITE.iter().map(|s| s.to_string()).collect()),
        aws_ip_ranges: ip_ranges.map(Path::to_path_buf),
        pin_dir: Some(pin_dir.clone()),
        state_dir: Some(state_dir.clone()),
        ..Default::default()
    };
    let result = (|| -> Result<ReloadRow> {
        let settings = RunSettings::resolve(None, flags).context("the reload step's settings")?;
        let started = Instant::now();
        let policy = read_policy(&settings).context("reading the policy")?;
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut enforcer = Enforcer::start(settings, policy, since).context("starting emis")?;
        let start_ms = ms(started.elapsed());
        let (mut swaps_ms, mut reloads_ms) = (Vec::new(), Vec::new());
        for _ in 0..RELOADS {
            let report = enforcer.reload().context("reloading emis")?;
            swaps_ms.push(report.swap_us as f64 / 1000.0);
            reloads_ms.push(report.total_ms as f64);
        }
        drop(enforcer);
        Ok(ReloadRow {
            prefixes,
            start_ms,
            swap_ms: median(&swaps_ms),
            reload_ms: median(&reloads_ms),
            swaps_ms,
            reloads_ms,
        })
    })();
    let detached = detach(Some(&pin_dir), &state_dir);
    drop(lab);
    let row = result?;
    detached.context("detaching the reload step's enforcer")?;
    Ok(row)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
