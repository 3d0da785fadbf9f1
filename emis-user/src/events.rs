//! Drop events as the daemon hands them to clients: one JSON object a line on
//! `<state dir>/events.sock`. The daemon turns a kernel [`Event`] into an [`EventLine`]
//! (reading addresses, ports and flags from the captured frame); `emis watch` and
//! `emis capture` read the lines and keep those a [`Filter`] matches.

use std::{
    io::{BufRead as _, BufReader},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use emis_common::{
    Action, DenyReason, Event, Path as RulePath, ETH_P_IPV4, ETH_P_IPV6, EVENT_KIND_ALLOWED,
    NO_NETWORK, PROTO_TCP, PROTO_UDP,
};
use serde::{Deserialize, Serialize};

use crate::stats::Labels;

pub const EVENTS_SOCKET: &str = "events.sock";

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(EVENTS_SOCKET)
}

/// One denied packet, for clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLine {
    /// RFC 3339, UTC.
    pub time: String,
    /// The same, in nanoseconds since the Unix epoch.
    pub time_ns: u64,
    pub iface: String,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    /// tcp, udp, icmp, icmpv6, or the IP protocol number.
    pub proto: Option<String>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// TCP flags as letters (S, A, F, R, P, U), empty for other protocols.
    pub tcp_flags: String,
    /// Why it was denied (as `emis_denied_packets_total`'s `reason`); for a sampled
    /// allowed packet, how it matched its rule (`forward`, `reply`, `related`).
    pub reason: String,
    pub network: String,
    /// `drop`, `audit`, or `allow` for a sampled allowed packet.
    pub action: String,
    /// The rule that allowed a sampled packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The frame's length; `frame` holds its first bytes (at most 128), in hex.
    pub frame_len: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub frame: String,
}

impl EventLine {
    /// `time_unix_ns` is the event's time on the wall clock.
    pub fn from_event(event: &Event, time_unix_ns: i128, iface: String, labels: &Labels) -> Self {
        let networks = &labels.networks;
        let allowed = event.kind == EVENT_KIND_ALLOWED;
        let captured = (event.captured_len as usize).min(event.frame.len());
        let frame = &event.frame[..captured];
        let headers = Headers::parse(frame);
        let reason = if allowed {
            RulePath::from_raw(event.reason).name().to_string()
        } else {
            DenyReason::ALL
                .iter()
                .find(|r| **r as u32 == event.reason)
                .map_or_else(|| event.reason.to_string(), |r| r.name().to_string())
        };
        let action = if allowed {
            "allow".to_string()
        } else {
            Action::ALL
                .iter()
                .find(|a| **a as u32 == event.action)
                .map_or_else(|| event.action.to_string(), |a| a.name().to_string())
        };
        let rule = allowed.then(|| rule_slug(labels, event.rule)).flatten();
        let network = match event.network {
            NO_NETWORK => "-".to_string(),
            n => networks
                .get(n as usize)
                .cloned()
                .unwrap_or_else(|| n.to_string()),
        };
        let time = time::OffsetDateTime::from_unix_timestamp_nanos(time_unix_ns)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        EventLine {
            time,
            time_ns: time_unix_ns.max(0) as u64,
            iface,
            src: headers.as_ref().map(|h| h.src),
            dst: headers.as_ref().map(|h| h.dst),
            proto: headers.as_ref().map(|h| proto_name(h.proto)),
            sport: headers.as_ref().and_then(|h| h.ports.map(|p| p.0)),
            dport: headers.as_ref().and_then(|h| h.ports.map(|p| p.1)),
            tcp_flags: headers
                .as_ref()
                .filter(|h| h.proto == PROTO_TCP)
                .map_or_else(String::new, |h| flag_letters(h.tcp_flags)),
            reason,
            network,
            action,
            rule,
            frame_len: event.frame_len,
            frame: hex(frame),
        }
    }

    /// The captured bytes of the frame.
    pub fn frame_bytes(&self) -> Vec<u8> {
        (0..self.frame.len() / 2)
            .filter_map(|i| u8::from_str_radix(&self.frame[2 * i..2 * i + 2], 16).ok())
            .collect()
    }
}

/// The slug of the rule counted in `slot`.
pub(crate) fn rule_slug(labels: &Labels, slot: u32) -> Option<String> {
    let index = if labels.slots.is_empty() {
        slot as usize
    } else {
        labels.slots.iter().position(|s| *s == slot)?
    };
    labels.rules.get(index).map(|(slug, _)| slug.clone())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn proto_name(proto: u8) -> String {
    match proto {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

fn flag_letters(flags: u8) -> String {
    [
        (0x02, 'S'),
        (0x10, 'A'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x20, 'U'),
    ]
    .iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, c)| *c)
    .collect()
}

/// What a frame's first bytes say about it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Headers {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    ports: Option<(u16, u16)>,
    tcp_flags: u8,
}

