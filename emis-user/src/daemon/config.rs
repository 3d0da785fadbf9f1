//! The daemon config file (`emis run --config /etc/emis/emis.toml`), and how it merges
//! with the command line: a flag given overrides the file's key, a key absent from both
//! takes the default. Relative paths in the file resolve against the file's directory.
//! Errors carry file:line:column and the key, like spec errors.
//!
//! A reload re-reads the file for the policy inputs (`spec`, `site`, `site_nets`,
//! `aws_ip_ranges`), the drop-event settings (`event_rate`, `sample_allowed`) and the DNS
//! learning settings (`dns_grace`, `dns_ttl_floor`, `dns_ttl_ceiling`, `dns_rate`), and
//! applies them; the other keys take effect when `emis run` restarts, and a reload that
//! finds one of them changed says so ([`restart_keys_changed`]).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use emis_policy::{
    policy::{Mode, Replies},
    spec::{SiteOptions, Source, SpecError},
};

use super::{links::AttachMode, state::Sources, DEFAULT_PIN_DIR, DEFAULT_STATE_DIR};
use crate::kernel_log::{parse_match, KernelLog, TraceFilter};

/// Every key the file may hold.
pub const KEYS: [&str; 22] = [
    "interfaces",
    "spec",
    "site",
    "site_nets",
    "aws_ip_ranges",
    "mode",
    "replies",
    "flow_table_size",
    "metrics_addr",
    "xdp_mode",
    "netns",
    "pin_dir",
    "state_dir",
    "event_rate",
    "sample_allowed",
    "bpf_stats",
    "kernel_log",
    "kernel_log_match",
    "dns_grace",
    "dns_ttl_floor",
    "dns_ttl_ceiling",
    "dns_rate",
];

pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9469";

/// A string value and where it is in the file.
type Located = Option<(String, Option<std::ops::Range<usize>>)>;

/// Settings as given, by the file or by flags: `None` where not given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Given {
    pub interfaces: Option<Vec<String>>,
    pub spec: Option<PathBuf>,
    pub site: Option<PathBuf>,
    pub site_nets: Option<Vec<String>>,
    pub aws_ip_ranges: Option<PathBuf>,
    pub mode: Option<Mode>,
    pub replies: Option<Replies>,
    pub flow_table_size: Option<u32>,
    pub metrics_addr: Option<SocketAddr>,
    pub xdp_mode: Option<AttachMode>,
    pub netns: Option<String>,
    pub pin_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub event_rate: Option<u32>,
    pub sample_allowed: Option<u32>,
    pub bpf_stats: Option<bool>,
    pub kernel_log: Option<KernelLog>,
    pub kernel_log_match: Option<ipnet::IpNet>,
    pub dns_grace: Option<u64>,
    pub dns_ttl_floor: Option<u64>,
    pub dns_ttl_ceiling: Option<u64>,
    pub dns_rate: Option<u32>,
}

impl Given {
    /// `self` where given, else `under`.
    pub fn over(self, under: Given) -> Given {
        Given {
            interfaces: self.interfaces.or(under.interfaces),
            spec: self.spec.or(under.spec),
            site: self.site.or(under.site),
            site_nets: self.site_nets.or(under.site_nets),
            aws_ip_ranges: self.aws_ip_ranges.or(under.aws_ip_ranges),
            mode: self.mode.or(under.mode),
            replies: self.replies.or(under.replies),
            flow_table_size: self.flow_table_size.or(under.flow_table_size),
            metrics_addr: self.metrics_addr.or(under.metrics_addr),
            xdp_mode: self.xdp_mode.or(under.xdp_mode),
            netns: self.netns.or(under.netns),
            pin_dir: self.pin_dir.or(under.pin_dir),
            state_dir: self.state_dir.or(under.state_dir),
            event_rate: self.event_rate.or(under.event_rate),
            sample_allowed: self.sample_allowed.or(under.sample_allowed),
            bpf_stats: self.bpf_stats.or(under.bpf_stats),
            kernel_log: self.kernel_log.or(under.kernel_log),
            kernel_log_match: self.kernel_log_match.or(under.kernel_log_match),
            dns_grace: self.dns_grace.or(under.dns_grace),
            dns_ttl_floor: self.dns_ttl_floor.or(under.dns_ttl_floor),
            dns_ttl_ceiling: self.dns_ttl_ceiling.or(under.dns_ttl_ceiling),
            dns_rate: self.dns_rate.or(under.dns_rate),
        }
    }
}

