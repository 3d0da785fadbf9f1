//! ICMP and ICMPv6 message types, and which of them the policy treats as echo (passed
//! when the spec permits it) or as errors (allowed when they quote an allowed flow).
//! Every other type is denied.

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;

pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
pub const ICMPV6_PARAMETER_PROBLEM: u8 = 4;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// What the policy makes of an ICMP or ICMPv6 type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpClass {
    /// Echo request or reply.
    Echo,
    /// An error that quotes the packet it is about.
    Error,
    /// Anything else.
    Other,
}

/// The class of ICMP type `kind` (ICMPv6 when `v6`).
#[inline(always)]
pub const fn icmp_class(kind: u8, v6: bool) -> IcmpClass {
    if v6 {
        match kind {
            ICMPV6_ECHO_REQUEST | ICMPV6_ECHO_REPLY => IcmpClass::Echo,
            ICMPV6_DEST_UNREACH
            | ICMPV6_PACKET_TOO_BIG
            | ICMPV6_TIME_EXCEEDED
            | ICMPV6_PARAMETER_PROBLEM => IcmpClass::Error,
            _ => IcmpClass::Other,
        }
    } else {
        match kind {
            ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY => IcmpClass::Echo,
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => IcmpClass::Error,
            _ => IcmpClass::Other,
        }
    }
}

/// The echo request of the family (`v6` for ICMPv6).
#[inline(always)]
pub const fn echo_request(v6: bool) -> u8 {
    if v6 {
        ICMPV6_ECHO_REQUEST
    } else {
        ICMP_ECHO_REQUEST
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_every_type() {
        for kind in 0..=255u8 {
            let v4 = match kind {
                0 | 8 => IcmpClass::Echo,
                3 | 11 | 12 => IcmpClass::Error,
                _ => IcmpClass::Other,
            };
            let v6 = match kind {
                128 | 129 => IcmpClass::Echo,
                1..=4 => IcmpClass::Error,
                _ => IcmpClass::Other,
            };
            assert_eq!(icmp_class(kind, false), v4, "ICMP type {kind}");
            assert_eq!(icmp_class(kind, true), v6, "ICMPv6 type {kind}");
        }
    }
}
