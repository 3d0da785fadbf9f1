//! The long-lived `emis run` and the commands that act on it: one home for the lifecycle.
//!
//! Fail-static: the program, its links and the maps that carry state are pinned under the
//! pin dir, so the program keeps enforcing the last policy when the daemon exits or dies.
//! Only [`detach`] removes enforcement.
//!
//! - [`pins`]: the pin dir's layout and opening pinned maps by name.
//! - [`state`]: the state file (what `emis stats`/`status`/`reload` need to know).
//! - [`lock`]: one daemon per state dir (flock), and the short lock around mode changes.
//! - [`slots`]: stable counter slots for rules across reloads.
//! - [`links`]: attaching, adopting (bpf_link_update) and detaching XDP links.
//! - [`egress`]: the same for the TC egress links (NAT replies, flows the router opens).
//! - [`enforcer`]: loading a policy into a program and swapping it in, at start and on reload.
//! - [`diff`]: what a reload changed.
//! - [`config`]: the daemon config file.
//! - [`control`]: the control socket (`emis reload`); [`serve`]: the daemon's main loop.
//! - [`events`]: the drop-event fan-out; [`top`]: the busiest denied addresses.
//! - [`learn`]: hostnames learned from the DNS answers the kernel hands over (`emis names`).
//! - [`status`]: `emis status`; [`detach`]: `emis detach`; [`notify`]: systemd readiness.

pub mod config;
pub mod control;
pub mod detach;
pub mod diff;
pub mod egress;
pub mod enforcer;
mod error;
pub mod events;
pub mod learn;
pub mod links;
pub mod lock;
pub mod notify;
pub mod pins;
pub mod serve;
pub mod slots;
pub mod state;
pub mod status;
pub mod top;

pub use error::{chain, Error};

/// Where links, the program and the maps are pinned unless `--pin-dir` says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/emis";
/// Where the state file, the lock and the control socket live unless `--state-dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/emis";
