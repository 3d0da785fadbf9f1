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
//! hostnames = ["openapi.emishealth.com"]  # optional; documentation and metrics, never matched
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

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::Path;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::policy::{
    Direction, Endpoint, Network, Options, Policy, PortRange, Protocol, Role, Rule, Scope,
};

/// The EMIS Web spec, built into the binary.
pub const DEFAULT_SPEC: &str = include_str!("../spec/emis-web.toml");
/// The name errors give the built-in spec.
pub const DEFAULT_SPEC_NAME: &str = "<embedded spec>";

/// A named text: a spec, a site file or an ip-ranges file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The file path as given (or [`DEFAULT_SPEC_NAME`]); errors start with it.
    pub name: String,
    pub text: String,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Source {
        Source {
            name: name.into(),
            text: text.into(),
        }
    }

    pub fn default_spec() -> Source {
        Source::new(DEFAULT_SPEC_NAME, DEFAULT_SPEC)
    }

    pub fn read(path: &Path) -> Result<Source, SpecError> {
        let name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Source { name, text }),
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

/// A spec, site or ip-ranges error, located as precisely as the input allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// The file (`Source::name`), or the flag (`--site-net`).
    pub file: String,
    /// 1-based.
    pub line: Option<u32>,
    /// 1-based, in characters.
    pub column: Option<u32>,
    /// Where in the document: `rule[3].ports[1]`, `network "emis-n3".prefixes[0]`, or the flag's argument.
    pub field: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl SpecError {
    pub fn new(file: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            file: file.into(),
            line: None,
            column: None,
            field: None,
            message: message.into(),
            hint: None,
        }
    }

    fn with_field(mut self, field: impl Into<String>) -> SpecError {
        self.field = Some(field.into());
        self
    }

    fn with_hint(mut self, hint: impl Into<String>) -> SpecError {
        self.hint = Some(hint.into());
        self
    }

    fn at_offset(mut self, text: &str, offset: usize) -> SpecError {
        let (line, column) = line_col(text, offset);
        self.line = Some(line as u32);
        self.column = Some(column as u32);
        self
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        f.write_str(": ")?;
        if let Some(field) = &self.field {
            write!(f, "in `{field}`: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

/// 1-based line and character column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Builds the policy: parses and checks the spec, the site and the ip-ranges file.
pub fn load_policy(spec: &Source, site: &SiteOptions) -> Result<Policy, SpecError> {
    load_with_limits(spec, site, &Limits::KERNEL)
}

// ---------------------------------------------------------------------------
// A TOML value tree that keeps every span (toml::Value keeps none), built from
// toml_edit's parsed document, which records the span of every key and value.
// ---------------------------------------------------------------------------

type Span = Range<usize>;

/// A value and where it is in the text.
#[derive(Debug)]
struct Spanned<T> {
    value: T,
    span: Span,
}

impl<T> Spanned<T> {
    fn get_ref(&self) -> &T {
        &self.value
    }

    fn span(&self) -> Span {
        self.span.clone()
    }
}

#[derive(Debug)]
enum Val {
    Str(String),
    Int(i64),
    Float,
    Bool(bool),
    Datetime,
    Array(Vec<Spanned<Val>>),
    Table(Vec<(Key, Spanned<Val>)>),
}

impl Val {
    fn kind(&self) -> &'static str {
        match self {
            Val::Str(_) => "a string",
            Val::Int(_) => "an integer",
            Val::Float => "a float",
            Val::Bool(_) => "a boolean",
            Val::Datetime => "a date-time",
            Val::Array(_) => "an array",
            Val::Table(_) => "a table",
        }
    }
}

#[derive(Debug)]
struct Key {
    name: String,
    span: Option<Span>,
}

impl Key {
    fn new(name: &str, key: Option<&toml_edit::Key>) -> Key {
        Key {
            name: name.to_owned(),
            span: key.and_then(toml_edit::Key::span),
        }
    }
}

// A value without a span of its own (a table implied by `[a.b]` or `a.b = 1`) takes its
// key's, else `fallback`: the span of what holds it.

fn toml_entries(table: &toml_edit::Table, span: &Span) -> Vec<(Key, Spanned<Val>)> {
    table
        .iter()
        .map(|(name, item)| {
            let key = Key::new(name, table.key(name));
            let value = toml_item(item, key.span.as_ref().unwrap_or(span));
            (key, value)
        })
        .collect()
}

fn toml_table(table: &toml_edit::Table, fallback: &Span) -> Spanned<Val> {
    let span = table.span().unwrap_or_else(|| fallback.clone());
    Spanned {
        value: Val::Table(toml_entries(table, &span)),
        span,
    }
}

fn toml_item(item: &toml_edit::Item, fallback: &Span) -> Spanned<Val> {
    match item {
        toml_edit::Item::Value(value) => toml_value(value, fallback),
        toml_edit::Item::Table(table) => toml_table(table, fallback),
        toml_edit::Item::ArrayOfTables(tables) => {
            let span = tables.span().unwrap_or_else(|| fallback.clone());
            Spanned {
                value: Val::Array(tables.iter().map(|t| toml_table(t, &span)).collect()),
                span,
            }
        }
        // Never in a parsed document (`Table::iter` skips it).
        toml_edit::Item::None => Spanned {
            value: Val::Table(Vec::new()),
            span: fallback.clone(),
        },
    }
}

fn toml_value(value: &toml_edit::Value, fallback: &Span) -> Spanned<Val> {
    use toml_edit::Value as V;
    let span = value.span().unwrap_or_else(|| fallback.clone());
    let value = match value {
        V::String(s) => Val::Str(s.value().clone()),
        V::Integer(i) => Val::Int(*i.value()),
        V::Float(_) => Val::Float,
        V::Boolean(b) => Val::Bool(*b.value()),
        V::Datetime(_) => Val::Datetime,
        V::Array(items) => Val::Array(items.iter().map(|v| toml_value(v, &span)).collect()),
        V::InlineTable(table) => Val::Table(
            table
                .iter()
                .map(|(name, v)| {
                    let key = Key::new(name, table.key(name));
                    let value = toml_value(v, key.span.as_ref().unwrap_or(&span));
                    (key, value)
                })
                .collect(),
        ),
    };
    Spanned { value, span }
}

/// A source being read: makes located errors.
struct Doc<'a> {
    name: &'a str,
    text: &'a str,
}

impl<'a> Doc<'a> {
    fn new(source: &'a Source) -> Doc<'a> {
        Doc {
            name: &source.name,
            text: &source.text,
        }
    }

    fn error(
        &self,
        span: Option<&Span>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> SpecError {
        let e = SpecError::new(self.name, message).with_field(field);
        match span {
            Some(span) => e.at_offset(self.text, span.start),
            None => e,
        }
    }

    fn line(&self, span: &Span) -> usize {
        line_col(self.text, span.start).0
    }

    fn parse(&self) -> Result<Vec<(Key, Spanned<Val>)>, SpecError> {
        match toml_edit::ImDocument::parse(self.text) {
            Ok(document) => Ok(toml_entries(document.as_table(), &(0..0))),
            Err(e) => {
                let mut err =
                    SpecError::new(self.name, format!("TOML syntax: {}", e.message().trim()));
                if let Some(span) = e.span() {
                    err = err.at_offset(self.text, span.start);
                    err.field = guess_field(self.text, span.start);
                }
                Err(err)
            }
        }
    }
}

/// For a TOML syntax error: the table header and key in force at `offset`, read line by line.
fn guess_field(text: &str, offset: usize) -> Option<String> {
    let end = text[offset.min(text.len())..]
        .find('\n')
        .map_or(text.len(), |i| offset + i);
    let mut counts: HashMap<String, usize> = HashMap::new();
    let (mut table, mut key): (Option<String>, Option<String>) = (None, None);
    for line in text.get(..end)?.lines() {
        let line = line.trim_start();
        if let Some(rest) = line.strip_prefix("[[") {
            let name = rest.split("]]").next().unwrap_or("").trim().to_owned();
            let n = counts.entry(name.clone()).or_insert(0);
            table = Some(format!("{name}[{n}]"));
            *n += 1;
            key = None;
        } else if let Some(rest) = line.strip_prefix('[') {
            table = Some(rest.split(']').next().unwrap_or("").trim().to_owned());
            key = None;
        } else if let Some((k, _)) = line.split_once('=') {
            let k = k.trim();
            if !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                key = Some(k.to_owned());
            }
        }
    }
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (t, k) => t.or(k),
    }
}

/// A table being read, with its field path.
struct Table<'a> {
    doc: &'a Doc<'a>,
    path: String,
    span: Option<Span>,
    entries: &'a [(Key, Spanned<Val>)],
}

impl<'a> Table<'a> {
    fn sub(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn deny_unknown(&self, allowed: &[&str]) -> Result<(), SpecError> {
        for (key, _) in self.entries {
            if !allowed.contains(&key.name.as_str()) {
                return Err(self
                    .doc
                    .error(
                        key.span.as_ref(),
                        self.sub(&key.name),
                        format!("unknown key `{}`", key.name),
                    )
                    .with_hint(format!("the keys allowed here are: {}", allowed.join(", "))));
            }
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Option<&'a Spanned<Val>> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    fn require(&self, key: &str) -> Result<&'a Spanned<Val>, SpecError> {
        self.get(key).ok_or_else(|| {
            self.doc.error(
                self.span.as_ref(),
                self.sub(key),
                format!("missing key `{key}`"),
            )
        })
    }

    fn str(&self, key: &str) -> Result<&'a str, SpecError> {
        want_str(self.doc, self.require(key)?, &self.sub(key))
    }

    fn opt_str(&self, key: &str) -> Result<Option<&'a str>, SpecError> {
        self.get(key)
            .map(|v| want_str(self.doc, v, &self.sub(key)))
            .transpose()
    }
}

fn type_error(doc: &Doc, v: &Spanned<Val>, field: &str, expected: &str) -> SpecError {
    doc.error(
        Some(&v.span()),
        field,
        format!("expected {expected}, found {}", v.get_ref().kind()),
    )
}

fn want_str<'v>(doc: &Doc, v: &'v Spanned<Val>, field: &str) -> Result<&'v str, SpecError> {
    match v.get_ref() {
        Val::Str(s) => Ok(s),
        _ => Err(type_error(doc, v, field, "a string")),
    }
}

fn want_array<'v>(
    doc: &Doc,
    v: &'v Spanned<Val>,
    field: &str,
) -> Result<&'v [Spanned<Val>], SpecError> {
    match v.get_ref() {
        Val::Array(items) => Ok(items),
        _ => Err(type_error(doc, v, field, "an array")),
    }
}

fn want_table<'v>(
    doc: &'v Doc<'v>,
    v: &'v Spanned<Val>,
    field: String,
) -> Result<Table<'v>, SpecError> {
    match v.get_ref() {
        Val::Table(entries) => Ok(Table {
            doc,
            path: field,
            span: Some(v.span()),
            entries,
        }),
        _ => Err(type_error(doc, v, &field, "a table")),
    }
}

