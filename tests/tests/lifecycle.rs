//! The daemon's lifecycle on a routed lab gateway: fail-static after `kill -9`, adoption
//! by the next `emis run` (flows and counters kept), hitless reloads (a rule added and
//! removed, a broken spec refused, SIGHUP), every packet counted exactly once under 100
//! reloads, and the refusals that must happen before anything is attached. Needs root.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use emis::daemon::pins::{PinnedMaps, Pins};
use emis_lab::{
    daemon::{gateway_run_args, Daemon, DaemonDirs},
    in_netns, tcp_connects, Host, Lab, TcpServers, EMIS_BACKUP, EMIS_IFACE, EMIS_PRIMARY,
    SITE_ADDR, SITE_IFACE,
};
use emis_tests::emis_bin;

const TIMEOUT: Duration = Duration::from_secs(2);

/// A rule the embedded spec does not have: tcp 444 from the LAN to Table 1.
const TCP_444_RULE: &str = r#"
[[rule]]
slug = "test-tcp-444"
description = "test: tcp 444 to Table 1"
protocol = "tcp"
ports = [444]
direction = "outbound"
from = ["lan"]
to = ["emis-n3"]
"#;

/// Another: udp 5000 from the LAN to Table 1.
const UDP_5000_RULE: &str = r#"
[[rule]]
slug = "test-udp-5000"
description = "test: udp 5000 to Table 1"
protocol = "udp"
ports = [5000]
direction = "outbound"
from = ["lan"]
to = ["emis-n3"]
"#;

fn embedded_spec() -> String {
    emis_policy::spec::DEFAULT_SPEC.to_string()
}

fn dirs(name: &str, port: u16) -> DaemonDirs {
    DaemonDirs::fresh(&emis_bin(), name, port).expect("a fresh pin dir and state dir")
}

fn run_args(lab: &Lab, extra: &[&str]) -> Vec<String> {
    gateway_run_args(lab, extra)
}

fn connects(lab: &Lab, addr: Ipv4Addr, port: u16) -> bool {
    tcp_connects(&lab.ns(Host::Site), addr, port, TIMEOUT).expect("probing from the site")
}

fn xdp_attached(lab: &Lab, iface: &str) -> bool {
    lab.ip(Host::Gateway, &["link", "show", iface])
        .expect("ip link show")
        .contains("xdp")
}

/// Every counter of the pinned program, summed: each packet it decided is in one.
fn counted(dirs: &DaemonDirs) -> u64 {
    PinnedMaps::open(&Pins::new(&dirs.pin_dir))
        .and_then(|maps| maps.snapshot())
        .expect("reading the pinned counters")
        .total_packets()
}

