//! Stateful replies behind source NAT, and for connections the router itself opens, end
//! to end: the lab's gateway masquerades the site behind its WAN address (nft, on
//! gw-emis) and runs `emis run` (stateful replies, the default) on both veths. Also: an
//! interface whose link type emis cannot read is refused before anything is attached.
//! Needs root, nftables and network namespaces.
//!
//! Why the XDP program alone fails this test: it records a flow under the tuple it sees
//! arriving on gw-site (192.168.10.2:port -> EMIS:443). Masquerade rewrites the source to
//! 198.18.0.1 on the way out, so the SYN-ACK arrives on gw-emis addressed to 198.18.0.1,
//! before de-NAT: its reversed key matches no flow, it is denied (an EMIS source is in
//! enforce scope) and no connection completes. The gateway's own connections never cross
//! XDP on the way out, so their answers are denied the same way. The TC egress program
//! records both under the tuple they leave with, and the replies match that.

use std::{net::Ipv4Addr, process::Command, time::Duration};

use aya::programs::{SchedClassifier, TcAttachType};
use emis_lab::{
    daemon::{gateway_run_args, Daemon, DaemonDirs},
    tcp_connects, Host, Lab, TcpServers, EMIS_INTERNET, EMIS_PRIMARY, GW_EMIS_IFACE,
};
use emis_tests::{emis_bin, metric_sample, metric_value};

const TIMEOUT: Duration = Duration::from_secs(2);

fn rule_packets(metrics: &str, rule: &str, path: &str) -> u64 {
    metric_sample(
        metrics,
        "emis_rule_packets_total",
        &[&format!("rule=\"{rule}\""), &format!("path=\"{path}\"")],
    )
}

fn connects_from(lab: &Lab, host: Host, addr: Ipv4Addr, port: u16) -> bool {
    tcp_connects(&lab.ns(host), addr, port, TIMEOUT).expect("probing from a lab namespace")
}

/// Masquerade on the gateway's WAN veth, with a counter to show it translated.
fn masquerade(lab: &Lab) {
    for args in [
        &["add", "table", "ip", "emisnat"][..],
        &[
            "add",
            "chain",
            "ip",
            "emisnat",
            "post",
            "{",
            "type",
            "nat",
            "hook",
            "postrouting",
            "priority",
            "srcnat",
            ";",
            "}",
        ],
        &[
            "add",
            "rule",
            "ip",
            "emisnat",
            "post",
            "oifname",
            GW_EMIS_IFACE,
            "counter",
            "masquerade",
        ],
    ] {
        lab.exec(Host::Gateway, "nft", args)
            .expect("configuring masquerade with nft (`cargo xtask setup` installs nftables)");
    }
}

/// Packets the masquerade rule translated (the first packet of each connection).
fn masqueraded(lab: &Lab) -> u64 {
    let out = lab
        .exec(
            Host::Gateway,
            "nft",
            &["list", "chain", "ip", "emisnat", "post"],
        )
        .expect("nft list chain");
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "packets")
        .map(|w| w[1].parse().unwrap())
        .unwrap_or_else(|| panic!("no counter in {out}"))
}

fn tc_egress_attached(lab: &Lab, iface: &str) -> bool {
    // The packaged bpftool may predate tcx; ask the kernel through aya from inside the namespace.
    let iface = iface.to_string();
    emis_lab::in_netns_scoped(&lab.ns(Host::Gateway), move || {
        let (_, programs) = SchedClassifier::query_tcx(&iface, TcAttachType::Egress)
            .unwrap_or_else(|e| panic!("querying the tcx egress programs of {iface}: {e}"));
        programs
            .iter()
            .any(|p| p.name_as_str() == Some(emis_common::PROGRAM_NAME_EGRESS))
    })
    .expect("entering the gateway namespace")
}

