//! `emis top`: the busiest denied sources and destinations over the last minute, from
//! the drop events the daemon has read (so within the event rate limit). The event
//! fan-out records each denial here; the control socket's `top` request reads it.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::events::EventLine;

pub const WINDOW: Duration = Duration::from_secs(60);
/// A bound on memory whatever the event rate.
const MAX_KEPT: usize = 200_000;

/// When a denial was read, and its source and destination.
type Seen = (Instant, Option<IpAddr>, Option<IpAddr>);

/// The denials of the last [`WINDOW`].
#[derive(Debug, Default)]
pub struct TopWindow {
    seen: VecDeque<Seen>,
}

/// One busy address and its denied events in the window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Busy {
    pub addr: String,
    pub events: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopReport {
    pub window_seconds: u64,
    /// Denied events in the window.
    pub events: u64,
    pub sources: Vec<Busy>,
    pub destinations: Vec<Busy>,
}

impl TopWindow {
    /// Records a denial (sampled allowed packets are not counted).
    pub fn record(&mut self, now: Instant, line: &EventLine) {
        if line.action == "allow" {
            return;
        }
        self.seen.push_back((now, line.src, line.dst));
        if self.seen.len() > MAX_KEPT {
            self.seen.pop_front();
        }
    }

    /// The `limit` busiest sources and destinations of the window ending `now`.
    pub fn report(&mut self, now: Instant, limit: usize) -> TopReport {
        while let Some((at, _, _)) = self.seen.front() {
            if now.duration_since(*at) <= WINDOW {
                break;
            }
            self.seen.pop_front();
        }
        let busiest = |pick: fn(&Seen) -> Option<IpAddr>| {
            let mut counts: HashMap<IpAddr, u64> = HashMap::new();
            for seen in &self.seen {
                if let Some(addr) = pick(seen) {
                    *counts.entry(addr).or_default() += 1;
                }
            }
            let mut rows: Vec<(IpAddr, u64)> = counts.into_iter().collect();
            rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            rows.into_iter()
                .take(limit)
                .map(|(addr, events)| Busy {
                    addr: addr.to_string(),
                    events,
                })
                .collect()
        };
        TopReport {
            window_seconds: WINDOW.as_secs(),
            events: self.seen.len() as u64,
            sources: busiest(|s| s.1),
            destinations: busiest(|s| s.2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(src: &str, dst: &str) -> EventLine {
        EventLine {
            time: String::new(),
            time_ns: 0,
            iface: "eth0".into(),
            src: src.parse().ok(),
            dst: dst.parse().ok(),
            proto: Some("tcp".into()),
            sport: Some(1),
            dport: Some(2),
            tcp_flags: "S".into(),
            reason: "no_rule".into(),
            network: "n".into(),
            action: "drop".into(),
            rule: None,
            frame_len: 60,
            frame: String::new(),
        }
    }

    #[test]
    fn the_busiest_come_first_and_old_denials_leave_the_window() {
        let mut top = TopWindow::default();
        let t0 = Instant::now();
        top.record(t0, &denial("10.0.0.9", "192.0.2.1"));
        let t1 = t0 + Duration::from_secs(30);
        for _ in 0..3 {
            top.record(t1, &denial("10.0.0.1", "192.0.2.1"));
        }
        top.record(t1, &denial("10.0.0.2", "192.0.2.2"));
        let mut allowed = denial("10.0.0.3", "192.0.2.3");
        allowed.action = "allow".into();
        top.record(t1, &allowed);

        let report = top.report(t1, 1);
        assert_eq!(report.events, 5);
        assert_eq!(
            report.sources,
            vec![Busy {
                addr: "10.0.0.1".into(),
                events: 3
            }]
        );
        assert_eq!(
            report.destinations,
            vec![Busy {
                addr: "192.0.2.1".into(),
                events: 4
            }]
        );

        let later = top.report(t0 + Duration::from_secs(75), 10);
        assert_eq!(later.events, 4, "the first denial is over a minute old");
        assert_eq!(later.sources.len(), 2);
    }
}
