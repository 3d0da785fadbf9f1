//! Reads the counter array and names its slots: the one source for `emis stats`,
//! the metrics endpoint and the tests.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use aya::maps::{Array, Map, MapData, PerCpuArray};
use emis_common::{
    deny_index, pass_index, rule_index, Action, Config, Counter, DenyReason, PassReason,
    Path as RulePath, MAP_CONFIG, MAP_STATS, MAX_NETWORKS, STATS_LEN,
};
use serde::{Deserialize, Serialize};

use emis_policy::policy::{Mode, Policy, Replies};

/// What a running enforcer writes down so `emis stats` and `emis mode` can find and name its maps.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub pid: u32,
    pub pin_dir: PathBuf,
    pub spec_sha256: String,
    pub interfaces: Vec<String>,
    pub labels: Labels,
    pub replies: Replies,
    pub flow_table_size: u32,
}

/// Names for the counter slots: rule slugs and directions, network names.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Labels {
    pub rules: Vec<(String, String)>,
    pub networks: Vec<String>,
}

impl Labels {
    pub fn of(policy: &Policy) -> Labels {
        Labels {
            rules: policy
                .rules
                .iter()
                .map(|r| (r.slug.clone(), r.direction.name().to_string()))
                .collect(),
            networks: policy.networks.iter().map(|n| n.name.clone()).collect(),
        }
    }
}

pub const STATE_FILE: &str = "state.json";

impl State {
    pub fn write(&self, state_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let path = state_dir.join(STATE_FILE);
        let tmp = state_dir.join(".state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    pub fn read(state_dir: &Path) -> Result<State> {
        let path = state_dir.join(STATE_FILE);
        let text = std::fs::read(&path).with_context(|| {
            format!(
                "reading {}: is `emis run` running with this --state-dir?",
                path.display()
            )
        })?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn stats_map(&self) -> Result<PerCpuArray<MapData, Counter>> {
        let path = self.pin_dir.join(MAP_STATS);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        Ok(PerCpuArray::try_from(Map::from_map_data(data)?)?)
    }

    pub fn flows_map(
        &self,
    ) -> Result<aya::maps::HashMap<MapData, emis_common::FlowKey, emis_common::FlowValue>> {
        Ok(aya::maps::HashMap::try_from(Map::from_map_data(
            self.pinned(emis_common::MAP_FLOWS)?,
        )?)?)
    }

    pub fn flow_events_map(&self) -> Result<PerCpuArray<MapData, u64>> {
        Ok(PerCpuArray::try_from(Map::from_map_data(
            self.pinned(emis_common::MAP_FLOW_EVENTS)?,
        )?)?)
    }

    /// The flow table's fill and events, read from the pinned maps.
    pub fn flow_stats(&self) -> Result<crate::flows::FlowTableStats> {
        crate::flows::FlowTableStats::read(
            &self.flows_map()?,
            &self.flow_events_map()?,
            self.flow_table_size,
        )
    }

    fn pinned(&self, name: &str) -> Result<MapData> {
        let path = self.pin_dir.join(name);
        MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))
    }

    pub fn config_map(&self) -> Result<Array<MapData, Config>> {
        let path = self.pin_dir.join(MAP_CONFIG);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        Ok(Array::try_from(Map::from_map_data(data)?)?)
    }
}

/// Every counter slot, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub counters: Vec<Counter>,
}

impl Snapshot {
    pub fn read<T: std::borrow::Borrow<MapData>>(
        map: &PerCpuArray<T, Counter>,
    ) -> Result<Snapshot> {
        let mut counters = Vec::with_capacity(STATS_LEN as usize);
        for values in map.iter() {
            counters.push(sum_cpus(&values.context("reading the counter map")?));
        }
        Ok(Snapshot { counters })
    }

    pub fn at(&self, index: u32) -> Counter {
        self.counters
            .get(index as usize)
            .copied()
            .unwrap_or_default()
    }

    /// Sum over every slot: each packet the program saw is in exactly one.
    pub fn total_packets(&self) -> u64 {
        self.counters.iter().map(|c| c.packets).sum()
    }

