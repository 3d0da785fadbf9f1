//! The targets for the benchmark, each MET or MISSED from a finished report.

use crate::cost;
use crate::report::{Report, Target, Throughput};
use crate::veth::Contender;

fn find(report: &Report, c: Contender) -> &Throughput {
    let name = c.name();
    report
        .throughput
        .iter()
        .find(|t| t.contender == name)
        .expect("every contender ran")
}

/// Every target: the throughput ones, then the scaling ones if scaling ran.
pub fn targets(report: &Report) -> Vec<Target> {
    let mut out = verifier_targets(report);
    out.extend(cost_targets(report));
    out.extend(throughput_targets(report));
    out.extend(scaling_targets(report));
    out.extend(reload_targets(report));
    out
}

/// Issue 10's reload targets: the embedded spec's swap well under 50 ms; the largest
/// prefix list's whole reload under 5 s.
fn reload_targets(report: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    if let Some(r) = report.reload.iter().find(|r| r.prefixes == 0) {
        out.push(Target {
            name: "reload swap, embedded spec".into(),
            wanted: "< 50 ms".into(),
            measured: format!("{:.2} ms (reload {:.0} ms)", r.swap_ms, r.reload_ms),
            met: r.swap_ms < 50.0,
        });
    }
    if let Some(r) = report
        .reload
        .iter()
        .filter(|r| r.prefixes > 0)
        .max_by_key(|r| r.prefixes)
    {
        out.push(Target {
            name: format!("reload at {} count-scope prefixes", r.prefixes),
            wanted: "< 5 s".into(),
            measured: format!("{:.2} s (swap {:.2} ms)", r.reload_ms / 1000.0, r.swap_ms),
            met: r.reload_ms < 5000.0,
        });
    }
    out
}

/// Headroom for later features on the per-packet path: half the verifier's budget.
fn verifier_targets(report: &Report) -> Vec<Target> {
    report
        .programs
        .iter()
        .map(|p| Target {
            name: format!("verifier's processed instructions, {}", p.program),
            wanted: "<= 50% of 1,000,000".into(),
            measured: format!(
                "{} ({:.1}%)",
                p.verified_insns,
                p.verifier_budget_share * 100.0
            ),
            met: p.verifier_budget_share <= 0.5,
        })
        .collect()
}

/// Each class's cost against the no-op run beside it; the drop path has a tighter bound.
fn cost_targets(report: &Report) -> Vec<Target> {
    let worst = report
        .cost
        .iter()
        .filter(|c| c.class != cost::DENIED_CLASS)
        .fold(None::<&crate::cost::ClassCost>, |acc, c| match acc {
            Some(a) if a.emis_ratio >= c.emis_ratio => Some(a),
            _ => Some(c),
        });
    let mut out = Vec::new();
    if let Some(w) = worst {
        out.push(Target {
            name: "per-packet cost, every class vs the no-op".into(),
            wanted: "<= 3.0x".into(),
            measured: format!("worst {:.2}x ({})", w.emis_ratio, w.class),
            met: w.emis_ratio <= 3.0,
        });
    }
    if let Some(d) = report.cost.iter().find(|c| c.class == cost::DENIED_CLASS) {
        out.push(Target {
            name: "per-packet cost of the drop path vs the no-op".into(),
            wanted: "<= 2.5x".into(),
            measured: format!(
                "{:.2}x ({:.0} vs {:.0} ns)",
                d.emis_ratio, d.emis_ns, d.noop_ns
            ),
            met: d.emis_ratio <= 2.5,
        });
    }
    out
}

/// Drop-path throughput against the no-op limit and against nftables.
fn throughput_targets(report: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    let noop = find(report, Contender::NoopDrop);
    let emis = find(report, Contender::EmisDrop);
    let nft = find(report, Contender::NftDrop);
    out.push(Target {
        name: "drop-path throughput vs the no-op XDP_DROP limit".into(),
        wanted: ">= 90%".into(),
        measured: format!(
            "{:.1}% ({:.3} vs {:.3} Mpps)",
            emis.ratio_to_noop * 100.0,
            emis.median_pps / 1e6,
            noop.median_pps / 1e6
        ),
        met: emis.ratio_to_noop >= 0.9,
    });
    let noop_pass = find(report, Contender::NoopPass);
    let emis_pass = find(report, Contender::EmisPass);
    let pass_ratio = emis_pass.median_pps / noop_pass.median_pps;
    out.push(Target {
        name: "pass-path throughput vs a no-op XDP_PASS on the same route".into(),
        wanted: ">= 90%".into(),
        measured: format!(
            "{:.1}% ({:.3} vs {:.3} Mpps)",
            pass_ratio * 100.0,
            emis_pass.median_pps / 1e6,
            noop_pass.median_pps / 1e6
        ),
        met: pass_ratio >= 0.9,
    });
    let vs_nft = emis.median_pps / nft.median_pps;
    out.push(Target {
        name: "drop-path throughput vs the nftables ruleset".into(),
        wanted: ">= 2x".into(),
        measured: format!(
            "{vs_nft:.2}x ({:.3} vs {:.3} Mpps)",
            emis.median_pps / 1e6,
            nft.median_pps / 1e6
        ),
        met: vs_nft >= 2.0,
    });
    out
}

/// Per-packet cost, load time and memory at the largest size against the smallest.
fn scaling_targets(report: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    if let (Some(first), Some(last)) = (report.scaling.first(), report.scaling.last()) {
        let ratios = first
            .cost
            .iter()
            .zip(&last.cost)
            .map(|(a, b)| (a.class.clone(), b.emis_ns / a.emis_ns));
        // The target is about the six packet classes; the packet into the
        // count-scope prefixes themselves walks the grown trie by design, and is shown apart.
        let (worst_class, worst) = ratios
            .clone()
            .filter(|(class, _)| class != cost::AWS_CLASS)
            .fold(
                (String::new(), 0.0f64),
                |acc, x| if x.1 > acc.1 { x } else { acc },
            );
        let aws_ratio = ratios
            .filter(|(class, _)| class == cost::AWS_CLASS)
            .map(|(_, ratio)| ratio)
            .next();
        let aws = aws_ratio
            .map(|ratio| format!("; a packet into the aws prefixes themselves: {ratio:.2}x"))
            .unwrap_or_default();
        out.push(Target {
            name: format!(
                "per-packet cost at {} prefixes vs {}",
                last.prefixes, first.prefixes
            ),
            wanted: "<= 1.1x (each packet class)".into(),
            measured: format!("worst {worst:.2}x ({worst_class}){aws}"),
            met: worst <= 1.1,
        });
        if let Some(ratio) = aws_ratio {
            out.push(Target {
                name: format!(
                    "per-packet cost of a packet into the {} prefixes vs into {}",
                    last.prefixes, first.prefixes
                ),
                wanted: "<= 1.1x".into(),
                measured: format!("{ratio:.2}x"),
                met: ratio <= 1.1,
            });
        }
        out.push(Target {
            name: format!("compile+load time at {} prefixes", last.prefixes),
            wanted: "< 5 s".into(),
            measured: format!("{:.2} s", last.load.total_ms / 1e3),
            met: last.load.total_ms < 5000.0,
        });
        out.push(Target {
            name: format!(
                "loader peak RSS at {} prefixes (kernel maps excluded)",
                last.prefixes
            ),
            wanted: "< 50 MB".into(),
            measured: format!("{:.1} MB", last.load.peak_rss_kib as f64 / 1024.0),
            met: (last.load.peak_rss_kib as f64 / 1024.0) < 50.0,
        });
    }
    out
}
