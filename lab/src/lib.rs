//! The hermetic network-namespace lab shared by `cargo xtask demo` and the
//! integration tests.
//!
//! [`Lab::create`] builds three network namespaces with `ip` (iproute2), all named
//! after a caller-given prefix so parallel users do not collide:
//!
//! ```text
//!  <p>-site                     <p>-gw (ip_forward=1)                 <p>-emis
//!  site0 192.168.10.2/24 ---- gw-site 192.168.10.1/24
//!        192.168.10.5/24        gw-emis 198.18.0.1/30 ---------- emis0 198.18.0.2/30
//!  default via .10.1            10.207.112.0/21, 185.13.72.0/22,   lo: 10.207.116.10, 10.207.112.10,
//!                               194.189.117.64/26, 198.51.100.0/24     185.13.72.10, 194.189.117.70,
//!                               via 198.18.0.2                         198.51.100.10 (all /32)
//!                                                                  default via 198.18.0.1
//! ```
//!
//! No namespace is connected to the root namespace or to a real interface, so lab
//! traffic cannot leave the machine. The enforcer attaches to the gateway's two
//! interfaces ([`Lab::gateway_ifaces`]).
//!
//! Helpers run code inside a namespace ([`in_netns`]) and drive traffic through it
//! ([`TcpServers`], [`tcp_connects`], [`UdpEcho`], [`udp_round_trip`]). Everything
//! needs root except the pure helpers; [`require_root_and_tools`] says what is
//! missing.

pub mod daemon;

use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The site LAN host (`site0` in `<p>-site`).
pub const SITE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 2);
/// The "clinical server": a second address on `site0`.
pub const CLINICAL_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 5);
/// The gateway's site-side address (`gw-site`), the site's default route.
pub const GW_SITE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 1);
/// The gateway's EMIS-side address (`gw-emis`), the EMIS side's default route.
pub const GW_EMIS_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The EMIS side's link address (`emis0`), the gateway's next hop to EMIS networks.
pub const EMIS_LINK_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// EMIS primary data centre (Table 1, 10.207.116.0/22).
pub const EMIS_PRIMARY: Ipv4Addr = Ipv4Addr::new(10, 207, 116, 10);
/// EMIS backup data centre (Table 1, 10.207.112.0/22).
pub const EMIS_BACKUP: Ipv4Addr = Ipv4Addr::new(10, 207, 112, 10);
/// EMIS internet-facing services (Table 3, 185.13.72.0/22).
pub const EMIS_INTERNET: Ipv4Addr = Ipv4Addr::new(185, 13, 72, 10);
/// EMIS legacy N2 network (Table 2, 194.189.117.64/26).
pub const EMIS_N2: Ipv4Addr = Ipv4Addr::new(194, 189, 117, 70);
/// An internet host outside every enforce-scope network (TEST-NET-2).
pub const OUT_OF_SCOPE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

/// The site LAN, as given to `emis run --site-net lan=...`.
pub const SITE_NET: &str = "192.168.10.0/24";
/// Networks the gateway routes to the EMIS side.
pub const EMIS_SIDE_ROUTES: [&str; 4] = [
    "10.207.112.0/21",
    "185.13.72.0/22",
    "194.189.117.64/26",
    "198.51.100.0/24",
];
/// Addresses (each /32 on `lo`) served by the EMIS side.
pub const EMIS_SIDE_ADDRS: [Ipv4Addr; 5] = [
    EMIS_PRIMARY,
    EMIS_BACKUP,
    EMIS_INTERNET,
    EMIS_N2,
    OUT_OF_SCOPE,
];

/// Interface names (the same in every lab; namespaces keep them apart).
pub const SITE_IFACE: &str = "site0";
pub const GW_SITE_IFACE: &str = "gw-site";
pub const GW_EMIS_IFACE: &str = "gw-emis";
pub const EMIS_IFACE: &str = "emis0";

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// One of the lab's three namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host {
    /// The site LAN (`<p>-site`).
    Site,
    /// The Linux gateway the enforcer runs on (`<p>-gw`).
    Gateway,
    /// The EMIS side and the internet beyond it (`<p>-emis`).
    Emis,
}

impl Host {
    /// All hosts, in creation order.
    pub const ALL: [Host; 3] = [Host::Site, Host::Gateway, Host::Emis];

