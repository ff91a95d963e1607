//! Flow steps that are not one command: a for-each step (one command per
//! element of an array, each element a step record of its own, `ID[i]`,
//! at most `max_parallel` in flight) and a sleep step (a timer, and
//! nothing sent). Part of [`Machine`].

use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;

use super::{Machine, Transition};
use crate::flow::{Fan, FieldPath, INPUT, Wake};
use crate::orchestrator::rfc3339;
use crate::orchestrator::run::{Elements, StepRecord, StepState};
use crate::protocol::{self, Failure, FailureClass};

/// The most elements a for-each step takes: each is a step record of the
/// run (a few hundred bytes, in memory while the run is active).
pub const MAX_ELEMENTS: usize = 100_000;

/// The elements of a run's for-each steps in flight, by flow step, each
/// as its JSON text.
pub(super) type Items = std::collections::HashMap<String, Arc<Vec<Box<RawValue>>>>;

impl Machine {
    /// The value at path `p` in what run `run_id` holds: its input, or the
    /// output of a flow step.
    pub(super) fn value_at(&self, run_id: &str, p: &FieldPath) -> Option<Value> {
        let run = self.runs.get(run_id)?;
        if p.step == INPUT {
            return p.get(&run.input).cloned();
        }
        let raw = run.steps.get(&p.step)?.output.as_ref()?;
        let data: Value = serde_json::from_str(raw.get()).ok()?;
        p.get(&data).cloned()
    }

    /// The elements of for-each step `sid` of run `run_id`, each as its
    /// JSON text: read from what the run holds once, then kept until the
    /// run is let go of (so sending element `i` does not parse the whole
    /// array again).
    pub(super) fn elements_of(
        &self,
        run_id: &str,
        sid: &str,
        fan: &Fan,
    ) -> Option<Arc<Vec<Box<RawValue>>>> {
        if let Some(items) = self.fan_items.borrow().get(run_id).and_then(|r| r.get(sid)) {
            return Some(items.clone());
        }
        let Value::Array(items) = self.value_at(run_id, &fan.over)? else {
            return None;
        };
        Some(self.keep_elements(run_id, sid, &items))
    }

    /// Keep `items`, the elements of for-each step `sid` of run `run_id`.
    fn keep_elements(&self, run_id: &str, sid: &str, items: &[Value]) -> Arc<Vec<Box<RawValue>>> {
        let items: Vec<Box<RawValue>> = items
            .iter()
            .map(|v| serde_json::value::to_raw_value(v).expect("JSON"))
            .collect();
        let items = Arc::new(items);
        self.fan_items
            .borrow_mut()
            .entry(run_id.to_string())
            .or_default()
            .insert(sid.to_string(), items.clone());
        items
    }

    /// Forget the elements kept for run `run_id` (it ended or was let go).
    pub(super) fn drop_elements(&self, run_id: &str) {
        self.fan_items.borrow_mut().remove(run_id);
    }

    /// Mark `sid` reached at `now`, as its first attempt.
    fn reach(&mut self, run_id: &str, sid: &str, now: u64) {
        if let Some(rec) = self.runs.get_mut(run_id).and_then(|r| r.steps.get_mut(sid)) {
            rec.attempts += 1;
            rec.started.get_or_insert_with(|| rfc3339(now));
        }
    }

    /// Sleep step `sid` is reached: it sleeps until its wake time (the
    /// timer wakes it), or completes at once if that has passed.
    pub(super) fn sleep(
        &mut self,
        run_id: &str,
        sid: &str,
        wake: &Wake,
        t: &mut Transition,
        now: u64,
    ) {
        self.reach(run_id, sid, now);
        match wake.at(now, |p| self.value_at(run_id, p)) {
            Err(why) => {
                let f = Failure::new(FailureClass::Rejected, format!("cannot sleep: {why}"));
                self.step_failed(run_id, sid, f, t, now);
            }
            Ok(at) if at <= now => self.step_done(run_id, sid, None, t, now),
            Ok(at) => {
                let rec = self.step_mut(run_id, sid);
                rec.state = StepState::Sleeping;
                rec.deadline_ms = Some(at);
                t.arm(at, sid);
                // Its wake time is the record's: a restart does not
                // derive it again from a later clock.
                t.actions.push(super::Action::Checkpoint);
            }
        }
    }

    /// For-each step `sid` is reached: read its array and send its first
    /// elements (an empty array completes it at once, with `[]`).
    pub(super) fn fan_out(
        &mut self,
        run_id: &str,
        sid: &str,
        fan: &Fan,
        t: &mut Transition,
        now: u64,
    ) {
        self.reach(run_id, sid, now);
        // Read once: the elements are kept for their commands.
        let total = match self.value_at(run_id, &fan.over) {
            Some(Value::Array(items)) if items.len() <= MAX_ELEMENTS => {
                self.keep_elements(run_id, sid, &items).len() as u32
            }
            Some(Value::Array(items)) => {
                let f = Failure::new(
                    // The same input fails the same way: not tried again.
                    FailureClass::Rejected,
                    format!(
                        "`for_each`: `{}` has {} elements, more than a for-each step takes \
                         ({MAX_ELEMENTS}): each is a step of the run's record",
                        fan.over.text,
                        items.len()
                    ),
                );
                return self.step_failed(run_id, sid, f, t, now);
            }
            Some(other) => {
                let shown = crate::text::clean(&other.to_string(), 200);
                let f = Failure::new(
                    FailureClass::Rejected,
                    format!("`for_each`: `{}` is {shown}, not an array", fan.over.text),
                );
                return self.step_failed(run_id, sid, f, t, now);
            }
            None => {
                let f = Failure::new(
                    FailureClass::Rejected,
                    format!("`for_each`: `{}` is missing", fan.over.text),
                );
                return self.step_failed(run_id, sid, f, t, now);
            }
        };
        let rec = self.step_mut(run_id, sid);
        rec.state = StepState::Dispatched;
        rec.elements = Some(Elements {
            total,
            sent: 0,
            settled: 0,
            failed: 0,
        });
        // Sending it is a decision of its own (a reply does not explain
        // it after a crash): written.
        t.actions.push(super::Action::Checkpoint);
        self.fan_progress(run_id, sid, fan.max_parallel, t, now);
    }

