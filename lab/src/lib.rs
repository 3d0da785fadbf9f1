//! The hermetic network-namespace lab and the test fixtures shared by `cargo xtask demo`,
//! the integration tests and the benchmark: the one home of namespace and test helpers.
//!
//! [`Lab::create`] builds three network namespaces with `ip` (iproute2), all named
//! after a caller-given prefix so parallel users do not collide:
//!
//! ```text
//!  <p>-site                     <p>-gw (ip_forward=1)                 <p>-emis
//!  site0 192.168.10.2/24 ---- gw-site 192.168.10.1/24
//!        192.168.10.5/24        gw-emis 198.18.0.1/30 ---------- emis0 198.18.0.2/30
//!  default via .10.1            10.207.112.0/21, 185.13.72.0/22,   lo: 10.207.116.10, 10.207.112.10,
//!                               194.189.117.64/26, 198.51.100.0/24     185.13.72.10, 194.189.117.70,
//!                               via 198.18.0.2                         198.51.100.10 (all /32)
//!                                                                  default via 198.18.0.1
//! ```
//!
//! No namespace is connected to the root namespace or to a real interface, so lab
//! traffic cannot leave the machine. The enforcer attaches to the gateway's two
//! interfaces ([`Lab::gateway_ifaces`]).
//!
//! Modules, one job each:
//! - [`topology`]: the namespaces, addresses, interfaces and routes; [`Lab`].
//! - [`site`]: the test site (`--site-net` roles) every test, the benchmark and the demo use.
//! - [`netns`]: running code inside a namespace ([`in_netns`], [`in_netns_scoped`]).
//! - [`command`]: running `ip`, `nft`, ... with errors that name the command; shell quoting.
//! - [`preflight`]: the root and tool checks ([`require_root_and_tools`]).
//! - [`daemon`]: spawning, stopping and killing `emis run`, `emis detach`, GET /metrics.
//! - [`dns`]: crafted DNS responses sent from a resolver's port 53 across the gateway.
//! - [`tcp`], [`udp`]: probes and servers that drive traffic through the lab
//!   ([`TcpServers`], [`tcp_connects`], [`UdpEcho`], [`udp_round_trip`]).
//!
//! Everything needs root except the pure helpers.

pub mod command;
pub mod daemon;
pub mod dns;
pub mod netns;
pub mod preflight;
pub mod site;
pub mod tcp;
pub mod topology;
pub mod udp;
mod worker;

pub use command::{command_line, quote};
pub use netns::{
    enter_netns, ifindex, in_netns, in_netns_scoped, netns_list, netns_path, parse_netns_list,
    NETNS_RUN_DIR,
};
pub use preflight::{is_root, require_root, require_root_and_tools};
pub use tcp::{tcp_connects, tcp_connects_from, tcp_probe, TcpOutcome, TcpServers};
pub use topology::*;
pub use udp::{udp_round_trip, udp_round_trip_from, UdpEcho};
