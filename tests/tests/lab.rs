//! End to end: `emis run` on both veths of a gateway namespace between a site and the
//! EMIS networks; real TCP connections, `emis stats`, `emis mode` and `/metrics` over HTTP.
//! Needs root and network namespaces.

use std::{net::Ipv4Addr, process::Command, time::Duration};

use emis_lab::{
    daemon::{gateway_run_args, Daemon, DaemonDirs},
    tcp_connects, Host, Lab, TcpServers, EMIS_INTERNET, EMIS_PRIMARY, OUT_OF_SCOPE,
};
use emis_tests::{emis_bin, metric_sample, metric_value};

const TIMEOUT: Duration = Duration::from_secs(2);

/// A running `emis run` on the gateway's two interfaces.
struct Enforcer {
    daemon: Daemon,
}

impl Enforcer {
    fn start(lab: &Lab, name: &str, metrics_port: u16, extra: &[&str]) -> Enforcer {
        let dirs = DaemonDirs::named(&emis_bin(), name, metrics_port);
        // A run that died earlier may have left pins behind.
        dirs.detach().expect("emis detach before the test");
        let mut args = gateway_run_args(lab, &["--site-net", "clinical-server=192.168.10.5/32"]);
        args.extend(extra.iter().map(|s| s.to_string()));
        Enforcer {
            daemon: Daemon::start(&dirs, &args).expect("emis run serves /metrics"),
        }
    }

    fn metrics(&self) -> String {
        self.daemon.metrics().expect("scraping /metrics")
    }

