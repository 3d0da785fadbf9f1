//! Which text format a scrape gets, and the classic Prometheus format made from
//! OpenMetrics.
//!
//! prometheus-client encodes OpenMetrics only. Prometheus 2.x asks for OpenMetrics, but
//! many scrapers (and `promtool check metrics`) read only the classic text format 0.0.4,
//! which is what a client that sends no `Accept` gets. The classic body is derived from
//! the OpenMetrics one by the rules the two specifications fix (counter samples keep their
//! `_total` name and the family is named after it, info becomes gauge, no `# UNIT`, no
//! `# EOF`, no exemplars, timestamps in milliseconds), so it covers every metric in the
//! registry, whoever registered it, without a second encoder to keep in step.

use prometheus_client::{encoding::text::encode, registry::Registry};

/// A text exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4.
    Classic,
    /// OpenMetrics 1.0.0.
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format an `Accept` header prefers: the acceptable media type with the highest
    /// quality (the first listed on a tie). Anything else, or no header, gets the classic
    /// format, which every scraper reads.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let mut best: Option<(f32, Format)> = None;
        for range in accept.unwrap_or_default().split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let format = match media.as_str() {
                "application/openmetrics-text" => Format::OpenMetrics,
                "text/plain" => Format::Classic,
                _ => continue,
            };
            let quality = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(1.0, |(_, q)| q.trim().parse::<f32>().unwrap_or(0.0));
            if quality > 0.0 && best.is_none_or(|(q, _)| quality > q) {
                best = Some((quality, format));
            }
        }
        best.map_or(Format::Classic, |(_, format)| format)
    }
}

/// Encodes a registry in `format`.
pub fn render(registry: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    let mut body = String::new();
    encode(&mut body, registry)?;
    Ok(match format {
        Format::OpenMetrics => body,
        Format::Classic => classic_from_openmetrics(&body),
    })
}

/// A label value escaped as both text formats require (`\\`, `\"`, `\n`):
/// prometheus-client 0.23 writes label values as they are, so every value that comes from
/// data (rule and network names) goes through here first.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One metric family's descriptor lines, held until its type is known.
#[derive(Default)]
struct Descriptor {
    name: String,
    help: Option<String>,
}

/// The classic text format for an OpenMetrics body.
pub fn classic_from_openmetrics(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut pending = Descriptor::default();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            flush_help(&mut out, &mut pending);
            pending = Descriptor {
                name: name.to_string(),
                // OpenMetrics may escape `"` in HELP; the classic format knows only `\\`
                // and `\n` there.
                help: Some(help.replace("\\\"", "\"")),
            };
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = classic_family(family, kind);
            match pending.help.take() {
                Some(help) if pending.name == family => {
                    out.push_str(&format!("# HELP {name} {help}\n"));
                }
                help => {
                    pending.help = help;
                    flush_help(&mut out, &mut pending);
                }
            }
            pending = Descriptor::default();
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with('#') {
            // `# UNIT` (the unit is in the name already), `# EOF`, other comments.
        } else if !line.trim().is_empty() {
            flush_help(&mut out, &mut pending);
            if let Some(sample) = classic_sample(line) {
                out.push_str(&sample);
                out.push('\n');
            }
        }
    }
    flush_help(&mut out, &mut pending);
    out
}

fn flush_help(out: &mut String, pending: &mut Descriptor) {
    if let Some(help) = pending.help.take() {
        out.push_str(&format!("# HELP {} {help}\n", pending.name));
    }
}

/// The classic family name and type for an OpenMetrics family: the classic format names a
/// counter family after its `_total` sample and has no info, stateset or gaugehistogram.
fn classic_family(name: &str, kind: &str) -> (String, &'static str) {
    match kind {
        "counter" => (format!("{name}_total"), "counter"),
        "info" => (format!("{name}_info"), "gauge"),
        "gauge" => (name.to_string(), "gauge"),
        "histogram" => (name.to_string(), "histogram"),
        "summary" => (name.to_string(), "summary"),
        _ => (name.to_string(), "untyped"),
    }
}