    /// The namespace-name suffix (`site`, `gw`, `emis`).
    pub fn suffix(self) -> &'static str {
        match self {
            Host::Site => "site",
            Host::Gateway => "gw",
            Host::Emis => "emis",
        }
    }
}

/// The namespace name of `host` in the lab with `prefix` (`<prefix>-<suffix>`).
pub fn ns_name(prefix: &str, host: Host) -> String {
    format!("{prefix}-{}", host.suffix())
}

/// A created lab. Dropping it deletes its namespaces (errors ignored), unless
/// [`Lab::keep`] was called.
///
/// Drop sockets made inside the lab ([`TcpServers`], [`UdpEcho`]) before the lab:
/// a socket keeps its namespace, and its interfaces, alive after `ip netns del`.
#[derive(Debug)]
pub struct Lab {
    /// The prefix of every namespace name.
    pub prefix: String,
    keep: bool,
}

impl Lab {
    /// Creates the lab, after removing leftovers with the same prefix (namespaces of
    /// a lab that was not torn down). Needs root. An error names the failing `ip`
    /// command and its stderr; whatever was created by then is removed again.
    pub fn create(prefix: &str) -> Result<Lab> {
        validate_prefix(prefix)?;
        require_root_and_tools()?;
        Lab::remove(prefix).context("removing a leftover lab with the same prefix")?;
        let lab = Lab {
            prefix: prefix.to_string(),
            keep: false,
        };
        // On error `lab` is dropped here, which deletes what was made.
        lab.build()
            .with_context(|| format!("creating the network-namespace lab `{prefix}`"))?;
        Ok(lab)
    }

    fn build(&self) -> Result<()> {
        let site = self.ns(Host::Site);
        let gw = self.ns(Host::Gateway);
        let emis = self.ns(Host::Emis);
        for ns in [&site, &gw, &emis] {
            ip(&["netns", "add", ns])?;
        }
        for ns in [&site, &gw, &emis] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // Each veth is created inside its namespace with its peer placed directly in
        // the other one, so no name ever appears in the root namespace.
        ip(&[
            "-n",
            &site,
            "link",
            "add",
            SITE_IFACE,
            "type",
            "veth",
            "peer",
            "name",
            GW_SITE_IFACE,
            "netns",
            &gw,
        ])?;
        ip(&[
            "-n",
            &gw,
            "link",
            "add",
            GW_EMIS_IFACE,
            "type",
            "veth",
            "peer",
            "name",
            EMIS_IFACE,
            "netns",
            &emis,
        ])?;

        // Site LAN.
        ip(&[
            "-n",
            &site,
            "addr",
            "add",
            &format!("{SITE_ADDR}/24"),
            "dev",
            SITE_IFACE,
        ])?;
        ip(&[
            "-n",
            &site,
            "addr",
            "add",
            &format!("{CLINICAL_ADDR}/24"),
            "dev",
            SITE_IFACE,
        ])?;
        ip(&["-n", &site, "link", "set", SITE_IFACE, "up"])?;

        // Gateway.
        ip(&[
            "-n",
            &gw,
            "addr",
            "add",
            &format!("{GW_SITE_ADDR}/24"),
            "dev",
            GW_SITE_IFACE,
        ])?;
        ip(&[
            "-n",
            &gw,
            "addr",
            "add",
            &format!("{GW_EMIS_ADDR}/30"),
            "dev",
            GW_EMIS_IFACE,
        ])?;
        ip(&["-n", &gw, "link", "set", GW_SITE_IFACE, "up"])?;
        ip(&["-n", &gw, "link", "set", GW_EMIS_IFACE, "up"])?;

        // EMIS side.
        ip(&[
            "-n",
            &emis,
            "addr",
            "add",
            &format!("{EMIS_LINK_ADDR}/30"),
            "dev",
            EMIS_IFACE,
        ])?;
        ip(&["-n", &emis, "link", "set", EMIS_IFACE, "up"])?;
        for addr in EMIS_SIDE_ADDRS {
            ip(&[
                "-n",
                &emis,
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                "lo",
            ])?;
        }

        // Routes (after the links are up, so the next hops are reachable).
        let gw_site = GW_SITE_ADDR.to_string();
        let gw_emis = GW_EMIS_ADDR.to_string();
        let emis_link = EMIS_LINK_ADDR.to_string();
        ip(&["-n", &site, "route", "add", "default", "via", &gw_site])?;
        ip(&["-n", &emis, "route", "add", "default", "via", &gw_emis])?;
        for net in EMIS_SIDE_ROUTES {
            ip(&["-n", &gw, "route", "add", net, "via", &emis_link])?;
        }

        // Forwarding on the gateway. /proc/sys/net follows the netns of the thread
        // that opens it, so no `sysctl` binary is needed.
        const FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
        let value = in_netns(&gw, || -> io::Result<String> {
            std::fs::write(FORWARD, "1")?;
            std::fs::read_to_string(FORWARD)
        })?
        .with_context(|| format!("setting {FORWARD}=1 in netns {gw}"))?;
        if value.trim() != "1" {
            bail!(
                "{FORWARD} in netns {gw} reads {:?} after writing 1",
                value.trim()
            );
        }
        Ok(())
    }

