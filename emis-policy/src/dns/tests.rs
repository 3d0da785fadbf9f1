use super::craft::{self, Response, Rr};
use super::*;

fn read(r: &Response) -> Result<Reading, Reject> {
    read_response(&r.build(), false)
}

fn pairs(reading: &Reading) -> Vec<(String, String, u32)> {
    reading
        .answers
        .iter()
        .map(|a| (a.name.clone(), a.addr.to_string(), a.ttl))
        .collect()
}

fn p(name: &str, addr: &str, ttl: u32) -> (String, String, u32) {
    (name.into(), addr.into(), ttl)
}

#[test]
fn a_chain_of_aliases_gives_every_name_its_addresses() {
    for compress in [false, true] {
        let mut r = Response::new(
            "OpenAPI.EmisHealth.com.",
            vec![
                Rr::cname("openapi.emishealth.com", 300, "edge.cdn.example"),
                Rr::cname("edge.cdn.example", 60, "pop1.cdn.example"),
                Rr::a("pop1.cdn.example", 120, "52.1.2.3"),
                Rr::a("pop1.cdn.example", 30, "52.1.2.4"),
                Rr::aaaa("pop1.cdn.example", 120, "2001:db8::5"),
                // Not on the chain: a stowaway the question never led to.
                Rr::a("evil.service-now.com", 300, "10.0.0.1"),
            ],
        );
        r.compress = compress;
        let reading = read(&r).unwrap();
        let got = pairs(&reading);
        let mut want = vec![];
        for (addr, ttl) in [("52.1.2.3", 60), ("52.1.2.4", 30), ("2001:db8::5", 60)] {
            for name in [
                "openapi.emishealth.com",
                "edge.cdn.example",
                "pop1.cdn.example",
            ] {
                want.push(p(name, addr, ttl));
            }
        }
        assert_eq!(got, want, "compress {compress}");
        assert_eq!((reading.zero_ttl, reading.snapped), (0, false));
    }
}

#[test]
fn zero_ttls_are_skipped_and_counted() {
    let r = Response::new(
        "a.emis-x.uk",
        vec![
            Rr::a("a.emis-x.uk", 0, "3.3.3.3"),
            Rr::a("a.emis-x.uk", 5, "3.3.3.4"),
        ],
    );
    let reading = read(&r).unwrap();
    assert_eq!(pairs(&reading), vec![p("a.emis-x.uk", "3.3.3.4", 5)]);
    assert_eq!(reading.zero_ttl, 1);
    // A zero TTL on the alias zeroes everything behind it.
    let r = Response::new(
        "a.emis-x.uk",
        vec![
            Rr::cname("a.emis-x.uk", 0, "b.x"),
            Rr::a("b.x", 60, "3.3.3.3"),
        ],
    );
    let reading = read(&r).unwrap();
    assert!(reading.answers.is_empty());
    assert_eq!(reading.zero_ttl, 1);
}

#[test]
fn alias_loops_and_long_chains_end() {
    let r = Response::new(
        "a.x",
        vec![
            Rr::cname("a.x", 60, "b.x"),
            Rr::cname("b.x", 60, "a.x"),
            Rr::a("b.x", 60, "1.1.1.1"),
        ],
    );
    assert_eq!(pairs(&read(&r).unwrap()).len(), 2);
    let mut answers: Vec<Rr> = (0..20)
        .map(|i| Rr::cname(&format!("n{i}.x"), 60, &format!("n{}.x", i + 1)))
        .collect();
    answers.push(Rr::a("n20.x", 60, "1.1.1.1"));
    answers.push(Rr::a("n3.x", 60, "1.1.1.2"));
    let got = pairs(&read(&Response::new("n0.x", answers)).unwrap());
    assert_eq!(
        got.len(),
        4,
        "only the chain's first {MAX_CHAIN} links are followed: {got:?}"
    );
}

