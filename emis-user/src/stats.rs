//! Reads the counter array and names its slots: the one source for `emis stats`,
//! the metrics endpoint and the tests. Opening the pinned maps is `daemon::pins`' job.

use aya::maps::{MapData, MapError, PerCpuArray};
use emis_common::{
    deny_index, pass_index, rule_index, Action, Config, Counter, DenyReason, PassReason,
    Path as RulePath, MAX_NETWORKS, STATS_LEN,
};
use serde::{Deserialize, Serialize};

use emis_policy::policy::{Mode, Policy};

/// Names for the counter slots: rule slugs and directions, network names.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Labels {
    pub rules: Vec<(String, String)>,
    pub networks: Vec<String>,
    /// The counter slot of each rule, when it is not the rule's index (a daemon that
    /// reloads keeps a rule's slot while the rule exists; see `daemon::slots`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<u32>,
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
            slots: Vec::new(),
        }
    }

    /// Labels for a policy whose rule `i` counts into `slots[i]`.
    pub fn with_slots(policy: &Policy, slots: &[u32]) -> Labels {
        Labels {
            slots: slots.to_vec(),
            ..Labels::of(policy)
        }
    }

    /// The counter slot of the rule listed `index`th.
    pub fn slot(&self, index: usize) -> u32 {
        self.slots.get(index).copied().unwrap_or(index as u32)
    }
}

/// Every counter slot, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub counters: Vec<Counter>,
}

impl Snapshot {
    /// Every slot of a counter map, summed over CPUs.
    pub fn from_map<T: std::borrow::Borrow<MapData>>(
        map: &PerCpuArray<T, Counter>,
    ) -> Result<Snapshot, MapError> {
        let mut counters = Vec::with_capacity(STATS_LEN as usize);
        for values in map.iter() {
            counters.push(sum_cpus(&values?));
        }
        Ok(Snapshot { counters })
    }

    /// [`Snapshot::from_map`] for callers that use anyhow (the test and bench harnesses);
    /// the daemon uses the typed one.
    pub fn read<T: std::borrow::Borrow<MapData>>(
        map: &PerCpuArray<T, Counter>,
    ) -> anyhow::Result<Snapshot> {
        Ok(Snapshot::from_map(map)?)
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
        for (index, (slug, direction)) in labels.rules.iter().enumerate() {
            for path in RulePath::ALL {
                let c = self.at(rule_index(labels.slot(index), path));
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