    /// The namespace name of `which`.
    pub fn ns(&self, which: Host) -> String {
        ns_name(&self.prefix, which)
    }

    /// All three namespace names, in [`Host::ALL`] order.
    pub fn namespaces(&self) -> [String; 3] {
        Host::ALL.map(|h| self.ns(h))
    }

    /// The gateway interfaces the enforcer attaches to: `["gw-site", "gw-emis"]`.
    pub fn gateway_ifaces(&self) -> [&'static str; 2] {
        [GW_SITE_IFACE, GW_EMIS_IFACE]
    }

    /// Runs `ip -n <ns> ARGS...` in the namespace of `which`; returns its stdout.
    pub fn ip(&self, which: Host, args: &[&str]) -> Result<String> {
        let ns = self.ns(which);
        let mut all = vec!["-n", ns.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `ip netns exec <ns> PROGRAM ARGS...`; returns its stdout, or an error
    /// naming the command and its stderr.
    pub fn exec(&self, which: Host, program: &str, args: &[&str]) -> Result<String> {
        let ns = self.ns(which);
        let mut all = vec!["netns", "exec", ns.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Leaves the namespaces in place when the `Lab` goes away (`cargo xtask lab up`).
    /// [`Lab::remove`] deletes them later.
    pub fn keep(mut self) {
        self.keep = true;
    }

    /// Deletes the namespaces of the lab with `prefix` that exist; returns their
    /// names. Only the three exact names are touched, never other `<prefix>*` ones.
    pub fn remove(prefix: &str) -> Result<Vec<String>> {
        validate_prefix(prefix)?;
        let existing = netns_list()?;
        let mut removed = Vec::new();
        for host in Host::ALL {
            let ns = ns_name(prefix, host);
            if existing.contains(&ns) {
                ip(&["netns", "del", &ns])?;
                removed.push(ns);
            }
        }
        Ok(removed)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for ns in self.namespaces() {
            // Errors ignored on purpose: teardown must not panic, and a namespace
            // that was never created cannot be deleted.
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

/// Checks that a prefix can name namespaces: 1-64 characters of `[A-Za-z0-9_.-]`,
/// not starting with `-` or `.`.
pub fn validate_prefix(prefix: &str) -> Result<()> {
    let ok_chars = prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if prefix.is_empty()
        || prefix.len() > 64
        || !ok_chars
        || prefix.starts_with('-')
        || prefix.starts_with('.')
    {
        bail!(
            "invalid lab prefix {prefix:?}: use 1-64 characters of [A-Za-z0-9_.-], \
             not starting with '-' or '.'"
        );
    }
    Ok(())
}

/// The namespace names `ip netns list` reports.
pub fn netns_list() -> Result<Vec<String>> {
    Ok(parse_netns_list(&run("ip", &["netns", "list"])?))
}

/// Parses `ip netns list` output (`name` or `name (id: N)` per line).
pub fn parse_netns_list(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Checks we are root and `ip` exists, with an error that says what to do.
pub fn require_root_and_tools() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "the emis lab creates network namespaces and attaches XDP programs, which \
             needs root (effective uid is {euid}): run as root, e.g. \
             `sudo -E env PATH=\"$PATH\" cargo xtask demo` or \
             `sudo -E env PATH=\"$PATH\" cargo test`"
        );
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => bail!(
            "`ip -V` failed ({}): {}; reinstall iproute2 (`cargo xtask setup`)",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "`ip` (iproute2) is not on PATH: run `cargo xtask setup` or \
             `apt-get install iproute2`"
        ),
        Err(e) => Err(e).context("cannot run `ip -V`"),
    }
}

fn cmdline(program: &str, args: &[&str]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            s.push_str(&format!("'{}'", a.replace('\'', "'\\''")));
        } else {
            s.push_str(a);
        }
    }
    s
}

/// Runs a command; returns its stdout, or an error naming the command, its exit
/// status and its stderr.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let line = cmdline(program, args);
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<()> {
    run("ip", args).map(drop)
}

/// The handle file of a namespace: `/run/netns/NAME`, or `ns` itself if it contains
/// a `/` (e.g. `/proc/1234/ns/net`).
pub fn netns_path(ns: &str) -> PathBuf {
    if ns.contains('/') {
        PathBuf::from(ns)
    } else {
        PathBuf::from(NETNS_RUN_DIR).join(ns)
    }
}

/// Runs `f` on a new thread that has joined the namespace (setns on
/// /run/netns/NAME, CLONE_NEWNET only); sockets created inside stay in that
/// namespace. A panic in `f` becomes an error carrying the panic message.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = netns_path(ns);
    let file = File::open(&path).with_context(|| {
        format!(
            "cannot open network namespace {} (is the lab up? `ip netns list`)",
            path.display()
        )
    })?;
    let name = ns.to_string();
    let handle = std::thread::Builder::new()
        .name(format!("netns {ns}"))
        .spawn(move || -> Result<T> {
            // SAFETY: `file` is an open namespace handle; setns only changes this
            // thread's network namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(io::Error::last_os_error())
                    .with_context(|| format!("setns into network namespace {name}"));
            }
            drop(file);
            Ok(f())
        })
        .context("spawning a thread")?;
    match handle.join() {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".into());
            Err(anyhow!(
                "code run in network namespace {ns} panicked: {msg}"
            ))
        }
    }
}

