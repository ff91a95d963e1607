//! How runs fail: a step's failure (retry after a backoff, or fail the
//! run; an output that would outgrow the run's record is one), and
//! compensation in reverse order of completion. Part of [`Machine`]; the
//! happy path is in `mod.rs`.

use std::cmp::Reverse;

use serde_json::value::RawValue;

use super::{Machine, Transition, finish};
use crate::orchestrator::rfc3339;
use crate::orchestrator::run::{RunState, StepRecord, StepState};
use crate::protocol::{self, Failure, FailureClass};

impl Machine {
    /// The current attempt of `sid` failed: back off and try again if the
    /// class allows and attempts are left, else the step has failed (timed
    /// out, if it ran out of time) and so has the run, or the compensation.
    pub(super) fn step_failed(
        &mut self,
        run_id: &str,
        sid: &str,
        failure: Failure,
        t: &mut Transition,
        now: u64,
    ) {
        let policy = self.retry_of(run_id, sid);
        let undoable = self.undoable(run_id, sid);
        // (A child run's attempt that timed out was cancelled: it undoes
        // itself.)
        let unknown =
            failure.class == FailureClass::Timeout && undoable && !self.is_child(run_id, sid);
        let run = self.runs.get_mut(run_id).expect("live");
        // A step of a run that is already being undone is not tried again,
        // but for one with a compensation whose attempt timed out: what it
        // did is not known, and must be learnt to be undone (its attempt
        // again, under the same idempotency keys, finds out).
        let forward_in_vain =
            run.state != RunState::Running && protocol::undoes(sid).is_none() && !unknown;
        let rec = run.steps.get_mut(sid).expect("step");
        rec.errors
            .push(format!("attempt {}: {failure}", rec.attempts));
        if failure.class.retryable() && rec.attempts < policy.max_attempts && !forward_in_vain {
            let wait = policy.backoff(rec.attempts).as_millis() as u64;
            rec.state = StepState::Backoff;
            rec.deadline_ms = Some(now + wait);
            t.arm(now + wait, sid);
            return;
        }
        rec.state = if failure.class == FailureClass::Timeout {
            StepState::TimedOut
        } else {
            StepState::Failed
        };
        rec.finished = Some(rfc3339(now));
        rec.deadline_ms = None;
        if let Some(orig) = protocol::undoes(sid) {
            if let Some(r) = run.steps.get_mut(orig) {
                r.state = StepState::CompensationFailed;
            }
            run.error = Some(format!(
                "{} (and undoing {orig} failed: {failure})",
                run.error.clone().unwrap_or_default()
            ));
            self.next_undo(run_id, t, now);
            return;
        }
        if let Some((parent, i)) = protocol::element_of(sid)
            && run.state == RunState::Running
        {
            let parent = parent.to_string();
            return self.element_settled(run_id, &parent, Some((i, &failure)), t, now);
        }
        self.fail_run(run_id, format!("step {sid} failed: {failure}"), t, now);
    }

    /// The run cannot complete: cancel what has not started and undo what
    /// completed, in reverse order of completion.
    pub(super) fn fail_run(&mut self, run_id: &str, error: String, t: &mut Transition, now: u64) {
        let flow = self.flow_of(run_id);
        if self.runs[run_id].state != RunState::Running {
            // Already undoing: a step that was still in flight failed too;
            // the run may be able to end now.
            return self.next_undo(run_id, t, now);
        }
        self.cancel_children(run_id, &error, t);
        let run = self.runs.get_mut(run_id).expect("live");
        run.error = Some(error);
        run.state = RunState::Compensating;
        for rec in run.steps.values_mut() {
            if matches!(
                rec.state,
                StepState::Pending | StepState::Backoff | StepState::Sleeping
            ) {
                rec.state = StepState::Cancelled;
                rec.deadline_ms = None;
            }
            // A for-each step sends no more elements; those in flight are
            // waited for as any step in flight.
            if rec.state == StepState::Dispatched
                && let Some(e) = rec.elements
            {
                rec.state = StepState::Cancelled;
                rec.reason = Some(format!(
                    "the run failed with {} of its {} elements settled ({} sent)",
                    e.settled, e.total, e.sent
                ));
            }
        }
        let mut done: Vec<(u32, String)> = run
            .steps
            .iter()
            .filter(|(id, r)| {
                r.state == StepState::Completed
                    && flow.as_ref().is_some_and(|f| super::undoable(f, id))
            })
            .map(|(id, r)| (r.completed_seq.unwrap_or(0), id.clone()))
            .collect();
        done.sort_by_key(|d| Reverse(d.0));
        run.undo = done.into_iter().map(|(_, id)| id).collect();
        self.next_undo(run_id, t, now);
    }

    /// Dispatch the next compensation, or end the run.
    pub(super) fn next_undo(&mut self, run_id: &str, t: &mut Transition, now: u64) {
        let run = self.runs.get_mut(run_id).expect("live");
        let busy = run.steps.iter().any(|(id, r)| {
            protocol::undoes(id).is_some()
                && matches!(r.state, StepState::Dispatched | StepState::Backoff)
        });
        if busy {
            return;
        }
        if !run.undo.is_empty() {
            let orig = run.undo.remove(0);
            let uid = protocol::undo_id(&orig);
            run.steps.insert(uid.clone(), StepRecord::new());
            self.dispatch(run_id, &uid, t, now);
            return;
        }
        // Nothing left to undo; wait for steps still in flight (they may
        // complete and need undoing) unless the run timed out.
        let in_flight = run.steps.values().any(|r| r.state == StepState::Dispatched);
        if in_flight && !run.timed_out {
            return;
        }
        let undone = run
            .steps
            .values()
            .any(|r| r.state == StepState::Compensated);
        let failed_undo = run
            .steps
            .values()
            .any(|r| r.state == StepState::CompensationFailed);
        let end = if run.cancelled.is_some() {
            RunState::Cancelled
        } else if run.timed_out {
            RunState::TimedOut
        } else if undone && !failed_undo {
            RunState::Compensated
        } else {
            RunState::Failed
        };
        finish(run, end, now);
    }

    /// Why keeping `output` in the run's record would make a record the
    /// broker cannot store (NATS: one message), if it would. Outputs are
    /// summed first; the record is serialised only when they come near.
    pub(super) fn record_too_large(
        &self,
        run_id: &str,
        output: Option<&(String, Box<RawValue>)>,
    ) -> Option<Failure> {
        let max = self.max_state_bytes?;
        let (_, data) = output?;
        let run = &self.runs[run_id];
        let outputs: usize = run
            .steps
            .values()
            .filter_map(|s| s.output.as_ref())
            .map(|o| o.get().len())
            .sum();
        if outputs + data.get().len() < max / 2 {
            return None;
        }
        let size = serde_json::to_vec(run).map_or(usize::MAX, |v| v.len()) + data.get().len();
        (size > max).then(|| {
            Failure::new(
                FailureClass::Limit,
                format!(
                    "the step's output ({} bytes) would grow the run's record to {size} bytes, \
                     more than the broker stores ({max})",
                    data.get().len()
                ),
            )
        })
    }
}