/// Everything `emis run` needs, with defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSettings {
    /// What a reload re-reads (the config file and the flags that override it).
    pub sources: Sources,
    pub interfaces: Vec<String>,
    pub mode: Mode,
    pub replies: Replies,
    pub flow_table_size: u32,
    pub metrics_addr: SocketAddr,
    pub xdp_mode: AttachMode,
    pub netns: Option<String>,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Drop events a second each CPU may produce (`--event-rate`).
    pub event_rate: u32,
    /// N: one allowed packet in N produces an event (`--sample-allowed 1/N`); 0: none.
    pub sample_allowed: u32,
    /// The kernel's BPF run-time statistics on while the daemon runs (`--bpf-stats`).
    pub bpf_stats: bool,
    /// The kernel log's per-decision trace (`--kernel-log debug`), for the packets this
    /// selects (`--kernel-log-match`); `None`: off.
    pub kernel_log: Option<TraceFilter>,
    /// How long a name learned from DNS is kept (`--dns-grace`, `--dns-ttl-floor`,
    /// `--dns-ttl-ceiling`).
    pub dns_expiry: emis_policy::dns::Expiry,
    /// DNS responses a second each CPU hands to the daemon (`--dns-rate`).
    pub dns_rate: u32,
}

/// The DNS learning settings, which a reload re-reads and applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsSettings {
    pub expiry: emis_policy::dns::Expiry,
    pub rate: u32,
}

impl DnsSettings {
    /// The given values over the defaults; a floor above the ceiling is an error (the
    /// file's own pair is caught with its line by [`parse`]; this catches a flag set
    /// against the file's other key).
    fn of(given: &Given, config: Option<&Path>) -> Result<DnsSettings, SpecError> {
        let default = emis_policy::dns::Expiry::default();
        let expiry = emis_policy::dns::Expiry {
            grace_s: given.dns_grace.unwrap_or(default.grace_s),
            floor_s: given.dns_ttl_floor.unwrap_or(default.floor_s),
            ceiling_s: given.dns_ttl_ceiling.unwrap_or(default.ceiling_s),
        };
        if expiry.floor_s > expiry.ceiling_s {
            let mut err = SpecError::new(
                config.map_or("command line".into(), |c| c.display().to_string()),
                format!(
                    "the DNS TTL floor ({} s) is above the ceiling ({} s)",
                    expiry.floor_s, expiry.ceiling_s
                ),
            );
            err.field = Some("dns_ttl_floor".into());
            err.hint = Some(
                "make --dns-ttl-floor / dns_ttl_floor at most --dns-ttl-ceiling / dns_ttl_ceiling"
                    .into(),
            );
            return Err(err);
        }
        Ok(DnsSettings {
            expiry,
            rate: given.dns_rate.unwrap_or(emis_common::DEFAULT_DNS_RATE),
        })
    }

    /// The settings as a reload finds them: the flags `emis run` was given over the config
    /// file as it is now, over the defaults.
    pub fn reread(sources: &Sources) -> Result<DnsSettings, SpecError> {
        let file = sources
            .config
            .as_deref()
            .map(read)
            .transpose()?
            .unwrap_or_default();
        DnsSettings::of(&sources.flags().over(file), sources.config.as_deref())
    }

    /// For the reload's report: "grace 120 s, TTL floor 30 s, ceiling 86400 s, 1000
    /// responses/s a CPU".
    pub fn describe(&self) -> String {
        format!(
            "grace {} s, TTL floor {} s, ceiling {} s, {} responses/s a CPU",
            self.expiry.grace_s, self.expiry.floor_s, self.expiry.ceiling_s, self.rate
        )
    }
}

