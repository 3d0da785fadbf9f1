//! What `emis explain` and `emis check` print: one packet's verdict from the reference
//! model, and a summary of a policy.

use std::{fmt::Write as _, net::IpAddr};

use emis_common::{Decision, Path, PROTO_ICMP, PROTO_ICMPV6};
use serde::Serialize;

use crate::{
    compile::{endpoint_mask, Compiled},
    model::Model,
    packet::{PacketSpec, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN},
    policy::{Mode, Policy, Replies, Role, Scope},
};

pub struct ExplainRequest {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: String,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: String,
    pub mode: Mode,
    pub replies: Replies,
    /// Addresses learned from DNS, as `emis run` would have learned them: (name, address).
    pub learned: Vec<(String, IpAddr)>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Explanation {
    /// allow, deny or pass.
    pub verdict: &'static str,
    /// The rule's slug for allowed packets.
    pub rule: Option<String>,
    /// forward or reply for allowed packets.
    pub path: Option<&'static str>,
    /// The deny or pass reason (no_rule, out_of_scope, ...), or null when a rule allowed it.
    pub reason: Option<&'static str>,
    /// The enforce-scope network a denied packet touched.
    pub network: Option<String>,
    /// What the enforcer does with it: pass, drop, or audit (passed, counted as would-deny).
    pub action: &'static str,
    /// What depends on state the enforcer keeps (flows, fragments), if anything.
    pub note: Option<String>,
    pub sentence: String,
}

/// A request `explain` cannot judge; each names the option to correct.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("--tcp-flags: unknown flag {0:?}; use syn, ack, fin, rst, psh separated by commas")]
    UnknownTcpFlag(String),
    #[error("--src and --dst must both be IPv4 or both IPv6")]
    MixedFamilies,
    #[error("--proto: unknown protocol {0:?}; use tcp, udp or icmp")]
    UnknownProtocol(String),
}

type Result<T, E = ExplainError> = std::result::Result<T, E>;

pub fn parse_tcp_flags(text: &str) -> Result<u8> {
    let mut flags = 0;
    for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        flags |= match name.to_ascii_lowercase().as_str() {
            "syn" => TCP_SYN,
            "ack" => TCP_ACK,
            "fin" => TCP_FIN,
            "rst" => TCP_RST,
            "psh" => TCP_PSH,
            other => return Err(ExplainError::UnknownTcpFlag(other.to_string())),
        };
    }
    Ok(flags)
}

pub fn explain(policy: &Policy, request: &ExplainRequest) -> Result<Explanation> {
    if request.src.is_ipv4() != request.dst.is_ipv4() {
        return Err(ExplainError::MixedFamilies);
    }
    let packet = match request.proto.to_ascii_lowercase().as_str() {
        "tcp" => PacketSpec::tcp(
            request.src,
            request.dst,
            request.sport,
            request.dport,
            parse_tcp_flags(&request.tcp_flags)?,
        ),
        "udp" => PacketSpec::udp(request.src, request.dst, request.sport, request.dport),
        "icmp" | "icmpv6" => PacketSpec::icmp_echo(request.src, request.dst),
        other => return Err(ExplainError::UnknownProtocol(other.to_string())),
    };
    let frame = packet.build();
    let model = |replies| {
        let mut model = Model::new(policy, replies);
        for (name, addr) in &request.learned {
            model.learn(name, *addr);
        }
        model
    };
    let decision = model(request.replies).decide(&frame);
    // A reply in stateful mode is allowed only inside a flow the forward packet opened.
    let stateless = model(Replies::Stateless).decide(&frame);
    let note = match (decision, stateless) {
        (Decision::Deny { .. }, Decision::Allow { rule, path }) if path != Path::Forward => Some(format!(
            "stateful replies: allowed as {} under rule {} once the flow's forward packet has been allowed",
            path.name(),
            policy.rules[rule as usize].slug
        )),
        _ => None,
    };
    let flow = match packet.proto {
        PROTO_ICMP | PROTO_ICMPV6 => {
            format!("{} {} -> {}", request.proto, request.src, request.dst)
        }
        _ => format!(
            "{} {}:{} -> {}:{}",
            request.proto, request.src, request.sport, request.dst, request.dport
        ),
    };
    Ok(match decision {
        Decision::Allow { rule, path } => {
            let rule = &policy.rules[rule as usize];
            Explanation {
                verdict: "allow",
                rule: Some(rule.slug.clone()),
                path: Some(path.name()),
                reason: None,
                network: None,
                action: "pass",
                note: None,
                sentence: format!(
                    "{flow}: allow ({}) by rule {} \"{}\"",
                    path.name(),
                    rule.slug,
                    rule.description
                ),
            }
        }
        Decision::Deny { reason, network } => {
            let network = policy.networks[network as usize].name.clone();
            let action = match request.mode {
                Mode::Enforce => "drop",
                Mode::Audit => "audit",
            };
            Explanation {
                verdict: "deny",
                rule: None,
                path: None,
                reason: Some(reason.name()),
                sentence: format!(
                    "{flow}: deny ({}) touching enforce-scope network {network}; action {action}{}",
                    reason.name(),
                    note.as_deref()
                        .map(|n| format!("\n  note: {n}"))
                        .unwrap_or_default()
                ),
                note,
                network: Some(network),
                action,
            }
        }
        Decision::Pass { reason } => Explanation {
            verdict: "pass",
            rule: None,
            path: None,
            reason: Some(reason.name()),
            network: None,
            action: "pass",
            note: None,
            sentence: format!("{flow}: pass ({})", reason.name()),
        },
    })
}

