//! How runs fail: a step's failure (retry with backoff, or fail the run;
//! an output that would outgrow the run's record is one),
//! compensation in reverse order of completion, and the timers (step and
//! run timeouts, the end of a backoff). Part of [`Driver`]; the happy path
//! is in `driver.rs`.

use std::cmp::Reverse;
use std::collections::HashMap;

use serde_json::value::RawValue;

use super::driver::{Driver, Out, finish};
use super::run::{RunState, StepRecord, StepState, undo_id};
use super::{now_ms, rfc3339, timers};

impl Driver {
    pub(super) fn step_failed(
        &mut self,
        run_id: &str,
        sid: &str,
        error: String,
        retryable: bool,
        out: &mut Out,
    ) {
        let policy = self.retry_of(run_id, sid);
        let now = self.now();
        let run = self.runs.get_mut(run_id).expect("live");
        let rec = run.steps.get_mut(sid).expect("step");
        rec.errors
            .push(format!("attempt {}: {error}", rec.attempts));
        if retryable && rec.attempts < policy.max_attempts {
            let wait = policy.backoff(rec.attempts).as_millis() as u64;
            rec.state = StepState::Backoff;
            rec.deadline_ms = Some(now + wait);
            self.timers.arm(now + wait, run_id, sid, &self.runs);
            return;
        }
        let timed_out = error.contains("timed out");
        rec.state = if timed_out {
            StepState::TimedOut
        } else {
            StepState::Failed
        };
        rec.finished = Some(rfc3339(now));
        rec.deadline_ms = None;
        if let Some(orig) = sid.strip_suffix("~undo") {
            if let Some(r) = run.steps.get_mut(orig) {
                r.state = StepState::CompensationFailed;
            }
            run.error = Some(format!(
                "{} (and undoing {orig} failed: {error})",
                run.error.clone().unwrap_or_default()
            ));
            self.next_undo(run_id, out);
            return;
        }
        self.fail_run(run_id, format!("step {sid} failed: {error}"), out);
    }

    /// The run cannot complete: cancel what has not started and undo what
    /// completed, in reverse order of completion.
    fn fail_run(&mut self, run_id: &str, error: String, out: &mut Out) {
        let flow = self.flow(run_id);
        let run = self.runs.get_mut(run_id).expect("live");
        if run.state != RunState::Running {
            return;
        }
        run.error = Some(error);
        run.state = RunState::Compensating;
        for rec in run.steps.values_mut() {
            if matches!(rec.state, StepState::Pending | StepState::Backoff) {
                rec.state = StepState::Cancelled;
                rec.deadline_ms = None;
            }
        }
        let mut done: Vec<(u32, String)> = run
            .steps
            .iter()
            .filter(|(id, r)| {
                r.state == StepState::Completed
                    && flow
                        .as_ref()
                        .and_then(|f| f.step(id))
                        .is_some_and(|s| s.compensate.is_some())
            })
            .map(|(id, r)| (r.completed_seq.unwrap_or(0), id.clone()))
            .collect();
        done.sort_by_key(|d| Reverse(d.0));
        run.undo = done.into_iter().map(|(_, id)| id).collect();
        self.next_undo(run_id, out);
    }

    /// Dispatch the next compensation, or end the run.
    pub(super) fn next_undo(&mut self, run_id: &str, out: &mut Out) {
        let now = self.now();
        let run = self.runs.get_mut(run_id).expect("live");
        let busy = run.steps.iter().any(|(id, r)| {
            id.ends_with("~undo") && matches!(r.state, StepState::Dispatched | StepState::Backoff)
        });
        if busy {
            return;
        }
        if !run.undo.is_empty() {
            let orig = run.undo.remove(0);
            let uid = undo_id(&orig);
            run.steps.insert(uid.clone(), StepRecord::new());
            self.dispatch(run_id, &uid, out);
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
        let end = if run.timed_out {
            RunState::TimedOut
        } else if undone && !failed_undo {
            RunState::Compensated
        } else {
            RunState::Failed
        };
        finish(run, end, now);
    }

    pub(super) fn on_timers(&mut self) {
        let now = now_ms();
        let mut touched: Vec<String> = Vec::new();
        let mut outs: HashMap<String, Out> = HashMap::new();
        while let Some((at, run_id, sid)) = self.timers.pop_due(now) {
            if !timers::live(&self.runs, at, &run_id, &sid) {
                continue; // what it guarded settled first
            }
            let out = outs.entry(run_id.clone()).or_default();
            let run = self.runs.get_mut(&run_id).expect("live");
            if sid.is_empty() {
                let ms = run.deadline_ms - run.created_ms;
                run.timed_out = true;
                for rec in run.steps.values_mut() {
                    if rec.state == StepState::Dispatched {
                        rec.state = StepState::TimedOut;
                        rec.deadline_ms = None;
                    }
                }
                self.fail_run(&run_id, format!("run timed out after {ms} ms"), out);
            } else if run.steps[&sid].state == StepState::Backoff {
                self.dispatch(&run_id, &sid, out);
            } else {
                let ms = self.timeout_of(&run_id, &sid);
                self.step_failed(&run_id, &sid, format!("timed out after {ms} ms"), true, out);
            }
            touched.push(run_id);
        }
        touched.sort();
        touched.dedup();
        for id in touched {
            let out = outs.remove(&id).unwrap_or_default();
            self.commit(None, &id, out, true, None);
        }
    }

    /// Why keeping `output` in the run's record would make a record the
    /// broker cannot store (NATS: one message), if it would. Outputs are
    /// summed first; the record is serialised only when they come near.
    pub(super) fn record_too_large(
        &self,
        run_id: &str,
        output: Option<&(String, Box<RawValue>)>,
    ) -> Option<String> {
        let max = self.broker.max_state_bytes()?;
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
            format!(
                "limit: the step's output ({} bytes) would grow the run's record to {size} \
                 bytes, more than the broker stores ({max})",
                data.get().len()
            )
        })
    }
}
