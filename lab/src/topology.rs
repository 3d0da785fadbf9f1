//! The lab's shape: three network namespaces named after a prefix (site LAN, gateway,
//! EMIS side), their addresses, interfaces and routes, and [`Lab`], which creates them
//! and deletes them again.

use std::io;
use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::command::{ip, run};
use crate::netns::{in_netns, netns_list};
use crate::preflight::require_root_and_tools;

/// The site LAN host (`site0` in `<p>-site`).
pub const SITE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 2);
/// The "clinical server": a second address on `site0`.
pub const CLINICAL_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 5);
/// The gateway's site-side address (`gw-site`), the site's default route.
pub const GW_SITE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 1);
/// The gateway's EMIS-side address (`gw-emis`), the EMIS side's default route.
pub const GW_EMIS_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The EMIS side's link address (`emis0`), the gateway's next hop to EMIS networks.
pub const EMIS_LINK_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// EMIS primary data centre (Table 1, 10.207.116.0/22).
pub const EMIS_PRIMARY: Ipv4Addr = Ipv4Addr::new(10, 207, 116, 10);
/// EMIS backup data centre (Table 1, 10.207.112.0/22).
pub const EMIS_BACKUP: Ipv4Addr = Ipv4Addr::new(10, 207, 112, 10);
/// EMIS internet-facing services (Table 3, 185.13.72.0/22).
pub const EMIS_INTERNET: Ipv4Addr = Ipv4Addr::new(185, 13, 72, 10);
/// EMIS legacy N2 network (Table 2, 194.189.117.64/26).
pub const EMIS_N2: Ipv4Addr = Ipv4Addr::new(194, 189, 117, 70);
/// An internet host outside every enforce-scope network (TEST-NET-2).
pub const OUT_OF_SCOPE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

/// The site LAN, as given to `emis run --site-net lan=...`.
pub const SITE_NET: &str = "192.168.10.0/24";
/// Networks the gateway routes to the EMIS side.
pub const EMIS_SIDE_ROUTES: [&str; 4] = [
    "10.207.112.0/21",
    "185.13.72.0/22",
    "194.189.117.64/26",
    "198.51.100.0/24",
];
/// Addresses (each /32 on `lo`) served by the EMIS side.
pub const EMIS_SIDE_ADDRS: [Ipv4Addr; 5] = [
    EMIS_PRIMARY,
    EMIS_BACKUP,
    EMIS_INTERNET,
    EMIS_N2,
    OUT_OF_SCOPE,
];

/// Interface names (the same in every lab; namespaces keep them apart).
pub const SITE_IFACE: &str = "site0";
pub const GW_SITE_IFACE: &str = "gw-site";
pub const GW_EMIS_IFACE: &str = "gw-emis";
pub const EMIS_IFACE: &str = "emis0";

/// One of the lab's three namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host {
    /// The site LAN (`<p>-site`).
    Site,
    /// The Linux gateway the enforcer runs on (`<p>-gw`).
    Gateway,
    /// The EMIS side and the internet beyond it (`<p>-emis`).
    Emis,
}

impl Host {
    /// All hosts, in creation order.
    pub const ALL: [Host; 3] = [Host::Site, Host::Gateway, Host::Emis];

    /// The namespace-name suffix (`site`, `gw`, `emis`).
    pub fn suffix(self) -> &'static str {
        match self {
            Host::Site => "site",
            Host::Gateway => "gw",
            Host::Emis => "emis",
        }
    }
}

/// `name`, followed by `-TAG` when the environment sets `EMIS_LAB_TAG`: labs, pin
/// dirs and state dirs of test runs from different checkouts on one machine then never
/// share a name, so the runs can go on side by side.
pub fn isolated(name: &str) -> String {
    match std::env::var("EMIS_LAB_TAG") {
        Ok(tag) if !tag.is_empty() => format!("{name}-{tag}"),
        _ => name.to_string(),
    }
}

/// The namespace name of `host` in the lab with `prefix` (`<prefix>-<suffix>`).
pub fn ns_name(prefix: &str, host: Host) -> String {
    format!("{prefix}-{}", host.suffix())
}

/// A created lab. Dropping it deletes its namespaces (errors ignored), unless
/// [`Lab::keep`] was called.
///
/// Drop sockets made inside the lab ([`TcpServers`](crate::TcpServers), [`UdpEcho`](crate::UdpEcho)) before the lab:
/// a socket keeps its namespace, and its interfaces, alive after `ip netns del`.
#[derive(Debug)]
pub struct Lab {
    /// The prefix of every namespace name.
    pub prefix: String,
    keep: bool,
}

impl Lab {
    /// Creates the lab, after removing leftovers with the same prefix (namespaces of
    /// a lab that was not torn down). Needs root. An error names the failing `ip`
    /// command and its stderr; whatever was created by then is removed again.
    /// With `EMIS_LAB_TAG` set, the prefix carries the tag (see [`isolated`]).
    pub fn create(prefix: &str) -> Result<Lab> {
        let prefix = &isolated(prefix);
        validate_prefix(prefix)?;
        require_root_and_tools()?;
        Lab::remove(prefix).context("removing a leftover lab with the same prefix")?;
        let lab = Lab {
            prefix: prefix.to_string(),
            keep: false,
        };
        // On error `lab` is dropped here, which deletes what was made.
        lab.build()
            .with_context(|| format!("creating the network-namespace lab `{prefix}`"))?;
        Ok(lab)
    }