/// `[[name]]` sections: an array whose items are tables.
fn want_tables<'v>(
    doc: &'v Doc<'v>,
    v: &'v Spanned<Val>,
    field: &str,
) -> Result<Vec<Table<'v>>, SpecError> {
    let hint = format!("write each entry as a [[{field}]] section");
    let items = want_array(doc, v, field).map_err(|e| e.with_hint(hint.clone()))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| want_table(doc, item, format!("{field}[{i}]")))
        .collect()
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn want_name<'v>(table: &Table<'v>, key: &str) -> Result<(&'v str, Span), SpecError> {
    let v = table.require(key)?;
    let name = want_str(table.doc, v, &table.sub(key))?;
    if !valid_name(name) {
        return Err(table
            .doc
            .error(
                Some(&v.span()),
                table.sub(key),
                format!("invalid {key} `{name}`"),
            )
            .with_hint("use lowercase letters, digits and `-` only"));
    }
    Ok((name, v.span()))
}

/// A name that must be unique among `seen` (which records it with its span).
fn unique_name<'v>(
    table: &Table<'v>,
    key: &str,
    what: &str,
    seen: &mut HashMap<String, Span>,
) -> Result<&'v str, SpecError> {
    let (name, span) = want_name(table, key)?;
    if let Some(first) = seen.get(name) {
        return Err(table
            .doc
            .error(
                Some(&span),
                table.sub(key),
                format!("duplicate {what} {key} `{name}`"),
            )
            .with_hint(format!(
                "{what} \"{name}\" is already defined at line {}",
                table.doc.line(first)
            )));
    }
    seen.insert(name.to_owned(), span);
    Ok(name)
}

/// Parses a prefix; host bits must be zero.
fn parse_cidr(s: &str) -> Result<IpNet, (String, String)> {
    match s.parse::<IpNet>() {
        Ok(net) if net.trunc() == net => Ok(net),
        Ok(net) => Err((
            format!("`{s}` has host bits set"),
            format!("did you mean {}?", net.trunc()),
        )),
        Err(_) => {
            let hint = match s.trim().parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(a)) => {
                    format!("write a single address with its length: {a}/32")
                }
                Ok(std::net::IpAddr::V6(a)) => {
                    format!("write a single address with its length: {a}/128")
                }
                Err(_) => {
                    "expected an IPv4 or IPv6 prefix such as 10.207.112.0/22 or 2001:db8::/32"
                        .to_owned()
                }
            };
            Err((format!("invalid prefix `{s}`"), hint))
        }
    }
}

fn want_cidr(doc: &Doc, v: &Spanned<Val>, field: &str) -> Result<IpNet, SpecError> {
    let s = want_str(doc, v, field)?;
    parse_cidr(s)
        .map_err(|(message, hint)| doc.error(Some(&v.span()), field, message).with_hint(hint))
}

// ---------------------------------------------------------------------------
// Spec
// ---------------------------------------------------------------------------

struct Limits {
    networks: usize,
    rules: usize,
    prefixes: usize,
}

impl Limits {
    const KERNEL: Limits = Limits {
        networks: emis_common::MAX_NETWORKS as usize,
        rules: emis_common::MAX_RULES as usize,
        prefixes: emis_common::MAX_PREFIXES as usize,
    };
}

/// Where a network's prefixes came from, for messages.
struct NetMeta {
    /// Span and field path of each spec prefix kept (they come first in `Network::prefixes`).
    spec: Vec<(Span, String)>,
    aws_region: Option<(String, Span)>,
    duplicates: usize,
    duplicate_example: Option<IpNet>,
}

fn parse_network(
    table: &Table,
    seen: &mut HashMap<String, Span>,
    meta_out: &mut Vec<NetMeta>,
) -> Result<Network, SpecError> {
    let doc = table.doc;
    table.deny_unknown(&["name", "scope", "description", "prefixes", "aws_region"])?;
    let name = unique_name(table, "name", "network", seen)?;
    if Role::from_name(name).is_some() {
        let v = table.require("name")?;
        return Err(doc
            .error(
                Some(&v.span()),
                table.sub("name"),
                format!("`{name}` is a site role, not a network name"),
            )
            .with_hint(format!(
                "site roles ({}) come from the site; choose another name",
                emis_common::ROLE_NAMES.join(", ")
            )));
    }
    let table = Table {
        doc,
        path: format!("network \"{name}\""),
        span: table.span.clone(),
        entries: table.entries,
    };
    let scope_v = table.require("scope")?;
    let scope = match want_str(doc, scope_v, &table.sub("scope"))? {
        "enforce" => Scope::Enforce,
        "count" => Scope::Count,
        other => return Err(doc
            .error(
                Some(&scope_v.span()),
                table.sub("scope"),
                format!("unknown scope `{other}`"),
            )
            .with_hint(
                "use \"enforce\" (only rules allow traffic) or \"count\" (counted, never dropped)",
            )),
    };
    let description = table.str("description")?.to_owned();
    let mut meta = NetMeta {
        spec: Vec::new(),
        aws_region: None,
        duplicates: 0,
        duplicate_example: None,
    };
    let mut prefixes = Vec::new();
    if let Some(v) = table.get("prefixes") {
        let field = table.sub("prefixes");
        let mut seen = HashSet::new();
        for (i, item) in want_array(doc, v, &field)?.iter().enumerate() {
            let item_field = format!("{field}[{i}]");
            let (net, span, path) = match item.get_ref() {
                Val::Table(_) => {
                    let t = want_table(doc, item, item_field)?;
                    t.deny_unknown(&["cidr", "description"])?;
                    t.opt_str("description")?;
                    let cidr = t.require("cidr")?;
                    (
                        want_cidr(doc, cidr, &t.sub("cidr"))?,
                        cidr.span(),
                        t.sub("cidr"),
                    )
                }
                Val::Str(_) => (want_cidr(doc, item, &item_field)?, item.span(), item_field),
                _ => {
                    return Err(type_error(
                        doc,
                        item,
                        &item_field,
                        "a prefix string or a { cidr = .. } table",
                    ))
                }
            };
            if seen.insert(net) {
                prefixes.push(net);
                meta.spec.push((span, path));
            } else {
                meta.duplicates += 1;
                meta.duplicate_example.get_or_insert(net);
            }
        }
    }
    if let Some(v) = table.get("aws_region") {
        let region = want_str(doc, v, &table.sub("aws_region"))?;
        if region.is_empty() {
            return Err(doc.error(Some(&v.span()), table.sub("aws_region"), "empty region"));
        }
        meta.aws_region = Some((region.to_owned(), v.span()));
    }
    meta_out.push(meta);
    Ok(Network {
        name: name.to_owned(),
        scope,
        description,
        prefixes,
    })
}

fn parse_ports(doc: &Doc, v: &Spanned<Val>, field: &str) -> Result<Vec<PortRange>, SpecError> {
    let items = want_array(doc, v, field)?;
    if items.is_empty() {
        return Err(doc
            .error(Some(&v.span()), field, "no ports")
            .with_hint("list at least one port, e.g. ports = [443] or ports = [\"8088-8092\"]"));
    }
    let mut ports = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_field = format!("{field}[{i}]");
        let bad = |message: String| {
            doc.error(Some(&item.span()), &item_field, message)
                .with_hint(
                    "a port is 1-65535; a range is a string \"first-last\" with first <= last",
                )
        };
        let range = match item.get_ref() {
            Val::Int(n) => match u16::try_from(*n) {
                Ok(p) if p > 0 => PortRange { first: p, last: p },
                _ => return Err(bad(format!("port {n} is outside 1-65535"))),
            },
            Val::Str(s) => {
                let (a, b) = s.split_once('-').unwrap_or((s, s));
                let parse = |t: &str| t.trim().parse::<u32>().ok();
                match (parse(a), parse(b)) {
                    (Some(first), Some(last)) if first == 0 || last > 65535 => {
                        return Err(bad(format!("port range `{s}` is outside 1-65535")))
                    }
                    (Some(first), Some(last)) if first > last => {
                        return Err(bad(format!("port range `{s}` runs backwards")))
                    }
                    (Some(first), Some(last)) => PortRange {
                        first: first as u16,
                        last: last as u16,
                    },
                    _ => return Err(bad(format!("invalid port range `{s}`"))),
                }
            }
            _ => {
                return Err(type_error(
                    doc,
                    item,
                    &item_field,
                    "a port number or a \"first-last\" range string",
                ))
            }
        };
        ports.push(range);
    }
    let mut order: Vec<usize> = (0..ports.len()).collect();
    order.sort_by_key(|&i| (ports[i], i));
    let mut widest = order[0];
    for &i in &order[1..] {
        if ports[i].first <= ports[widest].last {
            let (earlier, later) = (widest.min(i), widest.max(i));
            return Err(doc
                .error(
                    Some(&items[later].span()),
                    format!("{field}[{later}]"),
                    format!(
                        "ports {} overlap ports {} at {field}[{earlier}]",
                        ports[later], ports[earlier]
                    ),
                )
                .with_hint("list each port once"));
        }
        if ports[i].last > ports[widest].last {
            widest = i;
        }
    }
    Ok(ports)
}

fn parse_endpoints(
    table: &Table,
    key: &str,
    networks: &HashMap<&str, usize>,
    names: &[String],
) -> Result<Vec<Endpoint>, SpecError> {
    let doc = table.doc;
    let v = table.require(key)?;
    let field = table.sub(key);
    let items = want_array(doc, v, &field)?;
    let known = || {
        format!(
            "networks: {}; site roles: {}",
            if names.is_empty() {
                "(none)".to_owned()
            } else {
                names.join(", ")
            },
            emis_common::ROLE_NAMES.join(", ")
        )
    };
    if items.is_empty() {
        return Err(doc
            .error(Some(&v.span()), &field, format!("empty `{key}`"))
            .with_hint(format!(
                "name at least one network or site role ({})",
                known()
            )));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_field = format!("{field}[{i}]");
        let name = want_str(doc, item, &item_field)?;
        let endpoint = if let Some(&id) = networks.get(name) {
            Endpoint::Network(id as u32)
        } else if let Some(role) = Role::from_name(name) {
            Endpoint::Role(role)
        } else {
            return Err(doc
                .error(
                    Some(&item.span()),
                    item_field,
                    format!("unknown network or role `{name}`"),
                )
                .with_hint(known()));
        };
        if out.contains(&endpoint) {
            return Err(doc
                .error(
                    Some(&item.span()),
                    item_field,
                    format!("`{name}` is listed twice"),
                )
                .with_hint("list each network or role once"));
        }
        out.push(endpoint);
    }
    Ok(out)
}

fn parse_rule(
    table: &Table,
    networks: &HashMap<&str, usize>,
    names: &[String],
    seen: &mut HashMap<String, Span>,
) -> Result<Rule, SpecError> {
    let doc = table.doc;
    table.deny_unknown(&[
        "slug",
        "description",
        "hostnames",
        "protocol",
        "ports",
        "direction",
        "from",
        "to",
        "note",
    ])?;
    let slug = unique_name(table, "slug", "rule", seen)?;
    let description = table.str("description")?.to_owned();
    let mut hostnames = Vec::new();
    if let Some(v) = table.get("hostnames") {
        let field = table.sub("hostnames");
        for (i, item) in want_array(doc, v, &field)?.iter().enumerate() {
            hostnames.push(want_str(doc, item, &format!("{field}[{i}]"))?.to_owned());
        }
    }
    let proto_v = table.require("protocol")?;
    let protocol = match want_str(doc, proto_v, &table.sub("protocol"))? {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => {
            return Err(doc
                .error(
                    Some(&proto_v.span()),
                    table.sub("protocol"),
                    format!("unknown protocol `{other}`"),
                )
                .with_hint("use \"tcp\" or \"udp\""))
        }
    };
    let ports = parse_ports(doc, table.require("ports")?, &table.sub("ports"))?;
    let dir_v = table.require("direction")?;
    let direction = match want_str(doc, dir_v, &table.sub("direction"))? {
        "outbound" => Direction::Outbound,
        "inbound" => Direction::Inbound,
        "local" => Direction::Local,
        other => {
            return Err(doc
                .error(
                    Some(&dir_v.span()),
                    table.sub("direction"),
                    format!("unknown direction `{other}`"),
                )
                .with_hint("use \"outbound\", \"inbound\" or \"local\""))
        }
    };
    let from = parse_endpoints(table, "from", networks, names)?;
    let to = parse_endpoints(table, "to", networks, names)?;
    let note = table.opt_str("note")?.map(str::to_owned);
    let rule = Rule {
        slug: slug.to_owned(),
        description,
        hostnames,
        protocol,
        ports,
        direction,
        from,
        to,
        note,
    };
    Ok(rule)
}

