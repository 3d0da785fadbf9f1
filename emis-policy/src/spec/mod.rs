//! Reads a spec (TOML), a site (TOML file and `--site-net` flags) and, optionally,
//! Amazon's `ip-ranges.json`, and validates them into a [`Policy`].
//!
//! # Spec
//! ```toml
//! [[network]]
//! name = "emis-n3"          # [a-z0-9-]+, unique, not a role name
//! scope = "enforce"         # enforce (only rules allow traffic) | count (counted, never dropped)
//! description = "Table 1: IP Allocations N3 Facing"
//! prefixes = [              # optional; a table or a plain string; IPv4 or IPv6; host bits zero
//!   { cidr = "10.207.112.0/22", description = "EMIS Backup Datacentre" },
//!   "10.207.116.0/22",
//! ]
//! aws_region = "eu-west-2"  # optional: also every prefix of this region (all services)
//!                           # from the ip-ranges.json the operator supplies; none without one
//!
//! [[rule]]                  # rule id = position in the file
//! slug = "client-spine-messaging"   # [a-z0-9-]+, unique
//! description = "EMIS Web Client Spine Messaging"
//! hostnames = ["openapi.emishealth.com"]  # optional; names learned from DNS count a row's traffic apart
//! protocol = "tcp"          # tcp | udp
//! ports = [443, "8088-8092"] # numbers or "first-last" ranges, 1-65535, not overlapping
//! direction = "outbound"    # outbound | inbound | local
//! from = ["lan"]            # network names or site roles: lan, clinical-server, surgery, local-sites
//! to = ["emis-n3", "emis-internet"]
//! note = "..."              # optional: where the source document is inconsistent or incomplete
//! ```
//! Optional tables (defaults shown):
//! ```toml
//! [flows]                   # lifetimes in seconds, 1 to 604800
//! tcp_syn_timeout = 30
//! tcp_established_timeout = 7200
//! tcp_closing_timeout = 10
//! udp_timeout = 60
//! fragment_timeout = 30
//! [icmp]
//! echo = false              # true: ICMP echo to and from enforce-scope networks passes
//! ```
//! Unknown keys are errors. A network or role name may appear once per `from`/`to`.
//!
//! # Site
//! A site file holds `[roles]` with a list of prefixes per role
//! (`lan = ["192.168.10.0/24"]`); each `--site-net ROLE=CIDR` adds one prefix to a role.
//! A role named in neither is `None`: "any address outside the enforce-scope networks".
//!
//! # Checks
//! Errors name file, line, column and field. Capacity limits ([`emis_common::MAX_NETWORKS`],
//! [`emis_common::MAX_RULES`], [`emis_common::MAX_PREFIXES`] distinct prefixes per address family
//! over networks and roles) are errors, as is any overlap between two networks when either is
//! enforce-scope. Duplicate or nested prefixes within a network, overlapping count-scope
//! networks and role prefixes overlapping an enforce-scope network become
//! [`Policy::warnings`]. A rule matching only packets an earlier rule already matches is
//! listed in [`Policy::shadowed`] (its traffic is counted under the earlier rule).
//!
//! # Modules
//! - this module: [`load_policy`], which reads the inputs in order and assembles the
//!   policy and its sha256; [`Source`], [`SiteOptions`], [`DEFAULT_SPEC`];
//! - `error`: [`SpecError`] and how it is shown (file:line:column, field, message, hint);
//! - `tree`: the TOML value tree with spans and the typed readers that locate errors;
//! - `networks`: `[[network]]` sections; `rules`: `[[rule]]` sections and shadowed rules;
//!   `options`: `[flows]` and `[icmp]`;
//! - `site`: the site file and `--site-net`; `aws`: Amazon's ip-ranges.json;
//! - `checks`: capacity and overlap over every prefix of networks and roles (the counts of
//!   networks and rules are checked where they are read; every limit is in
//!   [`crate::capacity`]).

