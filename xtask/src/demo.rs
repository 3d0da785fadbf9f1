//! `cargo xtask demo`: emis on the gateway of a namespace lab, with flows the policy
//! allows, denies and leaves alone.

use crate::{interrupt, util};
use anyhow::{bail, Result};
use emis_lab::{
    daemon::{http_get, Daemon, DaemonDirs},
    Host, Lab, TcpOutcome, TcpServers, CLINICAL_ADDR, EMIS_INTERNET, EMIS_PRIMARY, OUT_OF_SCOPE,
    SITE_ADDR, SITE_NET,
};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const PREFIX: &str = "emisdemo";
/// The demo's own pins and state, so it never touches an installed emis's.
const PIN_DIR: &str = "/sys/fs/bpf/emisdemo";
const METRICS_ADDR: &str = "127.0.0.1:9469";
const FLOW_TIMEOUT: Duration = Duration::from_secs(2);
const METRICS_WAIT: Duration = Duration::from_secs(30);

/// What the policy says about a flow.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Allowed by the named rule.
    Allow(&'static str),
    /// Denied (reason).
    Deny(&'static str),
    /// Outside every enforce-scope network: passes.
    OutOfScope,
}

impl Expect {
    fn connects(self) -> bool {
        !matches!(self, Expect::Deny(_))
    }

    fn describe(self) -> String {
        match self {
            Expect::Allow(rule) => format!("allow ({rule})"),
            Expect::Deny(why) => format!("deny ({why})"),
            Expect::OutOfScope => "out of scope: pass".into(),
        }
    }
}

struct Flow {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    expect: Expect,
}

const FLOWS: [Flow; 4] = [
    Flow {
        src: SITE_ADDR,
        dst: EMIS_PRIMARY,
        port: 443,
        expect: Expect::Allow("client-spine-messaging"),
    },
    Flow {
        src: SITE_ADDR,
        dst: EMIS_PRIMARY,
        port: 8443,
        expect: Expect::Deny("no rule"),
    },
    Flow {
        src: SITE_ADDR,
        dst: EMIS_INTERNET,
        port: 443,
        expect: Expect::Allow("web-mobile-openapi"),
    },
    Flow {
        src: SITE_ADDR,
        dst: OUT_OF_SCOPE,
        port: 443,
        expect: Expect::OutOfScope,
    },
];

/// The lab, announcing its teardown on every exit path.
struct DemoLab(Lab);

impl Drop for DemoLab {
    fn drop(&mut self) {
        println!(
            "==> tear down lab {} (ip netns del {})",
            self.0.prefix,
            self.0.namespaces().join(" ")
        );
    }
}

/// Prints the lab's namespaces and addresses.
pub fn print_topology(lab: &Lab) {
    let [gw_site, gw_emis] = lab.gateway_ifaces();
    println!(
        "    {site}: site0 {SITE_ADDR}/24 (site LAN), {CLINICAL_ADDR}/24 (clinical server), default via {gws}\n    \
         {gw}: {gw_site} {gws}/24, {gw_emis} {gwe}/30, ip_forward=1, EMIS networks via {el}\n    \
         {emis}: emis0 {el}/30; {addrs} on lo",
        site = lab.ns(Host::Site),
        gw = lab.ns(Host::Gateway),
        emis = lab.ns(Host::Emis),
        gws = emis_lab::GW_SITE_ADDR,
        gwe = emis_lab::GW_EMIS_ADDR,
        el = emis_lab::EMIS_LINK_ADDR,
        addrs = emis_lab::EMIS_SIDE_ADDRS.map(|a| a.to_string()).join(", "),
    );
}

/// `cargo xtask demo [--keep]`.
pub fn demo(keep: bool) -> Result<()> {
    interrupt::install()?;
    // Root first: no point in a long build that cannot be demonstrated.
    emis_lab::require_root_and_tools()?;
    crate::build()?;
    interrupt::check()?;

    let bin = util::target_dir().join("release/emis");
    if !bin.exists() {
        bail!("{} is missing after the build", bin.display());
    }
    let metrics: SocketAddr = METRICS_ADDR.parse()?;
    if TcpStream::connect_timeout(&metrics, Duration::from_millis(300)).is_ok() {
        bail!(
            "something already listens on {METRICS_ADDR} (an emis left running? `ss -ltnp \
             'sport = :9469'`); stop it first"
        );
    }

    println!("==> create lab {PREFIX}");
    let lab = DemoLab(Lab::create(PREFIX)?);
    print_topology(&lab.0);
    interrupt::check()?;

    let gw = lab.0.ns(Host::Gateway);
    let [gw_site, gw_emis] = lab.0.gateway_ifaces();
    let dirs = DaemonDirs {
        bin: bin.clone(),
        state_dir: util::target_dir().join(PREFIX).join("state"),
        pin_dir: PathBuf::from(PIN_DIR),
        metrics_addr: metrics,
    };
    // A demo that died earlier may have left its program pinned: start clean.
    dirs.detach()?;
    let args: Vec<String> = [
        "--netns",
        &gw,
        "--iface",
        gw_site,
        "--iface",
        gw_emis,
        "--site-net",
        &format!("lan={SITE_NET}"),
        "--site-net",
        &format!("clinical-server={CLINICAL_ADDR}/32"),
    ]
    .map(String::from)
    .to_vec();
    let log = util::target_dir().join(PREFIX).join("emis.log");
    println!(
        "==> {} run {} {}   (log: {})",
        bin.display(),
        args.join(" "),
        dirs.run_args().join(" "),
        log.display()
    );
    let mut emis = Daemon::spawn(&dirs, &args, Some(&log))?;

    println!("==> wait for http://{METRICS_ADDR}/metrics");
    let started = Instant::now();
    loop {
        interrupt::check()?;
        if let Some(st) = emis.exited()? {
            bail!(
                "emis exited ({st}) before serving metrics{}",
                emis.log_tail(30)
            );
        }
        if let Ok((200, _)) = http_get(metrics, "/metrics", Duration::from_secs(2)) {
            break;
        }
        if started.elapsed() > METRICS_WAIT {
            bail!(
                "emis did not answer on http://{METRICS_ADDR}/metrics within {} s{}",
                METRICS_WAIT.as_secs(),
                emis.log_tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "    emis is up after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let emis_ns = lab.0.ns(Host::Emis);
    let listen = [
        (EMIS_PRIMARY, 443),
        (EMIS_PRIMARY, 8443),
        (EMIS_INTERNET, 443),
        (OUT_OF_SCOPE, 443),
    ];
    println!(
        "==> TCP servers in {emis_ns} on {}",
        listen.map(|(a, p)| format!("{a}:{p}")).join(", ")
    );
    let servers = TcpServers::start(&emis_ns, &listen)?;

    let site = lab.0.ns(Host::Site);
    println!(
        "==> flows from {site} (TCP connect, {} s timeout)",
        FLOW_TIMEOUT.as_secs()
    );
    println!("    {:<40} {:<36} {:<12} check", "flow", "policy", "result");
    let mut failures = Vec::new();
    for f in &FLOWS {
        interrupt::check()?;
        let outcome = emis_lab::tcp_probe(&site, Some(f.src), f.dst, f.port, FLOW_TIMEOUT)?;
        let connected = outcome == TcpOutcome::Connected;
        let flow = format!("{} -> {}:{}/tcp", f.src, f.dst, f.port);
        let ok = connected == f.expect.connects();
        println!(
            "    {flow:<40} {:<36} {:<12} {}",
            f.expect.describe(),
            outcome.describe(),
            if ok { "ok" } else { "MISMATCH" }
        );
        if !ok {
            failures.push(format!(
                "{flow}: expected {}, got {}",
                f.expect.describe(),
                outcome.describe()
            ));
        }
    }

    interrupt::check()?;
    println!(
        "==> {} stats --state-dir {}",
        bin.display(),
        dirs.state_dir.display()
    );
    match dirs.emis(&["stats"]) {
        Ok(out) if out.status.success() => {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                println!("    {line}");
            }
        }
        Ok(out) => {
            let msg = format!(
                "`emis stats` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            println!("    {msg}");
            failures.push(msg);
        }
        Err(e) => failures.push(format!("cannot run `emis stats`: {e}")),
    }

    println!("==> metrics: http://{METRICS_ADDR}/metrics");
    match http_get(metrics, "/metrics", Duration::from_secs(5)) {
        Ok((200, body)) => {
            let lines = interesting_metrics(&body, 15);
            if lines.is_empty() {
                failures.push("/metrics has no emis_ lines".into());
            }
            for line in lines {
                println!("    {line}");
            }
        }
        Ok((code, _)) => failures.push(format!("/metrics answered HTTP {code}")),
        Err(e) => failures.push(format!("GET /metrics: {e:#}")),
    }

    if keep {
        println!(
            "\nemis and the lab keep running. Try:\n  \
             ip netns exec {site} bash                  # a shell on the site LAN\n  \
             curl -s http://{METRICS_ADDR}/metrics | grep ^emis_\n  \
             {bin} stats --state-dir {state}\n  \
             {bin} status --state-dir {state}\n\
             Press Enter to stop emis, detach it and tear the lab down.",
            bin = bin.display(),
            state = dirs.state_dir.display()
        );
        wait_for_enter(&mut emis)?;
    }

    println!(
        "==> kill -INT {}   (stop emis: its program stays attached)",
        emis.pid()
    );
    let st = emis.stop()?;
    println!("    emis exited: {st}");
    if !st.success() {
        println!("    (non-zero exit after SIGINT{})", emis.log_tail(10));
    }
    println!(
        "==> {} detach --pin-dir {} --state-dir {}",
        bin.display(),
        dirs.pin_dir.display(),
        dirs.state_dir.display()
    );
    for line in dirs.detach()?.lines() {
        println!("    {line}");
    }
    drop(servers);
    drop(lab);
    if !failures.is_empty() {
        bail!(
            "demo: {} check(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    println!("demo: all flows behaved as the policy says");
    Ok(())
}

/// Waits for a line on stdin (or EOF), a Ctrl-C, or emis exiting.
fn wait_for_enter(emis: &mut Daemon) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = tx.send(());
    });
    loop {
        interrupt::check()?;
        if let Some(st) = emis.exited()? {
            bail!(
                "emis exited ({st}) while the demo was kept running{}",
                emis.log_tail(20)
            );
        }
        if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
    }
}

/// Up to `max` `emis_` sample lines with a non-zero value, or the first `max` ones
/// if all are zero.
fn interesting_metrics(body: &str, max: usize) -> Vec<&str> {
    let samples: Vec<&str> = body
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("emis_"))
        .collect();
    let nonzero: Vec<&str> = samples
        .iter()
        .copied()
        .filter(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v != 0.0)
        })
        .take(max)
        .collect();
    if nonzero.is_empty() {
        samples.into_iter().take(max).collect()
    } else {
        nonzero
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_selection() {
        let body = "# HELP emis_packets x\n# TYPE emis_packets counter\n\
                    emis_packets_total{verdict=\"deny\"} 3\nemis_packets_total{verdict=\"pass\"} 0\n\
                    other_metric 5\nemis_bytes_total 180\n";
        assert_eq!(
            interesting_metrics(body, 10),
            [
                "emis_packets_total{verdict=\"deny\"} 3",
                "emis_bytes_total 180"
            ]
        );
        assert_eq!(interesting_metrics(body, 1).len(), 1);
        let zeros = "emis_a 0\nemis_b 0\nemis_c 0\n";
        assert_eq!(interesting_metrics(zeros, 2), ["emis_a 0", "emis_b 0"]);
        assert!(interesting_metrics("other 1\n", 5).is_empty());
    }

    #[test]
    fn flows_match_the_brief() {
        let connects: Vec<bool> = FLOWS.iter().map(|f| f.expect.connects()).collect();
        assert_eq!(connects, [true, false, true, true]);
        assert!(FLOWS.iter().all(|f| f.src == SITE_ADDR));
    }
}
