//! Hostnames learned from DNS, end to end on a routed lab gateway running `emis run`:
//! crafted responses cross the gateway from a resolver on the EMIS side to the site
//! (compression pointers, CNAME chains, several answers, AAAA, TTL 0, malformed,
//! truncated, a compression loop, a spoofed answer into enforce scope), then TCP SYNs
//! from the site to the learned addresses land in their own rows' counters, unlearned
//! ones fall back to the first matching row, the spoofed one stays denied, and a short
//! TTL with a shortened grace expires; a reload keeps what was learned, a new run starts
//! afresh. And the kernel's
//! hand-off itself, through BPF_PROG_TEST_RUN: both families, the 512-byte cut, verdicts
//! unchanged. Needs root.

use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use emis_lab::site::TEST_SITE;
use emis_lab::{
    daemon::{gateway_run_args, Daemon, DaemonDirs},
    dns::send_responses,
    tcp_connects, Host, Lab, TcpServers, EMIS_BACKUP, EMIS_INTERNET, EMIS_N2, EMIS_PRIMARY,
    OUT_OF_SCOPE, SITE_ADDR,
};
use emis_policy::{
    dns::craft::{self, Response, Rr},
    packet::{PacketSpec, TCP_SYN},
    policy::{Mode, Replies},
};
use emis_tests::{default_policy, emis_bin, ip, Harness};