    fn emis(&self, args: &[&str]) -> String {
        let out = self.daemon.dirs.emis(args).expect("running emis");
        assert!(
            out.status.success(),
            "emis {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// SIGINT: emis exits cleanly and, fail-static, leaves its program pinned and
    /// attached; `emis detach` then removes every pin.
    fn stop(mut self) {
        let status = self.daemon.stop().unwrap();
        assert!(
            status.success(),
            "emis run exited with {status} after SIGINT"
        );
        let dirs = self.daemon.dirs.clone();
        assert!(
            dirs.pin_dir.join("EMIS_STATS").exists(),
            "pins stay after exit (fail-static)"
        );
        let said = dirs.detach().unwrap();
        assert!(said.contains("detached from gw-emis, gw-site"), "{said}");
        assert!(dirs.pins_left().is_empty(), "{:?}", dirs.pins_left());
    }
}

fn connects(lab: &Lab, addr: Ipv4Addr, port: u16) -> bool {
    tcp_connects(&lab.ns(Host::Site), addr, port, TIMEOUT).expect("probing from the site namespace")
}

fn xdp_attached(lab: &Lab, iface: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", &lab.ns(Host::Gateway), "link", "show", iface])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

#[test]
fn enforce_then_audit_on_a_routed_gateway_with_counters_over_http() {
    let lab = Lab::create("emise2e").expect("creating the lab namespaces (run as root)");
    let _servers = TcpServers::start(
        &lab.ns(Host::Emis),
        &[
            (EMIS_PRIMARY, 443),
            (EMIS_PRIMARY, 444),
            (EMIS_INTERNET, 443),
            (OUT_OF_SCOPE, 443),
        ],
    )
    .expect("servers in the EMIS namespace");
    // Before the enforcer runs, every port is reachable: the lab itself routes.
    assert!(
        connects(&lab, EMIS_PRIMARY, 444),
        "the lab routes site -> EMIS without emis"
    );

    let enforcer = Enforcer::start(&lab, "e2e", 19469, &[]);
    assert!(xdp_attached(&lab, "gw-site") && xdp_attached(&lab, "gw-emis"));

    assert!(
        connects(&lab, EMIS_PRIMARY, 443),
        "client-spine-messaging (tcp 443 to Table 1) is allowed"
    );
    assert!(
        connects(&lab, EMIS_INTERNET, 443),
        "tcp 443 to Table 3 is allowed"
    );
    assert!(
        connects(&lab, OUT_OF_SCOPE, 443),
        "out-of-scope traffic passes"
    );
    assert!(
        !connects(&lab, EMIS_PRIMARY, 444),
        "tcp 444 to Table 1 has no rule and is dropped"
    );

    let metrics = enforcer.metrics();
    let spine = ["rule=\"client-spine-messaging\"", "direction=\"outbound\""];
    assert!(
        metric_sample(
            &metrics,
            "emis_rule_packets_total",
            &[spine[0], spine[1], "path=\"forward\""]
        ) >= 2,
        "{metrics}"
    );
    assert!(
        metric_sample(
            &metrics,
            "emis_rule_packets_total",
            &[spine[0], "path=\"reply\""]
        ) >= 1,
        "{metrics}"
    );
    assert!(
        metric_sample(
            &metrics,
            "emis_rule_bytes_total",
            &[spine[0], "path=\"forward\""]
        ) >= 2 * 54,
        "{metrics}"
    );
    assert!(
        metric_sample(
            &metrics,
            "emis_rule_packets_total",
            &["rule=\"web-mobile-openapi\"", "path=\"forward\""]
        ) >= 2
    );
    let dropped = metric_sample(
        &metrics,
        "emis_denied_packets_total",
        &[
            "reason=\"no_rule\"",
            "network=\"emis-n3\"",
            "action=\"drop\"",
        ],
    );
    assert!(dropped >= 1, "{metrics}");
    // The same packets by interface: the SYNs arrive on the site side, the replies of the
    // allowed connections on the EMIS side, and every drop is a SYN from the site.
    let on = |iface: &str, action: &str| {
        metric_sample(
            &metrics,
            "emis_interface_packets_total",
            &[
                &format!("iface=\"{iface}\""),
                &format!("action=\"{action}\""),
            ],
        )
    };
    assert_eq!(
        on("gw-site", "drop"),
        metric_sample(&metrics, "emis_denied_packets_total", &["action=\"drop\""]),
        "{metrics}"
    );
    assert_eq!(on("gw-emis", "drop"), 0, "{metrics}");
    assert!(on("gw-site", "allow") >= 2, "{metrics}");
    assert!(on("gw-emis", "allow") >= 2, "{metrics}");
    assert!(on("gw-site", "pass") >= 1, "{metrics}");
    assert!(
        metrics.contains("emis_interface_packets_total{iface=\"other\",action=\"drop\"} 0"),
        "the overflow slot is exported, empty: {metrics}"
    );
    assert!(
        metric_sample(
            &metrics,
            "emis_interface_bytes_total",
            &["iface=\"gw-site\"", "action=\"drop\""]
        ) >= 54 * on("gw-site", "drop"),
        "{metrics}"
    );
    assert!(
        metric_sample(
            &metrics,
            "emis_passed_packets_total",
            &["reason=\"out_of_scope\""]
        ) >= 2,
        "{metrics}"
    );
    assert!(
        metrics.contains("emis_policy_info{mode=\"enforce\",spec_sha256=\""),
        "{metrics}"
    );
    // Each allowed connection is a tracked flow; its replies crossed the other interface.
    assert!(
        metric_value(&metrics, "emis_flows_created_total") >= 2,
        "{metrics}"
    );
    assert!(
        metric_value(&metrics, "emis_flow_table_entries") >= 2,
        "{metrics}"
    );
    assert_eq!(metric_value(&metrics, "emis_flow_table_capacity"), 131_072);
    assert_eq!(metric_value(&metrics, "emis_flows_evicted_total"), 0);

    let stats: serde_json::Value =
        serde_json::from_str(&enforcer.emis(&["stats", "--json"])).unwrap();
    let denied = stats["denied"].as_array().unwrap();
    assert!(denied.iter().any(|d| d["reason"] == "no_rule"
        && d["network"] == "emis-n3"
        && d["packets"].as_u64() >= Some(1)));
    assert!(stats["flows"]["created"].as_u64() >= Some(2), "{stats}");
    let table = enforcer.emis(&["stats"]);
    assert!(
        table.contains("client-spine-messaging") && table.contains("no_rule"),
        "{table}"
    );
    assert!(table.contains("FLOWS (stateful replies)"), "{table}");

    // Audit: the same denied flow now passes, and is counted as would-deny.
    assert!(enforcer.emis(&["mode", "audit"]).contains("audit"));
    assert!(
        connects(&lab, EMIS_PRIMARY, 444),
        "audit mode passes what enforce mode drops"
    );
    let metrics = enforcer.metrics();
    assert!(
        metric_sample(
            &metrics,
            "emis_denied_packets_total",
            &["reason=\"no_rule\"", "action=\"audit\""]
        ) >= 1,
        "{metrics}"
    );
    assert_eq!(
        metric_sample(
            &metrics,
            "emis_denied_packets_total",
            &[
                "reason=\"no_rule\"",
                "network=\"emis-n3\"",
                "action=\"drop\""
            ]
        ),
        dropped,
        "nothing more was dropped in audit mode"
    );
    assert!(
        metrics.contains("emis_policy_info{mode=\"audit\""),
        "{metrics}"
    );
    // Would-be drops both ways now: the SYN on the site side, the server's answer on the
    // EMIS side.
    for iface in ["gw-site", "gw-emis"] {
        assert!(
            metric_sample(
                &metrics,
                "emis_interface_packets_total",
                &[&format!("iface=\"{iface}\""), "action=\"audit\""]
            ) >= 1,
            "{iface}: {metrics}"
        );
    }

    enforcer.stop();
    assert!(
        !xdp_attached(&lab, "gw-site") && !xdp_attached(&lab, "gw-emis"),
        "SIGINT then emis detach detaches"
    );
    assert!(
        connects(&lab, EMIS_PRIMARY, 444),
        "without emis the lab routes again"
    );
}

#[test]
fn started_in_audit_mode_nothing_is_dropped_but_everything_is_counted() {
    let lab = Lab::create("emisaud").expect("creating the lab namespaces (run as root)");
    let _servers = TcpServers::start(
        &lab.ns(Host::Emis),
        &[(EMIS_PRIMARY, 443), (EMIS_PRIMARY, 33999)],
    )
    .unwrap();
    let enforcer = Enforcer::start(&lab, "audit", 19470, &["--mode", "audit"]);
    assert!(
        connects(&lab, EMIS_PRIMARY, 33999),
        "audit mode lets a denied flow through"
    );
    let metrics = enforcer.metrics();
    assert!(
        metric_sample(
            &metrics,
            "emis_denied_packets_total",
            &[
                "reason=\"no_rule\"",
                "network=\"emis-n3\"",
                "action=\"audit\""
            ]
        ) >= 2,
        "the SYN and the server's reply are both counted as would-deny: {metrics}"
    );
    assert_eq!(
        metric_sample(&metrics, "emis_denied_packets_total", &["action=\"drop\""]),
        0
    );
    assert!(connects(&lab, EMIS_PRIMARY, 443));
    assert!(
        metric_sample(
            &metrics,
            "emis_rule_packets_total",
            &["rule=\"client-spine-messaging\""]
        ) == 0
    );
    let metrics = enforcer.metrics();
    assert!(
        metric_sample(
            &metrics,
            "emis_rule_packets_total",
            &["rule=\"client-spine-messaging\""]
        ) >= 2
    );
    enforcer.stop();
}

#[test]
fn run_refuses_an_unknown_interface_and_leaves_nothing_behind() {
    let lab = Lab::create("emisbad").expect("creating the lab namespaces (run as root)");
    let state_dir = std::env::temp_dir().join(emis_lab::isolated("emis-test-badiface"));
    let pin_dir = format!("/sys/fs/bpf/{}", emis_lab::isolated("emis-test-badiface"));
    let out = Command::new(emis_bin())
        .args([
            "run",
            "--netns",
            &lab.ns(Host::Gateway),
            "--iface",
            "gw-site",
            "--iface",
            "nosuch0",
        ])
        .args(["--metrics-addr", "127.0.0.1:19471", "--pin-dir", &pin_dir])
        .arg("--state-dir")
        .arg(&state_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nosuch0"), "{stderr}");
    assert!(
        !xdp_attached(&lab, "gw-site"),
        "a failed start detaches what it attached"
    );
    assert!(!state_dir.join("state.json").exists());
    assert!(
        !std::path::Path::new(&pin_dir).join("EMIS_STATS").exists(),
        "a failed start leaves no pins"
    );
}