/// The drop-event settings, which a reload re-reads and applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventSettings {
    pub event_rate: u32,
    pub sample_allowed: u32,
}

impl EventSettings {
    fn of(given: &Given) -> EventSettings {
        EventSettings {
            event_rate: given.event_rate.unwrap_or(emis_common::DEFAULT_EVENT_RATE),
            sample_allowed: given.sample_allowed.unwrap_or(0),
        }
    }

    /// The settings as a reload finds them: the flags `emis run` was given (kept in
    /// `sources`) over the config file as it is now, over the defaults.
    pub fn reread(sources: &Sources) -> Result<EventSettings, SpecError> {
        let file = sources
            .config
            .as_deref()
            .map(read)
            .transpose()?
            .unwrap_or_default();
        Ok(EventSettings::of(&sources.flags().over(file)))
    }

    /// `1/N`, or `off`.
    pub fn sampling(&self) -> String {
        match self.sample_allowed {
            0 => "off".into(),
            n => format!("1/{n}"),
        }
    }
}

impl RunSettings {
    pub fn events(&self) -> EventSettings {
        EventSettings {
            event_rate: self.event_rate,
            sample_allowed: self.sample_allowed,
        }
    }

    pub fn dns(&self) -> DnsSettings {
        DnsSettings {
            expiry: self.dns_expiry,
            rate: self.dns_rate,
        }
    }
}

/// The keys that take effect only at a restart whose value in the config file now
/// differs from the running daemon's, for a reload to report.
pub fn restart_keys_changed(settings: &RunSettings) -> Vec<&'static str> {
    let Some(file) = settings
        .sources
        .config
        .as_deref()
        .and_then(|p| read(p).ok())
    else {
        return Vec::new();
    };
    // A key a flag overrides cannot change through the file.
    let flags = &settings.sources;
    let mut changed = Vec::new();
    if flags.bpf_stats.is_none() && file.bpf_stats.unwrap_or(false) != settings.bpf_stats {
        changed.push("bpf_stats");
    }
    if flags.kernel_log.is_none()
        && (file.kernel_log.unwrap_or_default() == KernelLog::Debug)
            != settings.kernel_log.is_some()
    {
        changed.push("kernel_log");
    }
    if flags.kernel_log_match.is_none()
        && settings.kernel_log.is_some()
        && file.kernel_log_match != settings.kernel_log.and_then(|f| f.prefix)
    {
        changed.push("kernel_log_match");
    }
    changed
}

impl RunSettings {
    /// Merges the flags over the config file (if any) over the defaults.
    pub fn resolve(config: Option<&Path>, flags: Given) -> Result<RunSettings, SpecError> {
        let file = config.map(read).transpose()?.unwrap_or_default();
        let sources = Sources {
            config: config.map(Path::to_path_buf),
            spec: flags.spec.clone(),
            site: flags.site.clone(),
            site_nets: flags.site_nets.clone(),
            aws_ip_ranges: flags.aws_ip_ranges.clone(),
            event_rate: flags.event_rate,
            sample_allowed: flags.sample_allowed,
            bpf_stats: flags.bpf_stats,
            kernel_log: flags.kernel_log,
            kernel_log_match: flags.kernel_log_match,
            dns_grace: flags.dns_grace,
            dns_ttl_floor: flags.dns_ttl_floor,
            dns_ttl_ceiling: flags.dns_ttl_ceiling,
            dns_rate: flags.dns_rate,
        };
        let given = flags.over(file);
        let events = EventSettings::of(&given);
        let dns = DnsSettings::of(&given, config)?;
        let interfaces = given.interfaces.unwrap_or_default();
        if interfaces.is_empty() {
            let mut err = SpecError::new(
                config.map_or("--iface".into(), |c| c.display().to_string()),
                "no interface to attach to",
            );
            err.hint = Some(
                "give --iface IF (repeatable) or `interfaces = [\"eth0\"]` in the config file"
                    .into(),
            );
            return Err(err);
        }
        Ok(RunSettings {
            sources,
            interfaces,
            mode: given.mode.unwrap_or(Mode::Enforce),
            replies: given.replies.unwrap_or(Replies::Stateful),
            flow_table_size: given
                .flow_table_size
                .unwrap_or(emis_common::DEFAULT_FLOW_TABLE_SIZE),
            metrics_addr: given
                .metrics_addr
                .unwrap_or_else(|| DEFAULT_METRICS_ADDR.parse().expect("a valid address")),
            xdp_mode: given.xdp_mode.unwrap_or(AttachMode::Auto),
            netns: given.netns,
            pin_dir: given.pin_dir.unwrap_or_else(|| DEFAULT_PIN_DIR.into()),
            state_dir: given.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            event_rate: events.event_rate,
            sample_allowed: events.sample_allowed,
            bpf_stats: given.bpf_stats.unwrap_or(false),
            kernel_log: (given.kernel_log.unwrap_or_default() == KernelLog::Debug).then_some(
                TraceFilter {
                    prefix: given.kernel_log_match,
                },
            ),
            dns_expiry: dns.expiry,
            dns_rate: dns.rate,
        })
    }
}

