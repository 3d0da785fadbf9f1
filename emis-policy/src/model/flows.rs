//! The model's flow tables, as the kernel program keeps them: new flows until their first
//! reply, established flows after it, each a bounded LRU, looked up and moved in the
//! kernel's order so both meet, expire and promote the same flows.

use emis_common::{
    expired, flow_timeouts_ns, lifetime_ns, track, FlowKey, FlowValue, Segment, Tracked,
    DIR_FORWARD, DIR_REPLY, FLOW_STATE_COUNT,
};

use super::Model;

/// What happened in the model's flow tables, as the kernel's flow-event counters say it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvents {
    pub created: u64,
    pub insert_failed: u64,
    pub expired: u64,
    pub new_created: u64,
    pub new_expired: u64,
    pub new_promoted: u64,
    pub untracked: u64,
    pub rst_honoured: u64,
    pub rst_ignored: u64,
    pub fin_ignored: u64,
    /// Of `new_created`, flows the egress step recorded (after NAT, or opened by the router).
    pub egress_created: u64,
    /// Entries each LRU pushed out: established, new.
    pub evicted: u64,
    pub new_evicted: u64,
}

impl FlowEvents {
    pub(super) fn tracked(&mut self, tracked: Tracked) {
        match tracked {
            Tracked::Updated => {}
            Tracked::RstHonoured => self.rst_honoured += 1,
            Tracked::RstIgnored => self.rst_ignored += 1,
            Tracked::FinIgnored => self.fin_ignored += 1,
        }
    }
}

impl<'p> Model<'p> {
    pub(super) fn flow_timeouts_ns(&self) -> [u64; FLOW_STATE_COUNT] {
        let t = &self.policy.options.timeouts;
        flow_timeouts_ns(t.tcp_syn, t.tcp_established, t.tcp_closing, t.udp)
    }

    fn expired(&self, flow: &FlowValue) -> bool {
        let lifetime = lifetime_ns(&self.flow_timeouts_ns(), flow.state);
        expired(flow.last_seen_ns, lifetime, self.now_ns)
    }

    /// As the kernel's `track_forward`: the established table first, else the new one.
    pub(super) fn track_forward(&mut self, key: FlowKey, rule: u32, seg: &Segment) {
        let now = self.now_ns;
        if let Some(mut flow) = self.flows.peek(&key).copied() {
            if !self.expired(&flow) {
                flow.rule = rule;
                let tracked = track(&mut flow, DIR_FORWARD, key.proto, seg, now);
                self.events.tracked(tracked);
                self.flows.update(&key, flow);
                return;
            }
            self.flows.remove(&key);
            self.events.expired += 1;
        }
        if let Some(mut flow) = self.new_flows.peek(&key).copied() {
            if self.expired(&flow) {
                flow = FlowValue::new(rule);
            }
            flow.rule = rule;
            let tracked = track(&mut flow, DIR_FORWARD, key.proto, seg, now);
            self.events.tracked(tracked);
            if flow.assured() {
                self.promote(key, flow);
            } else {
                self.new_flows.update(&key, flow);
            }
            return;
        }
        let mut flow = FlowValue::new(rule);
        let tracked = track(&mut flow, DIR_FORWARD, key.proto, seg, now);
        self.events.tracked(tracked);
        if self.new_flows.insert(key, flow) {
            self.events.new_evicted += 1;
        }
        self.events.new_created += 1;
    }

    /// The live flow under `key` in the established (`established`) or new table; an
    /// expired one is removed.
    pub(super) fn live_flow(&mut self, key: &FlowKey, established: bool) -> Option<FlowValue> {
        let table = if established {
            &self.flows
        } else {
            &self.new_flows
        };
        let flow = *table.peek(key)?;
        if self.expired(&flow) {
            if established {
                self.flows.remove(key);
                self.events.expired += 1;
            } else {
                self.new_flows.remove(key);
                self.events.new_expired += 1;
            }
            return None;
        }
        Some(flow)
    }

    /// The rule of the live flow under `key`, established or new.
    pub(super) fn tracked_rule(&mut self, key: &FlowKey) -> Option<u32> {
        self.live_flow(key, true)
            .or_else(|| self.live_flow(key, false))
            .map(|flow| flow.rule)
    }

    /// As the kernel's `track_reply`: an assured new flow moves to the established table.
    pub(super) fn track_reply(&mut self, key: FlowKey, seg: &Segment) -> Option<u32> {
        let now = self.now_ns;
        if let Some(mut flow) = self.live_flow(&key, true) {
            let tracked = track(&mut flow, DIR_REPLY, key.proto, seg, now);
            self.events.tracked(tracked);
            self.flows.update(&key, flow);
            return Some(flow.rule);
        }
        let mut flow = self.live_flow(&key, false)?;
        let tracked = track(&mut flow, DIR_REPLY, key.proto, seg, now);
        self.events.tracked(tracked);
        if flow.assured() {
            self.promote(key, flow);
        } else {
            self.new_flows.update(&key, flow);
        }
        Some(flow.rule)
    }

    /// An assured flow leaves the new-flow table for the established one.
    pub(super) fn promote(&mut self, key: FlowKey, flow: FlowValue) {
        if self.flows.insert(key, flow) {
            self.events.evicted += 1;
        }
        self.events.created += 1;
        self.new_flows.remove(&key);
        self.events.new_promoted += 1;
    }
}
