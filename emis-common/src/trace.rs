//! The kernel log's per-decision trace (`emis run --kernel-log debug`): which packets it
//! reports. The config's `trace` flag gates it; this filter, in a map of its own, is read
//! only once the flag is set.

/// One-entry array of [`TraceMatch`].
pub const MAP_TRACE_MATCH: &str = "EMIS_TRACE_MATCH";
/// The ring buffer aya-log writes the trace to (named by aya-log-ebpf).
pub const MAP_KERNEL_LOG: &str = "AYA_LOGS";

/// Which packets the trace reports: those whose source or destination, masked by
/// `mask`, equals `addr` (IPv4 addresses in the first 4 bytes), of the family `family`;
/// [`TRACE_ANY`] reports every packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceMatch {
    pub addr: [u8; 16],
    pub mask: [u8; 16],
    /// [`TRACE_ANY`], [`TRACE_V4`] or [`TRACE_V6`].
    pub family: u32,
    pub _pad: u32,
    /// Bit `ifindex` set: frames on that interface start at the IP header (`emis_l3`).
    /// The trace has no other way to know which program it runs in without keeping a
    /// value live in the program's frame; an ifindex past the bitmap reads as Ethernet.
    pub bare_ip: [u64; TRACE_IFINDEX_WORDS],
}

/// Words of [`TraceMatch::bare_ip`]: one bit for each ifindex below [`IFACE_SLOTS`](crate::IFACE_SLOTS).
pub const TRACE_IFINDEX_WORDS: usize = crate::IFACE_SLOTS as usize / 64;

impl Default for TraceMatch {
    fn default() -> Self {
        TraceMatch {
            addr: [0; 16],
            mask: [0; 16],
            family: TRACE_ANY,
            _pad: 0,
            bare_ip: [0; TRACE_IFINDEX_WORDS],
        }
    }
}

/// The trace's `code` of an allowed packet: this bit plus its [`Path`](crate::Path); a
/// denial's is its [`DenyReason`](crate::DenyReason). The same `code` the event path uses.
pub const TRACE_CODE_ALLOWED: u32 = 0x100;

pub const TRACE_ANY: u32 = 0;
pub const TRACE_V4: u32 = 4;
pub const TRACE_V6: u32 = 6;

impl TraceMatch {
    /// The filter for `addr/prefix_len` (`addr` holds 4 or 16 bytes).
    pub fn prefix(addr: &[u8], prefix_len: u8) -> TraceMatch {
        let mut m = TraceMatch {
            family: if addr.len() == 4 { TRACE_V4 } else { TRACE_V6 },
            ..TraceMatch::default()
        };
        for (i, byte) in addr.iter().enumerate().take(16) {
            let bits = (prefix_len as usize).saturating_sub(i * 8).min(8);
            let mask = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
            m.mask[i] = mask;
            m.addr[i] = byte & mask;
        }
        m
    }

    /// Marks `ifindex` as an interface whose frames start at the IP header.
    pub fn set_bare_ip(&mut self, ifindex: u32) {
        if let Some(word) = self.bare_ip.get_mut(ifindex as usize / 64) {
            *word |= 1 << (ifindex % 64);
        }
    }

    /// Whether frames on `ifindex` start at the IP header.
    #[inline(always)]
    pub fn bare_ip(&self, ifindex: u32) -> bool {
        let word = (ifindex / 64) as usize;
        word < TRACE_IFINDEX_WORDS && self.bare_ip[word] & (1 << (ifindex % 64)) != 0
    }

    /// Whether `addr` (the first `len` bytes matter: 4 or 16) is inside the filter.
    #[inline(always)]
    pub fn holds(&self, addr: &[u8; 16]) -> bool {
        (0..16).all(|i| addr[i] & self.mask[i] == self.addr[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_masks_its_address_and_holds_what_is_inside() {
        let m = TraceMatch::prefix(&[10, 1, 2, 3], 16);
        assert_eq!(m.family, TRACE_V4);
        assert_eq!(&m.addr[..4], &[10, 1, 0, 0]);
        assert_eq!(&m.mask[..4], &[255, 255, 0, 0]);
        let mut inside = [0u8; 16];
        inside[..4].copy_from_slice(&[10, 1, 200, 7]);
        assert!(m.holds(&inside));
        inside[1] = 2;
        assert!(!m.holds(&inside));
        let host = TraceMatch::prefix(&[192, 168, 1, 9], 32);
        assert_eq!(&host.mask[..5], &[255, 255, 255, 255, 0]);
        let odd = TraceMatch::prefix(&[10, 255, 0, 0], 9);
        assert_eq!(&odd.mask[..2], &[255, 128]);
        assert_eq!(&odd.addr[..2], &[10, 128]);
    }

    #[test]
    fn bare_ip_interfaces_are_marked_by_ifindex() {
        let mut m = TraceMatch::default();
        m.set_bare_ip(3);
        m.set_bare_ip(700);
        m.set_bare_ip(5000);
        assert!(m.bare_ip(3) && m.bare_ip(700));
        assert!(!m.bare_ip(4) && !m.bare_ip(5000) && !m.bare_ip(u32::MAX));
    }
}