/// The id of the egress program on `iface`'s tcx egress chain.
fn egress_program_id(lab: &Lab, iface: &str) -> u32 {
    let iface = iface.to_string();
    emis_lab::in_netns_scoped(&lab.ns(Host::Gateway), move || {
        let (_, programs) = SchedClassifier::query_tcx(&iface, TcAttachType::Egress).unwrap();
        programs
            .iter()
            .find(|p| p.name_as_str() == Some(emis_common::PROGRAM_NAME_EGRESS))
            .map(|p| p.id())
            .expect("an egress program")
    })
    .unwrap()
}

#[test]
fn masqueraded_and_gateway_opened_connections_get_their_replies() {
    let lab = Lab::create("emisnat").expect("creating the lab namespaces (run as root)");
    let _servers = TcpServers::start(
        &lab.ns(Host::Emis),
        &[
            (EMIS_PRIMARY, 443),
            (EMIS_PRIMARY, 444),
            (EMIS_INTERNET, 443),
        ],
    )
    .expect("servers in the EMIS namespace");
    masquerade(&lab);
    assert!(
        connects_from(&lab, Host::Site, EMIS_PRIMARY, 444),
        "the lab routes and masquerades without emis"
    );
    assert!(
        masqueraded(&lab) >= 1,
        "the site's connection was masqueraded"
    );

    let dirs = DaemonDirs::fresh(&emis_bin(), "nat", 19491).expect("fresh dirs");
    let args = gateway_run_args(&lab, &[]);
    let mut daemon = Daemon::start(&dirs, &args).expect("emis run serves /metrics");
    assert!(tc_egress_attached(&lab, "gw-site") && tc_egress_attached(&lab, "gw-emis"));
    let status = String::from_utf8(dirs.emis(&["status"]).unwrap().stdout).unwrap();
    assert!(
        status.contains("gw-emis (") && status.contains(", egress)"),
        "{status}"
    );

    let translated = masqueraded(&lab);
    assert!(
        connects_from(&lab, Host::Site, EMIS_PRIMARY, 443),
        "tcp 443 to Table 1 (client-spine-messaging) connects behind masquerade"
    );
    assert!(
        connects_from(&lab, Host::Site, EMIS_INTERNET, 443),
        "tcp 443 to Table 3 (web-mobile-openapi) connects behind masquerade"
    );
    assert!(
        !connects_from(&lab, Host::Site, EMIS_PRIMARY, 444),
        "tcp 444 to Table 1 has no rule and is dropped"
    );
    assert!(
        masqueraded(&lab) >= translated + 2,
        "the allowed connections were masqueraded"
    );
    let metrics = daemon.metrics().expect("scraping /metrics");
    for rule in ["client-spine-messaging", "web-mobile-openapi"] {
        assert!(
            rule_packets(&metrics, rule, "forward") >= 2,
            "{rule}: {metrics}"
        );
        // SYN-ACK and the answer to the client's FIN at least, on the WAN side, pre-de-NAT.
        assert!(
            rule_packets(&metrics, rule, "reply") >= 1,
            "{rule}: {metrics}"
        );
    }
    assert!(
        metric_sample(
            &metrics,
            "emis_denied_packets_total",
            &[
                "reason=\"no_rule\"",
                "network=\"emis-n3\"",
                "action=\"drop\""
            ]
        ) >= 1,
        "{metrics}"
    );
    assert!(
        metric_value(&metrics, "emis_egress_flows_created_total") >= 2,
        "{metrics}"
    );

    // The gateway's own connections: never seen by XDP on the way out.
    let spine_replies = rule_packets(&metrics, "client-spine-messaging", "reply");
    assert!(
        connects_from(&lab, Host::Gateway, EMIS_PRIMARY, 443),
        "a connection the gateway opens to an allowed port gets its replies"
    );
    assert!(
        !connects_from(&lab, Host::Gateway, EMIS_PRIMARY, 444),
        "the answer to a connection the gateway opens to a port no rule lists is denied"
    );
    let metrics = daemon.metrics().expect("scraping /metrics");
    assert!(
        rule_packets(&metrics, "client-spine-messaging", "reply") > spine_replies,
        "{metrics}"
    );

    // Fail-static: the egress link is pinned, so a killed daemon leaves NAT replies working,
    // and a new run adopts it.
    assert!(
        dirs.pin_dir.join("egress-gw-emis").exists(),
        "{:?}",
        dirs.pins_left()
    );
    daemon.kill().expect("kill -9");
    assert!(
        connects_from(&lab, Host::Site, EMIS_INTERNET, 443),
        "after kill -9 masqueraded replies still match"
    );
    let mut daemon = Daemon::start(&dirs, &args).expect("a new emis run adopts the pins");
    assert!(tc_egress_attached(&lab, "gw-emis"));
    assert!(connects_from(&lab, Host::Site, EMIS_PRIMARY, 443));
    // A reload swaps a new egress program in behind the same pinned links.
    let before = egress_program_id(&lab, "gw-emis");
    let out = dirs.emis(&["reload"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        egress_program_id(&lab, "gw-emis"),
        before,
        "the reload swapped egress"
    );
    assert!(connects_from(&lab, Host::Site, EMIS_INTERNET, 443));
    assert!(daemon.stop().unwrap().success());

    let said = dirs.detach().unwrap();
    assert!(said.contains("egress-gw-emis"), "{said}");
    assert!(dirs.pins_left().is_empty(), "{:?}", dirs.pins_left());
    assert!(!tc_egress_attached(&lab, "gw-site") && !tc_egress_attached(&lab, "gw-emis"));
}

#[test]
fn an_interface_of_an_unsupported_link_type_is_refused_before_anything_is_attached() {
    let lab = Lab::create("emislinktype").expect("creating the lab namespaces (run as root)");
    let dirs = DaemonDirs::fresh(&emis_bin(), "linktype", 19492).expect("fresh dirs");
    let gateway = lab.ns(Host::Gateway);
    let out = Command::new(emis_bin())
        .arg("run")
        .args([
            "--netns",
            &gateway,
            "--iface",
            "gw-site",
            "--iface",
            "lo",
            "--site-net",
            "lan=192.168.10.0/24",
        ])
        .args(dirs.run_args())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "emis run --iface lo must fail");
    assert!(
        err.contains("interface lo") && err.contains("loopback"),
        "the error names the interface and its link type: {err}"
    );
    assert!(dirs.pins_left().is_empty(), "{:?}", dirs.pins_left());
    assert!(!dirs.state_dir.join("state.json").exists());
    let link = Command::new("ip")
        .args(["-n", &gateway, "link", "show", "gw-site"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "nothing attached to gw-site"
    );
    assert!(!tc_egress_attached(&lab, "gw-site"));
}

#[test]
fn stateless_replies_attach_no_egress_program_and_remove_one_an_earlier_run_left() {
    let lab = Lab::create("emisnatsl").expect("creating the lab namespaces (run as root)");
    let dirs = DaemonDirs::fresh(&emis_bin(), "natsl", 19493).expect("fresh dirs");
    let mut daemon = Daemon::start(&dirs, &gateway_run_args(&lab, &[])).expect("emis run");
    assert!(tc_egress_attached(&lab, "gw-emis"));
    assert!(daemon.stop().unwrap().success());
    let args = gateway_run_args(&lab, &["--replies", "stateless"]);
    let mut daemon = Daemon::start(&dirs, &args).expect("emis run --replies stateless");
    assert!(!tc_egress_attached(&lab, "gw-emis") && !tc_egress_attached(&lab, "gw-site"));
    assert!(
        !dirs.pin_dir.join("egress-gw-emis").exists(),
        "{:?}",
        dirs.pins_left()
    );
    assert!(
        dirs.pin_dir.join("link-gw-emis").exists(),
        "the XDP link stays"
    );
    assert!(daemon.stop().unwrap().success());
    dirs.detach().unwrap();
    assert!(dirs.pins_left().is_empty(), "{:?}", dirs.pins_left());
}