/// The spec and site inputs named by `sources` (re-reading the config file if there is
/// one), read now: what `emis run` starts with and what a reload re-reads.
pub fn policy_inputs(sources: &Sources) -> Result<(Source, SiteOptions), SpecError> {
    let file = sources
        .config
        .as_deref()
        .map(read)
        .transpose()?
        .unwrap_or_default();
    let spec_path = sources.spec.clone().or(file.spec);
    let site_path = sources.site.clone().or(file.site);
    let aws_path = sources.aws_ip_ranges.clone().or(file.aws_ip_ranges);
    let spec = match &spec_path {
        Some(path) => Source::read(path)?,
        None => Source::default_spec(),
    };
    let site = SiteOptions {
        site_file: site_path.as_deref().map(Source::read).transpose()?,
        site_nets: sources
            .site_nets
            .clone()
            .or(file.site_nets)
            .unwrap_or_default(),
        aws_ip_ranges: aws_path.as_deref().map(Source::stream).transpose()?,
    };
    Ok((spec, site))
}

/// Reads and checks a config file.
pub fn read(path: &Path) -> Result<Given, SpecError> {
    let source = Source::read(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&source, base)
}

/// Parses a config file's text; relative paths resolve against `base`.
pub fn parse(source: &Source, base: &Path) -> Result<Given, SpecError> {
    let text = &source.text;
    let doc = toml_edit::ImDocument::parse(text.as_str()).map_err(|e| {
        let mut err = SpecError::new(&source.name, e.message().trim().to_string());
        locate(&mut err, text, e.span().map_or(0, |s| s.start));
        err
    })?;
    let table = doc.as_table();
    let err = |key: &str, span: Option<std::ops::Range<usize>>, message: String| {
        let mut err = SpecError::new(&source.name, message);
        err.field = Some(key.to_string());
        locate(&mut err, text, span.map_or(0, |s| s.start));
        err
    };
    for (key, item) in table.iter() {
        if !KEYS.contains(&key) {
            let span = table
                .get_key_value(key)
                .and_then(|(k, _)| k.span())
                .or_else(|| item.span());
            let mut e = err(key, span, format!("unknown key `{key}`"));
            e.hint = Some(format!("the keys are: {}", KEYS.join(", ")));
            return Err(e);
        }
    }
    let value = |key: &str| -> Option<(&toml_edit::Value, Option<std::ops::Range<usize>>)> {
        let item = table.get(key)?;
        let value = item.as_value();
        value.map(|v| (v, v.span()))
    };
    let wrong_type = |key: &str, want: &str| -> SpecError {
        let span = table.get(key).and_then(|i| i.span());
        err(key, span, format!("`{key}` must be {want}"))
    };
    let string = |key: &str| -> Result<Located, SpecError> {
        if table.get(key).is_none() {
            return Ok(None);
        }
        match value(key) {
            Some((toml_edit::Value::String(s), span)) => Ok(Some((s.value().clone(), span))),
            _ => Err(wrong_type(key, "a string")),
        }
    };
    let strings = |key: &str| -> Result<Option<Vec<String>>, SpecError> {
        if table.get(key).is_none() {
            return Ok(None);
        }
        let Some((toml_edit::Value::Array(array), _)) = value(key) else {
            return Err(wrong_type(key, "an array of strings"));
        };
        array
            .iter()
            .map(|v| match v {
                toml_edit::Value::String(s) => Ok(s.value().clone()),
                other => Err(err(
                    key,
                    other.span(),
                    format!("`{key}` must be an array of strings"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    };
    let path = |key: &str| -> Result<Option<PathBuf>, SpecError> {
        Ok(string(key)?.map(|(s, _)| base.join(s)))
    };
    fn parsed<T>(
        key: &str,
        found: Located,
        parse: impl Fn(&str) -> Result<T, String>,
        err: impl Fn(&str, Option<std::ops::Range<usize>>, String) -> SpecError,
    ) -> Result<Option<T>, SpecError> {
        found
            .map(|(s, span)| parse(&s).map_err(|m| err(key, span, m)))
            .transpose()
    }
    let integer = |key: &str, min: i64| -> Result<Option<u32>, SpecError> {
        match table.get(key) {
            None => Ok(None),
            Some(_) => match value(key) {
                Some((toml_edit::Value::Integer(n), span)) => {
                    let n = *n.value();
                    if !(min..=u32::MAX as i64).contains(&n) {
                        return Err(err(
                            key,
                            span,
                            format!("`{key}` must be between {min} and {}", u32::MAX),
                        ));
                    }
                    Ok(Some(n as u32))
                }
                _ => Err(wrong_type(key, "an integer")),
            },
        }
    };
    let boolean = |key: &str| -> Result<Option<bool>, SpecError> {
        match table.get(key) {
            None => Ok(None),
            Some(_) => match value(key) {
                Some((toml_edit::Value::Boolean(b), _)) => Ok(Some(*b.value())),
                _ => Err(wrong_type(key, "true or false")),
            },
        }
    };
    let flow_table_size = integer("flow_table_size", 1)?;
    let seconds = |key: &str| Ok::<_, SpecError>(integer(key, 0)?.map(u64::from));
    let (dns_ttl_floor, dns_ttl_ceiling) = (seconds("dns_ttl_floor")?, seconds("dns_ttl_ceiling")?);
    if let (Some(floor), Some(ceiling)) = (dns_ttl_floor, dns_ttl_ceiling) {
        if floor > ceiling {
            let mut e = err(
                "dns_ttl_floor",
                value("dns_ttl_floor").and_then(|(_, span)| span),
                format!("`dns_ttl_floor` ({floor}) is above `dns_ttl_ceiling` ({ceiling})"),
            );
            e.hint = Some("the floor is the shortest time a learned name is kept, the ceiling the longest: make the floor at most the ceiling".into());
            return Err(e);
        }
    }
    Ok(Given {
        interfaces: strings("interfaces")?,
        spec: path("spec")?,
        site: path("site")?,
        site_nets: strings("site_nets")?,
        aws_ip_ranges: path("aws_ip_ranges")?,
        mode: parsed(
            "mode",
            string("mode")?,
            |s| s.parse::<Mode>().map_err(|e| e.to_string()),
            err,
        )?,
        replies: parsed(
            "replies",
            string("replies")?,
            |s| s.parse::<Replies>().map_err(|e| e.to_string()),
            err,
        )?,
        flow_table_size,
        metrics_addr: parsed(
            "metrics_addr",
            string("metrics_addr")?,
            |s| {
                s.parse::<SocketAddr>().map_err(|e| {
                    format!("`{s}` is not an address and port ({e}), e.g. 127.0.0.1:9469")
                })
            },
            err,
        )?,
        xdp_mode: parsed("xdp_mode", string("xdp_mode")?, str::parse, err)?,
        netns: string("netns")?.map(|(s, _)| s),
        pin_dir: path("pin_dir")?,
        state_dir: path("state_dir")?,
        event_rate: integer("event_rate", 0)?,
        sample_allowed: parsed(
            "sample_allowed",
            string("sample_allowed")?,
            parse_sample,
            err,
        )?,
        bpf_stats: boolean("bpf_stats")?,
        kernel_log: parsed("kernel_log", string("kernel_log")?, str::parse, err)?,
        kernel_log_match: parsed(
            "kernel_log_match",
            string("kernel_log_match")?,
            parse_match,
            err,
        )?,
        dns_grace: seconds("dns_grace")?,
        dns_ttl_floor,
        dns_ttl_ceiling,
        dns_rate: integer("dns_rate", 0)?,
    })
}

/// `1/N` as N, for `--sample-allowed` and the `sample_allowed` key.
pub fn parse_sample(text: &str) -> Result<u32, String> {
    text.strip_prefix("1/")
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("`{text}` is not 1/N with N a positive whole number (e.g. 1/100)"))
}

fn locate(err: &mut SpecError, text: &str, offset: usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    err.line = Some(line as u32);
    err.column = Some(before[line_start..].chars().count() as u32 + 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Given, SpecError> {
        parse(&Source::new("emis.toml", text), Path::new("/etc/emis"))
    }

    #[test]
    fn every_key_parses_and_relative_paths_resolve_against_the_file() {
        let given = parse_text(
            r#"
interfaces = ["eth0", "eth1"]
spec = "spec.toml"
site = "/srv/site.toml"
site_nets = ["lan=192.168.10.0/24"]
aws_ip_ranges = "ip-ranges.json"
mode = "audit"
replies = "stateless"
flow_table_size = 1024
metrics_addr = "127.0.0.1:9999"
xdp_mode = "skb"
netns = "gw"
pin_dir = "/sys/fs/bpf/x"
state_dir = "/run/x"
event_rate = 50
sample_allowed = "1/100"
bpf_stats = true
kernel_log = "debug"
kernel_log_match = "192.168.10.0/24"
dns_grace = 60
dns_ttl_floor = 10
dns_ttl_ceiling = 3600
dns_rate = 200
"#,
        )
        .unwrap();
        assert_eq!(
            (
                given.dns_grace,
                given.dns_ttl_floor,
                given.dns_ttl_ceiling,
                given.dns_rate
            ),
            (Some(60), Some(10), Some(3600), Some(200))
        );
        assert_eq!(given.interfaces.unwrap(), ["eth0", "eth1"]);
        assert_eq!(given.spec.unwrap(), Path::new("/etc/emis/spec.toml"));
        assert_eq!(given.site.unwrap(), Path::new("/srv/site.toml"));
        assert_eq!(given.mode, Some(Mode::Audit));
        assert_eq!(given.replies, Some(Replies::Stateless));
        assert_eq!(given.flow_table_size, Some(1024));
        assert_eq!(given.xdp_mode, Some(AttachMode::Skb));
        assert_eq!(given.netns.as_deref(), Some("gw"));
        assert_eq!(given.event_rate, Some(50));
        assert_eq!(given.sample_allowed, Some(100));
        assert_eq!(given.bpf_stats, Some(true));
        assert_eq!(given.kernel_log, Some(KernelLog::Debug));
        assert_eq!(
            given.kernel_log_match.unwrap().to_string(),
            "192.168.10.0/24"
        );
        let e = parse_text("kernel_log = \"trace\"\n").unwrap_err();
        assert!(e.to_string().contains("off or debug"), "{e}");
        let e = parse_text("kernel_log_match = \"lan\"\n").unwrap_err();
        assert!(e.to_string().contains("not an address"), "{e}");
    }

    #[test]
    fn event_keys_are_checked_like_their_flags() {
        let e = parse_text("event_rate = -1\n").unwrap_err();
        assert!(e.to_string().contains("between 0 and"), "{e}");
        let e = parse_text("event_rate = \"fast\"\n").unwrap_err();
        assert!(
            e.to_string().contains("`event_rate` must be an integer"),
            "{e}"
        );
        let e = parse_text("\nsample_allowed = \"1/0\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.field.as_deref()),
            (Some(2), Some("sample_allowed"))
        );
        assert!(e.to_string().contains("not 1/N"), "{e}");
        let e = parse_text("bpf_stats = \"yes\"\n").unwrap_err();
        assert!(e.to_string().contains("true or false"), "{e}");
        assert_eq!(parse_text("event_rate = 0\n").unwrap().event_rate, Some(0));
    }

    #[test]
    fn dns_keys_are_checked_and_a_floor_above_the_ceiling_is_refused_where_it_is() {
        let e = parse_text("interfaces = [\"eth0\"]\ndns_ttl_floor = 600\ndns_ttl_ceiling = 300\n")
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("emis.toml:2:17: in `dns_ttl_floor`: `dns_ttl_floor` (600) is above `dns_ttl_ceiling` (300)"),
            "{e}"
        );
        assert!(e.hint.is_some());
        let e = parse_text("dns_grace = -5\n").unwrap_err();
        assert!(e.to_string().contains("between 0 and"), "{e}");
        let e = parse_text("dns_rate = \"fast\"\n").unwrap_err();
        assert!(
            e.to_string().contains("`dns_rate` must be an integer"),
            "{e}"
        );
        // A floor equal to the ceiling is fine.
        let given = parse_text("dns_ttl_floor = 60\ndns_ttl_ceiling = 60\n").unwrap();
        assert_eq!(given.dns_ttl_floor, Some(60));

        // A flag set against the file's other key: refused when the settings resolve.
        let dir = std::env::temp_dir().join(format!("emis-config-dns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("emis.toml");
        std::fs::write(&path, "interfaces = [\"eth0\"]\ndns_ttl_ceiling = 300\n").unwrap();
        let flags = Given {
            dns_ttl_floor: Some(600),
            ..Given::default()
        };
        let e = RunSettings::resolve(Some(&path), flags).unwrap_err();
        assert!(
            e.to_string()
                .contains("floor (600 s) is above the ceiling (300 s)"),
            "{e}"
        );
        let defaults = RunSettings::resolve(Some(&path), Given::default()).unwrap();
        assert_eq!(
            (defaults.dns_expiry.grace_s, defaults.dns_expiry.floor_s),
            (120, 30)
        );
        assert_eq!(defaults.dns_expiry.ceiling_s, 300);
        assert_eq!(defaults.dns_rate, emis_common::DEFAULT_DNS_RATE);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_reload_rereads_the_dns_keys_under_the_flags_it_was_started_with() {
        let dir = std::env::temp_dir().join(format!("emis-config-dnsr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("emis.toml");
        std::fs::write(
            &path,
            "interfaces = [\"eth0\"]\ndns_grace = 5\ndns_rate = 50\n",
        )
        .unwrap();
        let flags = Given {
            dns_rate: Some(7),
            ..Given::default()
        };
        let started = RunSettings::resolve(Some(&path), flags).unwrap();
        assert_eq!((started.dns_expiry.grace_s, started.dns_rate), (5, 7));
        std::fs::write(
            &path,
            "interfaces = [\"eth0\"]\ndns_grace = 9\ndns_ttl_ceiling = 600\ndns_rate = 50\n",
        )
        .unwrap();
        let now = DnsSettings::reread(&started.sources).unwrap();
        assert_eq!(
            (now.expiry.grace_s, now.expiry.ceiling_s, now.rate),
            (9, 600, 7),
            "the file's new values, under the flag"
        );
        assert!(
            restart_keys_changed(&started).is_empty(),
            "applied on reload"
        );
        std::fs::write(&path, "dns_ttl_floor = 900\ndns_ttl_ceiling = 600\n").unwrap();
        let e = DnsSettings::reread(&started.sources).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_deref()),
            (Some(1), Some("dns_ttl_floor"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_reload_rereads_the_event_keys_under_the_flags_it_was_started_with() {
        let dir = std::env::temp_dir().join(format!("emis-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("emis.toml");
        std::fs::write(&path, "interfaces = [\"eth0\"]\nevent_rate = 5\n").unwrap();
        let started = RunSettings::resolve(Some(&path), Given::default()).unwrap();
        assert_eq!((started.event_rate, started.sample_allowed), (5, 0));
        assert!(!started.bpf_stats);

        std::fs::write(
            &path,
            "interfaces = [\"eth0\"]\nsample_allowed = \"1/10\"\nbpf_stats = true\n",
        )
        .unwrap();
        let now = EventSettings::reread(&started.sources).unwrap();
        assert_eq!(
            now,
            EventSettings {
                event_rate: emis_common::DEFAULT_EVENT_RATE,
                sample_allowed: 10
            },
            "a key removed from the file is back at its default"
        );
        assert_eq!(restart_keys_changed(&started), ["bpf_stats"]);
        std::fs::write(
            &path,
            "interfaces = [\"eth0\"]\nkernel_log = \"debug\"\nkernel_log_match = \"10.0.0.0/8\"\n",
        )
        .unwrap();
        assert_eq!(restart_keys_changed(&started), ["kernel_log"]);
        let tracing = RunSettings::resolve(Some(&path), Given::default()).unwrap();
        assert_eq!(
            tracing.kernel_log.unwrap().prefix.unwrap().to_string(),
            "10.0.0.0/8"
        );
        std::fs::write(
            &path,
            "interfaces = [\"eth0\"]\nkernel_log = \"debug\"\nkernel_log_match = \"10.1.0.0/16\"\n",
        )
        .unwrap();
        assert_eq!(restart_keys_changed(&tracing), ["kernel_log_match"]);

        let flags = Given {
            event_rate: Some(7),
            ..Given::default()
        };
        let with_flag = RunSettings::resolve(Some(&path), flags).unwrap();
        assert_eq!(with_flag.event_rate, 7);
        std::fs::write(&path, "interfaces = [\"eth0\"]\nevent_rate = 9\n").unwrap();
        assert_eq!(
            EventSettings::reread(&with_flag.sources)
                .unwrap()
                .event_rate,
            7,
            "the flag still overrides the file after a reload"
        );
        std::fs::write(&path, "event_rate = \"x\"\n").unwrap();
        assert!(EventSettings::reread(&with_flag.sources).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_file_line_column_and_key() {
        let e = parse_text("interfaces = [\"eth0\"]\nmode = \"block\"\n").unwrap_err();
        assert_eq!((e.line, e.column), (Some(2), Some(8)), "{e}");
        assert_eq!(e.field.as_deref(), Some("mode"));
        assert!(
            e.to_string().starts_with("emis.toml:2:8: in `mode`:"),
            "{e}"
        );
        let e = parse_text("interface = [\"eth0\"]\n").unwrap_err();
        assert!(e.to_string().contains("unknown key `interface`"), "{e}");
        assert_eq!(e.line, Some(1));
        let e = parse_text("flow_table_size = \"big\"\n").unwrap_err();
        assert!(e.to_string().contains("must be an integer"), "{e}");
        let e = parse_text("metrics_addr = \"localhost\"\n").unwrap_err();
        assert!(e.to_string().contains("emis.toml:1:16"), "{e}");
        let e = parse_text("interfaces = [\"eth0\"\n").unwrap_err();
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn flags_override_the_file() {
        let file = parse_text("interfaces = [\"eth0\"]\nmode = \"audit\"\n").unwrap();
        let flags = Given {
            mode: Some(Mode::Enforce),
            ..Given::default()
        };
        let merged = flags.over(file);
        assert_eq!(merged.mode, Some(Mode::Enforce));
        assert_eq!(merged.interfaces.unwrap(), ["eth0"]);
    }

    #[test]
    fn the_packaged_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/emis.toml");
        read(&path).unwrap_or_else(|e| panic!("{e}"));
    }
}
