//! The dashboard and the alerting rules against a real Prometheus: `emis run` enforces in
//! the lab, a Prometheus (Debian's package, temp storage, 127.0.0.1) scrapes it every
//! second, allowed, denied and audited flows go through, a reload succeeds and one is
//! refused; then every panel query of contrib/grafana/emis.json and every rule of
//! contrib/prometheus/emis-alerts.yml is evaluated through the HTTP API. promtool lints a
//! scrape in the classic format and runs the rules' unit tests. Needs root, the lab's
//! namespaces, and `prometheus`/`promtool` (`cargo xtask setup` installs them).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use emis_lab::{
    daemon::{Daemon, DaemonDirs},
    in_netns, tcp_connects, Host, Lab, TcpServers, EMIS_PRIMARY,
};
use emis_tests::emis_bin;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(2);
/// Grafana's variables in the dashboard's queries, and what stands for them here: every
/// instance, and a rate window that holds many of the 1 s scrapes.
const DASHBOARD_VARIABLES: [(&str, &str); 2] = [("$__rate_interval", "1m"), ("$instance", ".*")];
/// Panels that must show more than zero after the traffic this test sends.
const PANELS_WITH_TRAFFIC: [&str; 8] = [
    "Allowed packets by rule",
    "Denied packets by reason and network",
    "Audit: would-be drops",
    "Packets by interface and action",
    "Flow table fill",
    "Events suppressed",
    "Runs per second",
    "Time per run",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_path_buf()
}

fn contrib(path: &str) -> PathBuf {
    repo().join("contrib").join(path)
}

/// Fails loudly when a tool is missing: this test never skips.
fn require(tool: &str) {
    let found = Command::new(tool).arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "`{tool}` is missing: install Debian's prometheus package (`cargo xtask setup` does)"
    );
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// One HTTP/1.0 response.
struct Response {
    code: u16,
    content_type: String,
    body: String,
}

/// An HTTP/1.0 GET with std only, with an optional Accept header.
fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok(Response {
        code,
        content_type,
        body: body.to_string(),
    })
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server scraping one emis every second, with the alerting rules loaded;
/// killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("emis-test-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: emis\n    static_configs:\n      - targets: ['{target}']\n",
                rules = contrib("prometheus/emis-alerts.yml").display()
            ),
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        let mut prometheus = Prometheus { child, addr, dir };
        prometheus.wait_ready();
        prometheus
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            if get(self.addr, "/-/ready", None).is_ok_and(|r| r.code == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The `data` of an API call, after checking its status is success.
    fn api(&self, path: &str) -> Value {
        let r = get(self.addr, path, None).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let answer: Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {}", r.body));
        assert_eq!(
            answer["status"], "success",
            "GET {path} answered HTTP {}: {answer}",
            r.code
        );
        answer["data"].clone()
    }

    /// An instant query's result vector.
    fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(expr)));
        match &data["result"] {
            Value::Array(result) => result.clone(),
            // Scalars (e.g. `time()`) count as one result.
            other => vec![other.clone()],
        }
    }

    /// Polls `expr` until it returns something, up to `timeout`.
    fn wait_for(&self, expr: &str, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.query(expr);
            if !result.is_empty() {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "`{expr}` returned nothing within {} s; prometheus log:\n{}",
                timeout.as_secs(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of one vector sample.
fn sample_value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Every (panel title, query) in the dashboard, rows' nested panels included, and the
/// metric behind each query variable.
fn dashboard_queries() -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("every target has an expr");
                out.push((title.clone(), expr.to_string()));
            }
            walk(panel["panels"].as_array().map_or(&[], |v| v), out);
        }
    }
    let text = std::fs::read_to_string(contrib("grafana/emis.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    walk(dashboard["panels"].as_array().expect("panels"), &mut out);
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(query) = var["query"]["query"].as_str() {
            // label_values(METRIC, LABEL): the metric must exist.
            let metric = query
                .strip_prefix("label_values(")
                .and_then(|q| q.split(',').next())
                .unwrap_or_else(|| panic!("unexpected variable query {query}"));
            out.push((
                format!("variable {}", var["name"]),
                metric.trim().to_string(),
            ));
        }
    }
    for (_, expr) in &mut out {
        for (var, value) in DASHBOARD_VARIABLES {
            *expr = expr.replace(var, value);
        }
        assert!(
            !expr.contains('$'),
            "a Grafana variable this test does not know: {expr}"
        );
    }
    out
}

