//! An L3 device in a real kernel: a tun link between two namespaces (a relay copies IP
//! packets between a tun device in each, as a VPN does), `emis_l3` attached in skb mode
//! to the tun device on the EMIS side, deciding real TCP connections; and the link-type
//! detection the loader uses to pick the program. Needs root and iproute2. (tun rather
//! than ipip: the test kernel has no ipip, sit, GRE or wireguard modules.)

use emis::linktype;

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use aya::programs::XdpMode;
use emis_common::{rule_index, stats_index, Decision, DenyReason, Link, Path, MODE_ENFORCE};
use emis_lab::{in_netns_scoped, site::TEST_SITE, tcp_connects, TcpServers};
use emis_policy::{
    model,
    packet::{PacketSpec, TCP_SYN},
    policy::{Mode, Replies},
};
use emis_testkit::TestProgram;
use emis_tests::default_policy;

fn site_ns() -> String {
    emis_lab::isolated("emisenc-site")
}
fn emis_ns() -> String {
    emis_lab::isolated("emisenc-emis")
}
const SITE: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 2);
const EMIS: Ipv4Addr = Ipv4Addr::new(10, 207, 116, 10);

fn sh(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tun device (IFF_TUN, no packet information: bare IP packets) created in the calling
/// thread's namespace.
fn open_tun(name: &str) -> OwnedFd {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TUN: libc::c_short = 0x0001;
    const IFF_NO_PI: libc::c_short = 0x1000;
    // SAFETY: open and ioctl on a zeroed ifreq holding a short NUL-terminated name.
    unsafe {
        let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        assert!(
            fd >= 0,
            "opening /dev/net/tun: {}",
            std::io::Error::last_os_error()
        );
        let fd = OwnedFd::from_raw_fd(fd);
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, &b) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
            *d = b as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = IFF_TUN | IFF_NO_PI;
        let rc = libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut ifr);
        assert!(
            rc == 0,
            "TUNSETIFF {name}: {}",
            std::io::Error::last_os_error()
        );
        fd
    }
}

/// Copies IP packets from one tun device to the other until `stop`: a point-to-point
/// link with no link header at either end, like a VPN.
fn relay(from: OwnedFd, to: OwnedFd, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd {
                fd: from.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd; reads and writes within `buf`.
            unsafe {
                if libc::poll(&mut pfd, 1, 50) <= 0 {
                    continue;
                }
                let n = libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len());
                if n > 0 {
                    libc::write(to.as_raw_fd(), buf.as_ptr().cast(), n as usize);
                }
            }
        }
    })
}

/// Two namespaces joined by a pair of tun devices and a relay between them, carrying the
/// site and EMIS addresses. Removed on drop.
struct Tunnel {
    stop: Arc<AtomicBool>,
    relays: Vec<std::thread::JoinHandle<()>>,
}

impl Tunnel {
    fn create() -> Tunnel {
        Tunnel::remove();
        let (site_ns, emis_ns) = (site_ns(), emis_ns());
        sh(&["netns", "add", &site_ns]);
        sh(&["netns", "add", &emis_ns]);
        let site = emis_lab::in_netns(&site_ns, || open_tun("tun0")).unwrap();
        let emis = emis_lab::in_netns(&emis_ns, || open_tun("tun1")).unwrap();
        for (ns, dev, addr, peer) in [
            (&site_ns, "tun0", SITE, EMIS),
            (&emis_ns, "tun1", EMIS, SITE),
        ] {
            sh(&["-n", ns, "link", "set", "lo", "up"]);
            sh(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/32"),
                "peer",
                &format!("{peer}/32"),
                "dev",
                dev,
            ]);
            sh(&["-n", ns, "link", "set", dev, "up"]);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let relays = vec![
            relay(
                site.try_clone().unwrap(),
                emis.try_clone().unwrap(),
                stop.clone(),
            ),
            relay(emis, site, stop.clone()),
        ];
        Tunnel { stop, relays }
    }

