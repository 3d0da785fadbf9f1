//! The `emis` command line: its arguments and what each command calls. The daemon's
//! lifecycle lives in `emis::daemon`, the policy in `emis_policy`.

mod generate;
mod names;
mod watch;

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Args, CommandFactory as _, Parser, Subcommand};
use emis::daemon::{
    self,
    config::{Given, RunSettings},
    control::{self, Request},
    links::AttachMode,
    lock::ModeLock,
    pins::{PinnedMaps, Pins},
    state::State,
    status::Status,
    DEFAULT_STATE_DIR,
};
use emis::kernel_log::KernelLog;
use emis_policy::{
    compile::compile,
    explain::{explain, ExplainRequest},
    nft::{Family, NftOptions},
    policy::{Mode, Policy, Replies},
    spec::{load_policy, SiteOptions, Source},
};

#[derive(Parser)]
#[command(
    name = "emis",
    version,
    about = "XDP enforcer for the EMIS Web network requirements"
)]
struct Cli {
    /// How emis writes its own logs (stderr): text for people, json (one object a line)
    /// for a log collector.
    #[arg(long = "log-format", global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Load the policy into the kernel, attach to interfaces and serve metrics until stopped;
    /// the program stays attached when emis exits (`emis detach` removes it).
    Run(RunArgs),
    /// Make the running daemon re-read its spec, site and ip-ranges files (or config file)
    /// and swap the new policy in without a gap; prints what changed.
    Reload(StateDirArgs),
    /// Whether the daemon runs, where the program is attached, which policy and mode.
    Status(StatusArgs),
    /// Remove enforcement: detach from every interface, remove the pins and the state file.
    Detach(DetachArgs),
    /// Validate a spec and site, and summarise networks, prefixes and rules.
    Check(PolicyArgs),
    /// Show the verdict the policy gives one packet (the reference model the kernel must agree with).
    Explain(ExplainArgs),
    /// Show the counters of the attached program (also when the daemon is down).
    Stats(StatsArgs),
    /// Switch the attached program between enforce and audit without reloading it (the
    /// daemon need not run).
    Mode(ModeArgs),
    /// Print what the policy denies as it happens, one line an event (the daemon must run).
    Watch(watch::WatchArgs),
    /// Write the frames the policy denies to a pcap file (the daemon must run).
    Capture(watch::CaptureArgs),
    /// The busiest denied sources and destinations of the last minute (the daemon must run).
    Top(watch::TopArgs),
    /// The hostnames learned from DNS answers: addresses, rows, expiry (the daemon must run).
    Names(names::NamesArgs),
    /// Write the policy for another enforcer: `emis export nft` prints an nftables ruleset.
    #[command(subcommand)]
    Export(ExportCommand),
    /// Write man pages or shell completions made from this CLI (for packagers).
    #[command(subcommand, hide = true)]
    Generate(generate::GenerateCommand),
}

#[derive(Subcommand)]
enum ExportCommand {
    /// An nftables ruleset (named sets, counters per rule and deny reason) that decides as
    /// the XDP program does with stateless replies; load it with `nft -f FILE`.
    Nft {
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        nft: NftArgs,
    },
}

#[derive(Args, Clone)]
struct NftArgs {
    /// enforce drops what the policy denies; audit accepts it and counts it as would-deny.
    #[arg(long, value_parser = mode_parser(), default_value = "enforce")]
    mode: Mode,
    /// Name of the nftables table (replaced as a whole when the ruleset is loaded).
    #[arg(long, default_value = "emis")]
    table: String,
    /// inet: prerouting on every interface; netdev: ingress on the --iface devices.
    #[arg(long, value_parser = ["inet", "netdev"], default_value = "inet")]
    family: String,
    /// A device for the netdev ingress chain; repeatable; required with --family netdev.
    #[arg(long = "iface", value_name = "IF")]
    ifaces: Vec<String>,
}

impl NftArgs {
    fn options(&self) -> NftOptions {
        NftOptions {
            mode: self.mode,
            table: self.table.clone(),
            family: if self.family == "netdev" {
                Family::Netdev
            } else {
                Family::Inet
            },
            ifaces: self.ifaces.clone(),
        }
    }
}

