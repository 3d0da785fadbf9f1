//! The nftables ruleset of the embedded policy, byte for byte: `emis export nft` output is
//! loaded by operators and by the benchmark, so a change to it must be deliberate.
//!
//! After an intended change, rewrite the fixtures with
//! `EMIS_UPDATE_FIXTURES=1 cargo test -p emis-policy --test nft_fixtures` and review the diff.

use std::path::PathBuf;

use emis_policy::nft::{ruleset, Family, NftOptions};
use emis_policy::policy::{Mode, Policy};
use emis_policy::spec::{load_policy, SiteOptions, Source, DEFAULT_SPEC, DEFAULT_SPEC_NAME};

const SITE: [&str; 5] = [
    "lan=192.168.10.0/24",
    "lan=2001:db8:10::/48",
    "clinical-server=192.168.10.5/32",
    "local-sites=192.168.10.0/24",
    "local-sites=192.168.20.0/24",
];

fn policy(spec: &str, site_nets: &[&str]) -> Policy {
    load_policy(
        &Source::new(DEFAULT_SPEC_NAME, spec),
        &SiteOptions {
            site_nets: site_nets.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    )
    .expect("the embedded spec loads")
}

#[track_caller]
fn assert_fixture(name: &str, text: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    if std::env::var_os("EMIS_UPDATE_FIXTURES").is_some() {
        std::fs::write(&path, text).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); EMIS_UPDATE_FIXTURES=1 writes it",
            path.display()
        )
    });
    assert!(
        text == expected,
        "the ruleset differs from {}; if the change is intended, rerun with EMIS_UPDATE_FIXTURES=1 \
         and review the diff",
        path.display()
    );
}

#[test]
fn embedded_policy_inet_enforce() {
    let text = ruleset(&policy(DEFAULT_SPEC, &[]), &NftOptions::default()).unwrap();
    assert_fixture("embedded-inet-enforce.nft", &text);
}

#[test]
fn embedded_policy_with_site_netdev_audit() {
    let options = NftOptions {
        mode: Mode::Audit,
        family: Family::Netdev,
        ifaces: vec!["eth0".into(), "eth1".into()],
        table: "emis_edge".into(),
    };
    let text = ruleset(&policy(DEFAULT_SPEC, &SITE), &options).unwrap();
    assert_fixture("embedded-site-netdev-audit.nft", &text);
}

#[test]
fn embedded_policy_with_site_and_icmp_echo() {
    let spec = DEFAULT_SPEC.replace("\necho = false", "\necho = true");
    assert_ne!(spec, DEFAULT_SPEC, "the embedded spec sets `echo = false`");
    let text = ruleset(&policy(&spec, &SITE), &NftOptions::default()).unwrap();
    assert_fixture("embedded-site-icmp-echo.nft", &text);
}
