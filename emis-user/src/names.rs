//! `emis names`: the names the daemon learned from DNS answers, their addresses, the rows
//! they map to and when each expires, asked over the control socket.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use emis::daemon::{
    control::{self, Request},
    learn::NamesReport,
    DEFAULT_STATE_DIR,
};

#[derive(Args)]
pub struct NamesArgs {
    /// One JSON object.
    #[arg(long)]
    json: bool,
    #[arg(long = "state-dir", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

pub fn names(args: &NamesArgs) -> Result<()> {
    let response = control::request(&args.state_dir, &Request::Names)?;
    let report: NamesReport = serde_json::from_value(
        response
            .report
            .with_context(|| format!("the daemon gave no report: {}", response.message))?,
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!("{:<48} {:<39} {:>8}  RULES", "NAME", "ADDRESS", "EXPIRES");
    for row in &report.names {
        println!(
            "{:<48} {:<39} {:>7}s  {}",
            row.name,
            row.addr,
            row.expires_in,
            row.rules.join(", ")
        );
    }
    let s = &report.stats;
    let rejected: u64 = s.rejected.values().sum();
    println!(
        "\n{} responses read, {rejected} rejected, {} records with TTL 0 ignored, {} answers for names no rule names",
        s.parsed, s.zero_ttl, s.unnamed
    );
    Ok(())
}
