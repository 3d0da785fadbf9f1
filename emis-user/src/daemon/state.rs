//! The state file (`<state dir>/state.json`): what the daemon last installed, so that
//! `emis stats`, `status`, `mode`, `reload` and the next `emis run` can find and name it.
//! It outlives the daemon with the pins; `emis detach` removes both.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use emis_policy::policy::Replies;
use serde::{Deserialize, Serialize};

use super::{error::What as _, slots::Slots, Error};
use crate::stats::Labels;

pub const STATE_FILE: &str = "state.json";

/// What the daemon re-reads on a reload: its config file, or the policy files it was
/// given on the command line (which override the config file's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sources {
    pub config: Option<PathBuf>,
    pub spec: Option<PathBuf>,
    pub site: Option<PathBuf>,
    pub site_nets: Option<Vec<String>>,
    pub aws_ip_ranges: Option<PathBuf>,
    /// `--event-rate`, `--sample-allowed`, `--bpf-stats` as given: a reload keeps them over
    /// the config file's keys.
    #[serde(default)]
    pub event_rate: Option<u32>,
    #[serde(default)]
    pub sample_allowed: Option<u32>,
    #[serde(default)]
    pub bpf_stats: Option<bool>,
    /// `--kernel-log`, `--kernel-log-match` as given.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "kernel_log_serde"
    )]
    pub kernel_log: Option<crate::kernel_log::KernelLog>,
    #[serde(default)]
    pub kernel_log_match: Option<ipnet::IpNet>,
    /// `--dns-grace`, `--dns-ttl-floor`, `--dns-ttl-ceiling`, `--dns-rate` as given.
    #[serde(default)]
    pub dns_grace: Option<u64>,
    #[serde(default)]
    pub dns_ttl_floor: Option<u64>,
    #[serde(default)]
    pub dns_ttl_ceiling: Option<u64>,
    #[serde(default)]
    pub dns_rate: Option<u32>,
}

/// The kernel log level as its name in the state file.
mod kernel_log_serde {
    use crate::kernel_log::KernelLog;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<KernelLog>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(k) => s.serialize_str(k.name()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<KernelLog>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl Sources {
    /// The flags `emis run` was given that a reload re-applies over the config file.
    pub fn flags(&self) -> super::config::Given {
        super::config::Given {
            event_rate: self.event_rate,
            sample_allowed: self.sample_allowed,
            bpf_stats: self.bpf_stats,
            dns_grace: self.dns_grace,
            dns_ttl_floor: self.dns_ttl_floor,
            dns_ttl_ceiling: self.dns_ttl_ceiling,
            dns_rate: self.dns_rate,
            ..Default::default()
        }
    }
}

/// The outcome of the last reload, for `emis status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReload {
    /// Unix seconds.
    pub at: u64,
    pub ok: bool,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// The daemon that wrote this (it may have exited since: the lock says whether it runs).
    pub pid: u32,
    /// When that daemon started, unix seconds.
    #[serde(default)]
    pub since: u64,
    pub pin_dir: PathBuf,
    #[serde(default)]
    pub netns: Option<String>,
    /// The interfaces the program is attached to.
    pub interfaces: Vec<String>,
    /// Interface -> native or skb.
    #[serde(default)]
    pub attach_modes: BTreeMap<String, String>,
    pub spec_sha256: String,
    /// When the policy now in force was installed, unix seconds.
    #[serde(default)]
    pub loaded_at: u64,
    pub labels: Labels,
    pub replies: Replies,
    pub flow_table_size: u32,
    #[serde(default)]
    pub slots: Slots,
    #[serde(default)]
    pub sources: Sources,
    #[serde(default)]
    pub last_reload: Option<LastReload>,
}

impl State {
    pub fn write(&self, state_dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(state_dir).what(|| format!("creating {}", state_dir.display()))?;
        let path = state_dir.join(STATE_FILE);
        let tmp = state_dir.join(".state.json.tmp");
        let bytes = serde_json::to_vec_pretty(self).what(|| "encoding the state".into())?;
        std::fs::write(&tmp, bytes).what(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).what(|| format!("writing {}", path.display()))
    }

    pub fn read(state_dir: &Path) -> Result<State, Error> {
        let path = state_dir.join(STATE_FILE);
        let text = std::fs::read(&path).what(|| {
            format!(
                "reading {}: has `emis run` run with this --state-dir? (`emis status`)",
                path.display()
            )
        })?;
        serde_json::from_slice(&text).what(|| format!("parsing {}", path.display()))
    }

    /// The state file, if there is one.
    pub fn find(state_dir: &Path) -> Option<State> {
        State::read(state_dir).ok()
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// RFC 3339, UTC.
pub fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_written_before_slots_and_reloads_still_reads() {
        let old = r#"{"pid": 7, "pin_dir": "/sys/fs/bpf/emis", "spec_sha256": "ab",
            "interfaces": ["eth0"], "labels": {"rules": [["a", "outbound"]], "networks": ["n"]},
            "replies": "stateful", "flow_table_size": 1024}"#;
        let state: State = serde_json::from_str(old).unwrap();
        assert_eq!(state.labels.slot(0), 0);
        assert!(state.slots.assigned.is_empty() && state.last_reload.is_none());
    }

    #[test]
    fn written_and_read_back() {
        let dir = std::env::temp_dir().join(format!("emis-state-test-{}", std::process::id()));
        let state = State {
            pid: 1,
            since: 2,
            pin_dir: "/p".into(),
            netns: Some("gw".into()),
            interfaces: vec!["eth0".into()],
            attach_modes: [("eth0".to_string(), "native".to_string())].into(),
            spec_sha256: "ab".into(),
            loaded_at: 3,
            labels: Labels {
                rules: vec![("a".into(), "outbound".into())],
                networks: vec![],
                slots: vec![5],
            },
            replies: Replies::Stateless,
            flow_table_size: 9,
            slots: Slots::default(),
            sources: Sources::default(),
            last_reload: None,
        };
        state.write(&dir).unwrap();
        assert_eq!(State::read(&dir).unwrap(), state);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(rfc3339(0).starts_with("1970-01-01T00:00:00"));
    }
}
