//! The DNS path of learned hostnames.
//!
//! 1. The input bytes as a DNS response, whole and as a cut copy (`snapped`):
//!    `dns::read_response` returns answers or a reason, never panics; every answer's name
//!    is a normalised hostname and its TTL is not zero.
//! 2. Each answer's name against the embedded spec's hostname groups: the learned value
//!    names only groups that exist, holds at most `MAX_LEARNED_ENTRIES` rules, and the
//!    reference model decides a SYN to the learned address without a panic.
#![no_main]

use std::sync::OnceLock;

use emis_common::MAX_LEARNED_ENTRIES;
use emis_policy::compile::{compile, Compiled};
use emis_policy::dns::read_response;
use emis_policy::hostnames::normalize;
use emis_policy::model::Model;
use emis_policy::packet::{PacketSpec, TCP_SYN};
use emis_policy::policy::{Policy, Replies};
use emis_policy::spec::{load_policy, SiteOptions, Source};
use libfuzzer_sys::fuzz_target;

fn embedded() -> &'static (Policy, Compiled) {
    static POLICY: OnceLock<(Policy, Compiled)> = OnceLock::new();
    POLICY.get_or_init(|| {
        let policy = load_policy(&Source::default_spec(), &SiteOptions::default())
            .expect("the embedded spec loads");
        let compiled = compile(&policy).expect("the embedded spec compiles");
        (policy, compiled)
    })
}

fuzz_target!(|data: &[u8]| {
    let (policy, compiled) = embedded();
    for snapped in [false, true] {
        let Ok(reading) = read_response(data, snapped) else {
            continue;
        };
        for answer in &reading.answers {
            assert_eq!(normalize(&answer.name).as_deref(), Some(answer.name.as_str()));
            assert_ne!(answer.ttl, 0);
            let groups = compiled.hostnames.groups_of(&answer.name);
            assert_eq!(groups >> compiled.hostnames.groups.len(), 0);
            if let Some(learned) = compiled.hostnames.learned(groups) {
                assert!(learned.value.len as usize <= MAX_LEARNED_ENTRIES);
            }
            let mut model = Model::new(policy, Replies::Stateless);
            model.learn(&answer.name, answer.addr);
            let src = if answer.addr.is_ipv4() { "192.168.10.2" } else { "2001:db8:10::2" };
            let frame = PacketSpec::tcp(src.parse().unwrap(), answer.addr, 40000, 443, TCP_SYN).build();
            let _ = model.decide(&frame);
        }
    }
});