    /// Everything in the diagram, in the order the kernel needs it: namespaces, links,
    /// addresses, then routes over the links and forwarding on the gateway.
    fn build(&self) -> Result<()> {
        self.add_namespaces_and_links()?;
        self.address_site()?;
        self.address_gateway()?;
        self.address_emis_side()?;
        // Routes after the links are up, so the next hops are reachable.
        self.add_routes()?;
        self.enable_forwarding()
    }

    /// The three namespaces with `lo` up, and the two veth pairs between them.
    fn add_namespaces_and_links(&self) -> Result<()> {
        let site = self.ns(Host::Site);
        let gw = self.ns(Host::Gateway);
        let emis = self.ns(Host::Emis);
        for ns in [&site, &gw, &emis] {
            ip(&["netns", "add", ns])?;
        }
        for ns in [&site, &gw, &emis] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // Each veth is created inside its namespace with its peer placed directly in
        // the other one, so no name ever appears in the root namespace.
        ip(&[
            "-n",
            &site,
            "link",
            "add",
            SITE_IFACE,
            "type",
            "veth",
            "peer",
            "name",
            GW_SITE_IFACE,
            "netns",
            &gw,
        ])?;
        ip(&[
            "-n",
            &gw,
            "link",
            "add",
            GW_EMIS_IFACE,
            "type",
            "veth",
            "peer",
            "name",
            EMIS_IFACE,
            "netns",
            &emis,
        ])?;
        Ok(())
    }

    /// The site LAN host and the clinical server on `site0`.
    fn address_site(&self) -> Result<()> {
        let site = self.ns(Host::Site);
        ip(&[
            "-n",
            &site,
            "addr",
            "add",
            &format!("{SITE_ADDR}/24"),
            "dev",
            SITE_IFACE,
        ])?;
        ip(&[
            "-n",
            &site,
            "addr",
            "add",
            &format!("{CLINICAL_ADDR}/24"),
            "dev",
            SITE_IFACE,
        ])?;
        ip(&["-n", &site, "link", "set", SITE_IFACE, "up"])?;
        Ok(())
    }

    /// The gateway's two sides.
    fn address_gateway(&self) -> Result<()> {
        let gw = self.ns(Host::Gateway);
        ip(&[
            "-n",
            &gw,
            "addr",
            "add",
            &format!("{GW_SITE_ADDR}/24"),
            "dev",
            GW_SITE_IFACE,
        ])?;
        ip(&[
            "-n",
            &gw,
            "addr",
            "add",
            &format!("{GW_EMIS_ADDR}/30"),
            "dev",
            GW_EMIS_IFACE,
        ])?;
        ip(&["-n", &gw, "link", "set", GW_SITE_IFACE, "up"])?;
        ip(&["-n", &gw, "link", "set", GW_EMIS_IFACE, "up"])?;
        Ok(())
    }

    /// The EMIS side's link, and every EMIS-side address on its `lo`.
    fn address_emis_side(&self) -> Result<()> {
        let emis = self.ns(Host::Emis);
        ip(&[
            "-n",
            &emis,
            "addr",
            "add",
            &format!("{EMIS_LINK_ADDR}/30"),
            "dev",
            EMIS_IFACE,
        ])?;
        ip(&["-n", &emis, "link", "set", EMIS_IFACE, "up"])?;
        for addr in EMIS_SIDE_ADDRS {
            ip(&[
                "-n",
                &emis,
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                "lo",
            ])?;
        }
        Ok(())
    }

    /// Default routes of the site and the EMIS side; the gateway's routes to EMIS networks.
    fn add_routes(&self) -> Result<()> {
        let site = self.ns(Host::Site);
        let gw = self.ns(Host::Gateway);
        let emis = self.ns(Host::Emis);
        let gw_site = GW_SITE_ADDR.to_string();
        let gw_emis = GW_EMIS_ADDR.to_string();
        let emis_link = EMIS_LINK_ADDR.to_string();
        ip(&["-n", &site, "route", "add", "default", "via", &gw_site])?;
        ip(&["-n", &emis, "route", "add", "default", "via", &gw_emis])?;
        for net in EMIS_SIDE_ROUTES {
            ip(&["-n", &gw, "route", "add", net, "via", &emis_link])?;
        }
        Ok(())
    }

    /// ip_forward=1 on the gateway, read back.
    fn enable_forwarding(&self) -> Result<()> {
        let gw = self.ns(Host::Gateway);
        // /proc/sys/net follows the netns of the thread that opens it, so no `sysctl`
        // binary is needed.
        const FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
        let value = in_netns(&gw, || -> io::Result<String> {
            std::fs::write(FORWARD, "1")?;
            std::fs::read_to_string(FORWARD)
        })?
        .with_context(|| format!("setting {FORWARD}=1 in netns {gw}"))?;
        if value.trim() != "1" {
            bail!(
                "{FORWARD} in netns {gw} reads {:?} after writing 1",
                value.trim()
            );
        }
        Ok(())
    }