// ---------------------------------------------------------------------------
// Site
// ---------------------------------------------------------------------------

type Roles = [Option<Vec<IpNet>>; emis_common::ROLE_COUNT as usize];

fn add_role_prefix(roles: &mut Roles, role: Role, net: IpNet) {
    let list = roles[role.0 as usize].get_or_insert_with(Vec::new);
    if !list.contains(&net) {
        list.push(net);
    }
}

fn load_site(site: &SiteOptions) -> Result<Roles, SpecError> {
    let mut roles: Roles = Default::default();
    if let Some(source) = &site.site_file {
        let doc = Doc::new(source);
        let root = doc.parse()?;
        let top = Table {
            doc: &doc,
            path: String::new(),
            span: None,
            entries: &root,
        };
        top.deny_unknown(&["roles"])?;
        if let Some(v) = top.get("roles") {
            let table = want_table(&doc, v, "roles".to_owned())?;
            for (key, value) in table.entries {
                let field = table.sub(&key.name);
                let Some(role) = Role::from_name(&key.name) else {
                    return Err(doc
                        .error(
                            key.span.as_ref(),
                            field,
                            format!("unknown site role `{}`", key.name),
                        )
                        .with_hint(format!(
                            "the site roles are: {}",
                            emis_common::ROLE_NAMES.join(", ")
                        )));
                };
                let items = want_array(&doc, value, &field)?;
                if items.is_empty() {
                    return Err(doc
                        .error(Some(&value.span()), field, format!("no prefixes for role `{}`", key.name))
                        .with_hint("leave the role out to mean \"any address outside the enforce-scope networks\""));
                }
                for (i, item) in items.iter().enumerate() {
                    let net = want_cidr(&doc, item, &format!("{field}[{i}]"))?;
                    add_role_prefix(&mut roles, role, net);
                }
            }
        }
    }
    for arg in &site.site_nets {
        let err = |message: String, hint: String| {
            SpecError::new("--site-net", message)
                .with_field(arg.as_str())
                .with_hint(hint)
        };
        let Some((name, cidr)) = arg.split_once('=') else {
            return Err(err(
                "expected ROLE=CIDR".to_owned(),
                "for example --site-net lan=192.168.10.0/24".to_owned(),
            ));
        };
        let Some(role) = Role::from_name(name.trim()) else {
            return Err(err(
                format!("unknown site role `{}`", name.trim()),
                format!("the site roles are: {}", emis_common::ROLE_NAMES.join(", ")),
            ));
        };
        let net = parse_cidr(cidr.trim()).map_err(|(message, hint)| err(message, hint))?;
        add_role_prefix(&mut roles, role, net);
    }
    Ok(roles)
}

// ---------------------------------------------------------------------------
// Amazon's ip-ranges.json
// ---------------------------------------------------------------------------

#[derive(serde::Deserialize)]
struct AwsRanges<'a> {
    #[serde(borrow)]
    prefixes: Vec<AwsV4<'a>>,
    #[serde(borrow, default)]
    ipv6_prefixes: Vec<AwsV6<'a>>,
}

#[derive(serde::Deserialize)]
struct AwsV4<'a> {
    #[serde(borrow)]
    ip_prefix: Cow<'a, str>,
    #[serde(borrow)]
    region: Cow<'a, str>,
}

#[derive(serde::Deserialize)]
struct AwsV6<'a> {
    #[serde(borrow)]
    ipv6_prefix: Cow<'a, str>,
    #[serde(borrow)]
    region: Cow<'a, str>,
}

/// Byte offset of a 1-based line and column (serde_json counts bytes in the column).
fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let start = if line <= 1 {
        0
    } else {
        text.match_indices('\n')
            .nth(line - 2)
            .map_or(text.len(), |(i, _)| i + 1)
    };
    (start + column.saturating_sub(1)).min(text.len())
}

/// For a JSON error: `prefixes[i]` or `ipv6_prefixes[i]` around `offset`, assuming flat entries.
fn guess_json_field(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let v4 = before.rfind("\"prefixes\"");
    let v6 = before.rfind("\"ipv6_prefixes\"");
    let (name, at) = match (v4, v6) {
        (Some(a), Some(b)) if b > a => ("ipv6_prefixes", b),
        (Some(a), _) => ("prefixes", a),
        (None, Some(b)) => ("ipv6_prefixes", b),
        (None, None) => return None,
    };
    let objects = before[at..].bytes().filter(|&b| b == b'{').count();
    Some(match objects {
        0 => name.to_owned(),
        n => format!("{name}[{}]", n - 1),
    })
}

/// Adds every prefix of a wanted region to the networks asking for it (`out[network]`).
/// One entry of ip-ranges.json, as a prefix of the family its list holds; the error is
/// (message, hint).
fn aws_prefix(raw: &str, v6: bool) -> Result<IpNet, (String, String)> {
    let family = if v6 { "IPv6" } else { "IPv4" };
    match raw.parse::<IpNet>() {
        Ok(n) if matches!(n, IpNet::V6(_)) == v6 && n.trunc() == n => Ok(n),
        Ok(n) if matches!(n, IpNet::V6(_)) == v6 => Err((
            format!("`{n}` has host bits set"),
            format!("did you mean {}?", n.trunc()),
        )),
        _ => Err((
            format!("invalid {family} prefix `{raw}`"),
            if v6 {
                "expected e.g. 2600:1f1c::/36"
            } else {
                "expected e.g. 3.5.140.0/22"
            }
            .to_owned(),
        )),
    }
}

