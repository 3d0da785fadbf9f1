//! `emis-bench`: the benchmark lab behind `cargo xtask bench` (docs/BENCHMARKS.md).
//!
//! 1. Per-packet cost with BPF_PROG_TEST_RUN: a no-op, a parse-only and the full
//!    enforcer, side by side, for each packet class.
//! 2. Scaling: the same with 10 to 1,000,000 extra count-scope prefixes, and the time
//!    and peak memory of compiling and loading each size (in a child process).
//! 3. Throughput on veth: a live-frames generator into a namespace gateway running, in
//!    turn, a no-op XDP_DROP, emis (drop and pass), xdp-filter and nftables.
//! 4. Reload: the daemon's start and reload on a namespace gateway, with the embedded
//!    spec and with the largest prefix list of step 2.
//!
//! Prints a table, writes `bench.json` and `bench.svg` under `--out`, and says MET or
//! MISSED for each target of issue 4. A missed target does not fail the run; a
//! measurement that cannot be made does.

mod chart;
mod cost;
mod egress;
mod history;
mod loadchild;
mod reload;
mod report;
mod synth;
mod targets;
mod veth;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use emis_policy::{policy::Policy, spec::Source};
use emis_testkit::BenchPrograms;
use indicatif::{ProgressBar, ProgressStyle};

use cost::ClassCost;
use report::{median, Machine, ProgramRow, Report, Scale, Settings, Throughput};
use veth::Contender;

#[derive(Parser)]
#[command(
    name = "emis-bench",
    about = "The emis benchmark lab: per-packet cost, scaling and veth throughput (needs root)"
)]
struct Cli {
    /// A short run for CI: up to 10,000 prefixes, 1 s per throughput run, 2 rounds.
    #[arg(long)]
    quick: bool,
    /// Where bench.json and bench.svg go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// The CPU the generator thread runs on.
    #[arg(long, default_value_t = 0)]
    generator_cpu: usize,
    #[command(subcommand)]
    child: Option<Child>,
}

