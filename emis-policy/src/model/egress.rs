//! The model's egress step, as the kernel's TC egress program (`emis_egress`) takes it: a
//! packet leaving the router, after source NAT, is recorded under the tuple it leaves
//! with when the destination side of a rule listing its port matches, so its replies
//! match on the way back in. A flow the ingress step recorded is left alone; one the
//! egress step recorded is tracked forward here. Nothing is decided or counted but flow
//! events. See docs/DECISIONS.md, "NAT and flows the router opens".

use emis_common::{
    track, FlowKey, FlowValue, Link, Segment, DIR_FORWARD, FLOW_ORIGIN_EGRESS, NO_NETWORK,
    PROTO_TCP, PROTO_UDP,
};

use super::{classify, first_rule, flow_key, parse_link, Frame, Model};

impl<'p> Model<'p> {
    /// Whether the flow under `key` is in the established table (else new, or absent).
    pub fn established(&self, key: &FlowKey) -> bool {
        self.flows.peek(key).is_some()
    }

    /// An Ethernet frame leaving through an interface the egress program is attached to.
    pub fn egress(&mut self, frame: &[u8]) {
        self.egress_link(Link::Ethernet, frame)
    }

    /// A frame leaving a `link` device: what `emis_egress` (Ethernet) or `emis_egress_l3`
    /// (bare IP) does to the flow tables.
    pub fn egress_link(&mut self, link: Link, frame: &[u8]) {
        if !self.stateful() {
            return;
        }
        let Frame::Ip(facts) = parse_link(link, frame) else {
            return;
        };
        if facts.malformed || (facts.fragment && facts.frag_offset != 0) {
            return;
        }
        if facts.proto != PROTO_TCP && facts.proto != PROTO_UDP {
            return;
        }
        let Some(l4) = facts.l4 else {
            return;
        };
        // The kernel stops at the port map: a port no rule lists touches no flow.
        let listed = self
            .policy
            .rules
            .iter()
            .any(|r| r.protocol.number() == facts.proto && r.has_port(l4.dport));
        if !listed {
            return;
        }
        // No flow is recorded whose ends are both out of enforce scope.
        let (dst_classes, dst_network) = classify(self.policy, facts.dst);
        if dst_network == NO_NETWORK && classify(self.policy, facts.src).1 == NO_NETWORK {
            return;
        }
        let key = flow_key(facts.src, facts.dst, facts.proto, l4.sport, l4.dport);
        let seg = l4.segment();
        if let Some(flow) = self.live_flow(&key, true) {
            if flow.origin == FLOW_ORIGIN_EGRESS {
                let flow = self.track_egress(flow, key.proto, &seg);
                self.flows.update(&key, flow);
            }
            return;
        }
        if let Some(flow) = self.live_flow(&key, false) {
            if flow.origin == FLOW_ORIGIN_EGRESS {
                let flow = self.track_egress(flow, key.proto, &seg);
                if flow.assured() {
                    self.promote(key, flow);
                } else {
                    self.new_flows.update(&key, flow);
                }
            }
            return;
        }
        // The first rule whose destinations hold the destination, any source matching.
        let Some(rule) = first_rule(self.policy, facts.proto, l4.dport, u64::MAX, dst_classes)
        else {
            return;
        };
        let flow = self.track_egress(FlowValue::new(rule), key.proto, &seg);
        self.insert_new(key, flow);
        self.events.egress_created += 1;
    }

    /// Tracks a forward packet of a flow the egress step owns; the tracker restarts a
    /// flow as new on a SYN, so the origin is set again after it, as the kernel does.
    fn track_egress(&mut self, mut flow: FlowValue, proto: u8, seg: &Segment) -> FlowValue {
        let tracked = track(&mut flow, DIR_FORWARD, proto, seg, self.now_ns);
        self.events.tracked(tracked);
        flow.origin = FLOW_ORIGIN_EGRESS;
        flow
    }

