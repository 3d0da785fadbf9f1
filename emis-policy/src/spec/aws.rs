//! Amazon's `ip-ranges.json`: the prefixes of the regions networks name in `aws_region`.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use ipnet::IpNet;

use super::error::SpecError;
use super::networks::NetMeta;
use super::Source;
use crate::policy::Network;

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

/// Streams `path` entry by entry, keeping only the wanted regions' prefixes; any error
/// (of the JSON or of a prefix) is `Err(())`, and the caller re-reads the file whole to
/// report it exactly as [`load_aws`] does.
fn stream_aws(
    path: &std::path::Path,
    wanted: &HashMap<&str, Vec<usize>>,
    out: &mut [Vec<IpNet>],
) -> Result<(), ()> {
    use serde::de::DeserializeSeed as _;
    let file = std::fs::File::open(path).map_err(|_| ())?;
    let mut de =
        serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(1 << 16, file));
    stream::Ranges { wanted, out }
        .deserialize(&mut de)
        .map_err(|_| ())?;
    de.end().map_err(|_| ())
}

/// The serde visitors of [`stream_aws`]: the top-level object, its two lists and their
/// entries, with only the fields emis reads and each entry's strings dropped at once.
mod stream {
    use std::collections::HashMap;
    use std::fmt;

    use ipnet::IpNet;
    use serde::de::{
        self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
    };

    pub(super) struct Ranges<'w, 'o> {
        pub wanted: &'w HashMap<&'w str, Vec<usize>>,
        pub out: &'o mut [Vec<IpNet>],
    }

    impl<'de> DeserializeSeed<'de> for Ranges<'_, '_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Ranges<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("Amazon's ip-ranges.json")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let (mut v4, mut v6) = (false, false);
            while let Some(key) = map.next_key::<String>()? {
                let is_v6 = match key.as_str() {
                    "prefixes" => false,
                    "ipv6_prefixes" => true,
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                };
                let seen = if is_v6 { &mut v6 } else { &mut v4 };
                if std::mem::replace(seen, true) {
                    return Err(de::Error::custom("duplicate list"));
                }
                map.next_value_seed(List {
                    wanted: self.wanted,
                    out: &mut *self.out,
                    v6: is_v6,
                })?;
            }
            if !v4 {
                return Err(de::Error::custom("no prefixes"));
            }
            Ok(())
        }
    }

    struct List<'w, 'o> {
        wanted: &'w HashMap<&'w str, Vec<usize>>,
        out: &'o mut [Vec<IpNet>],
        v6: bool,
    }

    impl<'de> DeserializeSeed<'de> for List<'_, '_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for List<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of prefixes")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some((raw, region)) = seq.next_element_seed(Entry { v6: self.v6 })? {
                let Some(nets) = self.wanted.get(region.as_str()) else {
                    continue;
                };
                let net = super::aws_prefix(&raw, self.v6)
                    .map_err(|(message, _)| de::Error::custom(message))?;
                for &n in nets {
                    self.out[n].push(net);
                }
            }
            Ok(())
        }
    }

    /// One entry: (prefix text, region).
    struct Entry {
        v6: bool,
    }

    impl<'de> DeserializeSeed<'de> for Entry {
        type Value = (String, String);
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Entry {
        type Value = (String, String);
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an entry with a prefix and a region")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let field = if self.v6 { "ipv6_prefix" } else { "ip_prefix" };
            let (mut prefix, mut region) = (None, None);
            while let Some(key) = map.next_key::<String>()? {
                let slot = if key == field {
                    &mut prefix
                } else if key == "region" {
                    &mut region
                } else {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                };
                if slot.replace(map.next_value::<String>()?).is_some() {
                    return Err(de::Error::custom("duplicate field"));
                }
            }
            match (prefix, region) {
                (Some(p), Some(r)) => Ok((p, r)),
                _ => Err(de::Error::custom("missing field")),
            }
        }
    }
}

/// Adds every prefix of a wanted region to the networks asking for it (`out[network]`).
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