/// clap's parser for a policy enum: the choices listed in `--help`, parsed by `FromStr`.
fn choice_parser<T>(names: [&'static str; 2]) -> impl clap::builder::TypedValueParser<Value = T>
where
    T: std::str::FromStr + Clone + Send + Sync + 'static,
    T::Err: std::fmt::Debug,
{
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(names)
        .map(|s| s.parse::<T>().expect("a listed choice parses"))
}

fn mode_parser() -> impl clap::builder::TypedValueParser<Value = Mode> {
    choice_parser(Mode::ALL.map(Mode::name))
}

fn attach_mode_parser() -> impl clap::builder::TypedValueParser<Value = AttachMode> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(AttachMode::ALL.map(AttachMode::name))
        .map(|s| s.parse::<AttachMode>().expect("a listed choice parses"))
}

fn replies_parser() -> impl clap::builder::TypedValueParser<Value = Replies> {
    choice_parser(Replies::ALL.map(Replies::name))
}

#[derive(Args, Clone)]
struct PolicyArgs {
    /// Spec file (TOML); the embedded EMIS Web spec when omitted.
    #[arg(long, value_name = "FILE")]
    spec: Option<PathBuf>,
    /// Site file (TOML) giving the addresses of the site roles.
    #[arg(long, value_name = "FILE")]
    site: Option<PathBuf>,
    /// Addresses of a site role, as ROLE=CIDR (lan, clinical-server, surgery, local-sites); repeatable.
    #[arg(long = "site-net", value_name = "ROLE=CIDR")]
    site_net: Vec<String>,
    /// Amazon's ip-ranges.json, to fill count-scope networks that name an aws_region.
    #[arg(long = "aws-ip-ranges", value_name = "FILE")]
    aws_ip_ranges: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// Daemon config file (TOML); flags given here override its keys.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Interface to attach to; repeat for each side of the gateway.
    #[arg(long = "iface", value_name = "IF")]
    ifaces: Vec<String>,
    /// enforce drops what the policy denies; audit passes it and counts it as would-deny [default: enforce].
    #[arg(long, value_parser = mode_parser())]
    mode: Option<Mode>,
    /// stateful allows replies of flows a rule allowed (tracked in a flow table); stateless
    /// recognises replies by ports and addresses alone, for asymmetric routing [default: stateful].
    #[arg(long, value_parser = replies_parser())]
    replies: Option<Replies>,
    /// Flows the flow table holds; the least recently used are evicted when it is full [default: 131072].
    #[arg(long = "flow-table-size")]
    flow_table_size: Option<u32>,
    /// auto tries native (driver) XDP and falls back to generic; native or skb force one [default: auto].
    #[arg(long = "xdp-mode", value_parser = attach_mode_parser())]
    xdp_mode: Option<AttachMode>,
    /// Address of the Prometheus endpoint (/metrics) [default: 127.0.0.1:9469].
    #[arg(long = "metrics-addr")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Attach to interfaces inside this named network namespace (ip netns); emis itself stays where it runs.
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// Where links, program and maps are pinned (bpffs) [default: /sys/fs/bpf/emis].
    #[arg(long = "pin-dir")]
    pin_dir: Option<PathBuf>,
    /// Where the state file, the lock and the control socket live [default: /run/emis].
    #[arg(long = "state-dir")]
    state_dir: Option<PathBuf>,
    /// Turn on the kernel's BPF run-time statistics while emis runs and export the
    /// program's run time and run count (costs every BPF program two clock reads a run).
    #[arg(long = "bpf-stats")]
    bpf_stats: bool,
    /// Drop events (what `emis watch` and `emis capture` see) each CPU may produce a
    /// second; the rest are counted in emis_events_suppressed_total [default: 1000].
    #[arg(long = "event-rate", value_name = "N")]
    event_rate: Option<u32>,
    /// Allowed packets produce events too, one in N chosen at random, as `1/N` (same
    /// rate limit; `emis watch --rule SLUG` shows a rule's).
    #[arg(long = "sample-allowed", value_name = "1/N", value_parser = daemon::config::parse_sample)]
    sample_allowed: Option<u32>,
    /// The kernel log: `debug` writes the program's trace of each allowed or denied
    /// packet (interface, addresses, protocol, rule or reason, action) to emis's log,
    /// beside the drop events (`emis watch` still sees them) [default: off].
    #[arg(long = "kernel-log", value_name = "LEVEL", value_parser = kernel_log_parser())]
    kernel_log: Option<KernelLog>,
    /// Trace only packets from or to this address or prefix (ADDR or ADDR/LEN)
    /// [default: every packet].
    #[arg(long = "kernel-log-match", value_name = "ADDR[/LEN]", value_parser = emis::kernel_log::parse_match)]
    kernel_log_match: Option<ipnet::IpNet>,
    /// Seconds a name learned from DNS is kept past its TTL (a client may connect just
    /// after the TTL ran out) [default: 120].
    #[arg(long = "dns-grace", value_name = "SECONDS")]
    dns_grace: Option<u64>,
    /// The shortest time a learned name is kept, whatever its TTL [default: 30].
    #[arg(long = "dns-ttl-floor", value_name = "SECONDS")]
    dns_ttl_floor: Option<u64>,
    /// The longest time a learned name is kept, whatever its TTL [default: 86400].
    #[arg(long = "dns-ttl-ceiling", value_name = "SECONDS")]
    dns_ttl_ceiling: Option<u64>,
    /// DNS responses each CPU hands to the daemon a second; the rest are counted in
    /// emis_dns_suppressed_total (0 stops learning) [default: 1000].
    #[arg(long = "dns-rate", value_name = "N")]
    dns_rate: Option<u32>,
}

fn kernel_log_parser() -> impl clap::builder::TypedValueParser<Value = KernelLog> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(KernelLog::ALL.map(KernelLog::name))
        .map(|s| s.parse::<KernelLog>().expect("a listed choice parses"))
}

