//! Checks over every prefix of networks and site roles at once: the enforcer's capacity
//! in distinct prefixes per family, and overlaps (errors when an enforce-scope network is
//! involved, warnings otherwise). Sorts the prefixes, then sweeps with the chain of
//! prefixes containing the current one.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::error::SpecError;
use super::networks::NetMeta;
use super::site::Roles;
use super::tree::{Doc, Span};
use crate::capacity::Limits;
use crate::policy::{Network, Role, Scope};

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

pub(super) fn check_prefixes(
    doc: &Doc,
    networks: &[Network],
    metas: &[NetMeta],
    roles: &Roles,
    limits: &Limits,
    capacity_file: &str,
    warnings: &mut Vec<String>,
) -> Result<(), SpecError> {
    // Each prefix is named by its position in networks' lists then roles' lists, so the
    // sort moves 4 bytes a prefix instead of a 48-byte record (a million AWS prefixes made
    // the records the loader's peak memory); positions of equal prefixes keep the
    // (owner, index) order as networks precede roles.
    let mut starts: Vec<(u32, Owner)> = Vec::new();
    let mut total = 0u32;
    for (n, network) in networks.iter().enumerate() {
        starts.push((total, Owner::Net(n as u32)));
        total += network.prefixes.len() as u32;
    }
    for (r, list) in roles.iter().enumerate() {
        starts.push((total, Owner::Role(r as u32)));
        total += list.as_ref().map_or(0, Vec::len) as u32;
    }
    let item = |pos: u32| -> Item {
        let (first, owner) = starts[starts.partition_point(|&(first, _)| first <= pos) - 1];
        let idx = (pos - first) as usize;
        let net = match owner {
            Owner::Net(n) => &networks[n as usize].prefixes[idx],
            Owner::Role(r) => &roles[r as usize].as_ref().expect("role with prefixes")[idx],
        };
        Item::new(net, owner, idx)
    };
    // Every prefix in position order, with its family.
    let all = || {
        networks
            .iter()
            .flat_map(|n| &n.prefixes)
            .chain(roles.iter().flatten().flatten())
            .zip(0u32..)
    };
    // IPv4 first (the order's first key), each family sorted on a compact key of its own
    // that is dropped before the next: 12 bytes an IPv4 prefix, 32 an IPv6 one.
    let mut items: Vec<u32> = Vec::with_capacity(total as usize);
    let v4_total = all().filter(|(net, _)| matches!(net, IpNet::V4(_))).count();
    let mut v4: Vec<(u32, u8, u32)> = Vec::with_capacity(v4_total);
    v4.extend(all().filter_map(|(net, pos)| match net {
        IpNet::V4(n) => Some((u32::from(n.network()), n.prefix_len(), pos)),
        IpNet::V6(_) => None,
    }));
    v4.sort_unstable();
    items.extend(v4.iter().map(|k| k.2));
    drop(v4);
    let mut v6: Vec<(u128, u8, u32)> = Vec::with_capacity(total as usize - v4_total);
    v6.extend(all().filter_map(|(net, pos)| match net {
        IpNet::V6(n) => Some((u128::from(n.network()), n.prefix_len(), pos)),
        IpNet::V4(_) => None,
    }));
    v6.sort_unstable();
    items.extend(v6.iter().map(|k| k.2));
    drop(v6);

    // Capacity: distinct prefixes per family.
    let mut distinct = [0usize; 2];
    let mut prev: Option<Item> = None;
    for &pos in &items {
        let item = item(pos);
        if prev
            .is_none_or(|prev| (prev.v6, prev.start, prev.len) != (item.v6, item.start, item.len))
        {
            distinct[item.v6 as usize] += 1;
        }
        prev = Some(item);
    }
    for (family, &count) in ["IPv4", "IPv6"].into_iter().zip(&distinct) {
        limits
            .check_distinct_prefixes(family, count)
            .map_err(|e| SpecError::capacity(capacity_file, e).with_field("prefixes"))?;
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
    for (pi, &pos) in items.iter().enumerate() {
        let p = &item(pos);
        while let Some(&top) = stack.last() {
            let top = item(items[top]);
            if top.v6 != p.v6 || top.end < p.start {
                stack.pop();
            } else {
                break;
            }
        }
        // Everything left on the stack contains (or equals) p.
        seen.clear();
        for &ci in &stack {
            let c = &item(items[ci]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::CapacityError;
    use crate::spec::testutil::*;

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
        assert_eq!(
            e.hint.as_deref(),
            Some("merge networks that share a scope"),
            "{e}"
        );
        assert!(
            matches!(
                e.capacity.as_deref(),
                Some(CapacityError::Networks { count: 33, max: 32 })
            ),
            "{e:?}"
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
        assert!(
            matches!(
                e.capacity.as_deref(),
                Some(CapacityError::Rules {
                    count: 257,
                    max: 256
                })
            ),
            "{e:?}"
        );
    }

    #[test]
    fn capacity_prefixes() {
        let limits = Limits {
            prefixes: 3,
            ..Limits::KERNEL
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
        assert!(
            matches!(
                e.capacity.as_deref(),
                Some(CapacityError::DistinctPrefixes {
                    family: "IPv4",
                    count: 4,
                    max: 3
                })
            ),
            "{e:?}"
        );
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
        let e = load_with_site(&text, &aws_site(json)).unwrap_err();
        assert_err(
            &e,
            "t.toml",
            pos(&text, "\"10.0.0.0/16"),
            "network \"n3\".prefixes[0]",
            "lies inside 10.0.0.0/8 of network \"aws\"",
        );
        let json = aws_json(&[("10.1.3.0/24", "r")], &[]);
        let e = load_with_site(&text, &aws_site(json)).unwrap_err();
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
        let policy = load_with_site(&text, &site).unwrap();
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
}