impl Headers {
    /// Ethernet, up to two VLAN tags, IPv4 or IPv6 (with the extension headers the kernel
    /// program walks), then the TCP or UDP ports; `None` if the bytes end first.
    fn parse(b: &[u8]) -> Option<Headers> {
        let be16 =
            |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?])) };
        let mut off = 12;
        let mut ethertype = be16(off)?;
        for _ in 0..2 {
            if ethertype == 0x8100 || ethertype == 0x88a8 {
                off += 4;
                ethertype = be16(off)?;
            }
        }
        off += 2;
        let (src, dst, mut proto, mut l4, later_fragment);
        if ethertype == ETH_P_IPV4 {
            let ihl = (*b.get(off)? as usize & 0x0f) * 4;
            let frag = be16(off + 6)? & 0x1fff;
            proto = *b.get(off + 9)?;
            let a: [u8; 4] = b.get(off + 12..off + 16)?.try_into().ok()?;
            let d: [u8; 4] = b.get(off + 16..off + 20)?.try_into().ok()?;
            src = IpAddr::from(a);
            dst = IpAddr::from(d);
            l4 = off + ihl;
            later_fragment = frag != 0;
        } else if ethertype == ETH_P_IPV6 {
            proto = *b.get(off + 6)?;
            let a: [u8; 16] = b.get(off + 8..off + 24)?.try_into().ok()?;
            let d: [u8; 16] = b.get(off + 24..off + 40)?.try_into().ok()?;
            src = IpAddr::from(a);
            dst = IpAddr::from(d);
            l4 = off + 40;
            let mut fragment_offset = 0;
            for _ in 0..8 {
                let len = match proto {
                    0 | 43 | 60 => (*b.get(l4 + 1)? as usize + 1) * 8,
                    44 => {
                        fragment_offset = be16(l4 + 2)? >> 3;
                        8
                    }
                    51 => (*b.get(l4 + 1)? as usize + 2) * 4,
                    _ => break,
                };
                proto = *b.get(l4)?;
                l4 += len;
            }
            later_fragment = fragment_offset != 0;
        } else {
            return None;
        }
        let mut headers = Headers {
            src,
            dst,
            proto,
            ports: None,
            tcp_flags: 0,
        };
        if !later_fragment && (proto == PROTO_TCP || proto == PROTO_UDP) {
            headers.ports = be16(l4).zip(be16(l4 + 2));
            if proto == PROTO_TCP {
                headers.tcp_flags = b.get(l4 + 13).copied().unwrap_or(0);
            }
        }
        Some(headers)
    }
}

/// Which events a client wants; every criterion given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub reason: Option<String>,
    pub network: Option<String>,
    pub iface: Option<String>,
    pub rule: Option<String>,
}

impl Filter {
    pub fn matches(&self, line: &EventLine) -> bool {
        self.reason.as_ref().is_none_or(|r| *r == line.reason)
            && self.network.as_ref().is_none_or(|n| *n == line.network)
            && self.iface.as_ref().is_none_or(|i| *i == line.iface)
            && self
                .rule
                .as_ref()
                .is_none_or(|r| Some(r) == line.rule.as_ref())
    }
}

/// Why a client could not read events.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the emis daemon is not running (no {path}): start it with `emis run`, or pass the \
         --state-dir it uses"
    )]
    NotRunning { path: String },
    #[error("connecting to {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("reading events: {0}")]
    Read(#[from] std::io::Error),
    #[error("an event line the daemon sent does not parse: {0}")]
    Parse(#[from] serde_json::Error),
}

/// Connects to the daemon's event socket.
pub fn connect(
    state_dir: &Path,
) -> Result<impl Iterator<Item = Result<EventLine, ClientError>>, ClientError> {
    let path = socket_path(state_dir);
    let stream = UnixStream::connect(&path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning {
                path: path.display().to_string(),
            }
        }
        _ => ClientError::Connect {
            path: path.display().to_string(),
            source,
        },
    })?;
    Ok(BufReader::new(stream).lines().map(|line| {
        let line = line?;
        Ok(serde_json::from_str(&line)?)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_come_from_the_captured_frame() {
        let spec = emis_policy::packet::PacketSpec::tcp(
            "10.0.0.1".parse().unwrap(),
            "192.0.2.9".parse().unwrap(),
            40000,
            22,
            0x02,
        )
        .with_vlans(&[(0x8100, 7)]);
        let frame = spec.build();
        let h = Headers::parse(&frame[..frame.len().min(128)]).unwrap();
        assert_eq!(h.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(h.dst, "192.0.2.9".parse::<IpAddr>().unwrap());
        assert_eq!(h.proto, PROTO_TCP);
        assert_eq!(h.ports, Some((40000, 22)));
        assert_eq!(flag_letters(h.tcp_flags), "S");
    }
}
