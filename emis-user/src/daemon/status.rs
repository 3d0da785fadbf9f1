//! `emis status`: whether the daemon runs, what is attached where, which policy, mode and
//! replies are in force, and how the last reload went. Read from the lock, the state file
//! and the pins, so it answers when the daemon is down too.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{
    lock::StateLock,
    pins::{PinnedMaps, Pins},
    state::{rfc3339, LastReload, State},
    DEFAULT_PIN_DIR,
};

#[derive(Clone, Debug, Serialize)]
pub struct Daemon {
    pub pid: u32,
    /// RFC 3339.
    pub since: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Interface {
    pub name: String,
    /// native, skb, or unknown.
    pub mode: String,
    /// The TC egress program runs there too (stateful replies behind NAT, flows the router opens).
    pub egress: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The daemon holding the state dir, if one runs.
    pub daemon: Option<Daemon>,
    /// A program is attached through pinned links (whether or not the daemon runs).
    pub enforcing: bool,
    pub interfaces: Vec<Interface>,
    pub netns: Option<String>,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub spec_sha256: Option<String>,
    pub loaded_at: Option<String>,
    pub mode: Option<String>,
    pub replies: Option<String>,
    pub last_reload: Option<LastReload>,
    /// One sentence for people.
    pub summary: String,
}

impl Status {
    pub fn gather(state_dir: &Path, pin_dir: Option<&Path>) -> Status {
        let state = State::find(state_dir);
        let pin_dir = pin_dir
            .map(Path::to_path_buf)
            .or_else(|| state.as_ref().map(|s| s.pin_dir.clone()))
            .unwrap_or_else(|| DEFAULT_PIN_DIR.into());
        let pins = Pins::new(&pin_dir);
        let linked = pins.linked_interfaces();
        let egress = pins.egress_interfaces();
        let daemon = StateLock::holder(state_dir).map(|pid| Daemon {
            pid,
            since: state
                .as_ref()
                .filter(|s| s.pid == pid)
                .map(|s| rfc3339(s.since)),
        });
        let mode = PinnedMaps::open(&pins)
            .and_then(|m| m.mode())
            .ok()
            .map(|m| m.name().to_string());
        let interfaces = linked
            .iter()
            .map(|name| Interface {
                name: name.clone(),
                mode: state
                    .as_ref()
                    .and_then(|s| s.attach_modes.get(name).cloned())
                    .unwrap_or_else(|| "unknown".into()),
                egress: egress.contains(name),
            })
            .collect();
        let enforcing = !linked.is_empty();
        let summary = match (&daemon, enforcing) {
            (Some(d), true) => format!(
                "emis is running (pid {}) and enforcing on {}",
                d.pid,
                linked.join(", ")
            ),
            (Some(d), false) => format!("emis is running (pid {}) but attached nowhere", d.pid),
            (None, true) => format!(
                "the emis daemon is NOT running, but its program is still attached to {} and \
                 enforcing the last policy (fail-static); `emis run` adopts it, `emis detach` \
                 removes it",
                linked.join(", ")
            ),
            (None, false) => format!(
                "emis is not running and nothing is attached (no links pinned in {})",
                pin_dir.display()
            ),
        };
        Status {
            daemon,
            enforcing,
            interfaces,
            netns: state.as_ref().and_then(|s| s.netns.clone()),
            pin_dir,
            state_dir: state_dir.to_path_buf(),
            spec_sha256: state.as_ref().map(|s| s.spec_sha256.clone()),
            loaded_at: state.as_ref().map(|s| rfc3339(s.loaded_at)),
            mode,
            replies: state.as_ref().map(|s| s.replies.name().to_string()),
            last_reload: state.and_then(|s| s.last_reload),
            summary,
        }
    }

    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = format!("{}\n\n", self.summary);
        let dash = || "-".to_string();
        let daemon = match &self.daemon {
            Some(d) => format!(
                "running, pid {}{}",
                d.pid,
                d.since
                    .as_ref()
                    .map(|s| format!(", since {s}"))
                    .unwrap_or_default()
            ),
            None => "not running".into(),
        };
        let interfaces = if self.interfaces.is_empty() {
            "none".into()
        } else {
            self.interfaces
                .iter()
                .map(|i| match i.egress {
                    true => format!("{} ({}, egress)", i.name, i.mode),
                    false => format!("{} ({})", i.name, i.mode),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(out, "{:<12} {daemon}", "daemon");
        let _ = writeln!(
            out,
            "{:<12} {interfaces}{}",
            "attached",
            self.netns
                .as_ref()
                .map(|n| format!(" in network namespace {n}"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "{:<12} sha256 {} loaded {}",
            "policy",
            self.spec_sha256.clone().unwrap_or_else(dash),
            self.loaded_at.clone().unwrap_or_else(dash)
        );
        let _ = writeln!(
            out,
            "{:<12} {}   replies {}",
            "mode",
            self.mode.clone().unwrap_or_else(dash),
            self.replies.clone().unwrap_or_else(dash)
        );
        let reload = match &self.last_reload {
            Some(r) => format!(
                "{} at {}: {}",
                if r.ok { "ok" } else { "REFUSED" },
                rfc3339(r.at),
                r.message.lines().next().unwrap_or_default()
            ),
            None => "none since start".into(),
        };
        let _ = writeln!(out, "{:<12} {reload}", "last reload");
        let _ = writeln!(
            out,
            "{:<12} {} (pins)   {} (state)",
            "dirs",
            self.pin_dir.display(),
            self.state_dir.display()
        );
        out
    }
}
