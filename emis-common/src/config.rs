//! The run-time settings the loader writes into the one-entry config array and the kernel
//! program reads on every packet: mode, reply tracking, ICMP echo, lifetimes.

use crate::flow::{lifetime_ns, FLOW_STATE_COUNT};

pub const MODE_ENFORCE: u32 = 0;
pub const MODE_AUDIT: u32 = 1;
/// Replies are packets of a flow a rule allowed, remembered in the flow table.
pub const REPLIES_STATEFUL: u32 = 0;
/// Replies are recognised from ports and addresses alone (for asymmetric routing).
pub const REPLIES_STATELESS: u32 = 1;

/// Run-time settings, changed in place without reloading the program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Role bits an address outside every enforce-scope network gets because the role is unset.
    pub unset_roles: u64,
    /// Class bits of the count-scope networks: a rule naming one needs the count tries.
    pub count_mask: u64,
    /// [`MODE_ENFORCE`] or [`MODE_AUDIT`].
    pub mode: u32,
    /// [`REPLIES_STATEFUL`] or [`REPLIES_STATELESS`].
    pub replies: u32,
    /// Non-zero: ICMP echo to and from enforce-scope networks passes.
    pub icmp_echo: u32,
    pub _pad: u32,
    /// How long a flow lives without packets, in nanoseconds, indexed by
    /// [`flow_state_slot`](crate::flow_state_slot).
    pub flow_timeouts_ns: [u64; FLOW_STATE_COUNT],
    /// How long an allowed first fragment's datagram waits for its later fragments.
    pub fragment_timeout_ns: u64,
    /// Non-zero: denied packets produce events (the daemon sets it while it runs).
    pub events: u32,
    /// Events a second each CPU may produce; the rest are counted as suppressed.
    pub event_rate: u32,
    /// N: one allowed packet in N, chosen at random, produces an event too; 0: none.
    pub sample_allowed: u32,
    /// Non-zero: the kernel log's per-decision trace is on (`emis run --kernel-log
    /// debug`) for packets [`TraceMatch`](crate::TraceMatch) selects.
    pub trace: u32,
}

impl Config {
    /// Whether replies are recognised from the flow table.
    #[inline(always)]
    pub const fn stateful(&self) -> bool {
        self.replies == REPLIES_STATEFUL
    }

    /// How long a flow in `state` lives without packets.
    #[inline(always)]
    pub fn lifetime_ns(&self, state: u32) -> u64 {
        lifetime_ns(&self.flow_timeouts_ns, state)
    }
}
