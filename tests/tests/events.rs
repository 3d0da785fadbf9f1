//! Drop events end to end on a routed lab gateway: denied TCP SYNs reach `emis watch
//! --json` with the right fields, filters keep only what they name, `emis capture` writes
//! a pcap tcpdump reads, the per-CPU rate limit suppresses and counts, and a client
//! without a daemon is told so. Needs root.

use std::{
    io::Read as _,
    net::{Ipv4Addr, UdpSocket},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use emis_lab::{
    daemon::{gateway_run_args, Daemon, DaemonDirs},
    in_netns, tcp_connects, Host, Lab, TcpServers, EMIS_BACKUP, EMIS_PRIMARY, SITE_ADDR,
};
use emis_tests::emis_bin;

fn dirs(name: &str, port: u16) -> DaemonDirs {
    DaemonDirs::fresh(&emis_bin(), name, port).expect("a fresh pin dir and state dir")
}

fn run_args(lab: &Lab, extra: &[&str]) -> Vec<String> {
    gateway_run_args(lab, extra)
}

/// `emis ARGS --state-dir DIR` running in the background, its stdout piped.
fn client(dirs: &DaemonDirs, args: &[&str]) -> Child {
    Command::new(emis_bin())
        .args(args)
        .arg("--state-dir")
        .arg(&dirs.state_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning an emis client")
}

/// Waits for a client to exit by itself; kills it at the deadline. Returns its stdout
/// and whether it exited by itself.
fn finish(mut child: Child, within: Duration) -> (String, bool) {
    let start = Instant::now();
    let mut exited = false;
    while start.elapsed() < within {
        if child.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    (out, exited)
}

/// Denied TCP SYNs from the site to Table 1's backup address, port 444 (no rule).
fn denied_syns(lab: &Lab, attempts: usize) {
    for _ in 0..attempts {
        let connected = tcp_connects(
            &lab.ns(Host::Site),
            EMIS_BACKUP,
            444,
            Duration::from_millis(300),
        )
        .expect("probing from the site");
        assert!(!connected, "tcp 444 to Table 1 has no rule");
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics:\n{text}"))
}

#[test]
fn denied_syns_reach_watch_and_capture_with_their_fields_and_filters_hold() {
    let lab = Lab::create("emisev").expect("creating the lab namespaces (run as root)");
    let dirs = dirs("events", 19491);
    let mut daemon = Daemon::start(&dirs, &run_args(&lab, &[])).expect("emis run");
    let pcap = dirs.state_dir.join("denied.pcap");
    let watch = client(&dirs, &["watch", "--json", "--count", "3"]);
    let table = client(&dirs, &["watch", "--count", "1", "--iface", "gw-site"]);
    let other_iface = client(&dirs, &["watch", "--json", "--iface", "gw-emis"]);
    let other_reason = client(&dirs, &["watch", "--json", "--reason", "protocol"]);
    let capture = client(
        &dirs,
        &["capture", "-w", pcap.to_str().unwrap(), "--count", "3"],
    );
    // The clients connect before the packets go.
    std::thread::sleep(Duration::from_millis(500));
    denied_syns(&lab, 3);

    let (out, done) = finish(watch, Duration::from_secs(10));
    assert!(done, "watch --count 3 saw three events: {out}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    for e in &lines {
        assert_eq!(e["iface"], "gw-site", "{e}");
        assert_eq!(e["src"], SITE_ADDR.to_string(), "{e}");
        assert_eq!(e["dst"], EMIS_BACKUP.to_string(), "{e}");
        assert_eq!(e["proto"], "tcp", "{e}");
        assert_eq!(e["dport"], 444, "{e}");
        assert!(e["sport"].as_u64().unwrap() > 1023, "{e}");
        assert_eq!(e["tcp_flags"], "S", "{e}");
        assert_eq!(e["reason"], "no_rule", "{e}");
        assert_eq!(e["action"], "drop", "{e}");
        let network = e["network"].as_str().unwrap();
        assert!(!network.is_empty() && network != "-", "{e}");
        assert!(e["time"].as_str().unwrap().contains('T'), "{e}");
    }

    let (out, done) = finish(table, Duration::from_secs(5));
    assert!(done, "{out}");
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 2, "a header and one event: {out}");
    assert!(
        rows[0].contains("TIME") && rows[0].contains("REASON"),
        "{out}"
    );
    assert!(
        rows[1].contains("gw-site")
            && rows[1].contains("10.207.112.10")
            && rows[1].contains("no_rule"),
        "{out}"
    );

    let (out, done) = finish(capture, Duration::from_secs(5));
    assert!(done, "capture --count 3 ended: {out}");
    let read = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&pcap)
        .output()
        .expect("running tcpdump (cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&read.stdout);
    assert!(
        read.status.success(),
        "tcpdump reads the capture: {}",
        String::from_utf8_lossy(&read.stderr)
    );
    let packets: Vec<&str> = text.lines().collect();
    assert_eq!(packets.len(), 3, "{text}");
    for p in packets {
        assert!(
            p.contains("192.168.10.2.") && p.contains("> 10.207.112.10.444: Flags [S]"),
            "{p}"
        );
    }

    for (name, filtered) in [
        ("--iface gw-emis", other_iface),
        ("--reason protocol", other_reason),
    ] {
        let (out, done) = finish(filtered, Duration::from_millis(100));
        assert!(!done, "{name} keeps waiting");
        assert!(out.is_empty(), "{name} matches none of the SYNs: {out}");
    }

    let top = dirs.emis(&["top", "--json"]).unwrap();
    assert!(
        top.status.success(),
        "{}",
        String::from_utf8_lossy(&top.stderr)
    );
    let top: serde_json::Value = serde_json::from_slice(&top.stdout).unwrap();
    assert_eq!(top["sources"][0]["addr"], SITE_ADDR.to_string(), "{top}");
    assert!(top["sources"][0]["events"].as_u64().unwrap() >= 3, "{top}");
    assert_eq!(
        top["destinations"][0]["addr"],
        EMIS_BACKUP.to_string(),
        "{top}"
    );
    let table = dirs.emis(&["top"]).unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("SOURCE") && table.contains("192.168.10.2"),
        "{table}"
    );

    // In audit mode the SYN passes (and is refused by the host): a would-drop event.
    let said = dirs.emis(&["mode", "audit"]).unwrap();
    assert!(
        said.status.success(),
        "{}",
        String::from_utf8_lossy(&said.stderr)
    );
    let audit = client(&dirs, &["watch", "--json", "--count", "1"]);
    std::thread::sleep(Duration::from_millis(500));
    denied_syns(&lab, 1);
    let (out, done) = finish(audit, Duration::from_secs(5));
    assert!(done, "{out}");
    let e: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(e["action"], "audit", "{e}");
    assert_eq!(e["reason"], "no_rule", "{e}");
    eprintln!("an audit event: {out}");

    let metrics = daemon.metrics().unwrap();
    assert!(metric(&metrics, "emis_events_total") >= 4, "{metrics}");
    assert_eq!(
        metric(&metrics, "emis_events_suppressed_total"),
        0,
        "{metrics}"
    );

    assert!(daemon.stop().unwrap().success());
    let out = dirs.emis(&["watch"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("daemon is not running") && err.contains("emis run"),
        "{err}"
    );
    dirs.detach().unwrap();
}

#[test]
fn the_rate_limit_suppresses_a_burst_and_counts_it() {
    let lab = Lab::create("emisevr").expect("creating the lab namespaces (run as root)");
    let dirs = dirs("events-rate", 19492);
    let mut daemon =
        Daemon::start(&dirs, &run_args(&lab, &["--event-rate", "5"])).expect("emis run");
    let sent = 500;
    // UDP 5999 to Table 1 has no rule: every datagram is denied.
    in_netns(&lab.ns(Host::Site), move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        for _ in 0..sent {
            socket.send_to(b"burst", (EMIS_BACKUP, 5999)).unwrap();
        }
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let metrics = daemon.metrics().unwrap();
    let emitted = metric(&metrics, "emis_events_total");
    let suppressed = metric(&metrics, "emis_events_suppressed_total");
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    assert!(emitted >= 1, "{metrics}");
    // Each CPU starts with one second's worth (5) and refills 5 a second.
    assert!(
        emitted <= cpus * 10,
        "at most the rate: {emitted} of {sent}"
    );
    assert_eq!(
        emitted + suppressed,
        sent as u64,
        "every denial is emitted or counted"
    );
    assert!(daemon.stop().unwrap().success());
    dirs.detach().unwrap();
}

#[test]
fn sampled_allowed_packets_name_their_rule_and_the_rule_filter_keeps_them() {
    let lab = Lab::create("emisevs").expect("creating the lab namespaces (run as root)");
    let _servers = TcpServers::start(&lab.ns(Host::Emis), &[(EMIS_PRIMARY, 443)]).unwrap();
    let dirs = dirs("events-sample", 19493);
    let mut daemon =
        Daemon::start(&dirs, &run_args(&lab, &["--sample-allowed", "1/1"])).expect("emis run");
    let connect = || {
        let ok = tcp_connects(
            &lab.ns(Host::Site),
            EMIS_PRIMARY,
            443,
            Duration::from_secs(2),
        )
        .expect("probing from the site");
        assert!(ok, "tcp 443 to Table 1 is allowed");
    };
    let any = client(&dirs, &["watch", "--json", "--count", "1"]);
    let no_such_rule = client(&dirs, &["watch", "--json", "--rule", "no-such-rule"]);
    std::thread::sleep(Duration::from_millis(500));
    connect();
    let (out, done) = finish(any, Duration::from_secs(5));
    assert!(done, "{out}");
    let e: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(e["action"], "allow", "{e}");
    assert_eq!(
        e["reason"], "forward",
        "the SYN matched its rule forward: {e}"
    );
    assert_eq!(e["dport"], 443, "{e}");
    let rule = e["rule"]
        .as_str()
        .expect("a sampled packet names its rule")
        .to_string();

    let by_rule = client(&dirs, &["watch", "--json", "--count", "1", "--rule", &rule]);
    std::thread::sleep(Duration::from_millis(500));
    connect();
    let (out, done) = finish(by_rule, Duration::from_secs(5));
    assert!(done, "--rule {rule} sees the next connection: {out}");
    assert!(out.contains(&format!("\"rule\":\"{rule}\"")), "{out}");
    let (out, done) = finish(no_such_rule, Duration::from_millis(100));
    assert!(!done && out.is_empty(), "{out}");

    assert!(daemon.stop().unwrap().success());
    dirs.detach().unwrap();
}

/// UDP datagrams to Table 1's port 5999 (no rule), each denied.
fn denied_burst(lab: &Lab, sent: usize) {
    in_netns(&lab.ns(Host::Site), move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        for _ in 0..sent {
            socket.send_to(b"burst", (EMIS_BACKUP, 5999)).unwrap();
        }
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
}

/// `event_rate` and `sample_allowed` in the config file: read at the start, re-read and
/// applied by a reload (which says so); a broken value refuses the reload and changes
/// nothing; `bpf_stats` changed waits for a restart, and the reload says that too.
#[test]
fn event_keys_in_the_config_file_apply_at_start_and_on_reload() {
    let lab = Lab::create("emisevc").expect("creating the lab namespaces (run as root)");
    let _servers = TcpServers::start(&lab.ns(Host::Emis), &[(EMIS_PRIMARY, 443)]).unwrap();
    let dirs = dirs("events-config", 19494);
    let config = dirs.state_dir.join("emis.toml");
    std::fs::create_dir_all(&dirs.state_dir).unwrap();
    std::fs::write(&config, "event_rate = 5\n").unwrap();
    let mut daemon = Daemon::start(
        &dirs,
        &run_args(&lab, &["--config", config.to_str().unwrap()]),
    )
    .expect("emis run");
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    let counts = |daemon: &Daemon| {
        let metrics = daemon.metrics().unwrap();
        (
            metric(&metrics, "emis_events_total") + metric(&metrics, "emis_events_ring_full_total"),
            metric(&metrics, "emis_events_suppressed_total"),
        )
    };

    denied_burst(&lab, 300);
    let (emitted, suppressed) = counts(&daemon);
    assert!(emitted <= cpus * 10, "event_rate = 5 holds: {emitted}");
    assert_eq!(emitted + suppressed, 300);

    std::fs::write(
        &config,
        "event_rate = 100000\nsample_allowed = \"1/1\"\nbpf_stats = true\n",
    )
    .unwrap();
    let said = dirs.emis(&["reload"]).unwrap();
    let out = String::from_utf8_lossy(&said.stdout);
    assert!(said.status.success(), "{out}");
    assert!(
        out.contains("drop events now: rate 100000/s a CPU, allowed sampling 1/1"),
        "{out}"
    );
    assert!(
        out.contains("not applied: bpf_stats changed in the config file"),
        "{out}"
    );
    denied_burst(&lab, 300);
    let (emitted_after, suppressed_after) = counts(&daemon);
    assert_eq!(
        suppressed_after, suppressed,
        "the new rate suppresses nothing"
    );
    assert_eq!(emitted_after - emitted, 300);
    // Allowed packets are sampled now.
    let allowed = client(
        &dirs,
        &[
            "watch",
            "--json",
            "--count",
            "1",
            "--rule",
            "client-spine-messaging",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(tcp_connects(
        &lab.ns(Host::Site),
        EMIS_PRIMARY,
        443,
        Duration::from_secs(2)
    )
    .unwrap());
    let (out, done) = finish(allowed, Duration::from_secs(5));
    assert!(done && out.contains("\"action\":\"allow\""), "{out}");

    // A broken key refuses the reload, and the settings in force stay.
    std::fs::write(&config, "event_rate = \"fast\"\n").unwrap();
    let said = dirs.emis(&["reload"]).unwrap();
    let err = String::from_utf8_lossy(&said.stderr);
    assert!(!said.status.success());
    assert!(
        err.contains("reload refused") && err.contains("emis.toml:1:14: in `event_rate`"),
        "{err}"
    );
    denied_burst(&lab, 100);
    assert_eq!(counts(&daemon).1, suppressed, "still 100000 a second");

    assert!(daemon.stop().unwrap().success());
    dirs.detach().unwrap();
}

/// `emis run --kernel-log debug --kernel-log-match ADDR`: the daemon's log names each
/// traced decision of a packet to or from ADDR, none of another host's, keeps following
/// the trace across a reload, and the drop events flow all the while.
#[test]
fn the_kernel_log_names_traced_decisions_in_the_daemon_log_across_a_reload() {
    let lab = Lab::create("emisevk").expect("creating the lab namespaces (run as root)");
    let dirs = dirs("events-kernel-log", 19495);
    let log = dirs.state_dir.join("emis.log");
    let args = run_args(
        &lab,
        &[
            "--kernel-log",
            "debug",
            "--kernel-log-match",
            "10.207.112.0/24",
        ],
    );
    let mut daemon = Daemon::spawn(&dirs, &args, Some(&log)).unwrap();
    daemon.wait_ready(Duration::from_secs(30)).unwrap();
    let traced = |to: &str| {
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .filter(|l| l.contains(&format!("gw-site {SITE_ADDR} -> {to} tcp: deny no_rule")))
            .count()
    };
    let wait_for = |to: &str, at_least: usize| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while traced(to) < at_least && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        traced(to)
    };

    // An operator tracing a host still watches the drops.
    let watch = client(&dirs, &["watch", "--json", "--count", "1"]);
    std::thread::sleep(Duration::from_millis(500));
    denied_syns(&lab, 1);
    assert!(!tcp_connects(
        &lab.ns(Host::Site),
        EMIS_PRIMARY,
        444,
        Duration::from_millis(300)
    )
    .unwrap());
    let (out, done) = finish(watch, Duration::from_secs(10));
    assert!(done, "watch saw an event while the trace is on: {out}");
    let event: serde_json::Value = serde_json::from_str(out.trim()).expect("a JSON line");
    assert_eq!(event["reason"], "no_rule", "{event}");
    assert_eq!(event["iface"], "gw-site", "{event}");
    let before = wait_for("10.207.112.10", 1);
    assert!(before >= 1, "{}", daemon.log_tail(20));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("(drop)") && text.contains("network "),
        "the line names the network and the action:\n{text}"
    );
    assert_eq!(
        traced("10.207.116.10"),
        0,
        "another host is not traced:\n{text}"
    );
    let metrics = daemon.metrics().unwrap();
    assert!(
        metric(&metrics, "emis_events_total") >= 2,
        "the drop events flow while the trace is on: {}",
        daemon.log_tail(20)
    );

    let said = dirs.emis(&["reload"]).unwrap();
    assert!(said.status.success());
    denied_syns(&lab, 1);
    assert!(
        wait_for("10.207.112.10", before + 1) > before,
        "the trace goes on after a reload: {}",
        daemon.log_tail(20)
    );
    assert!(daemon.stop().unwrap().success());
    dirs.detach().unwrap();
}
