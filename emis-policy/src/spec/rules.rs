//! `[[rule]]` sections (protocol, ports, direction, endpoints), and the rules an earlier
//! rule shadows.

use std::collections::HashMap;

use super::error::SpecError;
use super::tree::{type_error, unique_name, want_array, want_str, Doc, Span, Spanned, Table, Val};
use crate::policy::{Direction, Endpoint, PortRange, Protocol, Role, Rule};

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

pub(super) fn parse_rule(
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
            let name = want_str(doc, item, &format!("{field}[{i}]"))?;
            // Learned from DNS, so it must be a name DNS can carry.
            if let Err(e) = crate::hostnames::Pattern::parse(name) {
                return Err(doc
                    .error(Some(&item.span()), format!("{field}[{i}]"), e.to_string())
                    .with_hint("write a name like openapi.emishealth.com or *.emis-x.uk"));
            }
            hostnames.push(name.to_owned());
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
pub(super) fn shadowed_rules(rules: &[Rule]) -> Vec<(u32, u32)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::testutil::*;

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
    fn hostnames_must_be_names_dns_can_carry() {
        let text = BASE.replace(
            "protocol = \"tcp\"",
            "hostnames = [\"ok.example.com\", \"*.x.*.com\"]\nprotocol = \"tcp\"",
        );
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "\"*.x.*"),
            "rule[0].hostnames[1]",
            "\"*.x.*.com\" is not a hostname",
        );
        let fine = BASE.replace(
            "protocol = \"tcp\"",
            "hostnames = [\"OK.example.com.\", \"*.emis-x.uk\"]\nprotocol = \"tcp\"",
        );
        assert!(load(&fine).is_ok());
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
}