fn load_aws(
    source: &Source,
    wanted: &HashMap<&str, Vec<usize>>,
    out: &mut [Vec<IpNet>],
) -> Result<(), SpecError> {
    let ranges: AwsRanges = serde_json::from_str(&source.text).map_err(|e| {
        let message = e.to_string();
        let message = match message.rfind(" at line ") {
            Some(i) => message[..i].to_owned(),
            None => message,
        };
        let mut err = SpecError::new(&source.name, format!("ip-ranges JSON: {message}")).with_hint(
            "expected Amazon's ip-ranges.json (https://ip-ranges.amazonaws.com/ip-ranges.json)",
        );
        if e.line() > 0 {
            err.line = Some(e.line() as u32);
            err.column = Some(e.column().max(1) as u32);
            err.field =
                guess_json_field(&source.text, offset_of(&source.text, e.line(), e.column()));
        }
        err
    })?;
    let bad = |field: String, raw: &str, message: String, hint: String| {
        let mut err = SpecError::new(&source.name, message)
            .with_field(field)
            .with_hint(hint);
        if let Some(at) = source.text.find(&format!("\"{raw}\"")) {
            err = err.at_offset(&source.text, at + 1);
        }
        err
    };
    let v4 = ranges.prefixes.iter().enumerate().map(|(i, p)| {
        (
            format!("prefixes[{i}].ip_prefix"),
            p.ip_prefix.as_ref(),
            p.region.as_ref(),
            false,
        )
    });
    let v6 = ranges.ipv6_prefixes.iter().enumerate().map(|(i, p)| {
        (
            format!("ipv6_prefixes[{i}].ipv6_prefix"),
            p.ipv6_prefix.as_ref(),
            p.region.as_ref(),
            true,
        )
    });
    for (field, raw, region, is_v6) in v4.chain(v6) {
        let Some(nets) = wanted.get(region) else {
            continue;
        };
        let net =
            aws_prefix(raw, is_v6).map_err(|(message, hint)| bad(field, raw, message, hint))?;
        for &n in nets {
            out[n].push(net);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Prefix overlap: sort, then sweep with the chain of prefixes containing the current one.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Owner {
    Net(u32),
    Role(u32),
}

#[derive(Clone, Copy)]
struct Item {
    v6: bool,
    start: u128,
    end: u128,
    len: u8,
    owner: Owner,
    /// Index in the owner's prefix list.
    idx: u32,
}

impl Item {
    fn new(net: &IpNet, owner: Owner, idx: usize) -> Item {
        let (v6, start, end) = match net {
            IpNet::V4(n) => (
                false,
                u32::from(n.network()) as u128,
                u32::from(n.broadcast()) as u128,
            ),
            IpNet::V6(n) => (true, u128::from(n.network()), u128::from(n.broadcast())),
        };
        Item {
            v6,
            start,
            end,
            len: net.prefix_len(),
            owner,
            idx: idx as u32,
        }
    }
}

/// Counts one kind of overlap, with the first example.
#[derive(Default)]
struct Tally {
    count: usize,
    example: Option<(IpNet, IpNet)>,
}

impl Tally {
    fn add(&mut self, inner: IpNet, outer: IpNet) {
        self.count += 1;
        self.example.get_or_insert((inner, outer));
    }
}

fn check_prefixes(
    doc: &Doc,
    networks: &[Network],
    metas: &[NetMeta],
    roles: &Roles,
    limits: &Limits,
    capacity_file: &str,
    warnings: &mut Vec<String>,
) -> Result<(), SpecError> {
    let total = networks.iter().map(|n| n.prefixes.len()).sum::<usize>()
        + roles.iter().flatten().map(Vec::len).sum::<usize>();
    let mut items = Vec::with_capacity(total);
    for (n, network) in networks.iter().enumerate() {
        items.extend(
            network
                .prefixes
                .iter()
                .enumerate()
                .map(|(i, p)| Item::new(p, Owner::Net(n as u32), i)),
        );
    }
    for (r, list) in roles.iter().enumerate() {
        for (i, p) in list.iter().flatten().enumerate() {
            items.push(Item::new(p, Owner::Role(r as u32), i));
        }
    }
    items.sort_unstable_by(|a, b| {
        (a.v6, a.start, a.len, a.owner, a.idx).cmp(&(b.v6, b.start, b.len, b.owner, b.idx))
    });

    // Capacity: distinct prefixes per family.
    let mut distinct = [0usize; 2];
    for (i, item) in items.iter().enumerate() {
        if i == 0 || {
            let prev = &items[i - 1];
            (prev.v6, prev.start, prev.len) != (item.v6, item.start, item.len)
        } {
            distinct[item.v6 as usize] += 1;
        }
    }
    for (family, &count) in ["IPv4", "IPv6"].iter().zip(&distinct) {
        if count > limits.prefixes {
            return Err(SpecError::new(
                capacity_file,
                format!(
                    "{count} distinct {family} prefixes in networks and site roles; the enforcer holds at most {}",
                    limits.prefixes
                ),
            )
            .with_field("prefixes")
            .with_hint("use fewer or shorter prefixes (an ip-ranges file can be filtered to the services you use)"));
        }
    }

    let prefix_of = |item: &Item| -> IpNet {
        match item.owner {
            Owner::Net(n) => networks[n as usize].prefixes[item.idx as usize],
            Owner::Role(r) => {
                roles[r as usize].as_ref().expect("role with prefixes")[item.idx as usize]
            }
        }
    };
    let enforce = |n: u32| networks[n as usize].scope == Scope::Enforce;
    // (span, field, whether the spec lists this prefix literally)
    let locate = |item: &Item| -> (Option<Span>, String, bool) {
        let Owner::Net(n) = item.owner else {
            unreachable!("only networks are located")
        };
        let name = &networks[n as usize].name;
        let meta = &metas[n as usize];
        match meta.spec.get(item.idx as usize) {
            Some((span, field)) => (Some(span.clone()), field.clone(), true),
            None => (
                meta.aws_region.as_ref().map(|r| r.1.clone()),
                format!("network \"{name}\".aws_region"),
                false,
            ),
        }
    };

    let mut nested: BTreeMap<u32, Tally> = BTreeMap::new();
    let mut count_pairs: BTreeMap<(u32, u32), Tally> = BTreeMap::new();
    let mut role_overlaps: BTreeMap<(u32, u32), Tally> = BTreeMap::new();
    let mut stack: Vec<usize> = Vec::new();
    let mut seen: Vec<Owner> = Vec::new();
    for (pi, p) in items.iter().enumerate() {
        while let Some(&top) = stack.last() {
            if items[top].v6 != p.v6 || items[top].end < p.start {
                stack.pop();
            } else {
                break;
            }
        }
        // Everything left on the stack contains (or equals) p.
        seen.clear();
        for &ci in &stack {
            let c = &items[ci];
            if seen.contains(&c.owner) {
                continue;
            }
            seen.push(c.owner);
            match (c.owner, p.owner) {
                (Owner::Net(a), Owner::Net(b)) if a == b => {
                    nested.entry(a).or_default().add(prefix_of(p), prefix_of(c))
                }
                (Owner::Net(a), Owner::Net(b)) if enforce(a) || enforce(b) => {
                    let (outer, inner) = (prefix_of(c), prefix_of(p));
                    let (na, nb) = (&networks[a as usize].name, &networks[b as usize].name);
                    let message = if outer == inner {
                        format!("prefix {inner} is in both network \"{nb}\" and network \"{na}\"")
                    } else {
                        format!("prefix {inner} of network \"{nb}\" lies inside {outer} of network \"{na}\"")
                    };
                    // Point at a prefix the spec spells out, preferring the inner one;
                    // else at the `aws_region` that brought it in.
                    let (span, field, _) = [locate(p), locate(c)]
                        .into_iter()
                        .min_by_key(|(span, _, literal)| (!literal, span.is_none()))
                        .expect("two candidates");
                    return Err(doc
                        .error(span.as_ref(), field, format!("{message}; networks must not overlap when either is enforce-scope"))
                        .with_hint("an address belongs to at most one enforce-scope network: remove or split one of the prefixes"));
                }
                (Owner::Net(a), Owner::Net(b)) => count_pairs
                    .entry((a.min(b), a.max(b)))
                    .or_default()
                    .add(prefix_of(p), prefix_of(c)),
                (Owner::Role(r), Owner::Net(n)) | (Owner::Net(n), Owner::Role(r)) if enforce(n) => {
                    role_overlaps
                        .entry((r, n))
                        .or_default()
                        .add(prefix_of(p), prefix_of(c))
                }
                _ => {}
            }
        }
        stack.push(pi);
    }

    for (n, (network, meta)) in networks.iter().zip(metas).enumerate() {
        if let Some(example) = meta.duplicate_example {
            warnings.push(format!(
                "network \"{}\": {} duplicate prefixes ignored (e.g. {example})",
                network.name, meta.duplicates
            ));
        }
        if let Some(Tally {
            count,
            example: Some((inner, outer)),
        }) = nested.get(&(n as u32))
        {
            warnings.push(format!(
                "network \"{}\": {count} prefixes lie inside another of its prefixes (e.g. {inner} inside {outer})",
                network.name
            ));
        }
    }
    for ((a, b), Tally { count, example }) in &count_pairs {
        let (inner, outer) = example.expect("tally has an example");
        warnings.push(format!(
            "count-scope networks \"{}\" and \"{}\" overlap in {count} prefixes (e.g. {inner} and {outer})",
            networks[*a as usize].name, networks[*b as usize].name
        ));
    }
    for ((r, n), Tally { count, example }) in &role_overlaps {
        let (inner, outer) = example.expect("tally has an example");
        warnings.push(format!(
            "site role {}: {count} prefixes overlap enforce-scope network \"{}\" (e.g. {inner} and {outer}); \
             addresses inside enforce-scope networks never count as a site role",
            Role(*r).name(),
            networks[*n as usize].name
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Shadowed rules
// ---------------------------------------------------------------------------

fn endpoint_key(endpoints: &[Endpoint]) -> Vec<(u8, u32)> {
    let mut key: Vec<(u8, u32)> = endpoints
        .iter()
        .map(|e| match e {
            Endpoint::Network(n) => (0, *n),
            Endpoint::Role(r) => (1, r.0),
        })
        .collect();
    key.sort_unstable();
    key.dedup();
    key
}

/// Whether every port of `inner` is in some range of `outer` (ranges merged first).
fn ports_covered(outer: &[PortRange], inner: &[PortRange]) -> bool {
    let mut sorted = outer.to_vec();
    sorted.sort_unstable();
    let mut merged: Vec<PortRange> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match merged.last_mut() {
            Some(last) if u32::from(r.first) <= u32::from(last.last) + 1 => {
                last.last = last.last.max(r.last)
            }
            _ => merged.push(r),
        }
    }
    inner.iter().all(|r| {
        merged
            .iter()
            .any(|m| m.first <= r.first && r.last <= m.last)
    })
}

/// (rule, earlier rule) for each rule that matches only packets an earlier rule already
/// matches (same protocol and endpoints, a direction the earlier rule covers, ports covered);
/// the earlier rule is the first such.
fn shadowed_rules(rules: &[Rule]) -> Vec<(u32, u32)> {
    let keys: Vec<_> = rules
        .iter()
        .map(|r| (endpoint_key(&r.from), endpoint_key(&r.to)))
        .collect();
    rules
        .iter()
        .enumerate()
        .filter_map(|(b, rule_b)| {
            (0..b)
                .find(|&a| {
                    let rule_a = &rules[a];
                    rule_a.protocol == rule_b.protocol
                        && (rule_a.direction == rule_b.direction
                            || rule_a.direction == Direction::Local)
                        && keys[a] == keys[b]
                        && ports_covered(&rule_a.ports, &rule_b.ports)
                })
                .map(|a| (b as u32, a as u32))
        })
        .collect()
}

/// `[flows]` (lifetimes in seconds) and `[icmp]` (`echo`), both optional.
fn parse_options(doc: &Doc, top: &Table) -> Result<Options, SpecError> {
    let mut options = Options::default();
    if let Some(v) = top.get("flows") {
        let flows = want_table(doc, v, "flows".to_string())?;
        let keys = [
            "tcp_syn_timeout",
            "tcp_established_timeout",
            "tcp_closing_timeout",
            "udp_timeout",
            "fragment_timeout",
        ];
        flows.deny_unknown(&keys)?;
        let t = &mut options.timeouts;
        for (key, slot) in keys.iter().zip([
            &mut t.tcp_syn,
            &mut t.tcp_established,
            &mut t.tcp_closing,
            &mut t.udp,
            &mut t.fragment,
        ]) {
            if let Some(v) = flows.get(key) {
                let field = flows.sub(key);
                *slot = match v.get_ref() {
                    Val::Int(n) if (1..=7 * 24 * 3600).contains(n) => *n as u64,
                    Val::Int(_) => {
                        return Err(doc
                            .error(
                                Some(&v.span()),
                                field,
                                "a lifetime must be 1 to 604800 seconds".to_string(),
                            )
                            .with_hint("give whole seconds, e.g. 7200 for two hours"))
                    }
                    _ => return Err(type_error(doc, v, &field, "a whole number of seconds")),
                };
            }
        }
    }
    if let Some(v) = top.get("icmp") {
        let icmp = want_table(doc, v, "icmp".to_string())?;
        icmp.deny_unknown(&["echo"])?;
        if let Some(v) = icmp.get("echo") {
            options.icmp_echo = match v.get_ref() {
                Val::Bool(b) => *b,
                _ => return Err(type_error(doc, v, "icmp.echo", "true or false")),
            };
        }
    }
    Ok(options)
}

// ---------------------------------------------------------------------------

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
    let options = parse_options(&doc, &top)?;

    let network_tables = match top.get("network") {
        Some(v) => want_tables(&doc, v, "network")?,
        None => Vec::new(),
    };
    if network_tables.len() > limits.networks {
        let extra = &network_tables[limits.networks];
        return Err(doc
            .error(
                extra.span.as_ref(),
                extra.path.clone(),
                format!(
                    "{} networks; the enforcer supports at most {}",
                    network_tables.len(),
                    limits.networks
                ),
            )
            .with_hint("merge networks that share a scope"));
    }
    let mut networks: Vec<Network> = Vec::with_capacity(network_tables.len());
    let mut metas = Vec::with_capacity(network_tables.len());
    let mut seen = HashMap::new();
    for table in &network_tables {
        networks.push(parse_network(table, &mut seen, &mut metas)?);
    }
    let names: Vec<String> = networks.iter().map(|n| n.name.clone()).collect();
    let by_name: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();

    let rule_tables = match top.get("rule") {
        Some(v) => want_tables(&doc, v, "rule")?,
        None => Vec::new(),
    };
    if rule_tables.len() > limits.rules {
        let extra = &rule_tables[limits.rules];
        return Err(doc
            .error(
                extra.span.as_ref(),
                extra.path.clone(),
                format!(
                    "{} rules; the enforcer supports at most {}",
                    rule_tables.len(),
                    limits.rules
                ),
            )
            .with_hint(
                "merge rules that share protocol, endpoints and direction into one with more ports",
            ));
    }
    let mut rules: Vec<Rule> = Vec::with_capacity(rule_tables.len());
    let mut seen = HashMap::new();
    for table in &rule_tables {
        rules.push(parse_rule(table, &by_name, &names, &mut seen)?);
    }

    let roles = load_site(site)?;

    let mut warnings = Vec::new();
    let mut wanted: HashMap<&str, Vec<usize>> = HashMap::new();
    for (n, meta) in metas.iter().enumerate() {
        if let Some((region, _)) = &meta.aws_region {
            wanted.entry(region.as_str()).or_default().push(n);
        }
    }
    if let Some(source) = &site.aws_ip_ranges {
        let mut aws: Vec<Vec<IpNet>> = vec![Vec::new(); networks.len()];
        load_aws(source, &wanted, &mut aws)?;
        for (n, mut list) in aws.into_iter().enumerate() {
            let Some((region, _)) = &metas[n].aws_region else {
                continue;
            };
            if list.is_empty() {
                warnings.push(format!(
                    "network \"{}\": {} has no prefixes for region \"{region}\"",
                    networks[n].name, source.name
                ));
                continue;
            }
            list.sort_unstable();
            let mut example = list.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]);
            let before = list.len();
            list.dedup();
            let mut dropped = before - list.len();
            let network = &mut networks[n];
            if !network.prefixes.is_empty() {
                let spec: HashSet<IpNet> = network.prefixes.iter().copied().collect();
                let len = list.len();
                list.retain(|p| {
                    let keep = !spec.contains(p);
                    if !keep {
                        example.get_or_insert(*p);
                    }
                    keep
                });
                dropped += len - list.len();
            }
            let meta = &mut metas[n];
            meta.duplicates += dropped;
            if meta.duplicate_example.is_none() {
                meta.duplicate_example = example;
            }
            network.prefixes.extend(list);
        }
    }
    for (network, meta) in networks.iter().zip(&metas) {
        if network.prefixes.is_empty() && meta.aws_region.is_none() {
            warnings.push(format!(
                "network \"{}\" has no prefixes; rules naming it never match",
                network.name
            ));
        }
    }

    let capacity_file = site
        .aws_ip_ranges
        .as_ref()
        .map_or(spec.name.as_str(), |s| s.name.as_str());
    check_prefixes(
        &doc,
        &networks,
        &metas,
        &roles,
        limits,
        capacity_file,
        &mut warnings,
    )?;
    let shadowed = shadowed_rules(&rules);

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
        hasher.update(file.text.as_bytes());
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    Ok(Policy {
        networks,
        roles,
        rules,
        sha256,
        warnings,
        shadowed,
        options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLUGS: [&str; 35] = [
        "web-mobile-openapi",
        "web-mobile-identityservice",
        "web-mobile-enrolmentservice",
        "client-spine-messaging",
        "client-patching-internet",
        "client-sds-version-check",
        "client-sds-patch-hub",
        "client-patching-n3",
        "client-xmpp-messaging",
        "client-data-port",
        "client-email",
        "client-business-continuity",
        "s3-documents",
        "appointment-refresh",
        "patching-cloud",
        "emis-x-openapi",
        "emis-x-identityservice",
        "emis-x-unnamed",
        "emis-x-emishealthsolutions-https",
        "emis-x-emis-x-uk-https",
        "emis-x-emisgroup-https",
        "emis-x-service-now",
        "emis-x-appsync-realtime",
        "emis-x-emishealthsolutions-wss",
        "emis-x-emis-x-uk-wss",
        "streaming-inbound",
        "streaming-outbound",
        "support-rdp",
        "support-vnc",
        "local-appointment-messaging",
        "local-appointments-led-board",
        "local-patient-admin-messaging",
        "local-care-record-messaging",
        "local-patient-api-messaging",
        "local-udp-forwarder",
    ];

    const BASE: &str = r#"[[network]]
name = "n3"
scope = "enforce"
description = "N3"
prefixes = ["10.0.0.0/16", { cidr = "10.1.0.0/16", description = "second" }]

[[rule]]
slug = "a"
description = "A"
protocol = "tcp"
ports = [443, "8000-8010"]
direction = "outbound"
from = ["lan"]
to = ["n3"]
"#;

    fn load(text: &str) -> Result<Policy, SpecError> {
        load_policy(&Source::new("t.toml", text), &SiteOptions::default())
    }

    fn load_site(text: &str, site: &SiteOptions) -> Result<Policy, SpecError> {
        load_policy(&Source::new("t.toml", text), site)
    }

    fn error(text: &str) -> SpecError {
        match load(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e,
        }
    }

    /// Line and column of the `nth` occurrence of `needle`.
    fn pos_n(text: &str, needle: &str, nth: usize) -> (Option<u32>, Option<u32>) {
        let at = text
            .match_indices(needle)
            .nth(nth)
            .unwrap_or_else(|| panic!("{needle:?} not in text"))
            .0;
        let (l, c) = line_col(text, at);
        (Some(l as u32), Some(c as u32))
    }

    fn pos(text: &str, needle: &str) -> (Option<u32>, Option<u32>) {
        pos_n(text, needle, 0)
    }

    #[track_caller]
    fn assert_err(
        e: &SpecError,
        file: &str,
        at: (Option<u32>, Option<u32>),
        field: &str,
        message: &str,
    ) {
        assert_eq!(e.file, file, "{e}");
        assert_eq!((e.line, e.column), at, "{e}");
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
        assert!(
            e.message.contains(message),
            "message {:?} lacks {message:?}",
            e.message
        );
    }

    fn ip(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    // ----- the default spec -----

    #[test]
    fn default_spec_loads() {
        let policy = load_policy(&Source::default_spec(), &SiteOptions::default()).unwrap();
        let names: Vec<_> = policy
            .networks
            .iter()
            .map(|n| (n.name.as_str(), n.scope))
            .collect();
        assert_eq!(
            names,
            [
                ("emis-n3", Scope::Enforce),
                ("emis-n2-legacy", Scope::Enforce),
                ("emis-internet", Scope::Enforce),
                ("aws", Scope::Count)
            ]
        );
        assert_eq!(
            policy.networks[0].prefixes,
            [ip("10.207.112.0/22"), ip("10.207.116.0/22")]
        );
        assert_eq!(policy.networks[1].prefixes, [ip("194.189.117.64/26")]);
        assert_eq!(
            policy.networks[2].prefixes,
            [ip("185.13.72.0/22"), ip("149.11.42.48/29")]
        );
        assert!(policy.networks[3].prefixes.is_empty());
        let slugs: Vec<_> = policy.rules.iter().map(|r| r.slug.as_str()).collect();
        assert_eq!(slugs, SLUGS);
        assert_eq!(policy.roles, [None, None, None, None]);
        assert_eq!(policy.sha256.len(), 64);

        let rule = |slug: &str| policy.rules.iter().find(|r| r.slug == slug).unwrap();
        let n3 = Endpoint::Network(0);
        let n2 = Endpoint::Network(1);
        let internet = Endpoint::Network(2);
        let aws = Endpoint::Network(3);
        let lan = Endpoint::Role(Role::LAN);
        let patching = rule("client-patching-internet");
        assert_eq!(
            patching.ports,
            [
                PortRange {
                    first: 80,
                    last: 80
                },
                PortRange {
                    first: 8080,
                    last: 8080
                }
            ]
        );
        assert_eq!(patching.to, [n3, internet]);
        assert_eq!(patching.from, [lan]);
        assert_eq!(rule("appointment-refresh").to, [aws]);
        assert_eq!(
            rule("appointment-refresh").hostnames,
            ["*.iot.eu-west-2.amazonaws.com"]
        );
        let inbound = rule("streaming-inbound");
        assert_eq!(
            (inbound.direction, inbound.from.as_slice()),
            (Direction::Inbound, [n3].as_slice())
        );
        assert_eq!(inbound.to, [Endpoint::Role(Role::CLINICAL_SERVER)]);
        let outbound = rule("streaming-outbound");
        assert_eq!(outbound.from, [Endpoint::Role(Role::CLINICAL_SERVER)]);
        assert_eq!(outbound.to, [n3]);
        for slug in ["support-rdp", "support-vnc"] {
            assert_eq!(rule(slug).from, [n3, n2]);
            assert_eq!(rule(slug).to, [Endpoint::Role(Role::SURGERY)]);
            assert_eq!(rule(slug).direction, Direction::Inbound);
        }
        for r in &policy.rules[29..] {
            assert_eq!(r.direction, Direction::Local);
            assert_eq!(
                (r.from.as_slice(), r.to.as_slice()),
                (
                    [Endpoint::Role(Role::LOCAL_SITES)].as_slice(),
                    [Endpoint::Role(Role::LOCAL_SITES)].as_slice()
                )
            );
        }
        assert_eq!(rule("local-udp-forwarder").protocol, Protocol::Tcp);
        assert_eq!(rule("local-appointment-messaging").protocol, Protocol::Udp);
        assert_eq!(rule("emis-x-service-now").hostnames, ["*.service-now.com"]);
        // Rows repeated in the document are listed as shadowed, not rejected.
        let id = |slug: &str| policy.rules.iter().position(|r| r.slug == slug).unwrap() as u32;
        assert!(policy
            .shadowed
            .contains(&(id("emis-x-openapi"), id("web-mobile-openapi"))));
        assert!(policy
            .shadowed
            .contains(&(id("s3-documents"), id("client-spine-messaging"))));
        let mut shadowed: Vec<u32> = policy.shadowed.iter().map(|&(b, _)| b).collect();
        shadowed.dedup();
        assert_eq!(
            shadowed.len(),
            policy.shadowed.len(),
            "{:?}",
            policy.shadowed
        );
        assert!(policy.shadowed.iter().all(|&(b, a)| a < b));
        assert!(policy.warnings.is_empty(), "{:?}", policy.warnings);
        assert_eq!(
            rule("emis-x-openapi").note.as_deref(),
            Some("Same host, port and network as web-mobile-openapi; its traffic is counted under that rule.")
        );
        assert_eq!(rule("web-mobile-openapi").note, None);
    }

    #[test]
    fn default_spec_notes_the_inconsistencies() {
        for slug in [
            "s3-documents",
            "patching-cloud",
            "emis-x-unnamed",
            "emis-x-service-now",
            "emis-x-appsync-realtime",
            "streaming-outbound",
            "local-udp-forwarder",
        ] {
            let at = DEFAULT_SPEC.find(&format!("slug = \"{slug}\"")).unwrap();
            let end = DEFAULT_SPEC[at..]
                .find("[[rule]]")
                .map_or(DEFAULT_SPEC.len(), |i| at + i);
            assert!(
                DEFAULT_SPEC[at..end].contains("\nnote = "),
                "{slug} has no note"
            );
        }
    }

    fn spec_document() -> &'static str {
        include_str!("../spec/emis-network-requirements.txt")
    }

    /// The copy in the repository is the shared seed document, when that is checked out beside it.
    #[test]
    fn document_copy_matches_seed() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let seed = root.join("../shared/seed/emis-network-requirements.txt");
        if let Ok(text) = std::fs::read_to_string(&seed) {
            assert_eq!(
                text,
                spec_document(),
                "{} differs from spec/emis-network-requirements.txt",
                seed.display()
            );
        }
    }

    /// Every CIDR and every port-table row of the vendor document is in the default spec,
    /// row by row in document order.
    #[test]
    fn default_spec_covers_the_document() {
        let policy = load_policy(&Source::default_spec(), &SiteOptions::default()).unwrap();
        let document = spec_document();

        let all_prefixes: Vec<IpNet> = policy
            .networks
            .iter()
            .flat_map(|n| n.prefixes.clone())
            .collect();
        let cidrs: Vec<IpNet> = document
            .split(|c: char| c.is_whitespace() || c == '|')
            .filter(|w| w.contains('/') && w.chars().next().is_some_and(|c| c.is_ascii_digit()))
            .map(|w| w.parse().unwrap_or_else(|_| panic!("{w} is not a prefix")))
            .collect();
        assert_eq!(cidrs.len(), 5);
        for cidr in &cidrs {
            assert!(all_prefixes.contains(cidr), "{cidr} missing from the spec");
        }

        let mut rows = Vec::new();
        let mut in_port_table = false;
        for line in document.lines() {
            let line = line.trim();
            if !line.starts_with('|') {
                in_port_table = false;
                continue;
            }
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            if cells.contains(&"Port(s)") {
                in_port_table = true;
                continue;
            }
            if in_port_table {
                rows.push(cells);
            }
        }
        assert_eq!(rows.len(), 35);
        assert_eq!(rows.len(), policy.rules.len());
        for (cells, rule) in rows.iter().zip(&policy.rules) {
            let p = cells
                .iter()
                .position(|c| matches!(*c, "TCP" | "UDP" | "TCP/IP"))
                .expect("protocol cell");
            let protocol = if cells[p] == "UDP" {
                Protocol::Udp
            } else {
                Protocol::Tcp
            };
            assert_eq!(rule.protocol, protocol, "{}", rule.slug);
            let ports: Vec<u16> = cells[p - 1]
                .split(',')
                .map(|s| s.trim().parse().unwrap())
                .collect();
            for port in &ports {
                assert!(rule.has_port(*port), "{}: port {port}", rule.slug);
            }
            let listed: usize = rule
                .ports
                .iter()
                .map(|r| usize::from(r.last - r.first) + 1)
                .sum();
            assert_eq!(listed, ports.len(), "{}", rule.slug);
            if p >= 2 {
                let name = cells[p - 2];
                assert!(rule.description.contains(name), "{}: {name:?}", rule.slug);
                if name.contains('.') {
                    let host = name.split("://").last().unwrap();
                    assert!(
                        rule.hostnames.iter().any(|h| h == host),
                        "{}: {host}",
                        rule.slug
                    );
                }
            }
            let networks = cells[p + 1..].join(" ");
            let ends: Vec<&str> = rule
                .from
                .iter()
                .chain(&rule.to)
                .map(|e| policy.endpoint_name(*e))
                .collect();
            let expect = |cond: bool, name: &str| {
                assert!(!cond || ends.contains(&name), "{}: {name}", rule.slug)
            };
            expect(networks.contains("Table 1"), "emis-n3");
            expect(networks.contains("Table 1,2"), "emis-n2-legacy");
            expect(networks.contains("Table 3"), "emis-internet");
            expect(networks.contains("Amazon Web Services"), "aws");
            expect(
                networks.contains("Practice Clinical Server"),
                "clinical-server",
            );
            expect(networks.contains("GP Surgery"), "surgery");
            expect(networks.contains("Local site(s)"), "local-sites");
        }
    }

    // ----- errors -----

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é = 1\nx", 3), (1, 3));
        assert_eq!(line_col("ab", 99), (1, 3));
    }

    #[test]
    fn display_format() {
        let e = error(&BASE.replace("protocol = \"tcp\"", "protocol = \"icmp\""));
        assert_eq!(
            e.to_string(),
            "t.toml:10:12: in `rule[0].protocol`: unknown protocol `icmp`\n  hint: use \"tcp\" or \"udp\""
        );
        let e = SpecError::new("x", "boom");
        assert_eq!(e.to_string(), "x: boom");
    }

    #[test]
    fn syntax_error() {
        let text = BASE.replace("ports = [443, \"8000-8010\"]", "ports = [443,, 80]");
        let e = error(&text);
        assert_err(
            &e,
            "t.toml",
            pos(&text, ", 80]"),
            "rule[0].ports",
            "TOML syntax",
        );
        let text = format!("{BASE}[[rule]]\nslug = \"b\"\nslug = \"c\"\n");
        let e = error(&text);
        assert_eq!(e.line, Some(17), "{e}");
        assert_eq!(e.field.as_deref(), Some("rule[1].slug"));
    }

    #[test]
    fn unknown_keys() {
        let text = BASE.replace(
            "direction = \"outbound\"",
            "direction = \"outbound\"\nprot = \"tcp\"",
        );
        let e = error(&text);
        assert_err(
            &e,
            "t.toml",
            pos(&text, "prot "),
            "rule[0].prot",
            "unknown key `prot`",
        );
        assert!(e.hint.unwrap().contains("slug"));

        let text = format!("{BASE}\n[site]\nlan = 1\n");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "site"),
            "site",
            "unknown key `site`",
        );

        let text = BASE.replace("description = \"second\"", "descr = \"second\"");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "descr "),
            "network \"n3\".prefixes[1].descr",
            "unknown key",
        );
    }

    /// Tables implied by dotted keys or `[a.b]` headers have no span of their own: errors
    /// inside them point at their keys.
    #[test]
    fn implied_tables_are_located() {
        let text = format!("{BASE}[site.roles]\nlan = 1\n");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "site"),
            "site",
            "unknown key `site`",
        );
        let text = "roles.lan = [\"192.168.10.0/24\"]\nroles.wifi = [\"10.9.0.0/16\"]\n";
        let e = load_site(BASE, &site_file(text)).unwrap_err();
        assert_err(
            &e,
            "site.toml",
            pos(text, "wifi"),
            "roles.wifi",
            "unknown site role `wifi`",
        );
        let text = "roles.lan = [\"192.168.10.0/24\"]\n";
        let policy = load_site(BASE, &site_file(text)).unwrap();
        assert_eq!(
            policy.role(Role::LAN),
            Some([ip("192.168.10.0/24")].as_slice())
        );
        let text = BASE.replace(
            "description = \"second\"",
            "description = \"second\", x.y = 1",
        );
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "x.y"),
            "network \"n3\".prefixes[1].x",
            "unknown key `x`",
        );
        let text = "[roles.lan]\nx = 1\n";
        let e = load_site(BASE, &site_file(text)).unwrap_err();
        assert_err(
            &e,
            "site.toml",
            pos(text, "[roles.lan]"),
            "roles.lan",
            "expected an array, found a table",
        );
    }

    #[test]
    fn wrong_types() {
        let text = BASE.replace("ports = [443, \"8000-8010\"]", "ports = 443");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "443"),
            "rule[0].ports",
            "expected an array, found an integer",
        );
        let text = BASE.replace("description = \"A\"", "description = 1979-05-27");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "1979"),
            "rule[0].description",
            "found a date-time",
        );
        let text = BASE.replace("from = [\"lan\"]", "from = [\"lan\", 3]");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "3]"),
            "rule[0].from[1]",
            "expected a string",
        );
        let text = BASE.replace("[[rule]]", "[rule]");
        let e = error(&text);
        assert_err(
            &e,
            "t.toml",
            pos(&text, "[rule]"),
            "rule",
            "expected an array, found a table",
        );
        assert!(e.hint.unwrap().contains("[[rule]]"));
        let text = BASE.replace("\"10.0.0.0/16\",", "10,");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "10,"),
            "network \"n3\".prefixes[0]",
            "expected a prefix string",
        );
    }

    #[test]
    fn missing_key_points_at_the_table() {
        let text = BASE.replace("slug = \"a\"\n", "");
        let e = error(&text);
        assert_eq!(e.field.as_deref(), Some("rule[0].slug"));
        assert_eq!(e.line, pos(&text, "[[rule]]").0, "{e}");
        assert!(e.message.contains("missing key `slug`"));
        let text = BASE.replace("scope = \"enforce\"\n", "");
        let e = error(&text);
        assert_eq!(
            (e.field.as_deref(), e.line),
            (Some("network \"n3\".scope"), Some(1)),
            "{e}"
        );
    }

    #[test]
    fn bad_prefixes() {
        let text = BASE.replace("10.0.0.0/16", "10.0.0/16");
        let e = error(&text);
        assert_err(
            &e,
            "t.toml",
            pos(&text, "\"10.0.0/16"),
            "network \"n3\".prefixes[0]",
            "invalid prefix `10.0.0/16`",
        );
        let text = BASE.replace("10.1.0.0/16", "10.1.0.1");
        let e = error(&text);
        assert_err(
            &e,
            "t.toml",
            pos(&text, "\"10.1.0.1"),
            "network \"n3\".prefixes[1].cidr",
            "invalid prefix",
        );
        assert_eq!(
            e.hint.as_deref(),
            Some("write a single address with its length: 10.1.0.1/32")
        );
        let text = BASE.replace("10.0.0.0/16", "10.0.0.1/16");
        let e = error(&text);
        assert_err(
            &e,
            "t.toml",
            pos(&text, "\"10.0.0.1/16"),
            "network \"n3\".prefixes[0]",
            "host bits set",
        );
        assert_eq!(e.hint.as_deref(), Some("did you mean 10.0.0.0/16?"));
        let text = BASE.replace("10.0.0.0/16", "2001:db8::1/32");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "\"2001"),
            "network \"n3\".prefixes[0]",
            "host bits set",
        );
    }

    #[test]
    fn bad_ports() {
        let cases = [
            ("[0]", "0]", "rule[0].ports[0]", "outside 1-65535"),
            (
                "[443, 70000]",
                "70000",
                "rule[0].ports[1]",
                "port 70000 is outside 1-65535",
            ),
            (
                "[\"9000-8000\"]",
                "\"9000",
                "rule[0].ports[0]",
                "runs backwards",
            ),
            (
                "[\"0-10\"]",
                "\"0-10",
                "rule[0].ports[0]",
                "outside 1-65535",
            ),
            (
                "[\"80-65536\"]",
                "\"80-",
                "rule[0].ports[0]",
                "outside 1-65535",
            ),
            (
                "[\"http\"]",
                "\"http",
                "rule[0].ports[0]",
                "invalid port range `http`",
            ),
            ("[1, 4.5]", "4.5", "rule[0].ports[1]", "found a float"),
            ("[]", "[]", "rule[0].ports", "no ports"),
            (
                "[\"400-500\", 22, 443]",
                "443]",
                "rule[0].ports[2]",
                "ports 443 overlap ports 400-500 at rule[0].ports[0]",
            ),
            (
                "[443, \"400-500\"]",
                "\"400",
                "rule[0].ports[1]",
                "ports 400-500 overlap ports 443 at rule[0].ports[0]",
            ),
        ];
        for (ports, needle, field, message) in cases {
            let text = BASE.replace("[443, \"8000-8010\"]", ports);
            assert_err(&error(&text), "t.toml", pos(&text, needle), field, message);
        }
        let policy =
            load(&BASE.replace("[443, \"8000-8010\"]", "[\"443\", \"8088 - 8092\", 65535]"))
                .unwrap();
        assert_eq!(
            policy.rules[0].ports,
            [
                PortRange {
                    first: 443,
                    last: 443
                },
                PortRange {
                    first: 8088,
                    last: 8092
                },
                PortRange {
                    first: 65535,
                    last: 65535
                }
            ]
        );
    }

    #[test]
    fn unknown_enums() {
        let text = BASE.replace("\"outbound\"", "\"outward\"");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "\"outward"),
            "rule[0].direction",
            "unknown direction `outward`",
        );
        let text = BASE.replace("\"enforce\"", "\"deny\"");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "\"deny"),
            "network \"n3\".scope",
            "unknown scope `deny`",
        );
        let text = BASE.replace("\"tcp\"", "\"TCP\"");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "\"TCP"),
            "rule[0].protocol",
            "unknown protocol `TCP`",
        );
    }

    #[test]
    fn bad_endpoints() {
        let text = BASE.replace("to = [\"n3\"]", "to = [\"n3\", \"emis-n3\"]");
        let e = error(&text);
        assert_err(
            &e,
            "t.toml",
            pos(&text, "\"emis-n3"),
            "rule[0].to[1]",
            "unknown network or role `emis-n3`",
        );
        assert!(e
            .hint
            .as_deref()
            .unwrap()
            .contains("networks: n3; site roles: lan, clinical-server"));
        let text = BASE.replace("from = [\"lan\"]", "from = [\"lan\", \"lan\"]");
        assert_err(
            &error(&text),
            "t.toml",
            pos_n(&text, "\"lan", 1),
            "rule[0].from[1]",
            "listed twice",
        );
        let text = BASE.replace("from = [\"lan\"]", "from = []");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "[]"),
            "rule[0].from",
            "empty `from`",
        );
        let text = BASE.replace("to = [\"n3\"]", "to = []");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "[]"),
            "rule[0].to",
            "empty `to`",
        );
    }

    #[test]
    fn bad_names() {
        let text = format!("{BASE}\n[[rule]]\nslug = \"a\"\n");
        let e = error(&text);
        assert_err(
            &e,
            "t.toml",
            pos_n(&text, "\"a\"", 1),
            "rule[1].slug",
            "duplicate rule slug `a`",
        );
        assert_eq!(
            e.hint.as_deref(),
            Some("rule \"a\" is already defined at line 8")
        );
        let text = BASE.replace("[[rule]]", "[[network]]\nname = \"n3\"\n\n[[rule]]");
        let e = error(&text);
        assert_err(
            &e,
            "t.toml",
            pos_n(&text, "\"n3\"", 1),
            "network[1].name",
            "duplicate network name `n3`",
        );
        assert_eq!(
            e.hint.as_deref(),
            Some("network \"n3\" is already defined at line 2")
        );
        let text = BASE.replace("name = \"n3\"", "name = \"lan\"");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "\"lan\""),
            "network[0].name",
            "is a site role",
        );
        let text = BASE.replace("slug = \"a\"", "slug = \"Rule A\"");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "\"Rule"),
            "rule[0].slug",
            "invalid slug `Rule A`",
        );
    }

    // ----- capacity -----

    fn networks(n: usize) -> String {
        (0..n)
            .map(|i| format!("[[network]]\nname = \"net{i}\"\nscope = \"count\"\ndescription = \"\"\nprefixes = [\"10.{i}.0.0/16\"]\n"))
            .collect()
    }

    fn rules(n: usize) -> String {
        (0..n)
            .map(|i| format!("[[rule]]\nslug = \"r{i}\"\ndescription = \"\"\nprotocol = \"tcp\"\nports = [{}]\ndirection = \"outbound\"\nfrom = [\"lan\"]\nto = [\"net0\"]\n", i + 1))
            .collect()
    }

    #[test]
    fn capacity_networks_and_rules() {
        let max_n = emis_common::MAX_NETWORKS as usize;
        let max_r = emis_common::MAX_RULES as usize;
        let ok = format!("{}{}", networks(max_n), rules(max_r));
        let policy = load(&ok).unwrap();
        assert_eq!((policy.networks.len(), policy.rules.len()), (max_n, max_r));

        let text = format!("{}{}", networks(max_n + 1), rules(1));
        let e = error(&text);
        assert_err(
            &e,
            "t.toml",
            pos_n(&text, "[[network]]", max_n),
            &format!("network[{max_n}]"),
            "33 networks",
        );
        let text = format!("{}{}", networks(1), rules(max_r + 1));
        let e = error(&text);
        assert_err(
            &e,
            "t.toml",
            pos_n(&text, "[[rule]]", max_r),
            &format!("rule[{max_r}]"),
            "257 rules",
        );
    }

    #[test]
    fn capacity_prefixes() {
        let limits = Limits {
            networks: 32,
            rules: 256,
            prefixes: 3,
        };
        let spec = Source::new("t.toml", BASE);
        let nets = |v: &[&str]| SiteOptions {
            site_nets: v.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        // 2 network prefixes + 1 distinct role prefix (duplicates across roles count once).
        load_with_limits(
            &spec,
            &nets(&["lan=192.168.0.0/24", "surgery=192.168.0.0/24", "lan=::/0"]),
            &limits,
        )
        .unwrap();
        let e = load_with_limits(
            &spec,
            &nets(&["lan=192.168.0.0/24", "surgery=192.168.1.0/24"]),
            &limits,
        )
        .unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.field.as_deref()),
            ("t.toml", Some("prefixes"))
        );
        assert!(e.message.starts_with("4 distinct IPv4 prefixes"), "{e}");
        let aws = SiteOptions {
            aws_ip_ranges: Some(Source::new(
                "ip.json",
                aws_json(&[("1.0.0.0/8", "r"), ("2.0.0.0/8", "r")], &[]),
            )),
            ..Default::default()
        };
        let text = format!("{BASE}[[network]]\nname = \"aws\"\nscope = \"count\"\ndescription = \"\"\naws_region = \"r\"\n");
        let e = load_with_limits(&Source::new("t.toml", text), &aws, &limits).unwrap_err();
        assert_eq!(e.file, "ip.json", "{e}");
    }

    // ----- site -----

    fn site_file(text: &str) -> SiteOptions {
        SiteOptions {
            site_file: Some(Source::new("site.toml", text)),
            ..Default::default()
        }
    }

    #[test]
    fn site_file_and_flags_combine() {
        let mut site = site_file(
            "[roles]\nlan = [\"192.168.10.0/24\"]\nclinical-server = [\"192.168.10.5/32\"]\n",
        );
        site.site_nets = vec![
            "lan=192.168.20.0/24".into(),
            "lan=192.168.10.0/24".into(),
            "surgery = 2001:db8::/64".into(),
        ];
        let policy = load_site(BASE, &site).unwrap();
        assert_eq!(
            policy.role(Role::LAN),
            Some([ip("192.168.10.0/24"), ip("192.168.20.0/24")].as_slice())
        );
        assert_eq!(
            policy.role(Role::CLINICAL_SERVER),
            Some([ip("192.168.10.5/32")].as_slice())
        );
        assert_eq!(
            policy.role(Role::SURGERY),
            Some([ip("2001:db8::/64")].as_slice())
        );
        assert_eq!(policy.role(Role::LOCAL_SITES), None);
        assert!(policy.warnings.is_empty(), "{:?}", policy.warnings);
    }

    #[test]
    fn site_errors() {
        let text = "[roles]\nlan = [\"192.168.10.0/24\"]\nwifi = [\"10.9.0.0/16\"]\n";
        let e = load_site(BASE, &site_file(text)).unwrap_err();
        assert_err(
            &e,
            "site.toml",
            pos(text, "wifi"),
            "roles.wifi",
            "unknown site role `wifi`",
        );
        let text = "[roles]\nlan = [\"192.168.10.0/24\", \"192.168.10.1/24\"]\n";
        let e = load_site(BASE, &site_file(text)).unwrap_err();
        assert_err(
            &e,
            "site.toml",
            pos(text, "\"192.168.10.1"),
            "roles.lan[1]",
            "host bits set",
        );
        let text = "[roles]\nlan = []\n";
        let e = load_site(BASE, &site_file(text)).unwrap_err();
        assert_err(&e, "site.toml", pos(text, "[]"), "roles.lan", "no prefixes");
        let text = "lan = [\"192.168.10.0/24\"]\n";
        let e = load_site(BASE, &site_file(text)).unwrap_err();
        assert_err(
            &e,
            "site.toml",
            pos(text, "lan"),
            "lan",
            "unknown key `lan`",
        );
        let text = "[roles]\nlan = [\"192.168.10.0/24\"\n";
        let e = load_site(BASE, &site_file(text)).unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("site.toml", Some(3)), "{e}");
        assert_eq!(e.field.as_deref(), Some("roles.lan"));

        for (arg, message) in [
            ("lan", "expected ROLE=CIDR"),
            ("wifi=10.0.0.0/8", "unknown site role `wifi`"),
            ("lan=10.0.0.0/33", "invalid prefix"),
            ("lan=10.0.0.1/8", "host bits set"),
        ] {
            let site = SiteOptions {
                site_nets: vec![arg.to_owned()],
                ..Default::default()
            };
            let e = load_site(BASE, &site).unwrap_err();
            assert_eq!(
                (e.file.as_str(), e.field.as_deref(), e.line),
                ("--site-net", Some(arg), None),
                "{e}"
            );
            assert!(e.message.contains(message), "{e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("--site-net: in `{arg}`: ")),
                "{e}"
            );
        }
    }

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

    // ----- ip-ranges.json -----

    fn aws_json(v4: &[(&str, &str)], v6: &[(&str, &str)]) -> String {
        let v4: Vec<String> = v4
            .iter()
            .map(|(p, r)| format!("{{\"ip_prefix\": \"{p}\", \"region\": \"{r}\", \"service\": \"AMAZON\", \"network_border_group\": \"{r}\"}}"))
            .collect();
        let v6: Vec<String> = v6
            .iter()
            .map(|(p, r)| format!("{{\"ipv6_prefix\": \"{p}\", \"region\": \"{r}\", \"service\": \"EC2\", \"network_border_group\": \"{r}\"}}"))
            .collect();
        format!(
            "{{\n\"syncToken\": \"1\",\n\"createDate\": \"2024-01-01-00-00-00\",\n\"prefixes\": [\n{}\n],\n\"ipv6_prefixes\": [\n{}\n]\n}}\n",
            v4.join(",\n"),
            v6.join(",\n")
        )
    }

    fn aws_site(json: String) -> SiteOptions {
        SiteOptions {
            aws_ip_ranges: Some(Source::new("ip-ranges.json", json)),
            ..Default::default()
        }
    }

    #[test]
    fn aws_ranges_filtered_by_region() {
        let json = aws_json(
            &[
                ("3.8.0.0/16", "eu-west-2"),
                ("3.5.140.0/22", "ap-northeast-2"),
                ("3.8.0.0/16", "eu-west-2"),
                ("18.130.0.0/16", "eu-west-2"),
                ("3.8.1.0/24", "eu-west-2"),
            ],
            &[
                ("2a05:d01c::/36", "eu-west-2"),
                ("2600:1f00::/24", "us-east-1"),
            ],
        );
        let policy = load_policy(&Source::default_spec(), &aws_site(json)).unwrap();
        let aws = &policy.networks[policy.network_id("aws").unwrap() as usize];
        assert_eq!(
            aws.prefixes,
            [
                ip("3.8.0.0/16"),
                ip("3.8.1.0/24"),
                ip("18.130.0.0/16"),
                ip("2a05:d01c::/36")
            ]
        );
        assert_eq!(
            policy.warnings,
            [
                "network \"aws\": 1 duplicate prefixes ignored (e.g. 3.8.0.0/16)",
                "network \"aws\": 1 prefixes lie inside another of its prefixes (e.g. 3.8.1.0/24 inside 3.8.0.0/16)"
            ]
        );
        // Without a file the network is empty; with a file lacking the region, a warning says so.
        let json = aws_json(&[("3.5.140.0/22", "ap-northeast-2")], &[]);
        let policy = load_policy(&Source::default_spec(), &aws_site(json)).unwrap();
        assert!(policy.networks[3].prefixes.is_empty());
        assert!(policy.warnings.contains(
            &"network \"aws\": ip-ranges.json has no prefixes for region \"eu-west-2\"".to_owned()
        ));
    }

    #[test]
    fn aws_errors() {
        let json = "{\n  \"prefixes\": [\n    {\"ip_prefix\": \"3.8.0.0/16\", \"region\": \"eu-west-2\"},\n    {\"ip_prefix\": 5, \"region\": \"x\"}\n  ]\n}\n";
        let e = load_policy(&Source::default_spec(), &aws_site(json.to_owned())).unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.line),
            ("ip-ranges.json", Some(4)),
            "{e}"
        );
        assert_eq!(e.field.as_deref(), Some("prefixes[1]"), "{e}");
        assert!(e.message.contains("invalid type"), "{e}");
        let json = "{\"prefixes\": [,]}";
        let e = load_policy(&Source::default_spec(), &aws_site(json.to_owned())).unwrap_err();
        assert_eq!((e.line, e.column), (Some(1), Some(15)), "{e}");
        assert_eq!(e.field.as_deref(), Some("prefixes"), "{e}");

        let json = aws_json(
            &[("3.8.0.0/16", "eu-west-2"), ("3.8.0.1/16", "eu-west-2")],
            &[],
        );
        let e = load_policy(&Source::default_spec(), &aws_site(json.clone())).unwrap_err();
        assert_err(
            &e,
            "ip-ranges.json",
            pos(&json, "3.8.0.1/16"),
            "prefixes[1].ip_prefix",
            "host bits set",
        );
        let json = aws_json(
            &[],
            &[("2a05:d01c::/36", "eu-west-2"), ("nonsense", "eu-west-2")],
        );
        let e = load_policy(&Source::default_spec(), &aws_site(json.clone())).unwrap_err();
        assert_err(
            &e,
            "ip-ranges.json",
            pos(&json, "nonsense"),
            "ipv6_prefixes[1].ipv6_prefix",
            "invalid IPv6 prefix",
        );
        // Entries of other regions are not read.
        let json = aws_json(&[("garbage", "us-east-1")], &[]);
        load_policy(&Source::default_spec(), &aws_site(json)).unwrap();
    }

    // ----- overlap -----

    #[test]
    fn overlapping_networks() {
        // An enforce network overlapping another network: an error naming both.
        let text = format!("{BASE}[[network]]\nname = \"other\"\nscope = \"count\"\ndescription = \"\"\nprefixes = [\"192.0.2.0/24\", \"10.1.2.0/24\"]\n");
        let e = error(&text);
        assert_err(
            &e,
            "t.toml",
            pos(&text, "\"10.1.2.0/24"),
            "network \"other\".prefixes[1]",
            "prefix 10.1.2.0/24 of network \"other\" lies inside 10.1.0.0/16 of network \"n3\"",
        );
        let text = format!("[[network]]\nname = \"big\"\nscope = \"count\"\ndescription = \"\"\nprefixes = [\"10.0.0.0/8\"]\n{BASE}");
        let e = error(&text);
        assert_err(
            &e,
            "t.toml",
            pos(&text, "\"10.0.0.0/16"),
            "network \"n3\".prefixes[0]",
            "lies inside 10.0.0.0/8 of network \"big\"",
        );
        let text = format!("{BASE}[[network]]\nname = \"same\"\nscope = \"enforce\"\ndescription = \"\"\nprefixes = [\"10.0.0.0/16\"]\n");
        let e = error(&text);
        assert_err(
            &e,
            "t.toml",
            pos_n(&text, "\"10.0.0.0/16", 1),
            "network \"same\".prefixes[0]",
            "prefix 10.0.0.0/16 is in both network \"same\" and network \"n3\"",
        );

        // An enforce network overlapping AWS data: the spec prefix is named.
        let text = format!("{BASE}[[network]]\nname = \"aws\"\nscope = \"count\"\ndescription = \"\"\naws_region = \"r\"\n");
        let json = aws_json(&[("10.0.0.0/8", "r")], &[]);
        let e = load_site(&text, &aws_site(json)).unwrap_err();
        assert_err(
            &e,
            "t.toml",
            pos(&text, "\"10.0.0.0/16"),
            "network \"n3\".prefixes[0]",
            "lies inside 10.0.0.0/8 of network \"aws\"",
        );
        let json = aws_json(&[("10.1.3.0/24", "r")], &[]);
        let e = load_site(&text, &aws_site(json)).unwrap_err();
        assert_err(
            &e,
            "t.toml",
            pos(&text, "\"10.1.0.0/16"),
            "network \"n3\".prefixes[1].cidr",
            "10.1.3.0/24 of network \"aws\" lies inside",
        );
    }

    #[test]
    fn overlap_warnings() {
        let text = format!(
            "{}[[network]]\nname = \"c1\"\nscope = \"count\"\ndescription = \"\"\nprefixes = [\"172.16.0.0/12\", \"172.16.0.0/12\", \"172.17.0.0/16\", \"fd00::/8\"]\n\
             [[network]]\nname = \"c2\"\nscope = \"count\"\ndescription = \"\"\nprefixes = [\"172.18.0.0/16\", \"172.19.0.0/16\", \"fd00:1::/32\"]\n",
            BASE.replace("[[rule]]", "# rules\n[[rule]]")
        );
        let site = SiteOptions {
            site_nets: vec![
                "lan=10.0.0.0/8".into(),
                "surgery=10.0.5.0/24".into(),
                "lan=172.16.0.0/16".into(),
            ],
            ..Default::default()
        };
        let policy = load_site(&text, &site).unwrap();
        assert_eq!(
            policy.networks[1].prefixes,
            [ip("172.16.0.0/12"), ip("172.17.0.0/16"), ip("fd00::/8")]
        );
        assert_eq!(
            policy.warnings,
            [
                "network \"c1\": 1 duplicate prefixes ignored (e.g. 172.16.0.0/12)",
                "network \"c1\": 1 prefixes lie inside another of its prefixes (e.g. 172.17.0.0/16 inside 172.16.0.0/12)",
                "count-scope networks \"c1\" and \"c2\" overlap in 3 prefixes (e.g. 172.18.0.0/16 and 172.16.0.0/12)",
                "site role lan: 2 prefixes overlap enforce-scope network \"n3\" (e.g. 10.0.0.0/16 and 10.0.0.0/8); \
                 addresses inside enforce-scope networks never count as a site role",
                "site role surgery: 1 prefixes overlap enforce-scope network \"n3\" (e.g. 10.0.5.0/24 and 10.0.0.0/16); \
                 addresses inside enforce-scope networks never count as a site role",
            ]
        );
    }

    #[test]
    fn network_without_prefixes_warns() {
        let policy = load(&BASE.replace(
            "prefixes = [\"10.0.0.0/16\", { cidr = \"10.1.0.0/16\", description = \"second\" }]\n",
            "",
        ))
        .unwrap();
        assert_eq!(
            policy.warnings,
            ["network \"n3\" has no prefixes; rules naming it never match"]
        );
    }

    // ----- shadowed rules -----

    fn rule(slug: &str, protocol: &str, ports: &str, from: &str) -> String {
        format!(
            "[[rule]]\nslug = \"{slug}\"\ndescription = \"\"\nprotocol = \"{protocol}\"\nports = {ports}\ndirection = \"outbound\"\nfrom = {from}\nto = [\"n3\"]\n"
        )
    }

    #[test]
    fn shadowed_rules() {
        let text = [
            BASE.to_owned(),
            rule("b", "tcp", "[8005, \"8009-8010\"]", "[\"lan\"]"),
            rule("c", "tcp", "[8011]", "[\"lan\"]"),
            rule("d", "udp", "[443]", "[\"lan\"]"),
            rule("e", "tcp", "[443]", "[\"lan\", \"surgery\"]"),
            rule("f", "tcp", "[443]", "[\"surgery\", \"lan\"]"),
            rule("g", "tcp", "[\"8009-8012\"]", "[\"lan\"]"),
            rule("h", "tcp", "[\"100-200\", \"201-300\"]", "[\"surgery\"]"),
            rule("i", "tcp", "[\"150-250\"]", "[\"surgery\"]"),
        ]
        .concat();
        let policy = load(&text).unwrap();
        let shadow = |b: &str, a: &str| {
            let id = |slug: &str| policy.rules.iter().position(|r| r.slug == slug).unwrap() as u32;
            (id(b), id(a))
        };
        assert_eq!(
            policy.shadowed,
            [shadow("b", "a"), shadow("f", "e"), shadow("i", "h")]
        );
        assert!(policy.warnings.is_empty(), "{:?}", policy.warnings);

        // Different direction: not shadowed, unless the earlier rule is local (both ways).
        let inbound = rule("j", "tcp", "[443]", "[\"lan\"]").replace("outbound", "inbound");
        assert!(load(&format!("{BASE}{inbound}"))
            .unwrap()
            .shadowed
            .is_empty());
        let local = BASE.replace("outbound", "local");
        let later = rule("j", "tcp", "[443]", "[\"lan\"]");
        let policy = load(&format!("{local}{later}")).unwrap();
        assert_eq!(policy.shadowed, [(1, 0)]);
        assert!(policy.warnings.is_empty(), "{:?}", policy.warnings);
    }

    /// AWS-scale input loads whole; how fast is the benchmark's business (`cargo xtask bench`).
    #[test]
    fn many_aws_prefixes() {
        let n = 200_000u32;
        let mut json = String::from("{\"syncToken\":\"1\",\"createDate\":\"x\",\"prefixes\":[");
        for i in 0..n {
            let a = std::net::Ipv4Addr::from((i << 8) | (1 << 31));
            let region = if i % 2 == 0 { "eu-west-2" } else { "us-east-1" };
            if i > 0 {
                json.push(',');
            }
            json.push_str(&format!(
                "{{\"ip_prefix\":\"{a}/24\",\"region\":\"{region}\",\"service\":\"AMAZON\",\"network_border_group\":\"{region}\"}}"
            ));
        }
        json.push_str("],\"ipv6_prefixes\":[]}");
        let policy = load_policy(&Source::default_spec(), &aws_site(json)).unwrap();
        assert_eq!(policy.networks[3].prefixes.len(), n as usize / 2);
        assert!(policy.networks[3]
            .prefixes
            .iter()
            .all(|p| p.prefix_len() == 24));
    }

    #[test]
    fn flows_and_icmp_options() {
        let p =
            load("[flows]\ntcp_syn_timeout = 5\nudp_timeout = 90\n[icmp]\necho = true\n").unwrap();
        assert_eq!(p.options.timeouts.tcp_syn, 5);
        assert_eq!(p.options.timeouts.udp, 90);
        assert_eq!(p.options.timeouts.tcp_established, 7200);
        assert!(p.options.icmp_echo);
        let defaults = load_policy(&Source::default_spec(), &SiteOptions::default()).unwrap();
        assert_eq!(defaults.options, crate::policy::Options::default());

        let e = error("[flows]\ntcp_syn_timeout = 0\n");
        assert_eq!(
            (e.line, e.column, e.field.as_deref()),
            (Some(2), Some(19), Some("flows.tcp_syn_timeout"))
        );
        let e = error("[flows]\nudp_timeout = \"60s\"\n");
        assert_eq!(e.field.as_deref(), Some("flows.udp_timeout"));
        assert!(e.message.contains("whole number of seconds"), "{e}");
        let e = error("[flows]\nidle = 3\n");
        assert_eq!((e.line, e.field.as_deref()), (Some(2), Some("flows.idle")));
        let e = error("[icmp]\necho = 1\n");
        assert_eq!((e.line, e.field.as_deref()), (Some(2), Some("icmp.echo")));
    }
}
