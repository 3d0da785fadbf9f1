//! `cargo xtask demo`: emis on the gateway of a namespace lab, with flows the policy
//! allows, denies and leaves alone.

use crate::{interrupt, util};
use anyhow::{bail, Context, Result};
use emis_lab::{
    Host, Lab, TcpOutcome, TcpServers, CLINICAL_ADDR, EMIS_INTERNET, EMIS_PRIMARY, OUT_OF_SCOPE,
    SITE_ADDR, SITE_NET,
};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const PREFIX: &str = "emisdemo";
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

/// The `emis run` child: stopped with SIGINT (then SIGKILL) on every exit path.
struct Emis {
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Emis {
    fn spawn(bin: &Path, args: &[String], log: &Path) -> Result<Emis> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: a terminal Ctrl-C reaches only us, and we stop
            // emis in order (SIGINT, wait) before deleting the lab.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // If xtask dies without cleaning up, emis gets SIGINT instead of
                // running on forever.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        println!(
            "==> {} {}   (log: {})",
            bin.display(),
            args.join(" "),
            log.display()
        );
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Emis {
            child,
            log: log.to_path_buf(),
            status: None,
        })
    }

    /// Some(status) if emis has exited.
    fn exited(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n    ");
        format!("last lines of {}:\n    {tail}", self.log.display())
    }

    /// SIGINT, wait up to 10 s, then SIGKILL.
    fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(st) = self.exited()? {
            return Ok(st);
        }
        let pid = self.child.id() as libc::pid_t;
        println!("==> kill -INT {pid}   (stop emis)");
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(st) = self.exited()? {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("    emis did not stop within 10 s of SIGINT: killing it");
        self.child.kill()?;
        let st = self.child.wait()?;
        self.status = Some(st);
        Ok(st)
    }
}

impl Drop for Emis {
    fn drop(&mut self) {
        if self.status.is_none() {
            match self.stop() {
                Ok(st) => println!("    emis exited: {st}"),
                Err(e) => println!("    stopping emis: {e:#}"),
            }
        }
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
    let args: Vec<String> = [
        "run",
        "--netns",
        &gw,
        "--iface",
        gw_site,
        "--iface",
        gw_emis,
        "--metrics-addr",
        METRICS_ADDR,
        "--site-net",
        &format!("lan={SITE_NET}"),
        "--site-net",
        &format!("clinical-server={CLINICAL_ADDR}/32"),
    ]
    .map(String::from)
    .to_vec();
    let log = util::target_dir().join(PREFIX).join("emis.log");
    let mut emis = Emis::spawn(&bin, &args, &log)?;

    println!("==> wait for http://{METRICS_ADDR}/metrics");
    let started = Instant::now();
    loop {
        interrupt::check()?;
        if let Some(st) = emis.exited()? {
            bail!(
                "emis exited ({st}) before serving metrics; {}",
                emis.log_tail(30)
            );
        }
        if let Ok((200, _)) = http_get(metrics, "/metrics", Duration::from_secs(2)) {
            break;
        }
        if started.elapsed() > METRICS_WAIT {
            bail!(
                "emis did not answer on http://{METRICS_ADDR}/metrics within {} s; {}",
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
    let mut stats = Command::new(&bin);
    stats.arg("stats");
    println!("==> {} stats", bin.display());
    match stats.output() {
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
             {bin} stats\n\
             Press Enter to stop emis and tear the lab down.",
            bin = bin.display()
        );
        wait_for_enter(&mut emis)?;
    }

    let st = emis.stop()?;
    println!("    emis exited: {st}");
    if !st.success() {
        println!("    (non-zero exit after SIGINT; {})", emis.log_tail(10));
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
fn wait_for_enter(emis: &mut Emis) -> Result<()> {
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
                "emis exited ({st}) while the demo was kept running; {}",
                emis.log_tail(20)
            );
        }
        if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
    }
}

/// An HTTP/1.0 GET with std only; returns the status code and body.
fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    // One write: a server that reads the request in one go sees all of it.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n");
    s.write_all(request.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse_http_response(&buf)
}

fn parse_http_response(raw: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))
        .context("HTTP response without a header/body separator")?;
    let status = head.lines().next().unwrap_or_default();
    let mut words = status.split_whitespace();
    let (Some(version), Some(code)) = (words.next(), words.next()) else {
        bail!("bad HTTP status line {status:?}");
    };
    if !version.starts_with("HTTP/") {
        bail!("bad HTTP status line {status:?}");
    }
    let code = code
        .parse()
        .with_context(|| format!("bad HTTP status line {status:?}"))?;
    Ok((code, body.to_string()))
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
    fn http_responses() {
        let r = b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n# HELP x\nemis_a 1\n";
        assert_eq!(
            parse_http_response(r).unwrap(),
            (200, "# HELP x\nemis_a 1\n".into())
        );
        assert_eq!(
            parse_http_response(b"HTTP/1.1 404 Not Found\r\n\r\n")
                .unwrap()
                .0,
            404
        );
        assert!(parse_http_response(b"garbage").is_err());
        assert!(parse_http_response(b"SSH-2.0 x\r\n\r\n").is_err());
    }

    #[test]
    fn http_get_against_a_local_server() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 512];
            while !req.ends_with(b"\r\n\r\n") {
                let n = c.read(&mut buf).unwrap();
                assert!(n > 0, "request cut short");
                req.extend_from_slice(&buf[..n]);
            }
            assert!(req.starts_with(b"GET /metrics HTTP/1.0\r\n"));
            c.write_all(b"HTTP/1.0 200 OK\r\n\r\nemis_up 1\n").unwrap();
        });
        let (code, body) = http_get(addr, "/metrics", Duration::from_secs(2)).unwrap();
        t.join().unwrap();
        assert_eq!((code, body.as_str()), (200, "emis_up 1\n"));
    }

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