fn promtool(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(contrib("prometheus"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{said}");
    said
}

#[test]
fn the_alerting_rules_pass_promtool() {
    require("promtool");
    promtool(&["check", "rules", "emis-alerts.yml"], None);
    promtool(&["test", "rules", "emis-alerts.test.yml"], None);
}

fn connects(lab: &Lab, port: u16) -> bool {
    tcp_connects(&lab.ns(Host::Site), EMIS_PRIMARY, port, TIMEOUT).expect("probing from the site")
}

fn emis_ok(dirs: &DaemonDirs, args: &[&str]) -> String {
    let out = dirs.emis(args).unwrap();
    assert!(
        out.status.success(),
        "emis {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The classic format by default and on request, OpenMetrics on request; promtool
/// lints the classic one.
fn check_formats(metrics: SocketAddr) {
    for accept in [None, Some("text/plain; version=0.0.4")] {
        let r = get(metrics, "/metrics", accept).unwrap();
        assert_eq!(r.code, 200);
        assert_eq!(r.content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(!r.body.contains("# EOF"), "{}", r.body);
        for name in [
            "# TYPE emis_rule_packets_total counter",
            "emis_build_info{version=\"",
            "emis_program_runs_total ",
            "emis_program_run_seconds_total ",
            "emis_last_reload_success 1",
        ] {
            assert!(r.body.contains(name), "{name} missing:\n{}", r.body);
        }
        promtool(&["check", "metrics"], Some(&r.body));
    }
    let r = get(
        metrics,
        "/metrics",
        Some("application/openmetrics-text; version=1.0.0"),
    )
    .unwrap();
    assert_eq!(
        r.content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(r.body.ends_with("# EOF\n"), "{}", r.body);
    assert!(
        r.body.contains("# TYPE emis_rule_packets counter"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("# UNIT emis_program_run_seconds seconds"),
        "{}",
        r.body
    );
}

/// `--log-format json`: every line the daemon logged is one JSON object.
fn check_json_logs(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    for line in &lines {
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            event["timestamp"].is_string() && event["level"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#""message":"policy loaded""#)),
        "{text}"
    );
}

#[test]
fn a_real_prometheus_evaluates_every_panel_and_alert() {
    require("prometheus");
    require("promtool");
    let lab = Lab::create("emisprom").expect("creating the lab namespaces (run as root)");
    let _servers = TcpServers::start(
        &lab.ns(Host::Emis),
        &[(EMIS_PRIMARY, 443), (EMIS_PRIMARY, 444)],
    )
    .expect("servers in the EMIS namespace");
    let dirs = DaemonDirs::named(&emis_bin(), "prometheus", free_port());
    dirs.detach().expect("emis detach before the test");
    std::fs::create_dir_all(&dirs.state_dir).unwrap();
    let spec = dirs.state_dir.with_extension("spec.toml");
    std::fs::write(&spec, emis_policy::spec::DEFAULT_SPEC).unwrap();
    let args: Vec<String> = [
        "--netns",
        &lab.ns(Host::Gateway),
        "--iface",
        "gw-site",
        "--iface",
        "gw-emis",
        "--site-net",
        "lan=192.168.10.0/24",
        "--spec",
        &spec.display().to_string(),
        "--bpf-stats",
        // One event a second per CPU, so the burst below spends the rate limit.
        "--event-rate",
        "1",
        "--log-format",
        "json",
    ]
    .map(String::from)
    .to_vec();
    let log = dirs.state_dir.join("emis.log");
    let mut daemon = Daemon::spawn(&dirs, &args, Some(&log)).expect("emis run");
    daemon
        .wait_ready(Duration::from_secs(30))
        .expect("emis run serves /metrics");
    check_formats(dirs.metrics_addr);

    let prometheus = Prometheus::start(dirs.metrics_addr);
    // Two scrapes before the traffic, so every rate() has a sample from before it.
    prometheus.wait_for(
        "count_over_time(emis_build_info[1m]) >= 2",
        Duration::from_secs(30),
    );

    for _ in 0..3 {
        assert!(connects(&lab, 443), "tcp 443 to Table 1 is allowed");
        assert!(!connects(&lab, 444), "tcp 444 to Table 1 is dropped");
    }
    // A burst of denied datagrams (UDP 5999 has no rule): most events are suppressed.
    in_netns(&lab.ns(Host::Site), || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        for _ in 0..200 {
            socket.send_to(b"burst", (EMIS_PRIMARY, 5999)).unwrap();
        }
    })
    .unwrap();
    assert!(emis_ok(&dirs, &["mode", "audit"]).contains("audit"));
    assert!(connects(&lab, 444), "audit mode passes tcp 444");
    assert!(emis_ok(&dirs, &["mode", "enforce"]).contains("enforce"));
    emis_ok(&dirs, &["reload"]);
    std::fs::write(&spec, "this is not a spec [[[").unwrap();
    let refused = dirs.emis(&["reload"]).unwrap();
    assert!(!refused.status.success(), "a broken spec is refused");

    // The traffic and the refused reload have been scraped, twice.
    prometheus.wait_for(
        "count_over_time(emis_last_reload_success[1m]) >= 2 and emis_last_reload_success == 0",
        Duration::from_secs(30),
    );
    prometheus.wait_for(
        r#"sum(emis_denied_packets_total{action="audit"}) > 0"#,
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_secs(3));

    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{queries:?}");
    let mut empty = Vec::new();
    for (title, expr) in &queries {
        let result = prometheus.query(expr);
        if result.is_empty() {
            empty.push(format!("{title}: {expr}"));
        }
        if PANELS_WITH_TRAFFIC.contains(&title.as_str()) {
            assert!(
                result.iter().any(|s| sample_value(s) > 0.0),
                "panel {title:?} shows no traffic: `{expr}` gave {result:?}"
            );
        }
    }
    assert!(
        empty.is_empty(),
        "panels without data:\n{}",
        empty.join("\n")
    );
    for title in PANELS_WITH_TRAFFIC {
        assert!(
            queries.iter().any(|(t, _)| t == title),
            "no panel {title:?}"
        );
    }

    // Every alerting rule loaded and evaluates; its query is valid on its own too.
    let groups = prometheus.api("/api/v1/rules");
    let rules: Vec<Value> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect();
    assert_eq!(rules.len(), 5, "{groups}");
    for rule in &rules {
        assert_eq!(
            rule["health"], "ok",
            "rule {} does not evaluate: {rule}",
            rule["name"]
        );
        prometheus.query(rule["query"].as_str().unwrap());
    }
    let firing = |name: &str, label: (&str, &str)| {
        let alerts = prometheus.api("/api/v1/alerts");
        alerts["alerts"].as_array().unwrap().iter().any(|a| {
            a["labels"]["alertname"] == name
                && a["labels"][label.0] == label.1
                && a["state"] == "firing"
        })
    };
    assert!(
        firing("EmisReloadFailed", ("job", "emis")),
        "the refused reload alerts"
    );
    assert!(
        firing("EmisNewDenials", ("network", "emis-n3")),
        "the first denials to Table 1 alert"
    );

    // The daemon stops: the scrape fails (up == 0) while the program keeps enforcing.
    assert!(daemon.stop().unwrap().success());
    prometheus.wait_for(r#"up{job="emis"} == 0"#, Duration::from_secs(15));
    assert!(
        !connects(&lab, 444),
        "fail-static: the program still drops tcp 444"
    );
    assert!(connects(&lab, 443), "and still allows tcp 443");
    drop(prometheus);
    check_json_logs(&log);
    let said = dirs.detach().unwrap();
    assert!(said.contains("detached from gw-emis, gw-site"), "{said}");
    let _ = std::fs::remove_dir_all(&dirs.state_dir);
}
