//! Floods against the flow tables: an established flow keeps getting its replies through
//! floods of new flows many times the table's size, in the kernel (through
//! BPF_PROG_TEST_RUN with a small flow table) and in the reference model alike. Needs root.

use emis::loader::LoadOptions;
use emis_common::{new_flow_table_size, Decision, Path, DEFAULT_FLOW_TABLE_SIZE};
use emis_lab::site::TEST_SITE;
use emis_policy::{
    model::Model,
    packet::{PacketSpec, TCP_ACK, TCP_PSH, TCP_SYN},
    policy::{Mode, Policy, PortRange, Protocol, Replies},
};
use emis_testkit::TestProgram;
use emis_tests::{default_policy, ip, Harness};

/// Established flows the kernel's table holds in these tests.
const TABLE: u32 = 256;
const SITE: &str = "192.168.10.2";
const N3: &str = "10.207.116.10";
/// client-spine-messaging: tcp 443 from lan to emis-n3.
const SPINE: u32 = 3;

fn harness(policy: &Policy) -> Harness<'_> {
    let options = LoadOptions {
        mode: Mode::Enforce,
        replies: Replies::Stateful,
        flow_table_size: TABLE,
        ..LoadOptions::default()
    };
    Harness {
        prog: TestProgram::load_with(policy, options)
            .expect("loading the kernel program (run the tests as root)"),
        model: Model::with_flow_table_size(policy, Replies::Stateful, TABLE),
        options,
    }
}

fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let mut p = PacketSpec::tcp(ip(src), ip(dst), sport, dport, flags);
    (p.seq, p.ack) = (seq, ack);
    p.build()
}

/// One established connection, site port 40001 to N3:443, whose replies are checked.
struct Connection {
    client_next: u32,
    server_next: u32,
}

impl Connection {
    fn open(h: &mut Harness) -> Connection {
        let forward = Decision::Allow {
            rule: SPINE,
            path: Path::Forward,
        };
        assert_eq!(
            h.check(&tcp(SITE, N3, 40001, 443, TCP_SYN, 1000, 0))
                .unwrap(),
            forward
        );
        let syn_ack = tcp(N3, SITE, 443, 40001, TCP_SYN | TCP_ACK, 7000, 1001);
        assert_eq!(h.check(&syn_ack).unwrap(), reply());
        assert_eq!(
            h.check(&tcp(SITE, N3, 40001, 443, TCP_ACK, 1001, 7001))
                .unwrap(),
            forward
        );
        Connection {
            client_next: 1001,
            server_next: 7001,
        }
    }

    /// The server sends 100 bytes and the client acknowledges them: both must pass.
    fn exchange(&mut self, h: &mut Harness, when: &str) {
        let mut data = PacketSpec::tcp(ip(N3), ip(SITE), 443, 40001, TCP_ACK | TCP_PSH);
        (data.seq, data.ack, data.payload_len) = (self.server_next, self.client_next, 100);
        assert_eq!(
            h.check(&data.build()).unwrap(),
            reply(),
            "server data {when}"
        );
        self.server_next += 100;
        let ack = tcp(
            SITE,
            N3,
            40001,
            443,
            TCP_ACK,
            self.client_next,
            self.server_next,
        );
        assert!(matches!(
            h.check(&ack).unwrap(),
            Decision::Allow { rule: SPINE, .. }
        ));
    }
}

fn reply() -> Decision {
    Decision::Allow {
        rule: SPINE,
        path: Path::Reply,
    }
}