    fn remove() {
        for ns in [site_ns(), emis_ns()] {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for relay in self.relays.drain(..) {
            let _ = relay.join();
        }
        Tunnel::remove();
    }
}

#[test]
fn emis_l3_on_a_tun_link_decides_real_tcp_connections() {
    let policy = default_policy(TEST_SITE, false);
    let _tunnel = Tunnel::create();
    // The loader's choice: the tun device takes emis_l3; loopback is refused.
    let (tun, under) = in_netns_scoped(&emis_ns(), || {
        (linktype::link_of("tun1").unwrap(), linktype::link_of("lo"))
    })
    .unwrap();
    assert_eq!(tun, Link::Ip);
    assert!(under.is_err(), "loopback is refused, not misread");

    let mut prog = TestProgram::load_with(
        &policy,
        emis::loader::LoadOptions {
            mode: Mode::Enforce,
            replies: Replies::Stateful,
            ..Default::default()
        },
    )
    .unwrap();
    let program = prog.program_l3().unwrap();
    in_netns_scoped(&emis_ns(), || {
        let index = emis_lab::ifindex("tun1").unwrap();
        program.attach_to_if_index(index, XdpMode::Skb).unwrap()
    })
    .unwrap();

    let _servers = TcpServers::start(&emis_ns(), &[(EMIS, 443), (EMIS, 444)]).unwrap();
    let timeout = Duration::from_secs(2);
    assert!(
        tcp_connects(&site_ns(), EMIS, 443, timeout).unwrap(),
        "an allowed port through the tunnel connects"
    );
    assert!(
        !tcp_connects(&site_ns(), EMIS, 444, timeout).unwrap(),
        "a denied port through the tunnel does not: emis_l3 reads the inner IP header"
    );

    let syn = |port| PacketSpec::tcp(SITE.into(), EMIS.into(), 40000, port, TCP_SYN).build();
    let Decision::Allow { rule, .. } = model::decide(&policy, &syn(443)) else {
        panic!("443 from the site to N3 is a rule's")
    };
    let forward = prog.counter(rule_index(rule, Path::Forward)).unwrap();
    assert!(
        forward.packets >= 1,
        "the SYN to 443 counted forward: {forward:?}"
    );
    let denial = model::decide(&policy, &syn(444));
    assert!(matches!(
        denial,
        Decision::Deny {
            reason: DenyReason::NoRule,
            ..
        }
    ));
    let denied = prog.counter(stats_index(denial, MODE_ENFORCE)).unwrap();
    assert!(
        denied.packets >= 1,
        "the SYNs to 444 counted as denied: {denied:?}"
    );
}

const PPPOE_A: &str = "emisenc-pa";
const PPPOE_B: &str = "emisenc-pb";

/// A veth pair between two namespaces, removed on drop.
struct VethPair;

impl VethPair {
    fn create() -> VethPair {
        VethPair::remove();
        sh(&["netns", "add", PPPOE_A]);
        sh(&["netns", "add", PPPOE_B]);
        let pair = VethPair;
        sh(&[
            "-n", PPPOE_A, "link", "add", "wan0", "type", "veth", "peer", "name", "wan1", "netns",
            PPPOE_B,
        ]);
        sh(&["-n", PPPOE_A, "link", "set", "wan0", "up"]);
        sh(&["-n", PPPOE_B, "link", "set", "wan1", "up"]);
        pair
    }

    fn remove() {
        for ns in [PPPOE_A, PPPOE_B] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        VethPair::remove();
    }
}

/// Sends each frame out of `iface` with an AF_PACKET raw socket (calling thread's namespace).
fn send_raw(iface: &str, frames: &[Vec<u8>]) {
    let index = emis_lab::ifindex(iface).unwrap();
    // SAFETY: a raw packet socket, closed on return; sendto with a sockaddr_ll naming
    // the interface.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = index as i32;
        addr.sll_halen = 6;
        for frame in frames {
            let sent = libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(
                sent,
                frame.len() as isize,
                "{}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[test]
fn a_pppoe_frame_stream_over_veth_is_decided_and_counted_by_emis() {
    let policy = default_policy(TEST_SITE, false);
    let _pair = VethPair::create();
    assert_eq!(
        in_netns_scoped(PPPOE_B, || linktype::link_of("wan1").unwrap()).unwrap(),
        Link::Ethernet
    );
    let mut prog = TestProgram::load_with(
        &policy,
        emis::loader::LoadOptions {
            mode: Mode::Enforce,
            replies: Replies::Stateful,
            ..Default::default()
        },
    )
    .unwrap();
    let program = prog.program_mut().unwrap();
    in_netns_scoped(PPPOE_B, || {
        let index = emis_lab::ifindex("wan1").unwrap();
        program.attach_to_if_index(index, XdpMode::Skb).unwrap()
    })
    .unwrap();

    let spec = |port| PacketSpec::tcp(SITE.into(), EMIS.into(), 40000, port, TCP_SYN).in_pppoe();
    let allowed = spec(443).build();
    let denied = spec(444).build();
    let mut padi = vec![0xff; 6];
    padi.extend_from_slice(&[
        0x02, 0, 0, 0, 0, 0x01, 0x88, 0x63, 0x11, 0x09, 0, 0, 0, 4, 1, 1, 0, 0,
    ]);
    padi.resize(60, 0);
    let mut model = model::Model::new(&policy, Replies::Stateful);
    let expected: Vec<Decision> = [&allowed, &denied, &padi]
        .iter()
        .map(|f| model.decide(f))
        .collect();
    assert!(
        matches!(expected[0], Decision::Allow { .. }),
        "{expected:?}"
    );
    assert!(matches!(expected[1], Decision::Deny { .. }), "{expected:?}");
    assert_eq!(
        expected[2],
        Decision::Pass {
            reason: emis_common::PassReason::PppoeDiscovery
        }
    );
    let rounds = 20u64;
    let mut stream = vec![];
    for _ in 0..rounds {
        stream.extend([allowed.clone(), denied.clone(), padi.clone()]);
    }
    in_netns_scoped(PPPOE_A, || send_raw("wan0", &stream)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for decision in expected {
        let counted = prog.counter(stats_index(decision, MODE_ENFORCE)).unwrap();
        assert_eq!(
            counted.packets, rounds,
            "{decision:?} over veth: {counted:?}"
        );
    }
}