    /// Named rows; zero rows of denials and passes are left out, rules are always listed.
    pub fn report(&self, labels: &Labels) -> Report {
        let mut rules = Vec::new();
        for (id, (slug, direction)) in labels.rules.iter().enumerate() {
            for path in RulePath::ALL {
                let c = self.at(rule_index(id as u32, path));
                rules.push(RuleRow {
                    rule: slug.clone(),
                    direction: direction.clone(),
                    path: path.name(),
                    packets: c.packets,
                    bytes: c.bytes,
                });
            }
        }
        let mut denied = Vec::new();
        for action in Action::ALL {
            for reason in DenyReason::ALL {
                for network in 0..MAX_NETWORKS.min(labels.networks.len() as u32) {
                    let c = self.at(deny_index(action, reason, network));
                    if c.packets > 0 {
                        denied.push(DenyRow {
                            reason: reason.name(),
                            network: labels.networks[network as usize].clone(),
                            action: action.name(),
                            packets: c.packets,
                            bytes: c.bytes,
                        });
                    }
                }
            }
        }
        let passed = PassReason::ALL
            .iter()
            .map(|&reason| {
                let c = self.at(pass_index(reason));
                PassRow {
                    reason: reason.name(),
                    packets: c.packets,
                    bytes: c.bytes,
                }
            })
            .collect();
        Report {
            rules,
            denied,
            passed,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RuleRow {
    pub rule: String,
    pub direction: String,
    pub path: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DenyRow {
    pub reason: &'static str,
    pub network: String,
    pub action: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PassRow {
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub rules: Vec<RuleRow>,
    pub denied: Vec<DenyRow>,
    pub passed: Vec<PassRow>,
}

impl Report {
    /// A plain-text table; rules with no traffic are folded into one line.
    pub fn to_table(&self, mode: Mode, spec_sha256: &str) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "mode {}   spec sha256 {}",
            mode.name(),
            &spec_sha256[..spec_sha256.len().min(16)]
        );
        let _ = writeln!(
            out,
            "\n{:<36} {:<9} {:<8} {:>12} {:>14}",
            "RULE", "DIRECTION", "PATH", "PACKETS", "BYTES"
        );
        let mut idle = 0;
        for row in &self.rules {
            if row.packets == 0 {
                idle += 1;
                continue;
            }
            let _ = writeln!(
                out,
                "{:<36} {:<9} {:<8} {:>12} {:>14}",
                row.rule, row.direction, row.path, row.packets, row.bytes
            );
        }
        if idle > 0 {
            let _ = writeln!(out, "({idle} rule/path rows with no traffic not shown)");
        }
        let _ = writeln!(
            out,
            "\n{:<12} {:<20} {:<7} {:>12} {:>14}",
            "DENIED", "NETWORK", "ACTION", "PACKETS", "BYTES"
        );
        for row in &self.denied {
            let _ = writeln!(
                out,
                "{:<12} {:<20} {:<7} {:>12} {:>14}",
                row.reason, row.network, row.action, row.packets, row.bytes
            );
        }
        if self.denied.is_empty() {
            let _ = writeln!(out, "(none)");
        }
        let _ = writeln!(out, "\n{:<12} {:>12} {:>14}", "PASSED", "PACKETS", "BYTES");
        for row in &self.passed {
            let _ = writeln!(
                out,
                "{:<12} {:>12} {:>14}",
                row.reason, row.packets, row.bytes
            );
        }
        out
    }
}

/// One counter slot summed over every CPU's copy.
pub fn sum_cpus(values: &[Counter]) -> Counter {
    values.iter().fold(Counter::default(), |sum, c| Counter {
        packets: sum.packets + c.packets,
        bytes: sum.bytes + c.bytes,
    })
}

/// The mode currently in a config map.
pub fn mode_of(config: &Config) -> Mode {
    if config.mode == emis_common::MODE_AUDIT {
        Mode::Audit
    } else {
        Mode::Enforce
    }
}