#[test]
fn an_established_flow_outlives_floods_of_new_and_out_of_scope_flows() {
    let policy = default_policy(TEST_SITE, false);
    let mut h = harness(&policy);
    let mut conn = Connection::open(&mut h);
    conn.exchange(&mut h, "before the floods");

    // Local-site traffic (both ends out of enforce scope): allowed, and keeps no entry.
    let flood = 15 * TABLE;
    for i in 0..flood {
        let src = format!("192.168.20.{}", 1 + i % 250);
        let p = PacketSpec::udp(ip(&src), ip(SITE), 1024 + i as u16, 8088).build();
        assert!(matches!(
            h.check(&p).unwrap(),
            Decision::Allow {
                path: Path::Forward,
                ..
            }
        ));
    }
    assert_eq!(h.model.flow_events().untracked, u64::from(flood));
    let stats = h.prog.flow_stats().unwrap();
    assert_eq!(
        (stats.entries, stats.created, stats.evicted),
        (1, 1, 0),
        "{stats:?}"
    );
    conn.exchange(&mut h, "after the out-of-scope flood");

    // In-scope SYNs that nobody answers, many times both tables' sizes (the kernel's
    // new-flow table keeps its default size until the loader sizes it from the flow table).
    let kernel_new_table =
        new_flow_table_size(DEFAULT_FLOW_TABLE_SIZE).max(new_flow_table_size(TABLE));
    let syns = (15 * TABLE).max(kernel_new_table + kernel_new_table / 4);
    for i in 0..syns {
        let sport = 1024 + (i % 64_000) as u16;
        let client = format!("192.168.10.{}", 10 + i / 64_000);
        let syn = tcp(&client, N3, sport, 443, TCP_SYN, i, 0);
        assert_eq!(
            h.check(&syn).unwrap(),
            Decision::Allow {
                rule: SPINE,
                path: Path::Forward
            }
        );
    }
    let stats = h.prog.flow_stats().unwrap();
    assert_eq!(
        (stats.entries, stats.created, stats.evicted),
        (1, 1, 0),
        "{stats:?}"
    );
    let events = h.model.flow_events();
    assert_eq!(h.model.established_flows(), 1);
    assert_eq!(
        events.new_created,
        u64::from(syns) + 1,
        "the connection and the SYNs"
    );
    assert!(events.new_evicted > 0 && events.evicted == 0, "{events:?}");
    conn.exchange(&mut h, "after the SYN flood");

    // The flooded flows' replies still find what the tables kept: the newest SYN's does.
    let last = syns - 1;
    let client = format!("192.168.10.{}", 10 + last / 64_000);
    let answer = tcp(
        N3,
        &client,
        443,
        1024 + (last % 64_000) as u16,
        TCP_SYN | TCP_ACK,
        9,
        last + 1,
    );
    assert_eq!(h.check(&answer).unwrap(), reply());
    let stats = h.prog.flow_stats().unwrap();
    assert_eq!(
        (stats.entries, stats.created),
        (1, 1),
        "not assured yet; {stats:?}"
    );
    // The handshake's third packet assures the flow: it moves to the established table.
    let third = tcp(
        &client,
        N3,
        1024 + (last % 64_000) as u16,
        443,
        TCP_ACK,
        last + 1,
        10,
    );
    assert!(matches!(
        h.check(&third).unwrap(),
        Decision::Allow { rule: SPINE, .. }
    ));
    let stats = h.prog.flow_stats().unwrap();
    assert_eq!(
        (stats.entries, stats.created),
        (2, 2),
        "promoted; {stats:?}"
    );

    // SYNs the server answers, from spoofed clients that never complete the handshake.
    for i in 0..15 * TABLE {
        let sport = 1024 + i as u16;
        let syn = tcp("192.168.10.200", N3, sport, 443, TCP_SYN, i, 0);
        h.check(&syn).unwrap();
        let syn_ack = tcp(
            N3,
            "192.168.10.200",
            443,
            sport,
            TCP_SYN | TCP_ACK,
            3,
            i + 1,
        );
        assert_eq!(h.check(&syn_ack).unwrap(), reply());
    }
    let stats = h.prog.flow_stats().unwrap();
    assert_eq!(
        (stats.entries, stats.created, stats.evicted),
        (2, 2, 0),
        "{stats:?}"
    );
    assert_eq!(h.model.established_flows(), 2);
    conn.exchange(&mut h, "after the answered SYN flood");
}