fn emis_ok(dirs: &DaemonDirs, args: &[&str]) -> String {
    let out = dirs.emis(args).expect("running emis");
    assert!(
        out.status.success(),
        "emis {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn status(dirs: &DaemonDirs) -> serde_json::Value {
    serde_json::from_str(&emis_ok(dirs, &["status", "--json"])).unwrap()
}

/// One TCP connection from the site to the EMIS side, with both ends held by the test
/// and kept open across restarts and reloads.
struct Pair {
    client: BufReader<TcpStream>,
    client_out: TcpStream,
    server: BufReader<TcpStream>,
    server_out: TcpStream,
}

impl Pair {
    fn open(lab: &Lab, addr: Ipv4Addr, port: u16) -> Pair {
        let listener = in_netns(&lab.ns(Host::Emis), move || TcpListener::bind((addr, port)))
            .unwrap()
            .expect("listening on the EMIS side");
        let client = in_netns(&lab.ns(Host::Site), move || {
            TcpStream::connect_timeout(&SocketAddr::from((addr, port)), TIMEOUT)
        })
        .unwrap()
        .expect("connecting from the site");
        let (server, _) = listener.accept().unwrap();
        for s in [&client, &server] {
            s.set_read_timeout(Some(Duration::from_millis(1500)))
                .unwrap();
        }
        Pair {
            client_out: client.try_clone().unwrap(),
            client: BufReader::new(client),
            server_out: server.try_clone().unwrap(),
            server: BufReader::new(server),
        }
    }

    fn said(out: &mut TcpStream, into: &mut BufReader<TcpStream>, text: &str) -> bool {
        if writeln!(out, "{text}").is_err() {
            return false;
        }
        let mut line = String::new();
        matches!(into.read_line(&mut line), Ok(n) if n > 0) && line.trim_end() == text
    }

    /// The server speaks first: packets in the reply direction only, which pass only
    /// through the flow table (no rule allows them as forward packets).
    fn server_says(&mut self, text: &str) -> bool {
        Pair::said(&mut self.server_out, &mut self.client, text)
    }

    fn client_says(&mut self, text: &str) -> bool {
        Pair::said(&mut self.client_out, &mut self.server, text)
    }
}

#[test]
fn kill_9_leaves_the_policy_enforcing_and_a_new_run_adopts_flows_and_counters() {
    let lab = Lab::create("emiskill").expect("creating the lab namespaces (run as root)");
    let _servers = TcpServers::start(
        &lab.ns(Host::Emis),
        &[(EMIS_PRIMARY, 443), (EMIS_PRIMARY, 444)],
    )
    .unwrap();
    let dirs = dirs("kill", 19480);
    let mut daemon = Daemon::start(&dirs, &run_args(&lab, &[])).expect("emis run");
    // tcp 80 to Table 1: client-patching-internet.
    let mut conn = Pair::open(&lab, EMIS_PRIMARY, 80);
    assert!(
        conn.server_says("before the kill"),
        "an allowed flow's replies pass"
    );

    let status_before = daemon.kill().unwrap();
    assert!(!status_before.success(), "SIGKILL ends emis");
    assert!(xdp_attached(&lab, "gw-site") && xdp_attached(&lab, "gw-emis"));
    assert!(
        !connects(&lab, EMIS_PRIMARY, 444),
        "denied traffic is still dropped"
    );
    assert!(
        connects(&lab, EMIS_PRIMARY, 443),
        "allowed traffic still passes"
    );
    assert!(
        conn.server_says("while emis is dead"),
        "the open flow's replies still pass"
    );
    let said = status(&dirs);
    assert!(said["daemon"].is_null(), "{said}");
    assert_eq!(said["enforcing"], true, "{said}");
    let text = emis_ok(&dirs, &["status"]);
    assert!(
        text.contains("NOT running") && text.contains("still attached"),
        "{text}"
    );
    let stats = emis_ok(&dirs, &["stats"]);
    assert!(stats.contains("client-spine-messaging"), "{stats}");
    let before_restart = counted(&dirs);

    let mut daemon = Daemon::start(&dirs, &run_args(&lab, &[])).expect("a new emis run");
    let said = status(&dirs);
    assert_eq!(said["daemon"]["pid"], daemon.pid(), "{said}");
    assert!(
        conn.server_says("after the restart"),
        "the reply of a flow opened before the kill passes: the new run adopted the flow table"
    );
    assert!(conn.client_says("and back"));
    assert!(!connects(&lab, EMIS_PRIMARY, 444));
    assert!(
        counted(&dirs) > before_restart,
        "counters were kept and keep counting"
    );

    assert!(daemon.stop().unwrap().success());
    assert!(
        xdp_attached(&lab, "gw-site"),
        "a clean exit is fail-static too"
    );
    let said = dirs.detach().unwrap();
    assert!(said.contains("detached from gw-emis, gw-site"), "{said}");
    assert!(!xdp_attached(&lab, "gw-site") && !xdp_attached(&lab, "gw-emis"));
    assert!(dirs.pins_left().is_empty(), "{:?}", dirs.pins_left());
    assert!(!dirs.state_dir.join("state.json").exists());
    assert!(
        connects(&lab, EMIS_PRIMARY, 444),
        "without emis the lab routes again"
    );
}

fn write_spec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn spec_file(dirs: &DaemonDirs) -> PathBuf {
    std::fs::create_dir_all(&dirs.state_dir).unwrap();
    let path = dirs.state_dir.with_extension("spec.toml");
    write_spec(&path, &embedded_spec());
    path
}

#[test]
fn reload_adds_and_removes_rules_keeps_flows_and_refuses_a_broken_spec() {
    let lab = Lab::create("emisrld").expect("creating the lab namespaces (run as root)");
    // Probes go to Table 1's backup address; held connections to its primary.
    let _servers = TcpServers::start(&lab.ns(Host::Emis), &[(EMIS_BACKUP, 444)]).unwrap();
    let dirs = dirs("reload", 19481);
    let spec = spec_file(&dirs);
    let spec_arg = spec.display().to_string();
    let mut daemon =
        Daemon::start(&dirs, &run_args(&lab, &["--spec", &spec_arg])).expect("emis run");
    assert!(!connects(&lab, EMIS_BACKUP, 444), "no rule for tcp 444 yet");
    let mut conn = Pair::open(&lab, EMIS_PRIMARY, 443);
    assert!(conn.server_says("before the reload"));

    write_spec(&spec, &(embedded_spec() + TCP_444_RULE));
    let said = emis_ok(&dirs, &["reload"]);
    assert!(said.contains("rules added (1): test-tcp-444"), "{said}");
    let swap_ms: f64 = said
        .split("swap took ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no swap time in {said}"));
    assert!(swap_ms < 250.0, "the swap took {swap_ms} ms");
    assert!(
        connects(&lab, EMIS_BACKUP, 444),
        "the new rule takes effect"
    );
    assert!(
        conn.server_says("after the reload"),
        "a flow opened before the reload gets its reply after it"
    );
    let mut conn_444 = Pair::open(&lab, EMIS_PRIMARY, 444);
    assert!(conn_444.server_says("through the new rule"));
    let sha_with_rule = status(&dirs)["spec_sha256"].clone();

    write_spec(
        &spec,
        &(embedded_spec() + &TCP_444_RULE.replace("[444]", "[99999]")),
    );
    let out = dirs.emis(&["reload"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a broken spec is refused");
    let line_of_ports = embedded_spec().lines().count() + 6;
    assert!(
        err.contains(&format!("{}:{line_of_ports}:", spec.display())) && err.contains("ports"),
        "the refusal names file:line and field: {err}"
    );
    assert!(
        connects(&lab, EMIS_BACKUP, 444),
        "the old policy keeps deciding"
    );
    assert_eq!(status(&dirs)["spec_sha256"], sha_with_rule);
    assert_eq!(status(&dirs)["last_reload"]["ok"], false);
    let metrics = daemon.metrics().unwrap();
    assert!(
        metrics.contains("emis_reloads_total{result=\"ok\"} 1")
            && metrics.contains("emis_reloads_total{result=\"refused\"} 1"),
        "{metrics}"
    );

    // SIGHUP: back to the embedded spec, which has no rule for tcp 444.
    write_spec(&spec, &embedded_spec());
    daemon.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&dirs)["spec_sha256"] == sha_with_rule {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(&dirs)["last_reload"]["ok"], true);
    assert!(!connects(&lab, EMIS_BACKUP, 444), "the removed rule stops");
    assert!(
        !conn_444.server_says("after its rule was removed"),
        "a flow whose rule is gone gets no more replies"
    );
    assert!(
        conn.server_says("after two reloads"),
        "other flows keep theirs"
    );

    assert!(daemon.stop().unwrap().success());
    dirs.detach().unwrap();
    assert!(dirs.pins_left().is_empty());
}

/// `ip netns exec NS cat /sys/class/net/IF/statistics/tx_packets`.
fn tx_packets(lab: &Lab, host: Host, iface: &str) -> u64 {
    lab.exec(
        host,
        "cat",
        &[&format!("/sys/class/net/{iface}/statistics/tx_packets")],
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap()
}

/// Frames the gateway's two interfaces received: what their peers sent. A veth whose
/// peer runs XDP counts as sent exactly the frames the peer's XDP processed.
fn frames_into_gateway(lab: &Lab) -> u64 {
    tx_packets(lab, Host::Site, SITE_IFACE) + tx_packets(lab, Host::Emis, EMIS_IFACE)
}

/// Frames into the gateway and frames counted, read while no frame arrives: the lab's
/// own chatter (neighbour discovery, ARP) can land between two reads, and a frame sent
/// but not yet through XDP is on its way to being counted.
fn quiet_snapshot(lab: &Lab, dirs: &DaemonDirs) -> (u64, u64) {
    for _ in 0..50 {
        let frames = frames_into_gateway(lab);
        std::thread::sleep(Duration::from_millis(100));
        let counted = counted(dirs);
        if frames_into_gateway(lab) == frames {
            return (frames, counted);
        }
    }
    panic!("the gateway never went quiet for 100 ms");
}

#[test]
fn under_a_stream_of_packets_100_reloads_count_every_packet_exactly_once() {
    let lab = Lab::create("emiscnt").expect("creating the lab namespaces (run as root)");
    // A sink, so allowed datagrams draw no ICMP port-unreachable back.
    let _sink = in_netns(&lab.ns(Host::Emis), || {
        UdpSocket::bind((EMIS_PRIMARY, 5000))
    })
    .unwrap()
    .unwrap();
    let dirs = dirs("count", 19482);
    let spec = spec_file(&dirs);
    let spec_arg = spec.display().to_string();
    let mut daemon =
        Daemon::start(&dirs, &run_args(&lab, &["--spec", &spec_arg])).expect("emis run");
    let sender = in_netns(&lab.ns(Host::Site), || {
        let s = UdpSocket::bind((SITE_ADDR, 0))?;
        s.connect((EMIS_PRIMARY, 5000))?;
        Ok::<_, std::io::Error>(s)
    })
    .unwrap()
    .unwrap();
    // The neighbours are resolved before counting starts.
    sender.send(b"warm-up").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (frames_before, counted_before) = quiet_snapshot(&lab, &dirs);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let stream = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if sender.send(b"counted once").is_ok() {
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let (with_rule, without) = (embedded_spec() + UDP_5000_RULE, embedded_spec());
    for i in 0..100 {
        write_spec(&spec, if i % 2 == 0 { &with_rule } else { &without });
        emis_ok(&dirs, &["reload"]);
    }
    stop.store(true, Ordering::SeqCst);
    stream.join().unwrap();
    let (frames_after, counted_after) = quiet_snapshot(&lab, &dirs);
    let frames = frames_after - frames_before;
    let counts = counted_after - counted_before;
    let sent = sent.load(Ordering::SeqCst);
    eprintln!("{sent} datagrams sent, {frames} frames into the gateway, {counts} counted");
    assert!(
        sent > 1000 && frames >= sent,
        "the stream ran through the gateway"
    );
    assert_eq!(
        counts, frames,
        "every frame the gateway received was counted exactly once"
    );
    let stats: serde_json::Value =
        serde_json::from_str(&emis_ok(&dirs, &["stats", "--json"])).unwrap();
    let denied_no_rule: u64 = stats["denied"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["reason"] == "no_rule")
        .map(|d| d["packets"].as_u64().unwrap())
        .sum();
    assert!(
        denied_no_rule > 0,
        "without the rule the stream was denied: {stats}"
    );

    // The last reload left the rule out; it comes back with its counter where it was.
    write_spec(&spec, &with_rule);
    emis_ok(&dirs, &["reload"]);
    let stats: serde_json::Value =
        serde_json::from_str(&emis_ok(&dirs, &["stats", "--json"])).unwrap();
    let allowed: u64 = stats["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["rule"] == "test-udp-5000")
        .map(|r| r["packets"].as_u64().unwrap())
        .sum();
    assert!(allowed > 0, "with the rule the stream was allowed: {stats}");

    assert!(daemon.stop().unwrap().success());
    dirs.detach().unwrap();
}

#[test]
fn a_taken_metrics_port_fails_the_start_before_anything_is_attached() {
    let lab = Lab::create("emisport").expect("creating the lab namespaces (run as root)");
    let dirs = dirs("port", 19483);
    let _taken = TcpListener::bind(dirs.metrics_addr).expect("taking the metrics port");
    let out = Command::new(emis_bin())
        .arg("run")
        .args(run_args(&lab, &[]))
        .args(dirs.run_args())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("binding the metrics listener to 127.0.0.1:19483"),
        "{err}"
    );
    assert!(!xdp_attached(&lab, "gw-site") && !xdp_attached(&lab, "gw-emis"));
    assert!(dirs.pins_left().is_empty(), "{:?}", dirs.pins_left());
    assert!(!dirs.state_dir.join("state.json").exists());
}

#[test]
fn a_second_run_on_the_same_state_dir_is_refused() {
    let lab = Lab::create("emislock").expect("creating the lab namespaces (run as root)");
    let dirs = dirs("lock", 19484);
    let mut first = Daemon::start(&dirs, &run_args(&lab, &[])).expect("emis run");
    let second = DaemonDirs {
        metrics_addr: SocketAddr::from(([127, 0, 0, 1], 19485)),
        ..dirs.clone()
    };
    let out = Command::new(emis_bin())
        .arg("run")
        .args(run_args(&lab, &[]))
        .args(second.run_args())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("another emis run (pid {}) holds", first.pid()))
            && err.contains("--state-dir"),
        "{err}"
    );
    assert!(first.metrics().is_ok(), "the first keeps running");
    assert!(xdp_attached(&lab, "gw-site"));
    assert!(first.stop().unwrap().success());
    let out = dirs.detach().unwrap();
    assert!(out.contains("detached from"), "{out}");
}

#[test]
fn a_config_file_runs_the_daemon_flags_override_it_and_systemd_hears_ready_reloading_stopping() {
    let lab = Lab::create("emiscfg").expect("creating the lab namespaces (run as root)");
    let dirs = dirs("config", 19486);
    let etc = dirs.state_dir.with_extension("etc");
    let _ = std::fs::remove_dir_all(&etc);
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("spec.toml"), embedded_spec()).unwrap();
    let config = etc.join("emis.toml");
    std::fs::write(
        &config,
        format!(
            "interfaces = [\"gw-site\", \"gw-emis\"]\nnetns = \"{}\"\nspec = \"spec.toml\"\n\
             site_nets = [\"lan=192.168.10.0/24\"]\nmode = \"audit\"\nxdp_mode = \"native\"\n\
             metrics_addr = \"127.0.0.1:1\"\n",
            lab.ns(Host::Gateway)
        ),
    )
    .unwrap();
    let socket_path = etc.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let next = || {
        let mut buf = [0u8; 512];
        let n = notify.recv(&mut buf).expect("a message for systemd");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let config_arg = config.display().to_string();
    // The flags' --metrics-addr (from the dirs) overrides the file's unusable port 1.
    let mut daemon = Daemon::spawn_with_env(
        &dirs,
        &["--config".to_string(), config_arg],
        None,
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    )
    .unwrap();
    let ready = next();
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(
        xdp_attached(&lab, "gw-site") && xdp_attached(&lab, "gw-emis"),
        "READY comes after the program is attached"
    );
    daemon.wait_ready(Duration::from_secs(10)).unwrap();
    let said = status(&dirs);
    assert_eq!(said["mode"], "audit", "{said}");
    assert_eq!(said["interfaces"][0]["mode"], "native", "{said}");

    emis_ok(&dirs, &["reload"]);
    let reloading = next();
    assert!(
        reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(next().contains("READY=1"));
    assert!(daemon.stop().unwrap().success());
    assert!(next().contains("STOPPING=1"));
    dirs.detach().unwrap();

    std::fs::write(&config, "interfaces = [\"eth0\"]\nmode = \"block\"\n").unwrap();
    let out = Command::new(emis_bin())
        .args(["run", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("{}:2:8: in `mode`", config.display())),
        "config errors read like spec errors: {err}"
    );
}