mod aws;
mod checks;
mod error;
mod networks;
mod options;
mod rules;
mod site;
#[cfg(test)]
mod testutil;
mod tree;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use error::SpecError;

use crate::capacity::{CapacityError, Limits};
use crate::policy::{Network, Policy, Rule};
use tree::{Doc, Table};

/// The EMIS Web spec, built into the binary.
pub const DEFAULT_SPEC: &str = include_str!("../../spec/emis-web.toml");
/// The name errors give the built-in spec.
pub const DEFAULT_SPEC_NAME: &str = "<embedded spec>";

/// A named text: a spec, a site file or an ip-ranges file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The file path as given (or [`DEFAULT_SPEC_NAME`]); errors start with it.
    pub name: String,
    /// Empty for a [`Source::stream`]ed file.
    pub text: String,
    /// Set by [`Source::stream`]: the file is read piece by piece where it is used.
    streamed: Option<PathBuf>,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Source {
        Source {
            name: name.into(),
            text: text.into(),
            streamed: None,
        }
    }

    /// A file read only where it is used, piece by piece, never held whole: for the
    /// ip-ranges file, whose text (about 150 MB at a million prefixes) would otherwise be
    /// the loader's peak memory. Only the ip-ranges reader streams; use [`Source::read`]
    /// for specs and site files.
    pub fn stream(path: &Path) -> Result<Source, SpecError> {
        let name = path.display().to_string();
        match std::fs::File::open(path) {
            Ok(_) => Ok(Source {
                name,
                text: String::new(),
                streamed: Some(path.to_path_buf()),
            }),
            Err(e) => Err(SpecError::new(name, format!("cannot read the file: {e}"))),
        }
    }

    /// The file a [`Source::stream`] reads.
    pub fn streamed_path(&self) -> Option<&Path> {
        self.streamed.as_deref()
    }

    /// The whole text, read now for a streamed source (for error reports).
    fn whole(&self) -> Result<Source, SpecError> {
        match &self.streamed {
            Some(path) => Source::read(path).map(|s| Source::new(self.name.clone(), s.text)),
            None => Ok(self.clone()),
        }
    }

    pub fn default_spec() -> Source {
        Source::new(DEFAULT_SPEC_NAME, DEFAULT_SPEC)
    }

    pub fn read(path: &Path) -> Result<Source, SpecError> {
        let name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Source::new(name, text)),
            Err(e) => Err(SpecError::new(name, format!("cannot read the file: {e}"))),
        }
    }
}

/// What the operator says about the site, beside the spec.
#[derive(Clone, Debug, Default)]
pub struct SiteOptions {
    /// `--site FILE`: a TOML file with a `[roles]` table.
    pub site_file: Option<Source>,
    /// `--site-net ROLE=CIDR`, in the order given.
    pub site_nets: Vec<String>,
    /// Amazon's `ip-ranges.json`, filling networks that have `aws_region`.
    pub aws_ip_ranges: Option<Source>,
}

/// Builds the policy: parses and checks the spec, the site and the ip-ranges file.
pub fn load_policy(spec: &Source, site: &SiteOptions) -> Result<Policy, SpecError> {
    load_with_limits(spec, site, &Limits::KERNEL)
}

