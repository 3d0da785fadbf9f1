//! Learning hostnames from DNS: the daemon reads the DNS responses the kernel hands over
//! (`EMIS_DNS`), keeps each (name, address) a rule's hostnames match until its TTL plus
//! grace runs out, and writes each address's union of live names into the learned maps
//! the kernel reads (`EMIS_LEARNED_V4`/`_V6`, pinned, so they outlive reloads; a reload
//! rewrites every value for the new rules, and applies new expiry and hand-off rate
//! settings). `emis names` asks for the table over the
//! control socket; the metrics read its counters.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use emis_common::{
    filter_word, DnsConfig, DnsMessage, DNS_COUNT_DOT, DNS_COUNT_HANDED, DNS_COUNT_RING_FULL,
    DNS_COUNT_SUPPRESSED, DNS_MESSAGE_SIZE, DNS_SNAP_LEN, LEARNED_FILTER_WORDS, MAP_DNS,
    MAP_DNS_CONFIG, MAP_DNS_COUNTS, MAP_LEARNED_FILTER, MAP_LEARNED_V4, MAP_LEARNED_V6,
};
use emis_policy::{
    dns::{read_response, Expiry, Reject},
    hostnames::HostnameGroups,
    policy::Policy,
};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

use super::{error::What as _, pins::Pins, Error};
use crate::learned::{
    clear, filter_bit, filter_words, map_name, value_for, write, write_filter_word,
};

/// How often expired names are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What the daemon has learned, and how it went.
pub struct Learner {
    pins: Pins,
    hostnames: HostnameGroups,
    /// Rule slugs by rule id, for `emis names` and the metrics.
    slugs: Vec<String>,
    expiry: Expiry,
    /// Per address, its live names and when each expires.
    table: HashMap<IpAddr, BTreeMap<String, Instant>>,
    /// The pinned learned maps and filter, by name, opened on first use.
    maps: HashMap<&'static str, aya::maps::Map>,
    /// The learned filter's words as written (all clear after [`Learner::forget_earlier`]).
    filter: Vec<u64>,
    /// An address left the maps since the filter was last rebuilt, so bits may be set
    /// that no address needs (harmless: they cost the kernel a map lookup).
    filter_stale: bool,
    /// Addresses whose removal from a learned map failed: still in the map, so their
    /// filter bits stay, and the removal is tried again at each sweep.
    undeleted: HashSet<IpAddr>,
    pub stats: LearnStats,
}

/// Counters of the learning, exported as metrics.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LearnStats {
    pub parsed: u64,
    pub rejected: BTreeMap<String, u64>,
    /// A and AAAA records skipped for a TTL of 0.
    pub zero_ttl: u64,
    /// Responses longer than the kernel's copy, read up to the cut.
    pub snapped: u64,
    /// Answers for names no rule names.
    pub unnamed: u64,
    /// Addresses whose names' rules did not all fit a learned entry.
    pub overflow: u64,
    /// Writes to the learned maps that failed (a full map).
    pub map_errors: u64,
}

/// One learned (name, address), as `emis names` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NameRow {
    pub name: String,
    pub addr: IpAddr,
    /// The rules (slugs) whose hostnames match the name.
    pub rules: Vec<String>,
    /// Seconds until it is forgotten.
    pub expires_in: u64,
}

/// `emis names`'s report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NamesReport {
    pub names: Vec<NameRow>,
    pub stats: LearnStats,
}

impl Learner {
    pub fn new(pins: &Pins, policy: &Policy, hostnames: HostnameGroups, expiry: Expiry) -> Learner {
        Learner {
            pins: pins.clone(),
            hostnames,
            slugs: policy.rules.iter().map(|r| r.slug.clone()).collect(),
            expiry,
            table: HashMap::new(),
            maps: HashMap::new(),
            filter: vec![0; LEARNED_FILTER_WORDS as usize],
            filter_stale: false,
            undeleted: HashSet::new(),
            stats: LearnStats::default(),
        }
    }