    /// The namespace name of `which`.
    pub fn ns(&self, which: Host) -> String {
        ns_name(&self.prefix, which)
    }

    /// All three namespace names, in [`Host::ALL`] order.
    pub fn namespaces(&self) -> [String; 3] {
        Host::ALL.map(|h| self.ns(h))
    }

    /// The gateway interfaces the enforcer attaches to: `["gw-site", "gw-emis"]`.
    pub fn gateway_ifaces(&self) -> [&'static str; 2] {
        [GW_SITE_IFACE, GW_EMIS_IFACE]
    }

    /// Runs `ip -n <ns> ARGS...` in the namespace of `which`; returns its stdout.
    pub fn ip(&self, which: Host, args: &[&str]) -> Result<String> {
        let ns = self.ns(which);
        let mut all = vec!["-n", ns.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `ip netns exec <ns> PROGRAM ARGS...`; returns its stdout, or an error
    /// naming the command and its stderr.
    pub fn exec(&self, which: Host, program: &str, args: &[&str]) -> Result<String> {
        let ns = self.ns(which);
        let mut all = vec!["netns", "exec", ns.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Leaves the namespaces in place when the `Lab` goes away (`cargo xtask lab up`).
    /// [`Lab::remove`] deletes them later.
    pub fn keep(mut self) {
        self.keep = true;
    }

    /// Deletes the namespaces of the lab with `prefix` that exist; returns their
    /// names. Only the three exact names are touched, never other `<prefix>*` ones.
    pub fn remove(prefix: &str) -> Result<Vec<String>> {
        validate_prefix(prefix)?;
        let existing = netns_list()?;
        let mut removed = Vec::new();
        for host in Host::ALL {
            let ns = ns_name(prefix, host);
            if existing.contains(&ns) {
                ip(&["netns", "del", &ns])?;
                removed.push(ns);
            }
        }
        Ok(removed)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for ns in self.namespaces() {
            // Errors ignored on purpose: teardown must not panic, and a namespace
            // that was never created cannot be deleted.
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

/// Checks that a prefix can name namespaces: 1-64 characters of `[A-Za-z0-9_.-]`,
/// not starting with `-` or `.`.
pub fn validate_prefix(prefix: &str) -> Result<()> {
    let ok_chars = prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if prefix.is_empty()
        || prefix.len() > 64
        || !ok_chars
        || prefix.starts_with('-')
        || prefix.starts_with('.')
    {
        bail!(
            "invalid lab prefix {prefix:?}: use 1-64 characters of [A-Za-z0-9_.-], \
             not starting with '-' or '.'"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        assert_eq!(ns_name("emisdemo", Host::Site), "emisdemo-site");
        assert_eq!(ns_name("emisdemo", Host::Gateway), "emisdemo-gw");
        assert_eq!(ns_name("emisdemo", Host::Emis), "emisdemo-emis");
        // A Lab value that was never created: keep() so Drop runs no `ip` command.
        let lab = Lab {
            prefix: "x1".into(),
            keep: true,
        };
        assert_eq!(lab.namespaces(), ["x1-site", "x1-gw", "x1-emis"]);
        assert_eq!(lab.gateway_ifaces(), ["gw-site", "gw-emis"]);
        lab.keep();
    }

    #[test]
    fn addresses_sit_in_their_networks() {
        let in_net = |a: Ipv4Addr, net: &str| {
            let (base, len) = net.split_once('/').unwrap();
            let base: Ipv4Addr = base.parse().unwrap();
            let len: u32 = len.parse().unwrap();
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(base) & mask
        };
        for a in [SITE_ADDR, CLINICAL_ADDR, GW_SITE_ADDR] {
            assert!(in_net(a, SITE_NET), "{a}");
        }
        // Every EMIS-side address is routed by the gateway.
        for a in EMIS_SIDE_ADDRS {
            assert!(
                EMIS_SIDE_ROUTES.iter().any(|n| in_net(a, n)),
                "{a} not routed"
            );
        }
        assert!(in_net(EMIS_PRIMARY, "10.207.116.0/22"));
        assert!(in_net(EMIS_BACKUP, "10.207.112.0/22"));
        assert!(in_net(EMIS_INTERNET, "185.13.72.0/22"));
        assert!(in_net(EMIS_N2, "194.189.117.64/26"));
        assert!(in_net(GW_EMIS_ADDR, "198.18.0.0/30") && in_net(EMIS_LINK_ADDR, "198.18.0.0/30"));
    }

    #[test]
    fn prefixes_are_checked() {
        for ok in ["emisdemo", "t_1", "a.b-c", "X"] {
            validate_prefix(ok).unwrap();
        }
        for bad in ["", "-x", ".x", "a/b", "a b", "ä", &"x".repeat(65)] {
            assert!(validate_prefix(bad).is_err(), "{bad:?} accepted");
        }
    }
}