    /// Send elements of `sid` while fewer than `max_parallel` are in
    /// flight; once every element is settled, complete the step with the
    /// array of their outputs. (An element a redrive kept, completed, is
    /// not sent again.)
    fn fan_progress(
        &mut self,
        run_id: &str,
        sid: &str,
        max_parallel: u32,
        t: &mut Transition,
        now: u64,
    ) {
        let e = loop {
            let run = self.runs.get_mut(run_id).expect("live");
            let rec = run.steps.get_mut(sid).expect("a step of the run");
            let Some(e) = rec.elements.as_mut() else {
                return;
            };
            if e.sent >= e.total || e.sent - e.settled >= max_parallel {
                break *e;
            }
            let eid = protocol::element_id(sid, e.sent);
            e.sent += 1;
            if run
                .steps
                .get(&eid)
                .is_some_and(|r| r.state == StepState::Completed)
            {
                if let Some(e) = run.steps.get_mut(sid).and_then(|r| r.elements.as_mut()) {
                    e.settled += 1;
                }
                continue;
            }
            run.steps.insert(eid.clone(), StepRecord::new());
            self.dispatch(run_id, &eid, t, now);
        };
        if e.settled < e.total {
            return;
        }
        let outputs: Vec<Option<Box<RawValue>>> = (0..e.total)
            .map(|i| {
                let run = &self.runs[run_id];
                run.steps
                    .get(&protocol::element_id(sid, i))
                    .filter(|r| r.state == StepState::Completed)
                    .and_then(|r| r.output.clone())
            })
            .collect();
        let all = array(&outputs);
        if let Some(f) = self.record_too_large(run_id, Some(&(String::new(), all.clone()))) {
            let rec = self.step_mut(run_id, sid);
            rec.state = StepState::Failed;
            rec.finished = Some(rfc3339(now));
            rec.errors.push(f.to_string());
            return self.fail_run(run_id, format!("step {sid} failed: {f}"), t, now);
        }
        if let Some(r) = self.fan_items.borrow_mut().get_mut(run_id) {
            r.remove(sid);
        }
        self.step_mut(run_id, sid).output = Some(all);
        self.step_done(run_id, sid, None, t, now);
    }

    /// An element of for-each step `sid` completed, or failed for good
    /// (`failure`) while the run runs: send the next, fail the step if
    /// more failed than it tolerates, or complete it with the array of its
    /// elements' outputs once all are settled.
    pub(super) fn element_settled(
        &mut self,
        run_id: &str,
        sid: &str,
        failure: Option<(u32, &Failure)>,
        t: &mut Transition,
        now: u64,
    ) {
        let Some(fan) = self
            .flow_of(run_id)
            .and_then(|f| f.step(sid).and_then(|s| s.fan.clone()))
        else {
            return;
        };
        let rec = self.step_mut(run_id, sid);
        if rec.state != StepState::Dispatched {
            return;
        }
        let Some(e) = rec.elements.as_mut() else {
            return;
        };
        e.settled += 1;
        let e = {
            if failure.is_some() {
                e.failed += 1;
            }
            *e
        };
        if let Some((i, f)) = failure {
            if !fan.tolerate.allows(e.failed, e.total) {
                let f = Failure::new(
                    f.class,
                    format!(
                        "element {i} failed ({} of {} failed, more than `tolerate_failures` \
                         allows): {}",
                        e.failed, e.total, f.message
                    ),
                );
                rec.state = StepState::Failed;
                rec.finished = Some(rfc3339(now));
                rec.errors.push(f.to_string());
                return self.fail_run(run_id, format!("step {sid} failed: {f}"), t, now);
            }
            let note = format!("element {i}: {}", f.message);
            self.step_mut(run_id, sid).errors.push(note);
        }
        self.fan_progress(run_id, sid, fan.max_parallel, t, now);
    }

    pub(super) fn step_mut(&mut self, run_id: &str, sid: &str) -> &mut StepRecord {
        self.runs
            .get_mut(run_id)
            .and_then(|r| r.steps.get_mut(sid))
            .expect("a step of an active run")
    }
}

/// A JSON array of `items` (`null` for an element with no output).
fn array(items: &[Option<Box<RawValue>>]) -> Box<RawValue> {
    let mut text = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(item.as_ref().map_or("null", |r| r.get()));
    }
    text.push(']');
    RawValue::from_string(text).expect("an array of JSON values is JSON")
}