/// A sample line without its exemplar, its timestamp in milliseconds; `None` for the
/// `_created` samples the classic format has no place for.
fn classic_sample(line: &str) -> Option<String> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.ends_with("_created") {
        return None;
    }
    let labels_end = if line[name_end..].starts_with('{') {
        name_end + label_set_len(&line[name_end..])?
    } else {
        name_end
    };
    let rest = &line[labels_end..];
    // An exemplar follows " # " after the value (and timestamp).
    let rest = rest.split_once(" # ").map_or(rest, |(before, _)| before);
    let mut fields = rest.split_whitespace();
    let value = fields.next()?;
    let mut sample = format!("{} {value}", &line[..labels_end]);
    if let Some(seconds) = fields.next().and_then(|t| t.parse::<f64>().ok()) {
        sample.push_str(&format!(" {}", (seconds * 1000.0).round() as i64));
    }
    Some(sample)
}

/// The length of the `{...}` label set at the start of `s`, quotes and escapes respected.
fn label_set_len(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i + 1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info};
    use prometheus_client::registry::Unit;

    #[test]
    fn negotiates_by_media_type_and_quality() {
        assert_eq!(Format::negotiate(None), Format::Classic);
        assert_eq!(Format::negotiate(Some("")), Format::Classic);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Classic);
        assert_eq!(
            Format::negotiate(Some("text/plain; version=0.0.4")),
            Format::Classic
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        // What Prometheus 2.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0.2, text/plain;q=0.9")),
            Format::Classic
        );
        assert_eq!(
            Format::negotiate(Some("Application/OpenMetrics-Text; q=0")),
            Format::Classic,
            "q=0 means not acceptable"
        );
        assert_eq!(Format::negotiate(Some("application/json")), Format::Classic);
    }

    #[test]
    fn classic_names_counter_families_after_their_samples_and_drops_eof() {
        let mut registry = Registry::default();
        let packets = Family::<Vec<(String, String)>, Counter>::default();
        packets
            .get_or_create(&vec![("rule".into(), escape_label_value("a \"b\" } # c"))])
            .inc_by(3);
        registry.register("emis_rule_packets", "Packets", packets);
        let gauge = Gauge::<i64>::default();
        gauge.set(7);
        registry.register("emis_flow_table_entries", "Entries", gauge);
        let run = Counter::<f64>::default();
        run.inc_by(0.5);
        registry.register_with_unit("emis_program_run", "Run time", Unit::Seconds, run);
        registry.register(
            "emis_thing",
            "An info",
            Info::new(vec![("version".to_string(), "1".to_string())]),
        );

        let om = render(&registry, Format::OpenMetrics).unwrap();
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE emis_rule_packets counter\n"), "{om}");
        assert!(
            om.contains("# UNIT emis_program_run_seconds seconds\n"),
            "{om}"
        );

        let classic = render(&registry, Format::Classic).unwrap();
        let expected = "\
# HELP emis_rule_packets_total Packets.
# TYPE emis_rule_packets_total counter
emis_rule_packets_total{rule=\"a \\\"b\\\" } # c\"} 3
# HELP emis_flow_table_entries Entries.
# TYPE emis_flow_table_entries gauge
emis_flow_table_entries 7
# HELP emis_program_run_seconds_total Run time.
# TYPE emis_program_run_seconds_total counter
emis_program_run_seconds_total 0.5
# HELP emis_thing_info An info.
# TYPE emis_thing_info gauge
emis_thing_info{version=\"1\"} 1
";
        assert_eq!(classic, expected, "OpenMetrics was:\n{om}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value("plain-name"), "plain-name");
        assert_eq!(escape_label_value("a\\b \"c\"\nd"), "a\\\\b \\\"c\\\"\\nd");
    }

    #[test]
    fn classic_samples_lose_exemplars_and_created_and_keep_millisecond_timestamps() {
        assert_eq!(
            classic_sample("a_total{x=\"1\"} 5 # {trace=\"t\"} 1.0 1.5").as_deref(),
            Some("a_total{x=\"1\"} 5")
        );
        assert_eq!(
            classic_sample("a_total 5 1700000000.25").as_deref(),
            Some("a_total 5 1700000000250")
        );
        assert_eq!(classic_sample("a_created 1700000000"), None);
        assert_eq!(classic_sample("a{x=\"unterminated} 1"), None);
        let om = "# HELP a A.\n# TYPE a unknown\na 1\n# HELP b lone help\n# EOF\n";
        assert_eq!(
            classic_from_openmetrics(om),
            "# HELP a A.\n# TYPE a untyped\na 1\n# HELP b lone help\n"
        );
    }
}
