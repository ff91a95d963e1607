//! Rebuilding a run after a restart, where the driver keeps a
//! [`Journal::Checkpoints`] journal.
//!
//! The run's record on disk is its last checkpoint: written when the run
//! started and at every transition not caused by a step's reply. The
//! replies consumed since are in the broker's log (a reply is durable
//! before the orchestrator sees it). Applying every reply of the run's
//! trace to the checkpoint, in log order, gives the state the driver had:
//!
//! - a reply counts only for the command it answers (its causation id is
//!   the step's current command, and the step is still dispatched), so the
//!   replies the checkpoint already holds, and stale ones, change nothing,
//!   as they changed nothing when they first arrived;
//! - replies reach the orchestrator in log order (one queue, in commit
//!   order), so applying them in log order repeats the same transitions;
//! - times are the replies' own, so deadlines and timings come out as
//!   they were.
//!
//! The commands those transitions sent are not collected here: after
//! replay, [`Driver::resume`] re-sends the command of every dispatched
//! step (same ids; the broker drops the ones it has).

use super::driver::{Driver, Out};
use super::messages::run_of;
use super::{COMPLETED, FAILED, GROUP};
use crate::event::{Event, TARGET};

#[cfg(doc)]
use super::driver::Journal;

impl Driver {
    /// Apply to the run `run_id` (loaded from its checkpoint) the replies
    /// in `log`, the run's trace in log order.
    pub(super) fn replay(&mut self, run_id: &str, log: &[Event]) {
        let mut replies = 0;
        for e in log {
            let reply = matches!(e.kind.as_str(), COMPLETED | FAILED)
                && e.extensions.get(TARGET).map(String::as_str) == Some(GROUP)
                && run_of(e) == run_id;
            let live = self.runs.get(run_id).is_some_and(|r| !r.state.is_final());
            if !reply || !live {
                continue;
            }
            self.clock = humantime::parse_rfc3339_weak(&e.time)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64);
            self.apply(run_id, e, &mut Out::default());
            replies += 1;
        }
        self.clock = None;
        tracing::debug!(run = %run_id, replies, "replayed the run's replies onto its checkpoint");
    }
}
