//! The optional `[flows]` and `[icmp]` tables.

use super::error::SpecError;
use super::tree::{type_error, want_table, Doc, Table, Val};
use crate::policy::Options;

/// `[flows]` (lifetimes in seconds) and `[icmp]` (`echo`), both optional.
pub(super) fn parse_options(doc: &Doc, top: &Table) -> Result<Options, SpecError> {
    let mut options = Options::default();
    if let Some(v) = top.get("flows") {
        let flows = want_table(doc, v, "flows".to_string())?;
        let keys = [
            "tcp_syn_timeout",
            "tcp_established_timeout",
            "tcp_closing_timeout",
            "udp_timeout",
            "fragment_timeout",
        ];
        flows.deny_unknown(&keys)?;
        let t = &mut options.timeouts;
        for (key, slot) in keys.iter().zip([
            &mut t.tcp_syn,
            &mut t.tcp_established,
            &mut t.tcp_closing,
            &mut t.udp,
            &mut t.fragment,
        ]) {
            if let Some(v) = flows.get(key) {
                let field = flows.sub(key);
                *slot = match v.get_ref() {
                    Val::Int(n) if (1..=7 * 24 * 3600).contains(n) => *n as u64,
                    Val::Int(_) => {
                        return Err(doc
                            .error(
                                Some(&v.span()),
                                field,
                                "a lifetime must be 1 to 604800 seconds".to_string(),
                            )
                            .with_hint("give whole seconds, e.g. 7200 for two hours"))
                    }
                    _ => return Err(type_error(doc, v, &field, "a whole number of seconds")),
                };
            }
        }
    }
    if let Some(v) = top.get("icmp") {
        let icmp = want_table(doc, v, "icmp".to_string())?;
        icmp.deny_unknown(&["echo"])?;
        if let Some(v) = icmp.get("echo") {
            options.icmp_echo = match v.get_ref() {
                Val::Bool(b) => *b,
                _ => return Err(type_error(doc, v, "icmp.echo", "true or false")),
            };
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use crate::spec::testutil::*;

    #[test]
    fn flows_and_icmp_options() {
        let p =
            load("[flows]\ntcp_syn_timeout = 5\nudp_timeout = 90\n[icmp]\necho = true\n").unwrap();
        assert_eq!(p.options.timeouts.tcp_syn, 5);
        assert_eq!(p.options.timeouts.udp, 90);
        assert_eq!(p.options.timeouts.tcp_established, 7200);
        assert!(p.options.icmp_echo);
        let defaults = load_policy(&Source::default_spec(), &SiteOptions::default()).unwrap();
        assert_eq!(defaults.options, crate::policy::Options::default());

        let e = error("[flows]\ntcp_syn_timeout = 0\n");
        assert_eq!(
            (e.line, e.column, e.field.as_deref()),
            (Some(2), Some(19), Some("flows.tcp_syn_timeout"))
        );
        let e = error("[flows]\nudp_timeout = \"60s\"\n");
        assert_eq!(e.field.as_deref(), Some("flows.udp_timeout"));
        assert!(e.message.contains("whole number of seconds"), "{e}");
        let e = error("[flows]\nidle = 3\n");
        assert_eq!((e.line, e.field.as_deref()), (Some(2), Some("flows.idle")));
        let e = error("[icmp]\necho = 1\n");
        assert_eq!((e.line, e.field.as_deref()), (Some(2), Some("icmp.echo")));
    }
}
