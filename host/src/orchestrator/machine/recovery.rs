//! Runs taken up again: after a restart or a takeover (their replies
//! replayed onto their last record, then [`Machine::recover`]), and after
//! a commit that failed while the host kept running ([`Machine::resync`]:
//! the store refused a write, e.g. a full disk, and the driver writes the
//! run again once it can). Part of [`Machine`].

use super::{Action, Machine, Transition, key_row, timeout_of};
use crate::clock::epoch_ms;
use crate::event::Event;
use crate::orchestrator::run::StepState;
use crate::protocol;

impl Machine {
    /// Apply to run `run_id` (loaded from its last checkpoint) the replies
    /// in `log`, the run's trace in log order, each at its own time. The
    /// commands those transitions sent are not collected: [`Self::recover`]
    /// re-sends the command of every waiting step.
    pub fn replay(&mut self, run_id: &str, log: &[Event]) -> usize {
        let mut replies = 0;
        for e in log {
            if !protocol::is_reply(e) || protocol::run_of(e) != run_id {
                continue;
            }
            if !self.runs.contains_key(run_id) {
                break; // it ended
            }
            let at = epoch_ms(&e.time).unwrap_or(0);
            if let Some(t) = self.on_event(e, at) {
                // A run the replies ended: its final record is written
                // at recovery.
                let end = t.actions.into_iter().find(|a| matches!(a, Action::End(_)));
                if let Some(end) = end {
                    self.replayed_ends.push(Transition::of(run_id, vec![end]));
                }
            }
            replies += 1;
        }
        replies
    }

    /// After a restart or a takeover, at `now`: for every run, arm its
    /// deadline and its steps' timers, give every waiting step its full
    /// timeout from now (the time no host drove the run is not the step's),
    /// and re-send its command (same id: the broker drops those it has).
    /// Each run's record is written, and the final record of each run
    /// that [`Self::replay`] ended.
    pub fn recover(&mut self, now: u64) -> Vec<Transition> {
        let ids: Vec<String> = self.runs.keys().cloned().collect();
        let mut out = std::mem::take(&mut self.replayed_ends);
        for id in ids {
            let mut t = Transition::new(&id);
            t.actions.push(Action::Checkpoint);
            let flow = self.flow_of(&id);
            let run = self.runs.get_mut(&id).expect("listed");
            t.arm(run.deadline_ms, "");
            let sids: Vec<String> = run.steps.keys().cloned().collect();
            let mut waiting = Vec::new();
            for sid in sids {
                let rec = run.steps.get_mut(&sid).expect("listed");
                let Some(mut at) = rec.deadline_ms else {
                    continue;
                };
                if rec.state == StepState::Dispatched {
                    at = at.max(now + timeout_of(flow.as_deref(), &sid));
                    rec.deadline_ms = Some(at);
                    waiting.push((sid.clone(), rec.attempts));
                }
                t.arm(at, &sid);
            }
            for (sid, attempt) in waiting {
                if let Some(e) = self.command(&id, &sid, attempt, now) {
                    t.send(e);
                }
            }
            self.touch(&id, now);
            self.park_if_idle(&mut t, now);
            out.push(t);
        }
        out
    }

    /// What run `run_id` needs written again after a commit of it failed
    /// (nothing of it was stored): its record as it stands, and the
    /// command of every step that waits for a reply (the same id as the
    /// lost one, so a copy that did go out is dropped by the broker).
    /// Timers are untouched: those armed for the lost transition still
    /// stand. `None` if the run is no longer active.
    pub fn resync(&mut self, run_id: &str, now: u64) -> Option<Transition> {
        let run = self.runs.get(run_id)?;
        let mut t = Transition::new(run_id);
        t.actions.push(Action::Checkpoint);
        let waiting: Vec<(String, u32)> = run
            .steps
            .iter()
            .filter(|(_, r)| r.state == StepState::Dispatched)
            .map(|(sid, r)| (sid.clone(), r.attempts))
            .collect();
        for (sid, attempt) in waiting {
            if let Some(e) = self.command(run_id, &sid, attempt, now) {
                t.send(e);
            }
        }
        self.park_if_idle(&mut t, now);
        Some(t)
    }

    /// Drop run `run_id`, whose start could not be stored (its producer
    /// was told so, and may start it again).
    pub fn forget(&mut self, run_id: &str) {
        self.parking.remove(run_id);
        self.drop_elements(run_id);
        if let Some(run) = self.runs.remove(run_id) {
            if let Some(k) = &run.key {
                self.keys.remove(&key_row(&run.flow, k));
            }
            // The row written with its start was not stored either.
            self.unpin(run.deployment);
        }
    }
}
