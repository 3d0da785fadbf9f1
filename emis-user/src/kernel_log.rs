//! The kernel log (`emis run --kernel-log debug`): what the program's per-decision trace
//! selects (`--kernel-log-match ADDR[/LEN]`), and its lines read back and named.
//!
//! The program writes one aya-log line per traced decision with numbers only
//! (`decided if=3 src=c0a80a02 dst=0acf740a proto=6 code=0 id=2 mode=0`): it has no stack
//! to spare for names. [`TraceLine::parse`] reads such a line and [`TraceLine::describe`]
//! names the interface, addresses, protocol, decision, rule or network and action, as
//! `emis watch` does for events.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
};

use emis_common::{
    Action, DenyReason, Path, TraceMatch, MODE_AUDIT, NO_NETWORK, TRACE_CODE_ALLOWED,
};
use ipnet::IpNet;

use crate::stats::Labels;

/// How much of the kernel log `emis run --kernel-log` shows: the program writes its
/// per-decision trace at debug level, and nothing at the levels above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KernelLog {
    #[default]
    Off,
    Debug,
}

impl KernelLog {
    pub const ALL: [KernelLog; 2] = [KernelLog::Off, KernelLog::Debug];
    pub const fn name(self) -> &'static str {
        match self {
            KernelLog::Off => "off",
            KernelLog::Debug => "debug",
        }
    }
}

impl std::str::FromStr for KernelLog {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KernelLog::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("`{s}` is not a kernel log level: off or debug"))
    }
}

/// Which packets the trace reports: those with an address in `prefix`, or all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TraceFilter {
    pub prefix: Option<IpNet>,
}

impl TraceFilter {
    /// The kernel's filter; `bare_ip` lists the ifindexes of interfaces whose frames start
    /// at the IP header (the `emis_l3` program's), so the trace finds the addresses.
    pub fn to_kernel(&self, bare_ip: impl IntoIterator<Item = u32>) -> TraceMatch {
        let mut m = match self.prefix {
            None => TraceMatch::default(),
            Some(IpNet::V4(n)) => TraceMatch::prefix(&n.addr().octets(), n.prefix_len()),
            Some(IpNet::V6(n)) => TraceMatch::prefix(&n.addr().octets(), n.prefix_len()),
        };
        for ifindex in bare_ip {
            m.set_bare_ip(ifindex);
        }
        m
    }
}

/// `ADDR` or `ADDR/LEN`, for `--kernel-log-match` and the `kernel_log_match` key.
pub fn parse_match(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{text}` is not an address or ADDR/LEN (e.g. 192.168.10.0/24)"))
}

/// One decision the program traced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceLine {
    pub ifindex: u32,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub code: u32,
    pub id: u32,
    pub mode: u32,
}

impl TraceLine {
    /// Reads a line of the program's trace; `None` for any other text.
    pub fn parse(text: &str) -> Option<TraceLine> {
        let rest = text.trim().strip_prefix("decided ")?;
        let fields: HashMap<&str, &str> = rest
            .split_whitespace()
            .filter_map(|f| f.split_once('='))
            .collect();
        let number = |key: &str| fields.get(key)?.parse::<u32>().ok();
        Some(TraceLine {
            ifindex: number("if")?,
            src: address(fields.get("src")?)?,
            dst: address(fields.get("dst")?)?,
            proto: number("proto")?.try_into().ok()?,
            code: number("code")?,
            id: number("id")?,
            mode: number("mode")?,
        })
    }

    /// The line with names: `gw-site 192.168.10.2 -> 10.207.116.10 tcp: deny no_rule
    /// network emis-n3 (drop)`, or `...: allow rule client-spine-messaging (forward)`.
    pub fn describe(&self, labels: &Labels, ifaces: &HashMap<u32, String>) -> String {
        let iface = ifaces
            .get(&self.ifindex)
            .cloned()
            .unwrap_or_else(|| format!("if{}", self.ifindex));
        let head = format!(
            "{iface} {} -> {} {}",
            self.src,
            self.dst,
            crate::events::proto_name(self.proto)
        );
        if self.code & TRACE_CODE_ALLOWED != 0 {
            let path = Path::from_raw(self.code & !TRACE_CODE_ALLOWED).name();
            let rule = crate::events::rule_slug(labels, self.id)
                .unwrap_or_else(|| format!("slot {}", self.id));
            format!("{head}: allow rule {rule} ({path})")
        } else {
            let reason = DenyReason::ALL
                .iter()
                .find(|r| **r as u32 == self.code)
                .map_or_else(|| self.code.to_string(), |r| r.name().to_string());
            let network = match self.id {
                NO_NETWORK => "-".to_string(),
                n => labels
                    .networks
                    .get(n as usize)
                    .cloned()
                    .unwrap_or_else(|| n.to_string()),
            };
            let action = Action::under(if self.mode & 1 == 1 { MODE_AUDIT } else { 0 }).name();
            format!("{head}: deny {reason} network {network} ({action})")
        }
    }
}

