//! `emis watch` and `emis capture`: clients of the daemon's event socket; `emis top`:
//! the daemon's window of recent denials, through its control socket.

use std::{io::Write as _, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use clap::Args;
use emis::{
    daemon::{
        control::{self, Request},
        top::TopReport,
        DEFAULT_STATE_DIR,
    },
    events::{connect, EventLine, Filter},
};
use emis_common::EVENT_SNAP_LEN;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};

#[derive(Args)]
pub struct FilterArgs {
    /// Only events denied for this reason (no_rule, malformed, fragment, icmp, protocol).
    #[arg(long)]
    reason: Option<String>,
    /// Only events counted under this enforce-scope network.
    #[arg(long)]
    network: Option<String>,
    /// Only events from frames that arrived on this interface.
    #[arg(long = "iface", value_name = "IF")]
    iface: Option<String>,
    /// Only sampled allowed packets of this rule (slug; `emis run --sample-allowed`).
    #[arg(long)]
    rule: Option<String>,
    #[arg(long = "state-dir", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            reason: self.reason.clone(),
            network: self.network.clone(),
            iface: self.iface.clone(),
            rule: self.rule.clone(),
        }
    }
}

#[derive(Args)]
pub struct WatchArgs {
    /// One JSON object a line instead of a table.
    #[arg(long)]
    json: bool,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    #[command(flatten)]
    filter: FilterArgs,
}

#[derive(Args)]
pub struct CaptureArgs {
    /// The pcap file to write.
    #[arg(short = 'w', value_name = "FILE")]
    file: PathBuf,
    /// Stop after this many frames (else at Ctrl-C).
    #[arg(long)]
    count: Option<u64>,
    #[command(flatten)]
    filter: FilterArgs,
}

/// Events from the daemon that pass the filter, at most `count`.
fn events(
    filter: &FilterArgs,
    count: Option<u64>,
) -> Result<impl Iterator<Item = Result<EventLine>>> {
    let wanted = filter.filter();
    let lines = connect(&filter.state_dir)?;
    Ok(lines
        .map(|line| line.map_err(anyhow::Error::from))
        .filter(move |line| line.as_ref().map_or(true, |l| wanted.matches(l)))
        .take(count.map_or(usize::MAX, |n| n as usize)))
}

pub fn watch(args: &WatchArgs) -> Result<()> {
    let events = events(&args.filter, args.count)?;
    let mut out = std::io::stdout().lock();
    if !args.json {
        writeln!(
            out,
            "{}",
            row([
                "TIME", "IFACE", "SRC", "DST", "PROTO", "SPORT", "DPORT", "FLAGS", "REASON",
                "NETWORK", "ACTION",
            ])
        )?;
    }
    for event in events {
        let mut e = event?;
        if args.json {
            // The frame is for `emis capture`; a watcher wants the headers.
            e.frame.clear();
            writeln!(out, "{}", serde_json::to_string(&e)?)?;
        } else {
            let show = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            let flags = if e.tcp_flags.is_empty() {
                "-"
            } else {
                &e.tcp_flags
            };
            writeln!(
                out,
                "{}",
                row([
                    &e.time,
                    &e.iface,
                    &show(e.src.map(|a| a.to_string())),
                    &show(e.dst.map(|a| a.to_string())),
                    &show(e.proto.clone()),
                    &show(e.sport.map(|p| p.to_string())),
                    &show(e.dport.map(|p| p.to_string())),
                    flags,
                    &e.reason,
                    &e.network,
                    &e.action,
                ])
            )?;
        }
        out.flush()?;
    }
    Ok(())
}

/// One table row: time, iface, src, dst, proto, sport, dport, flags, reason, network, action.
fn row(c: [&str; 11]) -> String {
    format!(
        "{:<30} {:<10} {:<39} {:<39} {:<6} {:>5} {:>5} {:<5} {:<10} {:<16} {}",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10]
    )
}

#[derive(Args)]
pub struct TopArgs {
    /// One JSON object.
    #[arg(long)]
    json: bool,
    /// How many sources and destinations to list.
    #[arg(long, default_value_t = 10)]
    limit: usize,
    #[arg(long = "state-dir", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

pub fn top(args: &TopArgs) -> Result<()> {
    let response = control::request(&args.state_dir, &Request::Top { limit: args.limit })?;
    let report: TopReport = serde_json::from_value(
        response
            .report
            .with_context(|| format!("the daemon gave no report: {}", response.message))?,
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{} denied events in the last {} s (within the event rate limit)",
        report.events, report.window_seconds
    );
    for (title, rows) in [
        ("SOURCE", &report.sources),
        ("DESTINATION", &report.destinations),
    ] {
        println!("\n{title:<39} {:>8}", "EVENTS");
        for row in rows {
            println!("{:<39} {:>8}", row.addr, row.events);
        }
    }
    Ok(())
}

pub fn capture(args: &CaptureArgs) -> Result<()> {
    let events = events(&args.filter, args.count)?;
    let file = std::fs::File::create(&args.file)
        .with_context(|| format!("creating {}", args.file.display()))?;
    // The kernel copies at most this much of each frame; the header says so.
    let header = PcapHeader {
        snaplen: EVENT_SNAP_LEN as u32,
        ..PcapHeader::default()
    };
    // Unbuffered: each frame reaches the file as it comes, so an interrupted capture keeps it.
    let mut pcap = PcapWriter::with_header(file, header)
        .with_context(|| format!("writing {}", args.file.display()))?;
    let mut written = 0u64;
    for event in events {
        let e = event?;
        let data = e.frame_bytes();
        let packet = PcapPacket::new(Duration::from_nanos(e.time_ns), e.frame_len, &data);
        pcap.write_packet(&packet)
            .with_context(|| format!("writing {}", args.file.display()))?;
        written += 1;
    }
    pcap.into_writer().flush()?;
    eprintln!("{written} frames written to {}", args.file.display());
    Ok(())
}
