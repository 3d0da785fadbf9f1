//! The real lab: needs root and iproute2, and FAILS (never skips) without them.
//! Each test uses its own prefix, so they run in parallel.

use emis_lab::*;
use std::net::Ipv4Addr;
use std::time::Duration;

const T: Duration = Duration::from_secs(3);

fn root_or_fail() {
    if let Err(e) = require_root_and_tools() {
        panic!("the lab tests need root and iproute2: {e:#}");
    }
}

fn exists(ns: &str) -> bool {
    netns_list().unwrap().iter().any(|n| n == ns)
}

#[test]
fn site_reaches_emis_through_the_gateway_and_drop_removes_the_lab() {
    root_or_fail();
    let lab = Lab::create("emislabt1").expect("creating the lab");
    let [site, gw, emis] = lab.namespaces();
    assert_eq!(
        [site.as_str(), gw.as_str(), emis.as_str()],
        [
            format!("{}-site", isolated("emislabt1")),
            format!("{}-gw", isolated("emislabt1")),
            format!("{}-emis", isolated("emislabt1"))
        ]
    );
    for ns in [&site, &gw, &emis] {
        assert!(exists(ns), "{ns} missing");
    }
    assert_eq!(lab.ns(Host::Gateway), gw);

    // The gateway's interfaces exist where the enforcer will look for them.
    for iface in lab.gateway_ifaces() {
        lab.ip(Host::Gateway, &["link", "show", "dev", iface])
            .unwrap();
    }
    // Forwarding is on in the gateway only.
    let fwd = |ns: &str| {
        in_netns(ns, || {
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap()
        })
        .unwrap()
        .trim()
        .to_string()
    };
    assert_eq!(fwd(&gw), "1");

    let servers = TcpServers::start(
        &emis,
        &[
            (EMIS_PRIMARY, 443),
            (EMIS_INTERNET, 443),
            (OUT_OF_SCOPE, 443),
        ],
    )
    .unwrap();
    assert!(tcp_connects(&site, EMIS_PRIMARY, 443, T).unwrap());
    assert!(tcp_connects_from(&site, CLINICAL_ADDR, EMIS_INTERNET, 443, T).unwrap());
    assert!(tcp_connects(&site, OUT_OF_SCOPE, 443, T).unwrap());
    // The EMIS side answers for the other addresses too: a RST, not silence.
    assert_eq!(
        tcp_probe(&site, None, EMIS_BACKUP, 443, T).unwrap(),
        TcpOutcome::Refused
    );
    assert_eq!(
        tcp_probe(&site, None, EMIS_N2, 443, T).unwrap(),
        TcpOutcome::Refused
    );
    assert!(!tcp_connects(&site, EMIS_PRIMARY, 8443, T).unwrap());

    // Inbound: EMIS side -> the clinical server.
    let inbound = TcpServers::start(&site, &[(CLINICAL_ADDR, 33953)]).unwrap();
    assert!(tcp_connects_from(&emis, EMIS_PRIMARY, CLINICAL_ADDR, 33953, T).unwrap());

    // UDP both ways.
    let echo = UdpEcho::start(&emis, EMIS_PRIMARY, 8088).unwrap();
    assert!(udp_round_trip(&site, EMIS_PRIMARY, 8088, T).unwrap());
    assert!(udp_round_trip_from(&site, Some(CLINICAL_ADDR), EMIS_PRIMARY, 8088, T).unwrap());
    assert!(!udp_round_trip(&site, EMIS_PRIMARY, 8089, Duration::from_millis(500)).unwrap());
    assert_eq!(echo.echoed(), 2);

    // Sockets live in their namespaces: the root namespace has no such address.
    let e = tcp_probe(&site, Some(EMIS_PRIMARY), EMIS_PRIMARY, 443, T).unwrap_err();
    assert!(
        format!("{e:#}").contains(&format!("in netns {site}")),
        "{e:#}"
    );

    assert!(servers.accepted() >= 3, "accepted {}", servers.accepted());
    drop((servers, inbound, echo));
    drop(lab);
    for ns in [&site, &gw, &emis] {
        assert!(!exists(ns), "{ns} left behind");
    }
}

#[test]
fn silence_and_unreachable_are_told_apart() {
    root_or_fail();
    let lab = Lab::create("emislabt2").unwrap();
    let site = lab.ns(Host::Site);
    // The gateway silently drops 203.0.113.0/24 and has no route to 192.0.2.0/24.
    lab.ip(
        Host::Gateway,
        &["route", "add", "blackhole", "203.0.113.0/24"],
    )
    .unwrap();
    let t = Duration::from_millis(700);
    assert_eq!(
        tcp_probe(&site, None, Ipv4Addr::new(203, 0, 113, 1), 443, t).unwrap(),
        TcpOutcome::TimedOut
    );
    assert_eq!(
        tcp_probe(&site, None, Ipv4Addr::new(192, 0, 2, 1), 443, T).unwrap(),
        TcpOutcome::Unreachable
    );
}

#[test]
fn create_replaces_leftovers_and_remove_cleans_up() {
    root_or_fail();
    let lab = Lab::create("emislabt3").unwrap();
    let names = lab.namespaces();
    lab.keep(); // as `cargo xtask lab up` does, or a crashed run
    for ns in &names {
        assert!(exists(ns), "{ns} not kept");
    }
    // A second create with the same prefix removes the leftovers first.
    let again = Lab::create("emislabt3").expect("create over leftovers");
    let servers = TcpServers::start(&again.ns(Host::Emis), &[(EMIS_BACKUP, 443)]).unwrap();
    assert!(tcp_connects(&again.ns(Host::Site), EMIS_BACKUP, 443, T).unwrap());
    drop(servers);
    again.keep();
    let mut removed = Lab::remove(&isolated("emislabt3")).unwrap();
    removed.sort();
    let mut want = names.to_vec();
    want.sort();
    assert_eq!(removed, want);
    assert!(Lab::remove(&isolated("emislabt3")).unwrap().is_empty());
    for ns in &names {
        assert!(!exists(ns), "{ns} left behind");
    }
}

#[test]
fn errors_name_the_failing_ip_command() {
    root_or_fail();
    let lab = Lab::create("emislabt4").unwrap();
    let err = lab
        .ip(
            Host::Site,
            &["route", "add", "10.0.0.0/8", "via", "172.31.0.1"],
        )
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!(
            "`ip -n {}-site route add 10.0.0.0/8 via 172.31.0.1` failed",
            isolated("emislabt4")
        )),
        "{msg}"
    );
    assert!(
        msg.contains("Nexthop has invalid gateway") || msg.contains("Network is unreachable"),
        "{msg}"
    );
    assert!(Lab::create("bad/prefix").is_err());
}
