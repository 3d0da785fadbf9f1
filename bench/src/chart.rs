//! The SVG chart: per-packet cost by class, cost against prefix count, and throughput by
//! contender.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::report::Report;

const COLORS: [RGBColor; 7] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0xe1, 0x57, 0x59),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0x9c, 0x75, 0x5f),
];

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn e<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow!("drawing the chart: {err:?}")
}

/// Grouped bars: `groups` along x, one bar per series in each group.
fn bars(
    area: &Area,
    title: &str,
    y_desc: &str,
    groups: &[String],
    series: &[(&str, Vec<f64>)],
) -> Result<()> {
    let n = groups.len().max(1);
    let ymax = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max)
        * 1.15
        + 1e-9;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..ymax)
        .map_err(e)?;
    let names = groups.to_vec();
    let label = move |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
            names[i as usize].clone()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&label)
        .y_desc(y_desc)
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(e)?;
    let k = series.len().max(1) as f64;
    let width = 0.8 / k;
    for (s, (name, values)) in series.iter().enumerate() {
        let color = COLORS[s % COLORS.len()];
        chart
            .draw_series(values.iter().enumerate().map(|(i, &v)| {
                let x0 = i as f64 - 0.4 + s as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.92, v)], color.filled())
            }))
            .map_err(e)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(e)?;
    Ok(())
}

/// The three panels under a title naming the machine: cost, scaling, throughput.
pub fn draw(report: &Report, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (1100, 1250)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let root = root
        .titled(
            &format!(
                "emis benchmark: {} ({} cores, kernel {}){}",
                report.machine.cpu_model,
                report.machine.cores,
                report.machine.kernel,
                if report.quick { ", --quick" } else { "" }
            ),
            ("sans-serif", 22),
        )
        .map_err(e)?;
    let panels = root.split_evenly((3, 1));
    cost_panel(&panels[0], report)?;
    scaling_panel(&panels[1], report)?;
    throughput_panel(&panels[2], report)?;
    root.present().map_err(e)?;
    Ok(())
}

/// Per-packet cost of each class on the four programs.
fn cost_panel(area: &Area, report: &Report) -> Result<()> {
    let classes: Vec<String> = report.cost.iter().map(|c| c.class.clone()).collect();
    bars(
        area,
        "Per-packet cost, BPF_PROG_TEST_RUN (median ns)",
        "ns per packet",
        &classes,
        &[
            ("no-op", report.cost.iter().map(|c| c.noop_ns).collect()),
            (
                "parse only",
                report.cost.iter().map(|c| c.parse_ns).collect(),
            ),
            (
                "parse + flow lookup",
                report.cost.iter().map(|c| c.flow_lookup_ns).collect(),
            ),
            ("emis", report.cost.iter().map(|c| c.emis_ns).collect()),
        ],
    )
}

/// The enforcer's cost per class against the number of extra prefixes (log scale).
fn scaling_panel(area: &Area, report: &Report) -> Result<()> {
    let sizes: Vec<f64> = report.scaling.iter().map(|s| s.prefixes as f64).collect();
    let xmin = sizes.iter().copied().fold(f64::MAX, f64::min).max(1.0);
    let xmax = sizes.iter().copied().fold(0.0, f64::max).max(xmin * 10.0);
    let ymax = report
        .scaling
        .iter()
        .flat_map(|s| s.cost.iter().map(|c| c.emis_ns))
        .fold(0.0, f64::max)
        * 1.2
        + 1.0;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "emis per-packet cost against extra count-scope prefixes (median ns)",
            ("sans-serif", 20),
        )
        .margin(12)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((xmin..xmax).log_scale(), 0f64..ymax)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("extra prefixes (log scale)")
        .y_desc("ns per packet")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(e)?;
    let class_names: Vec<String> = report
        .scaling
        .first()
        .map(|s| s.cost.iter().map(|c| c.class.clone()).collect())
        .unwrap_or_default();
    for (i, class) in class_names.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = report
            .scaling
            .iter()
            .filter_map(|s| {
                s.cost
                    .iter()
                    .find(|c| &c.class == class)
                    .map(|c| (s.prefixes as f64, c.emis_ns))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(e)?
            .label(class.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], color));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(e)?;
    Ok(())
}

/// Median throughput of each contender.
fn throughput_panel(area: &Area, report: &Report) -> Result<()> {
    let names: Vec<String> = report.throughput.iter().map(|t| t.short.clone()).collect();
    bars(
        area,
        "Throughput on veth, median of alternated runs (Mpps at the receiver)",
        "Mpps",
        &names,
        &[(
            "median Mpps",
            report
                .throughput
                .iter()
                .map(|t| t.median_pps / 1e6)
                .collect(),
        )],
    )
}
