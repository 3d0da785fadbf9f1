//! `emis detach`: the one way to remove enforcement. Removes every pinned link (which
//! detaches the program from its interface), the program and map pins, and the state
//! file, and says what it did.

use std::path::{Path, PathBuf};

use super::{
    control::CONTROL_SOCKET,
    enforcer::remove_pins,
    lock::{StateLock, LOCK_FILE},
    pins::Pins,
    state::{State, STATE_FILE},
    Error, DEFAULT_PIN_DIR,
};

#[derive(Clone, Debug, serde::Serialize)]
pub struct Detached {
    pub interfaces: Vec<String>,
    pub pin_dir: PathBuf,
    pub pins_removed: Vec<String>,
    pub state_file_removed: Option<PathBuf>,
}

impl Detached {
    pub fn to_text(&self) -> String {
        let mut lines = Vec::new();
        if self.interfaces.is_empty() {
            lines.push(format!(
                "no program was attached (no links pinned in {})",
                self.pin_dir.display()
            ));
        } else {
            lines.push(format!("detached from {}", self.interfaces.join(", ")));
        }
        if !self.pins_removed.is_empty() {
            lines.push(format!(
                "removed {} pins from {} ({})",
                self.pins_removed.len(),
                self.pin_dir.display(),
                self.pins_removed.join(", ")
            ));
        }
        if let Some(path) = &self.state_file_removed {
            lines.push(format!("removed {}", path.display()));
        }
        lines.join("\n")
    }
}

/// Detaches everything pinned in `pin_dir` (default: the state file's, else the default
/// pin dir) and forgets the state. Refused while a daemon holds the state dir.
pub fn detach(pin_dir: Option<&Path>, state_dir: &Path) -> Result<Detached, Error> {
    if let Some(pid) = StateLock::holder(state_dir) {
        return Err(Error::Refused(format!(
            "emis run (pid {pid}) is running with state dir {}: stop it first (`systemctl stop \
             emis` or kill {pid}); it leaves the program attached, and `emis detach` then removes it",
            state_dir.display()
        )));
    }
    // Held while removing, so no `emis run` starts halfway through.
    let lock = if state_dir.exists() {
        Some(StateLock::acquire(state_dir)?)
    } else {
        None
    };
    let state = State::find(state_dir);
    let pin_dir = pin_dir
        .map(Path::to_path_buf)
        .or_else(|| state.as_ref().map(|s| s.pin_dir.clone()))
        .unwrap_or_else(|| DEFAULT_PIN_DIR.into());
    let pins = Pins::new(&pin_dir);
    let interfaces = pins.linked_interfaces();
    let pins_removed = remove_pins(&pins);
    let state_path = state_dir.join(STATE_FILE);
    let state_file_removed = std::fs::remove_file(&state_path)
        .is_ok()
        .then_some(state_path);
    let _ = std::fs::remove_file(state_dir.join(CONTROL_SOCKET));
    let _ = std::fs::remove_file(state_dir.join("mode.lock"));
    let _ = std::fs::remove_file(state_dir.join(LOCK_FILE));
    drop(lock);
    // Only when empty: a state dir shared with other files stays.
    let _ = std::fs::remove_dir(state_dir);
    Ok(Detached {
        interfaces,
        pin_dir,
        pins_removed,
        state_file_removed,
    })
}
