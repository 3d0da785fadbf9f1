//! `[[network]]` sections: name, scope, description, literal prefixes and `aws_region`.

use std::collections::{HashMap, HashSet};

use ipnet::IpNet;

use super::error::SpecError;
use super::tree::{
    type_error, unique_name, want_array, want_cidr, want_str, want_table, Span, Table, Val,
};
use crate::policy::{Network, Role, Scope};

/// Where a network's prefixes came from, for messages.
pub(super) struct NetMeta {
    /// Span and field path of each spec prefix kept (they come first in `Network::prefixes`).
    pub(super) spec: Vec<(Span, String)>,
    pub(super) aws_region: Option<(String, Span)>,
    pub(super) duplicates: usize,
    pub(super) duplicate_example: Option<IpNet>,
}

pub(super) fn parse_network(
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

#[cfg(test)]
mod tests {
    use crate::spec::testutil::*;

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
}