/// How a TCP connection attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpOutcome {
    /// The handshake completed.
    Connected,
    /// The peer answered with a RST (nothing listens there).
    Refused,
    /// No answer within the timeout (e.g. the SYN was dropped).
    TimedOut,
    /// An ICMP error or a missing route (EHOSTUNREACH, ENETUNREACH).
    Unreachable,
}

impl TcpOutcome {
    /// A short lowercase description ("connected", "refused", "timed out", "unreachable").
    pub fn describe(self) -> &'static str {
        match self {
            TcpOutcome::Connected => "connected",
            TcpOutcome::Refused => "refused",
            TcpOutcome::TimedOut => "timed out",
            TcpOutcome::Unreachable => "unreachable",
        }
    }
}

/// Tries a TCP connect from inside `ns` to addr:port with a timeout; Ok(true) if connected.
pub fn tcp_connects(ns: &str, addr: Ipv4Addr, port: u16, timeout: Duration) -> Result<bool> {
    Ok(tcp_probe(ns, None, addr, port, timeout)? == TcpOutcome::Connected)
}

/// Like [`tcp_connects`], from source address `src` (e.g. [`CLINICAL_ADDR`]).
pub fn tcp_connects_from(
    ns: &str,
    src: Ipv4Addr,
    addr: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> Result<bool> {
    Ok(tcp_probe(ns, Some(src), addr, port, timeout)? == TcpOutcome::Connected)
}

/// Tries a TCP connect from inside `ns` (from `src` if given) and says how it
/// ended. Errors other than the outcomes above (e.g. `src` not local) are errors.
pub fn tcp_probe(
    ns: &str,
    src: Option<Ipv4Addr>,
    addr: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> Result<TcpOutcome> {
    in_netns(ns, move || tcp_probe_here(src, addr, port, timeout))?.with_context(|| {
        let from = src.map(|s| format!(" from {s}")).unwrap_or_default();
        format!("TCP connect{from} to {addr}:{port} in netns {ns}")
    })
}

/// [`tcp_probe`] in the calling thread's namespace.
fn tcp_probe_here(
    src: Option<Ipv4Addr>,
    addr: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> io::Result<TcpOutcome> {
    let src = src.map(|s| SocketAddrV4::new(s, 0));
    match connect_from(src, SocketAddrV4::new(addr, port), timeout) {
        Ok(_stream) => Ok(TcpOutcome::Connected),
        Err(e) => match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => Ok(TcpOutcome::Refused),
            Some(libc::ETIMEDOUT) => Ok(TcpOutcome::TimedOut),
            Some(libc::EHOSTUNREACH | libc::ENETUNREACH) => Ok(TcpOutcome::Unreachable),
            _ => Err(e),
        },
    }
}

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A non-blocking connect with an optional bind first (std cannot bind before
/// connecting). A timeout is reported as ETIMEDOUT.
fn connect_from(
    src: Option<SocketAddrV4>,
    dst: SocketAddrV4,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket(2); the result is checked and owned right away.
    let fd: RawFd = cvt(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(src) = src {
        let sa = sockaddr_in(src);
        // SAFETY: `sa` is a valid sockaddr_in of `len` bytes.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_in).cast(),
                len,
            )
        })?;
    }
    let sa = sockaddr_in(dst);
    // SAFETY: as above.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            len,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
            }
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            // SAFETY: one valid pollfd.
            match cvt(unsafe { libc::poll(&mut pfd, 1, ms) }) {
                Ok(0) => continue,
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let mut err: libc::c_int = 0;
        let mut errlen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: SO_ERROR writes one c_int into `err`.
        cvt(unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut errlen,
            )
        })?;
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Stops and joins a background server thread.
#[derive(Debug)]
struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// TCP listeners in a namespace: binds each (addr, port) and accepts+closes
/// connections on a background thread until dropped.
#[derive(Debug)]
pub struct TcpServers {
    addrs: Vec<SocketAddrV4>,
    accepted: Arc<AtomicU64>,
    worker: Worker,
}

