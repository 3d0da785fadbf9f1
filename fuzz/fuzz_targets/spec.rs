//! Arbitrary UTF-8 as a spec, and (beside a small spec) as a site file, as `--site-net`
//! flags and as Amazon's `ip-ranges.json`. Loading must return a policy or an error, never panic; a policy
//! that loads must compile (to maps or to a capacity error) without panicking.
#![no_main]

use emis_policy::compile::compile;
use emis_policy::spec::{load_policy, SiteOptions, Source};
use libfuzzer_sys::fuzz_target;

const SMALL_SPEC: &str = r#"[[network]]
name = "core"
scope = "enforce"
description = "core"
prefixes = ["10.0.0.0/16", "2001:db8:1::/48"]

[[network]]
name = "cloud"
scope = "count"
description = "cloud"
aws_region = "eu-west-2"

[[rule]]
slug = "out"
description = "out"
protocol = "tcp"
ports = [443, "8000-8010"]
direction = "outbound"
from = ["lan", "clinical-server"]
to = ["core", "cloud"]

[[rule]]
slug = "in"
description = "in"
protocol = "udp"
ports = [3389]
direction = "inbound"
from = ["core"]
to = ["surgery", "local-sites"]
"#;

fn check(spec: &Source, site: &SiteOptions) {
    if let Ok(policy) = load_policy(spec, site) {
        let _ = compile(&policy);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // As the spec, with no site.
    check(&Source::new("fuzz.toml", text), &SiteOptions::default());
    // As the other inputs, beside a small spec (the embedded one is slow to parse for
    // every input) with an `aws_region` network and every role in a rule.
    let spec = Source::new("small.toml", SMALL_SPEC);
    check(
        &spec,
        &SiteOptions {
            site_file: Some(Source::new("site.toml", text)),
            ..SiteOptions::default()
        },
    );
    check(
        &spec,
        &SiteOptions {
            site_nets: text.lines().take(16).map(str::to_string).collect(),
            ..SiteOptions::default()
        },
    );
    check(
        &spec,
        &SiteOptions {
            aws_ip_ranges: Some(Source::new("ip-ranges.json", text)),
            ..SiteOptions::default()
        },
    );
});