    fn insert_new(&mut self, key: FlowKey, flow: FlowValue) {
        if self.new_flows.insert(key, flow) {
            self.events.new_evicted += 1;
        }
        self.events.new_created += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use emis_common::{Decision, DenyReason, Path, FLOW_ORIGIN_INGRESS};

    use super::*;
    use crate::{
        packet::{PacketSpec, TCP_ACK, TCP_SYN},
        policy::{Policy, Replies},
        spec::{load_policy, SiteOptions, Source},
    };

    const LAN: &str = "192.168.10.2";
    /// The router's WAN address, which masquerade puts in the source.
    const WAN: &str = "198.18.0.1";
    const EMIS: &str = "10.207.116.10";

    fn policy() -> Policy {
        load_policy(&Source::default_spec(), &SiteOptions::default()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
        let mut p = PacketSpec::tcp(ip(src), ip(dst), sport, dport, flags);
        p.seq = seq;
        p.ack = ack;
        p.build()
    }

    fn key(src: &str, dst: &str, sport: u16, dport: u16) -> FlowKey {
        flow_key(ip(src), ip(dst), PROTO_TCP, sport, dport)
    }

    /// A handshake to `dport` from the LAN, masqueraded behind the WAN address; with
    /// `egress` the model sees each packet leave as well. Returns the SYN-ACK's verdict.
    fn masqueraded_handshake(model: &mut Model, dport: u16, egress: bool) -> Decision {
        let syn = tcp(LAN, EMIS, 40000, dport, TCP_SYN, 1000, 0);
        model.decide(&syn);
        if egress {
            model.egress(&tcp(WAN, EMIS, 40000, dport, TCP_SYN, 1000, 0));
        }
        let syn_ack = tcp(EMIS, WAN, dport, 40000, TCP_SYN | TCP_ACK, 5000, 1001);
        let verdict = model.decide(&syn_ack);
        model.decide(&tcp(LAN, EMIS, 40000, dport, TCP_ACK, 1001, 5001));
        if egress {
            model.egress(&tcp(WAN, EMIS, 40000, dport, TCP_ACK, 1001, 5001));
        }
        verdict
    }

    #[test]
    fn a_masqueraded_flow_gets_its_replies_only_through_egress() {
        let policy = policy();
        let mut model = Model::new(&policy, Replies::Stateful);
        let verdict = masqueraded_handshake(&mut model, 443, true);
        let Decision::Allow {
            rule,
            path: Path::Reply,
        } = verdict
        else {
            panic!("the SYN-ACK to the WAN address is a reply: {verdict:?}");
        };
        assert_eq!(policy.rules[rule as usize].slug, "client-spine-messaging");
        let post_nat = key(WAN, EMIS, 40000, 443);
        let flow = model
            .flow(&post_nat)
            .expect("recorded under the post-NAT tuple");
        assert_eq!(flow.origin, FLOW_ORIGIN_EGRESS);
        assert!(flow.assured(), "egress tracked the client's ACK");
        assert_eq!(model.established_flows(), 1, "promoted by the forward ACK");
        let events = model.flow_events();
        assert_eq!((events.egress_created, events.new_promoted), (1, 1));
        // The pre-NAT entry never sees a reply and stays in the new-flow table.
        let pre_nat = model.flow(&key(LAN, EMIS, 40000, 443)).unwrap();
        assert_eq!(pre_nat.origin, FLOW_ORIGIN_INGRESS);
        assert!(!pre_nat.assured());

        let mut xdp_only = Model::new(&policy, Replies::Stateful);
        assert!(matches!(
            masqueraded_handshake(&mut xdp_only, 443, false),
            Decision::Deny {
                reason: DenyReason::NoRule,
                ..
            }
        ));
    }

    #[test]
    fn a_flow_the_router_opens_gets_its_replies() {
        let policy = policy();
        let mut model = Model::new(&policy, Replies::Stateful);
        model.egress(&tcp(WAN, EMIS, 50000, 443, TCP_SYN, 7, 0));
        let syn_ack = tcp(EMIS, WAN, 443, 50000, TCP_SYN | TCP_ACK, 90, 8);
        assert!(matches!(
            model.decide(&syn_ack),
            Decision::Allow {
                path: Path::Reply,
                ..
            }
        ));
        // A port no rule lists records nothing, so its answer is denied.
        model.egress(&tcp(WAN, EMIS, 50001, 444, TCP_SYN, 7, 0));
        let syn_ack = tcp(EMIS, WAN, 444, 50001, TCP_SYN | TCP_ACK, 90, 8);
        assert!(matches!(model.decide(&syn_ack), Decision::Deny { .. }));
        // Both ends out of enforce scope: no entry (the replies pass anyway).
        model.egress(&tcp(WAN, "198.51.100.10", 50002, 443, TCP_SYN, 7, 0));
        assert_eq!(model.flow_events().egress_created, 1);
    }

    #[test]
    fn without_nat_egress_leaves_the_ingress_flow_alone() {
        let policy = policy();
        let mut model = Model::new(&policy, Replies::Stateful);
        let syn = tcp(LAN, EMIS, 40000, 443, TCP_SYN, 1000, 0);
        model.decide(&syn);
        let before = model.flow(&key(LAN, EMIS, 40000, 443)).unwrap();
        model.set_time(5);
        model.egress(&syn);
        assert_eq!(model.flow(&key(LAN, EMIS, 40000, 443)), Some(before));
        assert_eq!(model.flow_events().egress_created, 0);
        assert_eq!(model.flows(), 1);
        // Stateless replies keep no flows, so egress has nothing to do.
        let mut stateless = Model::new(&policy, Replies::Stateless);
        stateless.egress(&tcp(WAN, EMIS, 40000, 443, TCP_SYN, 1000, 0));
        assert_eq!(stateless.flows(), 0);
    }
}