    /// Empties the pinned learned maps: an earlier daemon's addresses would never expire,
    /// since this one does not know them. They are learned again from the next answers.
    pub fn forget_earlier(&mut self) {
        let mut emptied = true;
        for (name, v6) in [(MAP_LEARNED_V4, false), (MAP_LEARNED_V6, true)] {
            let cleared = self
                .pins
                .open_map(name)
                .map_err(|e| e.to_string())
                .and_then(|mut map| clear(&mut map, v6).map_err(|e| e.to_string()));
            match cleared {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(addresses = n, "forgot the addresses an earlier run learned")
                }
                Err(e) => {
                    emptied = false;
                    tracing::warn!(error = %e, "emptying {name}");
                }
            }
        }
        // After the maps, and only if they are empty: a bit still set costs the kernel a
        // lookup, a bit cleared under an address left in a map would hide it.
        if !emptied {
            return;
        }
        let Some(map) = self.map(MAP_LEARNED_FILTER) else {
            return;
        };
        let cleared = (0..LEARNED_FILTER_WORDS).try_for_each(|i| write_filter_word(map, i, 0));
        if let Err(e) = cleared {
            tracing::warn!(error = %e, "emptying {MAP_LEARNED_FILTER}");
        }
        self.filter.fill(0);
    }

    /// A reload changed the rules: every address's value is written again for them.
    pub fn set_policy(&mut self, policy: &Policy, hostnames: HostnameGroups) {
        self.hostnames = hostnames;
        self.slugs = policy.rules.iter().map(|r| r.slug.clone()).collect();
        let addrs: Vec<IpAddr> = self.table.keys().copied().collect();
        for addr in addrs {
            if let Some(names) = self.table.get_mut(&addr) {
                names.retain(|name, _| self.hostnames.groups_of(name) != 0);
            }
            self.write(addr);
        }
        self.rebuild_filter();
    }

    /// New expiry settings (a reload): answers read from now on are kept for what they
    /// say. Names already learned keep the time they were given (their TTLs are not
    /// kept), except that a lower ceiling shortens them to it from `now`.
    pub fn set_expiry(&mut self, expiry: Expiry, now: Instant) {
        let longest = now + Duration::from_secs(expiry.ceiling_s.max(expiry.floor_s));
        for names in self.table.values_mut() {
            for until in names.values_mut() {
                *until = (*until).min(longest);
            }
        }
        self.expiry = expiry;
    }

    /// Learns from one DNS response (`snapped`: the kernel's copy was cut).
    pub fn handle(&mut self, message: &[u8], snapped: bool, now: Instant) {
        let reading = match read_response(message, snapped) {
            Ok(reading) => reading,
            Err(reason) => {
                self.reject(reason);
                return;
            }
        };
        self.stats.parsed += 1;
        self.stats.zero_ttl += reading.zero_ttl as u64;
        self.stats.snapped += reading.snapped as u64;
        let mut touched = Vec::new();
        for answer in reading.answers {
            if self.hostnames.groups_of(&answer.name) == 0 {
                self.stats.unnamed += 1;
                continue;
            }
            let until = now + Duration::from_secs(self.expiry.lifetime_s(answer.ttl));
            let names = self.table.entry(answer.addr).or_default();
            let entry = names.entry(answer.name).or_insert(until);
            *entry = (*entry).max(until);
            touched.push(answer.addr);
        }
        touched.sort();
        touched.dedup();
        for addr in touched {
            self.write(addr);
        }
        self.rebuild_filter();
    }

    fn reject(&mut self, reason: Reject) {
        *self.stats.rejected.entry(reason.name().into()).or_default() += 1;
    }

    /// Forgets every name whose time ran out.
    pub fn sweep(&mut self, now: Instant) {
        let mut changed = Vec::new();
        for (addr, names) in &mut self.table {
            let before = names.len();
            names.retain(|_, until| *until > now);
            if names.len() != before {
                changed.push(*addr);
            }
        }
        // Removals that failed before, tried again (an address learned since is written).
        changed.extend(self.undeleted.iter().copied());
        for addr in changed {
            self.write(addr);
        }
        self.rebuild_filter();
    }

    /// Writes `addr`'s value for its live names, or removes it.
    fn write(&mut self, addr: IpAddr) {
        let names: Vec<String> = self
            .table
            .get(&addr)
            .map(|n| n.keys().cloned().collect())
            .unwrap_or_default();
        if names.is_empty() {
            self.table.remove(&addr);
        }
        let value = value_for(&self.hostnames, names.iter().map(String::as_str));
        if let Some((_, true)) = value {
            self.stats.overflow += 1;
        }
        // The filter's bit before the address: the kernel asks the map only where it is set.
        if value.is_some() && !self.set_filter_bit(addr) {
            return;
        }
        // `None` when the map could not be opened (counted there).
        let result = self
            .map(map_name(addr))
            .map(|map| write(map, addr, value.as_ref().map(|(v, _)| v)));
        let written = match result {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                self.stats.map_errors += 1;
                tracing::warn!(%addr, error = %e, "writing a learned address");
                false
            }
            None => false,
        };
        match (value.is_none(), written) {
            (true, true) => {
                self.undeleted.remove(&addr);
                self.filter_stale = true;
            }
            // Still in the map: its bit must stay until a removal succeeds.
            (true, false) => {
                self.undeleted.insert(addr);
            }
            (false, _) => {
                self.undeleted.remove(&addr);
            }
        }
    }

    /// The pinned map `name`, opened once (the pinned maps are the same across reloads);
    /// `None` (counted and logged) if it cannot be opened.
    fn map(&mut self, name: &'static str) -> Option<&mut aya::maps::Map> {
        if !self.maps.contains_key(name) {
            match self.pins.open_map(name) {
                Ok(map) => {
                    self.maps.insert(name, map);
                }
                Err(e) => {
                    self.stats.map_errors += 1;
                    tracing::warn!(error = %e, "opening {name}");
                    return None;
                }
            }
        }
        self.maps.get_mut(name)
    }

    /// Sets `addr`'s bit in the kernel's learned filter; `false` if writing it failed.
    fn set_filter_bit(&mut self, addr: IpAddr) -> bool {
        let (index, mask) = filter_word(filter_bit(addr));
        let word = self.filter[index as usize];
        if word & mask != 0 {
            return true;
        }
        let Some(map) = self.map(MAP_LEARNED_FILTER) else {
            return false;
        };
        if let Err(e) = write_filter_word(map, index, word | mask) {
            self.stats.map_errors += 1;
            tracing::warn!(%addr, error = %e, "setting a learned filter bit");
            return false;
        }
        self.filter[index as usize] = word | mask;
        true
    }

    /// Clears the filter bits no learned address needs any more, once addresses left.
    fn rebuild_filter(&mut self) {
        if !self.filter_stale {
            return;
        }
        let wanted = filter_words(self.table.keys().chain(&self.undeleted).copied());
        let mut written = std::mem::take(&mut self.filter);
        let result: Result<(), aya::maps::MapError> = match self.map(MAP_LEARNED_FILTER) {
            Some(map) => wanted.iter().enumerate().try_for_each(|(index, &word)| {
                if word != written[index] {
                    write_filter_word(map, index as u32, word)?;
                    written[index] = word;
                }
                Ok(())
            }),
            None => Ok(()),
        };
        self.filter = written;
        match result {
            Ok(()) => self.filter_stale = self.filter != wanted,
            Err(e) => {
                self.stats.map_errors += 1;
                tracing::warn!(error = %e, "clearing learned filter bits");
            }
        }
    }

    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    pub fn report(&self, now: Instant) -> NamesReport {
        let mut names: Vec<NameRow> = self
            .table
            .iter()
            .flat_map(|(addr, names)| {
                names.iter().map(move |(name, until)| NameRow {
                    name: name.clone(),
                    addr: *addr,
                    rules: self
                        .hostnames
                        .rules_for(name)
                        .into_iter()
                        .filter_map(|id| self.slugs.get(id as usize).cloned())
                        .collect(),
                    expires_in: until.saturating_duration_since(now).as_secs(),
                })
            })
            .collect();
        names.sort_by(|a, b| (&a.name, a.addr).cmp(&(&b.name, b.addr)));
        NamesReport {
            names,
            stats: self.stats.clone(),
        }
    }

    /// Learned addresses per rule slug: what the metrics call learned addresses by row.
    pub fn addresses_by_rule(&self) -> BTreeMap<String, u64> {
        let mut by_rule = BTreeMap::new();
        for names in self.table.values() {
            let mut rules: Vec<u32> = names
                .keys()
                .flat_map(|n| self.hostnames.rules_for(n))
                .collect();
            rules.sort_unstable();
            rules.dedup();
            for id in rules {
                if let Some(slug) = self.slugs.get(id as usize) {
                    *by_rule.entry(slug.clone()).or_default() += 1;
                }
            }
        }
        by_rule
    }
}