/// [`load_policy`] against `limits`, which tests shrink.
fn load_with_limits(
    spec: &Source,
    site: &SiteOptions,
    limits: &Limits,
) -> Result<Policy, SpecError> {
    let doc = Doc::new(spec);
    let root = doc.parse()?;
    let top = Table {
        doc: &doc,
        path: String::new(),
        span: None,
        entries: &root,
    };
    top.deny_unknown(&["network", "rule", "flows", "icmp"])?;
    let options = options::parse_options(&doc, &top)?;

    let network_tables = top.tables("network")?;
    limits
        .check_networks(network_tables.len())
        .map_err(|e| over_limit(&network_tables, limits.networks, e))?;
    let mut networks: Vec<Network> = Vec::with_capacity(network_tables.len());
    let mut metas = Vec::with_capacity(network_tables.len());
    let mut seen = HashMap::new();
    for table in &network_tables {
        networks.push(networks::parse_network(table, &mut seen, &mut metas)?);
    }
    let names: Vec<String> = networks.iter().map(|n| n.name.clone()).collect();
    let by_name: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();

    let rule_tables = top.tables("rule")?;
    limits
        .check_rules(rule_tables.len())
        .map_err(|e| over_limit(&rule_tables, limits.rules, e))?;
    let mut rules: Vec<Rule> = Vec::with_capacity(rule_tables.len());
    let mut seen = HashMap::new();
    for table in &rule_tables {
        rules.push(rules::parse_rule(table, &by_name, &names, &mut seen)?);
    }

    let roles = site::load_site(site)?;

    let mut warnings = Vec::new();
    if let Some(source) = &site.aws_ip_ranges {
        aws::add_regions(source, &mut networks, &mut metas, &mut warnings)?;
    }
    for (network, meta) in networks.iter().zip(&metas) {
        if network.prefixes.is_empty() && meta.aws_region.is_none() {
            warnings.push(format!(
                "network \"{}\" has no prefixes; rules naming it never match",
                network.name
            ));
        }
    }

    // Most prefixes come from the ip-ranges file when there is one: blame it for too many.
    let capacity_file = site
        .aws_ip_ranges
        .as_ref()
        .map_or(spec.name.as_str(), |s| s.name.as_str());
    checks::check_prefixes(
        &doc,
        &networks,
        &metas,
        &roles,
        limits,
        capacity_file,
        &mut warnings,
    )?;
    let shadowed = rules::shadowed_rules(&rules);

    Ok(Policy {
        networks,
        roles,
        rules,
        sha256: sha256(spec, site)?,
        warnings,
        shadowed,
        options,
    })
}

/// Too many `[[network]]` or `[[rule]]` sections: points at the first one over `limit`.
fn over_limit(tables: &[Table], limit: usize, error: CapacityError) -> SpecError {
    let extra = &tables[limit];
    let e = SpecError::capacity(extra.doc.name, error).with_field(extra.path.clone());
    extra.doc.locate(e, extra.span.as_ref())
}

/// The policy's identity: every input, in order, separated by a zero byte.
fn sha256(spec: &Source, site: &SiteOptions) -> Result<String, SpecError> {
    let mut hasher = Sha256::new();
    hasher.update(spec.text.as_bytes());
    if let Some(file) = &site.site_file {
        hasher.update([0u8]);
        hasher.update(file.text.as_bytes());
    }
    for net in &site.site_nets {
        hasher.update([0u8]);
        hasher.update(net.as_bytes());
    }
    if let Some(file) = &site.aws_ip_ranges {
        hasher.update([0u8]);
        match file.streamed_path() {
            Some(path) => {
                let mut reader = std::fs::File::open(path).map_err(|e| {
                    SpecError::new(&file.name, format!("cannot read the file: {e}"))
                })?;
                std::io::copy(&mut reader, &mut hasher).map_err(|e| {
                    SpecError::new(&file.name, format!("cannot read the file: {e}"))
                })?;
            }
            None => hasher.update(file.text.as_bytes()),
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::testutil::*;

    #[test]
    fn sha256_covers_every_input() {
        let spec = Source::new("t.toml", BASE);
        let site = SiteOptions {
            site_file: Some(Source::new("s", "[roles]\n")),
            site_nets: vec!["lan=10.9.0.0/16".into()],
            aws_ip_ranges: Some(Source::new("j", aws_json(&[], &[]))),
        };
        let policy = load_policy(&spec, &site).unwrap();
        let mut h = Sha256::new();
        h.update(format!(
            "{BASE}\0[roles]\n\0lan=10.9.0.0/16\0{}",
            aws_json(&[], &[])
        ));
        let expect: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(policy.sha256, expect);
        let plain = load(BASE).unwrap().sha256;
        let mut h = Sha256::new();
        h.update(BASE);
        assert_eq!(
            plain,
            h.finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
    }
}