impl RunArgs {
    fn given(self) -> Given {
        let policy = self.policy;
        Given {
            interfaces: (!self.ifaces.is_empty()).then_some(self.ifaces),
            spec: policy.spec,
            site: policy.site,
            site_nets: (!policy.site_net.is_empty()).then_some(policy.site_net),
            aws_ip_ranges: policy.aws_ip_ranges,
            mode: self.mode,
            replies: self.replies,
            flow_table_size: self.flow_table_size,
            metrics_addr: self.metrics_addr,
            xdp_mode: self.xdp_mode,
            netns: self.netns,
            pin_dir: self.pin_dir,
            state_dir: self.state_dir,
            event_rate: self.event_rate,
            sample_allowed: self.sample_allowed,
            bpf_stats: self.bpf_stats.then_some(true),
            kernel_log: self.kernel_log,
            kernel_log_match: self.kernel_log_match,
            dns_grace: self.dns_grace,
            dns_ttl_floor: self.dns_ttl_floor,
            dns_ttl_ceiling: self.dns_ttl_ceiling,
            dns_rate: self.dns_rate,
        }
    }
}

#[derive(Args)]
struct StateDirArgs {
    #[arg(long = "state-dir", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

#[derive(Args)]
struct StatusArgs {
    #[arg(long = "state-dir", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The pin dir to look in [default: the state file's, else /sys/fs/bpf/emis].
    #[arg(long = "pin-dir")]
    pin_dir: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DetachArgs {
    /// The pin dir to clear [default: the state file's, else /sys/fs/bpf/emis].
    #[arg(long = "pin-dir")]
    pin_dir: Option<PathBuf>,
    #[arg(long = "state-dir", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

#[derive(Args)]
struct ExplainArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    #[arg(long)]
    src: IpAddr,
    #[arg(long)]
    dst: IpAddr,
    /// tcp, udp or icmp.
    #[arg(long)]
    proto: String,
    #[arg(long, default_value_t = 40000)]
    sport: u16,
    #[arg(long, default_value_t = 0)]
    dport: u16,
    /// TCP flags, comma separated: syn, ack, fin, rst, psh.
    #[arg(long = "tcp-flags", default_value = "syn")]
    tcp_flags: String,
    /// The mode to report the action for.
    #[arg(long, value_parser = mode_parser(), default_value = "enforce")]
    mode: Mode,
    /// How replies are recognised; stateful judges the packet as the first of its flow.
    #[arg(long, value_parser = replies_parser(), default_value = "stateful")]
    replies: Replies,
    /// NAME=IP: the address was learned from a DNS answer for NAME (repeatable), as
    /// `emis run` learns it; `emis names` lists what the daemon learned.
    #[arg(long = "learned", value_parser = parse_learned)]
    learned: Vec<(String, IpAddr)>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn parse_learned(text: &str) -> Result<(String, IpAddr), String> {
    let (name, addr) = text.split_once('=').ok_or_else(|| {
        format!("{text:?}: use NAME=IP, e.g. openapi.emishealth.com=185.13.72.10")
    })?;
    let addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address (NAME=IP)"))?;
    Ok((name.to_string(), addr))
}

#[derive(Args)]
struct StatsArgs {
    #[arg(long = "state-dir", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ModeArgs {
    #[arg(value_parser = mode_parser())]
    mode: Mode,
    #[arg(long = "state-dir", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

fn init_logging(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EMIS_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.log_format;
    init_logging(log_format);
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Reload(args) => reload(&args),
        Command::Status(args) => status(&args),
        Command::Detach(args) => detach(&args),
        Command::Check(args) => check(&args),
        Command::Explain(args) => explain_cmd(&args),
        Command::Stats(args) => stats(&args),
        Command::Watch(args) => watch::watch(&args),
        Command::Capture(args) => watch::capture(&args),
        Command::Top(args) => watch::top(&args),
        Command::Names(args) => names::names(&args),
        Command::Mode(args) => mode(&args),
        Command::Export(ExportCommand::Nft { policy, nft }) => load(&policy).and_then(|p| {
            print!("{}", emis_policy::nft::ruleset(&p, &nft.options())?);
            Ok(())
        }),
        Command::Generate(what) => generate::run(what, Cli::command()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match log_format {
                LogFormat::Text => eprintln!("error: {e:#}"),
                // A collector reading JSON lines gets the reason a daemon stopped too.
                LogFormat::Json => tracing::error!("{e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn load(args: &PolicyArgs) -> Result<Policy> {
    let spec = match &args.spec {
        Some(path) => Source::read(path)?,
        None => Source::default_spec(),
    };
    let site = SiteOptions {
        site_file: args.site.as_deref().map(Source::read).transpose()?,
        site_nets: args.site_net.clone(),
        aws_ip_ranges: args
            .aws_ip_ranges
            .as_deref()
            .map(Source::stream)
            .transpose()?,
    };
    Ok(load_policy(&spec, &site)?)
}

fn check(args: &PolicyArgs) -> Result<()> {
    let policy = load(args)?;
    let compiled = compile(&policy)?;
    print!("{}", emis_policy::explain::summary(&policy, &compiled));
    Ok(())
}

fn explain_cmd(args: &ExplainArgs) -> Result<()> {
    let policy = load(&args.policy)?;
    let request = ExplainRequest {
        src: args.src,
        dst: args.dst,
        proto: args.proto.clone(),
        sport: args.sport,
        dport: args.dport,
        tcp_flags: args.tcp_flags.clone(),
        mode: args.mode,
        replies: args.replies,
        learned: args.learned.clone(),
    };
    let answer = explain(&policy, &request)?;
    if args.json {
        println!("{}", serde_json::to_string(&answer)?);
    } else {
        println!("{}", answer.sentence);
    }
    Ok(())
}

fn stats(args: &StatsArgs) -> Result<()> {
    let state = State::read(&args.state_dir)?;
    let maps = PinnedMaps::open(&Pins::new(&state.pin_dir))?;
    let snapshot = maps.snapshot()?;
    let mode = maps.mode()?;
    let report = snapshot.report(&state.labels);
    let flows = maps.flow_stats()?;
    if args.json {
        let value = serde_json::json!({
            "mode": mode.name(),
            "replies": state.replies.name(),
            "flows": flows,
            "spec_sha256": state.spec_sha256,
            "interfaces": state.interfaces,
            "rules": report.rules,
            "denied": report.denied,
            "passed": report.passed,
        });
        println!("{value}");
    } else {
        print!("{}", report.to_table(mode, &state.spec_sha256));
        println!(
            "\nFLOWS ({} replies)  {} of {} entries   created {}   expired {}   evicted {}   insert failures {}",
            state.replies.name(),
            flows.entries,
            flows.capacity,
            flows.created,
            flows.expired,
            flows.evicted,
            flows.insert_failures
        );
    }
    Ok(())
}

/// Writes the pinned config map directly (the daemon need not run), under the lock a
/// reload takes while it replaces that map.
fn mode(args: &ModeArgs) -> Result<()> {
    let pin_dir = State::read(&args.state_dir)?.pin_dir;
    let _lock = ModeLock::take(&args.state_dir)?;
    PinnedMaps::open(&Pins::new(pin_dir))?.set_mode(args.mode)?;
    println!("mode is now {}", args.mode.name());
    Ok(())
}

fn run(args: RunArgs) -> Result<()> {
    let config = args.config.clone();
    let settings = RunSettings::resolve(config.as_deref(), args.given())?;
    let metrics = emis::metrics::MetricsOptions {
        bpf_stats: settings.bpf_stats,
    };
    Ok(daemon::serve::run(settings, metrics)?)
}

fn reload(args: &StateDirArgs) -> Result<()> {
    let response = control::request(&args.state_dir, &Request::Reload)?;
    if response.ok {
        println!("{}", response.message);
        Ok(())
    } else {
        anyhow::bail!("{}", response.message)
    }
}

fn status(args: &StatusArgs) -> Result<()> {
    let status = Status::gather(&args.state_dir, args.pin_dir.as_deref());
    if args.json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        print!("{}", status.to_text());
    }
    Ok(())
}

fn detach(args: &DetachArgs) -> Result<()> {
    let done = daemon::detach::detach(args.pin_dir.as_deref(), &args.state_dir)?;
    println!("{}", done.to_text());
    Ok(())
}
