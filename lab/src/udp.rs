//! UDP through the lab: an echo server in a namespace and round trips to it.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::in_netns;
use crate::worker::Worker;

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

    // Runs in the test's own namespace, without root.
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
        // The echo thread counts after it has sent, so the answer can arrive first.
        let deadline = Instant::now() + Duration::from_secs(2);
        while echo.echoed() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(echo.echoed(), 2);
        drop(echo);
        // Nobody listens: ICMP port unreachable, reported as no answer.
        let short = Duration::from_millis(300);
        assert!(!udp_round_trip_here(None, Ipv4Addr::LOCALHOST, port, short).unwrap());
    }
}
