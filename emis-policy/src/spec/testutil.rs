//! Helpers shared by the spec's unit tests, and the names they all use.

pub(super) use ipnet::IpNet;

pub(super) use super::error::line_col;
pub(super) use super::{load_policy, load_with_limits, SiteOptions, Source, SpecError};
pub(super) use crate::policy::{Policy, Role};

pub(super) const BASE: &str = r#"[[network]]
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

pub(super) fn load(text: &str) -> Result<Policy, SpecError> {
    load_policy(&Source::new("t.toml", text), &SiteOptions::default())
}

pub(super) fn load_with_site(text: &str, site: &SiteOptions) -> Result<Policy, SpecError> {
    load_policy(&Source::new("t.toml", text), site)
}

pub(super) fn error(text: &str) -> SpecError {
    match load(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e,
    }
}

/// Line and column of the `nth` occurrence of `needle`.
pub(super) fn pos_n(text: &str, needle: &str, nth: usize) -> (Option<u32>, Option<u32>) {
    let at = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} not in text"))
        .0;
    let (l, c) = line_col(text, at);
    (Some(l as u32), Some(c as u32))
}

pub(super) fn pos(text: &str, needle: &str) -> (Option<u32>, Option<u32>) {
    pos_n(text, needle, 0)
}

#[track_caller]
pub(super) fn assert_err(
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

pub(super) fn ip(s: &str) -> IpNet {
    s.parse().unwrap()
}

pub(super) fn networks(n: usize) -> String {
    (0..n)
        .map(|i| format!("[[network]]\nname = \"net{i}\"\nscope = \"count\"\ndescription = \"\"\nprefixes = [\"10.{i}.0.0/16\"]\n"))
        .collect()
}

pub(super) fn rules(n: usize) -> String {
    (0..n)
        .map(|i| format!("[[rule]]\nslug = \"r{i}\"\ndescription = \"\"\nprotocol = \"tcp\"\nports = [{}]\ndirection = \"outbound\"\nfrom = [\"lan\"]\nto = [\"net0\"]\n", i + 1))
        .collect()
}

pub(super) fn site_file(text: &str) -> SiteOptions {
    SiteOptions {
        site_file: Some(Source::new("site.toml", text)),
        ..Default::default()
    }
}

pub(super) fn aws_json(v4: &[(&str, &str)], v6: &[(&str, &str)]) -> String {
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

pub(super) fn aws_site(json: String) -> SiteOptions {
    SiteOptions {
        aws_ip_ranges: Some(Source::new("ip-ranges.json", json)),
        ..Default::default()
    }
}
