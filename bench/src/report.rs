//! What the benchmark found: the JSON report, the table on stdout and the targets.

use std::fmt::Write as _;

use serde::Serialize;

use crate::cost::ClassCost;
use crate::loadchild::LoadStats;
use crate::veth::Sample;

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            cpu_model,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            kernel,
        }
    }
}

/// The verifier's and the JIT's view of one program of the enforcer.
#[derive(Clone, Debug, Serialize)]
pub struct ProgramRow {
    pub program: String,
    /// The verifier log's "processed N insns".
    pub verified_insns: u32,
    pub verifier_budget_share: f64,
    pub xlated_insns: u32,
    pub jited_bytes: u32,
}

impl From<emis_testkit::ProgramStats> for ProgramRow {
    fn from(s: emis_testkit::ProgramStats) -> Self {
        ProgramRow {
            verifier_budget_share: s.verified_insns as f64 / emis_testkit::VERIFIER_BUDGET as f64,
            program: s.program,
            verified_insns: s.verified_insns,
            xlated_insns: s.xlated_insns,
            jited_bytes: s.jited_bytes,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Scale {
    pub prefixes: usize,
    pub load: LoadStats,
    pub cost: Vec<ClassCost>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub contender: String,
    /// A short label for the chart.
    pub short: String,
    pub median_pps: f64,
    pub ratio_to_noop: f64,
    /// Runs in which gw-site's ring overflowed (the receiver, not the generator, was the limit).
    pub runs_receiver_bound: usize,
    pub samples: Vec<Sample>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub wanted: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub quick: bool,
    pub machine: Machine,
    pub settings: Settings,
    pub programs: Vec<ProgramRow>,
    pub cost: Vec<ClassCost>,
    pub scaling: Vec<Scale>,
    pub throughput: Vec<Throughput>,
    pub reload: Vec<crate::reload::ReloadRow>,
    pub targets: Vec<Target>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub cost_repeat: u32,
    pub cost_reps: usize,
    pub scaling_sizes: Vec<usize>,
    pub throughput_seconds: f64,
    pub throughput_rounds: usize,
    pub generator_cpu: usize,
    pub frame_bytes: usize,
}

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Report {
    /// The tables, as printed on stdout and pasted into docs/BENCHMARKS.md.
    pub fn table(&self) -> String {
        let mut s = String::new();
        self.machine_line(&mut s);
        let _ = writeln!(s);
        self.program_table(&mut s);
        let _ = writeln!(s);
        self.cost_table(&mut s);
        let _ = writeln!(s);
        self.scaling_table(&mut s);
        let _ = writeln!(s);
        self.load_table(&mut s);
        let _ = writeln!(s);
        self.throughput_table(&mut s);
        let _ = writeln!(s);
        self.reload_table(&mut s);
        let _ = writeln!(s);
        self.targets_list(&mut s);
        s
    }

    /// The machine, the programs and the per-packet cost (`emis-bench cost`).
    pub fn cost_only_table(&self) -> String {
        let mut s = String::new();
        self.machine_line(&mut s);
        self.program_table(&mut s);
        self.cost_table(&mut s);
        s
    }

    /// The machine and the reload step (`emis-bench reload`).
    pub fn reload_only_table(&self) -> String {
        let mut s = String::new();
        self.machine_line(&mut s);
        self.reload_table(&mut s);
        s
    }

    fn machine_line(&self, w: &mut String) {
        let _ = writeln!(
            w,
            "Machine: {}, {} cores, kernel {}{}",
            self.machine.cpu_model,
            self.machine.cores,
            self.machine.kernel,
            if self.quick { " (--quick)" } else { "" }
        );
    }

    /// What the verifier and the JIT made of each program.
    fn program_table(&self, w: &mut String) {
        let _ = writeln!(
            w,
            "Programs: the verifier's work (of its 1,000,000) and the JIT's output"
        );
        let _ = writeln!(
            w,
            "| program | processed insns | of budget | insns after rewrites | JIT bytes |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|");
        for p in &self.programs {
            let _ = writeln!(
                w,
                "| {} | {} | {:.1}% | {} | {} |",
                p.program,
                thousands(p.verified_insns as usize),
                p.verifier_budget_share * 100.0,
                thousands(p.xlated_insns as usize),
                thousands(p.jited_bytes as usize)
            );
        }
    }

    /// Per-packet cost of each class on the three programs.
    fn cost_table(&self, w: &mut String) {
        let _ = writeln!(
            w,
            "Per-packet cost, BPF_PROG_TEST_RUN, median of {} x {} runs (ns; ratio to no-op)",
            self.settings.cost_reps, self.settings.cost_repeat
        );
        let _ = writeln!(
            w,
            "| class | no-op | parse only | parse + flow lookup | emis | parse/no-op | flow lookup/no-op | emis/no-op |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for c in &self.cost {
            let _ = writeln!(
                w,
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}x | {:.2}x | {:.2}x |",
                c.class,
                c.noop_ns,
                c.parse_ns,
                c.flow_lookup_ns,
                c.emis_ns,
                c.parse_ratio,
                c.flow_lookup_ratio,
                c.emis_ratio
            );
        }
    }

    /// The enforcer's cost per class at each number of extra prefixes.
    fn scaling_table(&self, w: &mut String) {
        let _ = writeln!(
            w,
            "Scaling: extra prefixes in the count-scope `aws` network (synthetic, Amazon-shaped)"
        );
        let mut header = String::from("| class |");
        let mut rule = String::from("|---|");
        for sc in &self.scaling {
            let _ = write!(header, " {} |", thousands(sc.prefixes));
            rule.push_str("---:|");
        }
        header.push_str(" largest/smallest |");
        rule.push_str("---:|");
        let _ = writeln!(w, "emis ns per packet (median)");
        let _ = writeln!(w, "{header}");
        let _ = writeln!(w, "{rule}");
        if let Some(first) = self.scaling.first() {
            for (i, c) in first.cost.iter().enumerate() {
                let mut line = format!("| {} |", c.class);
                for sc in &self.scaling {
                    let _ = write!(line, " {:.0} |", sc.cost[i].emis_ns);
                }
                let last = &self.scaling.last().unwrap().cost[i];
                let _ = write!(line, " {:.2}x |", last.emis_ns / c.emis_ns);
                let _ = writeln!(w, "{line}");
            }
        }
    }

    /// Time and memory of compiling and loading each size.
    fn load_table(&self, w: &mut String) {
        let _ = writeln!(
            w,
            "| prefixes | file | trie entries v4+v6 | read | policy | compile | load (verifier + maps) | total | peak RSS |"
        );
        let _ = writeln!(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for sc in &self.scaling {
            let l = &sc.load;
            let _ = writeln!(
                w,
                "| {} | {:.1} MB | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.2} s | {:.1} MB |",
                thousands(sc.prefixes),
                l.file_bytes as f64 / 1e6,
                thousands(l.v4_entries + l.v6_entries),
                l.read_ms,
                l.policy_ms,
                l.compile_ms,
                l.load_ms,
                l.total_ms / 1e3,
                l.peak_rss_kib as f64 / 1024.0
            );
        }
    }

    /// Median throughput of each contender on veth.
    fn throughput_table(&self, w: &mut String) {
        let _ = writeln!(
            w,
            "Throughput on veth: 60-byte frames, 1 generator thread, median of {} alternated runs of {:.0} s",
            self.settings.throughput_rounds, self.settings.throughput_seconds
        );
        let _ = writeln!(
            w,
            "| receiver (gw-site) runs | median Mpps | ratio to no-op | runs where the receiver was the limit |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|");
        for t in &self.throughput {
            let _ = writeln!(
                w,
                "| {} | {:.3} | {:.2} | {}/{} |",
                t.contender,
                t.median_pps / 1e6,
                t.ratio_to_noop,
                t.runs_receiver_bound,
                t.samples.len()
            );
        }
    }

    /// MET or MISSED for each target of the issue.
    /// The daemon's start and reloads at each policy size.
    fn reload_table(&self, w: &mut String) {
        let _ = writeln!(
            w,
            "Reload: the daemon's start and reloads on a namespace gateway (ms; medians of the reloads)"
        );
        let _ = writeln!(
            w,
            "| count-scope prefixes | start | reload | swap | reloads | swaps |"
        );
        let _ = writeln!(w, "|---:|---:|---:|---:|---|---|");
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for r in &self.reload {
            let _ = writeln!(
                w,
                "| {} | {:.0} | {:.0} | {:.2} | {} | {} |",
                if r.prefixes == 0 {
                    "embedded spec".to_string()
                } else {
                    thousands(r.prefixes)
                },
                r.start_ms,
                r.reload_ms,
                r.swap_ms,
                list(&r.reloads_ms),
                list(&r.swaps_ms)
            );
        }
    }

    fn targets_list(&self, w: &mut String) {
        let _ = writeln!(w, "Targets");
        for t in &self.targets {
            let _ = writeln!(
                w,
                "  {:7} {}: wanted {}, measured {}",
                if t.met { "MET" } else { "MISSED" },
                t.name,
                t.wanted,
                t.measured
            );
        }
    }
}
