//! What the emis XDP program and its userspace must agree on, written once.
//!
//! - [`addr_table`]: the IPv4 enforce-scope classes as two inlined array reads.
//! - [`maps`]: map names and sizes, and the layout of address, port and counter entries.
//! - [`config`]: the run-time settings the loader writes and the program reads.
//! - [`wire`]: header layouts, protocol numbers, TCP flags and the parsers' bounds.
//! - [`icmp`]: which ICMP and ICMPv6 types are echo and which are errors.
//! - [`flow`]: flow and fragment keys, flow-state transitions and lifetimes.
//! - [`decision`]: decisions and their reasons, the counter layout, drop or pass by mode.
//! - [`events`]: the drop-event record, its rate limit and counters.
//! - [`iface`]: the per-interface counters' layout and overflow slot.
//! - [`trace`]: which packets the kernel log's per-decision trace reports.
//! - [`learned`]: addresses learned from DNS answers, hostname groups, the DNS hand-off.
//!
//! Everything is `no_std`, allocation-free and inlined where the kernel program calls
//! it; map types are `#[repr(C)]` plain data with explicit padding. The reference model
//! (`emis_policy::model`) uses the same pieces, so the kernel and the model cannot drift
//! apart on them; what the model keeps to itself is the policy evaluation.
//! Every item is re-exported at the crate root.
#![cfg_attr(not(test), no_std)]

pub mod addr_table;
pub mod config;
pub mod count_table;
pub mod decision;
pub mod events;
pub mod flow;
pub mod icmp;
pub mod iface;
pub mod learned;
pub mod maps;
pub mod trace;
pub mod wire;

pub use addr_table::*;
pub use config::*;
pub use count_table::*;
pub use decision::*;
pub use events::*;
pub use flow::*;
pub use icmp::*;
pub use iface::*;
pub use learned::*;
pub use maps::*;
pub use trace::*;
pub use wire::*;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for AddrInfo {}
    unsafe impl aya::Pod for AddrBucket {}
    unsafe impl aya::Pod for CountChunk {}
    unsafe impl aya::Pod for AddrListV6 {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for RuleEntry {}
    unsafe impl aya::Pod for RuleSet {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragValue {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for EventBucket {}
    unsafe impl aya::Pod for TraceMatch {}
    unsafe impl aya::Pod for LearnedValue {}
    unsafe impl aya::Pod for LearnedEntry {}
    unsafe impl aya::Pod for DnsConfig {}
    unsafe impl aya::Pod for DnsMessage {}
}

#[cfg(test)]
mod layout {
    use core::mem::size_of;

    use super::*;

    /// The loader and the kernel program read these bytes; a change breaks a running pair.
    #[test]
    fn map_types_keep_their_size() {
        assert_eq!(size_of::<AddrInfo>(), 16);
        assert_eq!(size_of::<AddrBucket>(), 24 + 24 * BUCKET_PREFIXES);
        assert_eq!(size_of::<AddrListV6>(), 8 + 48 * V6_LIST_PREFIXES);
        assert_eq!(size_of::<PortKey>(), 4);
        assert_eq!(size_of::<RuleEntry>(), 24);
        assert_eq!(size_of::<RuleSet>(), 8 + 24 * MAX_CANDIDATES);
        assert_eq!(
            size_of::<Config>(),
            8 + 8 + 16 + 8 * FLOW_STATE_COUNT + 8 + 16
        );
        assert_eq!(size_of::<Counter>(), 16);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<FlowValue>(), 40);
        assert_eq!(size_of::<FragKey>(), 40);
        assert_eq!(size_of::<FragValue>(), 16);
    }
}
