//! TCP through the lab: connect probes from inside a namespace (optionally from a chosen
//! source address) and listeners that accept and close.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::in_netns;
use crate::worker::Worker;

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

/// Like [`tcp_connects`], from source address `src` (e.g. [`CLINICAL_ADDR`](crate::CLINICAL_ADDR)).
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

#[cfg(test)]
mod tests {
    use super::*;

    // Runs in the test's own namespace, without root.
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
}