#[derive(Subcommand)]
// `load-child` names the process it runs as; the command line is the interface.
#[allow(clippy::enum_variant_names)]
enum Child {
    /// (internal) Compile and load the policy with this ip-ranges.json; print time and memory.
    #[command(hide = true)]
    LoadChild { ip_ranges: PathBuf },
    /// Only the TC egress program's per-packet cost (egress-cost.json).
    EgressCost,
    /// Only step 1, the per-packet cost of each class (printed, nothing written): for
    /// measuring one change to the kernel program in a minute. `--quick` takes fewer runs.
    Cost,
    /// Only step 4, the daemon's start and reloads (printed, nothing written).
    Reload,
    /// (internal) Write the synthetic ip-ranges.json of `size` prefixes the scaling step uses.
    #[command(hide = true)]
    Synth { size: usize, out: PathBuf },
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.child {
        Some(Child::LoadChild { ip_ranges }) => loadchild::child(ip_ranges),
        Some(Child::EgressCost) => egress_only(&cli),
        Some(Child::Cost) => cost_only(&cli),
        Some(Child::Reload) => reload_only(&cli),
        Some(Child::Synth { size, out }) => {
            std::fs::write(out, synth::Synthetic::new(*size).to_json()).map_err(Into::into)
        }
        None => run(&cli),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .unwrap()
            .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

fn step(title: &str) {
    eprintln!("==> {title}");
}

fn run(cli: &Cli) -> Result<()> {
    emis_lab::require_root("the benchmark loads XDP programs and creates network namespaces")?;
    let settings = settings(cli);
    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    let machine = Machine::read();
    eprintln!(
        "emis benchmark on {} ({} cores, kernel {}){}",
        machine.cpu_model,
        machine.cores,
        machine.kernel,
        if cli.quick { ", --quick" } else { "" }
    );

    let mut programs = BenchPrograms::load()?;
    let policy = cost::policy(None)?;
    let classes = cost::classes();
    let (cost, program_rows) = per_packet_cost(&programs, &policy, &classes, &settings)?;
    egress_cost(&programs, &policy, &settings, &cli.out)?;
    let scaling = scaling(&programs, &classes, &settings)?;
    let samples = throughput_samples(&mut programs, &policy, &settings, cli.quick)?;
    let reload = reload_step(&settings)?;

    let mut report = Report {
        quick: cli.quick,
        machine,
        settings,
        programs: program_rows,
        cost,
        scaling,
        throughput: throughput(&samples),
        reload,
        targets: Vec::new(),
    };
    report.targets = targets::targets(&report);
    write_report(&report, &cli.out)?;
    // The quick run is CI's: its numbers are too short to compare, and appending would
    // leave the committed file modified after every test run.
    if cli.quick {
        return Ok(());
    }
    history::append(&report, Path::new(history::HISTORY))
}

/// `emis-bench egress-cost`: the egress program's step alone.
fn egress_only(cli: &Cli) -> Result<()> {
    emis_lab::require_root("the benchmark loads BPF programs")?;
    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    let machine = Machine::read();
    eprintln!(
        "emis egress cost on {} (kernel {})",
        machine.cpu_model, machine.kernel
    );
    let programs = BenchPrograms::load()?;
    egress_cost(&programs, &cost::policy(None)?, &settings(cli), &cli.out)
}

/// `emis-bench cost`: step 1 alone, printed.
fn cost_only(cli: &Cli) -> Result<()> {
    emis_lab::require_root("the benchmark loads XDP programs")?;
    let settings = settings(cli);
    let programs = BenchPrograms::load()?;
    let policy = cost::policy(None)?;
    let (cost, program_rows) = per_packet_cost(&programs, &policy, &cost::classes(), &settings)?;
    let report = Report {
        quick: cli.quick,
        machine: Machine::read(),
        settings,
        programs: program_rows,
        cost,
        scaling: Vec::new(),
        throughput: Vec::new(),
        reload: Vec::new(),
        targets: Vec::new(),
    };
    print!("{}", report.cost_only_table());
    Ok(())
}

/// `emis-bench reload`: step 4 alone, printed.
fn reload_only(cli: &Cli) -> Result<()> {
    emis_lab::require_root("the benchmark attaches XDP programs in network namespaces")?;
    let settings = settings(cli);
    let report = Report {
        quick: cli.quick,
        machine: Machine::read(),
        reload: reload_step(&settings)?,
        settings,
        programs: Vec::new(),
        cost: Vec::new(),
        scaling: Vec::new(),
        throughput: Vec::new(),
        targets: Vec::new(),
    };
    print!("{}", report.reload_only_table());
    Ok(())
}

/// How long and how often each step measures: the full run, or the short one CI makes.
fn settings(cli: &Cli) -> Settings {
    let quick = cli.quick;
    Settings {
        cost_repeat: if quick { 100_000 } else { 1_000_000 },
        cost_reps: if quick { 3 } else { 7 },
        scaling_sizes: if quick {
            vec![10, 1_000, 10_000]
        } else {
            vec![10, 1_000, 100_000, 1_000_000]
        },
        throughput_seconds: if quick { 1.0 } else { 3.0 },
        throughput_rounds: if quick { 2 } else { 5 },
        generator_cpu: cli.generator_cpu,
        frame_bytes: 60,
    }
}

/// Step 1, per-packet cost with the embedded spec.
fn per_packet_cost(
    programs: &BenchPrograms,
    policy: &Policy,
    classes: &[cost::Class],
    settings: &Settings,
) -> Result<(Vec<ClassCost>, Vec<ProgramRow>)> {
    step("per-packet cost (BPF_PROG_TEST_RUN): no-op, parse-only and emis side by side");
    let mut enforcer = cost::load_enforcer(policy)?;
    let program_rows = enforcer
        .program_stats()?
        .into_iter()
        .map(ProgramRow::from)
        .collect();
    let pb = bar((classes.len() * settings.cost_reps) as u64, "cost");
    let rows = cost::measure(
        programs,
        &mut enforcer,
        classes,
        settings.cost_reps,
        settings.cost_repeat,
        || pb.inc(1),
    )?;
    pb.finish_and_clear();
    Ok((rows, program_rows))
}

/// Step 1b, the TC egress program against a no-op TC program.
fn egress_cost(
    programs: &BenchPrograms,
    policy: &Policy,
    settings: &Settings,
    out: &Path,
) -> Result<()> {
    step("egress program cost (BPF_PROG_TEST_RUN): no-op TC and emis_egress side by side");
    let rows = egress::measure(programs, policy, settings.cost_reps, settings.cost_repeat)?;
    egress::report(&rows, out)
}

/// Step 2, scaling: each size of synthetic ip-ranges.json is compiled and loaded in a
/// child process, then the classes are measured against the grown tries.
fn scaling(
    programs: &BenchPrograms,
    classes: &[cost::Class],
    settings: &Settings,
) -> Result<Vec<Scale>> {
    step("scaling: extra count-scope prefixes, compile+load in a child, cost in the same run as the no-op");
    let tmp = std::env::temp_dir().join(format!("emisbench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let mut scaling = Vec::new();
    let pb = bar(settings.scaling_sizes.len() as u64, "scaling");
    let scale_result: Result<()> = (|| {
        for &size in &settings.scaling_sizes {
            pb.set_message(format!("{size} prefixes"));
            scaling.push(scale(programs, classes, settings, &tmp, size)?);
            pb.inc(1);
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    scale_result?;
    pb.finish_and_clear();
    Ok(scaling)
}

/// One size of the scaling step; its ip-ranges.json goes in `tmp` and is removed again.
fn scale(
    programs: &BenchPrograms,
    classes: &[cost::Class],
    settings: &Settings,
    tmp: &Path,
    size: usize,
) -> Result<Scale> {
    let synthetic = synth::Synthetic::new(size);
    let path = tmp.join(format!("ip-ranges-{size}.json"));
    let json = synthetic.to_json();
    std::fs::write(&path, &json)?;
    let load = loadchild::measure(&path)?;
    let policy = cost::policy(Some(Source::new(path.display().to_string(), json)))?;
    let mut enforcer = cost::load_enforcer(&policy)?;
    drop(policy);
    let mut scale_classes = classes.to_vec();
    scale_classes.push(cost::aws_class(synthetic.v4_inside()));
    let rows = cost::measure(
        programs,
        &mut enforcer,
        &scale_classes,
        settings.cost_reps,
        settings.cost_repeat,
        || {},
    )?;
    std::fs::remove_file(&path)?;
    Ok(Scale {
        prefixes: size,
        load,
        cost: rows,
    })
}

/// Step 3, throughput: every contender in turn, round after round, on the lab's gateway.
fn throughput_samples(
    programs: &mut BenchPrograms,
    policy: &Policy,
    settings: &Settings,
    quick: bool,
) -> Result<Vec<veth::Sample>> {
    step("throughput on veth: live-frames generator into the gateway, contenders alternated");
    let mut samples = Vec::new();
    let mut bench = veth::Bench::new(programs, policy, settings.generator_cpu)?;
    let total = (settings.throughput_rounds * Contender::ALL.len()) as u64;
    let pb = bar(total, "throughput");
    let warmup = Duration::from_millis(if quick { 200 } else { 500 });
    let duration = Duration::from_secs_f64(settings.throughput_seconds);
    let runs: Result<()> = (|| {
        for round in 0..settings.throughput_rounds {
            for contender in Contender::ALL {
                pb.set_message(contender.name());
                let sample = bench
                    .run(contender, round, warmup, duration)
                    .with_context(|| format!("throughput run: {}", contender.name()))?;
                check_own_count(&sample)?;
                samples.push(sample);
                pb.inc(1);
            }
        }
        Ok(())
    })();
    pb.finish_and_clear();
    let finished = bench.finish();
    runs?;
    finished?;
    Ok(samples)
}

/// Step 4, reload: the embedded spec, then the largest size of step 2.
fn reload_step(settings: &Settings) -> Result<Vec<reload::ReloadRow>> {
    step("reload: the daemon's start and reload on a namespace gateway");
    let tmp = std::env::temp_dir().join(format!("emisbench-reload-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let largest = settings.scaling_sizes.iter().copied().max().unwrap_or(0);
    let result = (|| -> Result<Vec<reload::ReloadRow>> {
        let mut rows = vec![reload::measure(0, None, &tmp)?];
        if largest > 0 {
            let path = tmp.join(format!("ip-ranges-{largest}.json"));
            std::fs::write(&path, synth::Synthetic::new(largest).to_json())?;
            rows.push(reload::measure(largest, Some(&path), &tmp)?);
        }
        Ok(rows)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Each contender's median, and its ratio to the no-op's.
fn throughput(samples: &[veth::Sample]) -> Vec<Throughput> {
    let noop_median = median(
        &samples
            .iter()
            .filter(|s| s.contender == Contender::NoopDrop)
            .map(|s| s.pps)
            .collect::<Vec<_>>(),
    );
    Contender::ALL
        .iter()
        .map(|&c| {
            let mine: Vec<_> = samples
                .iter()
                .filter(|s| s.contender == c)
                .cloned()
                .collect();
            let m = median(&mine.iter().map(|s| s.pps).collect::<Vec<_>>());
            Throughput {
                contender: c.name().to_string(),
                short: short_name(c).to_string(),
                median_pps: m,
                ratio_to_noop: m / noop_median,
                runs_receiver_bound: mine.iter().filter(|s| s.rx_dropped > 0).count(),
                samples: mine,
            }
        })
        .collect()
}

/// bench.json and bench.svg under `out`, and the tables on stdout.
fn write_report(report: &Report, out: &Path) -> Result<()> {
    let json_path = out.join("bench.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let svg_path = out.join("bench.svg");
    chart::draw(report, &svg_path)?;
    println!("{}", report.table());
    println!("Wrote {} and {}", json_path.display(), svg_path.display());
    Ok(())
}

fn short_name(c: Contender) -> &'static str {
    match c {
        Contender::NoopDrop => "no-op drop",
        Contender::NoopPass => "no-op pass",
        Contender::EmisDrop => "emis drop",
        Contender::EmisPass => "emis pass",
        Contender::XdpFilterDrop => "xdp-filter drop",
        Contender::NftDrop => "nft drop",
        Contender::NftPass => "nft pass",
    }
}

/// A contender's own count must agree with the receiver's: otherwise the run measured
/// something else than it claims (frames that never reached the contender, say).
fn check_own_count(sample: &veth::Sample) -> Result<()> {
    if let Some(own) = sample.own_count {
        let rx = sample.rx_packets as f64;
        let diff = (own as f64 - rx).abs() / rx;
        // The two reads are microseconds apart, nft's counters a fork apart, and a loaded
        // machine can stretch a fork: 5% slack still catches frames that missed the contender.
        if diff > 0.05 {
            bail!(
                "{}: the contender counted {own} packets but gw-site received {}: the counts \
                 must agree",
                sample.contender.name(),
                sample.rx_packets
            );
        }
    }
    Ok(())
}
