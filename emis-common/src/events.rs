//! Drop events: the record the kernel program writes to the event ring buffer for each
//! denied packet (dropped, or would-be dropped in audit mode), the per-CPU token bucket
//! that bounds how many it writes, and the counters of what it wrote and suppressed.

/// The ring buffer of [`Event`]s; the daemon is its one reader.
pub const MAP_EVENTS: &str = "EMIS_EVENTS";
/// Per-CPU [`EventBucket`].
pub const MAP_EVENT_BUCKET: &str = "EMIS_EVENT_BUCKET";
/// Per-CPU `u64` counters, indexed by the `EVENT_COUNT_*` slots.
pub const MAP_EVENT_COUNTS: &str = "EMIS_EVENT_COUNTS";

/// Bytes of the frame an event carries: enough for Ethernet, two VLAN tags, an IPv6
/// header with extension headers and the TCP header.
pub const EVENT_SNAP_LEN: usize = 128;
/// Bytes of the event ring buffer (a power of two and a multiple of the page size):
/// about 1,500 events of [`EVENT_SIZE`] bytes (plus an 8-byte header each).
pub const EVENT_RING_BYTES: u32 = 256 * 1024;
/// Default of [`Config::event_rate`](crate::Config::event_rate): events a second, per CPU.
pub const DEFAULT_EVENT_RATE: u32 = 1_000;

/// Slots of the per-CPU event counter array.
pub const EVENT_COUNT_EMITTED: u32 = 0;
/// The token bucket was empty.
pub const EVENT_COUNT_SUPPRESSED: u32 = 1;
/// The ring buffer was full (the daemon did not keep up).
pub const EVENT_COUNT_RING_FULL: u32 = 2;
pub const EVENT_COUNT_SLOTS: u32 = 4;

/// What an event reports: a denied packet, or an allowed one sampled
/// ([`Config::sample_allowed`](crate::Config::sample_allowed)).
pub const EVENT_KIND_DENIED: u32 = 0;
pub const EVENT_KIND_ALLOWED: u32 = 1;
/// `Event::rule` of a denial; `Event::action` of an allowed packet.
pub const EVENT_NONE: u32 = u32::MAX;

/// One denied (or sampled allowed) packet, as the kernel saw it. For a denial `reason`,
/// `network` and `action` are the raw values of the decision's
/// [`DenyReason`](crate::DenyReason), network index and [`Action`](crate::Action), and
/// `rule` is [`EVENT_NONE`]; for an allowed packet `reason` is its [`Path`](crate::Path),
/// `rule` its rule's counter slot, `network` and `action` [`EVENT_NONE`]. Addresses, protocol, ports and TCP flags are read from
/// `frame` by the daemon: the kernel program has no stack left for a second parse.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns`: nanoseconds since boot (CLOCK_MONOTONIC).
    pub time_ns: u64,
    /// The interface the frame arrived on.
    pub ifindex: u32,
    /// The frame's whole length (as XDP saw it).
    pub frame_len: u32,
    /// Bytes of `frame` that hold the frame: `min(frame_len, EVENT_SNAP_LEN)`.
    pub captured_len: u32,
    pub reason: u32,
    pub network: u32,
    pub action: u32,
    /// [`EVENT_KIND_DENIED`] or [`EVENT_KIND_ALLOWED`].
    pub kind: u32,
    pub rule: u32,
    pub frame: [u8; EVENT_SNAP_LEN],
}

pub const EVENT_SIZE: usize = core::mem::size_of::<Event>();

/// A per-CPU token bucket; one entry per CPU in a per-CPU array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventBucket {
    pub tokens: u64,
    /// When tokens were last added.
    pub refilled_ns: u64,
}

impl EventBucket {
    /// Refills from the time elapsed since the last refill at `rate` tokens a second (the
    /// bucket holds at most one second's worth), then takes a token if there is one.
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64, rate: u32) -> bool {
        let rate = rate as u64;
        let elapsed = now_ns.saturating_sub(self.refilled_ns);
        if elapsed >= 1_000_000_000 {
            self.tokens = rate;
            self.refilled_ns = now_ns;
        } else {
            // elapsed < 1e9 and rate < 2^32, so the product fits.
            let add = elapsed * rate / 1_000_000_000;
            if add > 0 {
                self.tokens = if self.tokens + add > rate {
                    rate
                } else {
                    self.tokens + add
                };
                self.refilled_ns = now_ns;
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_rate_and_refills_from_elapsed_time() {
        let mut b = EventBucket::default();
        let t0 = 5_000_000_000;
        let taken = (0..50).filter(|_| b.take(t0, 10)).count();
        assert_eq!(taken, 10, "a full bucket holds one second's worth");
        assert!(!b.take(t0 + 50_000_000, 10), "50 ms at 10/s adds nothing");
        assert!(
            b.take(t0 + 100_000_000, 10),
            "100 ms at 10/s adds one token"
        );
        assert!(!b.take(t0 + 100_000_000, 10));
    }

    #[test]
    fn the_event_record_keeps_its_layout() {
        assert_eq!(EVENT_SIZE, 40 + EVENT_SNAP_LEN);
        assert_eq!(EVENT_SIZE % 8, 0);
    }
}
