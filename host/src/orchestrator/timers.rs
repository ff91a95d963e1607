//! The driver's timers: step timeouts, the ends of backoffs, run deadlines.
//!
//! A min-heap of (when, run, flow step; `""` for the run's own deadline).
//! A timer is not taken out when what it guards settles first (the step
//! replies, the run ends): it is dropped when it comes due and no longer
//! acts (the machine's `live`). So that the heap holds the timers of the runs in flight
//! rather than of every run started within the longest timeout (60 s of
//! runs at full speed is hundreds of thousands), it is swept of timers that
//! no longer act whenever it has doubled since the last sweep: a linear
//! pass, paid for by the pushes that doubled it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// No sweep below this many timers.
const MIN_SWEEP: usize = 4096;

type Timer = Reverse<(u64, String, String)>;

pub(super) struct Timers {
    heap: BinaryHeap<Timer>,
    /// Sweep when the heap reaches this size.
    sweep_at: usize,
}

impl Timers {
    pub(super) fn new() -> Timers {
        Timers {
            heap: BinaryHeap::new(),
            sweep_at: MIN_SWEEP,
        }
    }

    /// Arm a timer at `at` (epoch ms) for flow step `sid` of `run_id` (or,
    /// with `sid` empty, the run's deadline). `live` says whether a timer
    /// still acts, for a sweep.
    pub(super) fn arm(
        &mut self,
        at: u64,
        run_id: &str,
        sid: &str,
        live: impl Fn(u64, &str, &str) -> bool,
    ) {
        self.heap
            .push(Reverse((at, run_id.to_string(), sid.to_string())));
        if self.heap.len() >= self.sweep_at {
            self.heap
                .retain(|Reverse((at, run, sid))| live(*at, run, sid));
            self.sweep_at = (2 * self.heap.len()).max(MIN_SWEEP);
        }
    }

    /// When the next timer is due.
    pub(super) fn next_at(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The next timer due by `now`: (at, run, flow step).
    pub(super) fn pop_due(&mut self, now: u64) -> Option<(u64, String, String)> {
        if self.next_at()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(t)| t)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn timers_of_settled_runs_are_swept_and_live_ones_kept() {
        // Live timers: run -> its deadline (a step's timeout is 1 ms before).
        let mut runs: HashMap<String, u64> = HashMap::new();
        let live = |runs: &HashMap<String, u64>, at: u64, run: &str, sid: &str| {
            runs.get(run)
                .is_some_and(|d| at == if sid.is_empty() { *d } else { d - 1 })
        };
        let mut t = Timers::new();
        // 100 000 runs pass through, at most 10 in flight: each arms its
        // deadline and its step's timeout, then ends.
        for i in 0..100_000u64 {
            let id = format!("r{i}");
            runs.insert(id.clone(), 1_000_000 + i);
            t.arm(1_000_000 + i, &id, "", |a, r, s| live(&runs, a, r, s));
            t.arm(1_000_000 + i - 1, &id, "s", |a, r, s| live(&runs, a, r, s));
            if i >= 10 {
                runs.remove(&format!("r{}", i - 10));
            }
        }
        assert!(t.len() < 2 * MIN_SWEEP, "{} timers kept", t.len());
        // The last ten runs' timers all survive, in order.
        let mut due = Vec::new();
        while let Some((at, id, sid)) = t.pop_due(u64::MAX) {
            if live(&runs, at, &id, &sid) {
                due.push((at, id, sid));
            }
        }
        assert_eq!(due.len(), 20);
        assert_eq!(
            due[0],
            (
                1_000_000 + 99_990 - 1,
                "r99990".to_string(),
                "s".to_string()
            )
        );
        assert!(due.windows(2).all(|w| w[0].0 <= w[1].0));
    }
}