/// The kernel's DNS counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct DnsCounts {
    pub handed: u64,
    pub suppressed: u64,
    pub ring_full: u64,
    pub dot: u64,
}

impl DnsCounts {
    pub fn read(pins: &Pins) -> Option<DnsCounts> {
        let counts: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(pins.open_map(MAP_DNS_COUNTS).ok()?).ok()?;
        let sum = |slot: u32| {
            counts
                .get(&slot, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        Some(DnsCounts {
            handed: sum(DNS_COUNT_HANDED),
            suppressed: sum(DNS_COUNT_SUPPRESSED),
            ring_full: sum(DNS_COUNT_RING_FULL),
            dot: sum(DNS_COUNT_DOT),
        })
    }
}

/// Switches the kernel's hand-off on (the daemon learns) or off (nobody reads the ring);
/// `rate`: responses a second each CPU hands off (`--dns-rate`). The map is pinned, so
/// the value holds across reloads until written again.
pub fn set_handoff(pins: &Pins, on: bool, rate: u32) -> Result<(), Error> {
    let mut config: Array<MapData, DnsConfig> = Array::try_from(pins.open_map(MAP_DNS_CONFIG)?)
        .what(|| format!("pinned map {MAP_DNS_CONFIG} has an unexpected type"))?;
    let value = DnsConfig {
        enabled: on as u32,
        rate,
    };
    config
        .set(0, value, 0)
        .what(|| format!("writing {MAP_DNS_CONFIG}"))
}

/// Opens the pinned DNS ring buffer.
pub fn open_ring(pins: &Pins) -> Result<RingBuf<MapData>, Error> {
    RingBuf::try_from(pins.open_map(MAP_DNS)?)
        .what(|| format!("pinned map {MAP_DNS} has an unexpected type"))
}

/// Reads the ring buffer and sweeps expired names until the runtime stops.
pub async fn serve(ring: RingBuf<MapData>, learner: Arc<Mutex<Learner>>) {
    let mut ring = match unsafe { AsyncFd::register(ring) } {
        Ok(ring) => ring,
        Err(e) => {
            tracing::error!(error = %e, "watching the DNS ring buffer: nothing will be learned");
            return;
        }
    };
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = sweep.tick() => {
                if let Ok(mut learner) = learner.lock() {
                    learner.sweep(Instant::now());
                }
            }
            guard = ring.readable_mut() => {
                let Ok(mut guard) = guard else { return };
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    if item.len() < DNS_MESSAGE_SIZE {
                        continue;
                    }
                    // The kernel wrote a DnsMessage; the ring buffer gives no alignment promise.
                    let message: DnsMessage =
                        unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                    drop(item);
                    let captured = (message.captured_len as usize).min(DNS_SNAP_LEN);
                    let snapped = (message.len as usize) > captured;
                    if let Ok(mut learner) = learner.lock() {
                        learner.handle(&message.data[..captured], snapped, Instant::now());
                    }
                }
                guard.clear_ready();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emis_policy::{
        compile::compile,
        dns::craft::{Response, Rr},
        spec::{load_policy, SiteOptions, Source},
    };

    /// A learner over the embedded spec whose map writes fail (no pins): the table, the
    /// expiry and the counters are what is tested here; the lab test writes real maps.
    fn learner(expiry: Expiry) -> Learner {
        let policy = load_policy(&Source::default_spec(), &SiteOptions::default()).unwrap();
        let hostnames = compile(&policy).unwrap().hostnames;
        Learner::new(
            &Pins::new("/nonexistent/emis-test-pins"),
            &policy,
            hostnames,
            expiry,
        )
    }

    #[test]
    fn names_are_kept_for_ttl_plus_grace_and_swept() {
        let mut l = learner(Expiry {
            grace_s: 10,
            floor_s: 1,
            ceiling_s: 3600,
        });
        let t0 = Instant::now();
        let response = Response::new(
            "ewcd01.emishealth.com",
            vec![
                Rr::cname("ewcd01.emishealth.com", 300, "s3.cdn.example"),
                Rr::a("s3.cdn.example", 20, "10.207.116.10"),
                Rr::a("s3.cdn.example", 0, "10.207.116.11"),
            ],
        );
        l.handle(&response.build(), false, t0);
        let report = l.report(t0);
        assert_eq!(report.names.len(), 1, "{report:?}");
        let row = &report.names[0];
        assert_eq!(row.name, "ewcd01.emishealth.com");
        assert_eq!(row.addr.to_string(), "10.207.116.10");
        assert_eq!(row.rules, vec!["s3-documents"]);
        assert_eq!(row.expires_in, 30);
        assert_eq!(
            (l.stats.parsed, l.stats.zero_ttl, l.stats.unnamed),
            (1, 1, 1)
        );
        assert_eq!(l.addresses_by_rule().get("s3-documents"), Some(&1));
        l.sweep(t0 + Duration::from_secs(29));
        assert_eq!(l.report(t0).names.len(), 1);
        l.sweep(t0 + Duration::from_secs(31));
        assert!(l.report(t0).names.is_empty());
        assert!(l.addresses_by_rule().is_empty());
    }

    /// A removal the map refused leaves the address in the map, so its filter bit must
    /// stay and the removal is tried again; here every map write fails (no pins).
    #[test]
    fn an_address_whose_removal_failed_keeps_its_filter_bit_and_is_retried() {
        let mut l = learner(Expiry {
            grace_s: 0,
            floor_s: 1,
            ceiling_s: 3600,
        });
        let t0 = Instant::now();
        let response = Response::new(
            "ewcd01.emishealth.com",
            vec![Rr::a("ewcd01.emishealth.com", 5, "10.207.116.10")],
        );
        l.handle(&response.build(), false, t0);
        l.sweep(t0 + Duration::from_secs(6));
        let addr: IpAddr = "10.207.116.10".parse().unwrap();
        assert!(l.report(t0).names.is_empty());
        assert!(l.undeleted.contains(&addr));
        let errors = l.stats.map_errors;
        l.sweep(t0 + Duration::from_secs(7));
        assert!(l.undeleted.contains(&addr), "still refused");
        assert!(l.stats.map_errors > errors, "the removal was tried again");
        // The rebuilt filter would keep the address's bit.
        let bit = filter_bit(addr);
        let wanted = filter_words(l.table.keys().chain(&l.undeleted).copied());
        assert_ne!(wanted[(bit / 64) as usize] & 1 << (bit % 64), 0);
    }

    #[test]
    fn new_expiry_settings_apply_to_later_answers_and_a_lower_ceiling_to_all() {
        let mut l = learner(Expiry::default());
        let t0 = Instant::now();
        let answer =
            |name: &str, ttl| Response::new(name, vec![Rr::a(name, ttl, "185.13.72.10")]).build();
        l.handle(&answer("a.emis-x.uk", 600), false, t0);
        l.handle(&answer("b.emis-x.uk", 60), false, t0);
        let expires =
            |l: &Learner| -> Vec<u64> { l.report(t0).names.iter().map(|r| r.expires_in).collect() };
        assert_eq!(expires(&l), [720, 180]);
        l.set_expiry(
            Expiry {
                grace_s: 5,
                floor_s: 1,
                ceiling_s: 300,
            },
            t0,
        );
        assert_eq!(expires(&l), [300, 180], "cut to the new ceiling, or kept");
        l.handle(&answer("c.emis-x.uk", 60), false, t0);
        assert_eq!(expires(&l), [300, 180, 65], "the new grace");
    }

    #[test]
    fn a_later_answer_extends_and_rejections_are_counted_by_reason() {
        let mut l = learner(Expiry::default());
        let t0 = Instant::now();
        let answer = |ttl| {
            Response::new(
                "a.emis-x.uk",
                vec![Rr::a("a.emis-x.uk", ttl, "185.13.72.10")],
            )
            .build()
        };
        l.handle(&answer(600), false, t0);
        l.handle(&answer(60), false, t0);
        assert_eq!(
            l.report(t0).names[0].expires_in,
            720,
            "the longer expiry stays"
        );
        l.handle(&[0u8; 5], false, t0);
        l.handle(&emis_policy::dns::craft::pointer_loop(), false, t0);
        assert_eq!(l.stats.rejected.get("truncated"), Some(&1));
        assert_eq!(l.stats.rejected.get("compression_loop"), Some(&1));
        assert!(
            l.stats.map_errors > 0,
            "no pins here, so the writes fail and are counted"
        );
    }
}