impl TcpServers {
    /// Binds every (addr, port) inside `ns` and starts accepting.
    pub fn start(ns: &str, addrs: &[(Ipv4Addr, u16)]) -> Result<TcpServers> {
        let wanted: Vec<SocketAddrV4> = addrs
            .iter()
            .map(|&(a, p)| SocketAddrV4::new(a, p))
            .collect();
        let to_bind = wanted.clone();
        let listeners = in_netns(ns, move || -> Result<Vec<TcpListener>> {
            to_bind
                .iter()
                .map(|a| TcpListener::bind(a).with_context(|| format!("binding TCP {a}")))
                .collect()
        })?
        .with_context(|| format!("starting TCP servers in netns {ns}"))?;
        TcpServers::from_listeners(listeners)
    }

    fn from_listeners(listeners: Vec<TcpListener>) -> Result<TcpServers> {
        let mut addrs = Vec::new();
        for l in &listeners {
            l.set_nonblocking(true)?;
            match l.local_addr()? {
                SocketAddr::V4(a) => addrs.push(a),
                SocketAddr::V6(a) => bail!("unexpected IPv6 listener {a}"),
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let thread = std::thread::Builder::new()
            .name("emis-lab tcp servers".into())
            .spawn(move || {
                let mut pfds: Vec<libc::pollfd> = listeners
                    .iter()
                    .map(|l| libc::pollfd {
                        fd: l.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    })
                    .collect();
                while !stop2.load(Ordering::SeqCst) {
                    // SAFETY: `pfds` holds valid pollfds for listeners that live as
                    // long as this loop.
                    let n =
                        unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 50) };
                    if n <= 0 {
                        continue;
                    }
                    for l in &listeners {
                        while let Ok((conn, _)) = l.accept() {
                            accepted2.fetch_add(1, Ordering::SeqCst);
                            drop(conn);
                        }
                    }
                }
            })
            .context("spawning the TCP server thread")?;
        Ok(TcpServers {
            addrs,
            accepted,
            worker: Worker {
                stop,
                thread: Some(thread),
            },
        })
    }

    /// The bound addresses (with the real port if 0 was asked for).
    pub fn addrs(&self) -> &[SocketAddrV4] {
        &self.addrs
    }

    /// Connections accepted so far, over all listeners.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpServers {
    fn drop(&mut self) {
        self.worker.stop();
    }
}

/// A UDP echo server in a namespace: sends every datagram back to its sender,
/// on a background thread until dropped.
#[derive(Debug)]
pub struct UdpEcho {
    addr: SocketAddrV4,
    echoed: Arc<AtomicU64>,
    worker: Worker,
}

