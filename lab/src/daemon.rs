//! Driving `emis run` from tests and the demo: spawning it, waiting until it serves
//! `/metrics`, stopping (SIGINT) or killing (SIGKILL) it, asking it to reload, and removing
//! what it left attached with `emis detach`. The one home of these steps, so the tests and
//! the demo start and clean up the daemon the same way.
//!
//! The lab crate does not depend on emis itself: callers pass the `emis` binary's path.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::topology::{isolated, Host, Lab, GW_EMIS_IFACE, GW_SITE_IFACE, SITE_NET};

/// Where one daemon keeps its things: its pins, its state dir and its metrics address.
#[derive(Clone, Debug)]
pub struct DaemonDirs {
    pub bin: PathBuf,
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub metrics_addr: SocketAddr,
}

impl DaemonDirs {
    /// Dirs named after `name` (a temp state dir, a pin dir under /sys/fs/bpf), made
    /// [`isolated`] like lab names.
    pub fn named(bin: &Path, name: &str, metrics_port: u16) -> DaemonDirs {
        let name = isolated(name);
        DaemonDirs {
            bin: bin.to_path_buf(),
            state_dir: std::env::temp_dir().join(format!("emis-test-{name}")),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/emis-test-{name}")),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], metrics_port)),
        }
    }

    /// [`DaemonDirs::named`], with whatever an earlier failed run left detached and its
    /// state dir removed, so a test starts from nothing.
    pub fn fresh(bin: &Path, name: &str, metrics_port: u16) -> Result<DaemonDirs> {
        let dirs = DaemonDirs::named(bin, name, metrics_port);
        dirs.detach().context("emis detach before the test")?;
        let _ = std::fs::remove_dir_all(&dirs.state_dir);
        Ok(dirs)
    }

    /// The flags that point `emis run` at these dirs and this address.
    pub fn run_args(&self) -> Vec<String> {
        vec![
            "--state-dir".into(),
            self.state_dir.display().to_string(),
            "--pin-dir".into(),
            self.pin_dir.display().to_string(),
            "--metrics-addr".into(),
            self.metrics_addr.to_string(),
        ]
    }

    /// Runs `emis ARGS --state-dir DIR` to completion.
    pub fn emis(&self, args: &[&str]) -> Result<Output> {
        Command::new(&self.bin)
            .args(args)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .output()
            .with_context(|| format!("running {} {}", self.bin.display(), args.join(" ")))
    }

