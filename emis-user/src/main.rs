//! The `emis` command: run the enforcer, check a spec, explain a verdict, read counters.

mod generate;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context as _, Result};
use clap::{Args, CommandFactory as _, Parser, Subcommand};
use emis::{
    loader::{self, AttachMode, LoadOptions},
    metrics::{self, EnforcerCollector},
    stats::{mode_of, Labels, Snapshot, State},
};
use emis_common::{MAP_CONFIG, MAP_FLOWS, MAP_FLOW_EVENTS, MAP_STATS};
use emis_policy::{
    compile::compile,
    explain::{explain, ExplainRequest},
    nft::{Family, NftOptions},
    policy::{Mode, Policy, Replies},
    spec::{load_policy, SiteOptions, Source},
};

/// The maps `emis run` pins for `emis stats` and `emis mode`.
const PINNED_MAPS: [&str; 4] = [MAP_STATS, MAP_CONFIG, MAP_FLOWS, MAP_FLOW_EVENTS];

#[derive(Parser)]
#[command(
    name = "emis",
    version,
    about = "XDP enforcer for the EMIS Web network requirements"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the policy into the kernel, attach to interfaces and serve metrics until stopped.
    Run(RunArgs),
    /// Validate a spec and site, and summarise networks, prefixes and rules.
    Check(PolicyArgs),
    /// Show the verdict the policy gives one packet (the reference model the kernel must agree with).
    Explain(ExplainArgs),
    /// Show the counters of the running enforcer.
    Stats(StatsArgs),
    /// Switch the running enforcer between enforce and audit without reloading it.
    Mode(ModeArgs),
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
    #[command(flatten)]
    policy: PolicyArgs,
    /// Interface to attach to; repeat for each side of the gateway.
    #[arg(long = "iface", required = true, value_name = "IF")]
    ifaces: Vec<String>,
    /// enforce drops what the policy denies; audit passes it and counts it as would-deny.
    #[arg(long, value_parser = mode_parser(), default_value = "enforce")]
    mode: Mode,
    /// stateful allows replies of flows a rule allowed (tracked in a flow table); stateless
    /// recognises replies by ports and addresses alone, for asymmetric routing.
    #[arg(long, value_parser = replies_parser(), default_value = "stateful")]
    replies: Replies,
    /// Flows the flow table holds; the least recently used are evicted when it is full.
    #[arg(long = "flow-table-size", default_value_t = emis_common::DEFAULT_FLOW_TABLE_SIZE)]
    flow_table_size: u32,
    /// auto tries native (driver) XDP and falls back to generic; native or skb force one.
    #[arg(long = "xdp-mode", value_enum, default_value = "auto")]
    xdp_mode: AttachMode,
    /// Address of the Prometheus endpoint (/metrics).
    #[arg(long = "metrics-addr", default_value = "127.0.0.1:9469")]
    metrics_addr: SocketAddr,
    /// Attach to interfaces inside this named network namespace (ip netns); emis itself stays where it runs.
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// Where the counter and config maps are pinned (bpffs).
    #[arg(long = "pin-dir", default_value = "/sys/fs/bpf/emis")]
    pin_dir: PathBuf,
    /// Where the state file for `emis stats` and `emis mode` is written.
    #[arg(long = "state-dir", default_value = "/run/emis")]
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
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct StatsArgs {
    #[arg(long = "state-dir", default_value = "/run/emis")]
    state_dir: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ModeArgs {
    #[arg(value_parser = mode_parser())]
    mode: Mode,
    #[arg(long = "state-dir", default_value = "/run/emis")]
    state_dir: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EMIS_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Check(args) => check(&args),
        Command::Explain(args) => explain_cmd(&args),
        Command::Stats(args) => stats(&args),
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
            eprintln!("error: {e:#}");
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
            .map(Source::read)
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
    let snapshot = Snapshot::read(&state.stats_map()?)?;
    let mode = mode_of(&state.config_map()?.get(&0, 0)?);
    let report = snapshot.report(&state.labels);
    let flows = state.flow_stats()?;
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

fn mode(args: &ModeArgs) -> Result<()> {
    let state = State::read(&args.state_dir)?;
    loader::set_mode(&mut state.config_map()?, args.mode)?;
    println!("mode is now {}", args.mode.name());
    Ok(())
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn run(args: RunArgs) -> Result<()> {
    let policy = load(&args.policy)?;
    let compiled = compile(&policy)?;
    for warning in &policy.warnings {
        tracing::warn!("{warning}");
    }
    if !policy.shadowed.is_empty() {
        tracing::info!(
            "{} rules match only packets an earlier rule matches and are counted under it (`emis check` lists them)",
            policy.shadowed.len()
        );
    }
    let unset: Vec<&str> = emis_policy::policy::Role::ALL
        .iter()
        .filter(|r| policy.role(**r).is_none())
        .map(|r| r.name())
        .collect();
    if !unset.is_empty() {
        tracing::info!(roles = %unset.join(", "), "unset site roles stand for any address outside the enforce-scope networks");
    }
    if let Ok(old) = State::read(&args.state_dir) {
        if old.pid != std::process::id() && pid_alive(old.pid) {
            bail!(
                "another emis (pid {}) is running with state dir {}; stop it or pass another --state-dir and --pin-dir",
                old.pid,
                args.state_dir.display()
            );
        }
    }
    let options = LoadOptions {
        mode: args.mode,
        replies: args.replies,
        flow_table_size: args.flow_table_size,
    };
    let mut ebpf = loader::load(&compiled, options)?;
    // Whatever happens from here on, leave no pins or state file behind.
    let _cleanup = Cleanup {
        pin_dir: args.pin_dir.clone(),
        state_dir: args.state_dir.clone(),
    };
    std::fs::create_dir_all(&args.pin_dir).with_context(|| {
        format!(
            "creating {} (is bpffs mounted? `mount -t bpf bpf /sys/fs/bpf`)",
            args.pin_dir.display()
        )
    })?;
    for name in PINNED_MAPS {
        let path = args.pin_dir.join(name);
        let _ = std::fs::remove_file(&path);
        ebpf.map(name)
            .context("map missing from the kernel object")?
            .pin(&path)
            .with_context(|| {
                format!(
                    "pinning {name} at {} (is {} on bpffs?)",
                    path.display(),
                    args.pin_dir.display()
                )
            })?;
    }
    let attached = loader::attach(
        &mut ebpf,
        &args.ifaces,
        args.xdp_mode,
        args.netns.as_deref(),
    )?;
    for (iface, how) in &attached {
        tracing::info!(%iface, mode = how, netns = args.netns.as_deref().unwrap_or("-"), "attached");
    }
    let state = State {
        pid: std::process::id(),
        pin_dir: args.pin_dir.clone(),
        spec_sha256: policy.sha256.clone(),
        interfaces: args.ifaces.clone(),
        labels: Labels::of(&policy),
        replies: args.replies,
        flow_table_size: args.flow_table_size,
    };
    state.write(&args.state_dir)?;
    tracing::info!(
        rules = policy.rules.len(),
        v4_prefixes = compiled.v4.len(),
        v6_prefixes = compiled.v6.len(),
        mode = args.mode.name(),
        replies = args.replies.name(),
        flow_table_size = args.flow_table_size,
        spec_sha256 = %policy.sha256,
        "policy loaded"
    );
    let result = serve_until_signal(&args, &state, &policy);
    drop(ebpf);
    tracing::info!("detached");
    result
}

/// Removes the pins and the state file of this run when it ends, however it ends.
struct Cleanup {
    pin_dir: PathBuf,
    state_dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.state_dir.join(emis::stats::STATE_FILE));
        for name in PINNED_MAPS {
            let _ = std::fs::remove_file(self.pin_dir.join(name));
        }
        // Only succeeds when empty, so a shared directory is left alone.
        let _ = std::fs::remove_dir(&self.pin_dir);
    }
}

fn serve_until_signal(args: &RunArgs, state: &State, policy: &Policy) -> Result<()> {
    let collector = EnforcerCollector {
        stats: Mutex::new(state.stats_map()?),
        config: Mutex::new(state.config_map()?),
        flows: Mutex::new((state.flows_map()?, state.flow_events_map()?)),
        flow_table_size: state.flow_table_size,
        labels: Labels::of(policy),
        spec_sha256: policy.sha256.clone(),
    };
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(collector));
    let registry = Arc::new(registry);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = metrics::bind(args.metrics_addr).await?;
        tracing::info!("metrics on http://{}/metrics", listener.local_addr()?);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            served = metrics::serve(listener, registry) => served,
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: detaching"); Ok(()) }
            _ = term.recv() => { tracing::info!("SIGTERM: detaching"); Ok(()) }
        }
    })
}