impl UdpEcho {
    /// Binds addr:port inside `ns` and starts echoing.
    pub fn start(ns: &str, addr: Ipv4Addr, port: u16) -> Result<UdpEcho> {
        let sock = in_netns(ns, move || UdpSocket::bind((addr, port)))?
            .with_context(|| format!("binding UDP {addr}:{port} in netns {ns}"))?;
        UdpEcho::from_socket(sock)
    }

    fn from_socket(sock: UdpSocket) -> Result<UdpEcho> {
        let addr = match sock.local_addr()? {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(a) => bail!("unexpected IPv6 socket {a}"),
        };
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        let (stop2, echoed2) = (stop.clone(), echoed.clone());
        let thread = std::thread::Builder::new()
            .name("emis-lab udp echo".into())
            .spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop2.load(Ordering::SeqCst) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        if sock.send_to(&buf[..n], from).is_ok() {
                            echoed2.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
            .context("spawning the UDP echo thread")?;
        Ok(UdpEcho {
            addr,
            echoed,
            worker: Worker {
                stop,
                thread: Some(thread),
            },
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// Datagrams echoed so far.
    pub fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::SeqCst)
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.worker.stop();
    }
}

/// Sends one datagram from `ns` to addr:port and reports whether a [`UdpEcho`]
/// answered with the same payload within the timeout.
pub fn udp_round_trip(ns: &str, addr: Ipv4Addr, port: u16, timeout: Duration) -> Result<bool> {
    udp_round_trip_from(ns, None, addr, port, timeout)
}

/// Like [`udp_round_trip`], from source address `src` if given.
pub fn udp_round_trip_from(
    ns: &str,
    src: Option<Ipv4Addr>,
    addr: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> Result<bool> {
    in_netns(ns, move || udp_round_trip_here(src, addr, port, timeout))?.with_context(|| {
        let from = src.map(|s| format!(" from {s}")).unwrap_or_default();
        format!("UDP round trip{from} to {addr}:{port} in netns {ns}")
    })
}

fn udp_round_trip_here(
    src: Option<Ipv4Addr>,
    addr: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> io::Result<bool> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let no_answer = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) || matches!(
            e.raw_os_error(),
            Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH)
        )
    };
    let sock = UdpSocket::bind((src.unwrap_or(Ipv4Addr::UNSPECIFIED), 0))?;
    // Connected, so only the target's answers (and its ICMP errors) come back.
    sock.connect((addr, port))?;
    let nonce = format!(
        "emis-lab {} {} {:?}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst),
        Instant::now()
    );
    match sock.send(nonce.as_bytes()) {
        Ok(_) => {}
        Err(e) if no_answer(&e) => return Ok(false),
        Err(e) => return Err(e),
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        sock.set_read_timeout(Some(left))?;
        match sock.recv(&mut buf) {
            Ok(n) if &buf[..n] == nonce.as_bytes() => return Ok(true),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if no_answer(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        assert_eq!(ns_name("emisdemo", Host::Site), "emisdemo-site");
        assert_eq!(ns_name("emisdemo", Host::Gateway), "emisdemo-gw");
        assert_eq!(ns_name("emisdemo", Host::Emis), "emisdemo-emis");
        // A Lab value that was never created: keep() so Drop runs no `ip` command.
        let lab = Lab {
            prefix: "x1".into(),
            keep: true,
        };
        assert_eq!(lab.namespaces(), ["x1-site", "x1-gw", "x1-emis"]);
        assert_eq!(lab.gateway_ifaces(), ["gw-site", "gw-emis"]);
        lab.keep();
    }

    #[test]
    fn addresses_sit_in_their_networks() {
        let in_net = |a: Ipv4Addr, net: &str| {
            let (base, len) = net.split_once('/').unwrap();
            let base: Ipv4Addr = base.parse().unwrap();
            let len: u32 = len.parse().unwrap();
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(base) & mask
        };
        for a in [SITE_ADDR, CLINICAL_ADDR, GW_SITE_ADDR] {
            assert!(in_net(a, SITE_NET), "{a}");
        }
        // Every EMIS-side address is routed by the gateway.
        for a in EMIS_SIDE_ADDRS {
            assert!(
                EMIS_SIDE_ROUTES.iter().any(|n| in_net(a, n)),
                "{a} not routed"
            );
        }
        assert!(in_net(EMIS_PRIMARY, "10.207.116.0/22"));
        assert!(in_net(EMIS_BACKUP, "10.207.112.0/22"));
        assert!(in_net(EMIS_INTERNET, "185.13.72.0/22"));
        assert!(in_net(EMIS_N2, "194.189.117.64/26"));
        assert!(in_net(GW_EMIS_ADDR, "198.18.0.0/30") && in_net(EMIS_LINK_ADDR, "198.18.0.0/30"));
    }

    #[test]
    fn prefixes_are_checked() {
        for ok in ["emisdemo", "t_1", "a.b-c", "X"] {
            validate_prefix(ok).unwrap();
        }
        for bad in ["", "-x", ".x", "a/b", "a b", "ä", &"x".repeat(65)] {
            assert!(validate_prefix(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn netns_list_is_parsed() {
        let out = "emisdemo-emis (id: 2)\nemisdemo-gw (id: 1)\nplain\n\n";
        assert_eq!(
            parse_netns_list(out),
            ["emisdemo-emis", "emisdemo-gw", "plain"]
        );
        assert!(parse_netns_list("").is_empty());
    }

    #[test]
    fn netns_paths() {
        assert_eq!(netns_path("a-gw"), PathBuf::from("/run/netns/a-gw"));
        assert_eq!(
            netns_path("/proc/1/ns/net"),
            PathBuf::from("/proc/1/ns/net")
        );
    }

    #[test]
    fn command_lines_are_quoted() {
        assert_eq!(cmdline("ip", &["-n", "x", "addr"]), "ip -n x addr");
        assert_eq!(cmdline("sh", &["-c", "a b", ""]), "sh -c 'a b' ''");
    }

    #[test]
    fn failing_commands_name_the_command_and_stderr() {
        // `ip link show dev NAME` for a missing device fails without root.
        let err = run("ip", &["link", "show", "dev", "emis-no-such"]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("`ip link show dev emis-no-such` failed"),
            "{msg}"
        );
        assert!(msg.contains("emis-no-such"), "{msg}");
        let err = run("emis-lab-no-such-program", &[]).unwrap_err();
        assert!(format!("{err:#}").contains("cannot run `emis-lab-no-such-program`"));
    }

    #[test]
    fn in_netns_names_a_missing_namespace() {
        let err = in_netns("emis-lab-no-such-ns", || ()).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("/run/netns/emis-lab-no-such-ns"), "{msg}");
    }

    // The socket helpers below run in the test's own namespace, without root.

    #[test]
    fn tcp_probe_outcomes_on_loopback() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let servers = TcpServers::from_listeners(vec![listener]).unwrap();
        let t = Duration::from_secs(2);
        let lo = Ipv4Addr::LOCALHOST;
        assert_eq!(
            tcp_probe_here(None, lo, port, t).unwrap(),
            TcpOutcome::Connected
        );
        assert_eq!(
            tcp_probe_here(Some(lo), lo, port, t).unwrap(),
            TcpOutcome::Connected
        );
        let deadline = Instant::now() + Duration::from_secs(2);
        while servers.accepted() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(servers.accepted(), 2);
        assert_eq!(servers.addrs(), [SocketAddrV4::new(lo, port)]);
        drop(servers);
        // The listener is closed now: a RST answers.
        assert_eq!(
            tcp_probe_here(None, lo, port, t).unwrap(),
            TcpOutcome::Refused
        );
        // A source address that is not local is an error, not an outcome.
        let e = tcp_probe_here(Some(Ipv4Addr::new(192, 0, 2, 77)), lo, port, t).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL), "{e}");
    }

    #[test]
    fn udp_round_trip_on_loopback() {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let echo = UdpEcho::from_socket(sock).unwrap();
        let port = echo.addr().port();
        let t = Duration::from_secs(2);
        assert!(udp_round_trip_here(None, Ipv4Addr::LOCALHOST, port, t).unwrap());
        assert!(
            udp_round_trip_here(Some(Ipv4Addr::LOCALHOST), Ipv4Addr::LOCALHOST, port, t).unwrap()
        );
        assert_eq!(echo.echoed(), 2);
        drop(echo);
        // Nobody listens: ICMP port unreachable, reported as no answer.
        let short = Duration::from_millis(300);
        assert!(!udp_round_trip_here(None, Ipv4Addr::LOCALHOST, port, short).unwrap());
    }
}
