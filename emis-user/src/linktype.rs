//! Which enforcer program an interface takes, from its link type (ARPHRD): `emis` where
//! frames start with an Ethernet header, `emis_l3` where they start with the IP header
//! (tun, wireguard, PPP, ipip, ip6tnl, sit). Any other link type is refused by name, so no
//! interface is ever attached with its headers misread.
//!
//! What XDP in skb mode sees starts at the device's MAC header. tun, wireguard and PPP
//! have none; ipip, sit and ip6tnl reset it to the inner IP header on receive. A GRE
//! device (ARPHRD_IPGRE) sets it to the *outer* IP header (`__ipgre_rcv` pops the MAC
//! header to the network header, so packet sockets see the tunnel's addresses), so XDP
//! there reads the tunnel endpoints and protocol 47, not the packet the policy is about:
//! GRE is refused.
//!
//! The link type is asked of the kernel with SIOCGIFHWADDR on a socket the calling thread
//! opens, so it is the interface of the thread's network namespace: call it from the
//! thread that attaches (inside the namespace). `/sys/class/net/IF/type` holds the same
//! number but shows the namespace sysfs was mounted in, not the caller's.

use std::{ffi::CString, io, path::Path};

use emis_common::{Link, PROGRAM_NAME, PROGRAM_NAME_L3};

/// Link types (`include/uapi/linux/if_arp.h`) the enforcer reads.
pub const ARPHRD_ETHER: u16 = 1;
pub const ARPHRD_PPP: u16 = 512;
pub const ARPHRD_TUNNEL: u16 = 768;
pub const ARPHRD_TUNNEL6: u16 = 769;
pub const ARPHRD_SIT: u16 = 776;
pub const ARPHRD_IPGRE: u16 = 778;
/// tun in IFF_TUN mode and wireguard: no link header at all.
pub const ARPHRD_NONE: u16 = 65534;
/// GRE over IPv4 and IPv6: XDP sees the outer headers there (module doc).
pub const ARPHRD_IP6GRE: u16 = 823;

#[derive(Debug, thiserror::Error)]
pub enum LinkTypeError {
    #[error(
        "interface {iface} has link type {arphrd} ({name}), which emis cannot read: it \
         reads Ethernet (type 1) and devices without a link header (tun, wireguard, PPP, \
         ipip, sit, ip6tnl); attach it to the Ethernet or IP device beneath or above instead"
    )]
    Unsupported {
        iface: String,
        arphrd: u16,
        name: &'static str,
    },
    #[error(
        "interface {iface} is a GRE tunnel (link type {arphrd}): the kernel hands XDP its \
         packets from the outer IP header, so emis would judge the tunnel endpoints instead \
         of the traffic; run the GRE tunnel over an interface emis guards for its own \
         traffic, or use an ipip, sit, ip6tnl or wireguard tunnel, which emis reads"
    )]
    OuterHeader { iface: String, arphrd: u16 },
    #[error("interface {iface}: cannot read its link type ({source}); does it exist in this network namespace?")]
    Read {
        iface: String,
        #[source]
        source: io::Error,
    },
    #[error("interface name {0:?} is not a valid interface name")]
    BadName(String),
}

/// The program for an interface of link type `arphrd`, or an error naming both.
pub fn link_for(iface: &str, arphrd: u16) -> Result<Link, LinkTypeError> {
    match arphrd {
        ARPHRD_ETHER => Ok(Link::Ethernet),
        ARPHRD_NONE | ARPHRD_PPP | ARPHRD_TUNNEL | ARPHRD_TUNNEL6 | ARPHRD_SIT => Ok(Link::Ip),
        ARPHRD_IPGRE | ARPHRD_IP6GRE => Err(LinkTypeError::OuterHeader {
            iface: iface.to_string(),
            arphrd,
        }),
        other => Err(LinkTypeError::Unsupported {
            iface: iface.to_string(),
            arphrd: other,
            name: arphrd_name(other),
        }),
    }
}

/// The XDP program name in the emis object for `link`.
pub const fn program_for(link: Link) -> &'static str {
    match link {
        Link::Ethernet => PROGRAM_NAME,
        Link::Ip => PROGRAM_NAME_L3,
    }
}