#[test]
fn established_flows_are_pushed_out_only_by_established_flows() {
    let policy = default_policy(TEST_SITE, false);
    let mut h = harness(&policy);
    // Twice the table of complete handshakes: the table holds at most its size, and says so.
    for port in 0..2 * TABLE {
        let sport = 20_000 + port as u16;
        h.check(&tcp(SITE, N3, sport, 443, TCP_SYN, 100, 0))
            .unwrap();
        h.check(&tcp(N3, SITE, 443, sport, TCP_SYN | TCP_ACK, 500, 101))
            .unwrap();
        h.check(&tcp(SITE, N3, sport, 443, TCP_ACK, 101, 501))
            .unwrap();
    }
    let stats = h.prog.flow_stats().unwrap();
    assert_eq!(stats.capacity, TABLE);
    assert_eq!(stats.created, u64::from(2 * TABLE), "{stats:?}");
    assert!(stats.entries <= u64::from(TABLE), "{stats:?}");
    assert_eq!(
        stats.evicted,
        u64::from(2 * TABLE) - stats.entries,
        "{stats:?}"
    );
    let events = h.model.flow_events();
    assert_eq!(
        (events.created, events.new_promoted, events.evicted),
        (u64::from(2 * TABLE), u64::from(2 * TABLE), u64::from(TABLE)),
        "{events:?}"
    );
    // The newest flow is in both; the oldest was evicted from both.
    let newest = 20_000 + 2 * TABLE as u16 - 1;
    assert_eq!(
        h.check(&tcp(N3, SITE, 443, newest, TCP_ACK, 501, 101))
            .unwrap(),
        reply()
    );
    assert!(matches!(
        h.check(&tcp(N3, SITE, 443, 20_000, TCP_ACK, 501, 101))
            .unwrap(),
        Decision::Deny { .. }
    ));
}

#[test]
fn unanswered_udp_in_scope_never_reaches_the_established_table() {
    // The embedded spec has no UDP rule into enforce scope: add one (site to N3, udp 5000).
    let mut policy = default_policy(TEST_SITE, false);
    let mut udp_rule = policy.rules[SPINE as usize].clone();
    udp_rule.slug = "test-udp-5000".into();
    udp_rule.protocol = Protocol::Udp;
    udp_rule.ports = vec![PortRange {
        first: 5000,
        last: 5000,
    }];
    policy.rules.push(udp_rule);
    let mut h = harness(&policy);
    let mut conn = Connection::open(&mut h);

    // Every datagram twice: a second forward packet is not an answer.
    let flood = 15 * TABLE;
    for i in 0..flood {
        let p = PacketSpec::udp(ip(SITE), ip(N3), 1024 + i as u16, 5000).build();
        for _ in 0..2 {
            assert!(matches!(
                h.check(&p).unwrap(),
                Decision::Allow {
                    path: Path::Forward,
                    ..
                }
            ));
        }
    }
    let stats = h.prog.flow_stats().unwrap();
    assert_eq!(
        (stats.entries, stats.created, stats.evicted),
        (1, 1, 0),
        "unanswered UDP stays in the new-flow table; {stats:?}"
    );
    assert_eq!(h.model.established_flows(), 1);
    conn.exchange(&mut h, "after the UDP flood");

    // The newest datagram's answer assures its flow, which then moves over.
    let last = 1024 + (flood - 1) as u16;
    let answer = PacketSpec::udp(ip(N3), ip(SITE), 5000, last).build();
    assert!(matches!(
        h.check(&answer).unwrap(),
        Decision::Allow {
            path: Path::Reply,
            ..
        }
    ));
    let stats = h.prog.flow_stats().unwrap();
    assert_eq!((stats.entries, stats.created), (2, 2), "{stats:?}");
    assert_eq!(h.model.established_flows(), 2);
}