/// Packets counted forward under `slug`, from `emis stats --json`.
fn forward_packets(dirs: &DaemonDirs, slug: &str) -> u64 {
    let out = dirs.emis(&["stats", "--json"]).expect("emis stats");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    stats["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|r| r["rule"] == slug && r["path"] == "forward")
        .map(|r| r["packets"].as_u64().unwrap())
        .sum()
}

fn names(dirs: &DaemonDirs) -> serde_json::Value {
    let out = dirs.emis(&["names", "--json"]).expect("emis names");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("names JSON")
}

/// Whether `emis names` lists `name` at `addr`, and under which rules.
fn learned(dirs: &DaemonDirs, name: &str, addr: &str) -> Option<Vec<String>> {
    names(dirs)["names"].as_array()?.iter().find_map(|row| {
        (row["name"] == name && row["addr"] == addr).then(|| {
            row["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect()
        })
    })
}

/// Waits until `emis names` lists `name` at `addr`: the daemon reads the ring buffer
/// as the datagrams cross, not before.
fn await_learned(dirs: &DaemonDirs, name: &str, addr: &str) -> Vec<String> {
    let start = Instant::now();
    loop {
        if let Some(rules) = learned(dirs, name, addr) {
            return rules;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{name} at {addr} never learned: {}",
            names(dirs)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One SYN-and-handshake attempt from the site; whether it connected.
fn connect(lab: &Lab, addr: std::net::Ipv4Addr) -> bool {
    tcp_connects(&lab.ns(Host::Site), addr, 443, Duration::from_millis(500)).expect("probing")
}

/// Connects to `addr`:443 and checks that the forward SYN went to `slug` (and was allowed).
fn lands_under(lab: &Lab, dirs: &DaemonDirs, addr: std::net::Ipv4Addr, slug: &str) {
    let before = forward_packets(dirs, slug);
    assert!(connect(lab, addr), "tcp 443 to {addr} is allowed");
    let after = forward_packets(dirs, slug);
    assert!(
        after > before,
        "{addr}:443 not counted under {slug} ({before} -> {after})"
    );
}

#[test]
fn learned_hostnames_put_traffic_in_its_own_row() {
    let lab = Lab::create("emisdns").expect("creating the lab namespaces (run as root)");
    let _servers = TcpServers::start(
        &lab.ns(Host::Emis),
        &[
            (EMIS_PRIMARY, 443),
            (EMIS_BACKUP, 443),
            (EMIS_INTERNET, 443),
            (EMIS_N2, 443),
            (OUT_OF_SCOPE, 443),
        ],
    )
    .expect("tcp servers on the EMIS side");
    let dirs = DaemonDirs::fresh(&emis_bin(), "dns", 19591).expect("fresh dirs");
    // A five-second TTL lives five seconds: no grace, a floor of one second.
    let mut daemon = Daemon::start(
        &dirs,
        &gateway_run_args(&lab, &["--dns-grace", "0", "--dns-ttl-floor", "1"]),
    )
    .expect("emis run");

    // Before anything is learned: the first matching row.
    lands_under(&lab, &dirs, EMIS_INTERNET, "web-mobile-openapi");
    lands_under(&lab, &dirs, EMIS_PRIMARY, "client-spine-messaging");

    let mut loose = Response::new(
        "identityservice.emishealth.com",
        vec![
            Rr::cname("identityservice.emishealth.com", 300, "edge.cdn.example"),
            Rr::cname("edge.cdn.example", 300, "pop.cdn.example"),
            Rr::a("pop.cdn.example", 300, &EMIS_INTERNET.to_string()),
            Rr::a("pop.cdn.example", 300, "185.13.72.11"),
        ],
    );
    loose.compress = false;
    let mut two_questions = loose.build();
    two_questions[5] = 2;
    let messages = vec![
        loose.build(),
        Response::new(
            "ewcd01.emishealth.com",
            vec![Rr::a("ewcd01.emishealth.com", 5, &EMIS_PRIMARY.to_string())],
        )
        .build(),
        Response::new(
            "a1b2-ats.iot.eu-west-2.amazonaws.com",
            vec![Rr::a(
                "a1b2-ats.iot.eu-west-2.amazonaws.com",
                300,
                &OUT_OF_SCOPE.to_string(),
            )],
        )
        .build(),
        Response::new(
            "x.emis-x.uk",
            vec![Rr::aaaa("x.emis-x.uk", 300, "2001:db8:99::7")],
        )
        .build(),
        Response::new(
            "www.emisgroup.uk",
            vec![Rr::a("www.emisgroup.uk", 0, &EMIS_BACKUP.to_string())],
        )
        .build(),
        // The spoof: a Table 2 address for a Table 3 row's wildcard.
        Response::new(
            "evil.service-now.com",
            vec![Rr::a("evil.service-now.com", 300, &EMIS_N2.to_string())],
        )
        .build(),
        craft::pointer_loop(),
        craft::forward_pointer(),
        craft::huge_name(),
        loose.build()[..40].to_vec(),
        vec![0xde, 0xad, 0xbe, 0xef],
        two_questions,
    ];
    let resolver = OUT_OF_SCOPE;
    send_responses(
        &lab.ns(Host::Emis),
        resolver,
        SocketAddrV4::new(SITE_ADDR, 40053),
        messages,
    )
    .expect("sending the responses");

    assert_eq!(
        await_learned(
            &dirs,
            "identityservice.emishealth.com",
            &EMIS_INTERNET.to_string()
        ),
        vec!["web-mobile-identityservice", "emis-x-identityservice"]
    );
    // Every address of the chain; the CDN's own names are no rule's, so not kept.
    await_learned(&dirs, "identityservice.emishealth.com", "185.13.72.11");
    assert!(learned(&dirs, "pop.cdn.example", "185.13.72.11").is_none());
    await_learned(&dirs, "x.emis-x.uk", "2001:db8:99::7");
    await_learned(&dirs, "ewcd01.emishealth.com", &EMIS_PRIMARY.to_string());
    // The five-second name first, while it lives.
    lands_under(&lab, &dirs, EMIS_PRIMARY, "s3-documents");
    let learned_at = Instant::now();
    await_learned(
        &dirs,
        "a1b2-ats.iot.eu-west-2.amazonaws.com",
        &OUT_OF_SCOPE.to_string(),
    );
    await_learned(&dirs, "evil.service-now.com", &EMIS_N2.to_string());
    let report = names(&dirs);
    let stats = &report["stats"];
    assert_eq!(stats["zero_ttl"], 1, "{report}");
    assert!(learned(&dirs, "www.emisgroup.uk", &EMIS_BACKUP.to_string()).is_none());
    assert!(stats["unnamed"].as_u64().unwrap() >= 4, "{report}");
    for reason in ["compression_loop", "name_too_long", "truncated", "question"] {
        assert!(
            stats["rejected"][reason].as_u64().unwrap_or(0) >= 1,
            "{reason}: {report}"
        );
    }

    // Each learned address in its own row; TTL 0 taught nothing.
    lands_under(&lab, &dirs, EMIS_INTERNET, "web-mobile-identityservice");
    lands_under(&lab, &dirs, OUT_OF_SCOPE, "appointment-refresh");
    lands_under(&lab, &dirs, EMIS_BACKUP, "client-spine-messaging");
    // The spoofed answer opened nothing: Table 2 has no rule on 443.
    assert!(!connect(&lab, EMIS_N2), "tcp 443 to Table 2 stays denied");

    // A reload keeps what was learned, written again for the rules now in force.
    let out = dirs.emis(&["reload"]).expect("emis reload");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lands_under(&lab, &dirs, EMIS_INTERNET, "web-mobile-identityservice");

    // The five-second name expires, and its address falls back to the first matching row.
    std::thread::sleep(Duration::from_secs(7).saturating_sub(learned_at.elapsed()));
    assert!(learned(&dirs, "ewcd01.emishealth.com", &EMIS_PRIMARY.to_string()).is_none());
    lands_under(&lab, &dirs, EMIS_PRIMARY, "client-spine-messaging");

    // DNS over TLS cannot be read, only counted: a connection attempt to port 853.
    let _ = tcp_connects(
        &lab.ns(Host::Site),
        EMIS_INTERNET,
        853,
        Duration::from_millis(300),
    );
    let metrics = daemon.metrics().expect("GET /metrics");
    let dot: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("emis_dot_packets_total ")?
                .trim()
                .parse()
                .ok()
        })
        .expect("emis_dot_packets_total");
    assert!(dot >= 1, "the SYN to port 853 is counted: {dot}");
    for wanted in [
        "emis_dns_learned_addresses{rule=\"appointment-refresh\"} 1",
        "emis_dns_responses_rejected_total{reason=\"compression_loop\"}",
        "emis_dns_responses_parsed_total",
    ] {
        assert!(
            metrics.contains(wanted),
            "no {wanted} in the metrics:\n{metrics}"
        );
    }
    daemon.stop().expect("stopping emis run");

    // A new run knows nothing of the last one's names, so it empties the pinned maps
    // rather than keep addresses it could never expire.
    let args = gateway_run_args(&lab, &["--dns-grace", "0", "--dns-ttl-floor", "1"]);
    let mut daemon = Daemon::start(&dirs, &args).expect("emis run again");
    assert_eq!(names(&dirs)["names"].as_array().unwrap().len(), 0);
    lands_under(&lab, &dirs, EMIS_INTERNET, "web-mobile-openapi");
    daemon.stop().expect("stopping emis run");
    dirs.detach().expect("emis detach");
}

/// The metric `name`'s value (0 if absent).
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// The DNS keys of the config file: read at the start (`dns_rate = 0` hands nothing
/// over), re-read and applied by a reload, which says so (a new ceiling holds a long TTL
/// down, and the name expires by it); a floor above the ceiling refuses the reload with
/// the file's line. With the daemon stopped, `emis names` says no daemon runs.
#[test]
fn dns_keys_in_the_config_file_apply_at_start_and_on_reload() {
    let lab = Lab::create("emisdnc").expect("creating the lab namespaces (run as root)");
    let dirs = DaemonDirs::fresh(&emis_bin(), "dns-config", 19592).expect("fresh dirs");
    std::fs::create_dir_all(&dirs.state_dir).unwrap();
    let config = dirs.state_dir.join("emis.toml");
    std::fs::write(&config, "dns_rate = 0\n").unwrap();
    let mut daemon = Daemon::start(
        &dirs,
        &gateway_run_args(&lab, &["--config", config.to_str().unwrap()]),
    )
    .expect("emis run");
    let answer = || {
        send_responses(
            &lab.ns(Host::Emis),
            OUT_OF_SCOPE,
            SocketAddrV4::new(SITE_ADDR, 40053),
            vec![Response::new(
                "ewcd01.emishealth.com",
                vec![Rr::a(
                    "ewcd01.emishealth.com",
                    300,
                    &EMIS_PRIMARY.to_string(),
                )],
            )
            .build()],
        )
        .expect("sending the response")
    };

    answer();
    let start = Instant::now();
    while metric(&daemon.metrics().unwrap(), "emis_dns_suppressed_total") == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "dns_rate = 0 suppresses the answer: {}",
            daemon.metrics().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(names(&dirs)["names"].as_array().unwrap().len(), 0);

    std::fs::write(
        &config,
        "dns_grace = 0\ndns_ttl_floor = 1\ndns_ttl_ceiling = 3\n",
    )
    .unwrap();
    let said = dirs.emis(&["reload"]).expect("emis reload");
    let out = String::from_utf8_lossy(&said.stdout);
    assert!(said.status.success(), "{out}");
    assert!(
        out.contains(
            "DNS learning now: grace 0 s, TTL floor 1 s, ceiling 3 s, 1000 responses/s a CPU"
        ),
        "{out}"
    );
    answer();
    await_learned(&dirs, "ewcd01.emishealth.com", &EMIS_PRIMARY.to_string());
    let expires = names(&dirs)["names"][0]["expires_in"].as_u64().unwrap();
    assert!(
        expires <= 3,
        "the TTL of 300 s is held to the 3 s ceiling: {expires}"
    );
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        learned(&dirs, "ewcd01.emishealth.com", &EMIS_PRIMARY.to_string()).is_none(),
        "{}",
        names(&dirs)
    );

    std::fs::write(&config, "dns_ttl_floor = 600\ndns_ttl_ceiling = 60\n").unwrap();
    let said = dirs.emis(&["reload"]).expect("emis reload");
    let err = String::from_utf8_lossy(&said.stderr);
    assert!(!said.status.success());
    assert!(
        err.contains("reload refused") && err.contains("emis.toml:1:17: in `dns_ttl_floor`"),
        "{err}"
    );
    // The settings in force stay.
    answer();
    await_learned(&dirs, "ewcd01.emishealth.com", &EMIS_PRIMARY.to_string());
    let expires = names(&dirs)["names"][0]["expires_in"].as_u64().unwrap();
    assert!(expires <= 3, "still the 3 s ceiling: {expires}");

    daemon.stop().expect("stopping emis run");
    // The names live in the daemon: without it, `emis names` says so.
    let out = dirs.emis(&["names"]).expect("emis names");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no emis daemon runs with state dir"), "{err}");
    dirs.detach().expect("emis detach");
}

/// A UDP frame from `src`:`sport` carrying `payload`.
fn udp_with(src: &str, dst: &str, sport: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = PacketSpec::udp(ip(src), ip(dst), sport, 40053);
    p.payload_len = payload.len();
    let mut frame = p.build();
    let at = frame.len() - payload.len();
    frame[at..].copy_from_slice(payload);
    frame
}

#[test]
fn the_kernel_hands_over_dns_from_port_53_in_both_families_without_changing_a_verdict() {
    let policy = default_policy(TEST_SITE, true);
    let mut h = Harness::new(&policy, Mode::Enforce, Replies::Stateful);
    let answer = Response::new(
        "x.emis-x.uk",
        vec![Rr::a("x.emis-x.uk", 60, "185.13.72.10")],
    )
    .build();
    // Off until the daemon switches it on.
    h.check(&udp_with("198.51.100.10", "192.168.10.2", 53, &answer))
        .unwrap();
    assert!(h.prog.dns_messages().unwrap().is_empty());
    h.prog.set_dns_handoff(true).unwrap();
    let long: Vec<u8> = (0..900u32).map(|i| i as u8).collect();
    let frames = [
        udp_with("198.51.100.10", "192.168.10.2", 53, &answer),
        udp_with("2001:db8:99::53", "2001:db8:10::2", 53, &answer),
        // In scope and denied: handed over all the same, and still dropped.
        udp_with("10.207.116.10", "192.168.10.2", 53, &answer),
        udp_with("198.51.100.10", "192.168.10.2", 53, &long),
        // Not from port 53: nothing.
        udp_with("198.51.100.10", "192.168.10.2", 5353, &answer),
    ];
    // The kernel's verdict and counter are the model's, which knows nothing of DNS.
    let decisions: Vec<_> = frames.iter().map(|f| h.check(f).unwrap()).collect();
    assert!(
        matches!(decisions[2], emis_common::Decision::Deny { .. }),
        "{:?}",
        decisions[2]
    );
    let messages = h.prog.dns_messages().unwrap();
    assert_eq!(messages.len(), 4, "{messages:?}");
    for m in &messages[..3] {
        assert_eq!(
            (m.len as usize, m.captured_len as usize),
            (answer.len(), answer.len())
        );
        assert_eq!(&m.data[..answer.len()], &answer[..]);
    }
    let cut = &messages[3];
    assert_eq!((cut.len, cut.captured_len), (900, 512));
    assert_eq!(&cut.data[..], &long[..512]);
    // Handing over teaches the kernel nothing by itself (the daemon writes the learned
    // map): the SYN to the answered address still goes to the first matching row.
    let syn = PacketSpec::tcp(ip("192.168.10.2"), ip("185.13.72.10"), 40000, 443, TCP_SYN).build();
    assert_eq!(
        h.check(&syn).unwrap(),
        emis_common::Decision::Allow {
            rule: 0,
            path: emis_common::Path::Forward
        }
    );
}
