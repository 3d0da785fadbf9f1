//! One daemon per state dir: an exclusive flock(2) on `<state dir>/emis.lock`, held for
//! the daemon's life and released by the kernel however it ends (no stale pid to trust).
//! A second, short lock serialises mode changes with reloads, which replace the config map.

use std::{
    fs::File,
    io::{Read as _, Seek as _, Write as _},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use super::{error::What as _, Error};

pub const LOCK_FILE: &str = "emis.lock";
const MODE_LOCK_FILE: &str = "mode.lock";

/// Another daemon holds the state dir.
#[derive(Debug, thiserror::Error)]
#[error(
    "another emis run{} holds {path}: stop it (`systemctl stop emis`, or kill it) or give this \
     one its own --state-dir and --pin-dir", holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
)]
pub struct Locked {
    pub path: String,
    pub holder: Option<u32>,
}

/// The daemon's lock; released when dropped or when the process ends.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<bool> {
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

impl StateLock {
    /// Takes the lock or says who holds it; writes this process's pid into the file.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, Error> {
        std::fs::create_dir_all(state_dir)
            .what(|| format!("creating the state dir {}", state_dir.display()))?;
        let path = state_dir.join(LOCK_FILE);
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .what(|| format!("opening {}", path.display()))?;
        if !flock(&file, libc::LOCK_EX).what(|| format!("locking {}", path.display()))? {
            return Err(Locked {
                path: path.display().to_string(),
                holder: read_pid(&mut file),
            }
            .into());
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .what(|| format!("writing {}", path.display()))?;
        Ok(StateLock { _file: file })
    }

    /// The pid of the daemon holding the state dir, if one does.
    pub fn holder(state_dir: &Path) -> Option<u32> {
        let mut file = File::open(state_dir.join(LOCK_FILE)).ok()?;
        match flock(&file, libc::LOCK_SH) {
            Ok(false) => Some(read_pid(&mut file).unwrap_or(0)),
            _ => None,
        }
    }

    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(LOCK_FILE)
    }
}

/// Held while the config map is read and written, so a reload never loses an `emis mode`.
pub struct ModeLock {
    _file: File,
}

impl ModeLock {
    pub fn take(state_dir: &Path) -> Result<ModeLock, Error> {
        std::fs::create_dir_all(state_dir)
            .what(|| format!("creating the state dir {}", state_dir.display()))?;
        let path = state_dir.join(MODE_LOCK_FILE);
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .what(|| format!("opening {}", path.display()))?;
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .what(|| format!("locking {}", path.display()));
        }
        Ok(ModeLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_and_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("emis-lock-test-{}", std::process::id()));
        let first = StateLock::acquire(&dir).unwrap();
        let err = StateLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())) && err.contains("--state-dir"),
            "{err}"
        );
        assert_eq!(StateLock::holder(&dir), Some(std::process::id()));
        drop(first);
        assert_eq!(StateLock::holder(&dir), None);
        StateLock::acquire(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