    /// `emis detach`: removes enforcement and the pins; returns what it printed.
    pub fn detach(&self) -> Result<String> {
        let out = Command::new(&self.bin)
            .arg("detach")
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .output()
            .context("running emis detach")?;
        if !out.status.success() {
            bail!(
                "emis detach failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether anything is still pinned in the pin dir.
    pub fn pins_left(&self) -> Vec<String> {
        std::fs::read_dir(&self.pin_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A running `emis run`. Dropped while running, it is stopped with SIGINT (SIGKILL after
/// 10 s); dropping never detaches: call [`DaemonDirs::detach`] for that.
pub struct Daemon {
    pub dirs: DaemonDirs,
    child: Child,
    status: Option<ExitStatus>,
    log: Option<PathBuf>,
}

impl Daemon {
    /// Spawns `emis run ARGS` plus the dirs' flags; output goes to `log` if given, else
    /// to this process's stderr. The child gets SIGINT if this process dies first.
    pub fn spawn(dirs: &DaemonDirs, args: &[String], log: Option<&Path>) -> Result<Daemon> {
        Daemon::spawn_with_env(dirs, args, log, &[])
    }

    /// As [`Daemon::spawn`], with extra environment variables (e.g. NOTIFY_SOCKET).
    pub fn spawn_with_env(
        dirs: &DaemonDirs,
        args: &[String],
        log: Option<&Path>,
        envs: &[(&str, &str)],
    ) -> Result<Daemon> {
        let mut cmd = Command::new(&dirs.bin);
        cmd.envs(envs.iter().copied());
        cmd.arg("run")
            .args(args)
            .args(dirs.run_args())
            .stdin(Stdio::null())
            // Its own process group: a terminal Ctrl-C reaches only the caller, which
            // stops emis in order.
            .process_group(0);
        if let Some(log) = log {
            if let Some(dir) = log.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let out = std::fs::File::create(log)
                .with_context(|| format!("creating {}", log.display()))?;
            cmd.stderr(out.try_clone()?).stdout(out);
        }
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} run", dirs.bin.display()))?;
        Ok(Daemon {
            dirs: dirs.clone(),
            child,
            status: None,
            log: log.map(Path::to_path_buf),
        })
    }

    /// Spawns and waits until `/metrics` answers.
    pub fn start(dirs: &DaemonDirs, args: &[String]) -> Result<Daemon> {
        let mut daemon = Daemon::spawn(dirs, args, None)?;
        daemon.wait_ready(Duration::from_secs(30))?;
        Ok(daemon)
    }

    /// Polls `/metrics` until it answers 200; fails if emis exits first.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited()? {
                bail!(
                    "emis run exited ({status}) before serving metrics{}",
                    self.log_tail(30)
                );
            }
            if let Ok((200, _)) =
                http_get(self.dirs.metrics_addr, "/metrics", Duration::from_secs(2))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "emis run did not serve http://{}/metrics within {} s{}",
                    self.dirs.metrics_addr,
                    timeout.as_secs(),
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The body of `/metrics`.
    pub fn metrics(&self) -> Result<String> {
        match http_get(self.dirs.metrics_addr, "/metrics", Duration::from_secs(5))? {
            (200, body) => Ok(body),
            (code, body) => bail!("/metrics answered HTTP {code}: {body}"),
        }
    }

    /// Some(status) once emis has exited.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// SIGINT, wait up to 10 s, then SIGKILL.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exited()? {
            return Ok(status);
        }
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.exited()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill()
    }

    /// SIGKILL (a crash, as far as emis can tell) and reap.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exited()? {
            return Ok(status);
        }
        self.child.kill()?;
        let status = self.child.wait()?;
        self.status = Some(status);
        Ok(status)
    }

    /// Sends a signal (e.g. SIGHUP) to the daemon.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// The last lines of the log file, when there is one.
    pub fn log_tail(&self, lines: usize) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n    ");
        format!("; last lines of {}:\n    {tail}", log.display())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// `emis run` flags for the lab's gateway: its namespace, both veths, the site LAN as the
/// `lan` role, then `extra`.
pub fn gateway_run_args(lab: &Lab, extra: &[&str]) -> Vec<String> {
    let gateway = lab.ns(Host::Gateway);
    let mut args: Vec<String> = [
        "--netns",
        gateway.as_str(),
        "--iface",
        GW_SITE_IFACE,
        "--iface",
        GW_EMIS_IFACE,
        "--site-net",
        &format!("lan={SITE_NET}"),
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// An HTTP/1.0 GET with std only; returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    // One write: a server that reads the request in one go sees all of it.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n");
    s.write_all(request.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse_http_response(&buf)
}

/// The status code and body of a raw HTTP response.
pub fn parse_http_response(raw: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))
        .context("HTTP response without a header/body separator")?;
    let status = head.lines().next().unwrap_or_default();
    let mut words = status.split_whitespace();
    let (Some(version), Some(code)) = (words.next(), words.next()) else {
        bail!("bad HTTP status line {status:?}");
    };
    if !version.starts_with("HTTP/") {
        bail!("bad HTTP status line {status:?}");
    }
    let code = code
        .parse()
        .with_context(|| format!("bad HTTP status line {status:?}"))?;
    Ok((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_get_against_a_local_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 256];
            let n = s.read(&mut req).unwrap();
            assert!(req[..n].starts_with(b"GET /metrics HTTP/1.0\r\n"));
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nemis_a 1\n")
                .unwrap();
        });
        let (code, body) = http_get(addr, "/metrics", Duration::from_secs(2)).unwrap();
        server.join().unwrap();
        assert_eq!((code, body.as_str()), (200, "emis_a 1\n"));
    }

    #[test]
    fn parse_http_responses() {
        let r = b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n# HELP x\nemis_a 1\n";
        assert_eq!(
            parse_http_response(r).unwrap(),
            (200, "# HELP x\nemis_a 1\n".into())
        );
        assert_eq!(
            parse_http_response(b"HTTP/1.1 404 Not Found\r\n\r\n")
                .unwrap()
                .0,
            404
        );
        assert!(parse_http_response(b"garbage").is_err());
        assert!(parse_http_response(b"SSH-2.0 x\r\n\r\n").is_err());
    }
}