#[test]
fn hostile_and_odd_messages_are_rejected_with_their_reason() {
    assert_eq!(
        read_response(&craft::pointer_loop(), false),
        Err(Reject::CompressionLoop)
    );
    assert_eq!(
        read_response(&craft::forward_pointer(), false),
        Err(Reject::CompressionLoop)
    );
    // 64 is no label length on the wire: its top bits mark an extended label type.
    assert_eq!(
        read_response(&craft::long_label(), false),
        Err(Reject::Malformed)
    );
    assert_eq!(
        read_response(&craft::huge_name(), false),
        Err(Reject::NameTooLong)
    );
    assert_eq!(read_response(&[], false), Err(Reject::Truncated));
    let good = Response::new("a.emis-x.uk", vec![Rr::a("a.emis-x.uk", 60, "3.3.3.3")]);
    let bytes = good.build();
    for cut in 0..bytes.len() {
        let result = read_response(&bytes[..cut], false);
        // Inside a record's data the decoder reports a length mismatch instead.
        assert!(
            matches!(result, Err(Reject::Truncated | Reject::Malformed)),
            "cut at {cut}: {result:?}"
        );
    }
    assert_eq!(read_response(&bytes[..20], false), Err(Reject::Truncated));
    let mut query = bytes.clone();
    query[2] &= 0x7f;
    assert_eq!(read_response(&query, false), Err(Reject::NotResponse));
    let mut nx = good.clone();
    nx.rcode = 3;
    assert_eq!(read(&nx), Err(Reject::ErrorCode));
    let mut two = bytes.clone();
    two[5] = 2;
    assert_eq!(read_response(&two, false), Err(Reject::Question));
    let many = Response::new(
        "a.x",
        (0..65)
            .map(|i| Rr::a("a.x", 60, &format!("1.1.1.{i}")))
            .collect(),
    );
    assert_eq!(read(&many), Err(Reject::TooManyRecords));
    let mut bad_len = bytes.clone();
    let n = bad_len.len();
    bad_len[n - 5] = 9; // an A record claiming 9 bytes of data
    assert!(read_response(&bad_len, false).is_err());
}

#[test]
fn a_snapped_copy_keeps_the_records_before_the_cut() {
    let answers = (0..40)
        .map(|i| Rr::a("a.x", 60, &format!("1.1.1.{i}")))
        .collect();
    let bytes = Response::new("a.x", answers).build();
    assert!(bytes.len() > emis_common::DNS_SNAP_LEN);
    let reading = read_response(&bytes[..emis_common::DNS_SNAP_LEN], true).unwrap();
    assert!(reading.snapped);
    assert!(
        reading.answers.len() > 20 && reading.answers.len() < 40,
        "{}",
        reading.answers.len()
    );
    assert_eq!(
        read_response(&bytes[..emis_common::DNS_SNAP_LEN], false),
        Err(Reject::Truncated)
    );
}

#[test]
fn random_bytes_and_mutations_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let base = Response::new(
        "a.b.emis-x.uk",
        vec![
            Rr::cname("a.b.emis-x.uk", 60, "c.emis-x.uk"),
            Rr::a("c.emis-x.uk", 60, "3.3.3.3"),
        ],
    )
    .build();
    for _ in 0..20_000 {
        let mut m = base.clone();
        for _ in 0..rng.random_range(1..6) {
            let i = rng.random_range(0..m.len());
            m[i] = rng.random();
        }
        let _ = read_response(&m, rng.random());
        let len = rng.random_range(0..600);
        let noise: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let _ = read_response(&noise, false);
    }
}

#[test]
fn expiry_adds_grace_within_floor_and_ceiling() {
    let e = Expiry {
        grace_s: 60,
        floor_s: 30,
        ceiling_s: 3600,
    };
    assert_eq!(e.lifetime_s(1), 61);
    assert_eq!(e.lifetime_s(300), 360);
    assert_eq!(e.lifetime_s(u32::MAX), 3600);
    let short = Expiry {
        grace_s: 0,
        floor_s: 30,
        ceiling_s: 3600,
    };
    assert_eq!(short.lifetime_s(5), 30);
    let odd = Expiry {
        grace_s: 0,
        floor_s: 100,
        ceiling_s: 10,
    };
    assert_eq!(
        odd.lifetime_s(5),
        100,
        "a ceiling below the floor yields to it"
    );
}
