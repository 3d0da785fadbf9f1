//! The embedded spec against the vendor document it transcribes
//! (`spec/emis-network-requirements.txt`): every network prefix and every port-table row
//! is in the spec, in document order, and the rows the document repeats or leaves
//! inconsistent are noted.

use std::path::Path;

use emis_policy::policy::{Direction, Endpoint, PortRange, Protocol, Role, Scope};
use emis_policy::spec::{load_policy, SiteOptions, Source, DEFAULT_SPEC};
use ipnet::IpNet;

fn ip(s: &str) -> IpNet {
    s.parse().unwrap()
}

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
    // The project's checkout always has the shared folder beside it (CI lays a copy there).
    let text = std::fs::read_to_string(&seed).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; the vendor document is expected in ../shared/seed beside the checkout",
            seed.display()
        )
    });
    assert_eq!(
        text,
        spec_document(),
        "{} differs from spec/emis-network-requirements.txt",
        seed.display()
    );
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
