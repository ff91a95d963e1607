//! Counters and latencies of a step's outbound calls, per host (as its
//! grant names it, so `*.mail.example` is one series), for `/metrics`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, seconds.
pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// One host's calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostSnapshot {
    /// Calls that got a response, by status class (`2xx` ...).
    pub responses: BTreeMap<String, u64>,
    /// Calls that failed without a response (connect, timeout, limit).
    pub failures: u64,
    /// Cumulative counts per bucket of [`BUCKETS`], then the count of all.
    pub buckets: Vec<u64>,
    pub sum_seconds: f64,
}

/// A step's outbound counters.
#[derive(Debug, Default)]
pub struct HttpStats {
    denied: AtomicU64,
    hosts: Mutex<BTreeMap<String, HostSnapshot>>,
}

impl HttpStats {
    pub(super) fn denied(&self) {
        self.denied.fetch_add(1, Ordering::Relaxed);
    }

    /// A call to `host` ended: with a response of `status`, or none, after
    /// `took` (to the response's head).
    pub(super) fn record(&self, host: &str, status: Option<u16>, took: Duration) {
        let mut hosts = self.hosts.lock().expect("stats lock");
        let h = hosts
            .entry(host.to_string())
            .or_insert_with(|| HostSnapshot {
                buckets: vec![0; BUCKETS.len() + 1],
                ..Default::default()
            });
        match status {
            Some(s) => *h.responses.entry(format!("{}xx", s / 100)).or_default() += 1,
            None => h.failures += 1,
        }
        let secs = took.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.buckets[i] += 1;
            }
        }
        h.buckets[BUCKETS.len()] += 1;
        h.sum_seconds += secs;
    }

    /// Requests refused because no grant allowed them.
    pub fn denied_total(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }

    /// Every host called so far.
    pub fn hosts(&self) -> BTreeMap<String, HostSnapshot> {
        self.hosts.lock().expect("stats lock").clone()
    }
}