/// What `emis check` prints.
pub fn summary(policy: &Policy, compiled: &Compiled) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "spec sha256 {}", policy.sha256);
    let _ = writeln!(out, "\nnetworks:");
    for net in &policy.networks {
        let shown: Vec<String> = net.prefixes.iter().take(4).map(|p| p.to_string()).collect();
        let more = net.prefixes.len().saturating_sub(shown.len());
        let _ = writeln!(
            out,
            "  {:<16} {:<7} {:>7} prefixes  {}{}",
            net.name,
            net.scope.name(),
            net.prefixes.len(),
            shown.join(" "),
            if more > 0 {
                format!(" (+{more} more)")
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(out, "\nsite roles:");
    for role in Role::ALL {
        match policy.role(role) {
            Some(prefixes) => {
                let list: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
                let _ = writeln!(out, "  {:<16} {}", role.name(), list.join(" "));
            }
            None => {
                let _ = writeln!(
                    out,
                    "  {:<16} unset: any address outside the enforce-scope networks",
                    role.name()
                );
            }
        }
    }
    let _ = writeln!(out, "\nrules ({}):", policy.rules.len());
    for rule in &policy.rules {
        let ports: Vec<String> = rule.ports.iter().map(|p| p.to_string()).collect();
        let from: Vec<&str> = rule.from.iter().map(|e| policy.endpoint_name(*e)).collect();
        let to: Vec<&str> = rule.to.iter().map(|e| policy.endpoint_name(*e)).collect();
        let _ = writeln!(
            out,
            "  {:<36} {:<8} {}/{:<12} {} -> {}",
            rule.slug,
            rule.direction.name(),
            rule.protocol.name(),
            ports.join(","),
            from.join("|"),
            to.join("|")
        );
    }
    let enforce = policy
        .networks
        .iter()
        .filter(|n| n.scope == Scope::Enforce)
        .count();
    let _ = writeln!(
        out,
        "\ncompiled: {} IPv4 and {} IPv6 trie entries, {} (protocol, port) entries; {} enforce-scope networks",
        compiled.v4.len(),
        compiled.v6.len(),
        compiled.ports.len(),
        enforce
    );
    if !policy.shadowed.is_empty() {
        let _ = writeln!(out, "\nshared counters: these rules match only packets an earlier rule matches, so their traffic is counted under it:");
        let bits = &compiled.hostnames.rule_bits;
        for &(rule, under) in &policy.shadowed {
            // Hostnames no earlier rule of its group covers: addresses learned from DNS
            // for them count apart.
            let bit = bits[rule as usize];
            let mask = |id: usize| {
                let r = &policy.rules[id];
                (endpoint_mask(&r.from), endpoint_mask(&r.to))
            };
            let (src, dst) = mask(rule as usize);
            let apart = bit != 0
                && !(0..rule as usize).any(|earlier| {
                    let (s, d) = mask(earlier);
                    bits[earlier] == bit && s & src == src && d & dst == dst
                });
            let _ = writeln!(
                out,
                "  {:<36} -> {}{}",
                policy.rules[rule as usize].slug,
                policy.rules[under as usize].slug,
                if apart {
                    " (apart for addresses learned for its hostnames)"
                } else {
                    ""
                }
            );
        }
    }
    if policy.warnings.is_empty() {
        let _ = writeln!(out, "no warnings");
    } else {
        let _ = writeln!(out, "\nwarnings ({}):", policy.warnings.len());
        for w in &policy.warnings {
            let _ = writeln!(out, "  - {w}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{load_policy, SiteOptions, Source};

    fn ask(
        src: &str,
        dst: &str,
        sport: u16,
        dport: u16,
        flags: &str,
        replies: Replies,
    ) -> Explanation {
        let policy = load_policy(&Source::default_spec(), &SiteOptions::default()).unwrap();
        let request = ExplainRequest {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: "tcp".into(),
            sport,
            dport,
            tcp_flags: flags.into(),
            mode: Mode::Enforce,
            replies,
            learned: vec![],
        };
        explain(&policy, &request).unwrap()
    }

    #[test]
    fn explains_allow_deny_and_replies() {
        let allowed = ask(
            "192.168.10.2",
            "10.207.116.10",
            40000,
            443,
            "syn",
            Replies::Stateful,
        );
        assert_eq!(
            (allowed.verdict, allowed.rule.as_deref(), allowed.path),
            ("allow", Some("client-spine-messaging"), Some("forward"))
        );
        let denied = ask(
            "192.168.10.2",
            "10.207.116.10",
            40000,
            444,
            "syn",
            Replies::Stateful,
        );
        assert_eq!(
            (
                denied.verdict,
                denied.reason,
                denied.network.as_deref(),
                denied.action
            ),
            ("deny", Some("no_rule"), Some("emis-n3"), "drop")
        );
        let json = serde_json::to_value(&denied).unwrap();
        assert_eq!(json["rule"], serde_json::Value::Null);
        let reply = ask(
            "10.207.116.10",
            "192.168.10.2",
            443,
            40000,
            "syn,ack",
            Replies::Stateful,
        );
        assert_eq!(reply.verdict, "deny");
        assert!(
            reply
                .note
                .as_deref()
                .unwrap()
                .contains("client-spine-messaging"),
            "{reply:?}"
        );
        let reply = ask(
            "10.207.116.10",
            "192.168.10.2",
            443,
            40000,
            "syn,ack",
            Replies::Stateless,
        );
        assert_eq!((reply.verdict, reply.path), ("allow", Some("reply")));
        let outside = ask(
            "192.168.10.2",
            "198.51.100.10",
            40000,
            22,
            "syn",
            Replies::Stateful,
        );
        assert_eq!(
            (outside.verdict, outside.reason),
            ("pass", Some("out_of_scope"))
        );
        assert!(parse_tcp_flags("syn,bogus").is_err());
    }

    #[test]
    fn learned_names_pick_their_row() {
        let policy = load_policy(&Source::default_spec(), &SiteOptions::default()).unwrap();
        let mut request = ExplainRequest {
            src: "192.168.10.2".parse().unwrap(),
            dst: "185.13.72.10".parse().unwrap(),
            proto: "tcp".into(),
            sport: 40000,
            dport: 443,
            tcp_flags: "syn".into(),
            mode: Mode::Enforce,
            replies: Replies::Stateful,
            learned: vec![],
        };
        assert_eq!(
            explain(&policy, &request).unwrap().rule.as_deref(),
            Some("web-mobile-openapi")
        );
        request.learned = vec![("X.Service-Now.com.".into(), request.dst)];
        assert_eq!(
            explain(&policy, &request).unwrap().rule.as_deref(),
            Some("emis-x-service-now")
        );
        request.dst = "194.189.117.64".parse().unwrap();
        request.learned = vec![("x.service-now.com".into(), request.dst)];
        assert_eq!(explain(&policy, &request).unwrap().verdict, "deny");
    }
}
