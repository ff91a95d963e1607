//! Counters kept per step while a host runs: what the CLI's summary shows
//! and what `/metrics` will export.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// One step's counters.
#[derive(Debug, Default)]
pub struct StepStats {
    /// Events the step handled successfully.
    pub handled: AtomicU64,
    /// Events it emitted.
    pub emitted: AtomicU64,
    /// Deliveries that failed and were scheduled again.
    pub retried: AtomicU64,
    /// Events dead-lettered (any class).
    pub dead_lettered: AtomicU64,
    /// Contract violations, in or out.
    pub contract_violations: AtomicU64,
    /// Time spent in the guest, microseconds.
    pub guest_micros: AtomicU64,
    /// Invocations run again because state they read changed before
    /// their commit.
    pub kv_conflicts: AtomicU64,
}

/// A snapshot of one step's counters.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StepSnapshot {
    pub handled: u64,
    pub emitted: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub contract_violations: u64,
    pub guest_micros: u64,
    pub kv_conflicts: u64,
}

impl StepStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StepSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StepSnapshot {
            handled: g(&self.handled),
            emitted: g(&self.emitted),
            retried: g(&self.retried),
            dead_lettered: g(&self.dead_lettered),
            contract_violations: g(&self.contract_violations),
            guest_micros: g(&self.guest_micros),
            kv_conflicts: g(&self.kv_conflicts),
        }
    }
}

/// Counters of every step of a host, by step name.
#[derive(Debug, Default)]
pub struct Stats {
    pub steps: BTreeMap<String, Arc<StepStats>>,
}

impl Stats {
    pub fn snapshot(&self) -> BTreeMap<String, StepSnapshot> {
        self.steps
            .iter()
            .map(|(k, v)| (k.clone(), v.snapshot()))
            .collect()
    }
}