/// Adds to each network with an `aws_region` the prefixes `source` lists for that region
/// (all services), leaving out those the spec already lists; a region without prefixes is
/// a warning.
pub(super) fn add_regions(
    source: &Source,
    networks: &mut [Network],
    metas: &mut [NetMeta],
    warnings: &mut Vec<String>,
) -> Result<(), SpecError> {
    let mut wanted: HashMap<&str, Vec<usize>> = HashMap::new();
    for (n, meta) in metas.iter().enumerate() {
        if let Some((region, _)) = &meta.aws_region {
            wanted.entry(region.as_str()).or_default().push(n);
        }
    }
    let mut aws: Vec<Vec<IpNet>> = vec![Vec::new(); networks.len()];
    if let Some(path) = source.streamed_path() {
        if stream_aws(path, &wanted, &mut aws).is_err() {
            // Read whole only to place the error; the streamed parse accepts what
            // `load_aws` accepts, so this finds it unless the file changed meanwhile.
            drop(aws);
            let whole = source.whole()?;
            let mut again = vec![Vec::new(); networks.len()];
            load_aws(&whole, &wanted, &mut again)?;
            return Err(
                SpecError::new(&source.name, "the file changed while it was read")
                    .with_hint("read it again when it is no longer being written"),
            );
        }
    } else {
        load_aws(source, &wanted, &mut aws)?;
    }
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
        // Moved, not copied, when the spec lists none: a region can bring a million.
        list.shrink_to_fit();
        if network.prefixes.is_empty() {
            network.prefixes = list;
        } else {
            network.prefixes.extend(list);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::testutil::*;

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

    /// A streamed file gives what the same text gives: the policy, its sha256, and
    /// every error (placed by re-reading the file whole).
    #[test]
    fn streamed_file_equals_text() {
        let dir = std::env::temp_dir().join(format!("emis-aws-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ip-ranges.json");
        let both = |json: &str| {
            std::fs::write(&path, json).unwrap();
            let mut streamed = SiteOptions {
                aws_ip_ranges: Some(Source::stream(&path).unwrap()),
                ..Default::default()
            };
            let text = aws_site(json.to_owned());
            // The same name, so errors compare whole.
            streamed.aws_ip_ranges.as_mut().unwrap().name = "ip-ranges.json".into();
            (
                load_policy(&Source::default_spec(), &streamed),
                load_policy(&Source::default_spec(), &text),
            )
        };
        let good = aws_json(
            &[
                ("3.8.0.0/16", "eu-west-2"),
                ("3.5.140.0/22", "ap-northeast-2"),
                ("3.8.0.0/16", "eu-west-2"),
                ("3.8.1.0/24", "eu-west-2"),
                ("garbage", "us-east-1"),
            ],
            &[("2a05:d01c::/36", "eu-west-2")],
        );
        let (streamed, text) = both(&good);
        let (streamed, text) = (streamed.unwrap(), text.unwrap());
        assert_eq!(streamed.networks, text.networks);
        assert_eq!(streamed.warnings, text.warnings);
        assert_eq!(streamed.sha256, text.sha256);
        // Lists in the other order, unknown keys, an entry's fields in any order.
        let reordered = r#"{"ipv6_prefixes": [{"region": "eu-west-2", "x": [1, {"y": 2}], "ipv6_prefix": "2a05:d01c::/36"}], "syncToken": "1", "prefixes": [{"region": "eu-west-2", "ip_prefix": "3.8.0.0/16"}]}"#;
        let (streamed, text) = both(reordered);
        assert_eq!(streamed.unwrap().networks, text.unwrap().networks);
        for bad in [
            "{\n  \"prefixes\": [\n    {\"ip_prefix\": \"3.8.0.0/16\", \"region\": \"eu-west-2\"},\n    {\"ip_prefix\": 5, \"region\": \"x\"}\n  ]\n}\n",
            "{\"prefixes\": [,]}",
            "{\"ipv6_prefixes\": []}",
            "{\"prefixes\": []} trailing",
            "{\"prefixes\": [{\"ip_prefix\": \"3.8.0.0/16\"}]}",
            "{\"prefixes\": [], \"prefixes\": []}",
            &aws_json(&[("3.8.0.0/16", "eu-west-2"), ("3.8.0.1/16", "eu-west-2")], &[]),
            &aws_json(&[], &[("nonsense", "eu-west-2")]),
        ] {
            let (streamed, text) = both(bad);
            assert_eq!(streamed.unwrap_err(), text.unwrap_err(), "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
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
}