/// An address as aya-log prints a byte slice in hex: 8 digits for IPv4, 32 for IPv6.
fn address(hex: &str) -> Option<IpAddr> {
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).ok()?,
        ))),
        _ => None,
    }
}

/// A `log::Log` that keeps the messages it is given (tests read the trace through it).
#[derive(Clone, Default)]
pub struct Collect(pub Arc<Mutex<Vec<String>>>);

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut lines) = self.0.lock() {
            lines.push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

/// A `log::Log` that names each traced decision and writes it to the daemon's log
/// (target `emis::kernel`, level info, so `--kernel-log debug` needs no `EMIS_LOG`).
pub struct Forward {
    /// The labels of the policy in force (a reload swaps them) and the interfaces.
    pub names: Arc<dyn Fn() -> (Labels, HashMap<u32, String>) + Send + Sync>,
}

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let text = record.args().to_string();
        match TraceLine::parse(&text) {
            Some(line) => {
                let (labels, ifaces) = (self.names)();
                tracing::info!(target: "emis::kernel", "{}", line.describe(&labels, &ifaces));
            }
            None => tracing::info!(target: "emis::kernel", "{text}"),
        }
    }
    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Labels {
        Labels {
            rules: vec![
                ("web".into(), "outbound".into()),
                ("spine".into(), "outbound".into()),
            ],
            networks: vec!["emis-n1".into(), "emis-n3".into()],
            slots: Vec::new(),
        }
    }

    #[test]
    fn trace_lines_are_read_and_named() {
        let ifaces = HashMap::from([(3, "gw-site".to_string())]);
        let deny =
            TraceLine::parse("decided if=3 src=c0a80a02 dst=0acf740a proto=6 code=0 id=1 mode=0")
                .unwrap();
        assert_eq!(deny.src, "192.168.10.2".parse::<IpAddr>().unwrap());
        assert_eq!(
            deny.describe(&labels(), &ifaces),
            "gw-site 192.168.10.2 -> 10.207.116.10 tcp: deny no_rule network emis-n3 (drop)"
        );
        let audit = TraceLine {
            mode: 1,
            ..deny.clone()
        };
        assert!(audit.describe(&labels(), &ifaces).ends_with("(audit)"));
        let allow = TraceLine::parse(&format!(
            "decided if=9 src=20010db8000000000000000000000001 dst=20010db8000000000000000000000002 proto=17 code={} id=1 mode=0",
            TRACE_CODE_ALLOWED | 1
        ))
        .unwrap();
        assert_eq!(
            allow.describe(&labels(), &ifaces),
            "if9 2001:db8::1 -> 2001:db8::2 udp: allow rule spine (reply)"
        );
        assert_eq!(TraceLine::parse("something else"), None);
        assert_eq!(
            TraceLine::parse("decided if=1 src=zz dst=00 proto=1 code=0 id=0 mode=0"),
            None
        );
    }

    #[test]
    fn a_match_is_an_address_or_a_prefix() {
        assert_eq!(parse_match("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(parse_match("10.1.0.0/16").unwrap().prefix_len(), 16);
        assert_eq!(parse_match("2001:db8::/32").unwrap().prefix_len(), 32);
        assert!(parse_match("10.1/8").is_err());
        let kernel = TraceFilter {
            prefix: Some(parse_match("10.1.0.0/16").unwrap()),
        }
        .to_kernel([5]);
        assert!(kernel.bare_ip(5) && !kernel.bare_ip(4));
        assert_eq!(kernel.family, emis_common::TRACE_V4);
    }
}