/// A readable name for the link types an operator is likely to meet.
pub const fn arphrd_name(arphrd: u16) -> &'static str {
    match arphrd {
        ARPHRD_ETHER => "ether",
        ARPHRD_PPP => "ppp",
        ARPHRD_TUNNEL => "ipip",
        ARPHRD_TUNNEL6 => "ip6tnl",
        ARPHRD_SIT => "sit",
        ARPHRD_IPGRE => "gre",
        ARPHRD_NONE => "none (tun, wireguard)",
        772 => "loopback",
        32 => "infiniband",
        801 => "ieee80211",
        803 => "ieee80211_radiotap",
        ARPHRD_IP6GRE => "ip6gre",
        280 => "can",
        _ => "unknown",
    }
}

/// The link type of `iface` in the calling thread's network namespace.
pub fn arphrd_of(iface: &str) -> Result<u16, LinkTypeError> {
    let name = CString::new(iface).map_err(|_| LinkTypeError::BadName(iface.into()))?;
    let bytes = name.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(LinkTypeError::BadName(iface.into()));
    }
    let read_err = |source| LinkTypeError::Read {
        iface: iface.to_string(),
        source,
    };
    // SAFETY: a plain socket, closed below; the ifreq is zeroed and holds a
    // NUL-terminated name shorter than IFNAMSIZ.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(read_err(io::Error::last_os_error()));
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (dst, &src) in ifr.ifr_name.iter_mut().zip(bytes) {
            *dst = src as libc::c_char;
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut ifr);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 {
            return Err(read_err(err));
        }
        Ok(ifr.ifr_ifru.ifru_hwaddr.sa_family)
    }
}

/// The program `iface` takes, in the calling thread's network namespace.
pub fn link_of(iface: &str) -> Result<Link, LinkTypeError> {
    link_for(iface, arphrd_of(iface)?)
}

/// The link type in a sysfs `type` file (`/sys/class/net/IF/type`), for diagnostics.
pub fn arphrd_in_sysfs(type_file: &Path, iface: &str) -> Result<u16, LinkTypeError> {
    let read_err = |source| LinkTypeError::Read {
        iface: iface.to_string(),
        source,
    };
    let text = std::fs::read_to_string(type_file).map_err(read_err)?;
    text.trim()
        .parse()
        .map_err(|e| read_err(io::Error::new(io::ErrorKind::InvalidData, e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethernet_and_headerless_devices_take_their_programs() {
        assert_eq!(link_for("eth0", 1).unwrap(), Link::Ethernet);
        for (iface, arphrd) in [
            ("wg0", 65534),
            ("tun0", 65534),
            ("ppp0", 512),
            ("ipip0", 768),
            ("ip6tnl0", 769),
            ("sit0", 776),
        ] {
            assert_eq!(link_for(iface, arphrd).unwrap(), Link::Ip, "{iface}");
        }
        assert_eq!(program_for(Link::Ethernet), "emis");
        assert_eq!(program_for(Link::Ip), "emis_l3");
    }

    #[test]
    fn gre_is_refused_since_xdp_sees_its_outer_header() {
        for arphrd in [778, 823] {
            let err = link_for("gre1", arphrd).unwrap_err();
            assert!(matches!(err, LinkTypeError::OuterHeader { .. }));
            let text = err.to_string();
            assert!(
                text.contains("gre1") && text.contains(&arphrd.to_string()),
                "{text}"
            );
        }
    }

    #[test]
    fn other_link_types_are_refused_by_interface_and_type() {
        for (iface, arphrd, name) in [
            ("lo", 772, "loopback"),
            ("wlan0mon", 803, "ieee80211_radiotap"),
            ("x", 9999, "unknown"),
        ] {
            let err = link_for(iface, arphrd).unwrap_err().to_string();
            assert!(
                err.contains(iface) && err.contains(&arphrd.to_string()) && err.contains(name),
                "{err}"
            );
        }
    }

    #[test]
    fn the_kernel_reports_loopback_as_loopback_and_a_missing_interface_by_name() {
        assert_eq!(arphrd_of("lo").unwrap(), 772);
        assert!(matches!(
            link_of("lo"),
            Err(LinkTypeError::Unsupported { arphrd: 772, .. })
        ));
        let err = link_of("emis-nosuch0").unwrap_err().to_string();
        assert!(err.contains("emis-nosuch0"), "{err}");
        assert!(matches!(
            arphrd_of("a-name-far-too-long-for-linux"),
            Err(LinkTypeError::BadName(_))
        ));
        assert_eq!(
            arphrd_in_sysfs(Path::new("/sys/class/net/lo/type"), "lo").unwrap(),
            772
        );
    }
}
